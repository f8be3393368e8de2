//! Gathered (`string_agg`, `array_agg`, `json_agg`, `jsonb_agg`) and statistical
//! (`variance`, `stddev`, ...) aggregates across shards.
//!
//! - A statistic's partials are `count(x)`, `sum(x)`, `sum(x::numeric * x::numeric)`,
//!   `avg(x)` and `var_pop(x)` (FILTER kept); the proxy combines them
//!   (`shardgate_merge`'s `variance.rs`).
//! - `string_agg(x, sep)`, `array_agg(x)` and `json(b)_agg(x)` are computed by the shards and their
//!   values concatenated by the proxy. With an `ORDER BY` inside, the shards also group
//!   by its keys (of every such aggregate), which travel as hidden columns
//!   ([`super::AggSlot::order`]); the proxy keeps a group's rows with their keys and
//!   combines them in the aggregate's order when the group is complete (ties are
//!   arbitrary, as in Postgres). Without ORDER BY the order is unspecified and any
//!   concatenation is right.
//!   The separator must be a constant (the shards send it back as a partial).
//! - `percentile_cont(f)`, `percentile_disc(f)` and `mode()` `WITHIN GROUP (ORDER BY
//!   x)`: gathered like an ordered `array_agg` (the shards also group by `x`), with
//!   the partials `count(x)`, the aggregate itself (over one value: that value) and
//!   `(f)::float8`; the fraction must be one number literal in [0, 1] (an array of
//!   fractions, a parameter, or a fraction Postgres fails on are refused). The proxy picks the result (`shardgate_merge`'s `ordered_set.rs`).

use sqlparser::ast::{
    DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectNamePart,
    OrderByExpr, Select,
};

use super::aggregate::{mentions_aggregate, strip_nested, AggCall};
use super::{direction, refuse, Planner, Unmergeable};
use super::{OutputColumn, SortKey};
use shardgate_merge::{AggKind, OrderedSet};

/// The argument list of a call without parentheses' contents (`mode()`).
static EMPTY_ARGS: FunctionArgumentList = FunctionArgumentList {
    duplicate_treatment: None,
    args: Vec::new(),
    clauses: Vec::new(),
};

/// Whether `kind` is gathered or statistical (handled here).
fn handled(kind: AggKind) -> bool {
    matches!(
        kind,
        AggKind::StringAgg
            | AggKind::ArrayAgg
            | AggKind::JsonAgg
            | AggKind::Statistic(_)
            | AggKind::OrderedSet(_)
    )
}

/// Refuses the ordered-set forms the merge cannot answer: several or constant
/// WITHIN GROUP keys, a fraction that is not one numeric constant.
fn check_ordered_set(
    kind: OrderedSet,
    name: &str,
    f: &Function,
    args: &[&Expr],
) -> Result<(), Unmergeable> {
    match f.within_group.as_slice() {
        [o] if !matches!(strip_nested(&o.expr), Expr::Value(_)) => {}
        _ => {
            return refuse(format!(
                "{name}() WITHIN GROUP without one ORDER BY expression"
            ))
        }
    }
    match (kind, args) {
        (OrderedSet::Mode, []) => Ok(()),
        (OrderedSet::PercentileCont | OrderedSet::PercentileDisc, [fraction]) => {
            match number(fraction) {
                Some(f) if (0.0..=1.0).contains(&f) => Ok(()),
                // Postgres fails with 22003 even over no rows, where the shards
                // would send nothing to fail with.
                Some(_) => refuse(format!("{name}() with a fraction outside [0, 1]")),
                None => refuse(format!(
                    "{name}() with a fraction that is not one number literal"
                )),
            }
        }
        _ => refuse(format!("{name}() with several fractions")),
    }
}

/// The value of a number literal, possibly signed, cast or parenthesised (not a
/// parameter, an array or a string literal).
fn number(e: &Expr) -> Option<f64> {
    match strip_nested(e) {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        Expr::UnaryOp {
            op: sqlparser::ast::UnaryOperator::Minus,
            expr,
        } => number(expr).map(|f| -f),
        Expr::UnaryOp {
            op: sqlparser::ast::UnaryOperator::Plus,
            expr,
        }
        | Expr::Cast { expr, .. } => number(expr),
        _ => None,
    }
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
    let Some((list, args)) = plain_args(f)
        .or_else(|| matches!(f.args, FunctionArguments::None).then(|| (&EMPTY_ARGS, Vec::new())))
    else {
        return refuse(format!("{name}() with named or * arguments"));
    };
    if let AggKind::OrderedSet(o) = kind {
        return check_ordered_set(o, name, f, &args);
    }
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
    crate::sql_parse::parse_expr(text).or_else(|_| refuse(format!("the aggregate argument {text}")))
}

