//! Unit tests (the comparison with a real PostgreSQL is in `tests/against_postgres.rs`).

use std::cmp::Ordering;

use bytes::{Bytes, BytesMut};

use crate::*;

fn num(s: &str) -> Numeric {
    Numeric::parse_text(s).unwrap_or_else(|| panic!("parse {s}"))
}

fn bin(n: &Numeric) -> Vec<u8> {
    let mut out = BytesMut::new();
    n.to_binary(&mut out);
    out.to_vec()
}

fn hdr(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&ndigits.to_be_bytes());
    v.extend_from_slice(&weight.to_be_bytes());
    v.extend_from_slice(&sign.to_be_bytes());
    v.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

fn div(a: &str, b: &str) -> String {
    num(a).div(&num(b)).unwrap().to_text()
}

fn fkey(v: f64) -> Key {
    decode_key(oid::FLOAT8, Some(&v.to_be_bytes())).unwrap()
}

#[test]
fn numeric_text_round_trips() {
    for s in [
        "0",
        "0.00",
        "1",
        "-1",
        "1.0",
        "0.0001",
        "-0.0001",
        "12345.678",
        "100000000000000000000000000000000000000000.5",
        "-99999999.99999999",
        "NaN",
        "Infinity",
        "-Infinity",
    ] {
        assert_eq!(num(s).to_text(), s);
    }
    assert_eq!(num("-0.00").to_text(), "0.00");
    assert_eq!(num(" +1.50 ").to_text(), "1.50");
    assert_eq!(num(".5").to_text(), "0.5");
    assert_eq!(num("5.").to_text(), "5");
    assert_eq!(num("1.5e3").to_text(), "1500");
    assert_eq!(num("1.5e-3").to_text(), "0.0015");
    assert_eq!(num("12e-1").to_text(), "1.2");
    assert_eq!(num("inf").to_text(), "Infinity");
    for bad in [
        "", "-", ".", "abc", "1.2.3", "1e", "1e+", "1x", "e5", "1e9999",
    ] {
        assert!(Numeric::parse_text(bad).is_none(), "{bad}");
    }
}

#[test]
fn numeric_binary_encoding() {
    assert_eq!(bin(&num("0")), hdr(0, 0, 0, 0, &[]));
    assert_eq!(bin(&num("0.000")), hdr(0, 0, 0, 3, &[]));
    assert_eq!(bin(&num("12345.678")), hdr(3, 1, 0, 3, &[1, 2345, 6780]));
    assert_eq!(
        bin(&num("-12345.678")),
        hdr(3, 1, 0x4000, 3, &[1, 2345, 6780])
    );
    assert_eq!(bin(&num("0.0001")), hdr(1, -1, 0, 4, &[1]));
    assert_eq!(bin(&num("0.00001")), hdr(1, -2, 0, 5, &[1000]));
    assert_eq!(bin(&num("10000")), hdr(1, 1, 0, 0, &[1]));
    assert_eq!(bin(&num("10000.0000")), hdr(1, 1, 0, 4, &[1]));
    assert_eq!(bin(&num("1.5")), hdr(2, 0, 0, 1, &[1, 5000]));
    assert_eq!(bin(&num("NaN")), hdr(0, 0, 0xC000, 0, &[]));
    assert_eq!(bin(&num("Infinity")), hdr(0, 0, 0xD000, 32, &[]));
    assert_eq!(bin(&num("-Infinity")), hdr(0, 0, 0xF000, 32, &[]));
    for s in [
        "0",
        "0.00",
        "1",
        "-1",
        "0.0001",
        "123456789012345678901234567890.123456789",
        "-0.000000000000000000000000000001",
        "NaN",
        "Infinity",
        "-Infinity",
    ] {
        let n = num(s);
        let back = Numeric::from_binary(&bin(&n)).unwrap();
        assert_eq!(back.to_text(), s);
        assert_eq!(bin(&back), bin(&n));
    }
}

