use super::*;
use crate::shard::{ShardedTable, ValueSource};
use crate::KeyFilter;

/// `orders` and `t` sharded by `id`, everything else a reference table.
struct Tables;

impl TableLookup for Tables {
    fn sharded(&self, _schema: Option<&str>, name: &str) -> Option<ShardedTable> {
        matches!(name, "t" | "orders").then(|| ShardedTable {
            column: "id".into(),
            ranged: false,
        })
    }
    fn is_reference(&self, _schema: Option<&str>, name: &str) -> bool {
        !matches!(name, "t" | "orders")
    }
    fn version(&self) -> u64 {
        7
    }
}

fn analyzer() -> Analyzer {
    Analyzer::new(Classifier::default(), 1000)
}

#[test]
fn literal_variants_share_one_analysis() {
    let a = analyzer();
    let one = a.analyze("SELECT qty FROM orders WHERE id = 5", Some(&Tables));
    let two = a.analyze("SELECT qty FROM orders WHERE id = 'x'", Some(&Tables));
    assert!(Arc::ptr_eq(&one.analysis, &two.analysis));
    assert_eq!(
        (one.literals, two.literals),
        (vec!["5".to_owned()], vec!["x".to_owned()])
    );
    assert_eq!(a.cache_len(), 1);
    // Route, shard plan and merge tree all come from that one entry.
    assert_eq!(one.analysis.classification.route, Route::Read);
    let (plan, literals) = a.plan("SELECT qty FROM orders WHERE id = 9", &Tables);
    assert_eq!(
        plan.resolve_literals(&literals),
        ShardPlan::Keyed {
            table: (None, "orders".into()),
            filter: KeyFilter::Eq(vec![ValueSource::Literal("9".into())]),
        }
    );
    assert!(one.analysis.tree.is_some());
    assert_eq!(a.cache_len(), 1);
}

#[test]
fn classification_with_tables_is_the_classifiers() {
    let a = analyzer();
    for sql in [
        "SELECT 1",
        "SELECT * FROM orders WHERE id = 1 FOR UPDATE",
        "UPDATE orders SET qty = 2 WHERE id = 3",
        "BEGIN READ ONLY",
        "SET search_path = app",
        "COPY orders FROM STDIN",
        "COPY orders TO STDOUT",
        "SELECT DATE '2024-01-01' FROM orders",
        "SELECT nextval('s')",
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
        "/* shardgate: shard=1 */ SELECT * FROM orders",
        "SELECT 1; UPDATE orders SET qty = 1",
        "",
        "/* only a comment */",
        "SELECT 'open",
    ] {
        let want = a.classifier().classify(sql);
        assert_eq!(a.classify(sql, Some(&Tables)), want, "{sql}");
        assert_eq!(a.classify(sql, Some(&Tables)), want, "{sql} (cached)");
        assert_eq!(a.classify(sql, None), want, "{sql} (without tables)");
        let planned = a.plan_and_classify(sql, &Tables);
        assert_eq!(planned.classification, want, "{sql} (with its plan)");
        assert_eq!(planned.plan, a.plan(sql, &Tables).0, "{sql} (plan)");
    }
}

