//! `float4out` / `float8out` of PostgreSQL 15 with the default `extra_float_digits = 1`.
//!
//! PostgreSQL prints floats with its copy of Ryu (`src/common/d2s.c`, `f2s.c`), built with
//! `STRICTLY_SHORTEST 0`: both ends of the rounding interval are *excluded*, so a decimal
//! exactly halfway to the neighbouring float is never chosen and the output is sometimes
//! one digit longer than the shortest round-trip string (e.g. `-8.189299999999999e+20`
//! where Rust prints `-8.1893e20`). This module reproduces that algorithm step by step,
//! computing Ryu's intermediate values (which Ryu proves to be exact floors) with big
//! integers instead of lookup tables.

use num_bigint::BigUint;
use num_traits::ToPrimitive;

/// float8 text exactly as Postgres 15 prints it with the default `extra_float_digits = 1`:
/// Ryu's digits (see the module docs), in fixed notation when the decimal exponent is in
/// -4..15 and otherwise in scientific notation ("1e+15", "1.5e-05"); "NaN", "Infinity",
/// "-Infinity", "-0".
pub fn float8_text(v: f64) -> String {
    if let Some(s) = special(v.is_nan(), v.is_infinite(), v == 0.0, v.is_sign_negative()) {
        return s;
    }
    let bits = v.to_bits();
    let mantissa = bits & ((1u64 << 52) - 1);
    let exponent = ((bits >> 52) & 0x7FF) as i32;
    let (digits, exp10) =
        d2d_small_int(mantissa, exponent).unwrap_or_else(|| d2d(mantissa, exponent));
    to_chars(v.is_sign_negative(), digits, exp10, 15)
}

/// float4 text exactly as Postgres 15 `float4out` prints it with the default
/// `extra_float_digits = 1`: Ryu's digits, fixed notation when the decimal exponent is in
/// -4..6, else scientific ("1e+06"); "NaN", "Infinity", "-Infinity", "-0".
pub fn float4_text(v: f32) -> String {
    if let Some(s) = special(v.is_nan(), v.is_infinite(), v == 0.0, v.is_sign_negative()) {
        return s;
    }
    let bits = v.to_bits();
    let mantissa = bits & ((1u32 << 23) - 1);
    let exponent = ((bits >> 23) & 0xFF) as i32;
    let (digits, exp10) =
        f2d_small_int(mantissa, exponent).unwrap_or_else(|| f2d(mantissa, exponent));
    to_chars(v.is_sign_negative(), digits, exp10, 6)
}

fn special(nan: bool, inf: bool, zero: bool, negative: bool) -> Option<String> {
    let s = if nan {
        "NaN"
    } else if inf && negative {
        "-Infinity"
    } else if inf {
        "Infinity"
    } else if zero && negative {
        "-0"
    } else if zero {
        "0"
    } else {
        return None;
    };
    Some(s.to_string())
}

/// floor(log10(2^e)) for 0 <= e <= 1650.
fn log10_pow2(e: i32) -> i32 {
    ((e as u32 * 78913) >> 18) as i32
}

/// floor(log10(5^e)) for 0 <= e <= 2620.
fn log10_pow5(e: i32) -> i32 {
    ((e as u32 * 732923) >> 20) as i32
}

/// floor(m * 2^e2 / 10^e10), the value Ryu's mulShift computes.
fn scaled(m: u64, e2: i32, e10: i32) -> u64 {
    let mut num = BigUint::from(m);
    let mut den = BigUint::from(1u32);
    if e2 >= 0 {
        num <<= e2 as u32;
    } else {
        den <<= e2.unsigned_abs();
    }
    let ten = BigUint::from(10u32);
    if e10 >= 0 {
        den *= ten.pow(e10 as u32);
    } else {
        num *= ten.pow(e10.unsigned_abs());
    }
    (num / den).to_u64().unwrap_or(u64::MAX)
}

