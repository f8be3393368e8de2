//! Recognising aggregate calls and rewriting them into per-shard partials.

use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart,
};

use super::{refuse, Unmergeable};
use crate::lexer::{Lexer, TokenKind};

pub use shardgate_merge::AggKind;

/// The aggregate a function name calls, when the merge combines it.
fn kind_from_name(name: &str) -> Option<AggKind> {
    Some(match name {
        "count" => AggKind::Count,
        "sum" => AggKind::Sum,
        "avg" => AggKind::Avg,
        "min" => AggKind::Min,
        "max" => AggKind::Max,
        "bool_and" | "every" => AggKind::BoolAnd,
        "bool_or" => AggKind::BoolOr,
        "string_agg" => AggKind::StringAgg,
        "array_agg" => AggKind::ArrayAgg,
        "json_agg" | "jsonb_agg" => AggKind::JsonAgg,
        _ => {
            return shardgate_merge::Statistic::from_name(name)
                .map(AggKind::Statistic)
                .or_else(|| shardgate_merge::BitOp::from_name(name).map(AggKind::Bits))
                .or_else(|| shardgate_merge::Regression::from_name(name).map(AggKind::Regression))
                .or_else(|| shardgate_merge::OrderedSet::from_name(name).map(AggKind::OrderedSet))
        }
    })
}

/// The partial aggregates each shard computes, in the order
/// [`shardgate_merge::AggState::add`] takes them: count → [count];
/// sum → [sum]; avg → [sum, count, avg]; min/max → [value (binary), value
/// for the client]; bool_and/bool_or → [value]; bit_and/bit_or/bit_xor → [value];
/// corr/covar_*/regr_* → [`shardgate_merge::REGRESSION_PARTIALS`]; the gathered and statistical
/// aggregates' partials are expressions of their own (see `gather.rs`).
pub fn partial_names(kind: AggKind) -> &'static [&'static str] {
    match kind {
        AggKind::Count => &["count"],
        AggKind::Sum => &["sum"],
        AggKind::Avg => &["sum", "count", "avg"],
        AggKind::Min => &["min", "min"],
        AggKind::Max => &["max", "max"],
        AggKind::BoolAnd => &["bool_and"],
        AggKind::BoolOr => &["bool_or"],
        AggKind::StringAgg => &["string_agg", "text"],
        AggKind::ArrayAgg => &["array_agg"],
        AggKind::JsonAgg => &["json_agg"],
        AggKind::Statistic(_) => &["count", "sum", "sum", "avg", "var_pop"],
        AggKind::Bits(op) => match op {
            shardgate_merge::BitOp::And => &["bit_and"],
            shardgate_merge::BitOp::Or => &["bit_or"],
            shardgate_merge::BitOp::Xor => &["bit_xor"],
        },
        AggKind::Regression(_) => &shardgate_merge::REGRESSION_PARTIALS,
        // Expressions of their own (see `gather.rs`).
        AggKind::OrderedSet(_) => &[],
    }
}

/// Aggregates whose per-shard results cannot be combined exactly: every
/// known aggregate the merge does not combine, and `grouping()`.
fn unmergeable(name: &str) -> bool {
    name == "grouping"
        || (crate::shard::AGGREGATES.contains(&name) && kind_from_name(name).is_none())
}

/// An aggregate call of the statement.
#[derive(Debug, Clone)]
pub(super) struct AggCall {
    pub func: AggKind,
    /// The call as written (identifies equal calls).
    pub text: String,
    /// `count/sum/avg(DISTINCT ...)`: the shards' partials are exact only
    /// when no distinct value can occur on two shards (the planner decides).
    pub distinct: bool,
    function: Function,
}

impl AggCall {
    /// The partial aggregates as expressions, in [`AggKind::partials`] order.
    pub fn partial_exprs(&self) -> Result<Vec<Expr>, Unmergeable> {
        if let Some(exprs) = super::gather::partial_exprs(self.func, &self.function) {
            return exprs;
        }
        Ok(partial_names(self.func)
            .iter()
            .map(|name| {
                let mut f = self.function.clone();
                f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(*name))]);
                Expr::Function(f)
            })
            .collect())
    }

    /// The call as parsed.
    pub fn function(&self) -> &Function {
        &self.function
    }

    /// The function's name as called.
    pub fn name(&self) -> String {
        function_name(&self.function)
    }

    /// The single argument of the call (`None`: `*`, several, or named).
    pub fn argument(&self) -> Option<&Expr> {
        match &self.function.args {
            FunctionArguments::List(list) => match list.args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => Some(e),
                _ => None,
            },
            _ => None,
        }
    }
}

fn function_name(f: &Function) -> String {
    f.name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| {
            if i.quote_style.is_some() {
                i.value.clone()
            } else {
                i.value.to_ascii_lowercase()
            }
        })
        .unwrap_or_default()
}

