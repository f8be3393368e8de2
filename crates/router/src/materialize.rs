//! Subqueries over several shards whose outer query only one server can
//! evaluate: a derived table (`FROM (SELECT ... GROUP BY ...) s`) or a
//! CTE that combines rows across shards, under an outer query that
//! reads nothing else sharded.
//!
//! The proxy answers them in two steps ([`Materialize`]): the subquery
//! runs across the shards as a merged query of its own, then the outer
//! query runs on one shard with the subquery's body replaced by
//! `SELECT * FROM unnest($a, $b, ...) AS __shardgate_rows(...)`, the
//! merged rows bound as one typed array per column. Postgres itself
//! evaluates the outer query (any SQL: aggregates, windows, joins with
//! reference tables), so its answer is exactly the unsharded one.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, Query, SelectItem, SetExpr, Statement, TableFactor, TableWithJoins, VisitMut,
    VisitorMut,
};

use crate::lexer::{Lexer, TokenKind};
use crate::shard::{ShardPlan, TableLookup};

/// The name the outer query reads the materialized rows under.
pub const ROWS: &str = "__shardgate_rows";

/// The name standing for a scalar subquery's value in the outer query.
pub const VALUE: &str = "__shardgate_value";

/// A statement answered by materializing one subquery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialize {
    /// The subquery, run across the shards.
    pub inner: String,
    /// For [`Kind::Table`]: further gathered tables' reads, for the
    /// placeholders after the first, in order.
    pub also: Vec<String>,
    /// The statement with the subquery replaced: by `SELECT * FROM
    /// __shardgate_rows` (see [`outer_sql`]) for [`Kind::Rows`], by the
    /// name `__shardgate_value` (see [`value_sql`]) for [`Kind::Value`].
    pub outer: String,
    /// What the outer query reads of the subquery.
    pub kind: Kind,
    /// The client asked `EXPLAIN` of the statement: the steps are
    /// described, not run.
    pub explain: bool,
}

/// How the outer query reads a materialized subquery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Its rows, as a table (`FROM`, `WITH`): the outer query reads
    /// nothing else sharded and runs on one shard.
    Rows,
    /// Its one value (an uncorrelated scalar subquery): the outer query
    /// is planned as any other statement, the value bound as a parameter.
    Value,
    /// Its rows, standing for a sharded table the statement reads
    /// ([`crate::gather`]): the outer query is planned as any other
    /// statement (on every shard when it still reads a sharded table).
    Table,
}

/// The alias standing for the subquery's column name where the subquery
/// is an output column of its own (Postgres names the column after it).
pub const VALUE_NAME: &str = "__shardgate_value_name";

/// `outer` (a [`Kind::Value`] statement) reading the subquery's value as
/// parameter `$n`; `name`: the subquery's column name.
pub fn value_sql(outer: &str, n: usize, name: &str) -> String {
    let mut out = String::with_capacity(outer.len());
    let mut last = 0;
    for t in Lexer::new(outer) {
        let by = match t.text {
            VALUE if t.kind == TokenKind::Word => format!("${n}"),
            VALUE_NAME if t.kind == TokenKind::Word => crate::quote_ident(name),
            _ => continue,
        };
        out.push_str(&outer[last..t.offset]);
        out.push_str(&by);
        last = t.offset + t.text.len();
    }
    out.push_str(&outer[last..]);
    out
}

/// Names the output columns that are a scalar subquery over sharded
/// tables by [`VALUE_NAME`], as Postgres names them after the subquery.
fn alias_subquery_outputs(query: &mut Query, tables: &dyn TableLookup) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(e @ Expr::Subquery(_)) = item {
            if matches!(e, Expr::Subquery(q) if reads_shards(q, tables)) {
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::new(VALUE_NAME),
                };
            }
        }
    }
}

/// `outer` (a [`Materialize::outer`], its parameters renumbered or not)
/// reading the rows from parameters `$first`, `$first + 1`, ... (one
/// array per column) under the column names `columns`.
pub fn outer_sql(outer: &str, first: usize, columns: &[String]) -> String {
    let params: Vec<String> = (0..columns.len())
        .map(|i| format!("${}", first + i))
        .collect();
    let names: Vec<String> = columns.iter().map(|c| crate::quote_ident(c)).collect();
    let from = format!(
        "FROM unnest({}) AS {ROWS}({})",
        params.join(", "),
        names.join(", ")
    );
    outer.replacen(&format!("FROM {ROWS}"), &from, 1)
}

