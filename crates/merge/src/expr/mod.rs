//! Expressions the proxy evaluates over a combined group: `sum(a) /
//! count(*)`, `round(avg(x), 2)`, `CASE WHEN count(*) > 10 ...`, HAVING
//! predicates and ORDER BY keys over aggregates.
//!
//! The planner (in the router crate) turns the SQL into a [`Node`] tree
//! whose leaves are *inputs* (combined aggregates and per-group columns the
//! shards computed) and constants. Every operator node names a *probe*: a
//! column the shards return as `CASE WHEN false THEN <that node> END`,
//! always NULL but typed by Postgres itself. [`Node::bind`] reads those
//! types, so the proxy never guesses what type Postgres resolves an
//! operator, function or CASE to; it only picks the implementation for it
//! (`int4` division truncates, `numeric` division follows
//! `select_div_scale`, ...) and refuses ([`MergeError::Unsupported`], SQLSTATE
//! 0A000) the combinations it does not implement. Evaluation
//! ([`Bound::eval`]) follows Postgres: three-valued logic, overflow errors
//! (22003), division by zero (22012), numeric scales.

mod bind;
mod convert;
mod encode;
mod eval;
#[cfg(test)]
mod tests;

pub use bind::Bound;
pub use encode::{encodable, encode_value};

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

/// A constant as written in the statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `NULL` (typed by where it is used).
    Null,
    /// A number as written, sign included: an integer is `int4` when it
    /// fits, else `int8`, else `numeric`; with a point or exponent `numeric`.
    Number(String),
    /// A quoted string: read as the type it is used as (Postgres's
    /// `unknown`), `text` when nothing says otherwise.
    Text(String),
    /// `true` / `false`.
    Bool(bool),
}

/// The target of a cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CastTarget {
    /// The type's OID.
    pub oid: u32,
    /// `numeric(precision, scale)`.
    pub numeric_typmod: Option<(i32, i32)>,
}

/// An operator or function the proxy evaluates.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a % b`
    Mod,
    /// `-a`
    Neg,
    /// `a || b`
    Concat,
    /// A comparison of two arguments.
    Cmp(CmpOp),
    /// `a IS DISTINCT FROM b` (`true`) / `IS NOT DISTINCT FROM` (`false`).
    IsDistinct(bool),
    /// `a AND b AND ...`
    And,
    /// `a OR b OR ...`
    Or,
    /// `NOT a`
    Not,
    /// `a IS NULL` (`true`) / `a IS NOT NULL` (`false`).
    IsNull(bool),
    /// `a [NOT] IN (b, c, ...)`: `true` for NOT IN.
    InList(bool),
    /// `CAST(a AS t)` / `a::t`.
    Cast(CastTarget),
    /// `round(a [, scale])`
    Round,
    /// `trunc(a [, scale])`
    Trunc,
    /// `ceil(a)` / `ceiling(a)`
    Ceil,
    /// `floor(a)`
    Floor,
    /// `abs(a)`
    Abs,
    /// `coalesce(a, b, ...)`
    Coalesce,
    /// `nullif(a, b)`
    NullIf,
    /// `greatest(a, b, ...)`
    Greatest,
    /// `least(a, b, ...)`
    Least,
    /// `CASE [operand] WHEN c THEN r ... [ELSE e] END`: the arguments are
    /// the operand (when `operand`), then each WHEN and its THEN, then the
    /// ELSE (when `otherwise`).
    Case {
        /// A simple CASE (`CASE x WHEN 1 THEN ...`).
        operand: bool,
        /// An ELSE branch is present.
        otherwise: bool,
    },
}

/// An expression over a group's inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Input `n` (its type and value are given by the caller).
    Input(usize),
    /// A constant.
    Const(Literal),
    /// An operator over its arguments; `probe` is the index of this node's
    /// Postgres type among the probe types given to [`Node::bind`] (`None`
    /// for operators whose result is always `bool`).
    Op {
        /// The operator.
        op: Op,
        /// Its arguments.
        args: Vec<Node>,
        /// Where Postgres's type for this node is.
        probe: Option<usize>,
    },
}
