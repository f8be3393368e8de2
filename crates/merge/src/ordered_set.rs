//! Combining the ordered-set aggregates `percentile_cont`, `percentile_disc` and
//! `mode() WITHIN GROUP (ORDER BY x)` from several shards, by gathering sorted values.
//!
//! The planner makes the shards also group by `x`, so each shard row holds one value
//! of `x` (its ORDER BY key, a hidden column) with the partials `[count(x), the
//! aggregate itself, (fraction)::float8]` (`mode`: the first two; FILTER kept). Over
//! one value the aggregate itself is that value: as float8 for `percentile_cont`, in
//! the client's format for the others when the aggregate is a visible column. The
//! proxy keeps a group's `(x, count, value)` until the group is complete, orders them
//! by `x` as the WITHIN GROUP ORDER BY says, and picks the result as Postgres's
//! `percentile_cont_final`, `percentile_disc_final` and `mode_final` do over the
//! multiset (NULL `x` has count 0 and is ignored, as Postgres ignores it). Memory: one
//! entry per distinct value of a group and shard.

use bytes::Bytes;

use crate::error::MergeError;
use crate::key::Key;
use crate::oid;
use crate::variance::{read_f64, read_i64};

/// Which ordered-set aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderedSet {
    /// `percentile_cont(f) WITHIN GROUP (ORDER BY x)` over float8 (interpolated).
    PercentileCont,
    /// `percentile_disc(f) WITHIN GROUP (ORDER BY x)`.
    PercentileDisc,
    /// `mode() WITHIN GROUP (ORDER BY x)`.
    Mode,
}

impl OrderedSet {
    /// The aggregate a Postgres name computes.
    pub fn from_name(name: &str) -> Option<OrderedSet> {
        Some(match name {
            "percentile_cont" => OrderedSet::PercentileCont,
            "percentile_disc" => OrderedSet::PercentileDisc,
            "mode" => OrderedSet::Mode,
            _ => return None,
        })
    }

    /// The aggregate's name.
    pub fn name(self) -> &'static str {
        match self {
            OrderedSet::PercentileCont => "percentile_cont",
            OrderedSet::PercentileDisc => "percentile_disc",
            OrderedSet::Mode => "mode",
        }
    }

    /// How many partials the shards send (see the module doc).
    pub fn partial_count(self) -> usize {
        match self {
            OrderedSet::Mode => 2,
            _ => 3,
        }
    }
}

/// One value of `x` with how often it occurs and the aggregate's bytes over it.
#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    count: i64,
    value: Option<Bytes>,
}

/// The gathered values of one ordered-set aggregate in one group.
#[derive(Debug, Clone)]
pub(crate) struct OrderedSetState {
    kind: OrderedSet,
    desc: bool,
    nulls_first: bool,
    entries: Vec<Entry>,
    fraction: Option<f64>,
    /// Estimated bytes of `entries`.
    held: usize,
}

impl OrderedSetState {
    /// The state for partials of these types (ascending until [`Self::set_order`]).
    pub(crate) fn new(
        kind: OrderedSet,
        partial_oids: &[u32],
    ) -> Result<OrderedSetState, MergeError> {
        let ok = matches!(
            (kind, partial_oids),
            (
                OrderedSet::PercentileCont,
                [oid::INT8, oid::FLOAT8, oid::FLOAT8]
            ) | (OrderedSet::PercentileDisc, [oid::INT8, _, oid::FLOAT8])
                | (OrderedSet::Mode, [oid::INT8, _])
        );
        if !ok {
            return Err(MergeError::unsupported(
                partial_oids.get(1).copied().unwrap_or(0),
                format!("{}() of this type", kind.name()),
            ));
        }
        Ok(OrderedSetState {
            kind,
            desc: false,
            nulls_first: false,
            entries: Vec::new(),
            fraction: None,
            held: 0,
        })
    }

