//! Shard key types, values and their parsing from SQL literals and Bind
//! parameters.
//!
//! One value always becomes one [`ShardKey`], whichever way it reached the
//! proxy: `42` as a literal, `" 42"` as a text parameter and 42 as a binary
//! int4 or int8 parameter are all `ShardKey::Int(42)`, so they land on the
//! same shard.

use std::borrow::Cow;
use std::fmt;
use std::num::IntErrorKind;
use std::str::FromStr;

/// The longest piece of user input quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// The type of a table's shard key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// Integer keys: `bigint`, and also `int2`/`int4`/`int8` columns (all
    /// become an `i64`).
    BigInt,
    /// Text keys (`text`, `varchar`, ...), compared and hashed as UTF-8 bytes.
    Text,
    /// `uuid` keys, hashed as their 16 bytes.
    Uuid,
}

impl KeyType {
    /// The name used in configuration and messages: `bigint`, `text` or `uuid`.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::BigInt => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    /// Parses `bigint`, `text` or `uuid`, ignoring case and surrounding
    /// whitespace. The integer type names `int8`, `int4`, `int2`, `int`,
    /// `integer` and `smallint` are accepted as `bigint`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bigint" | "int8" | "int4" | "int2" | "int" | "integer" | "smallint" => {
                Ok(KeyType::BigInt)
            }
            "text" => Ok(KeyType::Text),
            "uuid" => Ok(KeyType::Uuid),
            _ => Err(KeyError::UnknownKeyType { name: quote(s) }),
        }
    }
}

/// Why a key type name or a key value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A key type name that is not `bigint`, `text` or `uuid`.
    #[error(
        "unknown shard key type {name}: use bigint (also for int2/int4/int8 columns), text or uuid"
    )]
    UnknownKeyType {
        /// The name as given (shortened if long).
        name: String,
    },
    /// A bigint key in text form that is not an optional sign followed by
    /// decimal digits.
    #[error("invalid bigint shard key {value}: expected an integer such as 42 or -7 (decimal digits with an optional sign)")]
    InvalidBigInt {
        /// The value as given (shortened if long).
        value: String,
    },
    /// A bigint key in text form outside the `i64` range.
    #[error("bigint shard key {value} is out of range: it must lie between -9223372036854775808 and 9223372036854775807")]
    BigIntOutOfRange {
        /// The value as given (shortened if long).
        value: String,
    },
    /// A uuid key in text form that Postgres would not accept either.
    #[error("invalid uuid shard key {value}: expected 32 hex digits, optionally hyphenated and in braces, e.g. a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]
    InvalidUuid {
        /// The value as given (shortened if long).
        value: String,
    },
    /// A binary integer parameter whose length is not 2, 4 or 8 bytes.
    #[error("binary integer shard key has {len} bytes: expected 2, 4 or 8 (int2, int4 or int8); check the parameter's type")]
    BinaryIntLength {
        /// The parameter's length in bytes.
        len: usize,
    },
    /// A binary uuid parameter whose length is not 16 bytes.
    #[error(
        "binary uuid shard key has {len} bytes: expected exactly 16; check the parameter's type"
    )]
    BinaryUuidLength {
        /// The parameter's length in bytes.
        len: usize,
    },
    /// A text parameter that is not valid UTF-8.
    #[error("text shard key is not valid UTF-8 (bad byte at offset {valid_up_to}); the client encoding must be UTF8")]
    InvalidUtf8 {
        /// The length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
}

/// A shard key value, normalised so that equal SQL values are equal keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardKey {
    /// An integer key (`bigint`, `int4`, `int2`).
    Int(i64),
    /// A text key.
    Text(String),
    /// A uuid key, as its 16 bytes in network order.
    Uuid([u8; 16]),
}

impl ShardKey {
    /// The key type this value belongs to.
    pub fn key_type(&self) -> KeyType {
        match self {
            ShardKey::Int(_) => KeyType::BigInt,
            ShardKey::Text(_) => KeyType::Text,
            ShardKey::Uuid(_) => KeyType::Uuid,
        }
    }

