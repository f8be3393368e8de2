//! The changes of the shard map a rebalancing job makes, as changes of the
//! configuration (pure): the job moves the rows whose owner differs between
//! the map of the configuration before and after.

use shardgate_shardmap::ArcOwner;

use crate::config::{Config, ListConfig, RangeConfig, ShardConfig};

use super::RebalanceError;

/// One change of the shard map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `ADD SHARD`: a new shard at the end of the list.
    AddShard(ShardConfig),
    /// `REMOVE SHARD n`: the shard keeps its number with weight 0 and no
    /// keys (numbers are identities on the ring).
    RemoveShard(usize),
    /// `SET SHARD n WEIGHT w`.
    SetWeight {
        /// The shard.
        shard: usize,
        /// Its new weight (1 or more).
        weight: u32,
    },
    /// `MOVE LIST VALUE 'v' OF table TO SHARD n`.
    MoveListValue {
        /// The list-sharded table.
        table: String,
        /// The value, as written.
        value: String,
        /// Where it goes.
        shard: usize,
    },
    /// `MOVE RANGE table [start, end) TO SHARD n`: ranges are split where
    /// they straddle the bounds.
    MoveRange {
        /// The range-sharded table.
        table: String,
        /// First key moved.
        start: i64,
        /// First key not moved.
        end: i64,
        /// Where it goes.
        shard: usize,
    },
    /// `REBALANCE`: arcs of the hash ring given to other shards.
    GiveArcs(Vec<ArcOwner>),
}

fn invalid(msg: impl Into<String>) -> RebalanceError {
    RebalanceError::Invalid(msg.into())
}