    /// Estimated bytes the gathered values take.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held
    }

    /// Sets the direction of the WITHIN GROUP ORDER BY key.
    pub(crate) fn set_order(&mut self, desc: bool, nulls_first: bool) {
        (self.desc, self.nulls_first) = (desc, nulls_first);
    }

    /// Keeps one shard row: its ORDER BY key and partials (see the module doc).
    pub(crate) fn add(
        &mut self,
        keys: Vec<Key>,
        partials: &[Option<&[u8]>],
    ) -> Result<(), MergeError> {
        let Ok([key]) = <[Key; 1]>::try_from(keys) else {
            return Err(MergeError::malformed(
                oid::INT8,
                format!("{}() expects one ORDER BY key", self.kind.name()),
            ));
        };
        if let Some(Some(f)) = partials.get(2) {
            self.fraction = Some(read_f64(f)?);
        }
        let count = match partials.first().copied().flatten() {
            Some(v) => read_i64(v)?,
            None => 0,
        };
        if count < 0 {
            return Err(MergeError::malformed(oid::INT8, "negative count"));
        }
        if count == 0 || key.is_null() {
            return Ok(());
        }
        let value = partials
            .get(1)
            .copied()
            .flatten()
            .map(Bytes::copy_from_slice);
        let key_heap = match &key {
            Key::Bytes(b) => b.len(),
            _ => 0,
        };
        self.held += std::mem::size_of::<Entry>() + key_heap + value.as_ref().map_or(0, Bytes::len);
        self.entries.push(Entry { key, count, value });
        Ok(())
    }

    /// The values sorted, equal keys' counts added (the first entry's bytes kept).
    fn runs(&self) -> Result<Vec<Entry>, MergeError> {
        let mut sorted = self.entries.clone();
        sorted.sort_by(|a, b| a.key.cmp_sort(&b.key, self.desc, self.nulls_first));
        let mut runs: Vec<Entry> = Vec::with_capacity(sorted.len());
        for e in sorted {
            match runs.last_mut() {
                Some(last) if last.key.cmp_value(&e.key).is_eq() => {
                    last.count = last
                        .count
                        .checked_add(e.count)
                        .ok_or_else(|| MergeError::Overflow("bigint out of range".to_string()))?;
                }
                _ => runs.push(e),
            }
        }
        Ok(runs)
    }

    /// The result as Postgres's final function computes it (`None` = NULL); a
    /// fraction outside [0, 1] fails as in Postgres (22003).
    pub(crate) fn pick(&self) -> Result<Option<PickedOwned>, MergeError> {
        let runs = self.runs()?;
        let total: i64 = runs.iter().map(|e| e.count).sum();
        if total == 0 {
            return Ok(None);
        }
        if self.kind == OrderedSet::Mode {
            let mut best: Option<&Entry> = None;
            for e in &runs {
                if best.is_none_or(|b| e.count > b.count) {
                    best = Some(e);
                }
            }
            return Ok(best.map(|e| PickedOwned::Entry(e.key.clone(), e.value.clone())));
        }
        let Some(f) = self.fraction else {
            return Ok(None);
        };
        if !(0.0..=1.0).contains(&f) {
            return Err(MergeError::Overflow(format!(
                "percentile value {f} is not between 0 and 1"
            )));
        }
        // The entry holding 0-based row `row`.
        let at = |row: i64| -> Option<&Entry> {
            let mut seen = 0i64;
            runs.iter().find(|e| {
                seen += e.count;
                seen > row
            })
        };
        if self.kind == OrderedSet::PercentileDisc {
            let rownum = (f * total as f64).ceil() as i64;
            let e = at(rownum.max(1) - 1).ok_or_else(|| {
                MergeError::malformed(oid::FLOAT8, "percentile row beyond the rows")
            })?;
            return Ok(Some(PickedOwned::Entry(e.key.clone(), e.value.clone())));
        }
        let pos = f * (total - 1) as f64;
        let (first, second) = (pos.floor() as i64, pos.ceil() as i64);
        let value = |row: i64| -> Result<f64, MergeError> {
            at(row)
                .and_then(|e| e.value.as_deref())
                .ok_or_else(|| MergeError::malformed(oid::FLOAT8, "percentile value missing"))
                .and_then(read_f64)
        };
        let lo = value(first)?;
        if first == second {
            return Ok(Some(PickedOwned::Float(lo)));
        }
        let hi = value(second)?;
        Ok(Some(PickedOwned::Float(
            lo + (hi - lo) * (pos - first as f64),
        )))
    }
}

/// A picked value, owned.
pub(crate) enum PickedOwned {
    /// `percentile_cont`'s interpolated float8.
    Float(f64),
    /// The key and client bytes of the `percentile_disc` or `mode` entry.
    Entry(Key, Option<Bytes>),
}