    /// Canonical bytes hashed for placement: `Int` → the i64 as 8 bytes
    /// big-endian (two's complement); `Text` → its UTF-8 bytes; `Uuid` → the
    /// 16 bytes.
    pub fn canonical_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            ShardKey::Int(v) => Cow::Owned(v.to_be_bytes().to_vec()),
            ShardKey::Text(s) => Cow::Borrowed(s.as_bytes()),
            ShardKey::Uuid(u) => Cow::Borrowed(u),
        }
    }

    /// Calls `f` with the canonical bytes without allocating (the hot path
    /// of placement). Must agree with [`ShardKey::canonical_bytes`].
    pub(crate) fn with_canonical_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            ShardKey::Int(v) => f(&v.to_be_bytes()),
            ShardKey::Text(s) => f(s.as_bytes()),
            ShardKey::Uuid(u) => f(u),
        }
    }

    /// From text: an SQL literal's value (already unquoted) or a text-format
    /// Bind parameter.
    ///
    /// `BigInt` accepts optional surrounding whitespace (space, `\t`, `\n`,
    /// `\r`, `\v`, `\f`, as Postgres does), an optional `+`/`-` sign and
    /// decimal digits; it is an error on overflow, on `"1.5"` and on `""`.
    /// `Text` is taken as is. `Uuid` accepts what Postgres's `uuid_in`
    /// accepts: 32 hex digits in either case, optionally wrapped in `{}`,
    /// with an optional `-` after any group of four digits.
    pub fn parse_text(t: KeyType, s: &str) -> Result<ShardKey, KeyError> {
        match t {
            KeyType::BigInt => parse_bigint(s).map(ShardKey::Int),
            KeyType::Text => Ok(ShardKey::Text(s.to_owned())),
            KeyType::Uuid => parse_uuid(s)
                .map(ShardKey::Uuid)
                .ok_or_else(|| KeyError::InvalidUuid { value: quote(s) }),
        }
    }

    /// From a binary-format Bind parameter: `BigInt` takes 2, 4 or 8 bytes
    /// big-endian (int2/int4/int8); `Text` takes UTF-8 bytes; `Uuid` takes
    /// exactly 16 bytes.
    pub fn parse_binary(t: KeyType, b: &[u8]) -> Result<ShardKey, KeyError> {
        match t {
            KeyType::BigInt => parse_binary_int(b).map(ShardKey::Int),
            KeyType::Text => std::str::from_utf8(b)
                .map(|s| ShardKey::Text(s.to_owned()))
                .map_err(|e| KeyError::InvalidUtf8 {
                    valid_up_to: e.valid_up_to(),
                }),
            KeyType::Uuid => <[u8; 16]>::try_from(b)
                .map(ShardKey::Uuid)
                .map_err(|_| KeyError::BinaryUuidLength { len: b.len() }),
        }
    }

    /// The value as an SQL literal, for messages: `42`, `'it''s'`,
    /// `'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'` (long text is shortened).
    pub fn sql_literal(&self) -> String {
        match self {
            ShardKey::Int(v) => v.to_string(),
            ShardKey::Text(s) => quote(s),
            ShardKey::Uuid(_) => format!("'{self}'"),
        }
    }
}

impl fmt::Display for ShardKey {
    /// `42`, text as is, uuid in canonical hyphenated lower case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardKey::Int(v) => write!(f, "{v}"),
            ShardKey::Text(s) => f.write_str(s),
            ShardKey::Uuid(u) => write_uuid(f, u),
        }
    }
}

/// Writes a uuid as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lower case.
fn write_uuid(f: &mut fmt::Formatter<'_>, u: &[u8; 16]) -> fmt::Result {
    for (i, byte) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            f.write_str("-")?;
        }
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// The whitespace Postgres's `int8in` skips (C `isspace`).
fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Parses a decimal integer with optional sign and surrounding whitespace.
fn parse_bigint(s: &str) -> Result<i64, KeyError> {
    s.trim_matches(is_pg_space)
        .parse::<i64>()
        .map_err(|e| match e.kind() {
            IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => {
                KeyError::BigIntOutOfRange { value: quote(s) }
            }
            _ => KeyError::InvalidBigInt { value: quote(s) },
        })
}

/// Decodes a binary int2, int4 or int8 (big-endian) into an i64.
fn parse_binary_int(b: &[u8]) -> Result<i64, KeyError> {
    if let Ok(v) = <[u8; 8]>::try_from(b) {
        Ok(i64::from_be_bytes(v))
    } else if let Ok(v) = <[u8; 4]>::try_from(b) {
        Ok(i64::from(i32::from_be_bytes(v)))
    } else if let Ok(v) = <[u8; 2]>::try_from(b) {
        Ok(i64::from(i16::from_be_bytes(v)))
    } else {
        Err(KeyError::BinaryIntLength { len: b.len() })
    }
}

