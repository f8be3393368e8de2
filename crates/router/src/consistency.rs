//! Read consistency levels and the staleness bound of `bounded` reads.

use std::fmt;
use std::str::FromStr;

/// How stale a read may be, which decides whether a replica may serve it
/// (docs/ARCHITECTURE.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Reads go to the primary.
    Strong,
    /// A replica whose measured lag is at most `max_lag_ms`, otherwise the primary.
    Bounded,
    /// Any healthy replica; the primary only when no replica is healthy.
    Eventual,
    /// Read your writes: a replica only once it has replayed this client's
    /// last committed write, otherwise the primary.
    Session,
}

impl Consistency {
    /// Every level, in the order of the documentation.
    pub const ALL: [Consistency; 4] = [
        Consistency::Strong,
        Consistency::Bounded,
        Consistency::Eventual,
        Consistency::Session,
    ];

    /// The lower-case name, as accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub const fn as_str(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Bounded => "bounded",
            Consistency::Eventual => "eventual",
            Consistency::Session => "session",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A consistency level name that is not one of the four levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consistency level \"{0}\": valid values are strong, bounded, eventual, session")]
pub struct ParseConsistencyError(pub String);

impl FromStr for Consistency {
    type Err = ParseConsistencyError;

    /// Parses `strong`, `bounded`, `eventual` or `session` (ASCII
    /// case-insensitive, surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Consistency::ALL
            .into_iter()
            .find(|c| t.eq_ignore_ascii_case(c.as_str()))
            .ok_or_else(|| ParseConsistencyError(s.to_owned()))
    }
}

/// A staleness bound that is not a non-negative number of milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid max_lag_ms \"{0}\": expected a non-negative integer number of milliseconds \
     (like 500, 500ms or 2s)"
)]
pub struct ParseLagError(pub String);

/// Parses a staleness bound in milliseconds: `500`, `500ms` or `2s`
/// (whitespace around the number and before the unit is allowed, units are
/// ASCII case-insensitive).
pub fn parse_max_lag_ms(s: &str) -> Result<u64, ParseLagError> {
    let err = || ParseLagError(s.to_owned());
    let t = s.trim();
    let digits_end = t
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(t.len());
    if digits_end == 0 {
        return Err(err());
    }
    let n: u64 = t[..digits_end].parse().map_err(|_| err())?;
    let unit = t[digits_end..].trim_start();
    let factor = if unit.is_empty() || unit.eq_ignore_ascii_case("ms") {
        1
    } else if unit.eq_ignore_ascii_case("s") {
        1000
    } else {
        return Err(err());
    };
    n.checked_mul(factor).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels_case_insensitively() {
        assert_eq!("strong".parse(), Ok(Consistency::Strong));
        assert_eq!("BOUNDED".parse(), Ok(Consistency::Bounded));
        assert_eq!(" Eventual ".parse(), Ok(Consistency::Eventual));
        assert_eq!("session".parse(), Ok(Consistency::Session));
        let e = "sometimes".parse::<Consistency>().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sometimes"), "{msg}");
        for c in Consistency::ALL {
            assert!(msg.contains(c.as_str()), "{msg}");
        }
        assert!("".parse::<Consistency>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for c in Consistency::ALL {
            assert_eq!(c.to_string(), c.as_str());
            assert_eq!(c.to_string().parse(), Ok(c));
            assert_eq!(c.to_string().to_uppercase().parse(), Ok(c));
        }
        assert_eq!(Consistency::Bounded.to_string(), "bounded");
    }

    #[test]
    fn parses_lag_bounds() {
        assert_eq!(parse_max_lag_ms("0"), Ok(0));
        assert_eq!(parse_max_lag_ms("500"), Ok(500));
        assert_eq!(parse_max_lag_ms(" 500 "), Ok(500));
        assert_eq!(parse_max_lag_ms("500ms"), Ok(500));
        assert_eq!(parse_max_lag_ms("500 MS"), Ok(500));
        assert_eq!(parse_max_lag_ms("2s"), Ok(2000));
        assert_eq!(parse_max_lag_ms("2 s"), Ok(2000));
        for bad in [
            "",
            "-1",
            "+5",
            "1.5s",
            "abc",
            "5m",
            "ms",
            "1 2",
            "99999999999999999999",
            "18446744073709551615s",
        ] {
            let e = parse_max_lag_ms(bad).unwrap_err();
            assert!(e.to_string().contains("milliseconds"), "{bad}: {e}");
        }
        assert_eq!(parse_max_lag_ms("18446744073709551615"), Ok(u64::MAX));
    }
}
