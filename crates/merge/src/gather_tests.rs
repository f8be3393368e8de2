//! Unit tests of the gathered and statistical aggregates; the expected values are
//! what PostgreSQL 15 answered for the same rows on one server.

use bytes::Bytes;

use crate::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn text(b: Option<Bytes>) -> Option<String> {
    b.map(|b| String::from_utf8(b.to_vec()).unwrap())
}

fn num_bin(s: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    Numeric::parse_text(s).unwrap().to_binary(&mut out);
    out.to_vec()
}

/// One shard's partials over integers/numeric: count, sum, sum of squares.
fn numeric_partials(xs: &[&str]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut sum = Numeric::from_i64(0);
    let mut sq = Numeric::from_i64(0);
    for x in xs {
        let x = Numeric::parse_text(x).unwrap();
        sum = sum.add(&x);
        sq = sq.add(&x.mul(&x).unwrap());
    }
    let mut s = bytes::BytesMut::new();
    sum.to_binary(&mut s);
    let mut q = bytes::BytesMut::new();
    sq.to_binary(&mut q);
    (
        (xs.len() as i64).to_be_bytes().to_vec(),
        s.to_vec(),
        q.to_vec(),
    )
}

fn numeric_stat(stat: Statistic, shards: &[&[&str]]) -> Option<String> {
    let mut st = AggState::new(
        AggKind::Statistic(stat),
        oid::NUMERIC,
        &[
            oid::INT8,
            oid::NUMERIC,
            oid::NUMERIC,
            oid::NUMERIC,
            oid::NUMERIC,
        ],
    )
    .unwrap();
    for xs in shards {
        let (n, s, q) = numeric_partials(xs);
        let present = !xs.is_empty();
        st.add(&[
            Some(&n),
            present.then_some(&s[..]),
            present.then_some(&q[..]),
            None,
            None,
        ])
        .unwrap();
    }
    text(st.finish(0).unwrap())
}

#[test]
fn numeric_statistics_match_postgres() {
    let shards: &[&[&str]] = &[&["1.5", "7"], &["2.25"], &["-3.125"]];
    assert_eq!(
        numeric_stat(Statistic::VarSamp, shards).as_deref(),
        Some("17.1809895833333333")
    );
    assert_eq!(
        numeric_stat(Statistic::StddevSamp, shards).as_deref(),
        Some("4.1449957277822776")
    );
    assert_eq!(
        numeric_stat(Statistic::VarPop, shards).as_deref(),
        Some("12.8857421875000000")
    );
    assert_eq!(
        numeric_stat(Statistic::StddevPop, shards).as_deref(),
        Some("3.5896715988374201")
    );
    let big: &[&[&str]] = &[&["9000000000000000000"], &["-9000000000000000001", "3"]];
    assert_eq!(
        numeric_stat(Statistic::StddevSamp, big).as_deref(),
        Some("9000000000000000001")
    );
    assert_eq!(
        numeric_stat(Statistic::StddevPop, big).as_deref(),
        Some("7348469228349534295")
    );
    let small: &[&[&str]] = &[&["0.001"], &[], &["0.002"]];
    assert_eq!(
        numeric_stat(Statistic::StddevSamp, small).as_deref(),
        Some("0.000707106781186547524401")
    );
    assert_eq!(
        numeric_stat(Statistic::VarSamp, small).as_deref(),
        Some("0.000000500000000000000000")
    );
    let near: &[&[&str]] = &[
        &["-10000000000000000002.0536", "-9999999999999999998.9360"],
        &["-10000000000000000001.6878", "-9999999999999999995.5125"],
        &["-10000000000000000001.5058", "-9999999999999999998.0009"],
        &["-9999999999999999995.1272"],
    ];
    assert_eq!(
        numeric_stat(Statistic::VarSamp, near).as_deref(),
        Some("8.4978121890476190")
    );
    assert_eq!(
        numeric_stat(Statistic::StddevPop, near).as_deref(),
        Some("2.6988588364684199")
    );
    // Equal values: a zero numerator is "0" whatever the scale.
    let equal: &[&[&str]] = &[&["5"], &["5.00"]];
    assert_eq!(
        numeric_stat(Statistic::StddevSamp, equal).as_deref(),
        Some("0")
    );
}

