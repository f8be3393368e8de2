//! A change of shard map that moves rows between shards (docs/ARCHITECTURE.md
//! §10 "Rebalancing"): the map in force and the one a rebalancing job moves
//! to. Pure: which keys move, from where to where, and which tables a move
//! touches.

use std::sync::Arc;

use crate::key::ShardKey;
use crate::map::{NoShard, ShardMap};
use crate::table::{Function, TableRule};

/// Why two maps cannot be the two ends of a move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// A shard of the current map is missing from the next one.
    #[error("the next shard map has {next} shards, fewer than the {current} of the map in force: shards keep their numbers, so a removed shard stays in the map (emptied) until its rows have moved")]
    FewerShards {
        /// Shards of the map in force.
        current: usize,
        /// Shards of the next map.
        next: usize,
    },
    /// A sharded table's key or key type differs between the maps.
    #[error("table {table}: {what} differs between the two shard maps; a rebalancing moves rows, it cannot change how a table is keyed")]
    TableChanged {
        /// The table.
        table: String,
        /// What differs.
        what: &'static str,
    },
    /// A sharded table is missing from the next map.
    #[error("table {table} is sharded in the map in force but not in the next one")]
    TableMissing {
        /// The table.
        table: String,
    },
}

/// The map in force (`from`) and the map rows are moving to (`to`).
#[derive(Debug, Clone)]
pub struct Transition {
    from: Arc<ShardMap>,
    to: Arc<ShardMap>,
}

impl Transition {
    /// The move from `from` to `to`: both maps shard the same tables by the
    /// same keys, and `to` keeps every shard of `from` (it may add some).
    pub fn new(from: Arc<ShardMap>, to: Arc<ShardMap>) -> Result<Transition, TransitionError> {
        if to.shard_count() < from.shard_count() {
            return Err(TransitionError::FewerShards {
                current: from.shard_count(),
                next: to.shard_count(),
            });
        }
        for rule in from.tables() {
            let t = &rule.table;
            let Some(next) = to.table(t.schema.as_deref(), &t.name) else {
                return Err(TransitionError::TableMissing {
                    table: t.to_string(),
                });
            };
            let what = if next.column != rule.column {
                Some("the shard key column")
            } else if next.key_type != rule.key_type {
                Some("the key type")
            } else if next.function.name() != rule.function.name() {
                Some("the sharding function")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(TransitionError::TableChanged {
                    table: t.to_string(),
                    what,
                });
            }
        }
        Ok(Transition { from, to })
    }

    /// The map in force.
    pub fn from(&self) -> &Arc<ShardMap> {
        &self.from
    }

    /// The map the rows move to.
    pub fn to(&self) -> &Arc<ShardMap> {
        &self.to
    }

    /// The rule of `rule`'s table in the next map.
    fn next_rule(&self, rule: &TableRule) -> Option<&Arc<TableRule>> {
        self.to
            .table(rule.table.schema.as_deref(), &rule.table.name)
    }

    /// Whether any row of `rule`'s table can change shard: a hashed table
    /// when the ring changes, a range or list table when its entries do.
    pub fn table_moves(&self, rule: &TableRule) -> bool {
        let Some(next) = self.next_rule(rule) else {
            return false;
        };
        match (&rule.function, &next.function) {
            (Function::Hash, Function::Hash) => {
                self.from.weights() != &self.to.weights()[..self.from.shard_count()]
                    || self.to.weights()[self.from.shard_count()..]
                        .iter()
                        .any(|w| *w > 0)
                    || self.from.vnodes() != self.to.vnodes()
                    || self.from.given_arcs() != self.to.given_arcs()
            }
            (a, b) => a != b,
        }
    }

    /// Where the rows of `key` in `rule`'s table move: `Some((from, to))`
    /// when their shard differs between the maps, `None` when they stay.
    pub fn key_moves(
        &self,
        rule: &TableRule,
        key: &ShardKey,
    ) -> Result<Option<(usize, usize)>, NoShard> {
        let Some(next) = self.next_rule(rule) else {
            return Ok(None);
        };
        let now = self.from.shard_for(rule, key)?;
        let then = self.to.shard_for(next, key)?;
        Ok((now != then).then_some((now, then)))
    }

