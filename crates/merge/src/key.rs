//! Sort / group keys decoded from binary-format values, compared like PostgreSQL.

use std::cmp::Ordering;

use bytes::Bytes;
use num_bigint::BigInt;

use crate::error::MergeError;
use crate::numeric::Numeric;
use crate::oid;

/// A value decoded from binary format for ordering, grouping and HAVING.
///
/// `Int` holds int2/int4/int8/oid and also date (days), time and timestamp[tz]
/// (microseconds), whose infinities are the integer extremes. `Bytes` holds text-like
/// values compared bytewise (`C` collation); bpchar has its trailing blanks removed.
#[derive(Debug, Clone)]
pub enum Key {
    /// SQL NULL.
    Null,
    /// `bool`.
    Bool(bool),
    /// Integers and integer-coded date/time types.
    Int(i64),
    /// `float4` (widened exactly) and `float8`.
    Float(f64),
    /// `numeric`.
    Numeric(Numeric),
    /// Text-like values, compared bytewise.
    Bytes(Bytes),
}

/// True when [`decode_key`] supports the type.
pub fn key_supported(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::BOOL
            | oid::BYTEA
            | oid::CHAR
            | oid::NAME
            | oid::INT8
            | oid::INT2
            | oid::INT4
            | oid::TEXT
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::BPCHAR
            | oid::VARCHAR
            | oid::DATE
            | oid::TIME
            | oid::TIMESTAMP
            | oid::TIMESTAMPTZ
            | oid::NUMERIC
            | oid::UUID
    )
}

fn fixed<const N: usize>(type_oid: u32, v: &[u8]) -> Result<[u8; N], MergeError> {
    v.try_into().map_err(|_| {
        MergeError::malformed(
            type_oid,
            format!("expected {N} bytes in binary format, got {}", v.len()),
        )
    })
}

/// Decodes a binary-format value (`None` = SQL NULL) of the given type into a [`Key`].
/// Unsupported types → [`MergeError::Unsupported`]; wrong lengths or invalid encodings →
/// [`MergeError::Malformed`].
pub fn decode_key(type_oid: u32, value: Option<&[u8]>) -> Result<Key, MergeError> {
    let Some(v) = value else {
        if key_supported(type_oid) {
            return Ok(Key::Null);
        }
        return Err(MergeError::unsupported(type_oid, "ORDER BY / GROUP BY"));
    };
    Ok(match type_oid {
        oid::BOOL => Key::Bool(fixed::<1>(type_oid, v)?[0] != 0),
        oid::INT2 => Key::Int(i16::from_be_bytes(fixed(type_oid, v)?).into()),
        oid::INT4 | oid::DATE => Key::Int(i32::from_be_bytes(fixed(type_oid, v)?).into()),
        oid::OID => Key::Int(u32::from_be_bytes(fixed(type_oid, v)?).into()),
        oid::INT8 | oid::TIME | oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            Key::Int(i64::from_be_bytes(fixed(type_oid, v)?))
        }
        oid::FLOAT4 => Key::Float(f32::from_be_bytes(fixed(type_oid, v)?).into()),
        oid::FLOAT8 => Key::Float(f64::from_be_bytes(fixed(type_oid, v)?)),
        oid::NUMERIC => Key::Numeric(Numeric::from_binary(v)?),
        oid::UUID => Key::Bytes(Bytes::copy_from_slice(&fixed::<16>(type_oid, v)?)),
        oid::BPCHAR => {
            let len = v.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
            Key::Bytes(Bytes::copy_from_slice(&v[..len]))
        }
        oid::TEXT | oid::VARCHAR | oid::NAME | oid::CHAR | oid::BYTEA => {
            Key::Bytes(Bytes::copy_from_slice(v))
        }
        _ => return Err(MergeError::unsupported(type_oid, "ORDER BY / GROUP BY")),
    })
}

/// Postgres float order: -0 == 0, NaN == NaN and NaN above everything else.
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

impl Key {
    fn rank(&self) -> u8 {
        match self {
            Key::Bool(_) => 0,
            Key::Int(_) | Key::Float(_) | Key::Numeric(_) => 1,
            Key::Bytes(_) => 2,
            Key::Null => 3,
        }
    }

