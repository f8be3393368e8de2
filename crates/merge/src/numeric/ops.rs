//! More of PostgreSQL's `numeric` operators (numeric.c): subtraction,
//! multiplication, modulo, negation, rounding, integer and float conversions
//! and typmod coercion, for expressions the proxy evaluates over combined
//! aggregates.

use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use num_traits::{ToPrimitive, Zero};

use super::{pow10, rescale, Numeric, Repr};
use crate::error::MergeError;

/// How [`Numeric::round_to`] drops digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Half away from zero (`round`).
    HalfAway,
    /// Toward zero (`trunc`).
    Trunc,
    /// Toward +Infinity (`ceil`).
    Ceil,
    /// Toward -Infinity (`floor`).
    Floor,
}

/// `digits / 10^from` rounded to `to` decimal places (negative: tens,
/// hundreds...), returned as digits at scale `max(to, 0)`.
fn round_digits(digits: &BigInt, from: u16, to: i32, mode: Rounding) -> (BigInt, u16) {
    let from_i = i32::from(from);
    if to >= from_i {
        return (rescale(digits, from, to as u16), to as u16);
    }
    let drop = (from_i - to) as u32;
    let div = pow10(drop);
    let (q, r) = digits.div_rem(&div); // truncated toward zero
    let q = if r.is_zero() {
        q
    } else {
        let up = match mode {
            Rounding::Trunc => false,
            Rounding::HalfAway => r.magnitude() * 2u32 >= *div.magnitude(),
            Rounding::Ceil => digits.sign() == Sign::Plus,
            Rounding::Floor => digits.sign() == Sign::Minus,
        };
        match (up, digits.sign()) {
            (false, _) => q,
            (true, Sign::Minus) if mode != Rounding::Ceil => q - 1,
            (true, _) => q + 1,
        }
    };
    if to >= 0 {
        (q, to as u16)
    } else {
        (q * pow10(to.unsigned_abs()), 0)
    }
}

fn finite(digits: BigInt, dscale: u16) -> Numeric {
    Numeric {
        repr: Repr::Finite { digits, dscale },
    }
}

impl Numeric {
    /// Postgres `numeric_uminus`.
    pub fn neg(&self) -> Numeric {
        match &self.repr {
            Repr::NaN => Numeric::nan(),
            Repr::PosInf => Numeric::infinity(true),
            Repr::NegInf => Numeric::infinity(false),
            Repr::Finite { digits, dscale } => finite(-digits, *dscale),
        }
    }

    /// Postgres `numeric_abs`.
    pub fn abs(&self) -> Numeric {
        match &self.repr {
            Repr::NegInf => Numeric::infinity(false),
            Repr::Finite { digits, dscale } if digits.sign() == Sign::Minus => {
                finite(-digits, *dscale)
            }
            _ => self.clone(),
        }
    }

    /// Postgres `numeric_sub`: dscale = max of both.
    pub fn sub(&self, other: &Numeric) -> Numeric {
        self.add(&other.neg())
    }

    /// Postgres `numeric_mul`: exact, dscale = the sum of both ("value
    /// overflows numeric format" beyond the largest display scale); NaN for
    /// NaN or Infinity × 0, otherwise the sign rule on infinities.
    pub fn mul(&self, other: &Numeric) -> Result<Numeric, MergeError> {
        let sign_of = |r: &Repr| match r {
            Repr::PosInf => Sign::Plus,
            Repr::NegInf => Sign::Minus,
            Repr::Finite { digits, .. } => digits.sign(),
            Repr::NaN => Sign::NoSign,
        };
        if let (Some((a, sa)), Some((b, sb))) = (self.finite(), other.finite()) {
            return Numeric::from_parts(a * b, sa.saturating_add(sb))
                .ok_or_else(|| MergeError::Overflow("value overflows numeric format".to_owned()));
        }
        Ok(match (sign_of(&self.repr), sign_of(&other.repr)) {
            (Sign::NoSign, _) | (_, Sign::NoSign) => Numeric::nan(),
            (x, y) => Numeric::infinity(x != y),
        })
    }

