//! Exact decimal arithmetic with PostgreSQL `numeric` semantics.

use std::cmp::Ordering;

use bytes::{BufMut, BytesMut};
use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use num_traits::Zero;

use crate::error::MergeError;
use crate::oid;

mod ops;
pub use ops::Rounding;

const NBASE: i32 = 10000;
const DEC_DIGITS: i32 = 4;
const NUMERIC_MIN_SIG_DIGITS: i32 = 16;
const NUMERIC_MAX_DISPLAY_SCALE: i32 = 1000;
const NUMERIC_DSCALE_MAX: u16 = 0x3FFF;
/// `NUMERIC_MAX_PRECISION`: the largest exponent `numeric_in` accepts.
const MAX_EXPONENT: i64 = 1000;

const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;
/// The dscale `numeric_send` reports for ±Infinity (an artifact of Postgres's header layout).
const INF_SEND_DSCALE: u16 = 32;

/// An exact decimal, like Postgres `numeric`: finite values are `digits / 10^dscale`
/// (a [`BigInt`]), plus NaN, +Infinity and -Infinity.
#[derive(Debug, Clone)]
pub struct Numeric {
    repr: Repr,
}

#[derive(Debug, Clone)]
enum Repr {
    NaN,
    PosInf,
    NegInf,
    Finite { digits: BigInt, dscale: u16 },
}

fn pow10(n: u32) -> BigInt {
    BigInt::from(10u32).pow(n)
}

/// `digits` rescaled from `from` to `to` (`to >= from`).
fn rescale(digits: &BigInt, from: u16, to: u16) -> BigInt {
    if to > from {
        digits * pow10(u32::from(to - from))
    } else {
        digits.clone()
    }
}

impl Numeric {
    /// NaN.
    pub fn nan() -> Numeric {
        Numeric { repr: Repr::NaN }
    }

    /// +Infinity (`negative == false`) or -Infinity.
    pub fn infinity(negative: bool) -> Numeric {
        Numeric {
            repr: if negative { Repr::NegInf } else { Repr::PosInf },
        }
    }

    /// A finite value `digits / 10^dscale`; `None` when `dscale` exceeds Postgres's
    /// maximum display scale (16383).
    pub fn from_parts(digits: BigInt, dscale: u16) -> Option<Numeric> {
        (dscale <= NUMERIC_DSCALE_MAX).then_some(Numeric {
            repr: Repr::Finite { digits, dscale },
        })
    }

    /// An integer value with dscale 0.
    pub fn from_i64(v: i64) -> Numeric {
        Numeric {
            repr: Repr::Finite {
                digits: BigInt::from(v),
                dscale: 0,
            },
        }
    }

    /// True for NaN.
    pub fn is_nan(&self) -> bool {
        matches!(self.repr, Repr::NaN)
    }

    /// True for NaN, +Infinity and -Infinity.
    pub fn is_special(&self) -> bool {
        !matches!(self.repr, Repr::Finite { .. })
    }

    /// The display scale (digits after the decimal point); 0 for special values.
    pub fn dscale(&self) -> u16 {
        match &self.repr {
            Repr::Finite { dscale, .. } => *dscale,
            _ => 0,
        }
    }

