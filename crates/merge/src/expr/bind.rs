//! Typing a [`Node`] tree with the types Postgres gave its inputs and
//! probes, inserting the conversions Postgres would insert.

use super::convert::{parse, supported, IntWidth, Ty};
use super::{CastTarget, Literal, Node, Op};
use crate::error::MergeError;
use crate::key::Key;
use crate::numeric::Numeric;

/// A typed tree, ready to evaluate for each group.
#[derive(Debug, Clone)]
pub struct Bound {
    pub(super) root: TNode,
}

#[derive(Debug, Clone)]
pub(super) struct TNode {
    pub(super) kind: Kind,
    pub(super) ty: Ty,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Input(usize),
    Const(Key),
    /// A conversion of the argument to this node's type (a cast when
    /// `explicit`), then `numeric(p, s)` coercion when `typmod`.
    Convert {
        arg: Box<TNode>,
        explicit: bool,
        typmod: Option<(i32, i32)>,
    },
    /// The argument printed by its type's output function (`||`).
    Output(Box<TNode>),
    /// An operator whose arguments already have the types it works on.
    Op(Op, Vec<TNode>),
}

fn unsupported(ty: Ty, what: impl Into<String>) -> MergeError {
    MergeError::unsupported(ty.oid(), what)
}

impl Node {
    /// Types the tree: `inputs[i]` is the type OID of [`Node::Input`] `i`,
    /// `probes[p]` Postgres's type of the operator whose probe is `p`.
    /// Constructs the evaluator does not implement for those types →
    /// [`MergeError::Unsupported`].
    pub fn bind(&self, inputs: &[u32], probes: &[u32]) -> Result<Bound, MergeError> {
        let cx = Binder { inputs, probes };
        Ok(Bound {
            root: cx.bind(self, None)?,
        })
    }
}

impl Bound {
    /// The result's type OID.
    pub fn type_oid(&self) -> u32 {
        self.root.ty.oid()
    }
}

struct Binder<'a> {
    inputs: &'a [u32],
    probes: &'a [u32],
}

fn number_literal(text: &str) -> Result<TNode, MergeError> {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let integer = !body.is_empty() && body.bytes().all(|c| c.is_ascii_digit());
    if integer {
        if let Ok(v) = text.parse::<i64>() {
            let w = if i32::try_from(v).is_ok() {
                IntWidth::I4
            } else {
                IntWidth::I8
            };
            return Ok(TNode {
                kind: Kind::Const(Key::Int(v)),
                ty: Ty::Int(w),
            });
        }
    }
    let n = Numeric::parse_text(text)
        .ok_or_else(|| MergeError::sql("22P02", format!("invalid number {text}")))?;
    Ok(TNode {
        kind: Kind::Const(Key::Numeric(n)),
        ty: Ty::Numeric,
    })
}

fn convert(n: TNode, to: Ty) -> Result<TNode, MergeError> {
    if n.ty == to {
        return Ok(n);
    }
    if matches!(n.kind, Kind::Const(Key::Null)) {
        return Ok(TNode {
            kind: n.kind,
            ty: to,
        });
    }
    if !supported(n.ty, to, false) {
        return Err(unsupported(
            to,
            format!(
                "an expression using a value of type oid {} as it",
                n.ty.oid()
            ),
        ));
    }
    Ok(TNode {
        kind: Kind::Convert {
            arg: Box::new(n),
            explicit: false,
            typmod: None,
        },
        ty: to,
    })
}

/// Whether two types compare the way Postgres compares them when the keys
/// are compared by value.
fn comparable(a: Ty, b: Ty) -> bool {
    a == b || (a.is_number() && b.is_number()) || (a.is_text() && b.is_text())
}