    /// Postgres `numeric_mod`: the remainder of the division truncated
    /// toward zero, dscale = max of both; `x % Infinity = x`.
    pub fn rem(&self, other: &Numeric) -> Result<Numeric, MergeError> {
        if let (Some((a, sa)), Some((b, sb))) = (self.finite(), other.finite()) {
            if b.is_zero() {
                return Err(MergeError::DivisionByZero);
            }
            let s = sa.max(sb);
            return Ok(finite(rescale(a, sa, s) % rescale(b, sb, s), s));
        }
        match (&self.repr, &other.repr) {
            (Repr::NaN, _) | (_, Repr::NaN) => Ok(Numeric::nan()),
            (Repr::PosInf | Repr::NegInf, Repr::Finite { digits, .. }) if digits.is_zero() => {
                Err(MergeError::DivisionByZero)
            }
            (Repr::PosInf | Repr::NegInf, _) => Ok(Numeric::nan()),
            // A finite value modulo an infinity.
            _ => Ok(self.clone()),
        }
    }

    /// `round(x, scale)`, `trunc(x, scale)`, `ceil(x)` / `floor(x)` (scale
    /// 0): the result's dscale is `max(scale, 0)`; NaN and infinities stay.
    pub fn round_to(&self, scale: i32, mode: Rounding) -> Numeric {
        match &self.repr {
            Repr::Finite { digits, dscale } => {
                let scale = scale.clamp(-2000, 2000);
                let (d, s) = round_digits(digits, *dscale, scale, mode);
                finite(d, s)
            }
            _ => self.clone(),
        }
    }

    /// The value rounded half away from zero to an integer, as the casts to
    /// int2/int4/int8 do; `what` names the target type in the errors
    /// ("smallint", "integer", "bigint"), whose range is `min..=max`.
    pub fn to_int(&self, what: &str, min: i64, max: i64) -> Result<i64, MergeError> {
        let out_of_range = || MergeError::Overflow(format!("{what} out of range"));
        match &self.repr {
            Repr::NaN => Err(MergeError::sql(
                "0A000",
                format!("cannot convert NaN to {what}"),
            )),
            Repr::PosInf | Repr::NegInf => Err(MergeError::sql(
                "0A000",
                format!("cannot convert infinity to {what}"),
            )),
            Repr::Finite { digits, dscale } => {
                let (d, _) = round_digits(digits, *dscale, 0, Rounding::HalfAway);
                d.to_i64()
                    .filter(|v| (min..=max).contains(v))
                    .ok_or_else(out_of_range)
            }
        }
    }

    /// The `float8` → `numeric` cast: the value printed with 15 significant
    /// digits (`%.15g`, 6 for a float4 widened: `digits`), then read back.
    pub fn from_float(v: f64, digits: usize) -> Numeric {
        if v.is_nan() {
            return Numeric::nan();
        }
        if v.is_infinite() {
            return Numeric::infinity(v < 0.0);
        }
        let s = format!("{:.*e}", digits.saturating_sub(1), v);
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        Numeric::parse_text(&format!("{mantissa}e{exp}")).unwrap_or_else(Numeric::nan)
    }

