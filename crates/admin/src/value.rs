//! Column types and values of the admin tables, their conversions, and their
//! Postgres wire encodings (text and binary) in both directions.

use crate::error::AdminError;
use crate::float::{format_float8, parse_float8};
pub use crate::time::{format_timestamptz, parse_timestamptz};

/// Microseconds from the Unix epoch to the Postgres epoch (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The Postgres type of an admin column or result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColType {
    /// `int4` / `integer`.
    Int4,
    /// `int8` / `bigint`.
    Int8,
    /// `float8` / `double precision`.
    Float8,
    /// `bool` / `boolean`.
    Bool,
    /// `text`.
    Text,
    /// `timestamptz` / `timestamp with time zone`.
    Timestamptz,
}

impl ColType {
    /// The Postgres type OID.
    pub fn oid(self) -> u32 {
        match self {
            ColType::Int4 => 23,
            ColType::Int8 => 20,
            ColType::Float8 => 701,
            ColType::Bool => 16,
            ColType::Text => 25,
            ColType::Timestamptz => 1184,
        }
    }

    /// The `typlen` for RowDescription (-1: variable length).
    pub fn type_size(self) -> i16 {
        match self {
            ColType::Int4 => 4,
            ColType::Int8 | ColType::Float8 | ColType::Timestamptz => 8,
            ColType::Bool => 1,
            ColType::Text => -1,
        }
    }

    /// The declared type in the SQLite `CREATE TABLE` (read back as decltype).
    pub fn sqlite_decl(self) -> &'static str {
        match self {
            ColType::Int4 => "INT4",
            ColType::Int8 => "INT8",
            ColType::Float8 => "FLOAT8",
            ColType::Bool => "BOOL",
            ColType::Text => "TEXT",
            ColType::Timestamptz => "TIMESTAMPTZ",
        }
    }

    /// Every column type.
    pub const ALL: [ColType; 6] = [
        ColType::Int4,
        ColType::Int8,
        ColType::Float8,
        ColType::Bool,
        ColType::Text,
        ColType::Timestamptz,
    ];

    /// The type whose [`sqlite_decl`](Self::sqlite_decl) is `decl`
    /// (ASCII case-insensitive).
    pub fn from_decl(decl: &str) -> Option<ColType> {
        ColType::ALL
            .into_iter()
            .find(|t| t.sqlite_decl().eq_ignore_ascii_case(decl))
    }

    /// The name Postgres uses in error messages (`bigint`, `boolean`, ...).
    pub fn pg_name(self) -> &'static str {
        match self {
            ColType::Int4 => "integer",
            ColType::Int8 => "bigint",
            ColType::Float8 => "double precision",
            ColType::Bool => "boolean",
            ColType::Text => "text",
            ColType::Timestamptz => "timestamp with time zone",
        }
    }
}

/// One cell of an admin table or query result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// UTF-8 text.
    Text(String),
    /// A timestamptz: microseconds since the Unix epoch, UTC.
    Time(i64),
}

impl Value {
    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Whether the variant is already the one `ty` uses (NULL fits all).
    fn fits(&self, ty: ColType) -> bool {
        matches!(
            (self, ty),
            (Value::Null, _)
                | (Value::Int(_), ColType::Int8)
                | (Value::Float(_), ColType::Float8)
                | (Value::Bool(_), ColType::Bool)
                | (Value::Text(_), ColType::Text)
                | (Value::Time(_), ColType::Timestamptz)
        ) || matches!((self, ty), (Value::Int(i), ColType::Int4) if i32::try_from(*i).is_ok())
    }

