//! Per-statement hints written as SQL comments:
//! `/* shardgate: consistency=bounded, max_lag_ms=200 */`.
//!
//! A block comment whose text starts with `shardgate:` (ASCII
//! case-insensitive, after leading whitespace) holds one or more `key=value`
//! pairs separated by spaces and/or commas; values may be bare or quoted
//! with `'...'` or `"..."` (a doubled quote inside stands for itself). Other
//! comments are ignored, as are comments nested inside another comment and
//! anything inside string literals. When a key appears more than once, the
//! last value wins.

use crate::consistency::{parse_max_lag_ms, Consistency};
use crate::lexer::{Lexer, TokenKind};

/// The hints found in a statement; `None` where a hint was not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `consistency=strong|bounded|eventual|session`.
    pub consistency: Option<Consistency>,
    /// `max_lag_ms=500` (also `500ms`, `2s`): the bound for `bounded` reads.
    pub max_lag_ms: Option<u64>,
    /// `shard=2`: run on this shard, whatever the statement says.
    pub shard: Option<u32>,
    /// `sharding_key=42` or `sharding_key='abc'`: route as if the statement
    /// named this value of the sharding key.
    pub sharding_key: Option<String>,
}

impl Hints {
    /// No hints at all.
    pub const EMPTY: Hints = Hints {
        consistency: None,
        max_lag_ms: None,
        shard: None,
        sharding_key: None,
    };

    /// Whether no hint was given.
    pub fn is_empty(&self) -> bool {
        *self == Hints::EMPTY
    }
}

/// A hint comment that cannot be honoured. The proxy reports it to the client
/// with SQLSTATE [`HintError::SQLSTATE`] (`22023`, invalid parameter value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    /// A key that is not one of the known hints.
    #[error(
        "unknown shardgate hint \"{hint}\" (valid hints: consistency, max_lag_ms, shard, sharding_key)"
    )]
    UnknownHint {
        /// The key as written.
        hint: String,
    },
    /// A known hint with a value it cannot take.
    #[error("invalid value \"{value}\" for shardgate hint \"{hint}\": {reason}")]
    InvalidValue {
        /// The hint, lower case.
        hint: String,
        /// The value as written (quotes removed).
        value: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The comment starts with `shardgate:` but is not a list of `key=value`.
    #[error("malformed shardgate hint \"{hint}\": {reason}")]
    Malformed {
        /// The hint (or the text) where the problem is.
        hint: String,
        /// What is wrong.
        reason: String,
    },
}

impl HintError {
    /// SQLSTATE to report a bad hint with: `invalid_parameter_value`.
    pub const SQLSTATE: &'static str = "22023";

    /// The hint (key) the error is about, as written.
    pub fn hint(&self) -> &str {
        match self {
            HintError::UnknownHint { hint }
            | HintError::InvalidValue { hint, .. }
            | HintError::Malformed { hint, .. } => hint,
        }
    }
}

const MARKER: &[u8] = b"shardgate";

/// Whether `sql` contains `shardgate` (ASCII case-insensitive): the cheap
/// test before looking for hint comments.
pub fn mentions_shardgate(sql: &str) -> bool {
    let b = sql.as_bytes();
    if b.len() < MARKER.len() {
        return false;
    }
    memchr::memchr2_iter(b's', b'S', &b[..=b.len() - MARKER.len()])
        .any(|i| b[i..i + MARKER.len()].eq_ignore_ascii_case(MARKER))
}

/// Reads the shardgate hint comments of a statement (or of a query string
/// with several statements: hints of all of them are merged, later ones
/// winning).
///
/// Without the word `shardgate` anywhere in `sql` this returns empty hints
/// without lexing.
pub fn parse_hints(sql: &str) -> Result<Hints, HintError> {
    let mut hints = Hints::default();
    if !mentions_shardgate(sql) {
        return Ok(hints);
    }
    for tok in Lexer::new(sql).filter(|t| t.kind == TokenKind::BlockComment) {
        let body = tok.text.strip_prefix("/*").unwrap_or(tok.text);
        let body = body.strip_suffix("*/").unwrap_or(body);
        if let Some(list) = hint_list(body) {
            parse_list(list, &mut hints)?;
        }
    }
    Ok(hints)
}

