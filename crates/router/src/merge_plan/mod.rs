//! Planning the merge of one `SELECT` that runs on several shards
//! (docs/ARCHITECTURE.md §9).
//!
//! [`plan_merge`] rewrites the statement into what every shard runs and says
//! how the proxy combines the shards' rows so the client sees what one
//! unsharded Postgres would have returned:
//!
//! - **Concatenation** ([`MergeMode::Concat`]): no ORDER BY, LIMIT,
//!   aggregate, GROUP BY or DISTINCT: rows are forwarded as they arrive.
//! - **Sorted** ([`MergeMode::Sorted`]): ORDER BY and/or LIMIT/OFFSET.
//!   Every ORDER BY expression travels as a *hidden* trailing column in
//!   binary format (stripped before the client sees the row), each shard
//!   sorts by them (`ORDER BY <position>`), and the proxy k-way merges.
//!   `LIMIT l OFFSET o` becomes `LIMIT l + o` on the shards; both are applied
//!   in the merge.
//! - **Grouped** ([`MergeMode::Grouped`]): aggregates, GROUP BY, HAVING or
//!   DISTINCT (DISTINCT is GROUP BY over every output column). The shards
//!   group and return partial aggregates as hidden columns, sorted by the
//!   group keys; the proxy merges the sorted streams and combines adjacent
//!   rows of the same group, evaluates HAVING, then orders (streaming when
//!   the final ORDER BY uses no aggregate, otherwise sorting the groups) and
//!   applies LIMIT/OFFSET there. `count/sum/avg(DISTINCT x)` are computed
//!   by the shards when that is exact: `x` is a shard key column, or the
//!   statement is grouped by one (see `distinct.rs`). Otherwise the shards
//!   also group by `x` and sort by it last ([`GroupPlan::distinct_value`]):
//!   a group's rows arrive in `x` order, equal values of several shards
//!   adjacent, and the proxy adds the DISTINCT aggregates' partials of
//!   only the first row that holds each value (FILTER may leave it out of
//!   a shard's row), streaming, nothing gathered; the other
//!   aggregates combine over the finer groups as over shards. One DISTINCT
//!   argument per statement.
//!
//! What cannot be answered exactly is refused ([`Unmergeable`], reported as
//! SQLSTATE 0A000 naming the construct). The shard planner
//! ([`crate::shard`]) has already refused joins and subqueries that do not
//! resolve per shard; this module handles the top-level operators.

mod aggregate;
mod distinct;
mod explain;
mod gather;
mod proxy_expr;
mod set_op;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_tests;
mod window;
mod window_merge;

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, Ident, LimitClause, OrderBy, OrderByExpr, OrderByKind,
    OrderByOptions, OrderBySort, Query, Select, SelectItem, SetExpr, SetOperator, SetQuantifier,
    Statement, TableFactor, Value,
};

use crate::shard::TableLookup;

pub use aggregate::{partial_names, AggKind};
pub use shardgate_merge::ops::WindowFunc;
pub use shardgate_merge::plan::{
    AggSlot, FinalKey, GroupPlan, GroupValue, MergeMode, OutputColumn, ProxyExpr, SortKey,
    WindowCall, WindowPlan,
};

use aggregate::{aggregate_call, mentions_aggregate, AggCall};

/// A statement that cannot be merged exactly; `construct` names why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{construct} across shards is not supported")]
pub struct Unmergeable {
    /// The SQL construct, e.g. "count(DISTINCT ...)".
    pub construct: String,
}

fn refuse<T>(construct: impl Into<String>) -> Result<T, Unmergeable> {
    Err(Unmergeable {
        construct: construct.into(),
    })
}

/// How the proxy runs one statement on several shards and merges the rows.
#[derive(Debug, Clone, PartialEq)]
pub struct MergePlan {
    /// The statement every shard runs (hidden columns appended, ORDER BY,
    /// LIMIT, OFFSET and HAVING rewritten as the mode needs).
    pub shard_sql: String,
    /// Output columns the client sees, when the select list names them all;
    /// `None` with `SELECT *` (see [`MergePlan::star_tables`]).
    pub visible: Option<usize>,
    /// Tables whose columns a `*` in the select list expands to, in order,
    /// plus `visible_fixed` other columns; used to count the visible columns.
    pub star_tables: Vec<(Option<String>, String)>,
    /// Columns of the select list other than `*` expansions.
    pub visible_fixed: usize,
    /// Hidden columns after the visible ones (binary format).
    pub hidden: usize,
    /// How rows are combined.
    pub mode: MergeMode,
    /// `LIMIT` (None: no limit).
    pub limit: Option<RowCount>,
    /// `OFFSET` (None: 0).
    pub offset: Option<RowCount>,
    /// GROUP BY names taken as output aliases of other expressions, with
    /// the FROM tables: Postgres groups by an input column of that name
    /// when a table has one, so the session refuses then.
    pub group_aliases: Vec<(String, Vec<TableName>)>,
    /// `EXPLAIN` of the statement: the proxy answers with
    /// [`MergePlan::describe`] instead of running it.
    pub explain: bool,
    /// Window functions the proxy computes over the merged rows (the
    /// mode is then [`MergeMode::Sorted`] by the window's keys).
    pub window: Option<WindowPlan>,
}

/// A table: its schema when the statement names one, and its name.
pub type TableName = (Option<String>, String);

/// A LIMIT or OFFSET value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowCount {
    /// A literal number.
    Literal(u64),
    /// A bind parameter (0-based index).
    Param(usize),
}

/// Plans the merge of `sql`, one statement that the shard planner sends to
/// several shards. Statements other than queries are concatenated (their
/// row counts summed by the caller).
pub fn plan_merge(sql: &str, tables: &dyn TableLookup) -> Result<MergePlan, Unmergeable> {
    plan_merge_with(sql, tables, &[])
}

