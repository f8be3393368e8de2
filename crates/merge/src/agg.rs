//! Combining aggregate partials from several shards.

use bytes::{Bytes, BytesMut};

use crate::bits::{BitOp, Bits};
use crate::error::MergeError;
use crate::float::{float4_text, float8_text};
use crate::gather::{Gathered, SortedGather};
use crate::key::{decode_key, key_supported, Key};
use crate::numeric::Numeric;
use crate::oid;
use crate::ordered_set::{OrderedSet, OrderedSetState, PickedOwned};
use crate::regression::{RegrState, RegrValue, Regression};
use crate::variance::{StatState, StatValue, Statistic};

/// The aggregates the proxy can combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// `count(*)` / `count(x)`.
    Count,
    /// `sum(x)`.
    Sum,
    /// `avg(x)`.
    Avg,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `bool_and(x)` (also `every(x)`).
    BoolAnd,
    /// `bool_or(x)`.
    BoolOr,
    /// `string_agg(x, sep)` over text (see `gather.rs`).
    StringAgg,
    /// `array_agg(x)` (see `gather.rs`).
    ArrayAgg,
    /// `json_agg(x)` / `jsonb_agg(x)` (see `gather.rs`).
    JsonAgg,
    /// `var_samp`/`var_pop`/`stddev_samp`/`stddev_pop` (see `variance.rs`).
    Statistic(Statistic),
    /// `bit_and`/`bit_or`/`bit_xor` over int2/int4/int8 (see `bits.rs`).
    Bits(BitOp),
    /// `corr`, `covar_pop`, `covar_samp`, `regr_*` (see `regression.rs`).
    Regression(Regression),
    /// `percentile_cont`/`percentile_disc`/`mode` (see `ordered_set.rs`).
    OrderedSet(OrderedSet),
}

impl AggKind {
    /// How many partial columns the proxy pushes to each shard for this kind, in this
    /// order: Count → [count(args)]; Sum → [sum(x)]; Avg → [sum(x), count(x), avg(x)];
    /// Min → [min(x) binary, min(x) in the client's format]; Max → same with max;
    /// BoolAnd → [bool_and(x)]; BoolOr → [bool_or(x)]; StringAgg → [string_agg(x, sep),
    /// sep::text]; ArrayAgg → [array_agg(x) in the client's format]; JsonAgg →
    /// [json_agg(x) or jsonb_agg(x) in the client's format]; Statistic →
    /// [count(x), sum(x), sum(x::numeric * x::numeric), avg(x), var_pop(x)]; Bits →
    /// [the aggregate itself]; Regression → [regr_count, regr_avgx, regr_avgy, regr_sxx,
    /// regr_syy, regr_sxy]; OrderedSet → [count(x), the aggregate itself,
    /// (fraction)::float8] (mode: the first two).
    pub fn partial_count(self) -> usize {
        match self {
            AggKind::OrderedSet(o) => o.partial_count(),
            AggKind::Regression(_) => 6,
            AggKind::Statistic(_) => 5,
            AggKind::Avg => 3,
            AggKind::Min | AggKind::Max | AggKind::StringAgg => 2,
            AggKind::Count
            | AggKind::Sum
            | AggKind::BoolAnd
            | AggKind::BoolOr
            | AggKind::ArrayAgg
            | AggKind::JsonAgg
            | AggKind::Bits(_) => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Avg => "avg",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::BoolAnd => "bool_and",
            AggKind::BoolOr => "bool_or",
            AggKind::StringAgg => "string_agg",
            AggKind::ArrayAgg => "array_agg",
            AggKind::JsonAgg => "json_agg",
            AggKind::Statistic(s) => s.name(),
            AggKind::Bits(op) => op.name(),
            AggKind::Regression(r) => r.name(),
            AggKind::OrderedSet(o) => o.name(),
        }
    }
}

