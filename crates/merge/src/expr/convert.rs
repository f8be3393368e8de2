//! Value types the evaluator knows, and conversions between them: the
//! implicit ones Postgres inserts (int → numeric → float8, unknown literal
//! → the type it is used as) and explicit casts.

use bytes::Bytes;

use crate::error::MergeError;
use crate::float::{float4_text, float8_text};
use crate::key::Key;
use crate::numeric::{Numeric, Rounding};
use crate::oid;

/// The evaluator's view of a Postgres type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    Bool,
    /// int2 / int4 / int8.
    Int(IntWidth),
    Numeric,
    Float4,
    Float8,
    /// text / varchar.
    Text,
    /// bpchar / name / "char": compared as text (trailing blanks of bpchar
    /// dropped), converted to text, never produced.
    TextLike(u32),
    /// Anything else: compared with the same type, tested for NULL, passed
    /// through CASE / COALESCE, never computed with.
    Other(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntWidth {
    I2,
    I4,
    I8,
}

impl IntWidth {
    fn range(self) -> (i64, i64, &'static str) {
        match self {
            IntWidth::I2 => (i16::MIN.into(), i16::MAX.into(), "smallint"),
            IntWidth::I4 => (i32::MIN.into(), i32::MAX.into(), "integer"),
            IntWidth::I8 => (i64::MIN, i64::MAX, "bigint"),
        }
    }

    /// `v` when it fits, else Postgres's "integer out of range".
    pub(super) fn check(self, v: Option<i64>) -> Result<Key, MergeError> {
        let (min, max, name) = self.range();
        match v {
            Some(v) if (min..=max).contains(&v) => Ok(Key::Int(v)),
            _ => Err(MergeError::Overflow(format!("{name} out of range"))),
        }
    }
}

impl Ty {
    pub(super) fn of(type_oid: u32) -> Ty {
        match type_oid {
            oid::BOOL => Ty::Bool,
            oid::INT2 => Ty::Int(IntWidth::I2),
            oid::INT4 => Ty::Int(IntWidth::I4),
            oid::INT8 => Ty::Int(IntWidth::I8),
            oid::NUMERIC => Ty::Numeric,
            oid::FLOAT4 => Ty::Float4,
            oid::FLOAT8 => Ty::Float8,
            oid::TEXT | oid::VARCHAR => Ty::Text,
            oid::BPCHAR | oid::NAME | oid::CHAR => Ty::TextLike(type_oid),
            other => Ty::Other(other),
        }
    }

    pub(super) fn oid(self) -> u32 {
        match self {
            Ty::Bool => oid::BOOL,
            Ty::Int(IntWidth::I2) => oid::INT2,
            Ty::Int(IntWidth::I4) => oid::INT4,
            Ty::Int(IntWidth::I8) => oid::INT8,
            Ty::Numeric => oid::NUMERIC,
            Ty::Float4 => oid::FLOAT4,
            Ty::Float8 => oid::FLOAT8,
            Ty::Text => oid::TEXT,
            Ty::TextLike(o) | Ty::Other(o) => o,
        }
    }

    /// int, numeric or float.
    pub(super) fn is_number(self) -> bool {
        matches!(self, Ty::Int(_) | Ty::Numeric | Ty::Float4 | Ty::Float8)
    }

    pub(super) fn is_text(self) -> bool {
        matches!(self, Ty::Text | Ty::TextLike(_))
    }

    /// Whether Postgres converts `self` to `to` without a cast.
    pub(super) fn implicitly_to(self, to: Ty) -> bool {
        match (self, to) {
            (a, b) if a == b => true,
            (Ty::Int(a), Ty::Int(b)) => a as u8 <= b as u8,
            (Ty::Int(_), Ty::Numeric | Ty::Float4 | Ty::Float8) => true,
            (Ty::Numeric, Ty::Float4 | Ty::Float8) => true,
            (Ty::Float4, Ty::Float8) => true,
            (Ty::TextLike(_), Ty::Text) => true,
            _ => false,
        }
    }
}

fn unsupported(from: Ty, to: Ty) -> MergeError {
    MergeError::unsupported(
        to.oid(),
        format!("an expression converting type oid {} to it", from.oid()),
    )
}

fn invalid(type_name: &str, text: &str) -> MergeError {
    MergeError::sql(
        "22P02",
        format!("invalid input syntax for type {type_name}: \"{text}\""),
    )
}

/// Whether a conversion is one [`convert`] implements (checked when
/// binding, so evaluation does not fail on the type pair).
pub(super) fn supported(from: Ty, to: Ty, explicit: bool) -> bool {
    if from.implicitly_to(to) {
        return true;
    }
    if !explicit {
        return false;
    }
    matches!(
        (from, to),
        (
            Ty::Int(_) | Ty::Numeric | Ty::Float4 | Ty::Float8,
            Ty::Int(_)
        ) | (Ty::Float4 | Ty::Float8, Ty::Numeric)
            | (Ty::Float8, Ty::Float4)
            | (Ty::Bool, Ty::Int(IntWidth::I4))
            | (Ty::Int(IntWidth::I4), Ty::Bool)
            | (
                Ty::Bool | Ty::Int(_) | Ty::Numeric | Ty::Float4 | Ty::Float8,
                Ty::Text
            )
            | (
                Ty::Text | Ty::TextLike(_),
                Ty::Bool | Ty::Int(_) | Ty::Numeric | Ty::Float4 | Ty::Float8
            )
    )
}

/// Converts `v` of type `from` to `to` (a cast when `explicit`, else an
/// implicit coercion; [`supported`] says which pairs exist).
pub(super) fn convert(v: Key, from: Ty, to: Ty, explicit: bool) -> Result<Key, MergeError> {
    if v.is_null() || from == to {
        return Ok(v);
    }
    match (from, to) {
        (Ty::Int(_), Ty::Int(w)) => w.check(as_int(&v)),
        (Ty::Int(_), Ty::Numeric) => Ok(Key::Numeric(Numeric::from_i64(int(&v)?))),
        (Ty::Int(_), Ty::Float8) => Ok(Key::Float(int(&v)? as f64)),
        (Ty::Int(_), Ty::Float4) => Ok(Key::Float(f64::from(int(&v)? as f32))),
        (Ty::Numeric, Ty::Float8) => Ok(Key::Float(numeric(&v)?.to_f64())),
        (Ty::Numeric, Ty::Float4) => {
            let n = numeric(&v)?;
            let f: f32 = n.to_text().parse().unwrap_or(f32::NAN);
            float4_range(f64::from(f), n.signum() != 0)
        }
        (Ty::Float4, Ty::Float8) => Ok(v),
        (Ty::TextLike(_), Ty::Text) => Ok(v),
        (Ty::Numeric, Ty::Int(w)) if explicit => {
            let (min, max, name) = w.range();
            Ok(Key::Int(numeric(&v)?.to_int(name, min, max)?))
        }
        (Ty::Float4 | Ty::Float8, Ty::Int(w)) if explicit => {
            let f = float(&v)?.round_ties_even();
            let (min, max, _) = w.range();
            if f.is_nan()
                || f < min as f64
                || f >= -(min as f64)
                || (w != IntWidth::I8 && f > max as f64)
            {
                return w.check(None);
            }
            w.check(Some(f as i64))
        }
        (Ty::Float8, Ty::Numeric) if explicit => {
            Ok(Key::Numeric(Numeric::from_float(float(&v)?, 15)))
        }
        (Ty::Float4, Ty::Numeric) if explicit => {
            Ok(Key::Numeric(Numeric::from_float(float(&v)?, 6)))
        }
        (Ty::Float8, Ty::Float4) if explicit => {
            let f = float(&v)?;
            float4_range(f, f != 0.0 && f.is_finite())
        }
        (Ty::Bool, Ty::Int(IntWidth::I4)) if explicit => {
            Ok(Key::Int(i64::from(matches!(v, Key::Bool(true)))))
        }
        (Ty::Int(IntWidth::I4), Ty::Bool) if explicit => Ok(Key::Bool(int(&v)? != 0)),
        (_, Ty::Text) if explicit => {
            let text = match (&v, from) {
                (Key::Bool(b), Ty::Bool) => if *b { "true" } else { "false" }.to_owned(),
                _ => output_text(&v, from)?,
            };
            Ok(Key::Bytes(Bytes::from(text)))
        }
        (Ty::Text | Ty::TextLike(_), _) if explicit => match &v {
            Key::Bytes(b) => parse(&String::from_utf8_lossy(b), to),
            _ => Err(unsupported(from, to)),
        },
        _ => Err(unsupported(from, to)),
    }
}

/// A float8 narrowed to float4 with Postgres's range errors.
fn float4_range(f: f64, nonzero: bool) -> Result<Key, MergeError> {
    let n = f as f32;
    if n.is_infinite() && f.is_finite() {
        return Err(MergeError::Overflow("value out of range: overflow".into()));
    }
    if n == 0.0 && nonzero {
        return Err(MergeError::Overflow("value out of range: underflow".into()));
    }
    Ok(Key::Float(f64::from(n)))
}

/// The type's output function: what a row in text format carries, and
/// what `||` appends.
pub(super) fn output_text(v: &Key, ty: Ty) -> Result<String, MergeError> {
    Ok(match (v, ty) {
        (Key::Bool(b), _) => if *b { "t" } else { "f" }.to_owned(),
        (Key::Int(i), Ty::Int(_)) => i.to_string(),
        (Key::Numeric(n), _) => n.to_text(),
        (Key::Float(f), Ty::Float4) => float4_text(*f as f32),
        (Key::Float(f), _) => float8_text(*f),
        (Key::Bytes(b), Ty::Text | Ty::TextLike(_)) => String::from_utf8_lossy(b).into_owned(),
        _ => {
            return Err(MergeError::unsupported(
                ty.oid(),
                "text output of a value computed at the proxy",
            ))
        }
    })
}

/// A string read as type `to` (the type's input function; `unknown`
/// literals and casts from text).
pub(super) fn parse(text: &str, to: Ty) -> Result<Key, MergeError> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    match to {
        Ty::Text | Ty::TextLike(_) => Ok(Key::Bytes(Bytes::copy_from_slice(text.as_bytes()))),
        Ty::Int(w) => {
            let (_, _, name) = w.range();
            let body = t.strip_prefix(['+', '-']).unwrap_or(t);
            if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit()) {
                return Err(invalid(name, text));
            }
            w.check(t.parse::<i64>().ok()).map_err(|_| {
                MergeError::Overflow(format!("value \"{text}\" is out of range for type {name}"))
            })
        }
        Ty::Numeric => Numeric::parse_text(t)
            .map(Key::Numeric)
            .ok_or_else(|| invalid("numeric", text)),
        Ty::Float8 | Ty::Float4 => {
            let name = if to == Ty::Float8 {
                "double precision"
            } else {
                "real"
            };
            let lower = t.to_ascii_lowercase();
            let f = match lower.trim_start_matches(['+', '-']) {
                "infinity" | "inf" | "nan" => lower.replace("infinity", "inf").parse::<f64>().ok(),
                s if s.starts_with(|c: char| c.is_ascii_digit() || c == '.') => {
                    t.parse::<f64>().ok()
                }
                _ => None,
            }
            .ok_or_else(|| invalid(name, text))?;
            if to == Ty::Float4 {
                return float4_range(f, f != 0.0 && f.is_finite());
            }
            if f.is_infinite() && !lower.contains("inf") {
                return Err(MergeError::Overflow(format!(
                    "\"{text}\" is out of range for type double precision"
                )));
            }
            Ok(Key::Float(f))
        }
        Ty::Bool => {
            let lower = t.to_ascii_lowercase();
            let word =
                |full: &str, min: usize| lower.len() >= min && full.starts_with(lower.as_str());
            if word("true", 1) || word("yes", 1) || lower == "on" || lower == "1" {
                Ok(Key::Bool(true))
            } else if word("false", 1) || word("no", 1) || word("off", 2) || lower == "0" {
                Ok(Key::Bool(false))
            } else {
                Err(invalid("boolean", text))
            }
        }
        Ty::Other(oid::DATE) => parse_date(t).map(Key::Int).ok_or_else(|| {
            MergeError::unsupported(
                oid::DATE,
                format!("the date literal '{text}' (write it as YYYY-MM-DD)"),
            )
        }),
        Ty::Other(oid::TIMESTAMP) => parse_timestamp(t).map(Key::Int).ok_or_else(|| {
            MergeError::unsupported(
                oid::TIMESTAMP,
                format!("the timestamp literal '{text}' (write it as YYYY-MM-DD HH:MM:SS)"),
            )
        }),
        other => Err(MergeError::unsupported(
            other.oid(),
            "a quoted literal compared with a value of this type",
        )),
    }
}