/// [`plan_merge`] knowing that `input_columns` are columns of the FROM
/// tables: a GROUP BY of one of those names groups by the column, as
/// Postgres does, even where an output column has that name (see
/// [`MergePlan::group_aliases`]).
pub fn plan_merge_with(
    sql: &str,
    tables: &dyn TableLookup,
    input_columns: &[String],
) -> Result<MergePlan, Unmergeable> {
    if sql.len() > crate::classify::MAX_PARSE_BYTES {
        return refuse(format!(
            "a query over {} KiB (too long to analyse; restrict it to one shard key)",
            crate::classify::MAX_PARSE_BYTES / 1024
        ));
    }
    let toks: Vec<crate::lexer::Token<'_>> = crate::lexer::Lexer::new(sql).collect();
    if crate::classify::too_complex_to_parse(&toks) {
        return refuse(
            "a query too deeply nested or with too many operators to analyse (over 64 levels of parentheses or 2000 operators)",
        );
    }
    drop(toks);
    let statements = match crate::sql_parse::parse_statements(sql) {
        Ok(s) => s,
        // Without a parse nothing says how the shards' rows combine.
        Err(_) => return refuse(UNPARSED),
    };
    plan_merge_parsed(&statements, sql, tables, input_columns)
}

/// Why a statement shardgate cannot parse is not merged.
pub(crate) const UNPARSED: &str =
    "a query shardgate cannot parse (too deeply nested, too long, or syntax it does not know)";

/// [`plan_merge_with`] of `sql` already parsed into `statements`.
pub(crate) fn plan_merge_parsed(
    statements: &[Statement],
    sql: &str,
    tables: &dyn TableLookup,
    input_columns: &[String],
) -> Result<MergePlan, Unmergeable> {
    let query = match statements {
        [Statement::Query(query)] => query,
        [explain @ Statement::Explain { statement, .. }] => {
            if explains_analyze(explain) {
                return refuse("EXPLAIN ANALYZE of a query that runs on several shards");
            }
            if !matches!(statement.as_ref(), Statement::Query(_)) {
                return refuse("EXPLAIN of this statement over several shards");
            }
            let mut plan = plan_merge(&statement.to_string(), tables)?;
            plan.explain = true;
            return Ok(plan);
        }
        [Statement::Declare { .. }] => {
            return refuse("DECLARE CURSOR for a query over several shards")
        }
        [other] => {
            let kind = other.to_string();
            let kind = kind.split_whitespace().next().unwrap_or("this statement");
            return refuse(format!("{} over several shards", kind.to_ascii_uppercase()));
        }
        _ => return refuse("several statements over several shards"),
    };
    let mut query = (**query).clone();
    let ctes: Vec<String> = query
        .with
        .as_ref()
        .map(|w| {
            w.cte_tables
                .iter()
                .map(|c| ident_name(&c.alias.name))
                .collect()
        })
        .unwrap_or_default();
    if !rows_from_sharded_tables(&query.body, tables, &ctes) {
        return refuse(
            "a query whose outer FROM holds no sharded table while a subquery reads one (each shard would answer it)",
        );
    }
    let mut repeat = false;
    if let Some(w) = set_op::wrap(&query)? {
        query = w.query;
        repeat = w.repeat;
    }
    let mut key_bindings = Vec::new();
    if let SetExpr::Select(s) = query.body.as_ref() {
        key_bindings = distinct::key_bindings(s, tables, &ctes);
    }
    let mut plan = Planner {
        ctes,
        key_bindings,
        input_columns: input_columns.to_vec(),
        ..Planner::default()
    }
    .plan(sql, &mut query)?;
    if repeat {
        // The last output column is the count: hidden from the client.
        let MergeMode::Grouped(g) = &mut plan.mode else {
            return refuse("INTERSECT ALL / EXCEPT ALL of these queries");
        };
        let Some(OutputColumn::Expr(n)) = g.outputs.pop() else {
            return refuse("INTERSECT ALL / EXCEPT ALL of these queries");
        };
        g.repeat = Some(n);
        plan.visible = plan.visible.map(|v| v - 1);
        plan.visible_fixed -= 1;
        plan.hidden += 1;
    }
    Ok(plan)
}

/// Whether an `EXPLAIN` runs its statement (`ANALYZE`).
fn explains_analyze(explain: &Statement) -> bool {
    let Statement::Explain {
        analyze, options, ..
    } = explain
    else {
        return false;
    };
    *analyze
        || options.as_ref().is_some_and(|o| {
            o.iter().any(|u| {
                u.name.value.eq_ignore_ascii_case("analyze")
                    && !u.arg.as_ref().is_some_and(|a| {
                        matches!(
                            a.to_string().to_ascii_lowercase().as_str(),
                            "false" | "off" | "0"
                        )
                    })
            })
        })
}

/// The query of `EXPLAIN <query>` (not `ANALYZE`), as text.
pub fn explained_query(sql: &str) -> Option<String> {
    let statements = crate::sql_parse::parse_statements(sql).ok()?;
    match statements.as_slice() {
        [explain @ Statement::Explain { statement, .. }]
            if !explains_analyze(explain) && matches!(statement.as_ref(), Statement::Query(_)) =>
        {
            Some(statement.to_string())
        }
        _ => None,
    }
}

/// Whether every row of `body` comes from a sharded table in a FROM clause
/// (so each shard's rows are its own and concatenating them is right).
/// Derived tables, functions and CTE names count as possibly sharded.
fn rows_from_sharded_tables(body: &SetExpr, tables: &dyn TableLookup, ctes: &[String]) -> bool {
    match body {
        SetExpr::Select(s) => s.from.iter().any(|twj| {
            factor_may_be_sharded(&twj.relation, tables, ctes)
                || twj
                    .joins
                    .iter()
                    .any(|j| factor_may_be_sharded(&j.relation, tables, ctes))
        }),
        SetExpr::Query(q) => rows_from_sharded_tables(&q.body, tables, ctes),
        // A branch over reference tables only is answered by every shard:
        // harmless where the operation removes duplicates.
        SetExpr::SetOperation {
            left,
            right,
            set_quantifier,
            ..
        } => {
            let (l, r) = (
                rows_from_sharded_tables(left, tables, ctes),
                rows_from_sharded_tables(right, tables, ctes),
            );
            if matches!(set_quantifier, SetQuantifier::All) {
                l && r
            } else {
                l || r
            }
        }
        _ => false,
    }
}

