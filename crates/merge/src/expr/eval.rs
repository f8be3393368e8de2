//! Evaluating a [`Bound`] tree over one group's input values.

use std::cmp::Ordering;

use bytes::{Bytes, BytesMut};

use super::bind::{Bound, Kind, TNode};
use super::convert::{convert, float, int, numeric, output_text, round_numeric, Ty};
use super::{CmpOp, Op};
use crate::error::MergeError;
use crate::key::Key;
use crate::numeric::Rounding;

impl Bound {
    /// The value for one group; `inputs` holds the values of the inputs in
    /// the order [`super::Node::Input`] numbers them.
    pub fn eval(&self, inputs: &[Key]) -> Result<Key, MergeError> {
        eval(&self.root, inputs)
    }
}

fn overflow() -> MergeError {
    MergeError::Overflow("value out of range: overflow".into())
}

fn underflow() -> MergeError {
    MergeError::Overflow("value out of range: underflow".into())
}

/// Postgres's float8/float4 arithmetic with its overflow, underflow and
/// division-by-zero checks; float4 rounds each result to single precision.
fn float_arith(op: &Op, a: f64, b: f64, single: bool) -> Result<f64, MergeError> {
    let r = match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => {
            if b == 0.0 && !a.is_nan() {
                return Err(MergeError::DivisionByZero);
            }
            a / b
        }
        _ => return Err(MergeError::malformed(0, "float operator")),
    };
    let r = if single { f64::from(r as f32) } else { r };
    let (ia, ib) = (a.is_infinite(), b.is_infinite());
    match op {
        Op::Div => {
            if r.is_infinite() && !ia {
                return Err(overflow());
            }
            if r == 0.0 && a != 0.0 && !ib {
                return Err(underflow());
            }
        }
        Op::Mul => {
            if r.is_infinite() && !ia && !ib {
                return Err(overflow());
            }
            if r == 0.0 && a != 0.0 && b != 0.0 {
                return Err(underflow());
            }
        }
        _ => {
            if r.is_infinite() && !ia && !ib {
                return Err(overflow());
            }
        }
    }
    Ok(r)
}

fn arith(op: &Op, ty: Ty, a: &Key, b: &Key) -> Result<Key, MergeError> {
    match ty {
        Ty::Int(w) => {
            let (a, b) = (int(a)?, int(b)?);
            w.check(match op {
                Op::Add => a.checked_add(b),
                Op::Sub => a.checked_sub(b),
                Op::Mul => a.checked_mul(b),
                Op::Div if b == 0 => return Err(MergeError::DivisionByZero),
                Op::Div => a.checked_div(b),
                Op::Mod if b == 0 => return Err(MergeError::DivisionByZero),
                Op::Mod => Some(a.checked_rem(b).unwrap_or(0)),
                _ => None,
            })
        }
        Ty::Numeric => {
            let (a, b) = (numeric(a)?, numeric(b)?);
            Ok(Key::Numeric(match op {
                Op::Add => a.add(&b),
                Op::Sub => a.sub(&b),
                Op::Mul => a.mul(&b)?,
                Op::Div => a.div(&b)?,
                _ => a.rem(&b)?,
            }))
        }
        Ty::Float4 | Ty::Float8 => Ok(Key::Float(float_arith(
            op,
            float(a)?,
            float(b)?,
            ty == Ty::Float4,
        )?)),
        _ => Err(MergeError::unsupported(ty.oid(), "arithmetic at the proxy")),
    }
}

/// SQL three-valued comparison.
fn compare(op: CmpOp, a: &Key, b: &Key) -> Option<bool> {
    if a.is_null() || b.is_null() {
        return None;
    }
    let o = a.cmp_value(b);
    Some(match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::NotEq => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::LtEq => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::GtEq => o != Ordering::Less,
    })
}

fn truth(v: Option<bool>) -> Key {
    v.map_or(Key::Null, Key::Bool)
}

fn as_bool(v: &Key) -> Option<bool> {
    match v {
        Key::Bool(b) => Some(*b),
        _ => None,
    }
}

fn eval(n: &TNode, inputs: &[Key]) -> Result<Key, MergeError> {
    match &n.kind {
        Kind::Input(i) => inputs
            .get(*i)
            .cloned()
            .ok_or_else(|| MergeError::malformed(n.ty.oid(), "missing input value")),
        Kind::Const(k) => Ok(k.clone()),
        Kind::Convert {
            arg,
            explicit,
            typmod,
        } => {
            let v = convert(eval(arg, inputs)?, arg.ty, n.ty, *explicit)?;
            match (typmod, &v) {
                (Some((p, s)), Key::Numeric(x)) => Ok(Key::Numeric(x.with_typmod(*p, *s)?)),
                _ => Ok(v),
            }
        }
        Kind::Output(arg) => {
            let v = eval(arg, inputs)?;
            if v.is_null() {
                return Ok(v);
            }
            Ok(Key::Bytes(Bytes::from(output_text(&v, arg.ty)?)))
        }
        Kind::Op(op, args) => eval_op(op, n.ty, args, inputs),
    }
}