    /// The value as text, the way a `::text` cast prints it.
    fn as_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format_float8(*f),
            Value::Bool(b) => if *b { "true" } else { "false" }.to_string(),
            Value::Text(s) => s.clone(),
            Value::Time(t) => format_timestamptz(*t),
        }
    }

    /// This value converted to the variant `ty` uses (`Int` for both integer
    /// types, `Float`, `Bool`, `Text`, `Time`); NULL stays NULL. Text is parsed
    /// as the type's input syntax, numbers print as text, integers 0/1 are
    /// booleans; anything else is `22P02`, an integer out of range `22003`.
    pub fn into_type(self, ty: ColType) -> Result<Value, AdminError> {
        if self.fits(ty) {
            return Ok(self);
        }
        let invalid = |v: &Value| AdminError::invalid_input(ty.pg_name(), &v.as_text());
        Ok(match ty {
            ColType::Int4 | ColType::Int8 => {
                let i = match &self {
                    Value::Int(i) => *i,
                    Value::Float(f) => float_to_int(*f, ty)?,
                    Value::Bool(b) => i64::from(*b),
                    Value::Text(s) => parse_int(s, ty)?,
                    _ => return Err(invalid(&self)),
                };
                if ty == ColType::Int4 && i32::try_from(i).is_err() {
                    return Err(AdminError::value("22003", "integer out of range"));
                }
                Value::Int(i)
            }
            ColType::Float8 => match &self {
                Value::Int(i) => Value::Float(*i as f64),
                Value::Bool(b) => Value::Float(f64::from(u8::from(*b))),
                Value::Text(s) => Value::Float(parse_float8(s).ok_or_else(|| invalid(&self))?),
                _ => return Err(invalid(&self)),
            },
            ColType::Bool => match &self {
                Value::Int(i) => Value::Bool(*i != 0),
                Value::Float(f) if !f.is_nan() => Value::Bool(*f != 0.0),
                Value::Text(s) => Value::Bool(parse_bool(s).ok_or_else(|| invalid(&self))?),
                _ => return Err(invalid(&self)),
            },
            ColType::Text => Value::Text(self.as_text()),
            ColType::Timestamptz => match &self {
                Value::Text(s) => Value::Time(parse_timestamptz(s).ok_or_else(|| invalid(&self))?),
                _ => return Err(invalid(&self)),
            },
        })
    }

    /// Appends the Postgres text output of this value as type `ty` to `out`
    /// (converting as [`into_type`](Self::into_type) does). NULL appends
    /// nothing: the caller sends length -1.
    pub fn encode_text(&self, ty: ColType, out: &mut Vec<u8>) -> Result<(), AdminError> {
        if !self.fits(ty) {
            return self.clone().into_type(ty)?.encode_text(ty, out);
        }
        match self {
            Value::Null => {}
            Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Value::Float(f) => out.extend_from_slice(format_float8(*f).as_bytes()),
            Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
            Value::Text(s) => out.extend_from_slice(s.as_bytes()),
            Value::Time(t) => out.extend_from_slice(format_timestamptz(*t).as_bytes()),
        }
        Ok(())
    }

    /// Appends the Postgres binary form of this value as type `ty` to `out`:
    /// big-endian integers and IEEE doubles, one byte for bool, UTF-8 text,
    /// and for timestamptz int64 microseconds since 2000-01-01 UTC. NULL
    /// appends nothing: the caller sends length -1.
    pub fn encode_binary(&self, ty: ColType, out: &mut Vec<u8>) -> Result<(), AdminError> {
        if !self.fits(ty) {
            return self.clone().into_type(ty)?.encode_binary(ty, out);
        }
        match self {
            Value::Null => {}
            Value::Int(i) if ty == ColType::Int4 => {
                let i = i32::try_from(*i)
                    .map_err(|_| AdminError::value("22003", "integer out of range"))?;
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Int(i) => out.extend_from_slice(&i.to_be_bytes()),
            Value::Float(f) => out.extend_from_slice(&f.to_be_bytes()),
            Value::Bool(b) => out.push(u8::from(*b)),
            Value::Text(s) => out.extend_from_slice(s.as_bytes()),
            Value::Time(t) => {
                let pg = match *t {
                    i64::MAX | i64::MIN => *t,
                    t => t.checked_sub(PG_EPOCH_MICROS).ok_or_else(timestamp_range)?,
                };
                out.extend_from_slice(&pg.to_be_bytes());
            }
        }
        Ok(())
    }
}

fn timestamp_range() -> AdminError {
    AdminError::value("22008", "timestamp out of range")
}

fn int_range(ty: ColType) -> AdminError {
    AdminError::value("22003", format!("{} out of range", ty.pg_name()))
}

/// A double rounded half-to-even to an integer, as Postgres casts it.
fn float_to_int(f: f64, ty: ColType) -> Result<i64, AdminError> {
    let r = f.round_ties_even();
    // 2^63 is exact as a double; i64 covers [-2^63, 2^63).
    if r.is_finite() && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r) {
        Ok(r as i64)
    } else {
        Err(int_range(ty))
    }
}