fn multiple_of_pow5(value: u64, p: i32) -> bool {
    let mut v = value;
    for _ in 0..p {
        if !v.is_multiple_of(5) {
            return false;
        }
        v /= 5;
    }
    true
}

fn multiple_of_pow2(value: u64, p: i32) -> bool {
    p <= 0 || (p < 64 && value & ((1u64 << p) - 1) == 0) || (p >= 64 && value == 0)
}

/// `d2d_small_int`: integers in [1, 2^53) are printed exactly.
fn d2d_small_int(mantissa: u64, exponent: i32) -> Option<(u64, i32)> {
    let e2 = exponent - 1023 - 52;
    if (-52..=0).contains(&e2) && mantissa & ((1u64 << -e2) - 1) == 0 {
        let m2 = (1u64 << 52) | mantissa;
        return Some((m2 >> -e2, 0));
    }
    None
}

/// `f2d_small_int`: integers in [1, 2^24) are printed exactly.
fn f2d_small_int(mantissa: u32, exponent: i32) -> Option<(u64, i32)> {
    let e2 = exponent - 127 - 23;
    if (-23..=0).contains(&e2) && mantissa & ((1u32 << -e2) - 1) == 0 {
        let m2 = (1u32 << 23) | mantissa;
        return Some((u64::from(m2 >> -e2), 0));
    }
    None
}

/// Ryu `d2d` with `acceptBounds = false`: (decimal mantissa, decimal exponent).
fn d2d(ieee_mantissa: u64, ieee_exponent: i32) -> (u64, i32) {
    let (e2, m2) = if ieee_exponent == 0 {
        (1 - 1023 - 52 - 2, ieee_mantissa)
    } else {
        (ieee_exponent - 1023 - 52 - 2, (1u64 << 52) | ieee_mantissa)
    };
    let mv = 4 * m2;
    let mm_shift = u64::from(ieee_mantissa != 0 || ieee_exponent <= 1);
    let mp = mv + 2;
    let mm = mv - 1 - mm_shift;
    let e10;
    let mut vr_tz = false;
    let (mut vr, mut vp, mut vm);
    if e2 >= 0 {
        let q = log10_pow2(e2) - i32::from(e2 > 3);
        e10 = q;
        vr = scaled(mv, e2, e10);
        vp = scaled(mp, e2, e10);
        vm = scaled(mm, e2, e10);
        if q <= 21 {
            if mv.is_multiple_of(5) {
                vr_tz = multiple_of_pow5(mv, q);
            } else {
                vp -= u64::from(multiple_of_pow5(mv + 2, q));
            }
        }
    } else {
        let q = log10_pow5(-e2) - i32::from(-e2 > 1);
        e10 = q + e2;
        vr = scaled(mv, e2, e10);
        vp = scaled(mp, e2, e10);
        vm = scaled(mm, e2, e10);
        if q <= 1 {
            vr_tz = true;
            vp = vp.wrapping_sub(1);
        } else if q < 63 {
            vr_tz = multiple_of_pow2(mv, q - 1);
        }
    }
    let mut removed = 0;
    let output;
    if vr_tz {
        let mut last = 0u64;
        while vp / 10 > vm / 10 {
            vr_tz &= last == 0;
            last = vr % 10;
            vr /= 10;
            vp /= 10;
            vm /= 10;
            removed += 1;
        }
        if vr_tz && last == 5 && vr.is_multiple_of(2) {
            last = 4;
        }
        output = vr + u64::from(vr == vm || last >= 5);
    } else {
        let mut round_up = false;
        if vp / 100 > vm / 100 {
            round_up = vr % 100 >= 50;
            vr /= 100;
            vp /= 100;
            vm /= 100;
            removed += 2;
        }
        while vp / 10 > vm / 10 {
            round_up = vr % 10 >= 5;
            vr /= 10;
            vp /= 10;
            vm /= 10;
            removed += 1;
        }
        output = vr + u64::from(vr == vm || round_up);
    }
    (output, e10 + removed)
}