fn eval_op(op: &Op, ty: Ty, args: &[TNode], inputs: &[Key]) -> Result<Key, MergeError> {
    let arg = |i: usize| eval(&args[i], inputs);
    match op {
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod => {
            let (a, b) = (arg(0)?, arg(1)?);
            if a.is_null() || b.is_null() {
                return Ok(Key::Null);
            }
            arith(op, ty, &a, &b)
        }
        Op::Neg | Op::Abs => {
            let a = arg(0)?;
            let negate = matches!(op, Op::Neg);
            Ok(match (a, ty) {
                (Key::Null, _) => Key::Null,
                (Key::Int(i), Ty::Int(w)) => w.check(if negate || i < 0 {
                    i.checked_neg()
                } else {
                    Some(i)
                })?,
                (Key::Numeric(x), _) => Key::Numeric(if negate { x.neg() } else { x.abs() }),
                (Key::Float(f), _) => Key::Float(if negate { -f } else { f.abs() }),
                _ => return Err(MergeError::unsupported(ty.oid(), "negation at the proxy")),
            })
        }
        Op::Concat => {
            let mut out = BytesMut::new();
            for i in 0..args.len() {
                match arg(i)? {
                    Key::Bytes(b) => out.extend_from_slice(&b),
                    _ => return Ok(Key::Null),
                }
            }
            Ok(Key::Bytes(out.freeze()))
        }
        Op::Cmp(c) => Ok(truth(compare(*c, &arg(0)?, &arg(1)?))),
        Op::IsDistinct(distinct) => {
            let (a, b) = (arg(0)?, arg(1)?);
            let same = a.group_eq(&b);
            Ok(Key::Bool(same != *distinct))
        }
        Op::InList(negated) => {
            let x = arg(0)?;
            let mut result = Some(false);
            for i in 1..args.len() {
                match compare(CmpOp::Eq, &x, &arg(i)?) {
                    Some(true) => {
                        result = Some(true);
                        break;
                    }
                    None => result = None,
                    Some(false) => {}
                }
            }
            Ok(truth(if *negated { result.map(|b| !b) } else { result }))
        }
        Op::And | Op::Or => {
            let and = matches!(op, Op::And);
            let mut unknown = false;
            for i in 0..args.len() {
                match as_bool(&arg(i)?) {
                    Some(b) if b != and => return Ok(Key::Bool(b)),
                    Some(_) => {}
                    None => unknown = true,
                }
            }
            Ok(if unknown { Key::Null } else { Key::Bool(and) })
        }
        Op::Not => Ok(truth(as_bool(&arg(0)?).map(|b| !b))),
        Op::IsNull(is) => Ok(Key::Bool(arg(0)?.is_null() == *is)),
        Op::Cast(_) => Err(MergeError::malformed(ty.oid(), "cast as operator")),
        Op::Round | Op::Trunc | Op::Ceil | Op::Floor => {
            let x = arg(0)?;
            if x.is_null() {
                return Ok(x);
            }
            let scale = match args.get(1) {
                None => 0,
                Some(s) => match eval(s, inputs)? {
                    Key::Int(v) => v as i32,
                    _ => return Ok(Key::Null),
                },
            };
            let mode = match op {
                Op::Round => Rounding::HalfAway,
                Op::Trunc => Rounding::Trunc,
                Op::Ceil => Rounding::Ceil,
                _ => Rounding::Floor,
            };
            if ty == Ty::Numeric {
                return round_numeric(&x, scale, mode);
            }
            let f = float(&x)?;
            Ok(Key::Float(match mode {
                Rounding::HalfAway => f.round_ties_even(),
                Rounding::Trunc => f.trunc(),
                Rounding::Ceil => f.ceil(),
                Rounding::Floor => f.floor(),
            }))
        }
        Op::Coalesce => {
            for i in 0..args.len() {
                let v = arg(i)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            Ok(Key::Null)
        }
        Op::NullIf => {
            let a = arg(0)?;
            Ok(match compare(CmpOp::Eq, &a, &arg(1)?) {
                Some(true) => Key::Null,
                _ => a,
            })
        }
        Op::Greatest | Op::Least => {
            let mut best: Option<Key> = None;
            for i in 0..args.len() {
                let v = arg(i)?;
                if v.is_null() {
                    continue;
                }
                let better = best.as_ref().is_none_or(|b| {
                    let o = v.cmp_value(b);
                    if matches!(op, Op::Greatest) {
                        o == Ordering::Greater
                    } else {
                        o == Ordering::Less
                    }
                });
                if better {
                    best = Some(v);
                }
            }
            Ok(best.unwrap_or(Key::Null))
        }
        Op::Case { operand, otherwise } => {
            let mut i = 0;
            let subject = if *operand {
                i = 1;
                Some(arg(0)?)
            } else {
                None
            };
            let end = args.len() - usize::from(*otherwise);
            while i + 1 < end {
                let cond = arg(i)?;
                let hit = match &subject {
                    Some(s) => compare(CmpOp::Eq, s, &cond) == Some(true),
                    None => as_bool(&cond) == Some(true),
                };
                if hit {
                    return arg(i + 1);
                }
                i += 2;
            }
            if *otherwise {
                return arg(args.len() - 1);
            }
            Ok(Key::Null)
        }
    }
}