    /// Decodes `numeric_send` output: ndigits i16, weight i16, sign u16 (0x0000 +,
    /// 0x4000 -, 0xC000 NaN, 0xD000 +Inf, 0xF000 -Inf), dscale u16, then ndigits base-10000
    /// digits (i16). Like `numeric_recv`, digits hidden by dscale are truncated away.
    pub fn from_binary(b: &[u8]) -> Result<Numeric, MergeError> {
        let bad = |reason: &str| MergeError::malformed(oid::NUMERIC, reason);
        if b.len() < 8 {
            return Err(bad("numeric value shorter than its header"));
        }
        let ndigits = i16::from_be_bytes([b[0], b[1]]);
        let weight = i16::from_be_bytes([b[2], b[3]]);
        let sign = u16::from_be_bytes([b[4], b[5]]);
        let dscale = u16::from_be_bytes([b[6], b[7]]);
        if ndigits < 0 {
            return Err(bad("invalid length in external numeric value"));
        }
        let ndigits = ndigits as usize;
        if b.len() != 8 + 2 * ndigits {
            return Err(bad("numeric length does not match its digit count"));
        }
        let negative = match sign {
            SIGN_POS => false,
            SIGN_NEG => true,
            SIGN_NAN => return Ok(Numeric::nan()),
            SIGN_PINF => return Ok(Numeric::infinity(false)),
            SIGN_NINF => return Ok(Numeric::infinity(true)),
            _ => return Err(bad("invalid sign in external numeric value")),
        };
        if dscale > NUMERIC_DSCALE_MAX {
            return Err(bad("invalid scale in external numeric value"));
        }
        let mut text = String::with_capacity(4 * ndigits + 1);
        for chunk in b[8..].chunks_exact(2) {
            let d = i16::from_be_bytes([chunk[0], chunk[1]]);
            if !(0..NBASE as i16).contains(&d) {
                return Err(bad("invalid digit in external numeric value"));
            }
            text.push_str(&format!("{d:04}"));
        }
        if text.bytes().all(|c| c == b'0') {
            return Ok(Numeric {
                repr: Repr::Finite {
                    digits: BigInt::zero(),
                    dscale,
                },
            });
        }
        let mut digits = BigInt::parse_bytes(text.as_bytes(), 10)
            .ok_or_else(|| bad("invalid digits in external numeric value"))?;
        // value = digits * 10000^(weight - ndigits + 1); scaled by 10^dscale.
        let exp10 = DEC_DIGITS * (i32::from(weight) - ndigits as i32 + 1) + i32::from(dscale);
        if exp10 >= 0 {
            digits *= pow10(exp10 as u32);
        } else {
            digits /= pow10(exp10.unsigned_abs());
        }
        if negative {
            digits = -digits;
        }
        Ok(Numeric {
            repr: Repr::Finite { digits, dscale },
        })
    }

    /// The base-10000 weight and digits of a finite value, leading and trailing zero digits
    /// stripped (as Postgres stores them); zero is `(0, [])`.
    fn base10000(digits: &BigInt, dscale: u16) -> (i32, Vec<i16>) {
        if digits.is_zero() {
            return (0, Vec::new());
        }
        let dscale = i32::from(dscale);
        let frac_groups = (dscale + DEC_DIGITS - 1) / DEC_DIGITS;
        let pad_right = (frac_groups * DEC_DIGITS - dscale) as usize;
        let s = digits.magnitude().to_str_radix(10);
        let pad_left = (4 - (s.len() + pad_right) % 4) % 4;
        let mut padded = String::with_capacity(pad_left + s.len() + pad_right);
        padded.extend(std::iter::repeat_n('0', pad_left));
        padded.push_str(&s);
        padded.extend(std::iter::repeat_n('0', pad_right));
        let mut groups: Vec<i16> = padded
            .as_bytes()
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
            .collect();
        let mut weight = groups.len() as i32 - 1 - frac_groups;
        let lead = groups.iter().take_while(|d| **d == 0).count();
        groups.drain(..lead);
        weight -= lead as i32;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        (weight, groups)
    }

    /// Appends exactly what Postgres `numeric_send` sends for this value (leading and
    /// trailing zero base-10000 digits stripped; zero is ndigits 0, weight 0, positive).
    pub fn to_binary(&self, out: &mut BytesMut) {
        let (weight, sign, dscale, groups) = match &self.repr {
            Repr::NaN => (0, SIGN_NAN, 0, Vec::new()),
            // numeric_send reads the short-header dscale bits of the special value's
            // header word, which are 0x1000 >> 7 = 32 for both infinities.
            Repr::PosInf => (0, SIGN_PINF, INF_SEND_DSCALE, Vec::new()),
            Repr::NegInf => (0, SIGN_NINF, INF_SEND_DSCALE, Vec::new()),
            Repr::Finite { digits, dscale } => {
                let (weight, groups) = Numeric::base10000(digits, *dscale);
                let sign = if digits.sign() == Sign::Minus {
                    SIGN_NEG
                } else {
                    SIGN_POS
                };
                (weight, sign, *dscale, groups)
            }
        };
        out.reserve(8 + 2 * groups.len());
        out.put_i16(groups.len() as i16);
        out.put_i16(weight as i16);
        out.put_u16(sign);
        out.put_u16(dscale);
        for d in groups {
            out.put_i16(d);
        }
    }