/// Parses a uuid exactly as Postgres's `string_to_uuid` does: optional
/// braces, 16 pairs of hex digits, an optional hyphen after every second
/// byte except the last, nothing else.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let mut p = s.as_bytes();
    let braces = match p {
        [b'{', rest @ ..] => {
            p = rest;
            true
        }
        _ => false,
    };
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let [hi, lo, rest @ ..] = p else {
            return None;
        };
        *byte = (hex_digit(*hi)? << 4) | hex_digit(*lo)?;
        p = rest;
        if i % 2 == 1 && i < 15 {
            if let [b'-', rest @ ..] = p {
                p = rest;
            }
        }
    }
    if braces {
        let [b'}', rest @ ..] = p else {
            return None;
        };
        p = rest;
    }
    p.is_empty().then_some(out)
}

/// The value of one ASCII hex digit.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// User input as an SQL string literal for an error message, shortened to
/// [`MAX_QUOTED_CHARS`] characters.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_QUOTED_CHARS * 4) + 8);
    out.push('\'');
    for (i, c) in s.chars().enumerate() {
        if i == MAX_QUOTED_CHARS {
            out.push_str("...");
            break;
        }
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID_BYTES: [u8; 16] = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];

    #[test]
    fn key_type_names() {
        assert_eq!("bigint".parse::<KeyType>().unwrap(), KeyType::BigInt);
        assert_eq!("BIGINT".parse::<KeyType>().unwrap(), KeyType::BigInt);
        assert_eq!("Int4".parse::<KeyType>().unwrap(), KeyType::BigInt);
        assert_eq!("int2".parse::<KeyType>().unwrap(), KeyType::BigInt);
        assert_eq!("Text".parse::<KeyType>().unwrap(), KeyType::Text);
        assert_eq!("UUID".parse::<KeyType>().unwrap(), KeyType::Uuid);
        let err = "float8".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("'float8'"), "{err}");
        for t in [KeyType::BigInt, KeyType::Text, KeyType::Uuid] {
            assert_eq!(t.to_string().parse::<KeyType>().unwrap(), t);
        }
    }

    #[test]
    fn bigint_literal_text_and_binary_agree() {
        let expected = ShardKey::Int(42);
        for text in ["42", " 42", "42 ", "\t42\n", "+42", "042"] {
            assert_eq!(
                ShardKey::parse_text(KeyType::BigInt, text).unwrap(),
                expected,
                "{text:?}"
            );
        }
        assert_eq!(
            ShardKey::parse_binary(KeyType::BigInt, &42i16.to_be_bytes()).unwrap(),
            expected
        );
        assert_eq!(
            ShardKey::parse_binary(KeyType::BigInt, &42i32.to_be_bytes()).unwrap(),
            expected
        );
        assert_eq!(
            ShardKey::parse_binary(KeyType::BigInt, &42i64.to_be_bytes()).unwrap(),
            expected
        );
        for v in [-1i64, i64::from(i16::MIN), i64::from(i32::MIN), 0] {
            let from_text = ShardKey::parse_text(KeyType::BigInt, &v.to_string()).unwrap();
            let from_bin = ShardKey::parse_binary(KeyType::BigInt, &v.to_be_bytes()).unwrap();
            assert_eq!(from_text, from_bin);
        }
        assert_eq!(
            ShardKey::parse_binary(KeyType::BigInt, &(-5i32).to_be_bytes()).unwrap(),
            ShardKey::Int(-5)
        );
        assert_eq!(
            ShardKey::parse_binary(KeyType::BigInt, &(-5i16).to_be_bytes()).unwrap(),
            ShardKey::Int(-5)
        );
    }

    #[test]
    fn bigint_extremes() {
        assert_eq!(
            ShardKey::parse_text(KeyType::BigInt, "-9223372036854775808").unwrap(),
            ShardKey::Int(i64::MIN)
        );
        assert_eq!(
            ShardKey::parse_text(KeyType::BigInt, "9223372036854775807").unwrap(),
            ShardKey::Int(i64::MAX)
        );
        assert_eq!(
            ShardKey::parse_text(KeyType::BigInt, "-0").unwrap(),
            ShardKey::Int(0)
        );
    }

    #[test]
    fn bigint_errors() {
        for bad in [
            "abc", "", " ", "1.5", "1e3", "--1", "+", "-", "1 2", "0x10", "1_000", "４２",
        ] {
            let err = ShardKey::parse_text(KeyType::BigInt, bad).unwrap_err();
            assert!(
                matches!(err, KeyError::InvalidBigInt { .. }),
                "{bad:?}: {err}"
            );
        }
        for big in [
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
        ] {
            let err = ShardKey::parse_text(KeyType::BigInt, big).unwrap_err();
            assert!(
                matches!(err, KeyError::BigIntOutOfRange { .. }),
                "{big}: {err}"
            );
            assert!(err.to_string().contains(big), "{err}");
        }
        for len in [0, 1, 3, 5, 7, 9, 16] {
            let err = ShardKey::parse_binary(KeyType::BigInt, &vec![0u8; len]).unwrap_err();
            assert_eq!(err, KeyError::BinaryIntLength { len });
        }
    }

    #[test]
    fn text_literal_and_binary_agree() {
        for s in ["", "US", "café", "日本", "a b\tc", "😀"] {
            let from_text = ShardKey::parse_text(KeyType::Text, s).unwrap();
            let from_bin = ShardKey::parse_binary(KeyType::Text, s.as_bytes()).unwrap();
            assert_eq!(from_text, from_bin);
            assert_eq!(from_text, ShardKey::Text(s.to_owned()));
            assert_eq!(from_text.to_string(), s);
        }
        // Text keys are not trimmed: ' US' is a different value.
        assert_ne!(
            ShardKey::parse_text(KeyType::Text, " US").unwrap(),
            ShardKey::parse_text(KeyType::Text, "US").unwrap()
        );
    }

    #[test]
    fn text_invalid_utf8() {
        let err = ShardKey::parse_binary(KeyType::Text, b"ab\xff").unwrap_err();
        assert_eq!(err, KeyError::InvalidUtf8 { valid_up_to: 2 });
        assert!(ShardKey::parse_binary(KeyType::Text, b"\xc3").is_err());
    }

    #[test]
    fn uuid_forms_postgres_accepts() {
        let expected = ShardKey::Uuid(UUID_BYTES);
        for form in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
            "a0eebc99-9C0B-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert_eq!(
                ShardKey::parse_text(KeyType::Uuid, form).unwrap(),
                expected,
                "{form}"
            );
        }
        assert_eq!(
            ShardKey::parse_binary(KeyType::Uuid, &UUID_BYTES).unwrap(),
            expected
        );
        assert_eq!(expected.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }

    #[test]
    fn uuid_errors() {
        for bad in [
            "",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "{}",
            "é0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        ] {
            let err = ShardKey::parse_text(KeyType::Uuid, bad).unwrap_err();
            assert!(matches!(err, KeyError::InvalidUuid { .. }), "{bad:?}");
        }
        for len in [0, 15, 17, 36] {
            let err = ShardKey::parse_binary(KeyType::Uuid, &vec![1u8; len]).unwrap_err();
            assert_eq!(err, KeyError::BinaryUuidLength { len });
        }
    }

    #[test]
    fn canonical_bytes() {
        assert_eq!(
            ShardKey::Int(1).canonical_bytes().as_ref(),
            &[0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            ShardKey::Int(-2).canonical_bytes().as_ref(),
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]
        );
        assert_eq!(
            ShardKey::Text("é".into()).canonical_bytes().as_ref(),
            "é".as_bytes()
        );
        assert_eq!(
            ShardKey::Uuid(UUID_BYTES).canonical_bytes().as_ref(),
            &UUID_BYTES
        );
        for key in [
            ShardKey::Int(i64::MIN),
            ShardKey::Text("x".into()),
            ShardKey::Uuid(UUID_BYTES),
        ] {
            let copied = key.with_canonical_bytes(<[u8]>::to_vec);
            assert_eq!(copied, key.canonical_bytes().into_owned());
        }
    }

    #[test]
    fn display_and_literals() {
        assert_eq!(ShardKey::Int(-42).to_string(), "-42");
        assert_eq!(ShardKey::Text("it's".into()).sql_literal(), "'it''s'");
        assert_eq!(ShardKey::Int(7).sql_literal(), "7");
        assert_eq!(
            ShardKey::Uuid(UUID_BYTES).sql_literal(),
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"
        );
        let long = "x".repeat(1000);
        let err = ShardKey::parse_text(KeyType::BigInt, &long).unwrap_err();
        assert!(err.to_string().len() < 250, "{err}");
    }

    /// SplitMix64: a tiny deterministic generator for the no-panic loops.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEF-{}+ \t.xg\xc3\xa9\xff\x00";
        let mut state = 7u64;
        for round in 0..50_000 {
            let len = (next(&mut state) % 48) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next(&mut state);
                    if round % 2 == 0 {
                        ALPHABET[(r % ALPHABET.len() as u64) as usize]
                    } else {
                        r as u8
                    }
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            for t in [KeyType::BigInt, KeyType::Text, KeyType::Uuid] {
                let _ = ShardKey::parse_binary(t, &bytes);
                if let Ok(key) = ShardKey::parse_text(t, &text) {
                    // Whatever parses must display and re-parse to itself.
                    let again = ShardKey::parse_text(t, &key.to_string()).unwrap();
                    assert_eq!(again, key);
                }
            }
            let _ = text.parse::<KeyType>();
        }
    }
}
