//! The shard map: configuration, validation and placement of keys.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::key::{KeyType, ShardKey};
use crate::ring::Ring;
use crate::table::{Function, ListEntry, RangeEntry, TableName, TableRule};
use crate::validate::{validate, MapError};

/// Everything a [`ShardMap`] is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMapConfig {
    /// One weight per shard (index = shard number); a shard of weight `w`
    /// gets `vnodes * w` points on the hash ring, so about `w / sum` of the
    /// hashed keys.
    pub weights: Vec<u32>,
    /// Virtual nodes per unit of weight (256 is a good default).
    pub vnodes: u32,
    /// The shard holding tables that are neither sharded nor reference
    /// tables.
    pub default_shard: usize,
    /// The sharded tables.
    pub tables: Vec<TableRule>,
    /// Tables copied on every shard.
    pub reference_tables: Vec<TableName>,
    /// Arcs of the hash ring given to another shard than the one whose
    /// point ends them (written by `REBALANCE`).
    pub arcs: Vec<ArcOwner>,
}

/// The arc that ends at point `vnode` of `shard` (label
/// `shard-{shard}-vnode-{vnode}`) belongs to `owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArcOwner {
    /// The shard whose point ends the arc.
    pub shard: usize,
    /// The point's index among that shard's points.
    pub vnode: u32,
    /// The shard the arc's keys go to.
    pub owner: usize,
}

/// Why a key has no shard under a table's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoShard {
    /// No range or list entry accepts the key.
    #[error("no shard holds {column} = {value} of table {table}: no {function} entry covers this value (add one to the shard map)")]
    NoEntry {
        /// The table.
        table: String,
        /// The key column.
        column: String,
        /// The key as an SQL literal.
        value: String,
        /// `range` or `list`.
        function: &'static str,
    },
    /// The key is not of the table's key type (a caller bug: parse keys
    /// with the rule's [`TableRule::key_type`]).
    #[error("the {got} value {value} cannot be a key of table {table}: its shard key {column} is {expected}")]
    KeyTypeMismatch {
        /// The table.
        table: String,
        /// The key column.
        column: String,
        /// The key as an SQL literal.
        value: String,
        /// The rule's key type.
        expected: KeyType,
        /// The key's type.
        got: KeyType,
    },
    /// The rule names a shard this map does not have (a rule from another
    /// shard map version).
    #[error("table {table} maps {column} = {value} to shard {shard}, but this shard map has only {shards} shards: the rule belongs to another shard map version")]
    UnknownShard {
        /// The table.
        table: String,
        /// The key column.
        column: String,
        /// The key as an SQL literal.
        value: String,
        /// The shard named by the rule.
        shard: usize,
        /// The number of shards in this map.
        shards: usize,
    },
}

/// A validated, immutable shard map. Cheap to share behind an `Arc`; a
/// reload builds a new one with a higher version and swaps it in whole.
pub struct ShardMap {
    version: u64,
    weights: Vec<u32>,
    vnodes: u32,
    default_shard: usize,
    tables: Vec<Arc<TableRule>>,
    table_index: HashMap<String, usize>,
    reference_tables: Vec<TableName>,
    reference_index: HashMap<String, usize>,
    arcs: Vec<ArcOwner>,
    ring: Ring,
}

impl fmt::Debug for ShardMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardMap")
            .field("version", &self.version)
            .field("weights", &self.weights)
            .field("vnodes", &self.vnodes)
            .field("default_shard", &self.default_shard)
            .field("tables", &self.tables)
            .field("reference_tables", &self.reference_tables)
            .field("ring_points", &self.ring.len())
            .finish()
    }
}

