//! `VERIFY JOB id`: after a job, every row of every sharded table is read
//! (its key only) on every shard's primary and checked against the map in
//! force: a row on a shard that does not own its key is misplaced.

use std::sync::Arc;

use shardgate_shardmap::{ShardKey, ShardMap, TableRule};

use super::db::Conn;
use super::RebalanceError;
use crate::config::Config;
use crate::runtime::Runtime;

/// What a verification found: one line per shard and table, and the
/// number of misplaced rows in all.
pub struct Verified {
    /// `shard 1, accounts: 3300 rows, 0 misplaced`, ...
    pub lines: Vec<String>,
    /// Rows on a shard that does not own their key.
    pub misplaced: u64,
}

/// Checks every row's shard under the map in force.
pub async fn verify_placement(rt: &Arc<Runtime>) -> Result<Verified, RebalanceError> {
    let snap = rt.snapshot();
    let sharding = snap
        .sharding
        .as_ref()
        .ok_or_else(|| RebalanceError::Invalid("the configuration shards no table".into()))?;
    let map = &sharding.map;
    let config = &snap.config;
    let mut out = Verified {
        lines: Vec::new(),
        misplaced: 0,
    };
    for (shard, s) in config.shards.iter().enumerate() {
        let conn = Conn::open(config, &s.primary, &config.sharding.rebalance_database).await?;
        for rule in map.tables() {
            let (n, bad) = misplaced(&conn, map, shard, rule).await?;
            out.misplaced += bad.len() as u64;
            out.lines.push(format!(
                "shard {shard}, {}: {n} rows, {} misplaced",
                rule.table,
                bad.len()
            ));
        }
    }
    Ok(out)
}

/// Deletes every row a shard holds whose key `map` gives to another
/// shard (copies a move left on its sources); returns how many went.
pub(super) async fn remove_misplaced(
    config: &Config,
    map: &ShardMap,
) -> Result<u64, RebalanceError> {
    let mut removed = 0;
    for (shard, s) in config.shards.iter().enumerate() {
        let conn = Conn::open(config, &s.primary, &config.sharding.rebalance_database).await?;
        for rule in map.tables() {
            let (_, bad) = misplaced(&conn, map, shard, rule).await?;
            let keys: Vec<String> = bad.into_iter().flatten().collect();
            removed += super::move_job::delete_keys(&conn, rule, &keys).await?;
        }
    }
    Ok(removed)
}

/// The rows of `rule`'s table on `shard` (through `conn`), and the keys of
/// those `map` gives to another shard (`None`: a NULL or unreadable key).
async fn misplaced(
    conn: &Conn,
    map: &ShardMap,
    shard: usize,
    rule: &TableRule,
) -> Result<(u64, Vec<Option<String>>), RebalanceError> {
    let (mut n, mut bad) = (0u64, Vec::new());
    conn.scan_keys(rule, |key, _| {
        n += 1;
        let owner = key
            .and_then(|text| ShardKey::parse_text(rule.key_type, text).ok())
            .and_then(|k| map.shard_for(rule, &k).ok());
        if owner != Some(shard) {
            bad.push(key.map(str::to_owned));
        }
    })
    .await?;
    Ok((n, bad))
}