/// The merge plan made from the cached tree with the text's literals bound
/// in is the plan of the text parsed as written, for every kind of literal
/// and every place the merge plan reads one.
#[test]
fn bound_literals_give_the_plan_of_the_exact_text() {
    let a = analyzer();
    let queries = [
        "SELECT id, qty FROM orders ORDER BY qty DESC LIMIT 10 OFFSET 5",
        "SELECT id, qty FROM orders ORDER BY 2, 1 LIMIT 3",
        "SELECT status, count(*) * 2, sum(qty) / 3 FROM orders GROUP BY 1 HAVING sum(qty) > -5 ORDER BY 2",
        "SELECT round(avg(qty), 2), min(qty) + 1.5e3 FROM orders WHERE status <> 'it''s'",
        "SELECT CASE WHEN sum(qty) > 100 THEN 'big' ELSE E'sm\\nall' END FROM orders",
        "SELECT string_agg(status, ', ' ORDER BY status), $$x$$ FROM orders",
        "SELECT percentile_cont(0.25) WITHIN GROUP (ORDER BY qty) FROM orders",
        "SELECT id, sum(qty) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING) FROM orders",
        "SELECT DISTINCT ON (status) status, qty FROM orders ORDER BY status, qty DESC",
        "SELECT qty::numeric(10,2) FROM orders ORDER BY 1 LIMIT 4",
        "SELECT count(*) FROM orders WHERE created > DATE '2024-01-01' - INTERVAL '1 day'",
        "SELECT id FROM orders WHERE id IN (1, 2, -3) UNION SELECT id FROM t WHERE qty = 7",
        "SELECT - 5 + sum(qty), B'101', X'1F' FROM orders",
        "SELECT qty FROM orders ORDER BY qty LIMIT $1 OFFSET 2",
        "SELECT count(DISTINCT qty) FILTER (WHERE qty > 0) FROM orders",
        "EXPLAIN SELECT qty FROM orders ORDER BY qty LIMIT 3",
        "SELECT x FROM (SELECT qty + 1 AS x FROM orders LIMIT 20) s",
    ];
    let mut bound = 0;
    for q in queries {
        for sql in [q.to_owned(), q.replace('1', "8").replace('2', "9")] {
            let want = plan_merge(&sql, &Tables);
            let got = a.merge_plan(&sql, &Tables).map(|p| (*p).clone());
            assert_eq!(got, want, "{sql}");
            let analysed = a.analyze(&sql, Some(&Tables));
            if let (Some(tree), Some(base)) = (&analysed.analysis.tree, analysed.analysis.base) {
                bound += usize::from(bind_literals(tree, base, &sql).is_some());
            }
        }
    }
    // All but the typed literals (`DATE '...'`, `numeric(10,2)`: the
    // normalised text does not parse, or a placeholder stands where no
    // expression can) are planned from the shared tree.
    assert_eq!(bound, 2 * (queries.len() - 2));
}

#[test]
fn placeholders_beyond_the_parameters_stay_apart() {
    let a = analyzer();
    // `$1` is a parameter; the literal becomes `$2` in the normalised text.
    let sql = "SELECT qty FROM orders ORDER BY qty LIMIT $1 OFFSET 3";
    assert_eq!(
        a.merge_plan(sql, &Tables).map(|p| (*p).clone()),
        plan_merge(sql, &Tables)
    );
    let analysed = a.analyze(sql, Some(&Tables));
    assert_eq!(analysed.analysis.base, Some(1));
    assert_eq!(analysed.literals, ["3"]);
}

#[test]
fn query_strings_of_several_statements_share_their_route() {
    let a = analyzer();
    let one = a.analyze(
        "UPDATE orders SET qty = 1 WHERE id = 2; SELECT 3",
        Some(&Tables),
    );
    let two = a.analyze(
        "UPDATE orders SET qty = 4 WHERE id = 5; SELECT 6",
        Some(&Tables),
    );
    assert!(Arc::ptr_eq(&one.analysis, &two.analysis));
    assert_eq!(one.analysis.classification.route, Route::Write);
    // Their plan is made from each text.
    let sql = "UPDATE orders SET qty = 1 WHERE id = 2; UPDATE orders SET qty = 1 WHERE id = 2";
    assert_eq!(*a.plan(sql, &Tables).0, crate::shard::plan(sql, &Tables));
}

#[test]
fn a_new_shard_map_version_analyses_again() {
    struct Moved;
    impl TableLookup for Moved {
        fn sharded(&self, _schema: Option<&str>, _name: &str) -> Option<ShardedTable> {
            None
        }
        fn is_reference(&self, _schema: Option<&str>, _name: &str) -> bool {
            false
        }
        fn version(&self) -> u64 {
            8
        }
    }
    let a = analyzer();
    let sql = "SELECT qty FROM orders WHERE id = 5";
    assert!(matches!(*a.plan(sql, &Tables).0, ShardPlan::Keyed { .. }));
    assert_eq!(*a.plan(sql, &Moved).0, ShardPlan::Unsharded);
}