/// The parts of a (possibly qualified) table name, as the server keeps them.
fn name_parts(name: &sqlparser::ast::ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(ident_name)
                .unwrap_or_else(|| p.to_string())
        })
        .collect()
}

/// Whether the rows of one FROM item may be a sharded table's.
fn factor_may_be_sharded(f: &TableFactor, tables: &dyn TableLookup, ctes: &[String]) -> bool {
    match f {
        TableFactor::Table {
            name, args: None, ..
        } => {
            let parts = name_parts(name);
            match parts.as_slice() {
                [t] => ctes.contains(t) || tables.sharded(None, t).is_some(),
                [s, t] => tables.sharded(Some(s), t).is_some(),
                _ => true,
            }
        }
        // Set-returning functions hold no table rows.
        TableFactor::Table { .. }
        | TableFactor::Function { .. }
        | TableFactor::TableFunction { .. }
        | TableFactor::UNNEST { .. } => false,
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            factor_may_be_sharded(&table_with_joins.relation, tables, ctes)
                || table_with_joins
                    .joins
                    .iter()
                    .any(|j| factor_may_be_sharded(&j.relation, tables, ctes))
        }
        // A derived table holds sharded rows when it reads a sharded table.
        TableFactor::Derived { subquery, .. } => !matches!(
            crate::shard::plan(&subquery.to_string(), tables),
            crate::ShardPlan::Unsharded
                | crate::ShardPlan::NoTable
                | crate::ShardPlan::ReferenceRead
        ),
        _ => true,
    }
}

impl shardgate_merge::plan::MergeSpec for MergePlan {
    fn mode(&self) -> &MergeMode {
        &self.mode
    }
    fn window(&self) -> Option<&WindowPlan> {
        self.window.as_ref()
    }
    fn hidden(&self) -> usize {
        self.hidden
    }
    fn visible(&self) -> Option<usize> {
        self.visible
    }
    fn visible_fixed(&self) -> usize {
        self.visible_fixed
    }
}

impl MergePlan {
    /// Rows forwarded as the shards send them, nothing hidden.
    pub fn concat(sql: &str) -> MergePlan {
        MergePlan {
            shard_sql: sql.to_owned(),
            visible: None,
            star_tables: Vec::new(),
            visible_fixed: 0,
            hidden: 0,
            mode: MergeMode::Concat,
            limit: None,
            offset: None,
            group_aliases: Vec::new(),
            explain: false,
            window: None,
        }
    }
}

/// The select list analysed.
struct Projection {
    /// Per item: its expression (None for `*`) and its output name.
    items: Vec<(Option<Expr>, Option<String>)>,
    star_tables: Vec<(Option<String>, String)>,
    has_star: bool,
    /// Why the columns of a `*` cannot be counted (matters only when hidden
    /// columns follow them).
    star_unknown: Option<Unmergeable>,
}

#[derive(Default)]
struct Planner {
    /// Hidden expressions appended to the select list.
    hidden: Vec<Expr>,
    /// CTE names of the statement.
    ctes: Vec<String>,
    /// GROUP BY names resolved to output aliases (see
    /// [`MergePlan::group_aliases`]).
    group_aliases: Vec<String>,
    /// Names known to be columns of the FROM tables (GROUP BY groups by
    /// them, not by an output column of the same name).
    input_columns: Vec<String>,
    /// The sharded tables of the FROM clause and their shard keys.
    key_bindings: Vec<distinct::KeyBinding>,
    /// Every group's rows are on one shard (grouped by a shard key), so
    /// the shards' `count/sum/avg(DISTINCT ...)` pass through exactly.
    groups_on_one_shard: bool,
    /// The argument of the DISTINCT aggregates the proxy deduplicates
    /// (see [`GroupPlan::distinct_value`]).
    spread_distinct: Option<Expr>,
    /// A DISTINCT aggregate of a shard key was planned (its per-shard value
    /// is exact, but not summed over finer groups of another argument).
    key_distinct: Option<String>,
    /// Expressions the proxy evaluates per group (see [`GroupPlan::exprs`]).
    exprs: Vec<ProxyExpr>,
    /// The ORDER BY keys inside the statement's gathered aggregate calls,
    /// which the shards also group by.
    gather_exprs: Vec<Expr>,
}