#[derive(Debug, Clone)]
enum Acc {
    /// Sum of counts.
    Count(i64),
    /// sum(int2/int4) → int8.
    SumInt8(Option<i64>),
    /// sum(int8/numeric) → numeric.
    SumNumeric(Option<Numeric>),
    /// sum(float4) → float4.
    SumFloat4(Option<f32>),
    /// sum(float8) → float8.
    SumFloat8(Option<f64>),
    /// avg(int2/int4/int8/numeric) → numeric; `sum_oid` is the sum partial's type.
    AvgNumeric {
        sum_oid: u32,
        sum: Numeric,
        count: i64,
    },
    /// avg(float8) → float8.
    AvgFloat8 { sum: f64, count: i64 },
    /// avg(float4) → float8, from Σ(avg_i × count_i).
    AvgFloat4 { weighted: f64, count: i64 },
    /// min / max: the best binary key and the same row's client-format bytes.
    Best {
        max: bool,
        key_oid: u32,
        best: Option<(Key, Option<Bytes>)>,
    },
    /// bool_and / bool_or.
    Bool { and: bool, value: Option<bool> },
    /// A variance or standard deviation.
    Stat { stat: Statistic, state: StatState },
    /// bit_and / bit_or / bit_xor.
    Bits(Bits),
    /// A two-variable statistic.
    Regr { stat: Regression, state: RegrState },
    /// An ordered-set aggregate's gathered values.
    OrderedSet(OrderedSetState),
    /// string_agg / array_agg / json_agg.
    Gather(Gathered),
    /// The same with ORDER BY inside, its rows sorted before they combine.
    SortedGather(SortedGather),
}

/// Combines one aggregate's partials from every shard (and from every row of one group).
#[derive(Debug, Clone)]
pub struct AggState {
    kind: AggKind,
    output_oid: u32,
    acc: Acc,
}

fn overflow_bigint() -> MergeError {
    MergeError::Overflow("bigint out of range".to_string())
}

fn overflow_float() -> MergeError {
    MergeError::Overflow("value out of range: overflow".to_string())
}

fn read_i64(type_oid: u32, v: &[u8]) -> Result<i64, MergeError> {
    match v.try_into() {
        Ok(b) => Ok(i64::from_be_bytes(b)),
        Err(_) => Err(MergeError::malformed(type_oid, "expected 8 bytes")),
    }
}

fn read_f64(v: &[u8]) -> Result<f64, MergeError> {
    match v.try_into() {
        Ok(b) => Ok(f64::from_be_bytes(b)),
        Err(_) => Err(MergeError::malformed(oid::FLOAT8, "expected 8 bytes")),
    }
}

fn read_f32(v: &[u8]) -> Result<f32, MergeError> {
    match v.try_into() {
        Ok(b) => Ok(f32::from_be_bytes(b)),
        Err(_) => Err(MergeError::malformed(oid::FLOAT4, "expected 4 bytes")),
    }
}

fn read_bool(v: &[u8]) -> Result<bool, MergeError> {
    match v {
        [b] => Ok(*b != 0),
        _ => Err(MergeError::malformed(oid::BOOL, "expected 1 byte")),
    }
}

/// Postgres `float8pl`: an infinite result from finite inputs is an overflow error.
fn add_f64(a: f64, b: f64) -> Result<f64, MergeError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(overflow_float());
    }
    Ok(r)
}

/// Postgres `float4pl`.
fn add_f32(a: f32, b: f32) -> Result<f32, MergeError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(overflow_float());
    }
    Ok(r)
}

fn int8_value(v: i64, format: i16) -> Bytes {
    if format == 1 {
        Bytes::copy_from_slice(&v.to_be_bytes())
    } else {
        Bytes::from(v.to_string())
    }
}

fn numeric_value(v: &Numeric, format: i16) -> Bytes {
    if format == 1 {
        let mut out = BytesMut::new();
        v.to_binary(&mut out);
        out.freeze()
    } else {
        Bytes::from(v.to_text())
    }
}

fn float8_value(v: f64, format: i16) -> Bytes {
    if format == 1 {
        Bytes::copy_from_slice(&v.to_be_bytes())
    } else {
        Bytes::from(float8_text(v))
    }
}