    /// Coerces to `numeric(precision, scale)` (Postgres `apply_typmod`):
    /// rounded half away from zero to `scale`, and "numeric field
    /// overflow" when the integer part needs more than `precision - scale`
    /// digits or the value is infinite.
    pub fn with_typmod(&self, precision: i32, scale: i32) -> Result<Numeric, MergeError> {
        let overflow = || MergeError::Overflow("numeric field overflow".to_owned());
        match &self.repr {
            Repr::NaN => Ok(self.clone()),
            Repr::PosInf | Repr::NegInf => Err(overflow()),
            Repr::Finite { .. } => {
                let rounded = self.round_to(scale, Rounding::HalfAway);
                let Repr::Finite { digits, dscale } = &rounded.repr else {
                    return Ok(rounded);
                };
                // |value| < 10^(precision - scale)  ⇔  |digits| < 10^(precision - scale + dscale)
                let limit = precision - scale + i32::from(*dscale);
                if !digits.is_zero()
                    && (limit < 0 || digits.magnitude() >= pow10(limit as u32).magnitude())
                {
                    return Err(overflow());
                }
                Ok(rounded)
            }
        }
    }

    /// Postgres `numeric_sign`-like test: -1, 0 or 1 (NaN: 0).
    pub fn signum(&self) -> i32 {
        match &self.repr {
            Repr::NaN => 0,
            Repr::PosInf => 1,
            Repr::NegInf => -1,
            Repr::Finite { digits, .. } => match digits.sign() {
                Sign::Minus => -1,
                Sign::NoSign => 0,
                Sign::Plus => 1,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Numeric {
        Numeric::parse_text(s).unwrap()
    }

    #[test]
    fn arithmetic_keeps_postgres_scales() {
        assert_eq!(n("1.50").mul(&n("2.5")).unwrap().to_text(), "3.750");
        assert_eq!(n("1.5").sub(&n("2.25")).to_text(), "-0.75");
        assert_eq!(n("7.5").rem(&n("2")).unwrap().to_text(), "1.5");
        assert_eq!(n("-7").rem(&n("3")).unwrap().to_text(), "-1");
        assert!(n("1").rem(&n("0")).is_err());
        assert_eq!(n("Infinity").mul(&n("-2")).unwrap().to_text(), "-Infinity");
        assert_eq!(n("Infinity").mul(&n("0")).unwrap().to_text(), "NaN");
    }

    #[test]
    fn rounding_modes() {
        assert_eq!(n("2.5").round_to(0, Rounding::HalfAway).to_text(), "3");
        assert_eq!(n("-2.5").round_to(0, Rounding::HalfAway).to_text(), "-3");
        assert_eq!(
            n("1.2345").round_to(2, Rounding::HalfAway).to_text(),
            "1.23"
        );
        assert_eq!(n("1.2").round_to(4, Rounding::HalfAway).to_text(), "1.2000");
        assert_eq!(n("1250").round_to(-2, Rounding::HalfAway).to_text(), "1300");
        assert_eq!(n("-1.7").round_to(0, Rounding::Trunc).to_text(), "-1");
        assert_eq!(n("-1.2").round_to(0, Rounding::Ceil).to_text(), "-1");
        assert_eq!(n("-1.2").round_to(0, Rounding::Floor).to_text(), "-2");
        assert_eq!(n("1.2").round_to(0, Rounding::Ceil).to_text(), "2");
    }

    #[test]
    fn conversions() {
        assert_eq!(
            n("2.5")
                .to_int("integer", i32::MIN.into(), i32::MAX.into())
                .unwrap(),
            3
        );
        assert!(n("2147483647.5")
            .to_int("integer", i32::MIN.into(), i32::MAX.into())
            .is_err());
        assert_eq!(Numeric::from_float(0.1, 15).to_text(), "0.1");
        assert_eq!(
            Numeric::from_float(1.0 / 3.0, 15).to_text(),
            "0.333333333333333"
        );
        assert_eq!(
            Numeric::from_float(1e20, 15).to_text(),
            "100000000000000000000"
        );
        assert_eq!(Numeric::from_float(1.5e-5, 15).to_text(), "0.000015");
        assert_eq!(n("123.456").with_typmod(5, 2).unwrap().to_text(), "123.46");
        assert!(n("1234.5").with_typmod(5, 2).is_err());
        assert!(n("999.995").with_typmod(5, 2).is_err());
    }
}