impl ShardMap {
    /// Validates `cfg` and builds the map and its hash ring.
    ///
    /// Checks: at least one shard, some weight ≥ 1 (a shard of weight 0 is
    /// drained: no hashed key belongs to it), vnodes ≥ 1, the ring
    /// not above [`crate::MAX_RING_POINTS`] points, `default_shard` in range,
    /// non-empty names, table names unique across sharded and reference
    /// tables, range sharding only on bigint keys with `start < end` and no
    /// overlap, list values of the key type and listed once, every shard
    /// named by a rule in range, range and list rules with at least one
    /// entry.
    pub fn new(cfg: ShardMapConfig, version: u64) -> Result<ShardMap, MapError> {
        validate(&cfg)?;
        let ring = Ring::new(&cfg.weights, cfg.vnodes, &cfg.arcs);
        let table_index = index_names(cfg.tables.iter().map(|rule| &rule.table));
        let reference_index = index_names(cfg.reference_tables.iter());
        Ok(ShardMap {
            version,
            weights: cfg.weights,
            vnodes: cfg.vnodes,
            default_shard: cfg.default_shard,
            tables: cfg.tables.into_iter().map(Arc::new).collect(),
            table_index,
            reference_tables: cfg.reference_tables,
            reference_index,
            arcs: {
                let mut arcs = cfg.arcs;
                arcs.sort_unstable();
                arcs
            },
            ring,
        })
    }

    /// The same map under another version number.
    pub fn with_version(mut self, version: u64) -> ShardMap {
        self.version = version;
        self
    }

    /// Whether `other` has the same rules (versions aside).
    pub fn same_rules(&self, other: &ShardMap) -> bool {
        self.weights == other.weights
            && self.vnodes == other.vnodes
            && self.default_shard == other.default_shard
            && self.tables == other.tables
            && self.reference_tables == other.reference_tables
            && self.arcs == other.arcs
    }

    /// What would put rows that exist now on another shard if `next`
    /// replaced this map, one sentence each: a different number of shards,
    /// weights, virtual nodes or default shard, and a sharded table whose
    /// rule changed or that is no longer sharded. Empty when `next` only
    /// adds tables (or adds or removes reference tables), which moves
    /// nothing.
    pub fn placement_changes(&self, next: &ShardMap) -> Vec<String> {
        let mut out = Vec::new();
        if self.weights.len() != next.weights.len() {
            out.push(format!(
                "the number of shards changes from {} to {}",
                self.weights.len(),
                next.weights.len()
            ));
        } else if self.weights != next.weights {
            out.push(format!(
                "shard weights change from {:?} to {:?}",
                self.weights, next.weights
            ));
        }
        if self.arcs != next.arcs {
            out.push("the arcs given by REBALANCE change".to_owned());
        }
        if self.vnodes != next.vnodes {
            out.push(format!(
                "sharding.vnodes changes from {} to {}",
                self.vnodes, next.vnodes
            ));
        }
        if self.default_shard != next.default_shard {
            out.push(format!(
                "sharding.default_shard changes from {} to {}",
                self.default_shard, next.default_shard
            ));
        }
        for rule in &self.tables {
            let t = &rule.table;
            match next.table(t.schema.as_deref(), &t.name) {
                None => out.push(format!("table {t} is no longer sharded")),
                Some(n) if n.column != rule.column => out.push(format!(
                    "table {t}: shard key changes from {} to {}",
                    rule.column, n.column
                )),
                Some(n) if n.key_type != rule.key_type => {
                    out.push(format!("table {t}: key_type changes"))
                }
                Some(n) if n.function.name() != rule.function.name() => out.push(format!(
                    "table {t}: function changes from {} to {}",
                    rule.function.name(),
                    n.function.name()
                )),
                Some(n) if n.function != rule.function => out.push(format!(
                    "table {t}: its {} change",
                    match rule.function {
                        crate::Function::Range(_) => "ranges",
                        _ => "list values",
                    }
                )),
                Some(_) => {}
            }
        }
        out
    }

    /// The hash ring as arcs `(from, to, shard)` of key hashes (xxhash64,
    /// seed 0, of a key's canonical bytes): both ends inclusive, in order,
    /// the last one wrapping around zero.
    pub fn ring_arcs(&self) -> Vec<(u64, u64, usize)> {
        self.ring.arcs()
    }