impl Planner {
    fn plan(mut self, sql: &str, query: &mut Query) -> Result<MergePlan, Unmergeable> {
        let mut limit = take_limit(query)?;
        if let Some(fetch) = query.fetch.take() {
            if fetch.percent || fetch.with_ties {
                return refuse("FETCH FIRST ... PERCENT or WITH TIES");
            }
            limit.0 = Some(match &fetch.quantity {
                None => RowCount::Literal(1),
                Some(q) => row_count(q)?,
            });
        }
        let order: Vec<OrderByExpr> = match query.order_by.take() {
            None => Vec::new(),
            Some(OrderBy {
                kind: OrderByKind::Expressions(v),
                ..
            }) => v,
            Some(_) => return refuse("ORDER BY ALL"),
        };
        let select = match query.body.as_mut() {
            SetExpr::Select(s) => s,
            SetExpr::SetOperation {
                op, set_quantifier, ..
            } => {
                let all = matches!(set_quantifier, SetQuantifier::All);
                if *op == SetOperator::Union
                    && all
                    && order.is_empty()
                    && limit.0.is_none()
                    && limit.1.is_none()
                {
                    return Ok(MergePlan::concat(sql));
                }
                return refuse(
                    format!("{op} {}", if all { "ALL" } else { "" })
                        .trim()
                        .to_owned()
                        + " with ORDER BY, LIMIT or duplicate removal",
                );
            }
            _ if order.is_empty() && limit.0.is_none() && limit.1.is_none() => {
                return Ok(MergePlan::concat(sql))
            }
            _ => return refuse("ORDER BY or LIMIT on this kind of query"),
        };
        let (windows, merged_windows) = window::check_windows(select, &order, &self.key_bindings)?;
        let calls = aggregate::count_windows(&select.to_string())
            + order
                .iter()
                .map(|o| aggregate::count_windows(&o.expr.to_string()))
                .sum::<usize>();
        if calls > windows {
            return refuse("window functions in a subquery");
        }
        let distinct_on = match &select.distinct {
            Some(Distinct::On(exprs)) => Some(exprs.clone()),
            _ => None,
        };
        let projection = analyse_projection(select)?;
        let group_by = match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    return refuse("GROUP BY ROLLUP/CUBE");
                }
                exprs.clone()
            }
            GroupByExpr::All(_) => return refuse("GROUP BY ALL"),
        };
        if group_by
            .iter()
            .any(|e| matches!(e, Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)))
        {
            return refuse("GROUP BY ROLLUP/CUBE/GROUPING SETS");
        }
        let aggregated = !group_by.is_empty()
            || select.having.is_some()
            || projection
                .items
                .iter()
                .any(|(e, _)| e.as_ref().is_some_and(mentions_aggregate))
            || order.iter().any(|o| mentions_aggregate(&o.expr));
        let distinct = matches!(select.distinct, Some(Distinct::Distinct));
        let visible_fixed = projection.items.iter().filter(|(e, _)| e.is_some()).count();
        let visible = (!projection.has_star).then_some(visible_fixed);
        if windows > 0 && aggregated {
            return refuse("window functions over grouped rows");
        }
        let mut window = None;
        let mode = if merged_windows {
            let (mode, w) = self.merged_windows(
                select,
                &projection,
                &order,
                visible_fixed,
                &mut query.order_by,
            )?;
            window = Some(w);
            mode
        } else if let Some(on) = distinct_on {
            if aggregated {
                return refuse("DISTINCT ON with GROUP BY or aggregates");
            }
            self.distinct_on(
                select,
                &projection,
                &on,
                &order,
                visible_fixed,
                &mut query.order_by,
            )?
        } else if aggregated || distinct {
            if distinct && aggregated {
                return refuse("DISTINCT together with GROUP BY or aggregates");
            }
            if projection.has_star {
                return refuse("SELECT * with GROUP BY, DISTINCT or aggregates");
            }
            self.grouped(
                select,
                &projection,
                group_by,
                distinct,
                &order,
                visible_fixed,
            )?
        } else if order.is_empty() && limit.0.is_none() && limit.1.is_none() {
            return Ok(MergePlan::concat(sql));
        } else {
            self.sorted(
                select,
                &projection,
                &order,
                visible_fixed,
                &mut query.order_by,
            )?
        };
        if let MergeMode::Grouped(g) = &mode {
            // LIMIT and OFFSET apply to the combined groups, in the proxy;
            // the shards sort by the merge keys.
            if !g.merge_keys.is_empty() {
                query.order_by = Some(OrderBy {
                    kind: OrderByKind::Expressions(
                        g.merge_keys
                            .iter()
                            .map(|k| {
                                position_order(k.column - visible_fixed, k.desc, k.nulls_first)
                            })
                            .collect(),
                    ),
                    interpolate: None,
                });
            }
        } else if let Some(sum) = pushed_limit(&limit).filter(|_| window.is_none()) {
            query.limit_clause = Some(LimitClause::LimitOffset {
                limit: Some(sum),
                offset: None,
                limit_by: Vec::new(),
            });
        }
        let select = match query.body.as_mut() {
            SetExpr::Select(s) => s,
            _ => unreachable!("checked above"),
        };
        let hidden = self.hidden.len();
        if hidden > 0 {
            if let Some(e) = projection.star_unknown {
                return Err(e);
            }
        }
        let mut group_aliases = Vec::new();
        for name in std::mem::take(&mut self.group_aliases) {
            let tables = match star_sources(select, None) {
                Ok(t) if !t.iter().any(|(s, t)| s.is_none() && self.ctes.contains(t)) => t,
                _ => {
                    return refuse(format!(
                        "GROUP BY {name} (an output alias) over a subquery or CTE that may have a column {name}"
                    ))
                }
            };
            group_aliases.push((name, tables));
        }
        for (i, expr) in self.hidden.drain(..).enumerate() {
            select.projection.push(SelectItem::ExprWithAlias {
                expr,
                alias: hidden_name(i),
            });
        }
        Ok(MergePlan {
            shard_sql: query.to_string(),
            visible,
            star_tables: projection.star_tables,
            visible_fixed,
            hidden,
            mode,
            limit: limit.0,
            offset: limit.1,
            group_aliases,
            explain: false,
            window,
        })
    }

    /// Adds a hidden column; returns its absolute position.
    fn hide(&mut self, visible: usize, e: Expr) -> usize {
        let text = e.to_string();
        if let Some(i) = self.hidden.iter().position(|h| h.to_string() == text) {
            return visible + i;
        }
        self.hidden.push(e);
        visible + self.hidden.len() - 1
    }

    /// ORDER BY and/or LIMIT without grouping.
    fn sorted(
        &mut self,
        select: &Select,
        projection: &Projection,
        order: &[OrderByExpr],
        visible: usize,
        shard_order: &mut Option<OrderBy>,
    ) -> Result<MergeMode, Unmergeable> {
        let _ = select;
        let mut keys = Vec::new();
        let mut shard_keys = Vec::new();
        for o in order {
            let (desc, nulls_first) = direction(&o.options)?;
            let expr = resolve_output_ref(&o.expr, projection)?;
            let column = self.hide(visible, expr);
            keys.push(SortKey {
                column,
                desc,
                nulls_first,
            });
            shard_keys.push(position_order(column - visible, desc, nulls_first));
        }
        if !shard_keys.is_empty() {
            *shard_order = Some(OrderBy {
                kind: OrderByKind::Expressions(shard_keys),
                interpolate: None,
            });
        }
        Ok(MergeMode::Sorted {
            keys,
            distinct_on: 0,
        })
    }

    /// `DISTINCT ON (...)`: the shards keep their first row per value, the
    /// merge by the ORDER BY (which starts with the DISTINCT ON
    /// expressions, or is them) keeps the first over all shards.
    fn distinct_on(
        &mut self,
        select: &mut Select,
        projection: &Projection,
        on: &[Expr],
        order: &[OrderByExpr],
        visible: usize,
        shard_order: &mut Option<OrderBy>,
    ) -> Result<MergeMode, Unmergeable> {
        let on: Vec<Expr> = on
            .iter()
            .map(|e| resolve_output_ref(e, projection))
            .collect::<Result<_, _>>()?;
        let order: Vec<OrderByExpr> = if order.is_empty() {
            on.iter()
                .map(|e| OrderByExpr {
                    expr: e.clone(),
                    options: OrderByOptions {
                        sort: None,
                        nulls_first: None,
                    },
                    with_fill: None,
                })
                .collect()
        } else {
            // `DISTINCT ON (a, b) ... ORDER BY a`: Postgres sorts by b next.
            let mut order = order.to_vec();
            if order.len() < on.len() {
                for e in &on {
                    let text = e.to_string();
                    let present = order.iter().any(|o| {
                        resolve_output_ref(&o.expr, projection).is_ok_and(|x| x.to_string() == text)
                    });
                    if !present {
                        order.push(OrderByExpr {
                            expr: e.clone(),
                            options: OrderByOptions {
                                sort: None,
                                nulls_first: None,
                            },
                            with_fill: None,
                        });
                    }
                }
            }
            order
        };
        let mode = self.sorted(select, projection, &order, visible, shard_order)?;
        let MergeMode::Sorted { keys, .. } = mode else {
            unreachable!("sorted() sorts")
        };
        let n = on.len();
        // Postgres requires the DISTINCT ON expressions to begin ORDER BY
        // (in any order); otherwise the shards keep the clause as written
        // and report its error.
        let mut leading: Vec<String> = order
            .iter()
            .take(n)
            .map(|o| resolve_output_ref(&o.expr, projection).map(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let mut wanted: Vec<String> = on.iter().map(|e| e.to_string()).collect();
        leading.sort();
        wanted.sort();
        wanted.dedup();
        leading.dedup();
        if leading == wanted && order.len() >= n {
            select.distinct = Some(Distinct::On(
                keys[..n]
                    .iter()
                    .map(|k| Expr::Identifier(hidden_name(k.column - visible)))
                    .collect(),
            ));
        }
        Ok(MergeMode::Sorted {
            keys,
            distinct_on: n,
        })
    }

    /// Aggregates, GROUP BY, HAVING, DISTINCT.
    fn grouped(
        &mut self,
        select: &mut Select,
        projection: &Projection,
        group_by: Vec<Expr>,
        distinct: bool,
        order: &[OrderByExpr],
        visible: usize,
    ) -> Result<MergeMode, Unmergeable> {
        // The group keys as expressions.
        let group_exprs: Vec<Expr> = if distinct {
            projection
                .items
                .iter()
                .filter_map(|(e, _)| e.clone())
                .collect()
        } else {
            group_by
                .iter()
                .map(|g| {
                    resolve_group_ref(g, projection, &self.input_columns, &mut self.group_aliases)
                })
                .collect::<Result<_, _>>()?
        };
        let single_row = group_exprs.is_empty();
        self.groups_on_one_shard = distinct::groups_on_one_shard(&group_exprs, &self.key_bindings);
        let mut aggregates: Vec<(String, AggSlot)> = Vec::new();
        // Visible outputs.
        let mut outputs = Vec::with_capacity(visible);
        for (j, (e, name)) in projection.items.iter().enumerate() {
            let e = e.as_ref().expect("no * in grouped mode");
            match aggregate_call(e)? {
                Some(call) => {
                    let slot = self.aggregate_slot(&mut aggregates, visible, call, Some(j))?;
                    outputs.push(OutputColumn::Aggregate(slot));
                }
                None if mentions_aggregate(e) => {
                    // The shards only describe it (evaluated over their
                    // partial groups it could fail or overflow).
                    let x = self.compile_expr(&mut aggregates, visible, e, Some(j))?;
                    outputs.push(OutputColumn::Expr(x));
                    let name = name.clone().unwrap_or_else(|| figure_name(e));
                    select.projection[j] = SelectItem::ExprWithAlias {
                        expr: proxy_expr::probe_expr(e),
                        alias: Ident::with_quote('"', name),
                    };
                }
                None => outputs.push(OutputColumn::Group),
            }
        }
        // HAVING.
        let having = match select.having.take() {
            None => None,
            Some(h) => Some(self.compile_expr(&mut aggregates, visible, &h, None)?),
        };
        // Final order.
        let mut final_keys = Vec::new();
        for o in order {
            let (desc, nulls_first) = direction(&o.options)?;
            let expr = resolve_output_ref(&o.expr, projection)?;
            let value =
                self.group_value(&mut aggregates, visible, &expr, projection, &group_exprs)?;
            final_keys.push(FinalKey {
                value,
                desc,
                nulls_first,
            });
        }
        let reads_columns = self.exprs.iter().any(proxy_expr::reads_columns);
        let gathered = self.gathered_group_by(select, single_row, &outputs, reads_columns)?;
        let distinct_value = match self.spread_distinct.take() {
            None => None,
            Some(x) => {
                // Grouped finer by `x`, a shard's distinct count of its
                // key would be summed over several rows.
                if let Some(name) = self.key_distinct.take() {
                    return refuse(format!(
                        "{name}(DISTINCT ...) next to a DISTINCT aggregate of another argument"
                    ));
                }
                // Over no rows the shards then send no row, and the proxy
                // makes the one row from the aggregates alone.
                if single_row
                    && (outputs.contains(&OutputColumn::Group)
                        || self.exprs.iter().any(proxy_expr::reads_columns))
                {
                    return refuse(
                        "count/sum/avg(DISTINCT ...) without GROUP BY next to a value that is no aggregate",
                    );
                }
                match &mut select.group_by {
                    GroupByExpr::Expressions(exprs, _) => exprs.push(x.clone()),
                    GroupByExpr::All(_) => return refuse("GROUP BY ALL"),
                }
                Some(self.hide(visible, x))
            }
        };
        let streams = final_keys
            .iter()
            .all(|k| matches!(k.value, GroupValue::Column(_)));
        let mut merge_keys = Vec::new();
        let mut group_columns = Vec::new();
        if !single_row {
            if streams {
                for k in &final_keys {
                    if let GroupValue::Column(c) = k.value {
                        merge_keys.push(SortKey {
                            column: c,
                            desc: k.desc,
                            nulls_first: k.nulls_first,
                        });
                    }
                }
            }
            for g in &group_exprs {
                if mentions_aggregate(g) {
                    return refuse("aggregates in GROUP BY");
                }
                let c = self.hide(visible, g.clone());
                group_columns.push(c);
                if !merge_keys.iter().any(|k| k.column == c) {
                    merge_keys.push(SortKey {
                        column: c,
                        desc: false,
                        nulls_first: false,
                    });
                }
            }
        }
        if let Some(c) = distinct_value {
            if !merge_keys.iter().any(|k| k.column == c) {
                merge_keys.push(SortKey {
                    column: c,
                    desc: false,
                    nulls_first: false,
                });
            }
        }
        let final_sort = if streams || single_row {
            Vec::new()
        } else {
            final_keys
        };
        // The shards: no HAVING (it needs the combined groups), sorted by
        // the merge keys.
        if distinct {
            select.distinct = Some(Distinct::Distinct);
        }
        Ok(MergeMode::Grouped(GroupPlan {
            merge_keys,
            group_columns,
            aggregates: aggregates.into_iter().map(|(_, s)| s).collect(),
            outputs,
            exprs: std::mem::take(&mut self.exprs),
            having,
            final_sort,
            single_row,
            distinct_value,
            repeat: None,
            gathered,
        }))
    }

    /// The slot of an aggregate call, added when new.
    fn aggregate_slot(
        &mut self,
        slots: &mut Vec<(String, AggSlot)>,
        visible: usize,
        call: AggCall,
        output: Option<usize>,
    ) -> Result<usize, Unmergeable> {
        // A DISTINCT aggregate is computed by the shards only where no
        // distinct value of a group can be on two shards.
        // Elsewhere the shards group by the argument too and the proxy
        // counts each value once (one argument for all such aggregates).
        let mut spread = false;
        if call.distinct
            && !self.groups_on_one_shard
            && !call
                .argument()
                .is_some_and(|a| distinct::is_shard_key(a, &self.key_bindings))
        {
            let name = call.name();
            let Some(arg) = call.argument() else {
                return refuse(format!("{name}(DISTINCT ...) of several arguments"));
            };
            // `GROUP BY 1` would name an output column.
            if matches!(aggregate::strip_nested(arg), Expr::Value(_)) {
                return refuse(format!("{name}(DISTINCT <constant>)"));
            }
            if self
                .spread_distinct
                .as_ref()
                .is_some_and(|a| a.to_string() != arg.to_string())
            {
                return refuse(format!(
                    "{name}(DISTINCT ...) next to a DISTINCT aggregate of another argument"
                ));
            }
            self.spread_distinct = Some(arg.clone());
            spread = true;
        } else if call.distinct && !self.groups_on_one_shard {
            self.key_distinct = Some(call.name());
        }
        // min/max output their winner's bytes as the client asked for them
        // (the visible column; gathered aggregates concatenate them), so each
        // output position has its own slot.
        let output = output.filter(|_| gather::client_format_partial(call.func).is_some());
        let text = match output {
            Some(j) => format!("{}#{j}", call.text),
            None => call.text.clone(),
        };
        if let Some(i) = slots.iter().position(|(t, _)| *t == text) {
            return Ok(i);
        }
        // The partial in the client's format is the visible column itself.
        let client = output.zip(gather::client_format_partial(call.func));
        let partials: Vec<usize> = call
            .partial_exprs()?
            .into_iter()
            .enumerate()
            .map(|(i, e)| match client {
                Some((j, p)) if p == i => j,
                _ => self.hide(visible, e),
            })
            .collect();
        let order = self.gathered_order(&call, visible)?;
        slots.push((
            text,
            AggSlot {
                func: call.func,
                partials,
                distinct: spread,
                order,
            },
        ));
        Ok(slots.len() - 1)
    }

    /// An expression of HAVING or the final ORDER BY as a per-group value.
    fn group_value(
        &mut self,
        slots: &mut Vec<(String, AggSlot)>,
        visible: usize,
        e: &Expr,
        projection: &Projection,
        group_exprs: &[Expr],
    ) -> Result<GroupValue, Unmergeable> {
        let _ = (projection, group_exprs);
        if let Some(call) = aggregate_call(e)? {
            return Ok(GroupValue::Aggregate(
                self.aggregate_slot(slots, visible, call, None)?,
            ));
        }
        if mentions_aggregate(e) {
            return Ok(GroupValue::Expr(
                self.compile_expr(slots, visible, e, None)?,
            ));
        }
        // Constant per group (Postgres checked that it is grouped).
        Ok(GroupValue::Column(self.hide(visible, e.clone())))
    }

    /// Compiles an expression over aggregates into [`GroupPlan::exprs`];
    /// returns its index. `output`: the visible column it replaces.
    fn compile_expr(
        &mut self,
        slots: &mut Vec<(String, AggSlot)>,
        visible: usize,
        e: &Expr,
        output: Option<usize>,
    ) -> Result<usize, Unmergeable> {
        let x = proxy_expr::compile(
            e,
            &mut ExprLeaves {
                planner: self,
                slots,
                visible,
            },
            output,
        )?;
        self.exprs.push(x);
        Ok(self.exprs.len() - 1)
    }
}

/// The planner as the source of an expression's inputs and probes.
struct ExprLeaves<'a> {
    planner: &'a mut Planner,
    slots: &'a mut Vec<(String, AggSlot)>,
    visible: usize,
}