/// Days from 2000-01-01 (Postgres's date epoch) of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - 10_957
}

/// `YYYY-MM-DD` → days from 2000-01-01; `None` for anything else.
fn parse_date(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| {
        s.parse::<i64>()
            .ok()
            .filter(|_| s.bytes().all(|c| c.is_ascii_digit()))
    };
    let (y, m, d) = (num(&t[0..4])?, num(&t[5..7])?, num(&t[8..10])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// `YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]` → microseconds from 2000-01-01.
fn parse_timestamp(t: &str) -> Option<i64> {
    let (date, time) = match t.split_once([' ', 'T']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let days = parse_date(date)?;
    let mut micros = 0i64;
    if let Some(time) = time {
        let mut parts = time.split(':');
        let h: i64 = parts.next()?.parse().ok()?;
        let m: i64 = parts.next()?.parse().ok()?;
        let s = parts.next().unwrap_or("0");
        if parts.next().is_some() || !(0..24).contains(&h) || !(0..60).contains(&m) {
            return None;
        }
        let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
        let sec: i64 = sec.parse().ok().filter(|v| (0..60).contains(v))?;
        if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let frac: i64 = format!("{frac:0<6}").parse().ok()?;
        micros = ((h * 60 + m) * 60 + sec) * 1_000_000 + frac;
    }
    Some(days * 86_400_000_000 + micros)
}

pub(super) fn as_int(v: &Key) -> Option<i64> {
    match v {
        Key::Int(i) => Some(*i),
        _ => None,
    }
}

pub(super) fn int(v: &Key) -> Result<i64, MergeError> {
    as_int(v).ok_or_else(|| MergeError::malformed(oid::INT8, "expected an integer"))
}

pub(super) fn numeric(v: &Key) -> Result<Numeric, MergeError> {
    match v {
        Key::Numeric(n) => Ok(n.clone()),
        Key::Int(i) => Ok(Numeric::from_i64(*i)),
        _ => Err(MergeError::malformed(oid::NUMERIC, "expected a numeric")),
    }
}

pub(super) fn float(v: &Key) -> Result<f64, MergeError> {
    match v {
        Key::Float(f) => Ok(*f),
        _ => Err(MergeError::malformed(oid::FLOAT8, "expected a float")),
    }
}

/// `round`/`trunc`/`ceil`/`floor` of a numeric to `scale`.
pub(super) fn round_numeric(v: &Key, scale: i32, mode: Rounding) -> Result<Key, MergeError> {
    Ok(Key::Numeric(numeric(v)?.round_to(scale, mode)))
}
