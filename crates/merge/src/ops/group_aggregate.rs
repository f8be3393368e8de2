//! Ordered aggregation: the shards' rows arrive sorted by the group keys
//! (one row per shard and group, holding partial aggregates); adjacent
//! rows of the same group are combined into one [`Group`].
//!
//! A DISTINCT aggregate's rows arrive sorted by its argument last, so a
//! value held by several shards comes in adjacent rows: only the first
//! row that holds the value adds its partials.

use bytes::BytesMut;

use crate::agg::{AggKind, AggState};
use crate::error::MergeError;
use crate::key::Key;
use crate::plan::GroupPlan;
use crate::row::DataRow;
use crate::{oid, OrderedSet};

/// One group being combined, or combined.
pub struct Group {
    /// The group's first row: its group columns (equal in all its rows).
    pub first: BytesMut,
    keys: Vec<Key>,
    /// The combined aggregates, one per [`GroupPlan::aggregates`] slot.
    pub aggs: Vec<AggState>,
    /// The last value of [`GroupPlan::distinct_value`] added.
    last_distinct: Option<Key>,
    /// Per aggregate: a DISTINCT one counted that value already (a row of
    /// a shard where FILTER left it out counts nothing).
    counted: Vec<bool>,
}

/// Combines adjacent rows of equal group keys.
#[derive(Default)]
pub struct GroupAggregate {
    current: Option<Group>,
}

impl GroupAggregate {
    /// A new aggregation with no group yet.
    pub fn new() -> GroupAggregate {
        GroupAggregate::default()
    }

    /// Adds one shard row (columns typed by `types`); returns the group
    /// it ends, when it starts a new one.
    pub fn add(
        &mut self,
        g: &GroupPlan,
        types: &[u32],
        row: BytesMut,
    ) -> Result<Option<Group>, MergeError> {
        let view = DataRow::parse(&row)?;
        let group_keys: Vec<Key> = g
            .group_columns
            .iter()
            .map(|c| view.key(*c, types))
            .collect::<Result<_, _>>()?;
        let same = self.current.as_ref().is_some_and(|cur| {
            cur.keys.len() == group_keys.len()
                && cur.keys.iter().zip(&group_keys).all(|(a, b)| a.group_eq(b))
        });
        let mut done = None;
        if !same {
            done = self.current.take();
            self.current = Some(Group {
                first: row.clone(),
                keys: group_keys,
                aggs: new_aggs(g, types)?,
                last_distinct: None,
                counted: vec![false; g.aggregates.len()],
            });
        }
        let distinct_value = match g.distinct_value {
            Some(c) => Some(view.key(c, types)?),
            None => None,
        };
        let cur = self.current.as_mut().expect("a group");
        let repeated = match (&distinct_value, &cur.last_distinct) {
            (Some(v), Some(last)) => v.group_eq(last),
            _ => false,
        };
        if distinct_value.is_some() {
            cur.last_distinct = distinct_value;
        }
        if !repeated {
            cur.counted.iter_mut().for_each(|c| *c = false);
        }
        for ((slot, state), counted) in g
            .aggregates
            .iter()
            .zip(cur.aggs.iter_mut())
            .zip(cur.counted.iter_mut())
        {
            if slot.distinct && *counted {
                continue;
            }
            let values: Vec<Option<&[u8]>> = slot.partials.iter().map(|c| view.field(*c)).collect();
            if slot.order.is_empty() {
                state.add(&values)?;
            } else {
                let keys = slot
                    .order
                    .iter()
                    .map(|k| view.key(k.column, types))
                    .collect::<Result<_, _>>()?;
                state.add_keyed(keys, &values)?;
            }
            if slot.distinct {
                *counted = counts_a_value(slot.func, &values);
            }
        }
        Ok(done)
    }

    /// The last group, once every row was added.
    pub fn finish(&mut self) -> Option<Group> {
        self.current.take()
    }

    /// Bytes the current group's gathered values hold (ordered-set
    /// aggregates keep every value of the group).
    pub fn held(&self) -> usize {
        self.current
            .as_ref()
            .map_or(0, |cur| cur.aggs.iter().map(AggState::held_bytes).sum())
    }

    /// The one group of an aggregate without GROUP BY over no rows (its
    /// columns NULL, its aggregates empty), for a plan whose shards send
    /// no row then.
    pub fn empty_group(g: &GroupPlan, types: &[u32]) -> Result<Group, MergeError> {
        let nulls = vec![None; types.len()];
        Ok(Group {
            first: crate::row::data_row(&nulls),
            keys: Vec::new(),
            aggs: new_aggs(g, types)?,
            last_distinct: None,
            counted: vec![false; g.aggregates.len()],
        })
    }
}

/// The aggregates of a new group, typed from the shards' columns.
fn new_aggs(g: &GroupPlan, types: &[u32]) -> Result<Vec<AggState>, MergeError> {
    let oid_of = |c: usize| types.get(c).copied().unwrap_or(0);
    g.aggregates
        .iter()
        .map(|slot| {
            let oids: Vec<u32> = slot.partials.iter().map(|c| oid_of(*c)).collect();
            if slot.distinct && matches!(slot.func, AggKind::Sum | AggKind::Avg) {
                // Equal values of other types may differ (1.0 and 1.00, 0
                // and -0): which one a shard kept would show.
                let arg = g.distinct_value.map_or(0, oid_of);
                if !matches!(arg, oid::INT2 | oid::INT4 | oid::INT8) {
                    return Err(MergeError::sql(
                        "0A000",
                        "shardgate: sum/avg(DISTINCT ...) of a type other than smallint, integer or bigint across shards is not supported",
                    ));
                }
            }
            let state = AggState::new(slot.func, output_oid(slot.func, &oids), &oids)?;
            match &slot.order[..] {
                [] => Ok(state),
                keys => state.ordered(keys.iter().map(|k| (k.desc, k.nulls_first)).collect()),
            }
        })
        .collect()
}

/// Whether a DISTINCT aggregate's partials of one row (one value of its
/// argument) hold that value: count 1, a sum, an average over 1 (not a
/// NULL argument or one FILTER left out, which add nothing).
fn counts_a_value(f: AggKind, partials: &[Option<&[u8]>]) -> bool {
    let nonzero = |v: Option<&[u8]>| v.is_some_and(|b| b.iter().any(|x| *x != 0));
    match f {
        AggKind::Count => nonzero(partials.first().copied().flatten()),
        AggKind::Avg => nonzero(partials.get(1).copied().flatten()),
        _ => partials.first().is_some_and(|v| v.is_some()),
    }
}

/// The type Postgres gives an aggregate's result, from its partials' types.
pub fn output_oid(f: AggKind, partials: &[u32]) -> u32 {
    match f {
        AggKind::Count => oid::INT8,
        AggKind::BoolAnd | AggKind::BoolOr => oid::BOOL,
        AggKind::Avg => partials.get(2).copied().unwrap_or(oid::NUMERIC),
        AggKind::Sum | AggKind::Min | AggKind::Max => partials.first().copied().unwrap_or(0),
        AggKind::StringAgg | AggKind::ArrayAgg | AggKind::JsonAgg => {
            partials.first().copied().unwrap_or(0)
        }
        AggKind::Statistic(_) => crate::statistic_output_oid(partials),
        AggKind::Bits(_) => partials.first().copied().unwrap_or(0),
        AggKind::Regression(r) => r.output_oid(),
        AggKind::OrderedSet(OrderedSet::PercentileCont) => oid::FLOAT8,
        AggKind::OrderedSet(_) => partials.get(1).copied().unwrap_or(0),
    }
}