impl proxy_expr::ExprSource for ExprLeaves<'_> {
    fn aggregate(&mut self, e: &Expr) -> Result<Option<GroupValue>, Unmergeable> {
        match aggregate_call(e)? {
            Some(call) => Ok(Some(GroupValue::Aggregate(self.planner.aggregate_slot(
                self.slots,
                self.visible,
                call,
                None,
            )?))),
            None => Ok(None),
        }
    }

    fn column(&mut self, e: &Expr) -> usize {
        self.planner.hide(self.visible, e.clone())
    }
}

/// The name Postgres gives an output column computed by `e`
/// (FigureColname): a function's name, a cast's argument's name or else
/// its type's, `?column?` for operators.
fn figure_name(e: &Expr) -> String {
    if let Expr::Cast {
        expr, data_type, ..
    } = aggregate::strip_nested(e)
    {
        if let Some(n) = output_name(expr) {
            return n;
        }
        let t = data_type.to_string().to_ascii_lowercase();
        let base = t.split('(').next().unwrap_or(&t).trim().to_owned();
        return match base.as_str() {
            "smallint" => "int2",
            "int" | "integer" => "int4",
            "bigint" => "int8",
            "real" => "float4",
            "double precision" | "float" => "float8",
            "boolean" => "bool",
            "decimal" => "numeric",
            "character varying" => "varchar",
            other => return other.to_owned(),
        }
        .to_owned();
    }
    output_name(e).unwrap_or_else(|| "?column?".to_owned())
}