impl AggState {
    /// Prepares to combine `kind` partials. `output_oid` is the type Postgres gives the
    /// aggregate's result (from a shard's RowDescription of the original aggregate);
    /// `partial_oids` are the types of the partial columns as the shard described them, in
    /// [`AggKind::partial_count`] order. Unsupported combinations (e.g. sum over interval
    /// or money, min of json) → [`MergeError::Unsupported`]; a wrong number of partials →
    /// [`MergeError::Malformed`].
    pub fn new(
        kind: AggKind,
        output_oid: u32,
        partial_oids: &[u32],
    ) -> Result<AggState, MergeError> {
        if partial_oids.len() != kind.partial_count() {
            return Err(MergeError::malformed(
                output_oid,
                format!(
                    "{} expects {} partial columns, got {}",
                    kind.name(),
                    kind.partial_count(),
                    partial_oids.len()
                ),
            ));
        }
        let unsupported = || MergeError::unsupported(output_oid, kind.name());
        let acc = match kind {
            AggKind::Count => match (output_oid, partial_oids) {
                (oid::INT8, [oid::INT8]) => Acc::Count(0),
                _ => return Err(unsupported()),
            },
            AggKind::Sum => match (output_oid, partial_oids) {
                (oid::INT8, [oid::INT8]) => Acc::SumInt8(None),
                (oid::NUMERIC, [oid::NUMERIC]) => Acc::SumNumeric(None),
                (oid::FLOAT4, [oid::FLOAT4]) => Acc::SumFloat4(None),
                (oid::FLOAT8, [oid::FLOAT8]) => Acc::SumFloat8(None),
                _ => return Err(unsupported()),
            },
            AggKind::Avg => match (output_oid, partial_oids) {
                (oid::NUMERIC, [s @ (oid::INT8 | oid::NUMERIC), oid::INT8, oid::NUMERIC]) => {
                    Acc::AvgNumeric {
                        sum_oid: *s,
                        sum: Numeric::from_i64(0),
                        count: 0,
                    }
                }
                (oid::FLOAT8, [oid::FLOAT8, oid::INT8, oid::FLOAT8]) => {
                    Acc::AvgFloat8 { sum: 0.0, count: 0 }
                }
                (oid::FLOAT8, [oid::FLOAT4, oid::INT8, oid::FLOAT8]) => Acc::AvgFloat4 {
                    weighted: 0.0,
                    count: 0,
                },
                _ => return Err(unsupported()),
            },
            AggKind::Min | AggKind::Max => match partial_oids {
                [a, b] if a == b && key_supported(*a) => Acc::Best {
                    max: kind == AggKind::Max,
                    key_oid: *a,
                    best: None,
                },
                _ => return Err(unsupported()),
            },
            AggKind::BoolAnd | AggKind::BoolOr => match (output_oid, partial_oids) {
                (oid::BOOL, [oid::BOOL]) => Acc::Bool {
                    and: kind == AggKind::BoolAnd,
                    value: None,
                },
                _ => return Err(unsupported()),
            },
            AggKind::Statistic(stat) => Acc::Stat {
                stat,
                state: StatState::new(stat, partial_oids)?,
            },
            AggKind::Bits(op) => Acc::Bits(Bits::new(op, partial_oids[0])?),
            AggKind::Regression(stat) => Acc::Regr {
                stat,
                state: RegrState::new(stat, partial_oids)?,
            },
            AggKind::OrderedSet(o) => Acc::OrderedSet(OrderedSetState::new(o, partial_oids)?),
            AggKind::StringAgg => Acc::Gather(Gathered::string_agg(partial_oids)?),
            AggKind::ArrayAgg => Acc::Gather(Gathered::array_agg(partial_oids[0])?),
            AggKind::JsonAgg => Acc::Gather(Gathered::json_agg(partial_oids[0])?),
        };
        Ok(AggState {
            kind,
            output_oid,
            acc,
        })
    }

    /// Estimated bytes of values this state holds until its group is complete
    /// (ordered-set aggregates; 0 for the others).
    pub fn held_bytes(&self) -> usize {
        match &self.acc {
            Acc::OrderedSet(s) => s.held_bytes(),
            _ => 0,
        }
    }

