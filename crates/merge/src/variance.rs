//! Combining variance and standard deviation partials from several shards.
//!
//! Each shard returns, per group, `[count(x), sum(x), sum(x::numeric * x::numeric),
//! avg(x), var_pop(x)]`. Over integers and numeric the proxy adds the exact sums and
//! computes the result as Postgres's `numeric_stddev_internal` does (byte-identical);
//! over float4/float8 it combines `(N, Sx, Sxx)` as `float8_combine` does (the last bits
//! may differ from one server's, as for float sums).

use num_bigint::BigInt;

use crate::error::MergeError;
use crate::key::Key;
use crate::numeric::Numeric;
use crate::oid;

/// Which variance-family aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// `var_samp(x)` (also `variance(x)`).
    VarSamp,
    /// `var_pop(x)`.
    VarPop,
    /// `stddev_samp(x)` (also `stddev(x)`).
    StddevSamp,
    /// `stddev_pop(x)`.
    StddevPop,
}

impl Statistic {
    /// The statistic a Postgres aggregate name computes.
    pub fn from_name(name: &str) -> Option<Statistic> {
        Some(match name {
            "variance" | "var_samp" => Statistic::VarSamp,
            "var_pop" => Statistic::VarPop,
            "stddev" | "stddev_samp" => Statistic::StddevSamp,
            "stddev_pop" => Statistic::StddevPop,
            _ => return None,
        })
    }

    /// The aggregate's canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Statistic::VarSamp => "var_samp",
            Statistic::VarPop => "var_pop",
            Statistic::StddevSamp => "stddev_samp",
            Statistic::StddevPop => "stddev_pop",
        }
    }

    fn sample(self) -> bool {
        matches!(self, Statistic::VarSamp | Statistic::StddevSamp)
    }

    fn stddev(self) -> bool {
        matches!(self, Statistic::StddevSamp | Statistic::StddevPop)
    }
}

/// The result type of a statistic from its partials' types: numeric over integers and
/// numeric (the `sum(x)` partial is int8 or numeric), float8 over float4/float8.
pub fn statistic_output_oid(partial_oids: &[u32]) -> u32 {
    match partial_oids.get(1) {
        Some(&(oid::FLOAT4 | oid::FLOAT8)) => oid::FLOAT8,
        _ => oid::NUMERIC,
    }
}

/// The combined partials of one statistic.
#[derive(Debug, Clone)]
pub(crate) enum StatState {
    /// Exact sums over int2/int4/int8/numeric.
    Numeric {
        sum_oid: u32,
        count: i64,
        sum: Numeric,
        sumsq: Numeric,
    },
    /// Youngs-Cramer state over float4/float8.
    Float {
        /// Whether `sum(x)` is a float8 (float4 sums are taken as `avg * N`).
        sum_is_float8: bool,
        n: f64,
        sx: f64,
        sxx: f64,
    },
}

/// A binary int8.
pub(crate) fn read_i64(v: &[u8]) -> Result<i64, MergeError> {
    v.try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| MergeError::malformed(oid::INT8, "expected 8 bytes"))
}

/// A binary float8.
pub(crate) fn read_f64(v: &[u8]) -> Result<f64, MergeError> {
    v.try_into()
        .map(f64::from_be_bytes)
        .map_err(|_| MergeError::malformed(oid::FLOAT8, "expected 8 bytes"))
}

fn missing(what: &str) -> MergeError {
    MergeError::malformed(
        oid::NUMERIC,
        format!("{what} partial is NULL for a non-zero count"),
    )
}

impl StatState {
    /// The state for partials of these types (see the module doc for their order).
    pub(crate) fn new(stat: Statistic, partial_oids: &[u32]) -> Result<StatState, MergeError> {
        let unsupported = || MergeError::unsupported(partial_oids[1], stat.name());
        Ok(match partial_oids {
            [oid::INT8, s @ (oid::INT8 | oid::NUMERIC), oid::NUMERIC, oid::NUMERIC, oid::NUMERIC] => {
                StatState::Numeric {
                    sum_oid: *s,
                    count: 0,
                    sum: Numeric::from_i64(0),
                    sumsq: Numeric::from_i64(0),
                }
            }
            [oid::INT8, s @ (oid::FLOAT4 | oid::FLOAT8), oid::NUMERIC, oid::FLOAT8, oid::FLOAT8] => {
                StatState::Float {
                    sum_is_float8: *s == oid::FLOAT8,
                    n: 0.0,
                    sx: 0.0,
                    sxx: 0.0,
                }
            }
            _ => return Err(unsupported()),
        })
    }