    /// Postgres ordering of two keys of the same column type. Int, Numeric and Float
    /// compare by value (Int vs Numeric exactly; with a Float both sides as float8, as
    /// Postgres casts), so this also compares a column with a literal. Floats: -0 == 0,
    /// NaN == NaN and NaN sorts above +Infinity; Bytes compare bytewise. NULL is treated
    /// as larger than every value (use [`Key::cmp_sort`] for ORDER BY); keys of unrelated
    /// kinds get an arbitrary but consistent order.
    pub fn cmp_value(&self, other: &Key) -> Ordering {
        match (self, other) {
            (Key::Null, Key::Null) => Ordering::Equal,
            (Key::Bool(a), Key::Bool(b)) => a.cmp(b),
            (Key::Int(a), Key::Int(b)) => a.cmp(b),
            (Key::Float(a), Key::Float(b)) => float_cmp(*a, *b),
            (Key::Numeric(a), Key::Numeric(b)) => a.cmp_value(b),
            (Key::Int(a), Key::Numeric(b)) => Numeric::from_i64(*a).cmp_value(b),
            (Key::Numeric(a), Key::Int(b)) => a.cmp_value(&Numeric::from_i64(*b)),
            (Key::Int(a), Key::Float(b)) => float_cmp(*a as f64, *b),
            (Key::Float(a), Key::Int(b)) => float_cmp(*a, *b as f64),
            (Key::Float(a), Key::Numeric(b)) => float_cmp(*a, b.to_f64()),
            (Key::Numeric(a), Key::Float(b)) => float_cmp(a.to_f64(), *b),
            (Key::Bytes(a), Key::Bytes(b)) => a.as_ref().cmp(b.as_ref()),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// Ordering for ORDER BY with `desc` and the resolved `nulls_first` flag (Postgres's
    /// default is NULLS LAST for ASC and NULLS FIRST for DESC; the caller resolves it).
    /// NULLs are placed by `nulls_first` alone; `desc` reverses only non-null values.
    pub fn cmp_sort(&self, other: &Key, desc: bool, nulls_first: bool) -> Ordering {
        match (self.is_null(), other.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => {
                if nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (false, true) => {
                if nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (false, false) => {
                let ord = self.cmp_value(other);
                if desc {
                    ord.reverse()
                } else {
                    ord
                }
            }
        }
    }

    /// Equality for GROUP BY / DISTINCT: NULL equals NULL; values are equal when
    /// [`Key::cmp_value`] says Equal (so 1.0 = 1.00, -0 = 0, NaN = NaN).
    pub fn group_eq(&self, other: &Key) -> bool {
        match (self.is_null(), other.is_null()) {
            (true, true) => true,
            (false, false) => self.cmp_value(other) == Ordering::Equal,
            _ => false,
        }
    }

    /// Feeds a hash consistent with [`Key::group_eq`] for keys of one column (same kind):
    /// -0 and 0 hash alike, every NaN hashes alike, 1.0 and 1.00 hash alike. Use it to
    /// build hash tables for GROUP BY / DISTINCT.
    pub fn hash_group<H: std::hash::Hasher>(&self, state: &mut H) {
        use std::hash::Hash;
        match self {
            Key::Null => 0u8.hash(state),
            Key::Bool(b) => (1u8, b).hash(state),
            Key::Int(i) => (2u8, i).hash(state),
            Key::Float(f) => {
                let bits = if f.is_nan() {
                    f64::NAN.to_bits()
                } else if *f == 0.0 {
                    0
                } else {
                    f.to_bits()
                };
                (3u8, bits).hash(state)
            }
            Key::Numeric(n) => {
                4u8.hash(state);
                n.hash_value(state)
            }
            Key::Bytes(b) => (5u8, b.as_ref()).hash(state),
        }
    }

    /// True for [`Key::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Key::Null)
    }

    /// Parses a SQL literal for HAVING comparisons: an integer → Int (Numeric if it
    /// overflows i64), a decimal such as `1.5` or `1e3` → Numeric, a quoted `'text'` →
    /// Bytes of its content (`''` unescaped), `true` / `false` → Bool, `NULL` → Null.
    /// Anything else → `None`. Compare a bpchar column with a literal after trimming its
    /// trailing blanks yourself.
    pub fn from_literal_number(text: &str) -> Option<Key> {
        let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if t.len() >= 2 && t.starts_with('\'') && t.ends_with('\'') {
            let inner = &t[1..t.len() - 1];
            let mut out = Vec::with_capacity(inner.len());
            let mut chars = inner.bytes().peekable();
            while let Some(c) = chars.next() {
                if c == b'\'' && chars.next() != Some(b'\'') {
                    return None;
                }
                out.push(c);
            }
            return Some(Key::Bytes(Bytes::from(out)));
        }
        match t.to_ascii_lowercase().as_str() {
            "true" => return Some(Key::Bool(true)),
            "false" => return Some(Key::Bool(false)),
            "null" => return Some(Key::Null),
            _ => {}
        }
        let body = t.strip_prefix(['+', '-']).unwrap_or(t);
        if !body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return None;
        }
        if body.bytes().all(|c| c.is_ascii_digit()) {
            if let Ok(v) = t.parse::<i64>() {
                return Some(Key::Int(v));
            }
            let digits = BigInt::parse_bytes(t.as_bytes(), 10)?;
            return Numeric::from_parts(digits, 0).map(Key::Numeric);
        }
        Numeric::parse_text(t).map(Key::Numeric)
    }
}