    /// The aggregate kind.
    pub fn kind(&self) -> AggKind {
        self.kind
    }

    /// The result type OID given to [`AggState::new`].
    pub fn output_oid(&self) -> u32 {
        self.output_oid
    }

    /// Adds one shard row's partials: binary format for every partial except the second
    /// Min/Max partial, which is opaque client-format bytes; `None` = NULL.
    pub fn add(&mut self, partials: &[Option<&[u8]>]) -> Result<(), MergeError> {
        if partials.len() != self.kind.partial_count() {
            return Err(MergeError::malformed(
                self.output_oid,
                format!(
                    "{} expects {} partial values, got {}",
                    self.kind.name(),
                    self.kind.partial_count(),
                    partials.len()
                ),
            ));
        }
        match &mut self.acc {
            Acc::Count(total) => {
                if let Some(v) = partials[0] {
                    let v = read_i64(oid::INT8, v)?;
                    *total = total.checked_add(v).ok_or_else(overflow_bigint)?;
                }
            }
            Acc::SumInt8(total) => {
                if let Some(v) = partials[0] {
                    let v = read_i64(oid::INT8, v)?;
                    *total = Some(match total {
                        Some(t) => t.checked_add(v).ok_or_else(overflow_bigint)?,
                        None => v,
                    });
                }
            }
            Acc::SumNumeric(total) => {
                if let Some(v) = partials[0] {
                    let v = Numeric::from_binary(v)?;
                    *total = Some(match total {
                        Some(t) => t.add(&v),
                        None => v,
                    });
                }
            }
            Acc::SumFloat4(total) => {
                if let Some(v) = partials[0] {
                    let v = read_f32(v)?;
                    *total = Some(match total {
                        Some(t) => add_f32(*t, v)?,
                        None => v,
                    });
                }
            }
            Acc::SumFloat8(total) => {
                if let Some(v) = partials[0] {
                    let v = read_f64(v)?;
                    *total = Some(match total {
                        Some(t) => add_f64(*t, v)?,
                        None => v,
                    });
                }
            }
            Acc::AvgNumeric {
                sum_oid,
                sum,
                count,
            } => {
                let n = Self::avg_count(partials)?;
                if n == 0 {
                    return Ok(());
                }
                let s = match partials[0] {
                    Some(v) if *sum_oid == oid::INT8 => Numeric::from_i64(read_i64(oid::INT8, v)?),
                    Some(v) => Numeric::from_binary(v)?,
                    None => return Err(Self::null_sum()),
                };
                *sum = sum.add(&s);
                *count = count.checked_add(n).ok_or_else(overflow_bigint)?;
            }
            Acc::AvgFloat8 { sum, count } => {
                let n = Self::avg_count(partials)?;
                if n == 0 {
                    return Ok(());
                }
                let s = read_f64(partials[0].ok_or_else(Self::null_sum)?)?;
                *sum = add_f64(*sum, s)?;
                *count = count.checked_add(n).ok_or_else(overflow_bigint)?;
            }
            Acc::AvgFloat4 { weighted, count } => {
                let n = Self::avg_count(partials)?;
                if n == 0 {
                    return Ok(());
                }
                let avg = read_f64(partials[2].ok_or_else(Self::null_sum)?)?;
                *weighted = add_f64(*weighted, avg * n as f64)?;
                *count = count.checked_add(n).ok_or_else(overflow_bigint)?;
            }
            Acc::Best { max, key_oid, best } => {
                let key = decode_key(*key_oid, partials[0])?;
                if key.is_null() {
                    return Ok(());
                }
                let better = match best {
                    None => true,
                    Some((b, _)) => {
                        let ord = key.cmp_value(b);
                        if *max {
                            ord.is_gt()
                        } else {
                            ord.is_lt()
                        }
                    }
                };
                if better {
                    *best = Some((key, partials[1].map(Bytes::copy_from_slice)));
                }
            }
            Acc::Bool { and, value } => {
                if let Some(v) = partials[0] {
                    let v = read_bool(v)?;
                    *value = Some(match value {
                        Some(cur) if *and => *cur && v,
                        Some(cur) => *cur || v,
                        None => v,
                    });
                }
            }
            Acc::Stat { state, .. } => state.add(partials)?,
            Acc::Bits(b) => b.add(partials[0])?,
            Acc::Regr { state, .. } => state.add(partials)?,
            Acc::Gather(g) => g.add(partials)?,
            Acc::SortedGather(_) | Acc::OrderedSet(_) => {
                return Err(MergeError::malformed(
                    self.output_oid,
                    "rows of an ordered aggregate without their ORDER BY keys",
                ))
            }
        }
        Ok(())
    }

