//! After a restart: jobs an earlier run left unfinished (docs/ARCHITECTURE.md
//! §10). A job whose decision is recorded (phase `switched`) is finished:
//! its prepared move transactions commit before any client is served. Any
//! other is undone (its prepared transactions roll back; nothing of it was
//! visible) and started again as a new job.

use std::sync::Arc;

use super::change::Change;
use super::db::Conn;
use super::meta::Meta;
use super::RebalanceError;
use crate::runtime::Runtime;

/// Resolves unfinished jobs; returns the changes to start again.
pub async fn recover(rt: &Arc<Runtime>) -> Vec<Change> {
    let snap = rt.snapshot();
    if snap.sharding.is_none() {
        return Vec::new();
    }
    match recover_inner(rt).await {
        Ok(restart) => restart,
        Err(e) => {
            tracing::error!(error = %e, "cannot check for unfinished rebalancing jobs");
            Vec::new()
        }
    }
}

async fn recover_inner(rt: &Arc<Runtime>) -> Result<Vec<Change>, RebalanceError> {
    let config = rt.snapshot().config.clone();
    let Some(first) = config.shards.first() else {
        return Ok(Vec::new());
    };
    let db = &config.sharding.rebalance_database;
    let probe = Conn::open(&config, &first.primary, db).await?;
    let exists: bool = probe
        .client
        .query_one("SELECT to_regclass('shardgate_meta.jobs') IS NOT NULL", &[])
        .await
        .map_err(|e| probe.err(e))?
        .get(0);
    drop(probe);
    if !exists {
        return Ok(Vec::new());
    }
    let meta = Meta::open(&config).await?;
    let rows = meta
        .0
        .client
        .query(
            "SELECT id, change, phase FROM shardgate_meta.jobs WHERE phase NOT IN ('done', 'failed') ORDER BY id",
            &[],
        )
        .await
        .map_err(|e| meta.0.err(e))?;
    let mut restart = Vec::new();
    for row in rows {
        let (id, stored, phase): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let change = Change::decode(&stored);
        let mut nodes: Vec<String> = config.shards.iter().map(|s| s.primary.clone()).collect();
        if let Some(Change::AddShard(s)) = &change {
            if !nodes.contains(&s.primary) {
                nodes.push(s.primary.clone());
            }
        }
        let decided = phase == "switched";
        let verb = if decided { "COMMIT" } else { "ROLLBACK" };
        for node in &nodes {
            let conn = Conn::open(&config, node, db).await?;
            let gids = conn
                .client
                .query(
                    "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1 AND database = current_database()",
                    &[&format!("shardgate_move_{id}_%")],
                )
                .await
                .map_err(|e| conn.err(e))?;
            conn.client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name LIKE $1 AND NOT active",
                    &[&format!("shardgate_move_{id}_%")],
                )
                .await
                .map_err(|e| conn.err(e))?;
            for g in gids {
                let gid: String = g.get(0);
                conn.run(&format!("{verb} PREPARED '{gid}'")).await?;
                tracing::info!(job = id, node = %node, gid = %gid, "{verb} PREPARED of an interrupted move");
            }
        }
        if decided {
            meta.update_job(id as u64, "done", 0, 0, None).await?;
            tracing::info!(
                job = id,
                "interrupted job finished: its map version was already decided"
            );
        } else {
            meta.update_job(
                id as u64,
                "failed",
                0,
                0,
                Some("interrupted by a proxy restart before its cutover; undone and started again"),
            )
            .await?;
            match change {
                Some(c) => {
                    tracing::warn!(job = id, phase = %phase, "interrupted job undone; starting it again");
                    restart.push(c);
                }
                None => {
                    tracing::error!(job = id, change = %stored, "interrupted job undone; its change cannot be read back")
                }
            }
        }
    }
    Ok(restart)
}
