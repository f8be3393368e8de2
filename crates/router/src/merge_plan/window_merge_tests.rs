use super::super::tests::{plan, refused};
use super::*;

fn window(sql: &str) -> (MergePlan, WindowPlan) {
    let p = plan(sql);
    let w = p
        .window
        .clone()
        .unwrap_or_else(|| panic!("no window: {sql}"));
    (p, w)
}

use super::super::{MergePlan, RowCount};

#[test]
fn ranks_become_typed_placeholders_and_keys_sort_the_shards() {
    let (p, w) = window("SELECT g, v, rank() OVER (PARTITION BY g ORDER BY v DESC) FROM t");
    assert_eq!(
        p.shard_sql,
        "SELECT g, v, CAST(NULL AS BIGINT) AS \"rank\", g AS \"__shardgate_0\", v AS \"__shardgate_1\" FROM t ORDER BY \"__shardgate_0\" ASC NULLS LAST, \"__shardgate_1\" DESC NULLS FIRST"
    );
    assert_eq!((w.partition_keys, w.order_keys), (1, 1));
    assert_eq!(
        w.calls,
        vec![WindowCall {
            func: WindowFunc::Rank,
            output: 2,
            arg: None,
            key: None
        }]
    );
    assert_eq!(p.hidden, 2);
}

#[test]
fn values_travel_in_their_own_column_and_limit_stays_at_the_proxy() {
    let (p, w) = window(
        "SELECT id, lag(v, 2) OVER w AS prev, count(v) OVER w FROM t WINDOW w AS (ORDER BY id) ORDER BY id LIMIT 3",
    );
    assert!(p.shard_sql.starts_with(
        "SELECT id, v AS \"prev\", CAST(NULL AS BIGINT) AS \"count\", id AS \"__shardgate_0\", v AS \"__shardgate_1\" FROM t ORDER BY \"__shardgate_0\""
    ), "{}", p.shard_sql);
    assert!(!p.shard_sql.contains("LIMIT"), "{}", p.shard_sql);
    assert_eq!(p.limit, Some(RowCount::Literal(3)));
    assert_eq!(w.calls[0].func, WindowFunc::Lag { arg: 0, offset: 2 });
    assert_eq!(w.calls[0].arg, Some(1));
    assert_eq!(w.calls[1].func, WindowFunc::Count(Some(1)));
    assert_eq!(w.calls[1].arg, Some(4));
}

#[test]
fn the_statement_order_may_follow_the_partition_keys_in_any_direction() {
    let (p, _) = window(
        "SELECT a, b, row_number() OVER (PARTITION BY a, b ORDER BY v) FROM t ORDER BY b DESC, a",
    );
    let MergeMode::Sorted { keys, .. } = &p.mode else {
        panic!("sorted")
    };
    assert_eq!(keys.len(), 3);
    assert!(keys[0].desc && !keys[1].desc);
    assert!(
        p.shard_sql.contains("b AS \"__shardgate_0\""),
        "{}",
        p.shard_sql
    );
}

#[test]
fn what_the_proxy_cannot_compute_is_named() {
    for (sql, want) in [
        (
            "SELECT v, row_number() OVER (ORDER BY v) FROM t ORDER BY g",
            "ORDER BY other than the window's",
        ),
        (
            "SELECT rank() OVER (ORDER BY v), rank() OVER (ORDER BY g) FROM t",
            "window functions over different windows",
        ),
        (
            "SELECT v, row_number() OVER (ORDER BY v) + 1 FROM t",
            "a window function inside the expression",
        ),
        ("SELECT *, rank() OVER () FROM t", "SELECT * with window"),
        (
            "SELECT sum(v) OVER (ORDER BY v) FROM t",
            "the window function sum() with 1 argument(s)",
        ),
        (
            "SELECT ntile(0) OVER () FROM t",
            "ntile() with an argument below 1",
        ),
        (
            "SELECT lag(v, 1, 0) OVER () FROM t",
            "the window function lag() with 3 argument(s)",
        ),
        (
            "SELECT v FROM t ORDER BY row_number() OVER (ORDER BY v)",
            "ORDER BY a window function",
        ),
        (
            "SELECT DISTINCT rank() OVER (ORDER BY v) FROM t",
            "DISTINCT with window functions",
        ),
    ] {
        let got = refused(sql);
        assert!(got.starts_with(want), "{sql}: {got}");
    }
}

#[test]
fn min_and_max_forward_the_value_and_compare_a_binary_copy() {
    let (p, w) = window("SELECT id, max(v) OVER (PARTITION BY g) FROM t");
    assert!(
        p.shard_sql
            .starts_with("SELECT id, v AS \"max\", g AS \"__shardgate_0\", v AS \"__shardgate_1\""),
        "{}",
        p.shard_sql
    );
    assert_eq!(w.calls[0].func, WindowFunc::Max(0));
    assert_eq!((w.calls[0].arg, w.calls[0].key), (Some(1), Some(3)));
}
