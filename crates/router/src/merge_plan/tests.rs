use super::*;
use crate::shard::{ShardedTable, TableLookup};

/// `t`, `u`, `orders` are sharded; everything else is a reference table.
struct Tables;

impl TableLookup for Tables {
    fn sharded(&self, _schema: Option<&str>, name: &str) -> Option<ShardedTable> {
        matches!(name, "t" | "u" | "orders").then(|| ShardedTable {
            column: "id".into(),
            ranged: false,
        })
    }
    fn is_reference(&self, _schema: Option<&str>, name: &str) -> bool {
        !matches!(name, "t" | "u" | "orders")
    }
    fn version(&self) -> u64 {
        0
    }
}

pub(super) fn plan_merge(sql: &str) -> Result<MergePlan, Unmergeable> {
    super::plan_merge(sql, &Tables)
}

pub(super) fn plan(sql: &str) -> MergePlan {
    plan_merge(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(super) fn refused(sql: &str) -> String {
    plan_merge(sql).expect_err(sql).construct
}

#[test]
fn plain_selects_concatenate() {
    let p = plan("SELECT id, name FROM t WHERE x > 1");
    assert_eq!(p.mode, MergeMode::Concat);
    assert_eq!(p.shard_sql, "SELECT id, name FROM t WHERE x > 1");
    assert_eq!(
        plan("SELECT id FROM t UNION ALL SELECT id FROM u").mode,
        MergeMode::Concat
    );
    assert_eq!(
        plan("WITH x AS (SELECT id FROM t) SELECT * FROM x").mode,
        MergeMode::Concat
    );
}

#[test]
fn rows_not_partitioned_by_shard_are_refused() {
    // Each shard would answer these whole: concatenated, one row per shard.
    for sql in [
        "SELECT EXISTS (SELECT 1 FROM orders WHERE qty > 8)",
        "SELECT (SELECT count(*) FROM orders)",
        "SELECT 1 UNION ALL SELECT id FROM t",
        "SELECT * FROM generate_series(1, 3) g WHERE EXISTS (SELECT 1 FROM t)",
    ] {
        assert!(refused(sql).contains("no sharded table"), "{sql}");
    }
    // Statements the merge cannot describe are named.
    assert!(refused("EXPLAIN INSERT INTO t SELECT * FROM u").starts_with("EXPLAIN"));
    assert!(refused("DECLARE c CURSOR FOR SELECT count(*) FROM t").starts_with("DECLARE"));
    let deep = format!(
        "SELECT * FROM t WHERE {}1{}",
        "(".repeat(300),
        ")".repeat(300)
    );
    assert!(refused(&deep).contains("too deeply nested"), "{deep}");
    assert!(refused("SELECT * FROM t WHERE").contains("cannot parse"));
}

#[test]
fn order_by_travels_as_hidden_columns() {
    let p = plan("SELECT id, name FROM t ORDER BY name DESC, id LIMIT 10 OFFSET 5");
    assert_eq!(
        p.shard_sql,
        "SELECT id, name, name AS \"__shardgate_0\", id AS \"__shardgate_1\" FROM t ORDER BY \"__shardgate_0\" DESC NULLS FIRST, \"__shardgate_1\" ASC NULLS LAST LIMIT 15"
    );
    assert_eq!(p.visible, Some(2));
    assert_eq!(p.hidden, 2);
    assert_eq!(
        p.mode,
        MergeMode::Sorted {
            keys: vec![
                SortKey {
                    column: 2,
                    desc: true,
                    nulls_first: true
                },
                SortKey {
                    column: 3,
                    desc: false,
                    nulls_first: false
                },
            ],
            distinct_on: 0,
        }
    );
    assert_eq!(p.limit, Some(RowCount::Literal(10)));
    assert_eq!(p.offset, Some(RowCount::Literal(5)));
}

#[test]
fn order_by_output_names_and_positions() {
    let p = plan("SELECT a + b AS s FROM t ORDER BY s, 1 DESC");
    assert_eq!(p.shard_sql, "SELECT a + b AS s, a + b AS \"__shardgate_0\" FROM t ORDER BY \"__shardgate_0\" ASC NULLS LAST, \"__shardgate_0\" DESC NULLS FIRST");
    let p = plan("SELECT * FROM t ORDER BY k LIMIT $1");
    assert_eq!(p.visible, None);
    assert_eq!(p.star_tables, vec![(None, "t".to_owned())]);
    assert_eq!(p.limit, Some(RowCount::Param(0)));
    let p = plan("SELECT id FROM t ORDER BY id LIMIT $1 OFFSET $2");
    assert!(
        p.shard_sql.ends_with("LIMIT (($1)::BIGINT + ($2)::BIGINT)"),
        "{}",
        p.shard_sql
    );
}

#[test]
fn aggregates_push_partials() {
    let p = plan("SELECT count(*), avg(x) FROM t");
    assert_eq!(
        p.shard_sql,
        "SELECT count(*), avg(x), count(*) AS \"__shardgate_0\", sum(x) AS \"__shardgate_1\", count(x) AS \"__shardgate_2\", avg(x) AS \"__shardgate_3\" FROM t"
    );
    let MergeMode::Grouped(g) = p.mode else {
        panic!()
    };
    assert!(g.single_row);
    assert_eq!(g.aggregates[0].partials, vec![2]);
    assert_eq!(g.aggregates[1].partials, vec![3, 4, 5]);
    assert_eq!(
        g.outputs,
        vec![OutputColumn::Aggregate(0), OutputColumn::Aggregate(1)]
    );
}

#[test]
fn two_variable_statistics_push_their_state() {
    let p = plan("SELECT corr(y, x) FILTER (WHERE x > 0), bit_xor(x) FROM t");
    assert_eq!(
        p.shard_sql,
        "SELECT corr(y, x) FILTER (WHERE x > 0), bit_xor(x), \
         regr_count(y, x) FILTER (WHERE x > 0) AS \"__shardgate_0\", \
         regr_avgx(y, x) FILTER (WHERE x > 0) AS \"__shardgate_1\", \
         regr_avgy(y, x) FILTER (WHERE x > 0) AS \"__shardgate_2\", \
         regr_sxx(y, x) FILTER (WHERE x > 0) AS \"__shardgate_3\", \
         regr_syy(y, x) FILTER (WHERE x > 0) AS \"__shardgate_4\", \
         regr_sxy(y, x) FILTER (WHERE x > 0) AS \"__shardgate_5\", \
         bit_xor(x) AS \"__shardgate_6\" FROM t"
    );
}

#[test]
fn group_by_sorts_shards_and_keeps_having_local() {
    let p = plan("SELECT g, max(v) FROM t GROUP BY g HAVING count(*) > 2 ORDER BY g DESC LIMIT 3");
    assert_eq!(
        p.shard_sql,
        "SELECT g, max(v), max(v) AS \"__shardgate_0\", count(*) AS \"__shardgate_1\", g AS \"__shardgate_2\" FROM t GROUP BY g ORDER BY \"__shardgate_2\" DESC NULLS FIRST"
    );
    let MergeMode::Grouped(g) = p.mode else {
        panic!()
    };
    assert_eq!(g.group_columns, vec![4]);
    assert!(g.final_sort.is_empty());
    assert_eq!(g.aggregates[0].partials, vec![2, 1]);
    assert!(g.having.is_some());
    assert_eq!(p.limit, Some(RowCount::Literal(3)));
}

#[test]
fn expressions_over_aggregates_are_described_by_probes_and_evaluated_locally() {
    let p =
        plan("SELECT g, round(sum(v) / count(*), 2) AS r FROM t GROUP BY g HAVING sum(v) * 2 > 10");
    assert_eq!(
        p.shard_sql,
        "SELECT g, CASE WHEN false THEN (round(sum(v) / count(*), 2)) END AS \"r\", sum(v) AS \"__shardgate_0\", count(*) AS \"__shardgate_1\", CASE WHEN false THEN (sum(v) / count(*)) END AS \"__shardgate_2\", CASE WHEN false THEN (sum(v) * 2) END AS \"__shardgate_3\", g AS \"__shardgate_4\" FROM t GROUP BY g ORDER BY \"__shardgate_4\" ASC NULLS LAST"
    );
    let MergeMode::Grouped(g) = p.mode else {
        panic!()
    };
    assert_eq!(g.outputs, vec![OutputColumn::Group, OutputColumn::Expr(0)]);
    // round(...) is typed by the output column itself, the division by a probe.
    assert_eq!(g.exprs[0].probes, vec![4, 1]);
    assert_eq!(
        g.exprs[0].inputs,
        vec![GroupValue::Aggregate(0), GroupValue::Aggregate(1)]
    );
    assert_eq!(g.having, Some(1));
    // An unnamed output keeps the name Postgres gives it.
    let p = plan("SELECT count(*) * 2, (sum(v) + 1)::int, sum(v)::int FROM t");
    assert!(
        p.shard_sql.contains("END AS \"?column?\"")
            && p.shard_sql.contains("END AS \"int4\"")
            && p.shard_sql.contains("END AS \"sum\""),
        "{}",
        p.shard_sql
    );
}

#[test]
fn distinct_on_keeps_the_first_row_per_key_over_the_merge() {
    let p = plan("SELECT DISTINCT ON (g) g, v FROM t ORDER BY g, v DESC");
    assert_eq!(
        p.shard_sql,
        "SELECT DISTINCT ON (\"__shardgate_0\") g, v, g AS \"__shardgate_0\", v AS \"__shardgate_1\" FROM t ORDER BY \"__shardgate_0\" ASC NULLS LAST, \"__shardgate_1\" DESC NULLS FIRST"
    );
    assert!(matches!(p.mode, MergeMode::Sorted { distinct_on: 1, .. }));
    // Without ORDER BY the merge sorts by the DISTINCT ON expressions.
    let p = plan("SELECT DISTINCT ON (g, v) * FROM t");
    assert!(matches!(p.mode, MergeMode::Sorted { distinct_on: 2, ref keys } if keys.len() == 2));
}

#[test]
fn windows_partitioned_by_the_shard_key_run_on_the_shards() {
    let p = plan("SELECT id, row_number() OVER (PARTITION BY id ORDER BY v) FROM t");
    assert_eq!(p.mode, MergeMode::Concat);
    let p = plan(
        "SELECT x.id, sum(v) OVER w FROM t x WINDOW w AS (PARTITION BY x.id, g) ORDER BY 2 LIMIT 5",
    );
    assert!(matches!(p.mode, MergeMode::Sorted { .. }));
}

#[test]
fn set_operations_group_over_all_shards() {
    let p = plan("SELECT a FROM t UNION SELECT a FROM u");
    assert!(
        p.shard_sql.starts_with("SELECT DISTINCT \"__c1\" AS \"a\""),
        "{}",
        p.shard_sql
    );
    let p = plan("SELECT a, b AS x FROM t INTERSECT ALL SELECT c, d FROM u ORDER BY x");
    let MergeMode::Grouped(g) = p.mode else {
        panic!()
    };
    // The count of copies is hidden: the client sees a and x.
    assert_eq!(p.visible, Some(2));
    assert!(g.repeat.is_some());
    assert!(g.having.is_some());
    assert!(
        p.shard_sql.contains("GROUP BY \"__c1\", \"__c2\""),
        "{}",
        p.shard_sql
    );
}

#[test]
fn explain_describes_the_plan_instead_of_running_it() {
    let p = plan("EXPLAIN SELECT DISTINCT ON (g) g, v FROM t ORDER BY g, v LIMIT 5");
    assert!(p.explain);
    let lines = p.describe(&[0, 2]);
    assert_eq!(
        lines,
        vec![
            "Shardgate Merge  (shards: 0, 2)".to_owned(),
            "  Hidden columns: 2 after the visible ones (stripped before the client)".to_owned(),
            "  ->  Limit 5".to_owned(),
            "        ->  Unique: first row per value of the first 1 sort keys (DISTINCT ON)".to_owned(),
            "              ->  Merge sorted shard streams by col3 ASC NULLS LAST, col4 ASC NULLS LAST".to_owned(),
            "                    ->  Shard query (each shard):".to_owned(),
            format!("                          {}", p.shard_sql),
        ]
    );
    assert!(refused("EXPLAIN ANALYZE SELECT count(*) FROM t").starts_with("EXPLAIN ANALYZE"));
    assert!(refused("EXPLAIN (ANALYZE) SELECT count(*) FROM t").starts_with("EXPLAIN ANALYZE"));
}

#[test]
fn order_by_aggregate_sorts_groups_in_memory() {
    let p = plan("SELECT g FROM t GROUP BY g ORDER BY sum(v) DESC");
    let MergeMode::Grouped(g) = p.mode else {
        panic!()
    };
    assert_eq!(g.final_sort.len(), 1);
    assert_eq!(p.shard_sql, "SELECT g, sum(v) AS \"__shardgate_0\", g AS \"__shardgate_1\" FROM t GROUP BY g ORDER BY \"__shardgate_1\" ASC NULLS LAST");
}

#[test]
fn distinct_groups_by_every_column() {
    let p = plan("SELECT DISTINCT a, b FROM t ORDER BY b");
    assert_eq!(
        p.shard_sql,
        "SELECT DISTINCT a, b, b AS \"__shardgate_0\", a AS \"__shardgate_1\" FROM t ORDER BY \"__shardgate_0\" ASC NULLS LAST, \"__shardgate_1\" ASC NULLS LAST"
    );
}

#[test]
fn unmergeable_constructs_are_named() {
    assert_eq!(
        refused("SELECT count(DISTINCT x), count(DISTINCT y) FROM t"),
        "count(DISTINCT ...) next to a DISTINCT aggregate of another argument"
    );
    assert!(
        refused("SELECT row_number() OVER (ROWS 2 PRECEDING) FROM t")
            .starts_with("a window frame clause")
    );
    assert_eq!(
        refused("SELECT json_object_agg(x, y) FROM t"),
        "aggregate json_object_agg()"
    );
    assert_eq!(
        refused("SELECT bit_xor(DISTINCT x) FROM t"),
        "bit_xor(DISTINCT ...)"
    );
    assert_eq!(
        refused("SELECT corr(DISTINCT x, y) FROM t"),
        "corr(DISTINCT ...)"
    );
    assert_eq!(
        refused("SELECT percentile_cont(1.5) WITHIN GROUP (ORDER BY x) FROM t"),
        "percentile_cont() with a fraction outside [0, 1]"
    );
    assert_eq!(
        refused("SELECT percentile_disc($1) WITHIN GROUP (ORDER BY x) FROM t"),
        "percentile_disc() with a fraction that is not one number literal"
    );
    assert_eq!(
        refused("SELECT mode() WITHIN GROUP (ORDER BY x, y) FROM t"),
        "mode() WITHIN GROUP without one ORDER BY expression"
    );
    assert_eq!(
        refused("SELECT g, rank() OVER (PARTITION BY id ORDER BY count(*)) FROM t GROUP BY g, id"),
        "window functions over grouped rows"
    );
    assert_eq!(
        refused("SELECT * FROM (SELECT row_number() OVER (ORDER BY v) FROM t) s ORDER BY 1"),
        "window functions in a subquery"
    );
    assert_eq!(
        refused("SELECT sum(x) << 2 FROM t"),
        "the operator << over an aggregate"
    );
    assert_eq!(
        refused("SELECT upper(max(name)) FROM t"),
        "the function upper() over an aggregate"
    );
    assert_eq!(
        refused("SELECT DISTINCT ON (a) a, count(*) FROM t GROUP BY a"),
        "DISTINCT ON with GROUP BY or aggregates"
    );
    assert_eq!(
        refused("SELECT count(*) FROM t UNION ALL SELECT count(*) FROM u"),
        "aggregates or GROUP BY inside a branch of a set operation"
    );
    assert_eq!(
        refused("SELECT a FROM t INTERSECT (SELECT a FROM u EXCEPT SELECT a FROM t)"),
        "EXCEPT nested in another set operation"
    );
    assert_eq!(
        plan("SELECT * FROM t LEFT JOIN countries c ON t.c = c.code").mode,
        MergeMode::Concat
    );
}

#[test]
fn fetch_first_is_a_limit_and_subquery_aggregates_are_per_shard() {
    let p = plan("SELECT id FROM t ORDER BY id OFFSET 2 ROWS FETCH FIRST 3 ROWS ONLY");
    assert_eq!(p.limit, Some(RowCount::Literal(3)));
    assert_eq!(p.offset, Some(RowCount::Literal(2)));
    assert!(p.shard_sql.ends_with("LIMIT 5"), "{}", p.shard_sql);
    let p = plan("SELECT t.id, (SELECT count(*) FROM orders o WHERE o.id = t.id) FROM t");
    assert_eq!(p.mode, MergeMode::Concat);
}

#[test]
fn order_by_a_name_postgres_derives() {
    // `a::text` is output column "a": ORDER BY a sorts the text.
    let p = plan("SELECT a::text FROM t ORDER BY a, id");
    assert!(
        p.shard_sql
            .starts_with("SELECT a::TEXT, a::TEXT AS \"__shardgate_0\", id AS \"__shardgate_1\""),
        "{}",
        p.shard_sql
    );
    let p = plan("SELECT a::text, count(*) FROM t GROUP BY a ORDER BY a");
    assert!(
        p.shard_sql.contains("a::TEXT AS \"__shardgate_1\""),
        "{}",
        p.shard_sql
    );
    // Two equal items are one output column.
    let p = plan("SELECT a::text, a::text FROM t ORDER BY a");
    assert!(p.shard_sql.contains("a::TEXT AS \"__shardgate_0\""));
}

#[test]
fn group_by_name_prefers_input_columns() {
    // The item mentions the column: GROUP BY a is the column, no check.
    let p = plan("SELECT a % 3 AS a, count(*) FROM t GROUP BY a");
    assert!(
        p.shard_sql.contains("a AS \"__shardgate_1\""),
        "{}",
        p.shard_sql
    );
    assert!(p.group_aliases.is_empty());
    // An alias of another expression: the session checks t's columns.
    let p = plan("SELECT b AS a, count(*) FROM t GROUP BY a");
    assert!(
        p.shard_sql.contains("b AS \"__shardgate_1\""),
        "{}",
        p.shard_sql
    );
    assert_eq!(
        p.group_aliases,
        vec![("a".to_owned(), vec![(None, "t".to_owned())])]
    );
    assert!(plan("SELECT b AS b, count(*) FROM t GROUP BY b")
        .group_aliases
        .is_empty());
    // Columns of a subquery or CTE are not known.
    assert!(
        refused("SELECT x + 1 AS m, count(*) FROM (SELECT x FROM t) s GROUP BY m")
            .starts_with("GROUP BY m (an output alias)")
    );
}

#[test]
fn order_by_the_name_of_floor_or_extract() {
    let p = plan("SELECT DISTINCT floor(a / 10) FROM t ORDER BY floor");
    assert_eq!(
        p.shard_sql,
        "SELECT DISTINCT FLOOR(a / 10), FLOOR(a / 10) AS \"__shardgate_0\" FROM t ORDER BY \"__shardgate_0\" ASC NULLS LAST"
    );
    let p = plan("SELECT substr(b, 1, 2) FROM t ORDER BY substr, id");
    assert!(
        p.shard_sql.contains("1, 2) AS \"__shardgate_0\""),
        "{}",
        p.shard_sql
    );
    let p = plan("SELECT extract(hour FROM at) FROM t ORDER BY extract, id");
    assert!(
        p.shard_sql
            .contains("EXTRACT(HOUR FROM at) AS \"__shardgate_0\""),
        "{}",
        p.shard_sql
    );
}

#[test]
fn order_by_the_name_of_a_case() {
    // A CASE is named after its ELSE branch (Postgres's FigureColname).
    let p = plan("SELECT CASE WHEN b THEN c ELSE a END FROM t ORDER BY a, id");
    assert!(
        p.shard_sql
            .contains("CASE WHEN b THEN c ELSE a END AS \"__shardgate_0\""),
        "{}",
        p.shard_sql
    );
}

fn grouped(p: &MergePlan) -> &GroupPlan {
    match &p.mode {
        MergeMode::Grouped(g) => g,
        other => panic!("not grouped: {other:?}"),
    }
}

#[test]
fn distinct_aggregates_of_the_shard_key_are_summed() {
    // Key values never repeat across shards: each shard's distinct count
    // (or sum) is a partial of the whole.
    let p = plan("SELECT count(DISTINCT id), sum(DISTINCT id) FROM t");
    assert_eq!(
        p.shard_sql,
        "SELECT count(DISTINCT id), sum(DISTINCT id), count(DISTINCT id) AS \"__shardgate_0\", sum(DISTINCT id) AS \"__shardgate_1\" FROM t"
    );
    let g = grouped(&p);
    assert!(g.single_row);
    assert_eq!(
        g.aggregates.iter().map(|a| a.func).collect::<Vec<_>>(),
        vec![AggKind::Count, AggKind::Sum]
    );
    // Grouped by another column, in HAVING and ORDER BY, qualified, aliased,
    // through an inner join, on the NULL-extended side of an outer join.
    for sql in [
        "SELECT x, count(DISTINCT id) FROM t GROUP BY x",
        "SELECT x FROM t GROUP BY x HAVING count(DISTINCT t.id) > 2",
        "SELECT x, count(*) FROM t GROUP BY x ORDER BY count(DISTINCT (id)) DESC",
        "SELECT avg(DISTINCT a.id) FROM t a",
        "SELECT count(DISTINCT u.id) FROM t JOIN u ON u.id = t.id",
        "SELECT t.x, count(DISTINCT u.id) FROM t LEFT JOIN u ON u.id = t.id GROUP BY t.x",
    ] {
        plan(sql);
    }
}

#[test]
fn distinct_aggregates_grouped_by_the_shard_key_pass_through() {
    // Each group lives on one shard.
    for sql in [
        "SELECT id, count(DISTINCT x), sum(DISTINCT y) FROM t GROUP BY id",
        "SELECT x, id, avg(DISTINCT y) FROM t GROUP BY x, id",
        "SELECT t.id FROM t GROUP BY 1 HAVING count(DISTINCT x) > 1",
        "SELECT a.id, count(DISTINCT x) AS n FROM t a GROUP BY a.id ORDER BY n DESC, a.id",
        "SELECT t.id, count(DISTINCT u.x) FROM t LEFT JOIN u ON u.id = t.id GROUP BY t.id",
        "SELECT u.id, count(DISTINCT t.x) FROM t RIGHT JOIN u ON u.id = t.id GROUP BY u.id",
    ] {
        let p = plan(sql);
        assert!(p.shard_sql.contains("(DISTINCT "), "{sql}: {}", p.shard_sql);
        assert!(!grouped(&p).single_row, "{sql}");
    }
}

#[test]
fn distinct_aggregates_that_may_repeat_across_shards_group_by_their_argument() {
    // The shards group by the argument too and sort by it last: equal
    // values of several shards arrive adjacent, the proxy counts one.
    let p = plan("SELECT count(DISTINCT x), count(*) FROM t");
    assert_eq!(
        p.shard_sql,
        "SELECT count(DISTINCT x), count(*), count(DISTINCT x) AS \"__shardgate_0\", count(*) AS \"__shardgate_1\", x AS \"__shardgate_2\" FROM t GROUP BY x ORDER BY \"__shardgate_2\" ASC NULLS LAST"
    );
    let g = grouped(&p);
    assert!(g.single_row);
    assert_eq!(g.distinct_value, Some(4));
    assert!(g.group_columns.is_empty());
    assert_eq!(
        g.aggregates.iter().map(|a| a.distinct).collect::<Vec<_>>(),
        vec![true, false]
    );
    let p = plan("SELECT y, sum(DISTINCT x), avg(DISTINCT x) FROM t GROUP BY y HAVING count(DISTINCT x) > 1 ORDER BY count(DISTINCT x) DESC, y");
    assert!(
        p.shard_sql.contains(" GROUP BY y, x ORDER BY "),
        "{}",
        p.shard_sql
    );
    let g = grouped(&p);
    assert_eq!(g.group_columns.len(), 1);
    assert_eq!(g.merge_keys.last().map(|k| k.column), g.distinct_value);
    assert!(g.aggregates.iter().all(|a| a.distinct));
    assert_eq!(g.final_sort.len(), 2);
    // Grouped by the argument: already a merge key.
    let g = grouped(&plan("SELECT x, count(DISTINCT x) FROM t GROUP BY x")).clone();
    assert_eq!(g.merge_keys.len(), 1);
    assert_eq!(Some(g.group_columns[0]), g.distinct_value);
}

#[test]
fn distinct_aggregates_that_may_repeat_across_shards_are_refused() {
    for (sql, construct) in [
        // Two arguments.
        (
            "SELECT count(DISTINCT x), count(DISTINCT y) FROM t",
            "count(DISTINCT ...) next to a DISTINCT aggregate of another argument",
        ),
        (
            "SELECT x, sum(DISTINCT y) FROM t GROUP BY x HAVING count(DISTINCT z) > 1",
            "count(DISTINCT ...) next to a DISTINCT aggregate of another argument",
        ),
        // A shard key's exact count would be summed over finer groups.
        (
            "SELECT count(DISTINCT id), count(DISTINCT x) FROM t",
            "count(DISTINCT ...) next to a DISTINCT aggregate of another argument",
        ),
        (
            "SELECT y, count(DISTINCT x) FROM t GROUP BY y ORDER BY sum(DISTINCT id)",
            "sum(DISTINCT ...) next to a DISTINCT aggregate of another argument",
        ),
        (
            "SELECT count(DISTINCT (1)) FROM t",
            "count(DISTINCT <constant>)",
        ),
        // Without GROUP BY next to a non-aggregate (no row over no rows).
        (
            "SELECT 1, count(DISTINCT x) FROM t",
            "count/sum/avg(DISTINCT ...) without GROUP BY next to a value that is no aggregate",
        ),
    ] {
        assert_eq!(refused(sql), construct, "{sql}");
    }
    // What is not the key or grouped by it goes the general way.
    for sql in [
        "SELECT count(DISTINCT id + 1) FROM t",
        "SELECT id % 2, count(DISTINCT x) FROM t GROUP BY id % 2",
        "SELECT count(DISTINCT c.id) FROM t JOIN countries c ON c.code = t.c",
        "WITH t AS (SELECT x AS id FROM u) SELECT count(DISTINCT id) FROM t",
        "SELECT u.id, count(DISTINCT t.x) FROM t LEFT JOIN u ON u.id = t.id GROUP BY u.id",
        "SELECT x FROM t GROUP BY x ORDER BY sum(DISTINCT y)",
        "SELECT count(DISTINCT x) FILTER (WHERE y > 0), count(DISTINCT x) FROM t",
    ] {
        assert!(grouped(&plan(sql)).distinct_value.is_some(), "{sql}");
    }
    // The exact cases do not.
    assert_eq!(
        grouped(&plan("SELECT id, count(DISTINCT x) FROM t GROUP BY id")).distinct_value,
        None
    );
    assert_eq!(
        grouped(&plan("SELECT count(DISTINCT id) FROM t")).distinct_value,
        None
    );
}

#[test]
fn ordered_gathered_aggregates_group_the_shards_by_their_order_keys() {
    let p =
        plan("SELECT g, string_agg(x, ',' ORDER BY y DESC, z) FILTER (WHERE w) FROM t GROUP BY g");
    assert_eq!(
        p.shard_sql,
        "SELECT g, string_agg(x, ',' ORDER BY y DESC, z) FILTER (WHERE w), (',')::TEXT AS \"__shardgate_0\", y AS \"__shardgate_1\", z AS \"__shardgate_2\", g AS \"__shardgate_3\" FROM t GROUP BY g, y, z ORDER BY \"__shardgate_3\" ASC NULLS LAST"
    );
    let g = grouped(&p);
    assert!(g.gathered);
    // The visible column is the partial (client's format), the separator hidden.
    let slot = &g.aggregates[0];
    assert_eq!(slot.partials, vec![1, 2]);
    let order: Vec<_> = slot
        .order
        .iter()
        .map(|k| (k.column, k.desc, k.nulls_first))
        .collect();
    assert_eq!(order, vec![(3, true, true), (4, false, false)]);
    assert_eq!(g.group_columns, vec![5]);
}

#[test]
fn gathered_aggregates_ordered_otherwise_or_next_to_distinct_ones_combine() {
    let p = plan(
        "SELECT string_agg(x, ',' ORDER BY y), array_agg(x ORDER BY z), count(DISTINCT x) FROM t",
    );
    assert!(p.shard_sql.contains("GROUP BY y, z, x"), "{}", p.shard_sql);
    let g = grouped(&p);
    assert!(g.gathered && g.distinct_value.is_some());
    assert_eq!(g.aggregates[0].order.len(), 1);
    assert_ne!(g.aggregates[0].order, g.aggregates[1].order);
}

#[test]
fn gathered_aggregates_without_order_or_on_one_shard_are_not_regrouped() {
    for sql in [
        "SELECT g, array_agg(x) FROM t GROUP BY g",
        "SELECT id, json_agg(x ORDER BY y) FROM t GROUP BY id",
    ] {
        let p = plan(sql);
        assert!(!grouped(&p).gathered, "{sql}");
        assert!(
            !p.shard_sql.contains("GROUP BY g, ") && !p.shard_sql.contains("id, y"),
            "{sql}"
        );
    }
}

#[test]
fn statistics_push_count_sums_avg_and_var_pop() {
    let p = plan("SELECT stddev(x) FILTER (WHERE w) FROM t");
    assert_eq!(
        p.shard_sql,
        "SELECT stddev(x) FILTER (WHERE w), count(x) FILTER (WHERE w) AS \"__shardgate_0\", sum(x) FILTER (WHERE w) AS \"__shardgate_1\", sum((x)::NUMERIC * (x)::NUMERIC) FILTER (WHERE w) AS \"__shardgate_2\", avg(x) FILTER (WHERE w) AS \"__shardgate_3\", var_pop(x) FILTER (WHERE w) AS \"__shardgate_4\" FROM t"
    );
    assert_eq!(grouped(&p).aggregates[0].partials, vec![1, 2, 3, 4, 5]);
}

#[test]
fn gathered_forms_that_cannot_combine_are_named() {
    assert_eq!(
        refused("SELECT string_agg(DISTINCT x, ',') FROM t"),
        "string_agg(DISTINCT ...)"
    );
    assert_eq!(
        refused("SELECT string_agg(x, y ORDER BY z) FROM t"),
        "string_agg() with a separator that is not a constant"
    );
    assert_eq!(
        refused("SELECT count(DISTINCT id), array_agg(x ORDER BY y) FROM t"),
        "count(DISTINCT <shard key>) next to string_agg/array_agg/json_agg(... ORDER BY ...)"
    );
    assert!(refused("SELECT 1, array_agg(x ORDER BY y) FROM t").contains("without GROUP BY"));
    assert_eq!(
        refused("SELECT variance(DISTINCT x) FROM t"),
        "variance(DISTINCT ...)"
    );
    assert_eq!(
        refused("SELECT array_agg(x ORDER BY y COLLATE \"de_DE\") FROM t"),
        "array_agg(... ORDER BY ... COLLATE ...)"
    );
}