/// The text after `shardgate:` if the comment body is a hint comment.
fn hint_list(body: &str) -> Option<&str> {
    let t = body.trim_start();
    let head = t.get(..MARKER.len())?;
    if !head.eq_ignore_ascii_case("shardgate") {
        return None;
    }
    t[MARKER.len()..].trim_start().strip_prefix(':')
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_list(list: &str, hints: &mut Hints) -> Result<(), HintError> {
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return Ok(());
        }
        let key_len = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        if key_len == 0 {
            let word: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != ',')
                .collect();
            return Err(HintError::Malformed {
                hint: word,
                reason: "expected key=value".into(),
            });
        }
        let key = &rest[..key_len];
        rest = rest[key_len..].trim_start();
        rest = rest.strip_prefix('=').ok_or_else(|| HintError::Malformed {
            hint: key.to_owned(),
            reason: "expected '=' and a value after the hint name".into(),
        })?;
        rest = rest.trim_start();
        let (value, after) = read_value(key, rest)?;
        rest = after;
        apply(key, value, hints)?;
    }
}

/// Reads a bare or quoted value at the start of `s`; returns it and the rest.
fn read_value<'a>(key: &str, s: &'a str) -> Result<(String, &'a str), HintError> {
    let missing = || HintError::Malformed {
        hint: key.to_owned(),
        reason: "missing value".into(),
    };
    match s.chars().next() {
        None => Err(missing()),
        Some(q @ ('\'' | '"')) => {
            let mut value = String::new();
            let mut chars = s[1..].char_indices();
            while let Some((i, c)) = chars.next() {
                if c == q {
                    // Position just after this quote, relative to `s`.
                    let after = 1 + i + 1;
                    if s[after..].starts_with(q) {
                        value.push(q);
                        chars.next();
                        continue;
                    }
                    return Ok((value, &s[after..]));
                }
                value.push(c);
            }
            Err(HintError::Malformed {
                hint: key.to_owned(),
                reason: "unterminated quoted value".into(),
            })
        }
        Some(c) if c == ',' || c.is_whitespace() => Err(missing()),
        Some(_) => {
            let end = s
                .find(|c: char| c.is_whitespace() || c == ',')
                .unwrap_or(s.len());
            Ok((s[..end].to_owned(), &s[end..]))
        }
    }
}