/// `f` renamed to `name` with the one argument `arg` (FILTER kept, ORDER BY and
/// WITHIN GROUP dropped).
fn call(f: &Function, name: &str, arg: Expr) -> Expr {
    let mut g = f.clone();
    g.within_group = Vec::new();
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
    if let AggKind::OrderedSet(o) = kind {
        return Some(ordered_set_partials(o, f, &args));
    }
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

/// `[count(x), the call itself, (fraction)::float8]` (mode: the first two).
fn ordered_set_partials(
    kind: OrderedSet,
    f: &Function,
    args: &[&Expr],
) -> Result<Vec<Expr>, Unmergeable> {
    let Some(x) = f.within_group.first() else {
        return refuse(format!("{f} (no WITHIN GROUP)"));
    };
    let mut partials = vec![call(f, "count", x.expr.clone()), Expr::Function(f.clone())];
    match (kind, args) {
        (OrderedSet::Mode, []) => {}
        (_, [fraction]) => partials.push(parse_expr(&format!("({fraction})::float8"))?),
        _ => return refuse(format!("{f} (unexpected arguments)")),
    }
    Ok(partials)
}

/// The ORDER BY inside a call without constant keys (empty without one); the
/// WITHIN GROUP ORDER BY of an ordered-set aggregate.
fn inner_order(f: &Function) -> Vec<OrderByExpr> {
    if !f.within_group.is_empty() {
        return f.within_group.clone();
    }
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
    /// The ORDER BY keys inside a gathered call, as hidden columns the shards also
    /// group by (see [`Planner::gathered_group_by`]); empty without ORDER BY inside,
    /// or when every group is on one shard (a shard's own value is exact then).
    pub(super) fn gathered_order(
        &mut self,
        call: &AggCall,
        visible: usize,
    ) -> Result<Vec<SortKey>, Unmergeable> {
        // Ordered-set partials are per value of x, also when a group is on one shard.
        let ordered_set = matches!(call.func, AggKind::OrderedSet(_));
        let gathered = matches!(
            call.func,
            AggKind::StringAgg | AggKind::ArrayAgg | AggKind::JsonAgg
        );
        if !ordered_set && (!gathered || self.groups_on_one_shard) {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        for o in inner_order(call.function()) {
            let (desc, nulls_first) = direction(&o.options)?;
            if mentions_aggregate(&o.expr) {
                return refuse("aggregates in an aggregate's ORDER BY");
            }
            // The proxy orders text bytewise (the database's collation was
            // checked to be C); another collation named here would not be.
            let text = o.expr.to_string();
            if crate::lexer::Lexer::new(&text).any(|t| t.is_keyword("collate")) {
                return refuse(format!("{}(... ORDER BY ... COLLATE ...)", call.name()));
            }
            if !self.gather_exprs.iter().any(|e| e.to_string() == text) {
                self.gather_exprs.push(o.expr.clone());
            }
            keys.push(SortKey {
                column: self.hide(visible, o.expr),
                desc,
                nulls_first,
            });
        }
        Ok(keys)
    }

    /// Adds the gathered aggregates' ORDER BY keys to the shards' GROUP BY, so each
    /// shard row holds one combination of them and the proxy can order the rows of
    /// a group. Whether it did. `exprs_read_columns`: an expression the
    /// proxy evaluates (output, HAVING) reads a per-group column.
    pub(super) fn gathered_group_by(
        &mut self,
        select: &mut Select,
        single_row: bool,
        outputs: &[OutputColumn],
        exprs_read_columns: bool,
    ) -> Result<bool, Unmergeable> {
        let exprs = std::mem::take(&mut self.gather_exprs);
        if exprs.is_empty() {
            return Ok(false);
        }
        // A shard's DISTINCT count of its key would be summed over finer rows.
        if let Some(name) = &self.key_distinct {
            return refuse(format!(
                "{name}(DISTINCT <shard key>) next to string_agg/array_agg/json_agg(... ORDER BY ...)"
            ));
        }
        // Over no rows the shards then send no row, and the proxy makes the
        // one row from the aggregates alone.
        if single_row && (outputs.contains(&OutputColumn::Group) || exprs_read_columns) {
            return refuse(
                "string_agg/array_agg/json_agg(... ORDER BY ...) without GROUP BY next to a value that is no aggregate",
            );
        }
        match &mut select.group_by {
            GroupByExpr::Expressions(list, _) => list.extend(exprs),
            GroupByExpr::All(_) => return refuse("GROUP BY ALL"),
        }
        Ok(true)
    }
}

/// Which partial of an aggregate holds the value in the client's format when the
/// aggregate is a visible column (that column itself is used); `None`: all binary.
pub(super) fn client_format_partial(kind: AggKind) -> Option<usize> {
    match kind {
        AggKind::Min | AggKind::Max => Some(1),
        AggKind::StringAgg | AggKind::ArrayAgg | AggKind::JsonAgg => Some(0),
        AggKind::OrderedSet(OrderedSet::PercentileDisc | OrderedSet::Mode) => Some(1),
        _ => None,
    }
}
