//! Combining two-variable statistics (`corr`, `covar_*`, `regr_*`) from several shards.
//!
//! Postgres keeps `(N, Sx, Sxx, Sy, Syy, Sxy)` in float8 for all of them. Each shard
//! returns, per group, `[regr_count(y, x), regr_avgx(y, x), regr_avgy(y, x),
//! regr_sxx(y, x), regr_syy(y, x), regr_sxy(y, x)]` (FILTER kept): the state's
//! components, the sums `Sx`/`Sy` as averages (taken back as `avg * N`). The proxy
//! combines the states as `float8_regr_combine` does (Youngs-Cramer) and finishes as
//! `float8_corr`, `float8_regr_slope`, ... do (the last bits may differ from one
//! server's, as for float sums).

use crate::error::MergeError;
use crate::oid;

/// Which two-variable statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regression {
    /// `corr(y, x)`.
    Corr,
    /// `covar_pop(y, x)`.
    CovarPop,
    /// `covar_samp(y, x)`.
    CovarSamp,
    /// `regr_count(y, x)` (bigint).
    Count,
    /// `regr_sxx(y, x)`.
    Sxx,
    /// `regr_syy(y, x)`.
    Syy,
    /// `regr_sxy(y, x)`.
    Sxy,
    /// `regr_avgx(y, x)`.
    AvgX,
    /// `regr_avgy(y, x)`.
    AvgY,
    /// `regr_slope(y, x)`.
    Slope,
    /// `regr_intercept(y, x)`.
    Intercept,
    /// `regr_r2(y, x)`.
    R2,
}

/// The names of the partial aggregates each shard computes, in [`RegrState::add`] order.
pub const REGRESSION_PARTIALS: [&str; 6] = [
    "regr_count",
    "regr_avgx",
    "regr_avgy",
    "regr_sxx",
    "regr_syy",
    "regr_sxy",
];

impl Regression {
    /// The statistic a Postgres aggregate name computes.
    pub fn from_name(name: &str) -> Option<Regression> {
        Some(match name {
            "corr" => Regression::Corr,
            "covar_pop" => Regression::CovarPop,
            "covar_samp" => Regression::CovarSamp,
            "regr_count" => Regression::Count,
            "regr_sxx" => Regression::Sxx,
            "regr_syy" => Regression::Syy,
            "regr_sxy" => Regression::Sxy,
            "regr_avgx" => Regression::AvgX,
            "regr_avgy" => Regression::AvgY,
            "regr_slope" => Regression::Slope,
            "regr_intercept" => Regression::Intercept,
            "regr_r2" => Regression::R2,
            _ => return None,
        })
    }

    /// The aggregate's name.
    pub fn name(self) -> &'static str {
        match self {
            Regression::Corr => "corr",
            Regression::CovarPop => "covar_pop",
            Regression::CovarSamp => "covar_samp",
            Regression::Count => "regr_count",
            Regression::Sxx => "regr_sxx",
            Regression::Syy => "regr_syy",
            Regression::Sxy => "regr_sxy",
            Regression::AvgX => "regr_avgx",
            Regression::AvgY => "regr_avgy",
            Regression::Slope => "regr_slope",
            Regression::Intercept => "regr_intercept",
            Regression::R2 => "regr_r2",
        }
    }

    /// The result type: bigint for `regr_count`, float8 for the others.
    pub fn output_oid(self) -> u32 {
        if self == Regression::Count {
            oid::INT8
        } else {
            oid::FLOAT8
        }
    }
}

/// A statistic's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RegrValue {
    /// `regr_count`.
    Count(i64),
    /// The others.
    Float(f64),
}

/// The combined state `(N, Sx, Sxx, Sy, Syy, Sxy)` of one statistic.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegrState {
    count: i64,
    n: f64,
    sx: f64,
    sxx: f64,
    sy: f64,
    syy: f64,
    sxy: f64,
}

fn read_f64(v: Option<&[u8]>) -> Result<f64, MergeError> {
    let v = v.ok_or_else(|| {
        MergeError::malformed(
            oid::FLOAT8,
            "regression partial is NULL for a non-zero count",
        )
    })?;
    crate::variance::read_f64(v)
}

/// Postgres `float_overflow_error` when an infinite result came from finite inputs.
fn checked(r: f64, inputs: &[f64]) -> Result<f64, MergeError> {
    if r.is_infinite() && inputs.iter().all(|v| v.is_finite()) {
        return Err(MergeError::Overflow(
            "value out of range: overflow".to_string(),
        ));
    }
    Ok(r)
}

