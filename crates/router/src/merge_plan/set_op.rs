//! `UNION`, `INTERSECT` and `EXCEPT` across shards, as a SELECT over the
//! branches that the grouped or sorted merge answers.
//!
//! Every shard runs the branches over its own rows; a row may come from
//! several shards, so the combining happens at the proxy:
//!
//! - `UNION ALL` with ORDER BY / LIMIT: `SELECT c.. FROM (a UNION ALL b)`
//!   sorted and limited by the merge.
//! - `UNION`: the same with DISTINCT (each shard removes its own
//!   duplicates, the merge those across shards).
//! - `INTERSECT` / `EXCEPT` [ALL]: each shard tags its rows with their
//!   side and counts them per distinct row (`GROUP BY` every column); the
//!   merge adds the counts over the shards and keeps a row when both sides
//!   have it (INTERSECT) or only the left one does (EXCEPT), sending it
//!   `least(l, r)` or `l - r` times for ALL ([`super::GroupPlan::repeat`]).
//!
//! Nested set operations other than `UNION ALL` (and `UNION` under a
//! duplicate-removing operation) would run on each shard alone: refused.

use sqlparser::ast::{
    GroupByExpr, Query, Select, SelectItem, SetExpr, SetOperator, SetQuantifier, Statement,
};

use super::aggregate::{mentions_aggregate, mentions_window};
use super::{figure_name, ident_name, refuse, Unmergeable};

/// A set operation rewritten as a SELECT the merge plans; `repeat`: its
/// last output column says how many times to send each row.
pub(super) struct Wrapped {
    /// The SELECT.
    pub query: Query,
    /// INTERSECT ALL / EXCEPT ALL.
    pub repeat: bool,
}