    /// Exactly what Postgres `numeric_out` prints: dscale digits after the point, or
    /// "NaN", "Infinity", "-Infinity".
    pub fn to_text(&self) -> String {
        match &self.repr {
            Repr::NaN => "NaN".to_string(),
            Repr::PosInf => "Infinity".to_string(),
            Repr::NegInf => "-Infinity".to_string(),
            Repr::Finite { digits, dscale } => {
                let dscale = usize::from(*dscale);
                let s = digits.magnitude().to_str_radix(10);
                let mut out = String::with_capacity(s.len() + dscale + 3);
                if digits.sign() == Sign::Minus {
                    out.push('-');
                }
                if dscale == 0 {
                    out.push_str(&s);
                } else {
                    if s.len() <= dscale {
                        out.push('0');
                        out.push('.');
                        out.extend(std::iter::repeat_n('0', dscale - s.len()));
                        out.push_str(&s);
                    } else {
                        let (int, frac) = s.split_at(s.len() - dscale);
                        out.push_str(int);
                        out.push('.');
                        out.push_str(frac);
                    }
                }
                out
            }
        }
    }

    /// Parses a decimal literal the way `numeric_in` does: optional sign, digits with an
    /// optional point, optional exponent (`1.5e3`); dscale = digits after the point (minus
    /// the exponent, at least 0). Also accepts NaN and [+-]Infinity / inf
    /// (case-insensitive) and surrounding whitespace. `None` when not a valid numeric.
    pub fn parse_text(s: &str) -> Option<Numeric> {
        let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "nan" => return Some(Numeric::nan()),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some(Numeric::infinity(false)),
            "-infinity" | "-inf" => return Some(Numeric::infinity(true)),
            _ => {}
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut negative = false;
        if let Some(&c) = bytes.first() {
            if c == b'+' || c == b'-' {
                negative = c == b'-';
                i = 1;
            }
        }
        let mut mantissa = String::new();
        let mut frac: i64 = 0;
        let mut seen_point = false;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_digit() {
                mantissa.push(c as char);
                if seen_point {
                    frac += 1;
                }
            } else if c == b'.' && !seen_point {
                seen_point = true;
            } else {
                break;
            }
            i += 1;
        }
        if mantissa.is_empty() {
            return None;
        }
        let mut exponent: i64 = 0;
        if i < bytes.len() {
            if bytes[i] != b'e' && bytes[i] != b'E' {
                return None;
            }
            let rest = &s[i + 1..];
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) || digits.len() > 6
            {
                return None;
            }
            exponent = rest.parse().ok()?;
            if !(-MAX_EXPONENT..=MAX_EXPONENT).contains(&exponent) {
                return None;
            }
        }
        let dscale = (frac - exponent).max(0);
        if dscale > i64::from(NUMERIC_DSCALE_MAX) {
            return None;
        }
        let mut digits = BigInt::parse_bytes(mantissa.as_bytes(), 10)?;
        let shift = exponent - frac + dscale;
        if shift > 0 {
            digits *= pow10(shift as u32);
        }
        if negative {
            digits = -digits;
        }
        Numeric::from_parts(digits, dscale as u16)
    }

    /// Postgres `numeric_add`: dscale = max of both; NaN if either is NaN or for
    /// +Infinity + -Infinity; otherwise an infinity wins.
    pub fn add(&self, other: &Numeric) -> Numeric {
        match (&self.repr, &other.repr) {
            (Repr::NaN, _) | (_, Repr::NaN) => Numeric::nan(),
            (Repr::PosInf, Repr::NegInf) | (Repr::NegInf, Repr::PosInf) => Numeric::nan(),
            (Repr::PosInf, _) | (Repr::NegInf, _) => self.clone(),
            (_, Repr::PosInf) | (_, Repr::NegInf) => other.clone(),
            (
                Repr::Finite {
                    digits: a,
                    dscale: sa,
                },
                Repr::Finite {
                    digits: b,
                    dscale: sb,
                },
            ) => {
                let dscale = (*sa).max(*sb);
                Numeric {
                    repr: Repr::Finite {
                        digits: rescale(a, *sa, dscale) + rescale(b, *sb, dscale),
                        dscale,
                    },
                }
            }
        }
    }

    /// Postgres `numeric_div`: the result scale is chosen by `select_div_scale` (at least
    /// 16 significant digits estimated from the base-10000 weights and first digits, at
    /// least max(dscale1, dscale2), at most 1000) and the exact quotient is rounded half
    /// away from zero. Infinity and NaN follow Postgres (finite / ±Infinity = 0).
    /// Division by zero → [`MergeError::DivisionByZero`].
    pub fn div(&self, other: &Numeric) -> Result<Numeric, MergeError> {
        let (a, sa, b, sb) = match (&self.repr, &other.repr) {
            (Repr::NaN, _) | (_, Repr::NaN) => return Ok(Numeric::nan()),
            (Repr::PosInf | Repr::NegInf, Repr::PosInf | Repr::NegInf) => return Ok(Numeric::nan()),
            (Repr::PosInf | Repr::NegInf, Repr::Finite { digits, .. }) => {
                let negative = matches!(self.repr, Repr::NegInf);
                return match digits.sign() {
                    Sign::NoSign => Err(MergeError::DivisionByZero),
                    Sign::Plus => Ok(Numeric::infinity(negative)),
                    Sign::Minus => Ok(Numeric::infinity(!negative)),
                };
            }
            (Repr::Finite { .. }, _) if other.is_special() => return Ok(Numeric::from_i64(0)),
            (
                Repr::Finite {
                    digits: a,
                    dscale: sa,
                },
                Repr::Finite {
                    digits: b,
                    dscale: sb,
                },
            ) => (a, *sa, b, *sb),
            _ => return Ok(Numeric::nan()),
        };
        if b.is_zero() {
            return Err(MergeError::DivisionByZero);
        }
        let rscale = select_div_scale(a, sa, b, sb);
        // |a/b| = (|A| / 10^sa) / (|B| / 10^sb); result digits = round(|a/b| * 10^rscale).
        let num = a.magnitude() * pow10(u32::from(sb) + rscale as u32).magnitude();
        let den = b.magnitude() * pow10(u32::from(sa)).magnitude();
        let (mut q, r) = num.div_rem(&den);
        if r * 2u32 >= den {
            q += 1u32;
        }
        let mut digits = BigInt::from(q);
        if a.sign() != b.sign() {
            digits = -digits;
        }
        Ok(Numeric {
            repr: Repr::Finite {
                digits,
                dscale: rscale as u16,
            },
        })
    }

    /// The finite value's digits and dscale; `None` for NaN and the infinities.
    pub(crate) fn finite(&self) -> Option<(&BigInt, u16)> {
        match &self.repr {
            Repr::Finite { digits, dscale } => Some((digits, *dscale)),
            _ => None,
        }
    }

    /// The square root of a finite value >= 0 rounded half away from zero to `rscale`
    /// decimal digits, as Postgres `sqrt_var` computes it; `None` for a negative or
    /// special value.
    pub fn sqrt_rounded(&self, rscale: u16) -> Option<Numeric> {
        let (d, s) = self.finite()?;
        if d.sign() == Sign::Minus {
            return None;
        }
        // floor(sqrt(v) * 10^(rscale+1)) = floor(sqrt(d * 10^(2*rscale + 2 - s))).
        let shift = 2 * i64::from(rscale) + 2 - i64::from(s);
        let radicand = if shift >= 0 {
            d * pow10(u32::try_from(shift).ok()?)
        } else {
            d / pow10(u32::try_from(-shift).ok()?)
        };
        let root = num_integer::Roots::sqrt(&radicand);
        // One extra digit decides the rounding (an exact half needs sqrt(v) to have
        // exactly rscale+1 digits ending in 5, which the floor keeps).
        let (q, r) = root.div_rem(&BigInt::from(10u32));
        let digits = if r >= BigInt::from(5u32) { q + 1u32 } else { q };
        Numeric::from_parts(digits, rscale)
    }

    /// Postgres ordering: NaN above +Infinity above every finite value above -Infinity;
    /// NaN equals NaN; finite values compare by value, ignoring scale (1.0 == 1.00).
    pub fn cmp_value(&self, other: &Numeric) -> Ordering {
        fn rank(r: &Repr) -> u8 {
            match r {
                Repr::NegInf => 0,
                Repr::Finite { .. } => 1,
                Repr::PosInf => 2,
                Repr::NaN => 3,
            }
        }
        match (&self.repr, &other.repr) {
            (
                Repr::Finite {
                    digits: a,
                    dscale: sa,
                },
                Repr::Finite {
                    digits: b,
                    dscale: sb,
                },
            ) => {
                if sa == sb || a.sign() != b.sign() || a.is_zero() || b.is_zero() {
                    if sa == sb {
                        return a.cmp(b);
                    }
                    return a.sign().cmp(&b.sign());
                }
                let s = (*sa).max(*sb);
                rescale(a, *sa, s).cmp(&rescale(b, *sb, s))
            }
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }

    /// Feeds a hash of the value that is equal for values [`Numeric::cmp_value`] calls
    /// equal (scale-independent: 1.0 and 1.00 hash alike).
    pub fn hash_value<H: std::hash::Hasher>(&self, state: &mut H) {
        use std::hash::Hash;
        match &self.repr {
            Repr::NaN => 0u8.hash(state),
            Repr::PosInf => 1u8.hash(state),
            Repr::NegInf => 2u8.hash(state),
            Repr::Finite { digits, dscale } => {
                3u8.hash(state);
                let mut digits = digits.clone();
                let mut dscale = *dscale;
                let ten = BigInt::from(10u32);
                while dscale > 0 && !digits.is_zero() {
                    let (q, r) = digits.div_rem(&ten);
                    if !r.is_zero() {
                        break;
                    }
                    digits = q;
                    dscale -= 1;
                }
                if digits.is_zero() {
                    dscale = 0;
                }
                digits.hash(state);
                dscale.hash(state);
            }
        }
    }

    /// The nearest `f64` (like the `numeric` → `float8` cast; ±inf when out of range).
    pub fn to_f64(&self) -> f64 {
        match &self.repr {
            Repr::NaN => f64::NAN,
            Repr::PosInf => f64::INFINITY,
            Repr::NegInf => f64::NEG_INFINITY,
            Repr::Finite { .. } => self.to_text().parse().unwrap_or(f64::NAN),
        }
    }
}

/// Postgres `select_div_scale` (numeric.c).
fn select_div_scale(a: &BigInt, sa: u16, b: &BigInt, sb: u16) -> i32 {
    let (w1, d1) = weight_and_first_digit(a, sa);
    let (w2, d2) = weight_and_first_digit(b, sb);
    let mut qweight = w1 - w2;
    if d1 <= d2 {
        qweight -= 1;
    }
    let rscale = NUMERIC_MIN_SIG_DIGITS - qweight * DEC_DIGITS;
    rscale
        .max(i32::from(sa))
        .max(i32::from(sb))
        .clamp(0, NUMERIC_MAX_DISPLAY_SCALE)
}

fn weight_and_first_digit(digits: &BigInt, dscale: u16) -> (i32, i16) {
    let (weight, groups) = Numeric::base10000(digits, dscale);
    match groups.first() {
        Some(d) => (weight, *d),
        None => (0, 0),
    }
}