impl RegrState {
    /// Checks the partials' types (see the module doc for their order).
    pub(crate) fn new(stat: Regression, partial_oids: &[u32]) -> Result<RegrState, MergeError> {
        match partial_oids {
            [oid::INT8, oid::FLOAT8, oid::FLOAT8, oid::FLOAT8, oid::FLOAT8, oid::FLOAT8] => {
                Ok(RegrState::default())
            }
            _ => Err(MergeError::unsupported(
                partial_oids.first().copied().unwrap_or(0),
                stat.name(),
            )),
        }
    }

    /// Adds one shard row's partials (binary format; `None` = NULL), as
    /// `float8_regr_combine` does.
    pub(crate) fn add(&mut self, partials: &[Option<&[u8]>]) -> Result<(), MergeError> {
        let count = match partials.first().copied().flatten() {
            Some(v) => crate::variance::read_i64(v)?,
            None => 0,
        };
        if count < 0 {
            return Err(MergeError::malformed(oid::INT8, "negative count"));
        }
        if count == 0 {
            return Ok(());
        }
        let part = |i: usize| read_f64(partials.get(i).copied().flatten());
        let n2 = count as f64;
        let (sx2, sy2) = (part(1)? * n2, part(2)? * n2);
        let (sxx2, syy2, sxy2) = (part(3)?, part(4)?, part(5)?);
        self.count = self
            .count
            .checked_add(count)
            .ok_or_else(|| MergeError::Overflow("bigint out of range".to_string()))?;
        if self.n == 0.0 {
            (self.n, self.sx, self.sxx) = (n2, sx2, sxx2);
            (self.sy, self.syy, self.sxy) = (sy2, syy2, sxy2);
            return Ok(());
        }
        let n1 = self.n;
        let n = n1 + n2;
        let tmp1 = self.sx / n1 - sx2 / n2;
        let tmp2 = self.sy / n1 - sy2 / n2;
        let sxx = self.sxx + sxx2 + n1 * n2 * tmp1 * tmp1 / n;
        let syy = self.syy + syy2 + n1 * n2 * tmp2 * tmp2 / n;
        let sxy = self.sxy + sxy2 + n1 * n2 * tmp1 * tmp2 / n;
        self.sx = checked(self.sx + sx2, &[self.sx, sx2])?;
        self.sy = checked(self.sy + sy2, &[self.sy, sy2])?;
        self.sxx = checked(sxx, &[self.sxx, sxx2])?;
        self.syy = checked(syy, &[self.syy, syy2])?;
        self.sxy = checked(sxy, &[self.sxy, sxy2])?;
        self.n = n;
        Ok(())
    }

    /// The result as Postgres's final functions compute it; `None` = NULL.
    pub(crate) fn result(&self, stat: Regression) -> Option<RegrValue> {
        let RegrState {
            n,
            sx,
            sxx,
            sy,
            syy,
            sxy,
            ..
        } = *self;
        if stat == Regression::Count {
            return Some(RegrValue::Count(self.count));
        }
        if n < 1.0 {
            return None;
        }
        let v = match stat {
            Regression::Count => return Some(RegrValue::Count(self.count)),
            Regression::Sxx => sxx,
            Regression::Syy => syy,
            Regression::Sxy => sxy,
            Regression::AvgX => sx / n,
            Regression::AvgY => sy / n,
            Regression::CovarPop => sxy / n,
            Regression::CovarSamp => {
                if n < 2.0 {
                    return None;
                }
                sxy / (n - 1.0)
            }
            Regression::Corr => {
                if sxx == 0.0 || syy == 0.0 {
                    return None;
                }
                sxy / (sxx * syy).sqrt()
            }
            Regression::R2 => {
                if sxx == 0.0 {
                    return None;
                }
                if syy == 0.0 {
                    1.0
                } else {
                    (sxy * sxy) / (sxx * syy)
                }
            }
            Regression::Slope => {
                if sxx == 0.0 {
                    return None;
                }
                sxy / sxx
            }
            Regression::Intercept => {
                if sxx == 0.0 {
                    return None;
                }
                (sy - sx * sxy / sxx) / n
            }
        };
        Some(RegrValue::Float(v))
    }
}