/// `query` rewritten when its body is a set operation the merge must
/// combine (`None`: not a set operation, or a bare `UNION ALL`, which
/// concatenates).
pub(super) fn wrap(query: &Query) -> Result<Option<Wrapped>, Unmergeable> {
    let SetExpr::SetOperation {
        op,
        set_quantifier,
        left,
        right,
    } = query.body.as_ref()
    else {
        return Ok(None);
    };
    let all = match set_quantifier {
        SetQuantifier::All => true,
        SetQuantifier::None | SetQuantifier::Distinct => false,
        _ => return refuse(format!("{op} {set_quantifier}")),
    };
    let ordered_or_limited =
        query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some();
    for side in [left, right] {
        check_nested(side, all)?;
    }
    if *op == SetOperator::Union && all && !ordered_or_limited {
        return Ok(None);
    }
    let names = output_names(left)?;
    let cols: Vec<String> = (1..=names.len()).map(|i| format!("\"__c{i}\"")).collect();
    let cols_list = cols.join(", ");
    let outputs = cols
        .iter()
        .zip(&names)
        .map(|(c, n)| format!("{c} AS \"{}\"", n.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let (l, r) = (left.to_string(), right.to_string());
    let sql = match op {
        SetOperator::Union => {
            let (inner, distinct) = if all {
                ("UNION ALL", "")
            } else {
                ("UNION", "DISTINCT ")
            };
            format!(
                "SELECT {distinct}{outputs} FROM (({l}) {inner} ({r})) AS \"__shardgate_u\" ({cols_list})"
            )
        }
        SetOperator::Intersect | SetOperator::Except => {
            let lc = "count(*) FILTER (WHERE \"__side\" = 1)";
            let rc = "count(*) FILTER (WHERE \"__side\" = 2)";
            let (keep, repeat) = match (op, all) {
                (SetOperator::Intersect, false) => (format!("{lc} > 0 AND {rc} > 0"), None),
                (SetOperator::Except, false) => (format!("{lc} > 0 AND {rc} = 0"), None),
                (SetOperator::Intersect, true) => {
                    let n = format!("least({lc}, {rc})");
                    (format!("{n} > 0"), Some(n))
                }
                _ => {
                    let n = format!("{lc} - {rc}");
                    (format!("{n} > 0"), Some(n))
                }
            };
            let repeat = repeat
                .map(|n| format!(", {n} AS \"__shardgate_repeat\""))
                .unwrap_or_default();
            format!(
                "SELECT {outputs}{repeat} FROM (SELECT *, 1 AS \"__side\" FROM ({l}) AS \"__shardgate_l\" UNION ALL SELECT *, 2 FROM ({r}) AS \"__shardgate_r\") AS \"__shardgate_u\" ({cols_list}, \"__side\") GROUP BY {cols_list} HAVING {keep}"
            )
        }
        other => return refuse(format!("{other}")),
    };
    let mut wrapped = match crate::sql_parse::parse_statements(&sql) {
        Ok(mut s) if s.len() == 1 => match s.pop() {
            Some(Statement::Query(q)) => *q,
            _ => return refuse(format!("{op} of these queries")),
        },
        _ => return refuse(format!("{op} of these queries")),
    };
    wrapped.with = query.with.clone();
    wrapped.order_by = query.order_by.clone();
    wrapped.limit_clause = query.limit_clause.clone();
    wrapped.fetch = query.fetch.clone();
    let repeat = all && matches!(op, SetOperator::Intersect | SetOperator::Except);
    Ok(Some(Wrapped {
        query: wrapped,
        repeat,
    }))
}

/// Branches may nest `UNION ALL`, and `UNION` under an operation that
/// removes duplicates anyway (`all` false); other nested operations would
/// run per shard.
fn check_nested(e: &SetExpr, all: bool) -> Result<(), Unmergeable> {
    match e {
        SetExpr::SetOperation {
            op,
            set_quantifier,
            left,
            right,
        } => {
            let nested_all = matches!(set_quantifier, SetQuantifier::All);
            let fine = *op == SetOperator::Union && (nested_all || !all);
            if !fine {
                return refuse(format!(
                    "{op}{} nested in another set operation",
                    if nested_all { " ALL" } else { "" }
                ));
            }
            check_nested(left, all)?;
            check_nested(right, all)
        }
        SetExpr::Query(q) => {
            if q.limit_clause.is_some() || q.fetch.is_some() {
                return refuse("LIMIT or OFFSET inside a branch of a set operation");
            }
            check_nested(&q.body, all)
        }
        SetExpr::Select(s) => check_branch(s, all),
        _ => Ok(()),
    }
}

/// A branch must keep each shard's rows as they are: aggregates, GROUP BY
/// or window functions would be computed per shard, and DISTINCT too
/// where the operation keeps duplicates.
pub(super) fn check_branch(s: &Select, all: bool) -> Result<(), Unmergeable> {
    let grouped = s.having.is_some()
        || !matches!(&s.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
        || s.projection.iter().any(|i| match i {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                mentions_aggregate(e)
            }
            _ => false,
        });
    if grouped {
        return refuse("aggregates or GROUP BY inside a branch of a set operation");
    }
    if mentions_window(&s.to_string()) {
        return refuse("window functions inside a branch of a set operation");
    }
    if all && s.distinct.is_some() {
        return refuse("DISTINCT inside a branch of UNION ALL, INTERSECT ALL or EXCEPT ALL");
    }
    Ok(())
}

/// The output column names of a set operation: its leftmost SELECT's.
fn output_names(e: &SetExpr) -> Result<Vec<String>, Unmergeable> {
    match e {
        SetExpr::Select(s) => s
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(e) => Ok(figure_name(e)),
                SelectItem::ExprWithAlias { alias, .. } => Ok(ident_name(alias)),
                _ => refuse("a set operation over SELECT *"),
            })
            .collect(),
        SetExpr::SetOperation { left, .. } => output_names(left),
        SetExpr::Query(q) => output_names(&q.body),
        _ => refuse("a set operation over VALUES or a table"),
    }
}