/// The name of hidden column `i` (unique, so ORDER BY on the shards finds it
/// among the output columns whatever the select list holds).
fn hidden_name(i: usize) -> Ident {
    Ident::with_quote('"', format!("__shardgate_{i}"))
}

/// `ORDER BY <hidden column>` on the shards.
fn position_order(hidden_index: usize, desc: bool, nulls_first: bool) -> OrderByExpr {
    OrderByExpr {
        expr: Expr::Identifier(hidden_name(hidden_index)),
        options: OrderByOptions {
            sort: Some(if desc {
                OrderBySort::Desc
            } else {
                OrderBySort::Asc
            }),
            nulls_first: Some(nulls_first),
        },
        with_fill: None,
    }
}

/// ASC/DESC and NULLS FIRST/LAST with Postgres's defaults.
fn direction(o: &OrderByOptions) -> Result<(bool, bool), Unmergeable> {
    let desc = match &o.sort {
        None | Some(OrderBySort::Asc) => false,
        Some(OrderBySort::Desc) => true,
        Some(OrderBySort::Using(_)) => return refuse("ORDER BY ... USING"),
    };
    Ok((desc, o.nulls_first.unwrap_or(desc)))
}

/// Reads the select list.
fn analyse_projection(select: &Select) -> Result<Projection, Unmergeable> {
    let mut items = Vec::new();
    let mut star_tables = Vec::new();
    let mut has_star = false;
    let mut star_unknown = None;
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => items.push((Some(e.clone()), output_name(e))),
            SelectItem::ExprWithAlias { expr, alias } => {
                items.push((Some(expr.clone()), Some(ident_name(alias))))
            }
            SelectItem::ExprWithAliases { .. } => return refuse("multiple column aliases"),
            SelectItem::Wildcard(_) => {
                has_star = true;
                items.push((None, None));
                match star_sources(select, None) {
                    Ok(t) => star_tables.extend(t),
                    Err(e) => star_unknown = Some(e),
                }
            }
            SelectItem::QualifiedWildcard(kind, _) => {
                has_star = true;
                items.push((None, None));
                let name = kind.to_string();
                match star_sources(select, Some(name.trim_end_matches(".*"))) {
                    Ok(t) => star_tables.extend(t),
                    Err(e) => star_unknown = Some(e),
                }
            }
        }
    }
    Ok(Projection {
        items,
        star_tables,
        has_star,
        star_unknown,
    })
}