#[test]
fn without_a_cache_everything_is_analysed_as_written() {
    let a = Analyzer::new(Classifier::default(), 0);
    let sql = "SELECT qty FROM orders ORDER BY qty LIMIT 3";
    assert_eq!(a.classify(sql, Some(&Tables)).route, Route::Read);
    assert_eq!(
        a.merge_plan(sql, &Tables).map(|p| (*p).clone()),
        plan_merge(sql, &Tables)
    );
    assert_eq!(a.cache_len(), 0);
}

/// sqlparser keeps an optimizer hint comment (pg_hint_plan's `/*+ ... */`,
/// or `--+`) in the statement: the shards must get it, and two texts with
/// different hints must not share a plan (merge_plan fuzzing found both
/// plans differing).
#[test]
fn optimizer_hints_reach_the_shard_query() {
    let a = analyzer();
    for sql in [
        "SELECT /*+ SeqScan(orders) */ qty, count(*) FROM orders GROUP BY qty",
        "SELECT/*abc+x*/qty, count(*) FROM orders GROUP BY qty",
        "SELECT --+ SeqScan(orders)\n qty, count(*) FROM orders GROUP BY qty",
    ] {
        let plan = a.merge_plan(sql, &Tables).map(|p| (*p).clone());
        assert_eq!(plan, plan_merge(sql, &Tables), "{sql:?}");
    }
    let hinted = a
        .merge_plan(
            "SELECT /*+ SeqScan(orders) */ qty FROM orders ORDER BY qty",
            &Tables,
        )
        .expect("planned");
    assert!(
        hinted.shard_sql.contains("SeqScan(orders)"),
        "{}",
        hinted.shard_sql
    );
    let other = a
        .merge_plan(
            "SELECT /*+ IndexScan(orders) */ qty FROM orders ORDER BY qty",
            &Tables,
        )
        .expect("planned");
    assert!(
        other.shard_sql.contains("IndexScan(orders)"),
        "{}",
        other.shard_sql
    );
    // A plain comment is dropped, as before.
    let plain = a.merge_plan(
        "SELECT /* note + 1 */ qty FROM orders ORDER BY qty",
        &Tables,
    );
    let bare = a.merge_plan("SELECT qty FROM orders ORDER BY qty", &Tables);
    assert_eq!(plain.expect("planned"), bare.expect("planned"));
}

/// Fuzzing found texts whose normalised form sqlparser read otherwise than
/// the exact text: a number with stray underscores or dots, a `--` comment
/// ended by a lone `\r`, control characters between tokens. Each is
/// routed as the classifier routes it.
#[test]
fn texts_sqlparser_reads_apart_route_as_written() {
    let a = analyzer();
    for sql in [
        "SELECT (v / 1) AS b, count(*) FROM orders GROUP BY 1________ ORDER BY 1",
        "SELECT (v / 100000.......) AS b FROM orders GROUP BY 1",
        "SELECT --\r1 FROM orders",
        "SELECT 1 --x\r; DELETE FROM orders",
        "\u{b}\n\tSET\u{5}\t\u{c}\0 x",
        "SELECT 1\u{c}FROM orders",
        "SELECT@--+\n$5$E ers",
        "SELECT/**/S (value . 100000) AS b FROM orders",
        "SELECT (100000 . value) AS b FROM orders",
    ] {
        let want = a.classifier().classify(sql);
        assert_eq!(a.classify(sql, None), want, "{sql:?}");
        assert_eq!(
            a.classify(sql, Some(&Tables)),
            want,
            "{sql:?} (with tables)"
        );
    }
}