impl Binder<'_> {
    fn probe(&self, p: Option<usize>) -> Result<Ty, MergeError> {
        match p {
            None => Ok(Ty::Bool),
            Some(p) => self
                .probes
                .get(p)
                .map(|o| Ty::of(*o))
                .ok_or_else(|| MergeError::malformed(0, "missing expression type")),
        }
    }

    /// `want`: the type an unknown literal or NULL here is read as.
    fn bind(&self, n: &Node, want: Option<Ty>) -> Result<TNode, MergeError> {
        match n {
            Node::Input(i) => {
                let oid = self
                    .inputs
                    .get(*i)
                    .ok_or_else(|| MergeError::malformed(0, "missing input type"))?;
                Ok(TNode {
                    kind: Kind::Input(*i),
                    ty: Ty::of(*oid),
                })
            }
            Node::Const(l) => self.literal(l, want),
            Node::Op { op, args, probe } => {
                let ty = self.probe(*probe)?;
                self.op(op, args, ty)
            }
        }
    }

    fn literal(&self, l: &Literal, want: Option<Ty>) -> Result<TNode, MergeError> {
        let ty = want.unwrap_or(Ty::Text);
        Ok(match l {
            Literal::Null => TNode {
                kind: Kind::Const(Key::Null),
                ty,
            },
            Literal::Bool(b) => TNode {
                kind: Kind::Const(Key::Bool(*b)),
                ty: Ty::Bool,
            },
            Literal::Number(t) => number_literal(t)?,
            Literal::Text(t) => TNode {
                kind: Kind::Const(parse(t, ty)?),
                ty,
            },
        })
    }

    /// Binds arguments that compare with each other: typed ones first, then
    /// unknown literals as the first typed one's type.
    fn bind_peers(&self, args: &[Node]) -> Result<Vec<TNode>, MergeError> {
        let is_unknown = |n: &Node| matches!(n, Node::Const(Literal::Text(_) | Literal::Null));
        let mut out = args
            .iter()
            .map(|a| match is_unknown(a) {
                true => Ok(None),
                false => self.bind(a, None).map(Some),
            })
            .collect::<Result<Vec<_>, MergeError>>()?;
        let typed = out.iter().flatten().next().map(|t| t.ty);
        args.iter()
            .zip(out.iter_mut())
            .map(|(a, o)| match o.take() {
                Some(t) => Ok(t),
                None => self.bind(a, typed),
            })
            .collect()
    }

    fn op(&self, op: &Op, args: &[Node], ty: Ty) -> Result<TNode, MergeError> {
        let node = |kind| TNode { kind, ty };
        let arity = |n: usize| -> Result<(), MergeError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(MergeError::malformed(ty.oid(), "wrong number of arguments"))
            }
        };
        let all_to = |want: Ty| -> Result<Vec<TNode>, MergeError> {
            args.iter()
                .map(|a| convert(self.bind(a, Some(want))?, want))
                .collect()
        };
        match op {
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod => {
                arity(2)?;
                let ok = match op {
                    Op::Mod => matches!(ty, Ty::Int(_) | Ty::Numeric),
                    _ => ty.is_number(),
                };
                if !ok {
                    return Err(unsupported(ty, format!("{op:?} computed at the proxy")));
                }
                let peers = self.bind_peers(args)?;
                let args = peers
                    .into_iter()
                    .map(|a| convert(a, ty))
                    .collect::<Result<_, _>>()?;
                Ok(node(Kind::Op(op.clone(), args)))
            }
            Op::Neg | Op::Abs => {
                arity(1)?;
                if !ty.is_number() {
                    return Err(unsupported(ty, "negation computed at the proxy"));
                }
                Ok(node(Kind::Op(op.clone(), all_to(ty)?)))
            }
            Op::Concat => {
                if ty != Ty::Text {
                    return Err(unsupported(ty, "|| other than text"));
                }
                let args = args
                    .iter()
                    .map(|a| {
                        let t = self.bind(a, None)?;
                        Ok(if t.ty == Ty::Text {
                            t
                        } else {
                            TNode {
                                kind: Kind::Output(Box::new(t)),
                                ty: Ty::Text,
                            }
                        })
                    })
                    .collect::<Result<_, MergeError>>()?;
                Ok(node(Kind::Op(op.clone(), args)))
            }
            Op::Cmp(_) | Op::IsDistinct(_) | Op::InList(_) => {
                let args = self.bind_peers(args)?;
                if let Some(first) = args.first() {
                    if let Some(bad) = args.iter().find(|a| !comparable(first.ty, a.ty)) {
                        return Err(unsupported(
                            bad.ty,
                            format!("a comparison with type oid {} at the proxy", first.ty.oid()),
                        ));
                    }
                }
                Ok(TNode {
                    kind: Kind::Op(op.clone(), args),
                    ty: Ty::Bool,
                })
            }
            Op::And | Op::Or | Op::Not => Ok(TNode {
                kind: Kind::Op(op.clone(), all_to(Ty::Bool)?),
                ty: Ty::Bool,
            }),
            Op::IsNull(_) => Ok(TNode {
                kind: Kind::Op(op.clone(), self.bind_peers(args)?),
                ty: Ty::Bool,
            }),
            Op::Cast(CastTarget {
                oid,
                numeric_typmod,
            }) => {
                arity(1)?;
                let to = Ty::of(*oid);
                let arg = self.bind(&args[0], Some(to))?;
                if arg.ty != to && !supported(arg.ty, to, true) {
                    return Err(unsupported(
                        to,
                        format!("a cast from type oid {} at the proxy", arg.ty.oid()),
                    ));
                }
                if numeric_typmod.is_some() && to != Ty::Numeric {
                    return Err(unsupported(to, "a cast with a type modifier"));
                }
                Ok(TNode {
                    kind: Kind::Convert {
                        arg: Box::new(arg),
                        explicit: true,
                        typmod: *numeric_typmod,
                    },
                    ty: to,
                })
            }
            Op::Round | Op::Trunc | Op::Ceil | Op::Floor => {
                let with_scale = matches!(op, Op::Round | Op::Trunc) && args.len() == 2;
                if !(args.len() == 1 || with_scale) || !matches!(ty, Ty::Numeric | Ty::Float8) {
                    return Err(unsupported(ty, format!("{op:?} computed at the proxy")));
                }
                if with_scale && ty != Ty::Numeric {
                    return Err(unsupported(ty, "round(x, n) of a float"));
                }
                let mut out = vec![convert(self.bind(&args[0], Some(ty))?, ty)?];
                if with_scale {
                    let i4 = Ty::Int(IntWidth::I4);
                    out.push(convert(self.bind(&args[1], Some(i4))?, i4)?);
                }
                Ok(node(Kind::Op(op.clone(), out)))
            }
            Op::Coalesce | Op::Greatest | Op::Least => {
                if matches!(op, Op::Greatest | Op::Least)
                    && !(ty.is_number() || ty.is_text() || ty == Ty::Bool)
                {
                    return Err(unsupported(ty, "greatest/least at the proxy"));
                }
                Ok(node(Kind::Op(op.clone(), all_to(ty)?)))
            }
            Op::NullIf => {
                arity(2)?;
                let args = self.bind_peers(args)?;
                if !comparable(args[0].ty, args[1].ty) || args[0].ty != ty {
                    return Err(unsupported(ty, "nullif at the proxy"));
                }
                Ok(node(Kind::Op(op.clone(), args)))
            }
            Op::Case { operand, otherwise } => {
                let mut rest = args;
                let mut out = Vec::with_capacity(args.len());
                let mut operand_ty = None;
                if *operand {
                    let o = self.bind(&args[0], None)?;
                    operand_ty = Some(o.ty);
                    out.push(o);
                    rest = &args[1..];
                }
                let (pairs, last) = if *otherwise {
                    rest.split_at(rest.len().saturating_sub(1))
                } else {
                    (rest, &[][..])
                };
                if pairs.len() % 2 != 0 || pairs.is_empty() {
                    return Err(MergeError::malformed(ty.oid(), "malformed CASE"));
                }
                for pair in pairs.chunks(2) {
                    let cond = match operand_ty {
                        Some(t) => {
                            let w = self.bind(&pair[0], Some(t))?;
                            if !comparable(t, w.ty) {
                                return Err(unsupported(w.ty, "CASE comparing other types"));
                            }
                            w
                        }
                        None => convert(self.bind(&pair[0], Some(Ty::Bool))?, Ty::Bool)?,
                    };
                    out.push(cond);
                    out.push(convert(self.bind(&pair[1], Some(ty))?, ty)?);
                }
                for e in last {
                    out.push(convert(self.bind(e, Some(ty))?, ty)?);
                }
                Ok(node(Kind::Op(op.clone(), out)))
            }
        }
    }
}