#[test]
fn numeric_from_binary_tolerates_unstripped_and_truncates() {
    // Leading/trailing zero digits are legal on input.
    let n = Numeric::from_binary(&hdr(4, 2, 0, 2, &[0, 1, 2345, 0])).unwrap();
    assert_eq!(n.to_text(), "12345.00");
    // Digits hidden by dscale are truncated like numeric_recv does.
    let n = Numeric::from_binary(&hdr(2, 0, 0x4000, 1, &[1, 5678])).unwrap();
    assert_eq!(n.to_text(), "-1.5");
    let n = Numeric::from_binary(&hdr(1, -1, 0x4000, 0, &[5])).unwrap();
    assert_eq!(n.to_text(), "0");
    assert_eq!(bin(&n), hdr(0, 0, 0, 0, &[]));
}

#[test]
fn numeric_from_binary_rejects_garbage() {
    for bad in [
        vec![],
        vec![0; 7],
        hdr(1, 0, 0, 0, &[]),
        hdr(-1, 0, 0, 0, &[]),
        hdr(0, 0, 0x1234, 0, &[]),
        hdr(1, 0, 0, 0, &[10000]),
        hdr(1, 0, 0, 0, &[-1]),
        hdr(0, 0, 0, 0x4000, &[]),
        {
            let mut v = hdr(1, 0, 0, 0, &[1]);
            v.push(0);
            v
        },
    ] {
        let err = Numeric::from_binary(&bad).unwrap_err();
        assert_eq!(err.sqlstate(), "XX000", "{bad:?}");
    }
    // Extreme weights and scales neither panic nor misbehave.
    let n = Numeric::from_binary(&hdr(1, i16::MAX, 0, 0x3FFF, &[9999])).unwrap();
    assert!(n.to_text().starts_with("9999"));
    let n = Numeric::from_binary(&hdr(1, i16::MIN, 0, 0x3FFF, &[9999])).unwrap();
    assert_eq!(n.to_text(), format!("0.{}", "0".repeat(16383)));
}

#[test]
fn numeric_add_and_compare() {
    assert_eq!(num("1.5").add(&num("2.25")).to_text(), "3.75");
    assert_eq!(num("1").add(&num("-1.000")).to_text(), "0.000");
    assert_eq!(num("-0.0001").add(&num("0.00001")).to_text(), "-0.00009");
    assert_eq!(num("NaN").add(&num("1")).to_text(), "NaN");
    assert_eq!(num("Infinity").add(&num("-Infinity")).to_text(), "NaN");
    assert_eq!(num("Infinity").add(&num("-5")).to_text(), "Infinity");
    assert_eq!(num("5").add(&num("-Infinity")).to_text(), "-Infinity");
    let order = [
        "-Infinity",
        "-1e30",
        "-1.5",
        "-0.0001",
        "0",
        "0.00001",
        "1",
        "1.0001",
        "1e30",
        "Infinity",
        "NaN",
    ];
    for (i, a) in order.iter().enumerate() {
        for (j, b) in order.iter().enumerate() {
            assert_eq!(num(a).cmp_value(&num(b)), i.cmp(&j), "{a} vs {b}");
        }
    }
    assert_eq!(num("1.0").cmp_value(&num("1.00")), Ordering::Equal);
    assert_eq!(num("0").cmp_value(&num("-0.000")), Ordering::Equal);
    assert_eq!(num("NaN").cmp_value(&num("NaN")), Ordering::Equal);
}

