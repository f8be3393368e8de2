//! Tests of the ordered-set aggregates, against values one Postgres 15 computed over
//! all rows: x = 1.5, 2.5, 2.5, -7, 10, 10, NULL (float8).

use crate::{oid, AggKind, AggState, Key, OrderedSet};

/// Shard rows `(x, count(x))`: the first shard has 2.5, -7, 10 and NULL, the second
/// 1.5, 2.5 and 10.
const ROWS: [(Option<f64>, i64); 7] = [
    (Some(2.5), 1),
    (Some(-7.0), 1),
    (Some(10.0), 1),
    (None, 0),
    (Some(1.5), 1),
    (Some(2.5), 1),
    (Some(10.0), 1),
];

fn run(kind: OrderedSet, fraction: f64, desc: bool) -> (Key, Option<bytes::Bytes>) {
    let value_oid = if kind == OrderedSet::PercentileCont {
        oid::FLOAT8
    } else {
        oid::TEXT
    };
    let oids = [oid::INT8, value_oid, oid::FLOAT8];
    let oids = &oids[..kind.partial_count()];
    let mut s = AggState::new(AggKind::OrderedSet(kind), value_oid, oids)
        .and_then(|s| s.ordered(vec![(desc, desc)]))
        .unwrap();
    for (x, n) in ROWS {
        let key = x.map_or(Key::Null, Key::Float);
        let value = x.map(|v| {
            if kind == OrderedSet::PercentileCont {
                v.to_be_bytes().to_vec()
            } else {
                v.to_string().into_bytes()
            }
        });
        let count = n.to_be_bytes();
        let f = fraction.to_be_bytes();
        let partials = [Some(&count[..]), value.as_deref(), Some(&f[..])];
        s.add_keyed(vec![key], &partials[..kind.partial_count()])
            .unwrap();
    }
    (s.key().unwrap(), s.finish(0).unwrap())
}

#[test]
fn percentiles_and_mode_pick_as_postgres() {
    assert!(matches!(run(OrderedSet::PercentileCont, 0.3, false).0, Key::Float(v) if v == 2.0));
    assert!(matches!(run(OrderedSet::PercentileCont, 0.5, true).0, Key::Float(v) if v == 2.5));
    assert_eq!(
        run(OrderedSet::PercentileDisc, 0.3, false).1.unwrap(),
        "1.5"
    );
    assert_eq!(run(OrderedSet::PercentileDisc, 0.0, false).1.unwrap(), "-7");
    assert_eq!(run(OrderedSet::PercentileDisc, 1.0, true).1.unwrap(), "-7");
    // Ties (2.5 and 10 twice each): the first in the ORDER BY order.
    assert_eq!(run(OrderedSet::Mode, 0.0, false).1.unwrap(), "2.5");
    assert_eq!(run(OrderedSet::Mode, 0.0, true).1.unwrap(), "10");
}

#[test]
fn no_values_and_bad_input() {
    let mut s = AggState::new(
        AggKind::OrderedSet(OrderedSet::Mode),
        oid::TEXT,
        &[oid::INT8, oid::TEXT],
    )
    .and_then(|s| s.ordered(vec![(false, false)]))
    .unwrap();
    assert!(s.finish(0).unwrap().is_none());
    // Without its ORDER BY key, or with a short count.
    assert!(s.add(&[None, None]).is_err());
    assert!(s
        .add_keyed(vec![Key::Int(1)], &[Some(&[0, 1][..]), None])
        .is_err());
    assert!(s.add_keyed(Vec::new(), &[None, None]).is_err());
    // percentile_cont of a type other than float8 is not combined.
    assert!(AggState::new(
        AggKind::OrderedSet(OrderedSet::PercentileCont),
        oid::FLOAT8,
        &[oid::INT8, oid::NUMERIC, oid::FLOAT8]
    )
    .is_err());
    // A fraction outside [0, 1] fails as in Postgres.
    let mut s = AggState::new(
        AggKind::OrderedSet(OrderedSet::PercentileDisc),
        oid::TEXT,
        &[oid::INT8, oid::TEXT, oid::FLOAT8],
    )
    .and_then(|s| s.ordered(vec![(false, false)]))
    .unwrap();
    let (one, f) = (1i64.to_be_bytes(), 2.0f64.to_be_bytes());
    s.add_keyed(vec![Key::Int(1)], &[Some(&one), Some(b"1"), Some(&f)])
        .unwrap();
    assert_eq!(s.finish(0).unwrap_err().sqlstate(), "22003");
}