/// The tables a `*` (or `qualifier.*`) expands; refused when the expansion
/// cannot be counted from the catalog (derived tables, USING/NATURAL joins).
fn star_sources(
    select: &Select,
    qualifier: Option<&str>,
) -> Result<Vec<(Option<String>, String)>, Unmergeable> {
    let mut out = Vec::new();
    let mut factors = Vec::new();
    for twj in &select.from {
        factors.push(&twj.relation);
        for j in &twj.joins {
            use sqlparser::ast::{JoinConstraint, JoinOperator as J};
            let constraint = match &j.join_operator {
                J::Join(c)
                | J::Inner(c)
                | J::Left(c)
                | J::LeftOuter(c)
                | J::Right(c)
                | J::RightOuter(c)
                | J::FullOuter(c) => Some(c),
                J::CrossJoin(c) => Some(c),
                _ => None,
            };
            if matches!(
                constraint,
                Some(JoinConstraint::Using(_) | JoinConstraint::Natural)
            ) {
                return refuse("SELECT * over a join with USING or NATURAL");
            }
            factors.push(&j.relation);
        }
    }
    for f in factors {
        let TableFactor::Table { name, alias, .. } = f else {
            if qualifier.is_none() {
                return refuse("SELECT * over a subquery or function");
            }
            continue;
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p.as_ident() {
                Some(i) => ident_name(i),
                None => p.to_string(),
            })
            .collect();
        let (schema, table) = match parts.as_slice() {
            [t] => (None, t.clone()),
            [s, t] => (Some(s.clone()), t.clone()),
            _ => return refuse("SELECT * over a three-part table name"),
        };
        if let Some(q) = qualifier {
            let q = q.trim_matches('"').to_ascii_lowercase();
            let matches = match alias {
                Some(a) => ident_name(&a.name) == q,
                None => {
                    table == q || format!("{}.{table}", schema.clone().unwrap_or_default()) == q
                }
            };
            if !matches {
                continue;
            }
        }
        out.push((schema, table));
    }
    if qualifier.is_some() && out.is_empty() {
        return refuse("qualified * over a subquery");
    }
    Ok(out)
}

/// An identifier as Postgres folds it.
fn ident_name(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// The name of a bare column reference.
fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(ident_name(i)),
        Expr::CompoundIdentifier(v) => v.last().map(ident_name),
        _ => None,
    }
}

