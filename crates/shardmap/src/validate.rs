//! Validation of a [`ShardMapConfig`] before a [`ShardMap`] is built from it.
//!
//! [`ShardMap`]: crate::ShardMap

use std::collections::HashMap;

use crate::key::{KeyType, ShardKey};
use crate::map::ShardMapConfig;
use crate::table::{Function, ListEntry, RangeEntry, TableName, TableRule};

/// The most ring points (sum of `vnodes * weight`) a map may have; keeps a
/// typo such as `vnodes = 2560000` from building a gigabyte ring.
pub const MAX_RING_POINTS: u64 = 1 << 21;

/// Why a shard map configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No shard is configured.
    #[error("the shard map has no shards: configure at least one shard (one weight per shard)")]
    NoShards,
    /// Every shard has weight 0, so the ring has no points.
    #[error("every shard has weight 0: at least one shard needs a weight of 1 or more (weight 0 marks a shard drained by REMOVE SHARD)")]
    AllWeightsZero,
    /// `vnodes` is 0.
    #[error("vnodes is 0: the hash ring needs at least 1 virtual node per shard (256 is a good default)")]
    ZeroVnodes,
    /// The ring would have more than [`MAX_RING_POINTS`] points.
    #[error("the hash ring would have {points} points (vnodes x sum of weights), more than the limit of {max}: lower vnodes or the weights")]
    RingTooLarge {
        /// `vnodes * sum(weights)`.
        points: u64,
        /// [`MAX_RING_POINTS`].
        max: u64,
    },
    /// A given arc names a point the ring does not have, or an owner that
    /// is not a shard of weight 1 or more.
    #[error("arc {arc} given to shard {owner}: the ring has no such point, or shard {owner} does not exist or has weight 0")]
    BadArc {
        /// The arc's end point label.
        arc: String,
        /// The shard it is given to.
        owner: usize,
    },
    /// The default shard does not exist.
    #[error(
        "default_shard is {default_shard} but there are only {shards} shards (numbered from 0)"
    )]
    DefaultShardOutOfRange {
        /// The configured default shard.
        default_shard: usize,
        /// The number of shards.
        shards: usize,
    },
    /// A table or column name is empty.
    #[error("{what} is empty: name it")]
    EmptyName {
        /// What is unnamed, e.g. `the shard key column of table orders`.
        what: String,
    },
    /// Two table entries (sharded or reference) share a name.
    #[error("table {table} is configured twice: table names must be unique across sharded and reference tables, even in different schemas, because an unqualified reference could not tell them apart")]
    DuplicateTable {
        /// The repeated table.
        table: String,
    },
    /// A table is both sharded and a reference table.
    #[error(
        "table {table} is both a sharded table and a reference table: keep it in one list only"
    )]
    ShardedAndReference {
        /// The table.
        table: String,
    },
    /// A range or list rule refers to a shard that does not exist.
    #[error("table {table} maps keys to shard {shard} but there are only {shards} shards (numbered from 0)")]
    ShardOutOfRange {
        /// The table.
        table: String,
        /// The shard named by the rule.
        shard: usize,
        /// The number of shards.
        shards: usize,
    },
    /// A range or list rule has no entries, so no key could be placed.
    #[error("table {table} uses {function} sharding but has no entries: add at least one")]
    NoEntries {
        /// The table.
        table: String,
        /// `range` or `list`.
        function: &'static str,
    },
    /// Range sharding on a key type other than bigint.
    #[error("table {table} uses range sharding on a {key_type} key: range sharding needs a bigint key (use list or hash sharding)")]
    RangeNeedsBigInt {
        /// The table.
        table: String,
        /// The table's key type.
        key_type: KeyType,
    },
    /// A range with `start >= end`.
    #[error("table {table} has the empty range [{start}, {end}) for shard {shard}: start must be below end (end is exclusive)")]
    EmptyRange {
        /// The table.
        table: String,
        /// The range's shard.
        shard: usize,
        /// The range's start.
        start: i64,
        /// The range's end.
        end: i64,
    },
    /// Two ranges share keys.
    #[error("table {table} has overlapping ranges [{first_start}, {first_end}) and [{second_start}, {second_end}): each key must belong to one range (end is exclusive)")]
    OverlappingRanges {
        /// The table.
        table: String,
        /// Start of the lower range.
        first_start: i64,
        /// End of the lower range.
        first_end: i64,
        /// Start of the higher range.
        second_start: i64,
        /// End of the higher range.
        second_end: i64,
    },
    /// A list value whose type is not the table's key type.
    #[error("table {table} lists the {value_type} value {value} but its key is {key_type}: write values of the key's type")]
    ListValueWrongType {
        /// The table.
        table: String,
        /// The value as an SQL literal.
        value: String,
        /// The value's type.
        value_type: KeyType,
        /// The table's key type.
        key_type: KeyType,
    },
    /// A list value given twice.
    #[error("table {table} lists the value {value} twice (for shards {first_shard} and {second_shard}): each value must belong to one shard")]
    DuplicateListValue {
        /// The table.
        table: String,
        /// The value as an SQL literal.
        value: String,
        /// The shard of the first occurrence.
        first_shard: usize,
        /// The shard of the second occurrence.
        second_shard: usize,
    },
}

/// Checks everything [`crate::ShardMap::new`] promises to validate.
pub(crate) fn validate(cfg: &ShardMapConfig) -> Result<(), MapError> {
    validate_shards(cfg)?;
    validate_names(cfg)?;
    for rule in &cfg.tables {
        validate_rule(rule, cfg.weights.len())?;
    }
    Ok(())
}

