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

use sqlparser::ast::{Query, SetExpr, Statement, TableFactor, TableWithJoins};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::lexer::{Lexer, TokenKind};
use crate::shard::{ShardPlan, TableLookup};

/// The name the outer query reads the materialized rows under.
pub const ROWS: &str = "__shardgate_rows";

/// A statement answered by materializing one subquery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialize {
    /// The subquery, run across the shards.
    pub inner: String,
    /// The statement with the subquery's body replaced by
    /// `SELECT * FROM __shardgate_rows` (see [`outer_sql`]).
    pub outer: String,
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

/// The [`Materialize`] plan of `sql` when exactly one derived table or
/// CTE reads sharded tables and the rest of the statement reads none
/// (`None` otherwise: the statement is refused as before).
pub fn plan(sql: &str, tables: &dyn TableLookup) -> Option<Materialize> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(query)] = statements.as_mut_slice() else {
        return None;
    };
    let reads_shards = |q: &Query| {
        !matches!(
            crate::shard::plan(&q.to_string(), tables),
            ShardPlan::Unsharded | ShardPlan::NoTable | ShardPlan::ReferenceRead
        )
    };
    let placeholder = || -> Option<Box<Query>> {
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT * FROM {ROWS}"));
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
    if !matches!(
        crate::shard::plan(&inner, tables),
        ShardPlan::Keyed { .. } | ShardPlan::NoKey { .. }
    ) {
        return None;
    }
    let outer = query.to_string();
    if reads_shards(query) {
        return None;
    }
    Some(Materialize { inner, outer })
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
    fn parameters_are_renumbered_in_order_of_use() {
        let (sql, used) = renumber_params("SELECT $3, '$1', $1 FROM t WHERE a = $3");
        assert_eq!(sql, "SELECT $1, '$1', $2 FROM t WHERE a = $1");
        assert_eq!(used, vec![2, 0]);
        assert_eq!(renumber_params("SELECT 1"), ("SELECT 1".into(), vec![]));
    }
}