    /// Adds one shard row's partials (binary format; `None` = NULL).
    pub(crate) fn add(&mut self, partials: &[Option<&[u8]>]) -> Result<(), MergeError> {
        let n = match partials[0] {
            Some(v) => read_i64(v)?,
            None => 0,
        };
        if n < 0 {
            return Err(MergeError::malformed(oid::INT8, "negative count"));
        }
        if n == 0 {
            return Ok(());
        }
        match self {
            StatState::Numeric {
                sum_oid,
                count,
                sum,
                sumsq,
            } => {
                let s = partials[1].ok_or_else(|| missing("sum"))?;
                let s = if *sum_oid == oid::INT8 {
                    Numeric::from_i64(read_i64(s)?)
                } else {
                    Numeric::from_binary(s)?
                };
                let q =
                    Numeric::from_binary(partials[2].ok_or_else(|| missing("sum of squares"))?)?;
                *sum = sum.add(&s);
                *sumsq = sumsq.add(&q);
                *count = count
                    .checked_add(n)
                    .ok_or_else(|| MergeError::Overflow("bigint out of range".to_string()))?;
            }
            StatState::Float {
                sum_is_float8,
                n: n1,
                sx,
                sxx,
            } => {
                let n2 = n as f64;
                let sx2 = if *sum_is_float8 {
                    read_f64(partials[1].ok_or_else(|| missing("sum"))?)?
                } else {
                    read_f64(partials[3].ok_or_else(|| missing("avg"))?)? * n2
                };
                let sxx2 = read_f64(partials[4].ok_or_else(|| missing("var_pop"))?)? * n2;
                if *n1 == 0.0 {
                    (*n1, *sx, *sxx) = (n2, sx2, sxx2);
                } else {
                    // float8_combine (Youngs-Cramer).
                    let total = *n1 + n2;
                    let tmp = *sx / *n1 - sx2 / n2;
                    *sxx = *sxx + sxx2 + *n1 * n2 * tmp * tmp / total;
                    *sx += sx2;
                    *n1 = total;
                }
            }
        }
        Ok(())
    }

    /// The result: numeric or float8; `None` = NULL.
    pub(crate) fn result(&self, stat: Statistic) -> Result<Option<StatValue>, MergeError> {
        match self {
            StatState::Numeric {
                count, sum, sumsq, ..
            } => numeric_result(stat, *count, sum, sumsq).map(|v| v.map(StatValue::Numeric)),
            StatState::Float { n, sxx, .. } => {
                if *n == 0.0 || (stat.sample() && *n <= 1.0) {
                    return Ok(None);
                }
                let den = if stat.sample() { *n - 1.0 } else { *n };
                let v = *sxx / den;
                Ok(Some(StatValue::Float(if stat.stddev() {
                    v.sqrt()
                } else {
                    v
                })))
            }
        }
    }

    /// The result as a [`Key`].
    pub(crate) fn key(&self, stat: Statistic) -> Result<Key, MergeError> {
        Ok(match self.result(stat)? {
            None => Key::Null,
            Some(StatValue::Numeric(v)) => Key::Numeric(v),
            Some(StatValue::Float(v)) => Key::Float(v),
        })
    }
}

/// A statistic's value.
pub(crate) enum StatValue {
    Numeric(Numeric),
    Float(f64),
}

/// Postgres `numeric_stddev_internal` over N, sum(X) and sum(X*X).
fn numeric_result(
    stat: Statistic,
    count: i64,
    sum: &Numeric,
    sumsq: &Numeric,
) -> Result<Option<Numeric>, MergeError> {
    // Undefined for N <= 1 (sample) or N == 0 (population), NaN and infinite
    // inputs counted; then any of them makes the result NaN.
    if count <= i64::from(stat.sample()) {
        return Ok(None);
    }
    if sum.is_special() || sumsq.is_special() {
        return Ok(Some(Numeric::nan()));
    }
    let too_big = || MergeError::Overflow("value overflows numeric format".to_string());
    let n = Numeric::from_i64(count);
    let numerator = n.mul(sumsq)?.sub(&sum.mul(sum)?);
    if numerator.signum() <= 0 {
        // Roundoff cannot make it negative here, but Postgres answers 0 then.
        return Ok(Some(Numeric::from_i64(0)));
    }
    let other = if stat.sample() { count - 1 } else { count };
    let den =
        Numeric::from_parts(BigInt::from(count) * BigInt::from(other), 0).ok_or_else(too_big)?;
    let variance = numerator.div(&den)?;
    if !stat.stddev() {
        return Ok(Some(variance));
    }
    variance
        .sqrt_rounded(variance.dscale())
        .map(Some)
        .ok_or_else(|| MergeError::malformed(oid::NUMERIC, "negative variance"))
}