#[test]
fn numeric_div_scale_and_rounding() {
    assert_eq!(div("1", "3"), "0.33333333333333333333");
    assert_eq!(div("2", "3"), "0.66666666666666666667");
    assert_eq!(div("-2", "3"), "-0.66666666666666666667");
    assert_eq!(div("2", "-3"), "-0.66666666666666666667");
    assert_eq!(div("-2", "-3"), "0.66666666666666666667");
    assert_eq!(div("10", "3"), "3.3333333333333333");
    // Equal first digits: qweight is decremented (assume var1 < var2).
    assert_eq!(div("3", "3"), "1.00000000000000000000");
    assert_eq!(div("1", "8"), "0.12500000000000000000");
    assert_eq!(div("3", "2"), "1.5000000000000000");
    assert_eq!(div("0.0001", "3"), "0.000033333333333333333333");
    assert_eq!(div("12345", "1"), "12345.0000000000000000");
    assert_eq!(div("123456789", "1"), "123456789.000000000000");
    assert_eq!(div("1", "123456789"), "0.0000000081000000737100006708");
    assert_eq!(div("1e30", "7"), "142857142857142857142857142857");
    assert_eq!(
        div("1.123456789012345678901", "2"),
        "0.561728394506172839451"
    );
    // Rounding half away from zero at the last digit.
    assert_eq!(div("1", "32"), "0.03125000000000000000");
    assert_eq!(
        div("0.5", "1e20"),
        "0.0000000000000000000050000000000000000000"
    );
    assert_eq!(
        div("5", "1e21"),
        "0.0000000000000000000050000000000000000000"
    );
    assert_eq!(div("1", "2e16"), "0.000000000000000050000000000000000000");
    assert_eq!(div("12345678901234567890.1", "2"), "6172839450617283945.1");
    assert_eq!(
        div("-12345678901234567890.1", "2"),
        "-6172839450617283945.1"
    );
    assert_eq!(
        div("12345678901234567890.3", "-2"),
        "-6172839450617283945.2"
    );
    assert_eq!(div("12345678901234567890.1", "4"), "3086419725308641972.5");
    assert_eq!(div("12345678901234567890.1", "8"), "1543209862654320986.3");
    assert_eq!(div("0", "7"), "0.00000000000000000000");
    assert_eq!(div("0.00", "-7"), "0.00000000000000000000");
    // Scale at most 1000 but at least the inputs' scales.
    let tiny = format!("0.{}1", "0".repeat(1100));
    assert_eq!(div(&tiny, "1").len(), 2 + 1000);
    // Special values.
    assert_eq!(div("NaN", "0"), "NaN");
    assert_eq!(div("Infinity", "-2"), "-Infinity");
    assert_eq!(div("-Infinity", "-2"), "Infinity");
    assert_eq!(div("Infinity", "Infinity"), "NaN");
    assert_eq!(div("5", "-Infinity"), "0");
    for (a, b) in [("1", "0"), ("1", "0.000"), ("Infinity", "0")] {
        let err = num(a).div(&num(b)).unwrap_err();
        assert_eq!(err.sqlstate(), "22012");
        assert_eq!(err.to_string(), "division by zero");
    }
}

