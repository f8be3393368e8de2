//! Window functions computed at the proxy over the merged rows, when a
//! window's partitions span shards.
//!
//! The shards run the statement without the window calls: each window
//! column becomes a typed placeholder (`CAST(NULL AS bigint)`, or the
//! argument itself for `lag`/`lead`/`first_value`/`last_value`/
//! `nth_value`, whose values the proxy moves between rows), the window's
//! PARTITION BY and ORDER BY keys travel as hidden sort keys, and each
//! shard sorts by them. The proxy merges the sorted streams and
//! `shardgate_merge::ops::Window` fills the window columns partition by
//! partition. One window per statement, the default frame; the
//! statement's ORDER BY must follow the window's order.

use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, NamedWindowExpr,
    OrderBy, OrderByExpr, OrderByKind, Select, SelectItem, WindowSpec, WindowType,
};

use shardgate_merge::ops::WindowFunc;
use shardgate_merge::plan::{WindowCall, WindowPlan};

use super::aggregate::{count_windows, strip_nested};
use super::{
    direction, figure_name, ident_name, position_order, refuse, resolve_output_ref, MergeMode,
    Planner, Projection, SortKey, Unmergeable,
};

/// A window's PARTITION BY and ORDER BY.
struct Spec {
    partition: Vec<Expr>,
    order: Vec<OrderByExpr>,
}

impl Spec {
    fn text(&self) -> String {
        format!("{:?}|{:?}", texts(&self.partition), {
            self.order.iter().map(|o| o.to_string()).collect::<Vec<_>>()
        })
    }
}

fn texts(v: &[Expr]) -> Vec<String> {
    v.iter().map(|e| e.to_string()).collect()
}

const NOT_PUSHED: &str = "with window functions whose PARTITION BY does not include the shard key";