/// `outer` with every placeholder reading a parameter that stands for no
/// value: for planning where the statement runs, not for running it.
pub fn probe_sql(outer: &str) -> String {
    outer.replace(
        &format!("FROM {ROWS}"),
        &format!("FROM unnest($65000) AS {ROWS}(c)"),
    )
}

/// The [`Materialize`] plan of a read `sql` the shard planner refused:
/// exactly one derived table or CTE reads sharded tables and the rest of
/// the statement reads none ([`Kind::Rows`]), or exactly one scalar
/// subquery reads sharded tables and the statement without it is one the
/// shards can run ([`Kind::Value`]). `None` otherwise: the statement is
/// refused as before.
pub fn plan(sql: &str, tables: &dyn TableLookup) -> Option<Materialize> {
    plan_rows(sql, tables).or_else(|| plan_value(sql, tables))
}

/// Whether `q` reads sharded tables.
fn reads_shards(q: &Query, tables: &dyn TableLookup) -> bool {
    !matches!(
        crate::shard::plan(&q.to_string(), tables),
        ShardPlan::Unsharded | ShardPlan::NoTable | ShardPlan::ReferenceRead
    )
}

/// Whether the shards can each run `sql` over their own rows (so its
/// results merge).
fn runs_per_shard(sql: &str, tables: &dyn TableLookup) -> bool {
    matches!(
        crate::shard::plan(sql, tables),
        ShardPlan::Keyed { .. } | ShardPlan::NoKey { .. }
    )
}

/// Replaces the one scalar subquery over sharded tables by [`VALUE`].
struct ScalarSubquery<'t> {
    tables: &'t dyn TableLookup,
    found: Option<String>,
}

impl VisitorMut for ScalarSubquery<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Subquery(q) = expr {
            if reads_shards(q, self.tables) {
                if self.found.is_some() {
                    return ControlFlow::Break(());
                }
                self.found = Some(q.to_string());
                *expr = Expr::Identifier(Ident::new(VALUE));
            }
        }
        ControlFlow::Continue(())
    }
}

/// [`Kind::Value`]: the statement's one scalar subquery over sharded
/// tables, when it runs on the shards by itself (uncorrelated) and the
/// statement without it is one the shard planner accepts.
fn plan_value(sql: &str, tables: &dyn TableLookup) -> Option<Materialize> {
    let mut statements = crate::sql_parse::parse_statements(sql).ok()?;
    let [statement @ Statement::Query(_)] = statements.as_mut_slice() else {
        return None;
    };
    if let Statement::Query(q) = statement {
        alias_subquery_outputs(q, tables);
    }
    let mut finder = ScalarSubquery {
        tables,
        found: None,
    };
    if statement.visit(&mut finder).is_break() {
        return None;
    }
    let inner = finder.found?;
    if !runs_per_shard(&inner, tables) || names_outer_tables(&inner) {
        return None;
    }
    let outer = statement.to_string();
    if matches!(
        crate::shard::plan(&outer, tables),
        ShardPlan::Unsupported { .. } | ShardPlan::Insert(_)
    ) {
        return None;
    }
    Some(Materialize {
        inner,
        also: Vec::new(),
        outer,
        kind: Kind::Value,
        explain: false,
    })
}

