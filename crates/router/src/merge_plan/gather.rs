//! Gathered (`string_agg`, `array_agg`, `json_agg`, `jsonb_agg`) and statistical
//! (`variance`, `stddev`, ...) aggregates across shards.
//!
//! - A statistic's partials are `count(x)`, `sum(x)`, `sum(x::numeric * x::numeric)`,
//!   `avg(x)` and `var_pop(x)` (FILTER kept); the proxy combines them
//!   (`shardgate_merge`'s `variance.rs`).
//! - `string_agg(x, sep)`, `array_agg(x)` and `json(b)_agg(x)` are computed by the shards and their
//!   values concatenated by the proxy. With an `ORDER BY` inside, the shards also group
//!   by its keys and sort by them after the group keys, so a group's rows arrive in the
//!   aggregate's order and concatenating them in arrival order is that order (ties are
//!   arbitrary, as in Postgres). All ordered gathered aggregates of a statement share one
//!   ORDER BY. Without ORDER BY the order is unspecified and any concatenation is right.
//!   The separator must be a constant (the shards send it back as a partial).

use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectNamePart,
    OrderByExpr, Select,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::aggregate::{mentions_aggregate, strip_nested, AggCall};
use super::{direction, having_uses_column, refuse, Planner, Unmergeable};
use super::{HavingExpr, OutputColumn, SortKey};
use shardgate_merge::AggKind;

/// Whether `kind` is gathered or statistical (handled here).
fn handled(kind: AggKind) -> bool {
    matches!(
        kind,
        AggKind::StringAgg | AggKind::ArrayAgg | AggKind::JsonAgg | AggKind::Statistic(_)
    )
}

/// The unnamed arguments of a call (`None` when some are named or `*`).
fn plain_args(f: &Function) -> Option<(&FunctionArgumentList, Vec<&Expr>)> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let args = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((list, args))
}

/// Refuses the forms of gathered and statistical calls the merge cannot combine:
/// DISTINCT, clauses other than ORDER BY, a separator that is not a constant.
pub(super) fn check_call(kind: AggKind, name: &str, f: &Function) -> Result<(), Unmergeable> {
    if !handled(kind) {
        return Ok(());
    }
    let Some((list, args)) = plain_args(f) else {
        return refuse(format!("{name}() with named or * arguments"));
    };
    if matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct)) {
        return refuse(format!("{name}(DISTINCT ...)"));
    }
    if list
        .clauses
        .iter()
        .any(|c| !matches!(c, FunctionArgumentClause::OrderBy(_)))
    {
        return refuse(format!("{name}() with a clause other than ORDER BY"));
    }
    let want = if kind == AggKind::StringAgg { 2 } else { 1 };
    if args.len() != want {
        return refuse(format!("{name}() with {} arguments", args.len()));
    }
    if kind == AggKind::StringAgg && !is_constant(args[1]) {
        return refuse("string_agg() with a separator that is not a constant");
    }
    Ok(())
}

/// A literal or a bind parameter (through parentheses and casts).
fn is_constant(e: &Expr) -> bool {
    match strip_nested(e) {
        Expr::Value(_) => true,
        Expr::Cast { expr, .. } => is_constant(expr),
        _ => false,
    }
}

fn parse_expr(text: &str) -> Result<Expr, Unmergeable> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .or_else(|_| refuse(format!("the aggregate argument {text}")))
}

/// `f` renamed to `name` with the one argument `arg` (FILTER kept, ORDER BY dropped).
fn call(f: &Function, name: &str, arg: Expr) -> Expr {
    let mut g = f.clone();
    g.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]);
    g.args = FunctionArguments::List(FunctionArgumentList {
        duplicate_treatment: None,
        args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))],
        clauses: Vec::new(),
    });
    Expr::Function(g)
}