impl Planner {
    /// Plans the window calls of `select` for the proxy: the merge mode
    /// (sorted by the window's keys) and the window plan.
    pub(super) fn merged_windows(
        &mut self,
        select: &mut Select,
        projection: &Projection,
        order: &[OrderByExpr],
        visible: usize,
        shard_order: &mut Option<OrderBy>,
    ) -> Result<(MergeMode, WindowPlan), Unmergeable> {
        if projection.has_star {
            return refuse(format!("SELECT * {NOT_PUSHED}"));
        }
        if select.distinct.is_some() {
            return refuse(format!("DISTINCT {NOT_PUSHED}"));
        }
        if order.iter().any(|o| count_windows(&o.expr.to_string()) > 0) {
            return refuse(format!("ORDER BY a window function {NOT_PUSHED}"));
        }
        let mut spec: Option<Spec> = None;
        let mut found = Vec::new();
        for (j, (e, _)) in projection.items.iter().enumerate() {
            let Some(e) = e else { continue };
            let call = match strip_nested(e) {
                Expr::Function(f) => f.over.as_ref().map(|over| (f, over)),
                _ => None,
            };
            match (call, strip_nested(e)) {
                (Some((f, over)), _) => {
                    let s = window_spec(over, select)?;
                    match &spec {
                        Some(first) if first.text() != s.text() => {
                            return refuse(format!(
                            "window functions over different windows in one statement {NOT_PUSHED}"
                        ))
                        }
                        Some(_) => {}
                        None => spec = Some(s),
                    }
                    found.push((j, f.clone()));
                }
                (None, other) if count_windows(&other.to_string()) > 0 => {
                    return refuse(format!(
                        "a window function inside the expression {other} {NOT_PUSHED}"
                    ))
                }
                _ => {}
            }
        }
        let Some(spec) = spec else {
            return refuse(format!(
                "window functions outside the select list {NOT_PUSHED}"
            ));
        };
        // The merge keys: PARTITION BY (in the statement's ORDER BY's order
        // and directions where it names them), then the window's ORDER BY.
        let mut partition: Vec<(Expr, bool, bool)> = spec
            .partition
            .iter()
            .map(|e| (e.clone(), false, false))
            .collect();
        let mut window_order = Vec::new();
        for o in &spec.order {
            let (desc, nulls_first) = direction(&o.options)?;
            window_order.push((o.expr.clone(), desc, nulls_first));
        }
        for (i, o) in order.iter().enumerate() {
            let (desc, nulls_first) = direction(&o.options)?;
            let text = resolve_output_ref(&o.expr, projection)?.to_string();
            let follows = if i < partition.len() {
                match (i..partition.len()).find(|&k| partition[k].0.to_string() == text) {
                    Some(k) => {
                        partition.swap(i, k);
                        partition[i].1 = desc;
                        partition[i].2 = nulls_first;
                        true
                    }
                    None => false,
                }
            } else {
                window_order
                    .get(i - partition.len())
                    .is_some_and(|(e, d, n)| {
                        e.to_string() == text && *d == desc && *n == nulls_first
                    })
            };
            if !follows {
                return refuse(format!(
                    "ORDER BY other than the window's PARTITION BY and ORDER BY keys {NOT_PUSHED}"
                ));
            }
        }
        let mut keys = Vec::new();
        for (e, desc, nulls_first) in partition.iter().chain(&window_order) {
            keys.push(SortKey {
                column: self.hide(visible, e.clone()),
                desc: *desc,
                nulls_first: *nulls_first,
            });
        }
        let mut calls = Vec::new();
        for (j, f) in found {
            let (name, args) = call_parts(&f)?;
            let k = calls.len();
            let (func, placeholder, arg) = function(&name, &args, k)?;
            let key = match (&func, &arg) {
                (WindowFunc::Min(_) | WindowFunc::Max(_), Some(x)) => {
                    Some(self.hide(visible, x.clone()))
                }
                _ => None,
            };
            let arg = match (arg, &placeholder) {
                (Some(_), Placeholder::Argument) => Some(j),
                (Some(x), _) => Some(self.hide(visible, x)),
                (None, _) => None,
            };
            let expr = match placeholder {
                Placeholder::Argument => args[0].clone(),
                Placeholder::Int4 => typed_null("integer")?,
                Placeholder::Int8 => typed_null("bigint")?,
                Placeholder::Float8 => typed_null("double precision")?,
            };
            let alias = match &select.projection[j] {
                SelectItem::ExprWithAlias { alias, .. } => ident_name(alias),
                _ => figure_name(&Expr::Function(f.clone())),
            };
            select.projection[j] = SelectItem::ExprWithAlias {
                expr,
                alias: Ident::with_quote('"', alias),
            };
            calls.push(WindowCall {
                func,
                output: j,
                arg,
                key,
            });
        }
        select.named_window.clear();
        *shard_order = Some(OrderBy {
            kind: OrderByKind::Expressions(
                keys.iter()
                    .map(|k| position_order(k.column - visible, k.desc, k.nulls_first))
                    .collect(),
            ),
            interpolate: None,
        });
        if keys.is_empty() {
            *shard_order = None;
        }
        let plan = WindowPlan {
            partition_keys: partition.len(),
            order_keys: window_order.len(),
            calls,
        };
        Ok((
            MergeMode::Sorted {
                keys,
                distinct_on: 0,
            },
            plan,
        ))
    }
}

/// What the shards return in a window call's column.
enum Placeholder {
    /// The call's first argument (its value, moved between rows).
    Argument,
    /// A NULL `integer`.
    Int4,
    /// A NULL `bigint`.
    Int8,
    /// A NULL `double precision`.
    Float8,
}