/// Whether `query` qualifies a column by a name none of its own tables
/// has (`c.country = k.code` where `k` is the outer query's): correlated.
fn names_outer_tables(query: &str) -> bool {
    let Ok(statements) = crate::sql_parse::parse_statements(query) else {
        return false;
    };
    let mut bound = std::collections::HashSet::new();
    let _ = sqlparser::ast::visit_relations(&statements, |r| {
        if let Some(name) = r.0.last().and_then(|p| p.as_ident()) {
            bound.insert(crate::shard::ident_name(name));
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = sqlparser::ast::Visit::visit(&statements, &mut AliasCollector(&mut bound));
    let mut outer = false;
    let _ = sqlparser::ast::visit_expressions(&statements, |e| {
        if let Expr::CompoundIdentifier(parts) = e {
            if parts.len() == 2 && !bound.contains(&crate::shard::ident_name(&parts[0])) {
                outer = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    outer
}

/// Collects the aliases of table factors.
struct AliasCollector<'a>(&'a mut std::collections::HashSet<String>);

impl sqlparser::ast::Visitor for AliasCollector<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        let alias = match f {
            TableFactor::Table { alias, .. }
            | TableFactor::Derived { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. } => alias.as_ref(),
            _ => None,
        };
        if let Some(a) = alias {
            self.0.insert(crate::shard::ident_name(&a.name));
        }
        ControlFlow::Continue(())
    }
}

/// [`Kind::Rows`]: see [`plan`].
fn plan_rows(sql: &str, tables: &dyn TableLookup) -> Option<Materialize> {
    let mut statements = crate::sql_parse::parse_statements(sql).ok()?;
    let [Statement::Query(query)] = statements.as_mut_slice() else {
        return None;
    };
    let reads_shards = |q: &Query| reads_shards(q, tables);
    let placeholder = || -> Option<Box<Query>> {
        let parsed = crate::sql_parse::parse_statements(&format!("SELECT * FROM {ROWS}"));
        match parsed.ok()?.pop()? {
            Statement::Query(q) => Some(q),
            _ => None,
        }
    };
    let mut inner: Option<String> = None;
    if let Some(with) = &mut query.with {
        if with.recursive {
            return None;
        }
        for cte in &mut with.cte_tables {
            if reads_shards(&cte.query) {
                if inner.is_some() {
                    return None;
                }
                inner = Some(cte.query.to_string());
                cte.query = placeholder()?;
            }
        }
    }
    if let SetExpr::Select(select) = query.body.as_mut() {
        for from in &mut select.from {
            for factor in factors(from) {
                if let TableFactor::Derived {
                    lateral: false,
                    subquery,
                    ..
                } = factor
                {
                    if reads_shards(subquery) {
                        if inner.is_some() {
                            return None;
                        }
                        inner = Some(subquery.to_string());
                        *subquery = placeholder()?;
                    }
                }
            }
        }
    }
    let inner = inner?;
    // The subquery itself must be one the shards can each run over their
    // own rows (co-located joins, nothing itself needing this).
    if !runs_per_shard(&inner, tables) {
        return None;
    }
    let outer = query.to_string();
    if reads_shards(query) {
        return None;
    }
    Some(Materialize {
        inner,
        also: Vec::new(),
        outer,
        kind: Kind::Rows,
        explain: false,
    })
}

/// The table factors of one FROM item (joined ones included).
fn factors(from: &mut TableWithJoins) -> Vec<&mut TableFactor> {
    let mut out = vec![&mut from.relation];
    out.extend(from.joins.iter_mut().map(|j| &mut j.relation));
    out
}

/// `sql` with its `$n` parameters renumbered densely in order of first
/// use, and the 0-based indices of the original parameters it uses (a
/// Bind for the new text sends those, in that order).
pub fn renumber_params(sql: &str) -> (String, Vec<usize>) {
    let mut used: Vec<usize> = Vec::new();
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for t in Lexer::new(sql) {
        if t.kind != TokenKind::Param {
            continue;
        }
        let Ok(n) = t.text[1..].parse::<usize>() else {
            continue;
        };
        let Some(original) = n.checked_sub(1) else {
            continue;
        };
        let new = match used.iter().position(|u| *u == original) {
            Some(p) => p + 1,
            None => {
                used.push(original);
                used.len()
            }
        };
        out.push_str(&sql[last..t.offset]);
        out.push_str(&format!("${new}"));
        last = t.offset + t.text.len();
    }
    out.push_str(&sql[last..]);
    (out, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardedTable;

    struct Tables;

    impl TableLookup for Tables {
        fn sharded(&self, _schema: Option<&str>, name: &str) -> Option<ShardedTable> {
            (name == "orders").then(|| ShardedTable {
                column: "id".into(),
                ranged: false,
            })
        }
        fn is_reference(&self, _schema: Option<&str>, name: &str) -> bool {
            name == "statuses"
        }
        fn version(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_grouped_derived_table_is_materialized_under_its_outer_query() {
        let m = plan(
            "SELECT s.status, s.n * 2 FROM (SELECT status, count(*) AS n FROM orders GROUP BY status) s WHERE s.n > 3 ORDER BY 2",
            &Tables,
        )
        .expect("materialized");
        assert_eq!(
            m.inner,
            "SELECT status, count(*) AS n FROM orders GROUP BY status"
        );
        assert_eq!(
            outer_sql(&m.outer, 1, &["status".into(), "n".into()]),
            "SELECT s.status, s.n * 2 FROM (SELECT * FROM unnest($1, $2) AS __shardgate_rows(\"status\", \"n\")) s WHERE s.n > 3 ORDER BY 2"
        );
    }

    #[test]
    fn a_cte_over_shards_is_materialized_and_may_be_read_twice() {
        let m = plan(
            "WITH t AS (SELECT status, sum(qty) AS q FROM orders GROUP BY status) SELECT a.status FROM t a JOIN t b ON a.q < b.q JOIN statuses USING (status)",
            &Tables,
        )
        .expect("materialized");
        assert_eq!(
            m.inner,
            "SELECT status, sum(qty) AS q FROM orders GROUP BY status"
        );
        assert!(m
            .outer
            .starts_with("WITH t AS (SELECT * FROM __shardgate_rows)"));
    }

    #[test]
    fn an_outer_query_reading_a_sharded_table_itself_is_not_materialized() {
        assert_eq!(
            plan(
                "SELECT * FROM orders o JOIN (SELECT status, count(*) FROM orders GROUP BY status) s USING (status)",
                &Tables
            ),
            None
        );
        assert_eq!(
            plan(
                "SELECT * FROM (SELECT count(*) FROM orders) a, (SELECT max(id) FROM orders) b",
                &Tables
            ),
            None
        );
        assert_eq!(
            plan(
                "SELECT count(*) FROM (SELECT a.status FROM orders a JOIN orders b ON a.qty = b.qty GROUP BY 1) s",
                &Tables
            ),
            None,
            "the subquery's join is not on the shard key"
        );
        assert_eq!(plan("SELECT * FROM statuses", &Tables), None);
        assert_eq!(plan("DELETE FROM orders", &Tables), None);
    }

    #[test]
    fn an_uncorrelated_scalar_subquery_becomes_a_parameter() {
        let m = plan(
            "SELECT id FROM orders WHERE qty > (SELECT avg(qty) FROM orders) ORDER BY id",
            &Tables,
        )
        .expect("materialized");
        assert_eq!(m.kind, Kind::Value);
        assert_eq!(m.inner, "SELECT avg(qty) FROM orders");
        assert_eq!(
            value_sql(&m.outer, 3, "avg"),
            "SELECT id FROM orders WHERE qty > $3 ORDER BY id"
        );
        assert_eq!(
            plan(
                "SELECT (SELECT max(id) FROM orders), (SELECT min(id) FROM orders)",
                &Tables
            ),
            None,
            "two subqueries over shards"
        );
    }

    #[test]
    fn a_correlated_scalar_subquery_is_not_evaluated_alone() {
        assert_eq!(
            plan(
                "SELECT s.code, (SELECT count(*) FROM orders o WHERE o.status = s.code) FROM statuses s",
                &Tables
            ),
            None
        );
        assert!(!names_outer_tables(
            "SELECT count(*) FROM orders o JOIN statuses s ON s.code = o.status WHERE o.id > 3"
        ));
        assert!(names_outer_tables(
            "SELECT max(o.id) FROM orders o WHERE o.qty = x.qty"
        ));
    }

    #[test]
    fn parameters_are_renumbered_in_order_of_use() {
        let (sql, used) = renumber_params("SELECT $3, '$1', $1 FROM t WHERE a = $3");
        assert_eq!(sql, "SELECT $1, '$1', $2 FROM t WHERE a = $1");
        assert_eq!(used, vec![2, 0]);
        assert_eq!(renumber_params("SELECT 1"), ("SELECT 1".into(), vec![]));
    }
}