/// The partial expressions of a gathered or statistical call (in
/// [`AggKind::partial_count`] order); `None` for other kinds.
pub(super) fn partial_exprs(kind: AggKind, f: &Function) -> Option<Result<Vec<Expr>, Unmergeable>> {
    if !handled(kind) {
        return None;
    }
    let args = plain_args(f).map(|(_, a)| a).unwrap_or_default();
    Some(match (kind, args.as_slice()) {
        (AggKind::StringAgg, [_, sep]) => {
            parse_expr(&format!("({sep})::text")).map(|s| vec![Expr::Function(f.clone()), s])
        }
        (AggKind::ArrayAgg | AggKind::JsonAgg, [_]) => Ok(vec![Expr::Function(f.clone())]),
        (AggKind::Statistic(_), [x]) => parse_expr(&format!("({x})::numeric * ({x})::numeric"))
            .map(|sq| {
                vec![
                    call(f, "count", (*x).clone()),
                    call(f, "sum", (*x).clone()),
                    call(f, "sum", sq),
                    call(f, "avg", (*x).clone()),
                    call(f, "var_pop", (*x).clone()),
                ]
            }),
        _ => refuse(format!("{f} (unexpected arguments)")),
    })
}

/// The ORDER BY inside a call without constant keys (empty without one).
fn inner_order(f: &Function) -> Vec<OrderByExpr> {
    let FunctionArguments::List(list) = &f.args else {
        return Vec::new();
    };
    list.clauses
        .iter()
        .filter_map(|c| match c {
            FunctionArgumentClause::OrderBy(v) => Some(v),
            _ => None,
        })
        .flatten()
        .filter(|o| !matches!(strip_nested(&o.expr), Expr::Value(_)))
        .cloned()
        .collect()
}

impl Planner {
    /// Records the ORDER BY inside a `string_agg`/`array_agg` call; refuses a
    /// second, different one.
    pub(super) fn note_gathered(&mut self, call: &AggCall) -> Result<(), Unmergeable> {
        if !matches!(
            call.func,
            AggKind::StringAgg | AggKind::ArrayAgg | AggKind::JsonAgg
        ) {
            return Ok(());
        }
        let keys = inner_order(call.function());
        if keys.is_empty() {
            return Ok(());
        }
        let text = keys
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match &self.gather_order {
            Some((t, _)) if *t != text => refuse(format!(
                "{}(... ORDER BY {text}) next to a gathered aggregate ordered otherwise",
                call.name()
            )),
            Some(_) => Ok(()),
            None => {
                self.gather_order = Some((text, keys));
                Ok(())
            }
        }
    }

    /// The merge keys of the gathered aggregates' ORDER BY: the shards group by its
    /// keys too (added to `select`), so a group's rows arrive in that order. Empty when
    /// no gathered aggregate orders its input, or every group is on one shard.
    pub(super) fn gathered_keys(
        &mut self,
        select: &mut Select,
        visible: usize,
        single_row: bool,
        outputs: &[OutputColumn],
        having: Option<&HavingExpr>,
    ) -> Result<Vec<SortKey>, Unmergeable> {
        let Some((_, order)) = self.gather_order.take() else {
            return Ok(Vec::new());
        };
        if self.groups_on_one_shard {
            return Ok(Vec::new());
        }
        if self.spread_distinct.is_some() || self.key_distinct.is_some() {
            return refuse(
                "count/sum/avg(DISTINCT ...) next to string_agg/array_agg(... ORDER BY ...)",
            );
        }
        // Over no rows the shards then send no row, and the proxy makes the
        // one row from the aggregates alone.
        if single_row
            && (outputs.contains(&OutputColumn::Group) || having.is_some_and(having_uses_column))
        {
            return refuse(
                "string_agg/array_agg(... ORDER BY ...) without GROUP BY next to a value that is no aggregate",
            );
        }
        let mut keys = Vec::with_capacity(order.len());
        for o in order {
            let (desc, nulls_first) = direction(&o.options)?;
            if mentions_aggregate(&o.expr) {
                return refuse("aggregates in an aggregate's ORDER BY");
            }
            match &mut select.group_by {
                GroupByExpr::Expressions(exprs, _) => exprs.push(o.expr.clone()),
                GroupByExpr::All(_) => return refuse("GROUP BY ALL"),
            }
            keys.push(SortKey {
                column: self.hide(visible, o.expr),
                desc,
                nulls_first,
            });
        }
        Ok(keys)
    }
}

/// Which partial of an aggregate holds the value in the client's format when the
/// aggregate is a visible column (that column itself is used); `None`: all binary.
pub(super) fn client_format_partial(kind: AggKind) -> Option<usize> {
    match kind {
        AggKind::Min | AggKind::Max => Some(1),
        AggKind::StringAgg | AggKind::ArrayAgg | AggKind::JsonAgg => Some(0),
        _ => None,
    }
}