/// The function of a call, its placeholder, and the argument the proxy
/// reads per row.
fn function(
    name: &str,
    args: &[Expr],
    k: usize,
) -> Result<(WindowFunc, Placeholder, Option<Expr>), Unmergeable> {
    use Placeholder::*;
    let literal = |i: usize| -> Result<i64, Unmergeable> {
        args.get(i)
            .and_then(|e| e.to_string().parse::<i64>().ok())
            .ok_or_else(|| Unmergeable {
                construct: format!(
                    "{name}() with an argument other than an integer literal {NOT_PUSHED}"
                ),
            })
    };
    let positive = |i: usize| -> Result<i64, Unmergeable> {
        match literal(i)? {
            n if n > 0 => Ok(n),
            _ => refuse(format!("{name}() with an argument below 1 {NOT_PUSHED}")),
        }
    };
    let value = || args.first().cloned();
    Ok(match (name, args.len()) {
        ("row_number", 0) => (WindowFunc::RowNumber, Int8, None),
        ("rank", 0) => (WindowFunc::Rank, Int8, None),
        ("dense_rank", 0) => (WindowFunc::DenseRank, Int8, None),
        ("percent_rank", 0) => (WindowFunc::PercentRank, Float8, None),
        ("cume_dist", 0) => (WindowFunc::CumeDist, Float8, None),
        ("ntile", 1) => {
            let n = i32::try_from(positive(0)?).or_else(|_| {
                refuse(format!(
                    "ntile() with an argument over 2147483647 {NOT_PUSHED}"
                ))
            })?;
            (WindowFunc::Ntile(n), Int4, None)
        }
        ("lag" | "lead", 1 | 2) => {
            let offset = if args.len() == 2 { literal(1)? } else { 1 };
            let func = if name == "lag" {
                WindowFunc::Lag { arg: k, offset }
            } else {
                WindowFunc::Lead { arg: k, offset }
            };
            (func, Argument, value())
        }
        ("first_value", 1) => (WindowFunc::FirstValue(k), Argument, value()),
        ("last_value", 1) => (WindowFunc::LastValue(k), Argument, value()),
        ("nth_value", 2) => (
            WindowFunc::NthValue {
                arg: k,
                n: positive(1)?,
            },
            Argument,
            value(),
        ),
        ("min", 1) => (WindowFunc::Min(k), Argument, value()),
        ("max", 1) => (WindowFunc::Max(k), Argument, value()),
        ("count", 0) => (WindowFunc::Count(None), Int8, None),
        ("count", 1) => (WindowFunc::Count(Some(k)), Int8, value()),
        _ => {
            return refuse(format!(
                "the window function {name}() with {} argument(s) {NOT_PUSHED}",
                args.len()
            ))
        }
    })
}

/// A call's lower-cased name and plain arguments (`count(*)`: none);
/// FILTER, DISTINCT, IGNORE NULLS and the like are refused.
fn call_parts(f: &Function) -> Result<(String, Vec<Expr>), Unmergeable> {
    let name = f.name.to_string().to_ascii_lowercase();
    if f.filter.is_some() || f.null_treatment.is_some() || !f.within_group.is_empty() {
        return refuse(format!("{name}() with FILTER or IGNORE NULLS {NOT_PUSHED}"));
    }
    let list = match &f.args {
        FunctionArguments::None => return Ok((name, Vec::new())),
        FunctionArguments::List(l) => l,
        FunctionArguments::Subquery(_) => return refuse(format!("{name}(subquery) {NOT_PUSHED}")),
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
        return refuse(format!("{name}(DISTINCT or ORDER BY ...) {NOT_PUSHED}"));
    }
    let mut args = Vec::new();
    for a in &list.args {
        match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e.clone()),
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" => {}
            _ => return refuse(format!("{name}() with these arguments {NOT_PUSHED}")),
        }
    }
    Ok((name, args))
}

/// The PARTITION BY and ORDER BY of a call's window (named windows
/// followed); an explicit frame is refused.
fn window_spec(w: &WindowType, select: &Select) -> Result<Spec, Unmergeable> {
    let named = |name: &Ident| -> Result<WindowSpec, Unmergeable> {
        let want = ident_name(name);
        match select
            .named_window
            .iter()
            .find(|d| ident_name(&d.0) == want)
        {
            Some(def) => match &def.1 {
                NamedWindowExpr::WindowSpec(s) if s.window_name.is_none() => Ok(s.clone()),
                _ => refuse(format!("a window defined from another window {NOT_PUSHED}")),
            },
            None => refuse(format!("the window {want}, not defined in this SELECT")),
        }
    };
    let spec = match w {
        WindowType::NamedWindow(name) => named(name)?,
        WindowType::WindowSpec(s) => match &s.window_name {
            None => s.clone(),
            Some(base) => {
                let mut b = named(base)?;
                if !s.order_by.is_empty() {
                    b.order_by = s.order_by.clone();
                }
                if s.window_frame.is_some() {
                    b.window_frame = s.window_frame.clone();
                }
                b
            }
        },
    };
    if spec.window_frame.is_some() {
        return refuse(format!(
            "a window frame clause (ROWS/RANGE/GROUPS) {NOT_PUSHED}"
        ));
    }
    Ok(Spec {
        partition: spec.partition_by,
        order: spec.order_by,
    })
}

fn typed_null(data_type: &str) -> Result<Expr, Unmergeable> {
    crate::sql_parse::parse_expr(&format!("CAST(NULL AS {data_type})"))
        .or_else(|_| refuse("a window placeholder"))
}

#[cfg(test)]
#[path = "window_merge_tests.rs"]
mod tests;