/// Integer input syntax: optional sign and spaces around decimal digits.
fn parse_int(s: &str, ty: ColType) -> Result<i64, AdminError> {
    let t = s.trim();
    match t.parse::<i64>() {
        Ok(i) if ty == ColType::Int4 && i32::try_from(i).is_err() => Err(AdminError::value(
            "22003",
            format!("value \"{s}\" is out of range for type integer"),
        )),
        Ok(i) => Ok(i),
        Err(_) => {
            let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
            if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
                Err(AdminError::value(
                    "22003",
                    format!("value \"{s}\" is out of range for type {}", ty.pg_name()),
                ))
            } else {
                Err(AdminError::invalid_input(ty.pg_name(), s))
            }
        }
    }
}

/// Boolean input syntax: `t`/`true`/`yes`/`on`/`1` and `f`/`false`/`no`/
/// `off`/`0`, any case, prefixes of the words allowed, spaces trimmed.
fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim().to_ascii_lowercase();
    let prefix_of = |word: &str| !t.is_empty() && word.starts_with(t.as_str());
    if prefix_of("true") || prefix_of("yes") || t == "on" || t == "1" {
        Some(true)
    } else if prefix_of("false") || prefix_of("no") || t == "off" || t == "0" {
        Some(false)
    } else {
        None
    }
}

/// A Bind parameter as a [`Value`]: `None` is NULL; text format is parsed as
/// the input syntax of `ty`, binary format read as its binary layout (see
/// [`Value::encode_binary`]). Bad input is `22P02` (`22P03` for a binary
/// value of the wrong length, `22021` for invalid UTF-8).
pub fn decode_param(
    bytes: Option<&[u8]>,
    format_binary: bool,
    ty: ColType,
) -> Result<Value, AdminError> {
    let Some(bytes) = bytes else {
        return Ok(Value::Null);
    };
    if format_binary && ty != ColType::Text {
        return decode_binary(bytes, ty);
    }
    let s = std::str::from_utf8(bytes)
        .map_err(|_| AdminError::value("22021", "invalid byte sequence for encoding \"UTF8\""))?;
    Value::Text(s.to_string()).into_type(ty)
}

