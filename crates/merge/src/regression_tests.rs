//! Tests of the two-variable statistics and bitwise aggregates, against values one
//! Postgres 15 computed over all rows.

use crate::{oid, AggKind, AggState, BitOp, Key, Regression};

fn f8(v: f64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn i8b(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Per-shard partials `[regr_count, regr_avgx, regr_avgy, regr_sxx, regr_syy, regr_sxy]`
/// of `(y, x)` = (1,2), (3,5), (4,4), (NULL,1) and of (10,-1), (2.5,7), as Postgres
/// computed them.
fn shards() -> [[Vec<u8>; 6]; 2] {
    [
        [
            i8b(3),
            f8(3.6666666666666665),
            f8(2.6666666666666665),
            f8(4.666666666666667),
            f8(4.666666666666666),
            f8(3.6666666666666665),
        ],
        [i8b(2), f8(3.0), f8(6.25), f8(32.0), f8(28.125), f8(-30.0)],
    ]
}

fn state(stat: Regression) -> AggState {
    let partials = [
        oid::INT8,
        oid::FLOAT8,
        oid::FLOAT8,
        oid::FLOAT8,
        oid::FLOAT8,
        oid::FLOAT8,
    ];
    AggState::new(AggKind::Regression(stat), stat.output_oid(), &partials).unwrap()
}

fn combined(stat: Regression) -> Key {
    let mut s = state(stat);
    for shard in shards() {
        let row: Vec<Option<&[u8]>> = shard.iter().map(|v| Some(v.as_slice())).collect();
        s.add(&row).unwrap();
    }
    s.key().unwrap()
}

fn close(got: Key, want: f64) {
    match got {
        Key::Float(v) => assert!(
            ((v - want) / want).abs() < 1e-13,
            "got {v}, Postgres says {want}"
        ),
        other => panic!("expected a float, got {other:?}"),
    }
}

#[test]
fn regression_combines_as_one_server() {
    // Postgres 15 over the six rows.
    close(combined(Regression::Corr), -0.6895850894500576);
    close(combined(Regression::CovarPop), -5.839999999999999);
    close(combined(Regression::CovarSamp), -7.299999999999999);
    close(combined(Regression::Sxx), 37.2);
    close(combined(Regression::Syy), 48.199999999999996);
    close(combined(Regression::Sxy), -29.199999999999996);
    close(combined(Regression::AvgX), 3.4);
    close(combined(Regression::AvgY), 4.1);
    close(combined(Regression::Slope), -0.7849462365591396);
    close(combined(Regression::Intercept), 6.768817204301075);
    close(combined(Regression::R2), 0.4755275955918439);
    assert!(matches!(combined(Regression::Count), Key::Int(5)));
}

#[test]
fn regression_of_no_rows_and_lines() {
    let mut s = state(Regression::Corr);
    s.add(&[Some(&i8b(0)), None, None, None, None, None])
        .unwrap();
    assert!(s.key().unwrap().is_null());
    assert_eq!(state(Regression::Count).finish(0).unwrap().unwrap(), "0");
    // A horizontal line y = 1 over x = 2, 5: corr NULL, r2 1, slope 0 (Postgres).
    let line = [i8b(2), f8(3.5), f8(1.0), f8(4.5), f8(0.0), f8(0.0)];
    let row: Vec<Option<&[u8]>> = line.iter().map(|v| Some(v.as_slice())).collect();
    for (stat, want) in [
        (Regression::Corr, None),
        (Regression::R2, Some(1.0)),
        (Regression::Slope, Some(0.0)),
    ] {
        let mut s = state(stat);
        s.add(&row).unwrap();
        match want {
            None => assert!(s.key().unwrap().is_null()),
            Some(w) => assert!(matches!(s.key().unwrap(), Key::Float(v) if v == w)),
        }
    }
}

#[test]
fn regression_rejects_malformed_partials() {
    let mut s = state(Regression::Corr);
    assert!(s
        .add(&[Some(&i8b(2)), None, None, None, None, None])
        .is_err());
    assert!(s
        .add(&[Some(&[1, 2][..]), None, None, None, None, None])
        .is_err());
    assert!(AggState::new(
        AggKind::Regression(Regression::Corr),
        oid::FLOAT8,
        &[oid::INT8; 6]
    )
    .is_err());
}

#[test]
fn bits_combine_per_shard_values() {
    // Postgres 15: over 12, 10, -3 → 8, -1, -5; over 6, -3 → 4, -1, -5; over all
    // five → 0, -1, 0.
    for (op, shard_values, want) in [
        (BitOp::And, [8i16, 4], "0"),
        (BitOp::Or, [-1, -1], "-1"),
        (BitOp::Xor, [-5, -5], "0"),
    ] {
        let mut s = AggState::new(AggKind::Bits(op), oid::INT2, &[oid::INT2]).unwrap();
        s.add(&[None]).unwrap();
        for v in shard_values {
            s.add(&[Some(&v.to_be_bytes())]).unwrap();
        }
        assert_eq!(s.finish(0).unwrap().unwrap(), want);
        let bin = s.finish(1).unwrap().unwrap();
        assert_eq!(bin.len(), 2);
    }
    let s = AggState::new(AggKind::Bits(BitOp::Xor), oid::INT8, &[oid::INT8]).unwrap();
    assert!(s.finish(0).unwrap().is_none());
    let mut s = AggState::new(AggKind::Bits(BitOp::And), oid::INT4, &[oid::INT4]).unwrap();
    assert!(s.add(&[Some(&[0, 1][..])]).is_err());
    assert!(AggState::new(AggKind::Bits(BitOp::Or), oid::NUMERIC, &[oid::NUMERIC]).is_err());
}