/// Ryu `f2d` with `acceptBounds = false`.
fn f2d(ieee_mantissa: u32, ieee_exponent: i32) -> (u64, i32) {
    let (e2, m2) = if ieee_exponent == 0 {
        (1 - 127 - 23 - 2, u64::from(ieee_mantissa))
    } else {
        (
            ieee_exponent - 127 - 23 - 2,
            u64::from((1u32 << 23) | ieee_mantissa),
        )
    };
    let mv = 4 * m2;
    let mp = mv + 2;
    let mm_shift = u64::from(ieee_mantissa != 0 || ieee_exponent <= 1);
    let mm = mv - 1 - mm_shift;
    let e10;
    let mut vr_tz = false;
    let mut last = 0u64;
    let (mut vr, mut vp, mut vm);
    if e2 >= 0 {
        let q = log10_pow2(e2);
        e10 = q;
        vr = scaled(mv, e2, e10);
        vp = scaled(mp, e2, e10);
        vm = scaled(mm, e2, e10);
        if q != 0 && vp.wrapping_sub(1) / 10 <= vm / 10 {
            last = scaled(mv, e2, e10 - 1) % 10;
        }
        if q <= 9 {
            if mv.is_multiple_of(5) {
                vr_tz = multiple_of_pow5(mv, q);
            } else {
                vp -= u64::from(multiple_of_pow5(mp, q));
            }
        }
    } else {
        let q = log10_pow5(-e2);
        e10 = q + e2;
        vr = scaled(mv, e2, e10);
        vp = scaled(mp, e2, e10);
        vm = scaled(mm, e2, e10);
        if q != 0 && vp.wrapping_sub(1) / 10 <= vm / 10 {
            last = scaled(mv, e2, e10 - 1) % 10;
        }
        if q <= 1 {
            vr_tz = true;
            vp = vp.wrapping_sub(1);
        } else if q < 31 {
            vr_tz = multiple_of_pow2(mv, q - 1);
        }
    }
    let mut removed = 0;
    if vr_tz {
        while vp / 10 > vm / 10 {
            vr_tz &= last == 0;
            last = vr % 10;
            vr /= 10;
            vp /= 10;
            vm /= 10;
            removed += 1;
        }
        if vr_tz && last == 5 && vr.is_multiple_of(2) {
            last = 4;
        }
    } else {
        while vp / 10 > vm / 10 {
            last = vr % 10;
            vr /= 10;
            vp /= 10;
            vm /= 10;
            removed += 1;
        }
    }
    (vr + u64::from(vr == vm || last >= 5), e10 + removed)
}

/// Ryu's `to_chars` as modified by Postgres: fixed notation when the display exponent is
/// in `-4..fixed_below`, else `d.ddde+XX` (at least two exponent digits).
fn to_chars(negative: bool, mut output: u64, exponent: i32, fixed_below: i32) -> String {
    let digits = output.to_string();
    let olength = digits.len() as i32;
    let exp = exponent + olength - 1;
    let mut out = String::with_capacity(32);
    if negative {
        out.push('-');
    }
    if (-4..fixed_below).contains(&exp) {
        let nexp = exponent + olength;
        if nexp <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-nexp) as usize));
            out.push_str(&digits);
        } else if exponent < 0 {
            out.push_str(&digits[..nexp as usize]);
            out.push('.');
            out.push_str(&digits[nexp as usize..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', exponent as usize));
        }
        return out;
    }
    if exponent == 0 {
        // Small-integer fast path: move trailing decimal zeros into the exponent.
        while output.is_multiple_of(10) && output != 0 {
            output /= 10;
        }
    }
    let digits = output.to_string();
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    out.push_str(&format!("{:02}", exp.unsigned_abs()));
    out
}