#[test]
fn numeric_statistics_nulls_and_nan() {
    assert_eq!(numeric_stat(Statistic::VarPop, &[&[], &[]]), None);
    assert_eq!(numeric_stat(Statistic::VarSamp, &[&["4"], &[]]), None);
    assert_eq!(
        numeric_stat(Statistic::VarPop, &[&["4"], &[]]).as_deref(),
        Some("0")
    );
    // A NaN or infinite input: NaN, but still NULL for a sample of one.
    let nan = num_bin("NaN");
    let one = 1i64.to_be_bytes();
    for (stat, want) in [(Statistic::VarSamp, None), (Statistic::VarPop, Some("NaN"))] {
        let mut st = AggState::new(
            AggKind::Statistic(stat),
            oid::NUMERIC,
            &[
                oid::INT8,
                oid::NUMERIC,
                oid::NUMERIC,
                oid::NUMERIC,
                oid::NUMERIC,
            ],
        )
        .unwrap();
        st.add(&[Some(&one), Some(&nan), Some(&nan), None, None])
            .unwrap();
        assert_eq!(text(st.finish(0).unwrap()).as_deref(), want);
    }
}

#[test]
fn float_statistics_combine_as_float8_combine() {
    // 1, 2 on one shard and 3, 4 on another.
    let f = |v: f64| v.to_be_bytes();
    let n2 = 2i64.to_be_bytes();
    let expect = [
        (Statistic::VarSamp, "1.6666666666666667"),
        (Statistic::StddevSamp, "1.2909944487358056"),
        (Statistic::VarPop, "1.25"),
        (Statistic::StddevPop, "1.118033988749895"),
    ];
    for (stat, want) in expect {
        let mut st = AggState::new(
            AggKind::Statistic(stat),
            oid::FLOAT8,
            &[
                oid::INT8,
                oid::FLOAT8,
                oid::NUMERIC,
                oid::FLOAT8,
                oid::FLOAT8,
            ],
        )
        .unwrap();
        for (sum, avg) in [(3.0, 1.5), (7.0, 3.5)] {
            st.add(&[
                Some(&n2),
                Some(&f(sum)),
                None,
                Some(&f(avg)),
                Some(&f(0.25)),
            ])
            .unwrap();
        }
        assert_eq!(
            text(st.finish(0).unwrap()).as_deref(),
            Some(want),
            "{stat:?}"
        );
    }
}

#[test]
fn string_agg_joins_partials_with_the_separator() {
    let mut st = AggState::new(AggKind::StringAgg, oid::TEXT, &[oid::TEXT, oid::TEXT]).unwrap();
    for v in [Some("a"), None, Some("b"), Some("c")] {
        st.add(&[v.map(str::as_bytes), Some(b", ")]).unwrap();
    }
    assert_eq!(text(st.finish(0).unwrap()).as_deref(), Some("a, b, c"));
    let mut none = AggState::new(AggKind::StringAgg, oid::TEXT, &[oid::TEXT, oid::TEXT]).unwrap();
    none.add(&[None, Some(b",")]).unwrap();
    assert_eq!(none.finish(0).unwrap(), None);
    assert!(AggState::new(AggKind::StringAgg, oid::BYTEA, &[oid::BYTEA, oid::TEXT]).is_err());
}