    /// The shard `key` of `rule`'s table belongs to under the next map.
    pub fn next_shard(&self, rule: &TableRule, key: &ShardKey) -> Result<usize, NoShard> {
        match self.next_rule(rule) {
            Some(next) => self.to.shard_for(next, key),
            None => self.from.shard_for(rule, key),
        }
    }

    /// The shards that lose rows: for each shard of the map in force,
    /// whether some key it holds now belongs elsewhere. Hash tables: a
    /// shard loses rows when one of its ring arcs changes owner. Range and
    /// list tables: a shard loses rows when one of its entries goes.
    pub fn sources(&self) -> Vec<usize> {
        let mut lose = vec![false; self.from.shard_count()];
        let tables: Vec<&Arc<TableRule>> = self
            .from
            .tables()
            .iter()
            .filter(|r| self.table_moves(r))
            .collect();
        if tables.iter().any(|r| r.function == Function::Hash) {
            // Between two consecutive points of either ring both owners are
            // constant, so probing every point of both rings is exact.
            let (old, new) = (self.from.ring(), self.to.ring());
            for p in old.point_hashes().chain(new.point_hashes()) {
                if let (Some(a), Some(b)) = (old.shard_of_hash(p), new.shard_of_hash(p)) {
                    if a != b {
                        lose[a] = true;
                    }
                }
            }
        }
        for rule in tables {
            let Some(next) = self.next_rule(rule) else {
                continue;
            };
            match (&rule.function, &next.function) {
                (Function::Range(a), Function::Range(b)) => {
                    for e in a {
                        if !b.contains(e) {
                            lose[e.shard] = true;
                        }
                    }
                }
                (Function::List(a), Function::List(b)) => {
                    for e in a {
                        for v in &e.values {
                            if !b.iter().any(|n| n.shard == e.shard && n.values.contains(v)) {
                                lose[e.shard] = true;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        lose.iter()
            .enumerate()
            .filter_map(|(s, l)| l.then_some(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyType;
    use crate::map::ShardMapConfig;
    use crate::table::{ListEntry, RangeEntry, TableName};

    fn hashed(weights: Vec<u32>) -> Arc<ShardMap> {
        Arc::new(
            ShardMap::new(
                ShardMapConfig {
                    weights,
                    vnodes: 64,
                    default_shard: 0,
                    tables: vec![TableRule {
                        table: TableName::new(None, "orders"),
                        column: "id".into(),
                        key_type: KeyType::BigInt,
                        function: Function::Hash,
                    }],
                    reference_tables: vec![],
                    arcs: Vec::new(),
                },
                1,
            )
            .expect("valid map"),
        )
    }

    #[test]
    fn adding_a_shard_moves_keys_only_onto_it() {
        let t = Transition::new(hashed(vec![1, 1]), hashed(vec![1, 1, 1])).expect("transition");
        let rule = t.from().tables()[0].clone();
        assert!(t.table_moves(&rule));
        let mut moved = 0;
        for k in 0..3000i64 {
            let key = ShardKey::Int(k);
            match t.key_moves(&rule, &key).expect("placed") {
                Some((from, to)) => {
                    assert_eq!(to, 2, "key {k} moves only onto the new shard");
                    assert_eq!(from, t.from().hash_shard(&key));
                    moved += 1;
                }
                None => assert_eq!(t.from().hash_shard(&key), t.to().hash_shard(&key)),
            }
        }
        // About a third of the keys move.
        assert!((700..1300).contains(&moved), "{moved} of 3000 moved");
        assert_eq!(t.sources(), vec![0, 1]);
    }

    #[test]
    fn the_same_map_moves_nothing() {
        let t = Transition::new(hashed(vec![1, 2]), hashed(vec![1, 2])).expect("transition");
        let rule = t.from().tables()[0].clone();
        assert!(!t.table_moves(&rule));
        assert!(t.sources().is_empty());
        for k in 0..500i64 {
            assert_eq!(t.key_moves(&rule, &ShardKey::Int(k)), Ok(None));
        }
    }

    #[test]
    fn a_heavier_shard_takes_keys_from_the_others() {
        let t = Transition::new(hashed(vec![1, 1, 1]), hashed(vec![1, 1, 2])).expect("transition");
        let rule = t.from().tables()[0].clone();
        for k in 0..2000i64 {
            if let Some((_, to)) = t.key_moves(&rule, &ShardKey::Int(k)).expect("placed") {
                assert_eq!(to, 2);
            }
        }
        assert_eq!(t.sources(), vec![0, 1]);
    }

    #[test]
    fn fewer_shards_or_a_rekeyed_table_is_refused() {
        assert!(matches!(
            Transition::new(hashed(vec![1, 1, 1]), hashed(vec![1, 1])),
            Err(TransitionError::FewerShards { .. })
        ));
        let mut cfg = ShardMapConfig {
            weights: vec![1, 1],
            vnodes: 64,
            default_shard: 0,
            tables: vec![TableRule {
                table: TableName::new(None, "orders"),
                column: "customer".into(),
                key_type: KeyType::BigInt,
                function: Function::Hash,
            }],
            reference_tables: vec![],
            arcs: Vec::new(),
        };
        let rekeyed = Arc::new(ShardMap::new(cfg.clone(), 2).expect("valid"));
        assert!(matches!(
            Transition::new(hashed(vec![1, 1]), rekeyed),
            Err(TransitionError::TableChanged { .. })
        ));
        cfg.tables.clear();
        let unsharded = Arc::new(ShardMap::new(cfg, 2).expect("valid"));
        assert!(matches!(
            Transition::new(hashed(vec![1, 1]), unsharded),
            Err(TransitionError::TableMissing { .. })
        ));
    }

    fn ruled(function: Function) -> Arc<ShardMap> {
        Arc::new(
            ShardMap::new(
                ShardMapConfig {
                    weights: vec![1, 1, 1],
                    vnodes: 8,
                    default_shard: 0,
                    tables: vec![TableRule {
                        table: TableName::new(None, "events"),
                        column: "k".into(),
                        key_type: if matches!(function, Function::List(_)) {
                            KeyType::Text
                        } else {
                            KeyType::BigInt
                        },
                        function,
                    }],
                    reference_tables: vec![],
                    arcs: Vec::new(),
                },
                1,
            )
            .expect("valid map"),
        )
    }

    #[test]
    fn a_moved_range_moves_exactly_its_keys() {
        let range = |shard, start, end| RangeEntry { shard, start, end };
        let from = ruled(Function::Range(vec![range(0, 0, 100), range(1, 100, 200)]));
        let to = ruled(Function::Range(vec![
            range(0, 0, 50),
            range(2, 50, 100),
            range(1, 100, 200),
        ]));
        let t = Transition::new(from, to).expect("transition");
        let rule = t.from().tables()[0].clone();
        for k in 0..200i64 {
            let want = (50..100).contains(&k).then_some((0, 2));
            assert_eq!(t.key_moves(&rule, &ShardKey::Int(k)), Ok(want), "key {k}");
        }
        assert_eq!(t.sources(), vec![0]);
    }

    #[test]
    fn a_moved_list_value_moves_only_its_rows() {
        let list = |shard, values: &[&str]| ListEntry {
            shard,
            values: values.iter().map(|v| ShardKey::Text((*v).into())).collect(),
        };
        let from = ruled(Function::List(vec![
            list(0, &["DE", "FR"]),
            list(1, &["US"]),
        ]));
        let to = ruled(Function::List(vec![
            list(0, &["FR"]),
            list(1, &["US"]),
            list(2, &["DE"]),
        ]));
        let t = Transition::new(from, to).expect("transition");
        let rule = t.from().tables()[0].clone();
        let de = ShardKey::Text("DE".into());
        assert_eq!(t.key_moves(&rule, &de), Ok(Some((0, 2))));
        assert_eq!(t.key_moves(&rule, &ShardKey::Text("FR".into())), Ok(None));
        assert_eq!(t.key_moves(&rule, &ShardKey::Text("US".into())), Ok(None));
        assert_eq!(t.sources(), vec![0]);
    }
}
