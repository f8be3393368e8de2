//! `float8` text as Postgres (12+, `extra_float_digits = 1`) prints and
//! reads it: the shortest round-trip digits, in fixed notation when the
//! decimal exponent is in -4..15 and as `1.5e+15` otherwise.

/// Postgres text of a `float8`: `0.1`, `1e+15`, `1.5e-05`, `NaN`,
/// `Infinity`, `-Infinity`, `-0`.
pub fn format_float8(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let body = if (-4..15).contains(&exp) {
        if exp >= 0 {
            let int_len = usize::try_from(exp).unwrap_or(0) + 1;
            if digits.len() <= int_len {
                format!("{digits}{}", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            let zeros = usize::try_from(-exp - 1).unwrap_or(0);
            format!("0.{}{digits}", "0".repeat(zeros))
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let point = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{point}{rest}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

/// Reads `float8` text as Postgres does: decimal or exponent notation with
/// surrounding spaces, `NaN`, `Infinity`, `inf` (any case, optional sign).
pub fn parse_float8(s: &str) -> Option<f64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    match lower.trim_start_matches(['+', '-']) {
        "nan" if !lower.starts_with(['+', '-']) => return Some(f64::NAN),
        "nan" => return None,
        "inf" | "infinity" => {}
        body if body
            .bytes()
            .all(|c| c.is_ascii_digit() || b".eE+-".contains(&c)) => {}
        _ => return None,
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_postgres() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000015, "1.5e-05"),
            (123_456_789_012_345.0, "123456789012345"),
            (1e14, "100000000000000"),
            (1e15, "1e+15"),
            (1.5e15, "1.5e+15"),
            (1e100, "1e+100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for &(f, want) in cases {
            assert_eq!(format_float8(f), want, "{f:?}");
        }
    }

    #[test]
    fn parses_and_round_trips() {
        assert_eq!(parse_float8(" 1.5 "), Some(1.5));
        assert_eq!(parse_float8("1e-05"), Some(0.00001));
        assert_eq!(parse_float8("-Infinity"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float8("inf"), Some(f64::INFINITY));
        assert!(parse_float8("NaN").is_some_and(f64::is_nan));
        for bad in ["", "x", "1.5x", "--1", "-nan", "1,5"] {
            assert_eq!(parse_float8(bad), None, "{bad}");
        }
        for f in [0.1, 1e15, 1.5e-05, 123.456, -7e300, 5e-324] {
            assert_eq!(parse_float8(&format_float8(f)), Some(f));
        }
    }
}