fn apply(key: &str, value: String, hints: &mut Hints) -> Result<(), HintError> {
    let invalid = |hint: &str, value: &str, reason: String| HintError::InvalidValue {
        hint: hint.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if key.eq_ignore_ascii_case("consistency") {
        let c = value.parse::<Consistency>().map_err(|_| {
            invalid(
                "consistency",
                &value,
                "expected strong, bounded, eventual or session".into(),
            )
        })?;
        hints.consistency = Some(c);
    } else if key.eq_ignore_ascii_case("max_lag_ms") {
        let ms = parse_max_lag_ms(&value).map_err(|_| {
            invalid(
                "max_lag_ms",
                &value,
                "expected a non-negative number of milliseconds (like 500, 500ms or 2s)".into(),
            )
        })?;
        hints.max_lag_ms = Some(ms);
    } else if key.eq_ignore_ascii_case("shard") {
        let n = value.trim().parse::<u32>().map_err(|_| {
            invalid(
                "shard",
                &value,
                "expected a shard number (a non-negative integer)".into(),
            )
        })?;
        hints.shard = Some(n);
    } else if key.eq_ignore_ascii_case("sharding_key") {
        hints.sharding_key = Some(value);
    } else {
        return Err(HintError::UnknownHint {
            hint: key.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(sql: &str) -> Hints {
        parse_hints(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    #[test]
    fn no_hints() {
        assert!(h("SELECT 1").is_empty());
        assert!(h("").is_empty());
        assert!(h("/* plain comment */ SELECT 1").is_empty());
        // In a string, a line comment or a comment not starting with the marker: ignored.
        assert!(h("SELECT '/* shardgate: shard=1 */'").is_empty());
        assert!(h("SELECT $$ /* shardgate: shard=1 */ $$").is_empty());
        assert!(h("SELECT 1 -- shardgate: shard=1").is_empty());
        assert!(h("SELECT 1 /* see shardgate: shard=1 */").is_empty());
        assert!(h("SELECT 1 /* shardgate is great */").is_empty());
        assert!(h("SELECT 1 /* shardgateway: x=1 */").is_empty());
        assert!(h("SELECT shardgate FROM t").is_empty());
        assert!(h("SELECT 1 /* outer /* shardgate: shard=1 */ */").is_empty());
    }

    #[test]
    fn single_hints() {
        assert_eq!(
            h("/* shardgate: consistency=strong */ SELECT 1").consistency,
            Some(Consistency::Strong)
        );
        assert_eq!(
            h("SELECT 1 /* shardgate: max_lag_ms=500 */").max_lag_ms,
            Some(500)
        );
        assert_eq!(
            h("SELECT 1 /*shardgate:max_lag_ms=2s*/").max_lag_ms,
            Some(2000)
        );
        assert_eq!(h("SELECT /* shardgate: shard=2 */ 1").shard, Some(2));
        assert_eq!(
            h("SELECT 1 /* shardgate: sharding_key=42 */").sharding_key,
            Some("42".into())
        );
        assert_eq!(
            h("SELECT 1 /* shardgate: sharding_key='a b' */").sharding_key,
            Some("a b".into())
        );
        assert_eq!(
            h("SELECT 1 /* shardgate: sharding_key=\"x,y\" */").sharding_key,
            Some("x,y".into())
        );
        assert_eq!(
            h("SELECT 1 /* shardgate: sharding_key='it''s' */").sharding_key,
            Some("it's".into())
        );
        assert_eq!(
            h("SELECT 1 /* SHARDGATE : Consistency = Eventual */").consistency,
            Some(Consistency::Eventual)
        );
        assert_eq!(
            h("SELECT 1 /* shardgate: consistency='session' */").consistency,
            Some(Consistency::Session)
        );
    }

    #[test]
    fn several_hints() {
        let x = h("/* shardgate: consistency=bounded, max_lag_ms=200 */ SELECT 1");
        assert_eq!(x.consistency, Some(Consistency::Bounded));
        assert_eq!(x.max_lag_ms, Some(200));
        let x = h("SELECT 1 /* shardgate: shard=3 sharding_key='k' ,, consistency=eventual */");
        assert_eq!(x.shard, Some(3));
        assert_eq!(x.sharding_key, Some("k".into()));
        assert_eq!(x.consistency, Some(Consistency::Eventual));
        assert_eq!(x.max_lag_ms, None);
        // Several comments; the last value wins.
        let x = h(
            "/* shardgate: shard=1 */ SELECT /* other */ 1 /* shardgate: shard=4, max_lag_ms=10 */",
        );
        assert_eq!(x.shard, Some(4));
        assert_eq!(x.max_lag_ms, Some(10));
        assert!(h("SELECT 1 /* shardgate: */").is_empty());
    }

    #[test]
    fn errors_name_the_hint() {
        let e = parse_hints("SELECT 1 /* shardgate: colour=blue */").unwrap_err();
        assert!(matches!(e, HintError::UnknownHint { .. }));
        assert_eq!(e.hint(), "colour");
        assert!(e.to_string().contains("colour"), "{e}");

        let e = parse_hints("SELECT 1 /* shardgate: consistency=sometimes */").unwrap_err();
        assert_eq!(e.hint(), "consistency");
        assert!(e.to_string().contains("sometimes"), "{e}");

        for (sql, hint) in [
            ("/* shardgate: max_lag_ms=-1 */", "max_lag_ms"),
            ("/* shardgate: max_lag_ms=fast */", "max_lag_ms"),
            ("/* shardgate: shard=two */", "shard"),
            ("/* shardgate: shard=99999999999 */", "shard"),
            ("/* shardgate: shard= */", "shard"),
            ("/* shardgate: shard */", "shard"),
            ("/* shardgate: shard 2 */", "shard"),
            ("/* shardgate: sharding_key='abc */", "sharding_key"),
            ("/* shardgate: =2 */", "=2"),
        ] {
            let e = parse_hints(sql).unwrap_err();
            assert_eq!(e.hint(), hint, "{sql}: {e}");
            assert!(e.to_string().contains(hint), "{sql}: {e}");
        }
        assert_eq!(HintError::SQLSTATE, "22023");
    }

    #[test]
    fn marker_search() {
        assert!(mentions_shardgate("x ShardGate y"));
        assert!(mentions_shardgate("shardgate"));
        assert!(!mentions_shardgate("shardgat"));
        assert!(!mentions_shardgate("é"));
        // Unterminated comments and odd input never panic.
        for s in [
            "/* shardgate: shard=1",
            "/* shardgate: sharding_key='é",
            "/* shardgate:é=1 */",
        ] {
            let _ = parse_hints(s);
        }
    }
}