/// The output column name Postgres gives an unaliased select item, where
/// it can matter (`None`: "?column?" or a name not derived here): a
/// column's name, through casts and parentheses (`qty::text` is `qty`),
/// a function's name, a CASE's ELSE branch's name or `case`.
fn output_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Nested(x) => output_name(x),
        Expr::Cast { expr, .. } => output_name(expr),
        Expr::Function(f) => f.name.0.last().and_then(|p| p.as_ident()).map(ident_name),
        // Functions with their own syntax.
        Expr::Floor { .. } => Some("floor".to_owned()),
        Expr::Ceil { .. } => Some("ceil".to_owned()),
        Expr::Extract { .. } => Some("extract".to_owned()),
        Expr::Position { .. } => Some("position".to_owned()),
        Expr::Substring { shorthand, .. } => {
            Some(if *shorthand { "substr" } else { "substring" }.to_owned())
        }
        Expr::Overlay { .. } => Some("overlay".to_owned()),
        // The ELSE branch's name when it has one.
        Expr::Case { else_result, .. } => else_result
            .as_deref()
            .and_then(output_name)
            .or_else(|| Some("case".to_owned())),
        _ => column_name(e),
    }
}

/// Whether `name` appears in the expression as a word that is not a
/// function's name (then it is taken to be a column of the FROM clause).
fn mentions_word(e: &Expr, name: &str) -> bool {
    let text = e.to_string();
    let toks: Vec<_> = crate::lexer::Lexer::new(&text).collect();
    toks.iter().enumerate().any(|(i, t)| {
        t.kind == crate::lexer::TokenKind::Word
            && t.text.eq_ignore_ascii_case(name)
            && !toks.get(i + 1).is_some_and(|n| n.is_punct("("))
    })
}

/// ORDER BY `n` or an output column name → the select-list expression
/// (Postgres matches output names first in ORDER BY).
fn resolve_output_ref(e: &Expr, p: &Projection) -> Result<Expr, Unmergeable> {
    if let Some(n) = ordinal(e) {
        return match n.checked_sub(1).and_then(|i| p.items.get(i)) {
            Some((Some(expr), _)) if !p.has_star => Ok(expr.clone()),
            Some(_) => refuse("ORDER BY a position with SELECT *"),
            None => Ok(e.clone()),
        };
    }
    if let Expr::Identifier(i) = e {
        let name = ident_name(i);
        let found: Vec<&Expr> = p
            .items
            .iter()
            .filter(|(_, n)| n.as_deref() == Some(name.as_str()))
            .filter_map(|(e, _)| e.as_ref())
            .collect();
        // Several equal items are one (different ones: Postgres's error).
        if let [one, rest @ ..] = found.as_slice() {
            if rest.iter().all(|r| r.to_string() == one.to_string()) {
                return Ok((*one).clone());
            }
        }
    }
    Ok(e.clone())
}

/// GROUP BY `n` or an output name → the select-list expression. Postgres
/// matches input columns first: a name stays a column when the item is
/// that column or mentions the name; otherwise it is taken as the output
/// name and recorded in `aliases` (the session checks the FROM tables).
fn resolve_group_ref(
    e: &Expr,
    p: &Projection,
    input_columns: &[String],
    aliases: &mut Vec<String>,
) -> Result<Expr, Unmergeable> {
    if let Some(n) = ordinal(e) {
        return match n.checked_sub(1).and_then(|i| p.items.get(i)) {
            Some((Some(expr), _)) => Ok(expr.clone()),
            _ => refuse("GROUP BY position out of range"),
        };
    }
    if let Expr::Identifier(i) = e {
        let name = ident_name(i);
        if input_columns.contains(&name) {
            return Ok(e.clone());
        }
        for (expr, n) in &p.items {
            if let (Some(expr), Some(n)) = (expr, n) {
                if *n == name && column_name(expr).as_deref() != Some(name.as_str()) {
                    if mentions_word(expr, &name) {
                        return Ok(e.clone());
                    }
                    if !aliases.contains(&name) {
                        aliases.push(name);
                    }
                    return Ok(expr.clone());
                }
            }
        }
    }
    Ok(e.clone())
}

fn ordinal(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Takes LIMIT and OFFSET off the query.
fn take_limit(query: &mut Query) -> Result<(Option<RowCount>, Option<RowCount>), Unmergeable> {
    match query.limit_clause.take() {
        None => Ok((None, None)),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return refuse("LIMIT BY");
            }
            let limit = match limit {
                None => None,
                Some(Expr::Value(v)) if v.value == Value::Null => None,
                Some(e) => Some(row_count(&e)?),
            };
            let offset = match offset {
                None => None,
                Some(o) => Some(row_count(&o.value)?),
            };
            Ok((limit, offset))
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => refuse("LIMIT offset, count"),
    }
}

fn row_count(e: &Expr) -> Result<RowCount, Unmergeable> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse()
                .map(RowCount::Literal)
                .or_else(|_| refuse("a LIMIT or OFFSET that is not a whole number")),
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1))
                .map(RowCount::Param)
                .ok_or_else(|| Unmergeable {
                    construct: format!("LIMIT {p}"),
                }),
            _ => refuse("a LIMIT or OFFSET that is not a number or parameter"),
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => row_count(expr),
        _ => refuse("a LIMIT or OFFSET expression"),
    }
}

/// `LIMIT limit + offset` for the shards (None: no limit).
fn pushed_limit(limit: &(Option<RowCount>, Option<RowCount>)) -> Option<Expr> {
    let render = |c: &RowCount| match c {
        RowCount::Literal(n) => n.to_string(),
        RowCount::Param(i) => format!("${}", i + 1),
    };
    let l = limit.0.as_ref()?;
    let text = match (l, &limit.1) {
        (RowCount::Literal(a), Some(RowCount::Literal(b))) => a.saturating_add(*b).to_string(),
        (_, Some(o)) => format!("(({})::bigint + ({})::bigint)", render(l), render(o)),
        (_, None) => render(l),
    };
    crate::sql_parse::parse_expr(&text).ok()
}