#[test]
fn array_agg_concatenates_text_arrays() {
    let mut st = AggState::new(AggKind::ArrayAgg, 1009, &[1009]).unwrap();
    st.add(&[Some(br#"{"a b","x\"y"}"#)]).unwrap();
    st.add(&[None]).unwrap();
    st.add(&[Some(br#"{NULL,"NULL","{}"}"#)]).unwrap();
    assert_eq!(
        text(st.finish(0).unwrap()).as_deref(),
        Some(r#"{"a b","x\"y",NULL,"NULL","{}"}"#)
    );
    let mut nested = AggState::new(AggKind::ArrayAgg, 1007, &[1007]).unwrap();
    assert!(nested.add(&[Some(b"{{1,2},{3,4}}")]).is_err());
    assert!(AggState::new(AggKind::ArrayAgg, 1020, &[1020]).is_err());
}

#[test]
fn array_agg_concatenates_binary_arrays() {
    let mut st = AggState::new(AggKind::ArrayAgg, 1009, &[1009]).unwrap();
    let a = hex("00000001000000000000001900000002000000010000000361206200000003782279");
    let b = hex("0000000100000001000000190000000300000001ffffffff000000044e554c4c000000027b7d");
    st.add(&[Some(&a)]).unwrap();
    st.add(&[Some(&b)]).unwrap();
    assert_eq!(
        st.finish(1).unwrap().unwrap().to_vec(),
        hex("00000001000000010000001900000005000000010000000361206200000003782279ffffffff000000044e554c4c000000027b7d")
    );
    assert!(st.key().is_err());
}

#[test]
fn json_agg_joins_arrays() {
    let mut st = AggState::new(AggKind::JsonAgg, oid::JSON, &[oid::JSON]).unwrap();
    st.add(&[Some(br#"["a b", null]"#)]).unwrap();
    st.add(&[Some(br#"["x\"y"]"#)]).unwrap();
    assert_eq!(
        text(st.finish(0).unwrap()).as_deref(),
        Some(r#"["a b", null, "x\"y"]"#)
    );
    // json_agg of rows puts a newline before each one after the first.
    let mut rows = AggState::new(AggKind::JsonAgg, oid::JSON, &[oid::JSON]).unwrap();
    rows.add(&[Some(br#"[{"i":1}]"#)]).unwrap();
    assert!(rows.add(&[Some(br#"[{"i":2}]"#)]).is_err());
}

#[test]
fn jsonb_agg_joins_binary_values() {
    let mut st = AggState::new(AggKind::JsonAgg, oid::JSONB, &[oid::JSONB]).unwrap();
    st.add(&[Some(&hex("015b22612062222c206e756c6c5d"))])
        .unwrap();
    st.add(&[Some(&hex("015b22785c2279225d"))]).unwrap();
    assert_eq!(
        st.finish(1).unwrap().unwrap().to_vec(),
        hex("015b22612062222c206e756c6c2c2022785c2279225d")
    );
    let mut objects = AggState::new(AggKind::JsonAgg, oid::JSONB, &[oid::JSONB]).unwrap();
    objects.add(&[Some(br#"[{"i": 1, "x": "a"}]"#)]).unwrap();
    objects.add(&[Some(br#"[{"i": 2, "x": "b"}]"#)]).unwrap();
    assert_eq!(
        text(objects.finish(0).unwrap()).as_deref(),
        Some(r#"[{"i": 1, "x": "a"}, {"i": 2, "x": "b"}]"#)
    );
}

#[test]
fn ordered_rows_combine_in_their_keys_order() {
    let mut st = AggState::new(AggKind::StringAgg, oid::TEXT, &[oid::TEXT, oid::TEXT])
        .unwrap()
        .ordered(vec![(true, true), (false, false)])
        .unwrap();
    // ORDER BY k1 DESC (NULLS FIRST), k2: rows arrive in another order.
    for (k1, k2, v) in [
        (Key::Int(1), Key::Int(2), "d"),
        (Key::Null, Key::Int(9), "a"),
        (Key::Int(5), Key::Int(1), "b"),
        (Key::Int(1), Key::Int(1), "c"),
    ] {
        st.add_keyed(vec![k1, k2], &[Some(v.as_bytes()), Some(b"-")])
            .unwrap();
    }
    assert_eq!(text(st.finish(0).unwrap()).as_deref(), Some("a-b-c-d"));
    assert!(matches!(st.key().unwrap(), Key::Bytes(b) if b == "a-b-c-d"));
    assert!(st.add(&[Some(b"x"), Some(b"-")]).is_err());
    let count = AggState::new(AggKind::Count, oid::INT8, &[oid::INT8]).unwrap();
    assert!(count.ordered(vec![(false, false)]).is_err());
}
