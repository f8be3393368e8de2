//! `timestamptz` text in the form Postgres prints it with `TimeZone=UTC` and
//! `DateStyle=ISO`, computed by hand (days-from-civil, proleptic Gregorian).

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of the civil date `y-m-d` (astronomical year:
/// 0 is 1 BC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Postgres text of a `timestamptz` given in microseconds since the Unix
/// epoch: `2026-12-06 13:20:00.123456+00`, trailing zero fraction digits
/// trimmed, ` BC` for years before 1, `infinity`/`-infinity` for the extremes.
pub fn format_timestamptz(micros: i64) -> String {
    match micros {
        i64::MAX => return "infinity".to_string(),
        i64::MIN => return "-infinity".to_string(),
        _ => {}
    }
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let frac = micros.rem_euclid(MICROS_PER_SEC);
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    let (year, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
    let mut s = format!(
        "{year:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if frac != 0 {
        let digits = format!("{frac:06}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    s.push_str("+00");
    if bc {
        s.push_str(" BC");
    }
    s
}

/// A cursor over ASCII input.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    /// Between `min` and `max` decimal digits as a number.
    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.i;
        let mut v: i64 = 0;
        while self.i - start < max {
            match self.peek() {
                Some(c @ b'0'..=b'9') => v = v * 10 + i64::from(c - b'0'),
                _ => break,
            }
            self.i += 1;
        }
        (self.i - start >= min).then_some(v)
    }

    /// A fraction of a second after the `.`, rounded to microseconds.
    fn fraction(&mut self) -> Option<i64> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty() {
            return None;
        }
        let mut v: i64 = 0;
        for k in 0..6 {
            v = v * 10 + digits.get(k).map_or(0, |c| i64::from(c - b'0'));
        }
        Some(v + i64::from(digits.get(6).is_some_and(|&c| c >= b'5')))
    }

    /// A UTC offset in seconds: `Z`, `UTC`, `+HH`, `+HH:MM`, `+HHMM`, `-...`.
    fn zone(&mut self) -> Option<i64> {
        if self.eat(b'Z') || self.eat(b'z') {
            return Some(0);
        }
        if self.b[self.i..].eq_ignore_ascii_case(b"utc") {
            self.i += 3;
            return Some(0);
        }
        let sign = if self.eat(b'+') {
            1
        } else if self.eat(b'-') {
            -1
        } else {
            return Some(0);
        };
        let h = self.number(1, 2)?;
        self.eat(b':');
        let m = self.number(0, 2).unwrap_or(0);
        if h > 15 || m > 59 {
            return None;
        }
        Some(sign * (h * 3600 + m * 60))
    }
}

/// Reads a `timestamptz` as [`format_timestamptz`] writes it, also with a
/// `T` separator, without seconds or time, with `Z`/`+00:00`/other offsets
/// (or none: UTC), ` BC`, and `infinity`. Microseconds since the Unix epoch,
/// or `None` when the text is not a valid timestamp.
pub fn parse_timestamptz(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("infinity") || s.eq_ignore_ascii_case("+infinity") {
        return Some(i64::MAX);
    }
    if s.eq_ignore_ascii_case("-infinity") {
        return Some(i64::MIN);
    }
    let (s, bc) = match s.len().checked_sub(3).and_then(|n| s.get(n..)) {
        Some(tail) if tail.eq_ignore_ascii_case(" bc") => (s[..s.len() - 3].trim_end(), true),
        _ => (s, false),
    };
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let year = c.number(4, 7)?;
    c.eat(b'-').then_some(())?;
    let month = c.number(1, 2)?;
    c.eat(b'-').then_some(())?;
    let day = c.number(1, 2)?;
    let (mut hour, mut minute, mut second, mut frac) = (0, 0, 0, 0);
    if c.eat(b' ') || c.eat(b'T') || c.eat(b't') {
        hour = c.number(1, 2)?;
        c.eat(b':').then_some(())?;
        minute = c.number(2, 2)?;
        if c.eat(b':') {
            second = c.number(2, 2)?;
            if c.eat(b'.') {
                frac = c.fraction()?;
            }
        }
        while c.eat(b' ') {}
    }
    let offset = c.zone()?;
    if c.i != c.b.len()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
        || (bc && year == 0)
    {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    let secs =
        days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset;
    secs.checked_mul(MICROS_PER_SEC)?
        .checked_add(frac)
        .filter(|&v| v != i64::MAX && v != i64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn formats_like_postgres() {
        assert_eq!(format_timestamptz(0), "1970-01-01 00:00:00+00");
        let t = parse_timestamptz("2026-12-06 13:20:00+00").unwrap();
        assert_eq!(format_timestamptz(t), "2026-12-06 13:20:00+00");
        assert_eq!(
            format_timestamptz(t + 123_456),
            "2026-12-06 13:20:00.123456+00"
        );
        assert_eq!(format_timestamptz(t + 500_000), "2026-12-06 13:20:00.5+00");
        assert_eq!(format_timestamptz(-1), "1969-12-31 23:59:59.999999+00");
        assert_eq!(
            format_timestamptz(days_from_civil(0, 3, 1) * SECS_PER_DAY * MICROS_PER_SEC),
            "0001-03-01 00:00:00+00 BC"
        );
        assert_eq!(format_timestamptz(i64::MAX), "infinity");
        assert_eq!(format_timestamptz(i64::MIN), "-infinity");
    }

    #[test]
    fn parses_variants() {
        let base = parse_timestamptz("2026-12-06 13:20:00+00").unwrap();
        assert_eq!(base, 1_796_563_200_000_000);
        for s in [
            "2026-12-06T13:20:00Z",
            "2026-12-06 13:20:00+00:00",
            "2026-12-06 13:20:00",
            "2026-12-06 13:20",
            " 2026-12-06 13:20:00.000000+00 ",
            "2026-12-06 15:20:00+02",
            "2026-12-06 11:20:00-0200",
            "2026-12-06 13:20:00 UTC",
        ] {
            assert_eq!(parse_timestamptz(s), Some(base), "{s}");
        }
        assert_eq!(
            parse_timestamptz("2026-12-06 13:20:00.1234565+00"),
            Some(base + 123_457)
        );
        assert_eq!(parse_timestamptz("2026-12-06"), Some(base - 48_000_000_000));
        assert_eq!(parse_timestamptz("infinity"), Some(i64::MAX));
        let bc = "0044-03-15 12:00:00+00 BC";
        assert_eq!(format_timestamptz(parse_timestamptz(bc).unwrap()), bc);
        for bad in [
            "",
            "x",
            "2026-13-01",
            "2026-02-30",
            "2025-02-29 00:00:00",
            "2026-12-06 24:00:00",
            "2026-12-06 13:20:00+00 junk",
            "2026-12-06 13:20:00.+00",
            "0000-01-01 BC",
            "99999999-01-01",
            "2026-12-06 13:20:00é",
        ] {
            assert_eq!(parse_timestamptz(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips() {
        for micros in [
            0,
            1,
            -1,
            999_999,
            1_796_563_200_123_456,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
        ] {
            assert_eq!(
                parse_timestamptz(&format_timestamptz(micros)),
                Some(micros),
                "{micros}"
            );
        }
        // Extremes never panic.
        for micros in [i64::MAX - 1, i64::MIN + 1] {
            let s = format_timestamptz(micros);
            let _ = parse_timestamptz(&s);
        }
    }
}