    /// Makes a gathered aggregate (`string_agg`, `array_agg`, `json_agg`) sort its
    /// rows by their ORDER BY keys (`(desc, nulls_first)` each) before combining them:
    /// rows are then added with [`AggState::add_keyed`]. Other kinds →
    /// [`MergeError::Unsupported`].
    pub fn ordered(mut self, order: Vec<(bool, bool)>) -> Result<AggState, MergeError> {
        self.acc = match self.acc {
            Acc::Gather(g) => Acc::SortedGather(SortedGather::new(g, order)),
            Acc::OrderedSet(mut s) if order.len() == 1 => {
                let (desc, nulls_first) = order[0];
                s.set_order(desc, nulls_first);
                Acc::OrderedSet(s)
            }
            _ => {
                return Err(MergeError::unsupported(
                    self.output_oid,
                    format!("{}(... ORDER BY ...)", self.kind.name()),
                ))
            }
        };
        Ok(self)
    }

    /// Adds one shard row's partials with the row's ORDER BY keys (an
    /// [`AggState::ordered`] state; others ignore the keys).
    pub fn add_keyed(
        &mut self,
        keys: Vec<Key>,
        partials: &[Option<&[u8]>],
    ) -> Result<(), MergeError> {
        match &mut self.acc {
            Acc::SortedGather(s) => {
                if partials.len() != self.kind.partial_count() {
                    return Err(MergeError::malformed(
                        self.output_oid,
                        format!(
                            "{} expects {} partial values",
                            self.kind.name(),
                            self.kind.partial_count()
                        ),
                    ));
                }
                s.add(keys, partials)
            }
            Acc::OrderedSet(s) => s.add(keys, partials),
            _ => self.add(partials),
        }
    }

    fn avg_count(partials: &[Option<&[u8]>]) -> Result<i64, MergeError> {
        let n = match partials[1] {
            Some(v) => read_i64(oid::INT8, v)?,
            None => 0,
        };
        if n < 0 {
            return Err(MergeError::malformed(oid::INT8, "negative count"));
        }
        Ok(n)
    }

    fn null_sum() -> MergeError {
        MergeError::malformed(oid::NUMERIC, "avg partial sum is NULL for a non-zero count")
    }

    /// The final avg over numeric, or `None` when the count is 0.
    fn avg_numeric(sum: &Numeric, count: i64) -> Result<Option<Numeric>, MergeError> {
        if count == 0 {
            return Ok(None);
        }
        sum.div(&Numeric::from_i64(count)).map(Some)
    }

