//! HAVING compiled into a small predicate over combined groups.

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};

use super::{refuse, GroupValue, Unmergeable};

/// A HAVING predicate over a combined group (SQL three-valued logic).
#[derive(Debug, Clone, PartialEq)]
pub enum HavingExpr {
    /// `a AND b`.
    And(Box<HavingExpr>, Box<HavingExpr>),
    /// `a OR b`.
    Or(Box<HavingExpr>, Box<HavingExpr>),
    /// `NOT a`.
    Not(Box<HavingExpr>),
    /// A comparison.
    Cmp(CmpOp, Operand, Operand),
    /// `x IS NULL` (`true`) / `x IS NOT NULL` (`false`).
    IsNull(Operand, bool),
    /// A boolean value used as a condition (`HAVING bool_or(x)`).
    Truth(Operand),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`, `!=`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A value of the group.
    Value(GroupValue),
    /// A constant.
    Literal(Literal),
}

/// A constant of HAVING.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `NULL`.
    Null,
    /// A number as written (`-` sign included).
    Number(String),
    /// A string.
    Text(String),
    /// `true` / `false`.
    Bool(bool),
}

/// Compiles HAVING; `value` turns an aggregate or per-group expression into
/// a [`GroupValue`].
pub(super) fn compile(
    e: &Expr,
    value: &mut dyn FnMut(&Expr) -> Result<GroupValue, Unmergeable>,
) -> Result<HavingExpr, Unmergeable> {
    Ok(match e {
        Expr::Nested(inner) => compile(inner, value)?,
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => HavingExpr::And(
                Box::new(compile(left, value)?),
                Box::new(compile(right, value)?),
            ),
            BinaryOperator::Or => HavingExpr::Or(
                Box::new(compile(left, value)?),
                Box::new(compile(right, value)?),
            ),
            _ => {
                let op = match op {
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::NotEq,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::LtEq,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::GtEq,
                    _ => return refuse(format!("HAVING with the operator {op}")),
                };
                HavingExpr::Cmp(op, operand(left, value)?, operand(right, value)?)
            }
        },
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => HavingExpr::Not(Box::new(compile(expr, value)?)),
        Expr::IsNull(x) => HavingExpr::IsNull(operand(x, value)?, true),
        Expr::IsNotNull(x) => HavingExpr::IsNull(operand(x, value)?, false),
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let x = operand(expr, value)?;
            let inside = HavingExpr::And(
                Box::new(HavingExpr::Cmp(
                    CmpOp::GtEq,
                    x.clone(),
                    operand(low, value)?,
                )),
                Box::new(HavingExpr::Cmp(CmpOp::LtEq, x, operand(high, value)?)),
            );
            if *negated {
                HavingExpr::Not(Box::new(inside))
            } else {
                inside
            }
        }
        Expr::Value(_) | Expr::Function(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
            HavingExpr::Truth(operand(e, value)?)
        }
        _ => return refuse(format!("HAVING {e}")),
    })
}

fn operand(
    e: &Expr,
    value: &mut dyn FnMut(&Expr) -> Result<GroupValue, Unmergeable>,
) -> Result<Operand, Unmergeable> {
    if let Some(l) = literal(e) {
        return Ok(Operand::Literal(l));
    }
    Ok(Operand::Value(value(e)?))
}

fn literal(e: &Expr) -> Option<Literal> {
    match e {
        Expr::Nested(inner) => literal(inner),
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
            Literal::Number(n) => Some(Literal::Number(format!("-{n}"))),
            _ => None,
        },
        _ => None,
    }
}