/// `e` when it is a bare call of an aggregate the proxy combines; an error
/// for aggregates (and forms) it cannot combine exactly.
pub(super) fn aggregate_call(e: &Expr) -> Result<Option<AggCall>, Unmergeable> {
    let e = strip_nested(e);
    let Expr::Function(f) = e else {
        return Ok(None);
    };
    let name = function_name(f);
    if unmergeable(&name) && f.over.is_none() {
        return refuse(format!("aggregate {name}()"));
    }
    // Hypothetical-set aggregates (`rank(v) WITHIN GROUP (...)`).
    if !f.within_group.is_empty() && kind_from_name(&name).is_none() {
        return refuse(format!("{name}() WITHIN GROUP"));
    }
    // A window call (the planner checked windows already) is no aggregate.
    if f.over.is_some() {
        return Ok(None);
    }
    let Some(func) = kind_from_name(&name) else {
        return Ok(None);
    };
    if !f.within_group.is_empty() && !matches!(func, AggKind::OrderedSet(_)) {
        return refuse(format!("{name}() WITHIN GROUP"));
    }
    super::gather::check_call(func, &name, f)?;
    let any_distinct = matches!(
        &f.args,
        FunctionArguments::List(list)
            if matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct))
    );
    // A value on two shards would count twice in these.
    if any_distinct
        && matches!(
            func,
            AggKind::Bits(shardgate_merge::BitOp::Xor) | AggKind::Regression(_)
        )
    {
        return refuse(format!("{name}(DISTINCT ...)"));
    }
    // min/max(DISTINCT), bool_and/or(DISTINCT) and bit_and/or(DISTINCT)
    // combine as without it.
    let distinct = any_distinct && matches!(func, AggKind::Count | AggKind::Sum | AggKind::Avg);
    Ok(Some(AggCall {
        func,
        text: e.to_string(),
        distinct,
        function: f.clone(),
    }))
}

/// `e` without enclosing parentheses.
pub(super) fn strip_nested(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip_nested(inner),
        _ => e,
    }
}

/// Whether the expression calls an aggregate of this query level (calls
/// inside subqueries belong to the subquery, which runs per shard).
pub(super) fn mentions_aggregate(e: &Expr) -> bool {
    match e {
        Expr::Subquery(_) | Expr::Exists { .. } => false,
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) => false,
        Expr::Nested(x)
        | Expr::UnaryOp { expr: x, .. }
        | Expr::Cast { expr: x, .. }
        | Expr::IsNull(x)
        | Expr::IsNotNull(x)
        | Expr::IsTrue(x)
        | Expr::IsFalse(x) => mentions_aggregate(x),
        Expr::BinaryOp { left, right, .. } => mentions_aggregate(left) || mentions_aggregate(right),
        Expr::Function(f) => {
            let name = function_name(f);
            // `sum(x) OVER (...)` is a window function, not an aggregate of
            // this query level (its arguments may still hold one).
            if f.over.is_none()
                && (kind_from_name(&name).is_some()
                    || unmergeable(&name)
                    || !f.within_group.is_empty())
            {
                return true;
            }
            match &f.args {
                FunctionArguments::List(list) => list.args.iter().any(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x))
                    | FunctionArg::Named {
                        arg: FunctionArgExpr::Expr(x),
                        ..
                    } => mentions_aggregate(x),
                    _ => false,
                }),
                FunctionArguments::Subquery(_) | FunctionArguments::None => false,
            }
        }
        _ => mentions_aggregate_text(e),
    }
}

/// Text fallback of [`mentions_aggregate`] for other expression kinds
/// (conservative: also sees calls inside subqueries).
fn mentions_aggregate_text(e: &Expr) -> bool {
    let text = e.to_string();
    let toks: Vec<_> = Lexer::new(&text).collect();
    toks.iter().enumerate().any(|(i, t)| {
        t.kind == TokenKind::Word && toks.get(i + 1).is_some_and(|n| n.is_punct("(")) && {
            let w = t.text.to_ascii_lowercase();
            kind_from_name(&w).is_some() || unmergeable(&w)
        }
    })
}

/// Whether SQL text has a window function call (`OVER (` or `OVER name`).
pub(super) fn mentions_window(text: &str) -> bool {
    count_windows(text) > 0
}

/// How many window function calls SQL text has.
pub(super) fn count_windows(text: &str) -> usize {
    let toks: Vec<_> = Lexer::new(text).collect();
    toks.iter()
        .enumerate()
        .filter(|(i, t)| {
            let i = *i;
            t.is_keyword("over")
                && i > 0
                && toks[i - 1].is_punct(")")
                && toks
                    .get(i + 1)
                    .is_some_and(|n| n.is_punct("(") || n.kind == TokenKind::Word)
        })
        .count()
}