    /// The end point `(shard, vnode)` of each arc of [`ShardMap::ring_arcs`],
    /// in the same order: the name of an arc for [`ArcOwner`].
    pub fn arc_points(&self) -> &[(usize, u32)] {
        self.ring.arc_points()
    }

    /// The index in [`ShardMap::ring_arcs`] of the arc holding `key`.
    pub fn arc_index(&self, key: &ShardKey) -> Option<usize> {
        key.with_canonical_bytes(|bytes| self.ring.arc_index_of(bytes))
    }

    /// The arcs given to another shard than the one whose point ends them.
    pub fn given_arcs(&self) -> &[ArcOwner] {
        &self.arcs
    }

    /// The hash ring.
    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The version this map was built with.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.weights.len()
    }

    /// The shard of tables that are neither sharded nor reference tables.
    pub fn default_shard(&self) -> usize {
        self.default_shard
    }

    /// The ring weight of each shard (index = shard number).
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Virtual nodes per unit of weight.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// The sharded tables' rules, in configuration order.
    pub fn tables(&self) -> &[Arc<TableRule>] {
        &self.tables
    }

    /// The reference tables, in configuration order.
    pub fn reference_tables(&self) -> &[TableName] {
        &self.reference_tables
    }

    /// The rule for a table reference: match on the table name
    /// (case-insensitive for unquoted names); if the configured rule has a
    /// schema, a schema-qualified reference must match it, an unqualified
    /// reference matches too. See [`TableName::matches`].
    pub fn table(&self, schema: Option<&str>, name: &str) -> Option<&Arc<TableRule>> {
        let rule = self.tables.get(lookup(&self.table_index, name)?)?;
        rule.table.matches(schema, name).then_some(rule)
    }

    /// Whether the reference denotes a reference table (matched like
    /// [`ShardMap::table`]).
    pub fn is_reference(&self, schema: Option<&str>, name: &str) -> bool {
        lookup(&self.reference_index, name)
            .and_then(|i| self.reference_tables.get(i))
            .is_some_and(|table| table.matches(schema, name))
    }

    /// Hash placement of a key on the ring (see the crate docs for the
    /// algorithm). Does not allocate.
    pub fn hash_shard(&self, key: &ShardKey) -> usize {
        key.with_canonical_bytes(|bytes| self.ring.shard_of(bytes))
            .unwrap_or(self.default_shard)
    }

    /// The shard of `key` under `rule`; a key no range or list entry accepts
    /// is an error naming the table, the column and the value, as is a key of
    /// another type than the rule's.
    pub fn shard_for(&self, rule: &TableRule, key: &ShardKey) -> Result<usize, NoShard> {
        if key.key_type() != rule.key_type {
            return Err(NoShard::KeyTypeMismatch {
                table: rule.table.to_string(),
                column: rule.column.clone(),
                value: key.sql_literal(),
                expected: rule.key_type,
                got: key.key_type(),
            });
        }
        let shard = match &rule.function {
            Function::Hash => return Ok(self.hash_shard(key)),
            Function::Range(entries) => range_shard(entries, key),
            Function::List(entries) => list_shard(entries, key),
        };
        match shard {
            Some(shard) if shard < self.shard_count() => Ok(shard),
            Some(shard) => Err(NoShard::UnknownShard {
                table: rule.table.to_string(),
                column: rule.column.clone(),
                value: key.sql_literal(),
                shard,
                shards: self.shard_count(),
            }),
            None => Err(NoShard::NoEntry {
                table: rule.table.to_string(),
                column: rule.column.clone(),
                value: key.sql_literal(),
                function: rule.function.name(),
            }),
        }
    }

    /// Shards that can hold keys in `[lower, upper]` for a range-sharded
    /// table, sorted and without duplicates. Each bound is optional (open)
    /// and carries `true` if inclusive, `false` if exclusive. An empty result
    /// means no configured range holds any such key. For hash and list
    /// tables: all shards.
    pub fn shards_for_range(
        &self,
        rule: &TableRule,
        lower: Option<(i64, bool)>,
        upper: Option<(i64, bool)>,
    ) -> Vec<usize> {
        let Function::Range(entries) = &rule.function else {
            return self.all_shards();
        };
        let Some((lo, hi)) = inclusive_bounds(lower, upper) else {
            return Vec::new();
        };
        let mut shards: Vec<usize> = entries
            .iter()
            .filter(|e| e.start <= hi && e.end > lo && e.shard < self.shard_count())
            .map(|e| e.shard)
            .collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// All shard numbers, `0..shard_count()`.
    pub fn all_shards(&self) -> Vec<usize> {
        (0..self.shard_count()).collect()
    }
}