fn decode_binary(b: &[u8], ty: ColType) -> Result<Value, AdminError> {
    let bad = || {
        AdminError::value(
            "22P03",
            format!("incorrect binary data format for type {}", ty.pg_name()),
        )
    };
    Ok(match ty {
        ColType::Int4 => Value::Int(i64::from(i32::from_be_bytes(
            b.try_into().map_err(|_| bad())?,
        ))),
        ColType::Int8 => Value::Int(i64::from_be_bytes(b.try_into().map_err(|_| bad())?)),
        ColType::Float8 => Value::Float(f64::from_be_bytes(b.try_into().map_err(|_| bad())?)),
        ColType::Bool => match b {
            [v] => Value::Bool(*v != 0),
            _ => return Err(bad()),
        },
        ColType::Text => decode_param(Some(b), false, ty)?,
        ColType::Timestamptz => {
            let pg = i64::from_be_bytes(b.try_into().map_err(|_| bad())?);
            Value::Time(match pg {
                i64::MAX | i64::MIN => pg,
                pg => pg
                    .checked_add(PG_EPOCH_MICROS)
                    .filter(|&t| t != i64::MAX)
                    .ok_or_else(timestamp_range)?,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ColType; 6] = ColType::ALL;

    fn text(v: &Value, ty: ColType) -> Result<String, AdminError> {
        let mut out = Vec::new();
        v.encode_text(ty, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn binary(v: &Value, ty: ColType) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode_binary(ty, &mut out).unwrap();
        out
    }

    #[test]
    fn type_metadata() {
        let oids: Vec<u32> = ALL.iter().map(|t| t.oid()).collect();
        assert_eq!(oids, [23, 20, 701, 16, 25, 1184]);
        let sizes: Vec<i16> = ALL.iter().map(|t| t.type_size()).collect();
        assert_eq!(sizes, [4, 8, 8, 1, -1, 8]);
        for t in ALL {
            assert_eq!(ColType::from_decl(t.sqlite_decl()), Some(t));
            assert_eq!(ColType::from_decl(&t.sqlite_decl().to_lowercase()), Some(t));
        }
        assert_eq!(ColType::from_decl("INTEGER"), None);
    }

    #[test]
    fn text_encoding() {
        let t = parse_timestamptz("2026-12-06 13:20:00.123456+00").unwrap();
        let cases = [
            (Value::Int(-42), ColType::Int4, "-42"),
            (Value::Int(i64::MAX), ColType::Int8, "9223372036854775807"),
            (Value::Float(2.5), ColType::Float8, "2.5"),
            (Value::Float(f64::NAN), ColType::Float8, "NaN"),
            (Value::Float(f64::INFINITY), ColType::Float8, "Infinity"),
            (
                Value::Float(f64::NEG_INFINITY),
                ColType::Float8,
                "-Infinity",
            ),
            (Value::Bool(true), ColType::Bool, "t"),
            (Value::Bool(false), ColType::Bool, "f"),
            (Value::Text("héllo".into()), ColType::Text, "héllo"),
            (
                Value::Time(t),
                ColType::Timestamptz,
                "2026-12-06 13:20:00.123456+00",
            ),
            (
                Value::Time(t - 123_456),
                ColType::Timestamptz,
                "2026-12-06 13:20:00+00",
            ),
            (Value::Null, ColType::Int8, ""),
            // Conversions.
            (Value::Int(42), ColType::Text, "42"),
            (Value::Text(" 42 ".into()), ColType::Int8, "42"),
            (Value::Int(1), ColType::Bool, "t"),
            (Value::Int(0), ColType::Bool, "f"),
            (Value::Text("yes".into()), ColType::Bool, "t"),
            (Value::Int(3), ColType::Float8, "3"),
            (Value::Float(2.5), ColType::Int8, "2"),
            (Value::Float(3.5), ColType::Int8, "4"),
            (Value::Bool(true), ColType::Text, "true"),
            (Value::Time(0), ColType::Text, "1970-01-01 00:00:00+00"),
            (
                Value::Text("2026-12-06T13:20:00.5Z".into()),
                ColType::Timestamptz,
                "2026-12-06 13:20:00.5+00",
            ),
        ];
        for (v, ty, want) in cases {
            assert_eq!(text(&v, ty).unwrap(), want, "{v:?} as {ty:?}");
        }
    }

    #[test]
    fn impossible_conversions_are_22p02() {
        for (v, ty) in [
            (Value::Text("x".into()), ColType::Int8),
            (Value::Text("maybe".into()), ColType::Bool),
            (Value::Text("soon".into()), ColType::Timestamptz),
            (Value::Text("1.5.5".into()), ColType::Float8),
            (Value::Time(0), ColType::Int8),
            (Value::Int(5), ColType::Timestamptz),
        ] {
            let err = text(&v, ty).unwrap_err();
            assert_eq!(err.sqlstate(), "22P02", "{v:?} as {ty:?}");
            let mut out = Vec::new();
            assert_eq!(
                v.encode_binary(ty, &mut out).unwrap_err().sqlstate(),
                "22P02"
            );
        }
        let err = text(&Value::Text("x".into()), ColType::Int8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input syntax for type bigint: \"x\""
        );
        let err = text(&Value::Int(1 << 40), ColType::Int4).unwrap_err();
        assert_eq!(err.sqlstate(), "22003");
        let err = text(&Value::Float(f64::NAN), ColType::Int8).unwrap_err();
        assert_eq!(err.sqlstate(), "22003");
    }

    #[test]
    fn binary_encoding() {
        assert_eq!(
            binary(&Value::Int(-2), ColType::Int4),
            [0xff, 0xff, 0xff, 0xfe]
        );
        assert_eq!(
            binary(&Value::Int(258), ColType::Int8),
            [0, 0, 0, 0, 0, 0, 1, 2]
        );
        assert_eq!(
            binary(&Value::Float(1.0), ColType::Float8),
            1.0f64.to_be_bytes()
        );
        assert_eq!(
            binary(&Value::Float(f64::INFINITY), ColType::Float8),
            f64::INFINITY.to_be_bytes()
        );
        assert_eq!(binary(&Value::Bool(true), ColType::Bool), [1]);
        assert_eq!(binary(&Value::Bool(false), ColType::Bool), [0]);
        assert_eq!(binary(&Value::Text("ab".into()), ColType::Text), b"ab");
        assert_eq!(
            binary(&Value::Time(PG_EPOCH_MICROS + 1), ColType::Timestamptz),
            [0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            binary(&Value::Time(0), ColType::Timestamptz),
            (-PG_EPOCH_MICROS).to_be_bytes()
        );
        assert_eq!(
            binary(&Value::Time(i64::MAX), ColType::Timestamptz),
            i64::MAX.to_be_bytes()
        );
        assert_eq!(
            binary(&Value::Text("7".into()), ColType::Int4),
            [0, 0, 0, 7]
        );
        assert_eq!(binary(&Value::Null, ColType::Int4), b"");
        let mut out = Vec::new();
        let err = Value::Time(i64::MIN + 1).encode_binary(ColType::Timestamptz, &mut out);
        assert_eq!(err.unwrap_err().sqlstate(), "22008");
    }

    #[test]
    fn binary_round_trips_through_decode_param() {
        let t = parse_timestamptz("2026-12-06 13:20:00.123456+00").unwrap();
        for (v, ty) in [
            (Value::Int(-7), ColType::Int4),
            (Value::Int(i64::MIN), ColType::Int8),
            (Value::Float(-0.25), ColType::Float8),
            (Value::Bool(true), ColType::Bool),
            (Value::Text("x y".into()), ColType::Text),
            (Value::Time(t), ColType::Timestamptz),
            (Value::Time(i64::MIN), ColType::Timestamptz),
        ] {
            let bytes = binary(&v, ty);
            assert_eq!(decode_param(Some(&bytes), true, ty).unwrap(), v, "{ty:?}");
            let txt = text(&v, ty).unwrap();
            assert_eq!(
                decode_param(Some(txt.as_bytes()), false, ty).unwrap(),
                v,
                "{ty:?}"
            );
        }
        let nan = decode_param(Some(&f64::NAN.to_be_bytes()), true, ColType::Float8).unwrap();
        assert!(matches!(nan, Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn decode_param_text() {
        let d = |s: &str, ty| decode_param(Some(s.as_bytes()), false, ty);
        assert_eq!(d("5", ColType::Int8).unwrap(), Value::Int(5));
        assert_eq!(d(" -5 ", ColType::Int4).unwrap(), Value::Int(-5));
        assert_eq!(d("1.5", ColType::Float8).unwrap(), Value::Float(1.5));
        assert_eq!(
            d("Infinity", ColType::Float8).unwrap(),
            Value::Float(f64::INFINITY)
        );
        for s in ["t", "TRUE", "1", "yes", "on", "y"] {
            assert_eq!(d(s, ColType::Bool).unwrap(), Value::Bool(true), "{s}");
        }
        for s in ["f", "false", "0", "no", "off", "N"] {
            assert_eq!(d(s, ColType::Bool).unwrap(), Value::Bool(false), "{s}");
        }
        assert_eq!(d("abc", ColType::Text).unwrap(), Value::Text("abc".into()));
        assert_eq!(
            d("1970-01-01 00:00:01+00", ColType::Timestamptz).unwrap(),
            Value::Time(1_000_000)
        );
        assert_eq!(
            decode_param(None, true, ColType::Int8).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn decode_param_errors() {
        let d = |s: &[u8], bin, ty| decode_param(Some(s), bin, ty).unwrap_err();
        let e = d(b"x", false, ColType::Int8);
        assert_eq!(e.sqlstate(), "22P02");
        assert_eq!(e.to_string(), "invalid input syntax for type bigint: \"x\"");
        assert_eq!(
            d(b"", false, ColType::Int4).to_string(),
            "invalid input syntax for type integer: \"\""
        );
        assert_eq!(d(b"3000000000", false, ColType::Int4).sqlstate(), "22003");
        assert_eq!(
            d(b"99999999999999999999", false, ColType::Int8).sqlstate(),
            "22003"
        );
        assert_eq!(
            d(b"o", false, ColType::Bool).to_string(),
            "invalid input syntax for type boolean: \"o\""
        );
        assert_eq!(d(b"1.2.3", false, ColType::Float8).sqlstate(), "22P02");
        assert_eq!(
            d(b"yesterday", false, ColType::Timestamptz).to_string(),
            "invalid input syntax for type timestamp with time zone: \"yesterday\""
        );
        assert_eq!(d(b"\xff", false, ColType::Text).sqlstate(), "22021");
        assert_eq!(d(b"\xff", true, ColType::Text).sqlstate(), "22021");
        assert_eq!(d(&[0, 1], true, ColType::Int4).sqlstate(), "22P03");
        assert_eq!(d(&[0; 4], true, ColType::Int8).sqlstate(), "22P03");
        assert_eq!(d(&[], true, ColType::Bool).sqlstate(), "22P03");
        assert_eq!(d(&[0; 7], true, ColType::Float8).sqlstate(), "22P03");
        assert_eq!(d(&[0; 9], true, ColType::Timestamptz).sqlstate(), "22P03");
        let late = (i64::MAX - 1).to_be_bytes();
        assert_eq!(d(&late, true, ColType::Timestamptz).sqlstate(), "22008");
    }
}
