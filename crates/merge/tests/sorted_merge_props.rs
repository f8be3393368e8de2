//! Property: merging shards' sorted streams by the sort-key comparison
//! (`Key::cmp_sort`, what the proxy's k-way merge of ORDER BY rows orders
//! by) gives the same rows as sorting their union. This holds only if the
//! comparison is a total order on the keys of one column type (transitive,
//! antisymmetric, NULLs and NaN, -0 and 0, numerics of different scales
//! included), which is what is checked here.
//!
//! The k-way merge is the proxy's own operator
//! (`shardgate_merge::ops::SortedMerge`): it takes the stream whose head
//! sorts first, the earliest stream on ties.

use std::cmp::Ordering;

use bytes::BytesMut;
use proptest::prelude::*;
use shardgate_merge::ops::SortedMerge;
use shardgate_merge::plan::SortKey;
use shardgate_merge::{decode_key, oid, Key, Numeric};

/// Binary values of one column type, NULL included, as shards send them.
fn column() -> impl Strategy<Value = (u32, Vec<Option<Vec<u8>>>)> {
    let values =
        |s: BoxedStrategy<Vec<u8>>| prop::collection::vec(prop::option::weighted(0.9, s), 0..40);
    let int8 = prop_oneof![any::<i64>(), -3i64..3]
        .prop_map(|v| v.to_be_bytes().to_vec())
        .boxed();
    let float8 = prop_oneof![
        any::<f64>(),
        prop::sample::select(vec![
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1.0,
            1.5
        ]),
    ]
    .prop_map(|v| v.to_be_bytes().to_vec())
    .boxed();
    let numeric = prop_oneof![
        "-?[0-9]{1,25}(\\.[0-9]{0,12})?",
        prop::sample::select(vec![
            "NaN".to_owned(),
            "1.0".into(),
            "1.00".into(),
            "-0".into(),
            "0.000".into()
        ]),
    ]
    .prop_map(|t| {
        let mut out = BytesMut::new();
        Numeric::parse_text(&t)
            .expect("numeric text")
            .to_binary(&mut out);
        out.to_vec()
    })
    .boxed();
    let text = "[a-c]{0,4}".prop_map(String::into_bytes).boxed();
    let boolean = any::<bool>().prop_map(|b| vec![u8::from(b)]).boxed();
    prop_oneof![
        values(int8).prop_map(|v| (oid::INT8, v)),
        values(float8).prop_map(|v| (oid::FLOAT8, v)),
        values(numeric).prop_map(|v| (oid::NUMERIC, v)),
        values(text).prop_map(|v| (oid::TEXT, v)),
        values(boolean).prop_map(|v| (oid::BOOL, v)),
    ]
}

/// The rows in the order [`SortedMerge`] gives, each input refilled as
/// soon as it wants its next row.
fn kway_merge(streams: Vec<Vec<(Key, usize)>>, desc: bool, nulls_first: bool) -> Vec<usize> {
    let key = SortKey {
        column: 0,
        desc,
        nulls_first,
    };
    let mut merge = SortedMerge::new(streams.len(), vec![key], true);
    let mut inputs: Vec<_> = streams.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        for (i, input) in inputs.iter_mut().enumerate() {
            if merge.wants(i) {
                match input.next() {
                    Some((k, row)) => merge.push(i, vec![k], row),
                    None => merge.end(i),
                }
            }
        }
        match merge.pop() {
            Some((_, row)) => out.push(row),
            None if merge.exhausted() => return out,
            None => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn merging_sorted_streams_equals_sorting_the_union(
        (ty, values) in column(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        desc in any::<bool>(),
        nulls_first in any::<bool>(),
    ) {
        // Row i carries its key and its index, to compare the row order.
        let rows: Vec<(Key, usize)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (decode_key(ty, v.as_deref()).expect("valid value"), i))
            .collect();
        let cmp = |a: &(Key, usize), b: &(Key, usize)| a.0.cmp_sort(&b.0, desc, nulls_first);
        // Deal the rows to shards, each shard's stream sorted.
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(rows.len() + 1)).collect();
        bounds.push(0);
        bounds.push(rows.len());
        bounds.sort_unstable();
        let mut streams = Vec::new();
        for w in bounds.windows(2) {
            let mut s = rows[w[0]..w[1]].to_vec();
            s.sort_by(cmp);
            streams.push(s);
        }
        let mut union: Vec<(Key, usize)> = streams.concat();
        union.sort_by(cmp);
        let expected: Vec<usize> = union.iter().map(|r| r.1).collect();
        prop_assert_eq!(kway_merge(streams, desc, nulls_first), expected);
        // And the order is total: sorted means every later key sorts after.
        for w in union.windows(2) {
            prop_assert_ne!(cmp(&w[0], &w[1]), Ordering::Greater);
        }
    }
}
