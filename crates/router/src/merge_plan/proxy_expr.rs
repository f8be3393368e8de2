//! Expressions over aggregates (outputs, HAVING, ORDER BY) compiled into
//! trees the proxy evaluates per combined group
//! ([`shardgate_merge::expr::Node`]).
//!
//! Aggregate calls become inputs (combined partials); subexpressions
//! without an aggregate become inputs too, computed by the shards as
//! hidden columns (constant within a group); what remains is evaluated at
//! the proxy. Each operator node gets a *probe*: a hidden column
//! `CASE WHEN false THEN <node> END`, which Postgres never evaluates but
//! describes with the node's type, so the proxy computes in exactly the
//! type Postgres resolves.

use shardgate_merge::expr::{CastTarget, CmpOp, Literal, Node, Op};
use shardgate_merge::oid;
use sqlparser::ast::helpers::attached_token::AttachedToken;
use sqlparser::ast::{
    BinaryOperator, CaseWhen, CeilFloorKind, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    InTarget, UnaryOperator, Value,
};

use super::aggregate::mentions_aggregate;
use super::{refuse, GroupValue, ProxyExpr, Unmergeable};

/// What the compiler asks of the planner.
pub(super) trait ExprSource {
    /// The input for an aggregate call (`None`: `e` is not one).
    fn aggregate(&mut self, e: &Expr) -> Result<Option<GroupValue>, Unmergeable>;
    /// The hidden column computing `e` on the shards.
    fn column(&mut self, e: &Expr) -> usize;
}

/// `CASE WHEN false THEN e END`: NULL, typed as `e`, never evaluated.
pub(super) fn probe_expr(e: &Expr) -> Expr {
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition: Expr::Value(Value::Boolean(false).into()),
            result: Expr::Nested(Box::new(e.clone())),
        }],
        else_result: None,
    }
}

/// Compiles `e`. `root_probe`: a column already typed as `e` (the output
/// column the probe replaces), used for the root instead of a new probe.
pub(super) fn compile(
    e: &Expr,
    source: &mut dyn ExprSource,
    root_probe: Option<usize>,
) -> Result<ProxyExpr, Unmergeable> {
    let mut c = Compiler {
        source,
        out: ProxyExpr {
            tree: Node::Const(Literal::Null),
            inputs: Vec::new(),
            probes: Vec::new(),
        },
        root_probe,
    };
    c.out.tree = c.node(e, true)?;
    Ok(c.out)
}

struct Compiler<'a> {
    source: &'a mut dyn ExprSource,
    out: ProxyExpr,
    root_probe: Option<usize>,
}

fn literal(e: &Expr) -> Option<Literal> {
    match e {
        Expr::Nested(x) => literal(x),
        Expr::Value(v) => match &v.value {
            Value::Null => Some(Literal::Null),
            Value::Number(n, _) => Some(Literal::Number(n.clone())),
            Value::SingleQuotedString(s) => Some(Literal::Text(s.clone())),
            Value::Boolean(b) => Some(Literal::Bool(*b)),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Literal::Number(n) if !n.starts_with('-') => Some(Literal::Number(format!("-{n}"))),
            _ => None,
        },
        _ => None,
    }
}

/// A cast's target type as the evaluator knows it.
fn cast_target(data_type: &str) -> Option<CastTarget> {
    let t = data_type.to_ascii_lowercase();
    let plain = |oid| {
        Some(CastTarget {
            oid,
            numeric_typmod: None,
        })
    };
    match t.as_str() {
        "smallint" | "int2" => plain(oid::INT2),
        "int" | "integer" | "int4" => plain(oid::INT4),
        "bigint" | "int8" => plain(oid::INT8),
        "real" | "float4" => plain(oid::FLOAT4),
        "double precision" | "float8" | "float" => plain(oid::FLOAT8),
        "text" => plain(oid::TEXT),
        "varchar" | "character varying" => plain(oid::VARCHAR),
        "bool" | "boolean" => plain(oid::BOOL),
        "numeric" | "decimal" => plain(oid::NUMERIC),
        _ => {
            let (name, rest) = t.split_once('(')?;
            let args: Vec<i32> = rest
                .strip_suffix(')')?
                .split(',')
                .map(|a| a.trim().parse().ok())
                .collect::<Option<_>>()?;
            match (name.trim(), args.as_slice()) {
                ("numeric" | "decimal", [p]) if (1..=1000).contains(p) => Some(CastTarget {
                    oid: oid::NUMERIC,
                    numeric_typmod: Some((*p, 0)),
                }),
                ("numeric" | "decimal", [p, s])
                    if (1..=1000).contains(p) && (-1000..=1000).contains(s) =>
                {
                    Some(CastTarget {
                        oid: oid::NUMERIC,
                        numeric_typmod: Some((*p, *s)),
                    })
                }
                ("float", [p]) if (1..=24).contains(p) => plain(oid::FLOAT4),
                ("float", [p]) if (25..=53).contains(p) => plain(oid::FLOAT8),
                _ => None,
            }
        }
    }
}