impl Change {
    /// The job kind shown in `shardgate.jobs`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::AddShard(_) => "add_shard",
            Change::RemoveShard(_) => "remove_shard",
            Change::SetWeight { .. } => "set_weight",
            Change::MoveListValue { .. } => "move_list_value",
            Change::MoveRange { .. } => "move_range",
            Change::GiveArcs(_) => "rebalance",
        }
    }

    /// The command that asked for it.
    pub fn describe(&self) -> String {
        match self {
            Change::AddShard(s) => {
                let mut out = format!("ADD SHARD '{}'", s.primary);
                if !s.replicas.is_empty() {
                    out.push_str(&format!(" REPLICAS ('{}')", s.replicas.join("', '")));
                }
                out.push_str(&format!(" WEIGHT {}", s.weight));
                out
            }
            Change::RemoveShard(n) => format!("REMOVE SHARD {n}"),
            Change::SetWeight { shard, weight } => format!("SET SHARD {shard} WEIGHT {weight}"),
            Change::MoveListValue {
                table,
                value,
                shard,
            } => format!("MOVE LIST VALUE '{value}' OF {table} TO SHARD {shard}"),
            Change::MoveRange {
                table,
                start,
                end,
                shard,
            } => format!("MOVE RANGE {table} [{start}, {end}) TO SHARD {shard}"),
            Change::GiveArcs(arcs) => format!(
                "REBALANCE: {} arcs ({})",
                arcs.len(),
                arcs.iter()
                    .map(|a| format!("{}-{} to shard {}", a.shard, a.vnode, a.owner))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The change as stored in `shardgate_meta.jobs.change`, fields
    /// separated by a unit separator (U+001F), read back by [`Change::decode`].
    pub fn encode(&self) -> String {
        let f: Vec<String> = match self {
            Change::AddShard(s) => vec![
                "add_shard".into(),
                s.primary.clone(),
                s.replicas.join(","),
                s.weight.to_string(),
            ],
            Change::RemoveShard(n) => vec!["remove_shard".into(), n.to_string()],
            Change::SetWeight { shard, weight } => {
                vec!["set_weight".into(), shard.to_string(), weight.to_string()]
            }
            Change::MoveListValue {
                table,
                value,
                shard,
            } => vec![
                "move_list_value".into(),
                table.clone(),
                value.clone(),
                shard.to_string(),
            ],
            Change::MoveRange {
                table,
                start,
                end,
                shard,
            } => vec![
                "move_range".into(),
                table.clone(),
                start.to_string(),
                end.to_string(),
                shard.to_string(),
            ],
            Change::GiveArcs(arcs) => vec![
                "give_arcs".into(),
                arcs.iter()
                    .map(|a| format!("{}-{}>{}", a.shard, a.vnode, a.owner))
                    .collect::<Vec<_>>()
                    .join(","),
            ],
        };
        f.join("\u{1f}")
    }

    /// A change written by [`Change::encode`].
    pub fn decode(text: &str) -> Option<Change> {
        let f: Vec<&str> = text.split('\u{1f}').collect();
        Some(match f.as_slice() {
            ["add_shard", primary, replicas, weight] => Change::AddShard(ShardConfig {
                primary: (*primary).to_owned(),
                replicas: replicas
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect(),
                weight: weight.parse().ok()?,
                arcs: Vec::new(),
            }),
            ["remove_shard", n] => Change::RemoveShard(n.parse().ok()?),
            ["set_weight", shard, weight] => Change::SetWeight {
                shard: shard.parse().ok()?,
                weight: weight.parse().ok()?,
            },
            ["move_list_value", table, value, shard] => Change::MoveListValue {
                table: (*table).to_owned(),
                value: (*value).to_owned(),
                shard: shard.parse().ok()?,
            },
            ["move_range", table, start, end, shard] => Change::MoveRange {
                table: (*table).to_owned(),
                start: start.parse().ok()?,
                end: end.parse().ok()?,
                shard: shard.parse().ok()?,
            },
            ["give_arcs", arcs] => Change::GiveArcs(
                arcs.split(',')
                    .map(|a| {
                        let (point, owner) = a.split_once('>')?;
                        let (shard, vnode) = crate::config::parse_arc(point)?;
                        Some(ArcOwner {
                            shard,
                            vnode,
                            owner: owner.parse().ok()?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
            _ => return None,
        })
    }

    /// Whether reference tables are copied to a new shard (their writes
    /// wait during the move).
    pub fn copies_reference_tables(&self) -> bool {
        matches!(self, Change::AddShard(_))
    }

    /// The configuration after the change.
    pub fn apply(&self, config: &Config) -> Result<Config, RebalanceError> {
        let mut next = config.clone();
        let shards = next.shards.len();
        let check_shard = |n: usize| {
            if n >= shards {
                Err(invalid(format!(
                    "there is no shard {n}: shards are numbered 0 to {}",
                    shards.saturating_sub(1)
                )))
            } else {
                Ok(())
            }
        };
        match self {
            Change::AddShard(s) => {
                if next
                    .shards
                    .iter()
                    .any(|o| o.primary == s.primary || o.replicas.contains(&s.primary))
                {
                    return Err(invalid(format!(
                        "{} is already a node of the cluster",
                        s.primary
                    )));
                }
                next.shards.push(s.clone());
            }
            Change::RemoveShard(n) => {
                check_shard(*n)?;
                if next.sharding.default_shard == *n {
                    return Err(invalid(format!(
                        "shard {n} is sharding.default_shard, which holds the unsharded tables: move them and change default_shard first"
                    )));
                }
                for t in &next.sharded_tables {
                    if t.ranges.iter().any(|r| r.shard == *n)
                        || t.lists
                            .iter()
                            .any(|l| l.shard == *n && !l.values.is_empty())
                    {
                        return Err(invalid(format!(
                            "table {} keeps ranges or list values on shard {n}: MOVE them to other shards first",
                            t.table
                        )));
                    }
                }
                if next.shards[*n].weight == 0 {
                    return Err(invalid(format!("shard {n} is already removed (weight 0)")));
                }
                next.shards[*n].weight = 0;
                if next.shards.iter().all(|s| s.weight == 0) {
                    return Err(invalid("the last shard with keys cannot be removed"));
                }
                prune_arcs(&mut next);
            }
            Change::SetWeight { shard, weight } => {
                check_shard(*shard)?;
                if *weight == 0 {
                    return Err(invalid(
                        "a weight is 1 or more: REMOVE SHARD empties a shard",
                    ));
                }
                next.shards[*shard].weight = *weight;
                prune_arcs(&mut next);
            }
            Change::MoveListValue {
                table,
                value,
                shard,
            } => {
                check_shard(*shard)?;
                let t = table_config(&mut next, table, "list")?;
                let text = |v: &toml::Value| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let mut found = None;
                for entry in &mut t.lists {
                    if let Some(i) = entry.values.iter().position(|v| text(v) == *value) {
                        found = Some(entry.values.remove(i));
                    }
                }
                let v = found
                    .ok_or_else(|| invalid(format!("table {table} lists no value {value}")))?;
                t.lists.retain(|e| !e.values.is_empty());
                match t.lists.iter_mut().find(|e| e.shard == *shard) {
                    Some(e) => e.values.push(v),
                    None => t.lists.push(ListConfig {
                        shard: *shard,
                        values: vec![v],
                    }),
                }
            }
            Change::MoveRange {
                table,
                start,
                end,
                shard,
            } => {
                check_shard(*shard)?;
                if start >= end {
                    return Err(invalid("a range [start, end) needs start below end"));
                }
                let t = table_config(&mut next, table, "range")?;
                let mut ranges = Vec::new();
                for r in &t.ranges {
                    if r.end <= *start || r.start >= *end {
                        ranges.push(r.clone());
                        continue;
                    }
                    if r.start < *start {
                        ranges.push(RangeConfig {
                            shard: r.shard,
                            start: r.start,
                            end: *start,
                        });
                    }
                    if r.end > *end {
                        ranges.push(RangeConfig {
                            shard: r.shard,
                            start: *end,
                            end: r.end,
                        });
                    }
                }
                ranges.push(RangeConfig {
                    shard: *shard,
                    start: *start,
                    end: *end,
                });
                ranges.sort_by_key(|r| r.start);
                t.ranges = ranges;
            }
            Change::GiveArcs(arcs) => {
                for a in arcs {
                    check_shard(a.owner)?;
                    let name = format!("{}-{}", a.shard, a.vnode);
                    for s in &mut next.shards {
                        s.arcs.retain(|x| *x != name);
                    }
                    if a.owner != a.shard {
                        next.shards[a.owner].arcs.push(name);
                    }
                }
                for s in &mut next.shards {
                    s.arcs.sort_by_key(|a| crate::config::parse_arc(a));
                }
            }
        }
        next.shard_map()
            .map_err(|e| invalid(format!("the resulting shard map is not valid: {e}")))?;
        Ok(next)
    }
}

/// Drops the given arcs that no longer exist after a weight change: arcs
/// whose end point left the ring, and arcs given to a shard of weight 0
/// (they go back to the shard whose point ends them).
fn prune_arcs(config: &mut Config) {
    let vnodes = config.sharding.vnodes;
    let weights: Vec<u32> = config.shards.iter().map(|s| s.weight).collect();
    for (owner, s) in config.shards.iter_mut().enumerate() {
        s.arcs.retain(|a| {
            crate::config::parse_arc(a).is_some_and(|(shard, vnode)| {
                weights[owner] > 0
                    && weights
                        .get(shard)
                        .is_some_and(|&w| vnode < w.saturating_mul(vnodes))
            })
        });
    }
}

/// The `[[sharded_tables]]` entry of `table`, which must use `function`.
fn table_config<'a>(
    config: &'a mut Config,
    table: &str,
    function: &str,
) -> Result<&'a mut crate::config::ShardedTableConfig, RebalanceError> {
    let t = config
        .sharded_tables
        .iter_mut()
        .find(|t| t.table.eq_ignore_ascii_case(table))
        .ok_or_else(|| invalid(format!("{table} is not a sharded table")))?;
    if t.function != function {
        return Err(invalid(format!(
            "table {table} is sharded by {}, not {function}",
            t.function
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[[users]]
name = "app"
password = "secret"

[[shards]]
primary = "127.0.0.1:5432"

[[shards]]
primary = "127.0.0.1:5433"

[[shards]]
primary = "127.0.0.1:5434"

[[sharded_tables]]
table = "accounts"
column = "id"

[[sharded_tables]]
table = "events"
column = "id"
function = "range"
ranges = [{ shard = 0, start = 0, end = 100 }, { shard = 1, start = 100, end = 200 }]

[[sharded_tables]]
table = "regions"
column = "code"
function = "list"
key_type = "text"
lists = [{ shard = 0, values = ["DE", "FR"] }, { shard = 1, values = ["US"] }]
"#;
        Config::parse(text, "test.toml").expect("valid config")
    }

    #[test]
    fn given_arcs_move_exactly_their_keys_and_survive_the_round_trip() {
        let before = config();
        let map = before.shard_map().expect("map");
        let i = map
            .arc_points()
            .iter()
            .position(|p| p.0 != 2)
            .expect("an arc of shard 0 or 1");
        let (shard, vnode) = map.arc_points()[i];
        let owner = 2;
        let change = Change::GiveArcs(vec![ArcOwner {
            shard,
            vnode,
            owner,
        }]);
        assert_eq!(Change::decode(&change.encode()), Some(change.clone()));
        let next = change.apply(&before).expect("applies");
        assert_eq!(next.shards[owner].arcs, vec![format!("{shard}-{vnode}")]);
        let after = next.shard_map().expect("map");
        let arc = map.ring_arcs()[i];
        for k in 0..20_000i64 {
            let key = shardgate_shardmap::ShardKey::Int(k);
            let want = if map.arc_index(&key) == Some(i) {
                owner
            } else {
                map.hash_shard(&key)
            };
            assert_eq!(after.hash_shard(&key), want, "key {k} (arc {arc:?})");
        }
        // The arc goes home when its owner leaves.
        let removed = Change::RemoveShard(owner).apply(&next).expect("removes");
        assert!(removed.shards[owner].arcs.is_empty());
        removed.shard_map().expect("still a valid map");
    }

    #[test]
    fn a_range_is_split_around_the_moved_part() {
        let next = Change::MoveRange {
            table: "events".into(),
            start: 50,
            end: 150,
            shard: 2,
        }
        .apply(&config())
        .expect("applies");
        let t = next
            .sharded_tables
            .iter()
            .find(|t| t.table == "events")
            .expect("events");
        let got: Vec<(usize, i64, i64)> =
            t.ranges.iter().map(|r| (r.shard, r.start, r.end)).collect();
        assert_eq!(got, vec![(0, 0, 50), (2, 50, 150), (1, 150, 200)]);
    }

    #[test]
    fn a_list_value_moves_to_its_own_shard() {
        let next = Change::MoveListValue {
            table: "regions".into(),
            value: "DE".into(),
            shard: 2,
        }
        .apply(&config())
        .expect("applies");
        let t = next
            .sharded_tables
            .iter()
            .find(|t| t.table == "regions")
            .expect("regions");
        let got: Vec<(usize, Vec<String>)> = t
            .lists
            .iter()
            .map(|l| {
                (
                    l.shard,
                    l.values
                        .iter()
                        .map(|v| v.as_str().unwrap_or("").to_owned())
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, vec!["FR".to_owned()]),
                (1, vec!["US".to_owned()]),
                (2, vec!["DE".to_owned()])
            ]
        );
        assert!(Change::MoveListValue {
            table: "regions".into(),
            value: "XX".into(),
            shard: 2
        }
        .apply(&config())
        .is_err());
    }

    #[test]
    fn removing_a_shard_keeps_its_number_with_weight_zero() {
        let next = Change::RemoveShard(2).apply(&config()).expect("applies");
        assert_eq!(next.shards.len(), 3);
        assert_eq!(next.shards[2].weight, 0);
        // Shard 1 still holds a range and a list value.
        assert!(Change::RemoveShard(1).apply(&config()).is_err());
        // Shard 0 holds the unsharded tables.
        assert!(Change::RemoveShard(0).apply(&config()).is_err());
        assert!(Change::RemoveShard(7).apply(&config()).is_err());
    }

    #[test]
    fn changes_survive_the_metadata_round_trip() {
        let all = [
            Change::AddShard(ShardConfig {
                primary: "127.0.0.1:5440".into(),
                replicas: vec!["127.0.0.1:5441".into(), "127.0.0.1:5442".into()],
                weight: 2,
                arcs: Vec::new(),
            }),
            Change::RemoveShard(3),
            Change::SetWeight {
                shard: 1,
                weight: 4,
            },
            Change::MoveListValue {
                table: "regions".into(),
                value: "DE, FR".into(),
                shard: 2,
            },
            Change::MoveRange {
                table: "events".into(),
                start: -10,
                end: 20,
                shard: 0,
            },
        ];
        for c in all {
            assert_eq!(Change::decode(&c.encode()), Some(c.clone()), "{c:?}");
        }
        assert_eq!(Change::decode("move_range\u{1f}x"), None);
    }

    #[test]
    fn weights_and_new_shards() {
        let next = Change::SetWeight {
            shard: 1,
            weight: 3,
        }
        .apply(&config())
        .expect("applies");
        assert_eq!(next.shards[1].weight, 3);
        assert!(Change::SetWeight {
            shard: 1,
            weight: 0
        }
        .apply(&config())
        .is_err());
        let add = Change::AddShard(ShardConfig {
            primary: "127.0.0.1:5440".into(),
            replicas: vec![],
            weight: 2,
            arcs: Vec::new(),
        });
        assert_eq!(add.apply(&config()).expect("applies").shards.len(), 4);
        assert_eq!(add.describe(), "ADD SHARD '127.0.0.1:5440' WEIGHT 2");
        let dup = Change::AddShard(ShardConfig {
            primary: "127.0.0.1:5433".into(),
            replicas: vec![],
            weight: 1,
            arcs: Vec::new(),
        });
        assert!(dup.apply(&config()).is_err());
    }
}
