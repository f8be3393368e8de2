//! How much hash-sharded data each arc of the ring holds, read from the
//! shards' primaries: every row's key and size (`pg_column_size` of the
//! row, so dead tuples a move left behind do not count) are read and the
//! row is placed on its arc.

use shardgate_shardmap::{Function, ShardKey, ShardMap};

use super::db::Conn;
use super::plan::ArcLoad;
use super::RebalanceError;
use crate::config::Config;

/// The load of every arc of `map`'s ring, in ring order.
pub(super) async fn arc_loads(
    config: &Config,
    map: &ShardMap,
) -> Result<Vec<ArcLoad>, RebalanceError> {
    let arcs = map.ring_arcs();
    let mut loads: Vec<ArcLoad> = arcs
        .iter()
        .zip(map.arc_points())
        .map(|(a, p)| ArcLoad {
            point: *p,
            owner: a.2,
            rows: 0,
            bytes: 0,
        })
        .collect();
    let mut bytes = vec![0u64; loads.len()];
    let db = &config.sharding.rebalance_database;
    for s in &config.shards {
        let conn = Conn::open(config, &s.primary, db).await?;
        for rule in map
            .tables()
            .iter()
            .filter(|r| matches!(r.function, Function::Hash))
        {
            let mut rows = vec![0u64; loads.len()];
            conn.scan_keys(rule, |key, size| {
                let arc = key
                    .and_then(|text| ShardKey::parse_text(rule.key_type, text).ok())
                    .and_then(|k| map.arc_index(&k));
                if let Some(i) = arc {
                    rows[i] += 1;
                    bytes[i] += size;
                }
            })
            .await?;
            for (i, n) in rows.iter().enumerate() {
                loads[i].rows += n;
            }
        }
    }
    for (l, b) in loads.iter_mut().zip(bytes) {
        l.bytes = b;
    }
    Ok(loads)
}