/// Shard count, weights, vnodes, ring size and default shard.
fn validate_shards(cfg: &ShardMapConfig) -> Result<(), MapError> {
    if cfg.weights.is_empty() {
        return Err(MapError::NoShards);
    }
    if cfg.weights.iter().all(|&w| w == 0) {
        return Err(MapError::AllWeightsZero);
    }
    if cfg.vnodes == 0 {
        return Err(MapError::ZeroVnodes);
    }
    let total_weight: u64 = cfg.weights.iter().map(|&w| u64::from(w)).sum();
    let points = total_weight.saturating_mul(u64::from(cfg.vnodes));
    if points > MAX_RING_POINTS {
        return Err(MapError::RingTooLarge {
            points,
            max: MAX_RING_POINTS,
        });
    }
    for a in &cfg.arcs {
        let points = cfg
            .weights
            .get(a.shard)
            .map_or(0, |&w| w.saturating_mul(cfg.vnodes));
        let owner_weight = cfg.weights.get(a.owner).copied().unwrap_or(0);
        if a.vnode >= points || owner_weight == 0 {
            return Err(MapError::BadArc {
                arc: format!("shard-{}-vnode-{}", a.shard, a.vnode),
                owner: a.owner,
            });
        }
    }
    if cfg.default_shard >= cfg.weights.len() {
        return Err(MapError::DefaultShardOutOfRange {
            default_shard: cfg.default_shard,
            shards: cfg.weights.len(),
        });
    }
    Ok(())
}

/// Non-empty names, unique across sharded and reference tables.
fn validate_names(cfg: &ShardMapConfig) -> Result<(), MapError> {
    let mut sharded: HashMap<String, &TableName> = HashMap::new();
    for rule in &cfg.tables {
        check_table_name(&rule.table)?;
        if rule.column.is_empty() {
            return Err(MapError::EmptyName {
                what: format!("the shard key column of table {}", rule.table),
            });
        }
        if sharded
            .insert(rule.table.lookup_key(), &rule.table)
            .is_some()
        {
            return Err(MapError::DuplicateTable {
                table: rule.table.to_string(),
            });
        }
    }
    let mut reference: HashMap<String, &TableName> = HashMap::new();
    for table in &cfg.reference_tables {
        check_table_name(table)?;
        let key = table.lookup_key();
        if sharded.contains_key(&key) {
            return Err(MapError::ShardedAndReference {
                table: table.to_string(),
            });
        }
        if reference.insert(key, table).is_some() {
            return Err(MapError::DuplicateTable {
                table: table.to_string(),
            });
        }
    }
    Ok(())
}

/// A table name must have a name, and a schema if present must not be empty.
fn check_table_name(table: &TableName) -> Result<(), MapError> {
    if table.name.is_empty() {
        return Err(MapError::EmptyName {
            what: "a table name".to_owned(),
        });
    }
    if table.schema.as_deref() == Some("") {
        return Err(MapError::EmptyName {
            what: format!("the schema of table {}", table.name),
        });
    }
    Ok(())
}

/// One table's function.
fn validate_rule(rule: &TableRule, shards: usize) -> Result<(), MapError> {
    match &rule.function {
        Function::Hash => Ok(()),
        Function::Range(entries) => validate_ranges(rule, entries, shards),
        Function::List(entries) => validate_lists(rule, entries, shards),
    }
}

/// The shard of an entry must exist.
fn check_shard(rule: &TableRule, shard: usize, shards: usize) -> Result<(), MapError> {
    if shard >= shards {
        return Err(MapError::ShardOutOfRange {
            table: rule.table.to_string(),
            shard,
            shards,
        });
    }
    Ok(())
}

/// Range entries: bigint key, in-range shards, non-empty, non-overlapping.
fn validate_ranges(
    rule: &TableRule,
    entries: &[RangeEntry],
    shards: usize,
) -> Result<(), MapError> {
    let table = || rule.table.to_string();
    if rule.key_type != KeyType::BigInt {
        return Err(MapError::RangeNeedsBigInt {
            table: table(),
            key_type: rule.key_type,
        });
    }
    if entries.is_empty() {
        return Err(MapError::NoEntries {
            table: table(),
            function: "range",
        });
    }
    for e in entries {
        check_shard(rule, e.shard, shards)?;
        if e.start >= e.end {
            return Err(MapError::EmptyRange {
                table: table(),
                shard: e.shard,
                start: e.start,
                end: e.end,
            });
        }
    }
    let mut sorted: Vec<&RangeEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.start, e.end));
    for pair in sorted.windows(2) {
        if let [a, b] = pair {
            if a.end > b.start {
                return Err(MapError::OverlappingRanges {
                    table: table(),
                    first_start: a.start,
                    first_end: a.end,
                    second_start: b.start,
                    second_end: b.end,
                });
            }
        }
    }
    Ok(())
}

/// List entries: in-range shards, values of the key type, no value twice.
fn validate_lists(rule: &TableRule, entries: &[ListEntry], shards: usize) -> Result<(), MapError> {
    let table = || rule.table.to_string();
    if entries.is_empty() {
        return Err(MapError::NoEntries {
            table: table(),
            function: "list",
        });
    }
    let mut seen: HashMap<&ShardKey, usize> = HashMap::new();
    for e in entries {
        check_shard(rule, e.shard, shards)?;
        for value in &e.values {
            if value.key_type() != rule.key_type {
                return Err(MapError::ListValueWrongType {
                    table: table(),
                    value: value.sql_literal(),
                    value_type: value.key_type(),
                    key_type: rule.key_type,
                });
            }
            if let Some(first_shard) = seen.insert(value, e.shard) {
                return Err(MapError::DuplicateListValue {
                    table: table(),
                    value: value.sql_literal(),
                    first_shard,
                    second_shard: e.shard,
                });
            }
        }
    }
    Ok(())
}