    /// The final value encoded for the client: `format` 0 = text, 1 = binary; `None` = NULL.
    /// Byte-identical to what Postgres sends for the aggregate over all rows (float sums
    /// may differ in the last bits because the additions happen in another order). For
    /// Min/Max this is the winning row's second (client-format) partial, unchanged.
    pub fn finish(&self, format: i16) -> Result<Option<Bytes>, MergeError> {
        if format != 0 && format != 1 {
            return Err(MergeError::malformed(
                self.output_oid,
                format!("unknown format code {format}"),
            ));
        }
        Ok(match &self.acc {
            Acc::Count(n) => Some(int8_value(*n, format)),
            Acc::SumInt8(v) => v.map(|v| int8_value(v, format)),
            Acc::SumNumeric(v) => v.as_ref().map(|v| numeric_value(v, format)),
            Acc::SumFloat4(v) => v.map(|v| {
                if format == 1 {
                    Bytes::copy_from_slice(&v.to_be_bytes())
                } else {
                    Bytes::from(float4_text(v))
                }
            }),
            Acc::SumFloat8(v) => v.map(|v| float8_value(v, format)),
            Acc::AvgNumeric { sum, count, .. } => {
                Self::avg_numeric(sum, *count)?.map(|v| numeric_value(&v, format))
            }
            Acc::AvgFloat8 { sum, count } => {
                (*count > 0).then(|| float8_value(sum / *count as f64, format))
            }
            Acc::AvgFloat4 { weighted, count } => {
                (*count > 0).then(|| float8_value(weighted / *count as f64, format))
            }
            Acc::Best { best, .. } => best.as_ref().and_then(|(_, bytes)| bytes.clone()),
            Acc::Bool { value, .. } => value.map(|v| {
                if format == 1 {
                    Bytes::copy_from_slice(&[u8::from(v)])
                } else {
                    Bytes::from_static(if v { b"t" } else { b"f" })
                }
            }),
            Acc::Stat { stat, state } => match state.result(*stat)? {
                None => None,
                Some(StatValue::Numeric(v)) => Some(numeric_value(&v, format)),
                Some(StatValue::Float(v)) => Some(float8_value(v, format)),
            },
            Acc::Bits(b) => b.finish(format),
            Acc::Regr { stat, state } => match state.result(*stat) {
                None => None,
                Some(RegrValue::Count(n)) => Some(int8_value(n, format)),
                Some(RegrValue::Float(v)) => Some(float8_value(v, format)),
            },
            Acc::OrderedSet(s) => match s.pick()? {
                None => None,
                Some(PickedOwned::Float(v)) => Some(float8_value(v, format)),
                Some(PickedOwned::Entry(_, bytes)) => bytes,
            },
            Acc::Gather(g) => g.finish(),
            Acc::SortedGather(s) => s.combined()?.finish(),
        })
    }

    /// The final value as a [`Key`] (for HAVING and ORDER BY on the aggregate).
    pub fn key(&self) -> Result<Key, MergeError> {
        Ok(match &self.acc {
            Acc::Count(n) => Key::Int(*n),
            Acc::SumInt8(v) => v.map_or(Key::Null, Key::Int),
            Acc::SumNumeric(v) => v.clone().map_or(Key::Null, Key::Numeric),
            Acc::SumFloat4(v) => v.map_or(Key::Null, |v| Key::Float(v.into())),
            Acc::SumFloat8(v) => v.map_or(Key::Null, Key::Float),
            Acc::AvgNumeric { sum, count, .. } => {
                Self::avg_numeric(sum, *count)?.map_or(Key::Null, Key::Numeric)
            }
            Acc::AvgFloat8 { sum, count } => {
                if *count > 0 {
                    Key::Float(sum / *count as f64)
                } else {
                    Key::Null
                }
            }
            Acc::AvgFloat4 { weighted, count } => {
                if *count > 0 {
                    Key::Float(weighted / *count as f64)
                } else {
                    Key::Null
                }
            }
            Acc::Best { best, .. } => best.as_ref().map_or(Key::Null, |(k, _)| k.clone()),
            Acc::Bool { value, .. } => value.map_or(Key::Null, Key::Bool),
            Acc::Stat { stat, state } => state.key(*stat)?,
            Acc::Bits(b) => b.value().map_or(Key::Null, Key::Int),
            Acc::Regr { stat, state } => match state.result(*stat) {
                None => Key::Null,
                Some(RegrValue::Count(n)) => Key::Int(n),
                Some(RegrValue::Float(v)) => Key::Float(v),
            },
            Acc::OrderedSet(s) => match s.pick()? {
                None => Key::Null,
                Some(PickedOwned::Float(v)) => Key::Float(v),
                Some(PickedOwned::Entry(k, _)) => k,
            },
            Acc::Gather(g) => g.key()?,
            Acc::SortedGather(s) => s.combined()?.key()?,
        })
    }
}