#[test]
fn float_text() {
    for (v, s) in [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (1.0 / 3.0, "0.3333333333333333"),
        (0.0001, "0.0001"),
        (0.00012, "0.00012"),
        (0.00001, "1e-05"),
        (1.5e-5, "1.5e-05"),
        (123456789012345.0, "123456789012345"),
        (999999999999999.0, "999999999999999"),
        (1e15, "1e+15"),
        (1.5e15, "1.5e+15"),
        (1e20, "1e+20"),
        (1e100, "1e+100"),
        (1.5e-100, "1.5e-100"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
        (100.0, "100"),
        // Postgres's Ryu excludes the interval bounds (STRICTLY_SHORTEST 0).
        (-8.1893e20, "-8.189299999999999e+20"),
        (9007199254740991.0, "9.007199254740991e+15"),
        (123456789012345680000.0, "1.2345678901234568e+20"),
        (12.25, "12.25"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "Infinity"),
        (f64::NEG_INFINITY, "-Infinity"),
    ] {
        assert_eq!(float8_text(v), s, "{v:e}");
    }
    for (v, s) in [
        (0.0f32, "0"),
        (-0.0, "-0"),
        (0.1, "0.1"),
        (1.0 / 3.0, "0.33333334"),
        (100000.0, "100000"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (f32::MAX, "3.4028235e+38"),
        (f32::NAN, "NaN"),
        (f32::NEG_INFINITY, "-Infinity"),
    ] {
        assert_eq!(float4_text(v), s, "{v:e}");
    }
}

#[test]
fn key_decoding() {
    assert!(matches!(decode_key(oid::INT4, None), Ok(Key::Null)));
    assert!(matches!(
        decode_key(oid::INT2, Some(&(-5i16).to_be_bytes())),
        Ok(Key::Int(-5))
    ));
    assert!(matches!(
        decode_key(oid::OID, Some(&u32::MAX.to_be_bytes())),
        Ok(Key::Int(4294967295))
    ));
    assert!(matches!(
        decode_key(oid::DATE, Some(&i32::MAX.to_be_bytes())),
        Ok(Key::Int(2147483647))
    ));
    assert!(matches!(
        decode_key(oid::BOOL, Some(&[1])),
        Ok(Key::Bool(true))
    ));
    assert!(matches!(
        decode_key(oid::FLOAT4, Some(&1.5f32.to_be_bytes())),
        Ok(Key::Float(f)) if f == 1.5
    ));
    match decode_key(oid::BPCHAR, Some(b"ab  ")).unwrap() {
        Key::Bytes(b) => assert_eq!(&b[..], b"ab"),
        k => panic!("{k:?}"),
    }
    match decode_key(oid::BPCHAR, Some(b"   ")).unwrap() {
        Key::Bytes(b) => assert!(b.is_empty()),
        k => panic!("{k:?}"),
    }
    match decode_key(oid::TEXT, Some(b"ab  ")).unwrap() {
        Key::Bytes(b) => assert_eq!(&b[..], b"ab  "),
        k => panic!("{k:?}"),
    }
    // Malformed lengths.
    for (t, v) in [
        (oid::INT4, &[0u8; 3][..]),
        (oid::INT8, &[0; 4][..]),
        (oid::BOOL, &[][..]),
        (oid::FLOAT8, &[0; 4][..]),
        (oid::UUID, &[0; 15][..]),
        (oid::NUMERIC, &[1, 2][..]),
    ] {
        assert_eq!(decode_key(t, Some(v)).unwrap_err().sqlstate(), "XX000");
    }
    // Unsupported types.
    for t in [1186u32, 114, 3802, 1007, 790] {
        assert!(!key_supported(t));
        assert_eq!(decode_key(t, Some(b"x")).unwrap_err().sqlstate(), "0A000");
        assert_eq!(decode_key(t, None).unwrap_err().sqlstate(), "0A000");
    }
}

#[test]
fn float_key_order() {
    let order = [
        f64::NEG_INFINITY,
        -1e300,
        -1.0,
        0.0,
        5e-324,
        1.0,
        f64::INFINITY,
        f64::NAN,
    ];
    for (i, a) in order.iter().enumerate() {
        for (j, b) in order.iter().enumerate() {
            assert_eq!(fkey(*a).cmp_value(&fkey(*b)), i.cmp(&j), "{a} vs {b}");
        }
    }
    assert_eq!(fkey(-0.0).cmp_value(&fkey(0.0)), Ordering::Equal);
    assert!(fkey(-0.0).group_eq(&fkey(0.0)));
    assert!(fkey(f64::NAN).group_eq(&fkey(-f64::NAN)));
    let f4 = decode_key(oid::FLOAT4, Some(&f32::NAN.to_be_bytes())).unwrap();
    assert_eq!(f4.cmp_value(&fkey(f64::INFINITY)), Ordering::Greater);
}

#[test]
fn key_sorting_and_grouping() {
    let one = Key::Int(1);
    let two = Key::Int(2);
    let null = Key::Null;
    // ASC NULLS LAST (default), DESC NULLS FIRST (default), and the explicit overrides.
    assert_eq!(one.cmp_sort(&two, false, false), Ordering::Less);
    assert_eq!(one.cmp_sort(&two, true, true), Ordering::Greater);
    assert_eq!(null.cmp_sort(&one, false, false), Ordering::Greater);
    assert_eq!(null.cmp_sort(&one, true, true), Ordering::Less);
    assert_eq!(null.cmp_sort(&one, false, true), Ordering::Less);
    assert_eq!(null.cmp_sort(&one, true, false), Ordering::Greater);
    assert_eq!(one.cmp_sort(&null, true, false), Ordering::Less);
    assert_eq!(null.cmp_sort(&Key::Null, true, true), Ordering::Equal);
    assert!(null.group_eq(&Key::Null));
    assert!(!null.group_eq(&one));
    assert!(!one.group_eq(&null));
    assert!(one.group_eq(&Key::Int(1)));
    let a = decode_key(oid::NUMERIC, Some(&bin(&num("1.0")))).unwrap();
    let b = decode_key(oid::NUMERIC, Some(&bin(&num("1.00")))).unwrap();
    assert!(a.group_eq(&b));
    // bpchar ignores trailing blanks; text does not.
    let p1 = decode_key(oid::BPCHAR, Some(b"a ")).unwrap();
    let p2 = decode_key(oid::BPCHAR, Some(b"a")).unwrap();
    assert!(p1.group_eq(&p2));
    let t1 = decode_key(oid::TEXT, Some(b"a ")).unwrap();
    let t2 = decode_key(oid::TEXT, Some(b"a")).unwrap();
    assert!(!t1.group_eq(&t2));
    assert_eq!(t2.cmp_value(&t1), Ordering::Less);
    // C collation: bytewise ('B' < 'a', "a" < "ab" < "b").
    let k = |s: &str| Key::Bytes(Bytes::copy_from_slice(s.as_bytes()));
    assert_eq!(k("B").cmp_value(&k("a")), Ordering::Less);
    assert_eq!(k("a").cmp_value(&k("ab")), Ordering::Less);
    assert_eq!(k("ab").cmp_value(&k("b")), Ordering::Less);
    assert_eq!(k("é").cmp_value(&k("z")), Ordering::Greater);
}

#[test]
fn mixed_numeric_comparisons_and_literals() {
    let lit = |s: &str| Key::from_literal_number(s).unwrap();
    assert!(matches!(lit("42"), Key::Int(42)));
    assert!(matches!(lit("-42"), Key::Int(-42)));
    assert!(matches!(lit("99999999999999999999"), Key::Numeric(_)));
    assert!(matches!(lit("1.5"), Key::Numeric(_)));
    assert!(matches!(lit("1e3"), Key::Numeric(_)));
    assert!(matches!(lit("true"), Key::Bool(true)));
    assert!(matches!(lit("FALSE"), Key::Bool(false)));
    assert!(matches!(lit("NULL"), Key::Null));
    match lit("'it''s'") {
        Key::Bytes(b) => assert_eq!(&b[..], b"it's"),
        k => panic!("{k:?}"),
    }
    for bad in ["", "abc", "'unterminated", "'a'b'", "1.2.3", "--1", "NaN"] {
        assert!(Key::from_literal_number(bad).is_none(), "{bad}");
    }
    assert_eq!(Key::Int(2).cmp_value(&lit("1.5")), Ordering::Greater);
    assert_eq!(Key::Int(1).cmp_value(&lit("1.0")), Ordering::Equal);
    assert_eq!(
        Key::Int(i64::MAX).cmp_value(&lit("9223372036854775808")),
        Ordering::Less
    );
    assert_eq!(lit("1.5").cmp_value(&Key::Float(1.5)), Ordering::Equal);
    assert_eq!(Key::Float(1.25).cmp_value(&lit("1.5")), Ordering::Less);
    assert_eq!(
        Key::Float(f64::NAN).cmp_value(&lit("1e300")),
        Ordering::Greater
    );
    assert_eq!(Key::Int(3).cmp_value(&Key::Float(2.5)), Ordering::Greater);
    assert_eq!(
        Key::Numeric(num("NaN")).cmp_value(&Key::Int(i64::MAX)),
        Ordering::Greater
    );
}

fn i8b(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn text(state: &AggState) -> Option<String> {
    state
        .finish(0)
        .unwrap()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

#[test]
fn count_and_int_sums() {
    let mut c = AggState::new(AggKind::Count, oid::INT8, &[oid::INT8]).unwrap();
    assert_eq!(text(&c).as_deref(), Some("0"));
    c.add(&[Some(&i8b(3))]).unwrap();
    c.add(&[Some(&i8b(4))]).unwrap();
    assert_eq!(text(&c).as_deref(), Some("7"));
    assert_eq!(c.finish(1).unwrap().unwrap().to_vec(), i8b(7));
    assert!(matches!(c.key().unwrap(), Key::Int(7)));

    let mut s = AggState::new(AggKind::Sum, oid::INT8, &[oid::INT8]).unwrap();
    assert_eq!(text(&s), None);
    assert!(matches!(s.key().unwrap(), Key::Null));
    s.add(&[None]).unwrap();
    assert_eq!(text(&s), None);
    s.add(&[Some(&i8b(i64::MAX))]).unwrap();
    s.add(&[Some(&i8b(-1))]).unwrap();
    assert_eq!(text(&s), Some((i64::MAX - 1).to_string()));
    s.add(&[Some(&i8b(1))]).unwrap();
    let err = s.add(&[Some(&i8b(1))]).unwrap_err();
    assert_eq!(err.sqlstate(), "22003");
    assert_eq!(err.to_string(), "bigint out of range");

    let mut n = AggState::new(AggKind::Sum, oid::NUMERIC, &[oid::NUMERIC]).unwrap();
    n.add(&[Some(&bin(&num("1.5")))]).unwrap();
    n.add(&[None]).unwrap();
    n.add(&[Some(&bin(&num("-0.125")))]).unwrap();
    assert_eq!(text(&n).as_deref(), Some("1.375"));
    assert_eq!(n.finish(1).unwrap().unwrap().to_vec(), bin(&num("1.375")));
}

#[test]
fn float_sums() {
    let mut s = AggState::new(AggKind::Sum, oid::FLOAT4, &[oid::FLOAT4]).unwrap();
    s.add(&[Some(&0.1f32.to_be_bytes())]).unwrap();
    s.add(&[Some(&0.2f32.to_be_bytes())]).unwrap();
    assert_eq!(text(&s), Some(float4_text(0.1f32 + 0.2f32)));
    assert_eq!(
        s.finish(1).unwrap().unwrap().to_vec(),
        (0.1f32 + 0.2f32).to_be_bytes().to_vec()
    );
    let mut d = AggState::new(AggKind::Sum, oid::FLOAT8, &[oid::FLOAT8]).unwrap();
    d.add(&[Some(&1e308f64.to_be_bytes())]).unwrap();
    let err = d.add(&[Some(&1e308f64.to_be_bytes())]).unwrap_err();
    assert_eq!(err.to_string(), "value out of range: overflow");
    let mut d = AggState::new(AggKind::Sum, oid::FLOAT8, &[oid::FLOAT8]).unwrap();
    d.add(&[Some(&f64::INFINITY.to_be_bytes())]).unwrap();
    d.add(&[Some(&1.0f64.to_be_bytes())]).unwrap();
    assert_eq!(text(&d).as_deref(), Some("Infinity"));
}

#[test]
fn averages() {
    // avg over ints: sum partial int8.
    let mut a = AggState::new(
        AggKind::Avg,
        oid::NUMERIC,
        &[oid::INT8, oid::INT8, oid::NUMERIC],
    )
    .unwrap();
    assert_eq!(text(&a), None);
    a.add(&[None, Some(&i8b(0)), None]).unwrap();
    a.add(&[Some(&i8b(1)), Some(&i8b(1)), Some(&bin(&num("1")))])
        .unwrap();
    a.add(&[Some(&i8b(2)), Some(&i8b(1)), Some(&bin(&num("2")))])
        .unwrap();
    assert_eq!(text(&a).as_deref(), Some("1.5000000000000000"));
    assert_eq!(
        a.finish(1).unwrap().unwrap().to_vec(),
        bin(&num("1.5000000000000000"))
    );
    assert_eq!(
        a.key()
            .unwrap()
            .cmp_value(&Key::from_literal_number("1.5").unwrap()),
        Ordering::Equal
    );
    // avg over numeric: sum partial numeric, dscale kept.
    let mut n = AggState::new(
        AggKind::Avg,
        oid::NUMERIC,
        &[oid::NUMERIC, oid::INT8, oid::NUMERIC],
    )
    .unwrap();
    n.add(&[Some(&bin(&num("1.00"))), Some(&i8b(2)), None])
        .unwrap();
    n.add(&[Some(&bin(&num("0"))), Some(&i8b(1)), None])
        .unwrap();
    assert_eq!(text(&n).as_deref(), Some("0.33333333333333333333"));
    // avg over float8 and float4.
    let mut f = AggState::new(
        AggKind::Avg,
        oid::FLOAT8,
        &[oid::FLOAT8, oid::INT8, oid::FLOAT8],
    )
    .unwrap();
    f.add(&[
        Some(&1.0f64.to_be_bytes()),
        Some(&i8b(1)),
        Some(&1.0f64.to_be_bytes()),
    ])
    .unwrap();
    f.add(&[
        Some(&2.0f64.to_be_bytes()),
        Some(&i8b(2)),
        Some(&1.0f64.to_be_bytes()),
    ])
    .unwrap();
    assert_eq!(text(&f).as_deref(), Some("1"));
    let mut g = AggState::new(
        AggKind::Avg,
        oid::FLOAT8,
        &[oid::FLOAT4, oid::INT8, oid::FLOAT8],
    )
    .unwrap();
    g.add(&[
        Some(&3.0f32.to_be_bytes()),
        Some(&i8b(2)),
        Some(&1.5f64.to_be_bytes()),
    ])
    .unwrap();
    g.add(&[
        Some(&4.0f32.to_be_bytes()),
        Some(&i8b(2)),
        Some(&2.0f64.to_be_bytes()),
    ])
    .unwrap();
    assert_eq!(text(&g).as_deref(), Some("1.75"));
    // A non-zero count with a NULL sum is malformed.
    let err = a.add(&[None, Some(&i8b(1)), None]).unwrap_err();
    assert_eq!(err.sqlstate(), "XX000");
}

#[test]
fn min_max_and_bools() {
    let mut m = AggState::new(AggKind::Max, oid::NUMERIC, &[oid::NUMERIC, oid::NUMERIC]).unwrap();
    m.add(&[Some(&bin(&num("2.5"))), Some(b"2.5")]).unwrap();
    m.add(&[None, None]).unwrap();
    m.add(&[Some(&bin(&num("10"))), Some(b"10")]).unwrap();
    m.add(&[Some(&bin(&num("9.99"))), Some(b"9.99")]).unwrap();
    assert_eq!(text(&m).as_deref(), Some("10"));
    let mut m = AggState::new(AggKind::Min, oid::FLOAT8, &[oid::FLOAT8, oid::FLOAT8]).unwrap();
    m.add(&[Some(&f64::NAN.to_be_bytes()), Some(b"NaN")])
        .unwrap();
    m.add(&[Some(&f64::INFINITY.to_be_bytes()), Some(b"Infinity")])
        .unwrap();
    assert_eq!(text(&m).as_deref(), Some("Infinity"));
    let mut m = AggState::new(AggKind::Max, oid::FLOAT8, &[oid::FLOAT8, oid::FLOAT8]).unwrap();
    assert_eq!(text(&m), None);
    m.add(&[Some(&f64::INFINITY.to_be_bytes()), Some(b"Infinity")])
        .unwrap();
    m.add(&[Some(&f64::NAN.to_be_bytes()), Some(b"NaN")])
        .unwrap();
    assert_eq!(text(&m).as_deref(), Some("NaN"));
    assert!(AggState::new(AggKind::Min, 1186, &[1186, 1186]).is_err());

    let mut b = AggState::new(AggKind::BoolAnd, oid::BOOL, &[oid::BOOL]).unwrap();
    assert_eq!(text(&b), None);
    b.add(&[Some(&[1])]).unwrap();
    b.add(&[None]).unwrap();
    assert_eq!(text(&b).as_deref(), Some("t"));
    b.add(&[Some(&[0])]).unwrap();
    assert_eq!(text(&b).as_deref(), Some("f"));
    assert_eq!(b.finish(1).unwrap().unwrap().to_vec(), vec![0]);
    let mut o = AggState::new(AggKind::BoolOr, oid::BOOL, &[oid::BOOL]).unwrap();
    o.add(&[Some(&[0])]).unwrap();
    o.add(&[Some(&[1])]).unwrap();
    assert!(matches!(o.key().unwrap(), Key::Bool(true)));
}

#[test]
fn unsupported_and_malformed_aggregates() {
    // sum over interval / money, avg over interval.
    for (kind, out, partials) in [
        (AggKind::Sum, 1186u32, vec![1186u32]),
        (AggKind::Sum, 790, vec![790]),
        (AggKind::Avg, 1186, vec![1186, oid::INT8, 1186]),
        (AggKind::BoolAnd, oid::INT4, vec![oid::INT4]),
        (AggKind::Count, oid::INT4, vec![oid::INT4]),
    ] {
        let err = AggState::new(kind, out, &partials).unwrap_err();
        assert_eq!(err.sqlstate(), "0A000", "{kind:?}");
    }
    assert_eq!(
        AggState::new(AggKind::Avg, oid::NUMERIC, &[oid::INT8])
            .unwrap_err()
            .sqlstate(),
        "XX000"
    );
    let mut c = AggState::new(AggKind::Count, oid::INT8, &[oid::INT8]).unwrap();
    assert!(c.add(&[Some(&[1, 2, 3])]).is_err());
    assert!(c.add(&[]).is_err());
    assert!(c.finish(2).is_err());
}

/// Random bytes never panic anywhere.
#[test]
fn fuzz_no_panics() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20000 {
        let len = (next() % 24) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 8 && next() % 2 == 0 {
            // Plausible numeric header with a matching length.
            let nd = ((len - 8) / 2) as i16;
            v[0..2].copy_from_slice(&nd.to_be_bytes());
            v.truncate(8 + 2 * nd as usize);
            v[6] &= 0x3F;
        }
        for t in [
            oid::NUMERIC,
            oid::INT4,
            oid::FLOAT8,
            oid::BPCHAR,
            oid::UUID,
            oid::BOOL,
        ] {
            let _ = decode_key(t, Some(&v));
        }
        if let Ok(n) = Numeric::from_binary(&v) {
            let _ = n.to_text();
            let _ = n.div(&Numeric::from_i64(7));
            let mut out = BytesMut::new();
            n.to_binary(&mut out);
        }
        let s = String::from_utf8_lossy(&v);
        let _ = Key::from_literal_number(&s);
        let _ = Numeric::parse_text(&s);
    }
}

#[test]
fn group_hash_matches_group_eq() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::Hasher;
    let h = |k: &Key| {
        let mut s = DefaultHasher::new();
        k.hash_group(&mut s);
        s.finish()
    };
    let n = |s: &str| decode_key(oid::NUMERIC, Some(&bin(&num(s)))).unwrap();
    for (a, b) in [
        (n("1.0"), n("1.00")),
        (n("100"), n("100.000")),
        (n("0"), n("0.000")),
        (n("-2.50"), n("-2.5")),
        (n("NaN"), n("NaN")),
        (fkey(0.0), fkey(-0.0)),
        (fkey(f64::NAN), fkey(-f64::NAN)),
        (Key::Null, Key::Null),
        (Key::Int(5), Key::Int(5)),
    ] {
        assert!(a.group_eq(&b), "{a:?} {b:?}");
        assert_eq!(h(&a), h(&b), "{a:?} {b:?}");
    }
    assert_ne!(h(&n("1.0")), h(&n("10")));
    assert_ne!(h(&n("1")), h(&n("0.1")));
}