/// The plain arguments of a function call (`None` with DISTINCT, ORDER
/// BY, FILTER, OVER, named arguments...).
fn plain_args(f: &sqlparser::ast::Function) -> Option<Vec<&Expr>> {
    if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
        return None;
    }
    match &f.args {
        FunctionArguments::List(list)
            if list.duplicate_treatment.is_none() && list.clauses.is_empty() =>
        {
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                    _ => None,
                })
                .collect()
        }
        _ => None,
    }
}

impl Compiler<'_> {
    fn input(&mut self, v: GroupValue) -> Node {
        let i = match self.out.inputs.iter().position(|x| *x == v) {
            Some(i) => i,
            None => {
                self.out.inputs.push(v);
                self.out.inputs.len() - 1
            }
        };
        Node::Input(i)
    }

    /// An operator node typed by a probe of `e`.
    fn typed(&mut self, e: &Expr, root: bool, op: Op, args: Vec<Node>) -> Node {
        let column = match (root, self.root_probe) {
            (true, Some(c)) => c,
            _ => self.source.column(&probe_expr(e)),
        };
        self.out.probes.push(column);
        Node::Op {
            op,
            args,
            probe: Some(self.out.probes.len() - 1),
        }
    }

    fn untyped(op: Op, args: Vec<Node>) -> Node {
        Node::Op {
            op,
            args,
            probe: None,
        }
    }

    fn nodes(&mut self, es: &[&Expr]) -> Result<Vec<Node>, Unmergeable> {
        es.iter().map(|e| self.node(e, false)).collect()
    }

    fn node(&mut self, e: &Expr, root: bool) -> Result<Node, Unmergeable> {
        if let Some(l) = literal(e) {
            return Ok(Node::Const(l));
        }
        if let Some(v) = self.source.aggregate(e)? {
            return Ok(self.input(v));
        }
        if !mentions_aggregate(e) {
            let c = self.source.column(e);
            return Ok(self.input(GroupValue::Column(c)));
        }
        let over = || refuse(format!("the expression {e} over an aggregate"));
        Ok(match e {
            Expr::Nested(x) => self.node(x, root)?,
            Expr::BinaryOp { left, op, right } => {
                let args = self.nodes(&[left, right])?;
                let cmp = |c| Some(Op::Cmp(c));
                let (op, typed) = match op {
                    BinaryOperator::Plus => (Some(Op::Add), true),
                    BinaryOperator::Minus => (Some(Op::Sub), true),
                    BinaryOperator::Multiply => (Some(Op::Mul), true),
                    BinaryOperator::Divide => (Some(Op::Div), true),
                    BinaryOperator::Modulo => (Some(Op::Mod), true),
                    BinaryOperator::StringConcat => (Some(Op::Concat), true),
                    BinaryOperator::Eq => (cmp(CmpOp::Eq), false),
                    BinaryOperator::NotEq => (cmp(CmpOp::NotEq), false),
                    BinaryOperator::Lt => (cmp(CmpOp::Lt), false),
                    BinaryOperator::LtEq => (cmp(CmpOp::LtEq), false),
                    BinaryOperator::Gt => (cmp(CmpOp::Gt), false),
                    BinaryOperator::GtEq => (cmp(CmpOp::GtEq), false),
                    BinaryOperator::And => (Some(Op::And), false),
                    BinaryOperator::Or => (Some(Op::Or), false),
                    _ => (None, false),
                };
                let Some(op) = op else {
                    return refuse(format!(
                        "the operator {} over an aggregate",
                        match e {
                            Expr::BinaryOp { op, .. } => op.to_string(),
                            _ => String::new(),
                        }
                    ));
                };
                if typed {
                    self.typed(e, root, op, args)
                } else {
                    Self::untyped(op, args)
                }
            }
            Expr::UnaryOp { op, expr } => match op {
                UnaryOperator::Plus => self.node(expr, root)?,
                UnaryOperator::Minus => {
                    let a = self.node(expr, false)?;
                    self.typed(e, root, Op::Neg, vec![a])
                }
                UnaryOperator::Not => Self::untyped(Op::Not, vec![self.node(expr, false)?]),
                _ => return over(),
            },
            Expr::IsNull(x) => Self::untyped(Op::IsNull(true), vec![self.node(x, false)?]),
            Expr::IsNotNull(x) => Self::untyped(Op::IsNull(false), vec![self.node(x, false)?]),
            Expr::IsTrue(x) | Expr::IsNotTrue(x) | Expr::IsFalse(x) | Expr::IsNotFalse(x) => {
                let value = matches!(e, Expr::IsTrue(_) | Expr::IsNotTrue(_));
                let negated = matches!(e, Expr::IsNotTrue(_) | Expr::IsNotFalse(_));
                let a = self.node(x, false)?;
                Self::untyped(
                    Op::IsDistinct(negated),
                    vec![a, Node::Const(Literal::Bool(value))],
                )
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                let distinct = matches!(e, Expr::IsDistinctFrom(..));
                Self::untyped(Op::IsDistinct(distinct), self.nodes(&[a, b])?)
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let [x, lo, hi]: [Node; 3] =
                    self.nodes(&[expr, low, high])?
                        .try_into()
                        .map_err(|_| Unmergeable {
                            construct: "BETWEEN".into(),
                        })?;
                let inside = Self::untyped(
                    Op::And,
                    vec![
                        Self::untyped(Op::Cmp(CmpOp::GtEq), vec![x.clone(), lo]),
                        Self::untyped(Op::Cmp(CmpOp::LtEq), vec![x, hi]),
                    ],
                );
                if *negated {
                    Self::untyped(Op::Not, vec![inside])
                } else {
                    inside
                }
            }
            Expr::In {
                expr,
                target: InTarget::List(list),
                negated,
                global: false,
            } => {
                let mut all: Vec<&Expr> = vec![expr];
                all.extend(list.iter());
                Self::untyped(Op::InList(*negated), self.nodes(&all)?)
            }
            Expr::Cast {
                expr,
                data_type,
                format: None,
                ..
            } => {
                let Some(target) = cast_target(&data_type.to_string()) else {
                    return refuse(format!("a cast to {data_type} over an aggregate"));
                };
                Self::untyped(Op::Cast(target), vec![self.node(expr, false)?])
            }
            Expr::Ceil { expr, field } | Expr::Floor { expr, field } => {
                let scale_free = match field {
                    CeilFloorKind::DateTimeField(f) => {
                        matches!(f, sqlparser::ast::DateTimeField::NoDateTime)
                    }
                    CeilFloorKind::Scale(_) => false,
                };
                if !scale_free {
                    return over();
                }
                let op = if matches!(e, Expr::Ceil { .. }) {
                    Op::Ceil
                } else {
                    Op::Floor
                };
                let a = self.node(expr, false)?;
                self.typed(e, root, op, vec![a])
            }
            Expr::Function(f) => {
                let name = f
                    .name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.to_ascii_lowercase())
                    .unwrap_or_default();
                let op = match name.as_str() {
                    "round" => Op::Round,
                    "trunc" => Op::Trunc,
                    "ceil" | "ceiling" => Op::Ceil,
                    "floor" => Op::Floor,
                    "abs" => Op::Abs,
                    "coalesce" => Op::Coalesce,
                    "nullif" => Op::NullIf,
                    "greatest" => Op::Greatest,
                    "least" => Op::Least,
                    _ => return refuse(format!("the function {name}() over an aggregate")),
                };
                let Some(args) = plain_args(f).filter(|a| !a.is_empty()) else {
                    return refuse(format!("this call of {name}() over an aggregate"));
                };
                if f.name.0.len() > 1 {
                    return refuse(format!("{} over an aggregate", f.name));
                }
                let args = self.nodes(&args)?;
                self.typed(e, root, op, args)
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut args = Vec::new();
                if let Some(o) = operand {
                    args.push(self.node(o, false)?);
                }
                for w in conditions {
                    args.push(self.node(&w.condition, false)?);
                    args.push(self.node(&w.result, false)?);
                }
                if let Some(x) = else_result {
                    args.push(self.node(x, false)?);
                }
                let op = Op::Case {
                    operand: operand.is_some(),
                    otherwise: else_result.is_some(),
                };
                self.typed(e, root, op, args)
            }
            _ => return over(),
        })
    }
}

/// Whether the expressions read a per-group column the shards computed
/// (a probe is only a type).
pub(super) fn reads_columns(x: &ProxyExpr) -> bool {
    x.inputs.iter().any(|i| matches!(i, GroupValue::Column(_)))
}