/// Maps each name's lookup key to its position.
fn index_names<'a>(names: impl Iterator<Item = &'a TableName>) -> HashMap<String, usize> {
    names
        .enumerate()
        .map(|(i, table)| (table.lookup_key(), i))
        .collect()
}

/// Finds a name's position, lower-casing only when it has upper-case ASCII
/// (so the usual already-folded reference does not allocate).
fn lookup(index: &HashMap<String, usize>, name: &str) -> Option<usize> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        index.get(&name.to_ascii_lowercase()).copied()
    } else {
        index.get(name).copied()
    }
}

/// The shard of the range holding an integer key.
fn range_shard(entries: &[RangeEntry], key: &ShardKey) -> Option<usize> {
    let ShardKey::Int(v) = key else {
        return None;
    };
    entries.iter().find(|e| e.contains(*v)).map(|e| e.shard)
}

/// The shard of the list holding a key.
fn list_shard(entries: &[ListEntry], key: &ShardKey) -> Option<usize> {
    entries
        .iter()
        .find(|e| e.values.contains(key))
        .map(|e| e.shard)
}

/// `[lower, upper]` as inclusive i64 bounds, `None` if no integer satisfies
/// both.
fn inclusive_bounds(lower: Option<(i64, bool)>, upper: Option<(i64, bool)>) -> Option<(i64, i64)> {
    let lo = match lower {
        None => i64::MIN,
        Some((v, true)) => v,
        Some((v, false)) => v.checked_add(1)?,
    };
    let hi = match upper {
        None => i64::MAX,
        Some((v, true)) => v,
        Some((v, false)) => v.checked_sub(1)?,
    };
    (lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_keys_arc_names_its_shard() {
        let map = ShardMap::new(
            ShardMapConfig {
                weights: vec![1, 2, 1],
                vnodes: 16,
                default_shard: 0,
                tables: vec![],
                reference_tables: vec![],
                arcs: Vec::new(),
            },
            1,
        )
        .expect("valid");
        let arcs = map.ring_arcs();
        assert_eq!(map.arc_points().len(), arcs.len());
        for k in 0..3000i64 {
            let key = ShardKey::Int(k);
            let i = map.arc_index(&key).expect("an arc");
            assert_eq!(arcs[i].2, map.hash_shard(&key), "key {k}");
        }
    }

    use super::*;
    use crate::validate::MAX_RING_POINTS;

    fn range_rule() -> TableRule {
        TableRule {
            table: TableName::new(Some("public"), "events"),
            column: "event_id".into(),
            key_type: KeyType::BigInt,
            function: Function::Range(vec![
                RangeEntry {
                    shard: 0,
                    start: 1,
                    end: 500_001,
                },
                RangeEntry {
                    shard: 1,
                    start: 500_001,
                    end: 1_000_001,
                },
            ]),
        }
    }

    fn text(s: &str) -> ShardKey {
        ShardKey::Text(s.into())
    }

    fn list_rule() -> TableRule {
        TableRule {
            table: TableName::new(None, "customers"),
            column: "country".into(),
            key_type: KeyType::Text,
            function: Function::List(vec![
                ListEntry {
                    shard: 0,
                    values: vec![text("US"), text("CA")],
                },
                ListEntry {
                    shard: 1,
                    values: vec![text("DE"), text("FR")],
                },
            ]),
        }
    }

    fn hash_rule() -> TableRule {
        TableRule {
            table: TableName::new(None, "users"),
            column: "id".into(),
            key_type: KeyType::BigInt,
            function: Function::Hash,
        }
    }

    fn config() -> ShardMapConfig {
        ShardMapConfig {
            weights: vec![1, 1],
            vnodes: 16,
            default_shard: 0,
            tables: vec![range_rule(), list_rule(), hash_rule()],
            reference_tables: vec![TableName::new(None, "countries")],
            arcs: Vec::new(),
        }
    }

    fn map() -> ShardMap {
        ShardMap::new(config(), 7).unwrap()
    }

    #[test]
    fn accessors() {
        let m = map();
        assert_eq!(m.version(), 7);
        assert_eq!(m.shard_count(), 2);
        assert_eq!(m.default_shard(), 0);
        assert_eq!(m.all_shards(), vec![0, 1]);
        assert_eq!(m.weights(), &[1, 1]);
        assert_eq!(m.vnodes(), 16);
        assert_eq!(m.tables().len(), 3);
        assert_eq!(m.reference_tables().len(), 1);
        assert!(format!("{m:?}").contains("ring_points: 32"));
    }

    #[test]
    fn range_placement() {
        let m = map();
        let rule = range_rule();
        let shard = |v| m.shard_for(&rule, &ShardKey::Int(v));
        assert_eq!(shard(1), Ok(0));
        assert_eq!(shard(500_000), Ok(0));
        assert_eq!(shard(500_001), Ok(1));
        assert_eq!(shard(1_000_000), Ok(1));
        for outside in [0, 1_000_001, i64::MIN, i64::MAX] {
            let err = shard(outside).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, NoShard::NoEntry { .. }), "{msg}");
            assert!(msg.contains("public.events"), "{msg}");
            assert!(msg.contains("event_id"), "{msg}");
            assert!(msg.contains(&outside.to_string()), "{msg}");
        }
    }

    #[test]
    fn range_pruning() {
        let m = map();
        let rule = range_rule();
        let prune = |lo, hi| m.shards_for_range(&rule, lo, hi);
        // Both bounds.
        assert_eq!(prune(Some((10, true)), Some((20, true))), vec![0]);
        assert_eq!(prune(Some((10, true)), Some((600_000, true))), vec![0, 1]);
        assert_eq!(
            prune(Some((500_001, true)), Some((600_000, false))),
            vec![1]
        );
        // Open bounds.
        assert_eq!(prune(None, None), vec![0, 1]);
        assert_eq!(prune(None, Some((100, true))), vec![0]);
        assert_eq!(prune(Some((900_000, false)), None), vec![1]);
        assert_eq!(prune(None, Some((0, true))), Vec::<usize>::new());
        assert_eq!(prune(Some((1_000_001, true)), None), Vec::<usize>::new());
        // Inclusive / exclusive at the boundary 500000 | 500001.
        assert_eq!(prune(Some((500_000, true)), None), vec![0, 1]);
        assert_eq!(prune(Some((500_000, false)), None), vec![1]);
        assert_eq!(prune(None, Some((500_001, true))), vec![0, 1]);
        assert_eq!(prune(None, Some((500_001, false))), vec![0]);
        assert_eq!(
            prune(Some((1, false)), Some((2, false))),
            Vec::<usize>::new()
        );
        // Empty and inverted intervals.
        assert_eq!(
            prune(Some((5, true)), Some((5, false))),
            Vec::<usize>::new()
        );
        assert_eq!(prune(Some((9, true)), Some((3, true))), Vec::<usize>::new());
        assert_eq!(prune(Some((5, true)), Some((5, true))), vec![0]);
        // Bounds at the extremes do not overflow.
        assert_eq!(prune(Some((i64::MAX, false)), None), Vec::<usize>::new());
        assert_eq!(prune(None, Some((i64::MIN, false))), Vec::<usize>::new());
        assert_eq!(
            prune(Some((i64::MIN, true)), Some((i64::MAX, true))),
            vec![0, 1]
        );
        // Other functions: all shards.
        assert_eq!(
            m.shards_for_range(&hash_rule(), Some((1, true)), Some((2, true))),
            vec![0, 1]
        );
        assert_eq!(m.shards_for_range(&list_rule(), None, None), vec![0, 1]);
    }

    #[test]
    fn list_placement() {
        let m = map();
        let rule = list_rule();
        assert_eq!(m.shard_for(&rule, &text("US")), Ok(0));
        assert_eq!(m.shard_for(&rule, &text("CA")), Ok(0));
        assert_eq!(m.shard_for(&rule, &text("FR")), Ok(1));
        let err = m.shard_for(&rule, &text("JP")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, NoShard::NoEntry { .. }));
        assert!(msg.contains("customers"), "{msg}");
        assert!(msg.contains("country"), "{msg}");
        assert!(msg.contains("'JP'"), "{msg}");
        // Values are exact: no case folding.
        assert!(m.shard_for(&rule, &text("us")).is_err());
    }

    #[test]
    fn hash_rule_uses_the_ring() {
        let m = map();
        let key = ShardKey::Int(42);
        assert_eq!(m.shard_for(&hash_rule(), &key), Ok(m.hash_shard(&key)));
    }

    #[test]
    fn key_of_the_wrong_type_is_an_error() {
        let m = map();
        let err = m.shard_for(&hash_rule(), &text("42")).unwrap_err();
        assert!(matches!(err, NoShard::KeyTypeMismatch { .. }));
        assert!(err.to_string().contains("users"), "{err}");
        assert!(m.shard_for(&list_rule(), &ShardKey::Int(1)).is_err());
    }

    #[test]
    fn rule_from_a_bigger_map_is_an_error() {
        let m = map();
        let mut rule = range_rule();
        rule.function = Function::Range(vec![RangeEntry {
            shard: 5,
            start: 0,
            end: 10,
        }]);
        let err = m.shard_for(&rule, &ShardKey::Int(3)).unwrap_err();
        assert!(matches!(err, NoShard::UnknownShard { shard: 5, .. }));
        assert!(m.shards_for_range(&rule, None, None).is_empty());
    }

    #[test]
    fn table_lookup() {
        let m = map();
        let events = m.table(None, "events").unwrap();
        assert_eq!(events.column, "event_id");
        assert!(m.table(Some("public"), "events").is_some());
        assert!(m.table(Some("PUBLIC"), "EVENTS").is_some());
        assert!(m.table(Some("archive"), "events").is_none());
        assert!(m.table(Some("anything"), "customers").is_some());
        assert!(m.table(None, "countries").is_none());
        assert!(m.table(None, "nope").is_none());
        assert!(m.is_reference(None, "countries"));
        assert!(m.is_reference(Some("public"), "Countries"));
        assert!(!m.is_reference(None, "events"));
        // The rule handed out is shared, not copied.
        assert!(Arc::ptr_eq(events, m.table(None, "EVENTS").unwrap()));
    }

    #[test]
    fn quoted_table_names_match_exactly() {
        let mut cfg = config();
        cfg.tables[2].table = TableName::new(None, "Users");
        let m = ShardMap::new(cfg, 1).unwrap();
        assert!(m.table(None, "Users").is_some());
        assert!(m.table(None, "users").is_none());
    }

    fn rejected(edit: impl FnOnce(&mut ShardMapConfig)) -> MapError {
        let mut cfg = config();
        edit(&mut cfg);
        ShardMap::new(cfg, 1).unwrap_err()
    }

    fn set_function(cfg: &mut ShardMapConfig, table: usize, f: Function) {
        cfg.tables[table].function = f;
    }

    fn ranges(entries: &[(usize, i64, i64)]) -> Function {
        Function::Range(
            entries
                .iter()
                .map(|&(shard, start, end)| RangeEntry { shard, start, end })
                .collect(),
        )
    }

    #[test]
    fn shard_level_validation() {
        assert_eq!(rejected(|c| c.weights.clear()), MapError::NoShards);
        assert_eq!(
            rejected(|c| c.weights = vec![0, 0]),
            MapError::AllWeightsZero
        );
        assert_eq!(rejected(|c| c.vnodes = 0), MapError::ZeroVnodes);
        assert_eq!(
            rejected(|c| c.default_shard = 2),
            MapError::DefaultShardOutOfRange {
                default_shard: 2,
                shards: 2
            }
        );
        assert!(matches!(
            rejected(|c| c.vnodes = u32::MAX),
            MapError::RingTooLarge {
                max: MAX_RING_POINTS,
                ..
            }
        ));
        assert!(matches!(
            rejected(|c| {
                c.vnodes = 1 << 20;
                c.weights = vec![1, 1, 1];
            }),
            MapError::RingTooLarge {
                points: 3_145_728,
                ..
            }
        ));
    }

    #[test]
    fn name_validation() {
        assert!(matches!(
            rejected(|c| c.tables[0].table.name.clear()),
            MapError::EmptyName { .. }
        ));
        assert!(matches!(
            rejected(|c| c.tables[0].table.schema = Some(String::new())),
            MapError::EmptyName { .. }
        ));
        assert!(matches!(
            rejected(|c| c.tables[0].column.clear()),
            MapError::EmptyName { .. }
        ));
        assert!(matches!(
            rejected(|c| c.reference_tables[0].name.clear()),
            MapError::EmptyName { .. }
        ));
        let dup = rejected(|c| c.tables[2].table = TableName::new(Some("other"), "EVENTS"));
        assert!(matches!(dup, MapError::DuplicateTable { .. }), "{dup}");
        let dup = rejected(|c| c.reference_tables.push(TableName::new(None, "countries")));
        assert!(matches!(dup, MapError::DuplicateTable { .. }), "{dup}");
        let both = rejected(|c| c.reference_tables.push(TableName::new(None, "users")));
        assert_eq!(
            both,
            MapError::ShardedAndReference {
                table: "users".into()
            }
        );
        assert!(both.to_string().contains("users"));
    }

    #[test]
    fn range_validation() {
        let e = rejected(|c| set_function(c, 0, ranges(&[(0, 1, 10), (2, 10, 20)])));
        assert_eq!(
            e,
            MapError::ShardOutOfRange {
                table: "public.events".into(),
                shard: 2,
                shards: 2
            }
        );
        let e = rejected(|c| set_function(c, 0, ranges(&[(0, 10, 10)])));
        assert!(
            matches!(
                e,
                MapError::EmptyRange {
                    start: 10,
                    end: 10,
                    ..
                }
            ),
            "{e}"
        );
        let e = rejected(|c| set_function(c, 0, ranges(&[(0, 10, 5)])));
        assert!(matches!(e, MapError::EmptyRange { .. }), "{e}");
        let e = rejected(|c| set_function(c, 0, ranges(&[(1, 50, 100), (0, 1, 51)])));
        assert_eq!(
            e,
            MapError::OverlappingRanges {
                table: "public.events".into(),
                first_start: 1,
                first_end: 51,
                second_start: 50,
                second_end: 100
            }
        );
        let e = rejected(|c| set_function(c, 0, ranges(&[(0, 1, 100), (1, 20, 30)])));
        assert!(matches!(e, MapError::OverlappingRanges { .. }), "{e}");
        let e = rejected(|c| set_function(c, 0, ranges(&[])));
        assert!(
            matches!(
                e,
                MapError::NoEntries {
                    function: "range",
                    ..
                }
            ),
            "{e}"
        );
        let e = rejected(|c| c.tables[1].function = ranges(&[(0, 1, 2)]));
        assert_eq!(
            e,
            MapError::RangeNeedsBigInt {
                table: "customers".into(),
                key_type: KeyType::Text
            }
        );
        // Adjacent ranges and extreme bounds are fine.
        let mut cfg = config();
        set_function(&mut cfg, 0, ranges(&[(1, 0, i64::MAX), (0, i64::MIN, 0)]));
        assert!(ShardMap::new(cfg, 1).is_ok());
    }

    #[test]
    fn list_validation() {
        let list = |entries: Vec<(usize, Vec<ShardKey>)>| {
            Function::List(
                entries
                    .into_iter()
                    .map(|(shard, values)| ListEntry { shard, values })
                    .collect(),
            )
        };
        let e = rejected(|c| set_function(c, 1, list(vec![(3, vec![text("US")])])));
        assert!(
            matches!(e, MapError::ShardOutOfRange { shard: 3, .. }),
            "{e}"
        );
        let e =
            rejected(|c| set_function(c, 1, list(vec![(0, vec![text("US"), ShardKey::Int(1)])])));
        assert_eq!(
            e,
            MapError::ListValueWrongType {
                table: "customers".into(),
                value: "1".into(),
                value_type: KeyType::BigInt,
                key_type: KeyType::Text
            }
        );
        let e = rejected(|c| {
            set_function(
                c,
                1,
                list(vec![
                    (0, vec![text("US")]),
                    (1, vec![text("FR"), text("US")]),
                ]),
            )
        });
        assert_eq!(
            e,
            MapError::DuplicateListValue {
                table: "customers".into(),
                value: "'US'".into(),
                first_shard: 0,
                second_shard: 1
            }
        );
        let e = rejected(|c| set_function(c, 1, list(vec![(0, vec![text("US"), text("US")])])));
        assert!(matches!(e, MapError::DuplicateListValue { .. }), "{e}");
        let e = rejected(|c| set_function(c, 1, list(vec![])));
        assert!(
            matches!(
                e,
                MapError::NoEntries {
                    function: "list",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn error_messages_are_actionable() {
        let e = rejected(|c| c.weights = vec![0, 0]);
        assert!(e.to_string().contains("every shard has weight 0"), "{e}");
        let e = rejected(|c| set_function(c, 0, ranges(&[(0, 10, 10)])));
        assert!(e.to_string().contains("[10, 10)"), "{e}");
    }

    #[test]
    fn placement_changes_name_what_would_move_rows() {
        let m = map();
        let same = ShardMap::new(config(), 8).unwrap();
        assert!(m.same_rules(&same) && m.placement_changes(&same).is_empty());

        let mut added = config();
        added.tables.push(TableRule {
            table: TableName::new(None, "orders"),
            ..hash_rule()
        });
        added.reference_tables.clear();
        let added = ShardMap::new(added, 8).unwrap();
        assert!(!m.same_rules(&added));
        assert!(
            m.placement_changes(&added).is_empty(),
            "a new table moves nothing"
        );

        let mut moved = config();
        moved.weights = vec![1, 2];
        moved.tables[0] = TableRule {
            function: Function::Range(vec![RangeEntry {
                shard: 0,
                start: 1,
                end: 1_000_001,
            }]),
            ..range_rule()
        };
        moved.tables[2].column = "user_id".into();
        moved.tables.remove(1);
        let moved = ShardMap::new(moved, 8).unwrap();
        let changes = m.placement_changes(&moved).join("; ");
        assert!(changes.contains("weights change"), "{changes}");
        assert!(
            changes.contains("public.events: its ranges change"),
            "{changes}"
        );
        assert!(
            changes.contains("customers is no longer sharded"),
            "{changes}"
        );
        assert!(
            changes.contains("users: shard key changes from id to user_id"),
            "{changes}"
        );
        assert_eq!(moved.with_version(9).version(), 9);
    }
}
