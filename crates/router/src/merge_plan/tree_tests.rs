//! Plans run through the merge tree on fake shard rows: what the client
//! would receive for rows the shards could have sent, without sockets.

use std::sync::Arc;

use bytes::BytesMut;
use shardgate_merge::oid;
use shardgate_merge::row::{data_row, DataRow};
use shardgate_merge::tree::{MergeTree, Step};

use super::tests::plan;

/// A field: text for visible columns, binary for hidden ones.
enum F {
    Text(&'static str),
    Int4(i32),
    Int8(i64),
    Null,
}

fn row(fields: &[F]) -> BytesMut {
    let bytes: Vec<Option<Vec<u8>>> = fields
        .iter()
        .map(|f| match f {
            F::Text(t) => Some(t.as_bytes().to_vec()),
            F::Int4(v) => Some(v.to_be_bytes().to_vec()),
            F::Int8(v) => Some(v.to_be_bytes().to_vec()),
            F::Null => None,
        })
        .collect();
    let refs: Vec<Option<&[u8]>> = bytes.iter().map(|b| b.as_deref()).collect();
    data_row(&refs)
}

/// Runs `sql`'s merge over `shards` (each a sorted list of rows typed by
/// `types`) with LIMIT/OFFSET as planned; the client's rows as text.
fn merge(
    sql: &str,
    types: Vec<u32>,
    shards: Vec<Vec<BytesMut>>,
    budget: usize,
) -> Result<Vec<Vec<Option<String>>>, shardgate_merge::MergeError> {
    let p = plan(sql);
    let visible = p.visible.expect("visible");
    let limit = match p.limit {
        Some(super::RowCount::Literal(n)) => Some(n),
        _ => None,
    };
    let offset = match p.offset {
        Some(super::RowCount::Literal(n)) => n,
        _ => 0,
    };
    let mut tree = MergeTree::new(Arc::new(p), shards.len(), budget);
    tree.set_limit(limit, offset);
    tree.set_types(types);
    tree.describe(visible)?;
    let mut inputs: Vec<_> = shards.into_iter().map(|s| s.into_iter()).collect();
    let mut out = BytesMut::new();
    loop {
        for (i, input) in inputs.iter_mut().enumerate() {
            if tree.wants(i) {
                match input.next() {
                    Some(r) => tree.push(i, r)?,
                    None => tree.end(i),
                }
            }
        }
        match tree.step(&mut out)? {
            Step::Moved | Step::Waiting => {}
            Step::Drained => break,
        }
        if tree.limit_reached() {
            break;
        }
    }
    tree.finish(&mut out)?;
    Ok(text_rows(&out))
}

fn text_rows(mut out: &[u8]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    while out.len() >= 5 {
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        let view = DataRow::parse(&out[..1 + len]).unwrap();
        rows.push(
            (0..view.len())
                .map(|c| {
                    view.field(c)
                        .map(|v| String::from_utf8(v.to_vec()).unwrap())
                })
                .collect(),
        );
        out = &out[1 + len..];
    }
    rows
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn sorted_streams_merge_with_offset_and_limit_and_hidden_keys_stripped() {
    let r = |v: i32| {
        row(&[
            F::Text(Box::leak(v.to_string().into_boxed_str())),
            F::Int4(v),
        ])
    };
    let got = merge(
        "SELECT x FROM t ORDER BY x LIMIT 2 OFFSET 1",
        vec![oid::INT4, oid::INT4],
        vec![vec![r(1), r(5)], vec![r(2), r(3)], vec![]],
        1 << 20,
    )
    .unwrap();
    assert_eq!(got, vec![vec![s("2")], vec![s("3")]]);
}

#[test]
fn groups_combine_across_shards_then_having_filters_and_the_aggregate_orders() {
    // y, sum(x) visible; sum(x) and y hidden (binary); shards sorted by y.
    let r = |y: &'static str, yi: i32, sum: i64| {
        row(&[F::Text(y), F::Text("?"), F::Int8(sum), F::Int4(yi)])
    };
    let got = merge(
        "SELECT y, sum(x) FROM t GROUP BY y HAVING sum(x) > 2 ORDER BY sum(x) DESC",
        vec![oid::INT4, oid::INT8, oid::INT8, oid::INT4],
        vec![
            vec![r("1", 1, 1), r("2", 2, 10), r("3", 3, 1)],
            vec![r("1", 1, 4), r("3", 3, 1)],
        ],
        1 << 20,
    )
    .unwrap();
    assert_eq!(got, vec![vec![s("2"), s("10")], vec![s("1"), s("5")]]);
}

#[test]
fn distinct_on_keeps_the_first_row_of_each_key() {
    let r = |y: &'static str, x: &'static str, yi: i32, xi: i32| {
        row(&[F::Text(y), F::Text(x), F::Int4(yi), F::Int4(xi)])
    };
    let got = merge(
        "SELECT DISTINCT ON (y) y, x FROM t ORDER BY y, x DESC",
        vec![oid::INT4; 4],
        vec![
            vec![r("1", "9", 1, 9), r("2", "1", 2, 1)],
            vec![r("1", "7", 1, 7), r("2", "5", 2, 5)],
        ],
        1 << 20,
    )
    .unwrap();
    assert_eq!(got, vec![vec![s("1"), s("9")], vec![s("2"), s("5")]]);
}

const DISTINCT: &str = "SELECT count(DISTINCT x), count(*), sum(DISTINCT x) FROM t";

fn distinct_types() -> Vec<u32> {
    // Visible count, count, sum; hidden partials; the argument x (int4).
    let mut t = vec![oid::INT8; 6];
    t.push(oid::INT4);
    t
}

/// One shard row of [`DISTINCT`]: count(DISTINCT x), count(*), sum(DISTINCT
/// x) per (shard, x), visible and hidden alike, then x.
fn distinct_row(cd: i64, c: i64, sd: Option<i64>, x: Option<i32>) -> BytesMut {
    let sum = || sd.map_or(F::Null, F::Int8);
    row(&[
        F::Int8(cd),
        F::Int8(c),
        sum(),
        F::Int8(cd),
        F::Int8(c),
        sum(),
        x.map_or(F::Null, F::Int4),
    ])
}

#[test]
fn distinct_values_repeated_across_shards_count_once() {
    // x = 1 on both shards, 2 on one, NULL on both; each shard sorted by x.
    let got = merge(
        DISTINCT,
        distinct_types(),
        vec![
            vec![
                distinct_row(1, 2, Some(1), Some(1)),
                distinct_row(1, 1, Some(2), Some(2)),
                distinct_row(0, 4, None, None),
            ],
            vec![
                distinct_row(1, 3, Some(1), Some(1)),
                distinct_row(0, 1, None, None),
            ],
        ],
        1 << 20,
    )
    .unwrap();
    assert_eq!(got, vec![vec![s("2"), s("11"), s("3")]]);
}

#[test]
fn a_value_left_out_by_filter_on_one_shard_counts_from_another() {
    let sql = "SELECT count(DISTINCT x) FILTER (WHERE y), count(*), sum(DISTINCT x) FILTER (WHERE y) FROM t";
    // x = 1: the first shard's rows all filtered out, the second's not.
    let got = merge(
        sql,
        distinct_types(),
        vec![
            vec![
                distinct_row(0, 2, None, Some(1)),
                distinct_row(1, 1, Some(2), Some(2)),
                distinct_row(0, 1, None, Some(3)),
            ],
            vec![
                distinct_row(1, 3, Some(1), Some(1)),
                distinct_row(1, 1, Some(2), Some(2)),
            ],
        ],
        1 << 20,
    )
    .unwrap();
    assert_eq!(got, vec![vec![s("2"), s("8"), s("3")]]);
}

#[test]
fn distinct_aggregates_over_no_rows_give_one_row() {
    let got = merge(DISTINCT, distinct_types(), vec![vec![], vec![]], 1 << 20).unwrap();
    assert_eq!(got, vec![vec![s("0"), s("0"), None]]);
}

#[test]
fn distinct_sums_of_non_integers_are_refused() {
    let mut types = distinct_types();
    types[2] = oid::NUMERIC;
    types[5] = oid::NUMERIC;
    types[6] = oid::NUMERIC;
    let e = merge(DISTINCT, types, vec![vec![], vec![]], 1 << 20).unwrap_err();
    assert_eq!(e.sqlstate(), "0A000");
}

#[test]
fn a_sort_key_of_a_type_the_merge_cannot_order_is_refused_before_any_row() {
    // int4[]: the shards order it, the merge cannot compare it.
    let e = merge(
        "SELECT x FROM t ORDER BY x",
        vec![1007, 1007],
        vec![vec![], vec![]],
        1 << 20,
    )
    .unwrap_err();
    assert_eq!(e.sqlstate(), "0A000");
}

#[test]
fn sorting_more_groups_than_the_budget_fails_with_53400() {
    let r = |yi: i32| row(&[F::Text("y"), F::Text("?"), F::Int8(1), F::Int4(yi)]);
    let e = merge(
        "SELECT y, sum(x) FROM t GROUP BY y HAVING sum(x) > 0 ORDER BY sum(x) DESC",
        vec![oid::INT4, oid::INT8, oid::INT8, oid::INT4],
        vec![(0..1000).map(r).collect()],
        10_000,
    )
    .unwrap_err();
    assert_eq!(e.sqlstate(), "53400");
    assert!(e.hint().is_some());
}
