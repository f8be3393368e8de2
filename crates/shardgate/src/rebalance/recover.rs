//! Jobs whose proxy is gone (docs/ARCHITECTURE.md §10): its registry
//! connection, and with it its advisory lock, is gone (`meta::alive`). A live proxy claims such a
//! job (one claim wins) and resolves it: a job whose decision is recorded
//! (phase `switched`) is finished, its prepared move transactions commit;
//! any other is undone to its last durable step (its prepared transactions
//! roll back; nothing of it was visible) and resumed under its id: a
//! logical move from its slots and stages (`stage`), a `block_writes`
//! move from its start. Until then every proxy holds the job's moving keys
//! (`follow`).

use std::sync::Arc;

use super::change::Change;
use super::db::Conn;
use super::meta::{alive, Meta, UNFINISHED};
use super::RebalanceError;
use crate::runtime::Runtime;

/// Claims and resolves the unfinished jobs of proxies that are gone (and
/// of this proxy, if one was left half resolved: the caller holds the job
/// lock, so none of this proxy's jobs runs); returns the jobs to
/// resume. `conn` is a connection to the metadata node, whose registry exists.
pub(super) async fn recover(rt: &Arc<Runtime>, conn: &Conn) -> Vec<(u64, Change)> {
    match recover_inner(rt, conn).await {
        Ok(restart) => restart,
        Err(e) => {
            tracing::error!(error = %e, "cannot resolve the unfinished rebalancing jobs of proxies that are gone");
            Vec::new()
        }
    }
}

async fn recover_inner(
    rt: &Arc<Runtime>,
    conn: &Conn,
) -> Result<Vec<(u64, Change)>, RebalanceError> {
    let config = rt.snapshot().config.clone();
    let db = &config.sharding.rebalance_database;
    let mut rows = conn
        .client
        .query(
            &format!(
                "UPDATE shardgate_meta.jobs j SET owner = $1 WHERE {UNFINISHED} \
                 AND (j.owner IS NULL OR j.owner = $1 OR NOT {}) RETURNING id, change, phase",
                alive("j.owner")
            ),
            &[&rt.registry.id],
        )
        .await
        .map_err(|e| conn.err(e))?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    rows.sort_by_key(|r| r.get::<_, i64>(0));
    let meta = Meta::open(&config).await?;
    let mut resume = Vec::new();
    for row in rows {
        let (id, stored, phase): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let change = Change::decode(&stored);
        // Phases past the decision (recorded with the new map version).
        let decided = matches!(phase.as_str(), "switched" | "cleanup");
        let verb = if decided { "COMMIT" } else { "ROLLBACK" };
        for node in super::move_job::job_nodes(&config, change.as_ref()) {
            let conn = Conn::open(&config, &node, db).await?;
            let gids = conn
                .client
                .query(
                    "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE $1 AND database = current_database()",
                    &[&format!("shardgate\\_move\\_{id}\\_%")],
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
            if let Some(c) = &change {
                super::move_job::discard(&config, id as u64, c).await;
            }
            // Mode logical deletes the moved rows from the sources after
            // the switch: what a stopped job left there goes now.
            let mut after = (*config).clone();
            if let Some(shards) = switched_to(&meta, id).await? {
                after.shards = shards;
            }
            let map = after
                .shard_map()
                .map_err(|e| RebalanceError::Invalid(e.to_string()))?;
            let removed = super::verify::remove_misplaced(&after, &map).await?;
            if removed > 0 {
                tracing::info!(
                    job = id,
                    rows = removed,
                    "copies a stopped move left on its sources removed"
                );
            }
            meta.update_job(id as u64, "done", 0, 0, None).await?;
            tracing::info!(
                job = id,
                "a job whose proxy is gone finished: its map version was already decided"
            );
            continue;
        }
        match change {
            Some(c) => {
                // Its slots and stages stay: the job resumes from them.
                tracing::warn!(job = id, phase = %phase, "the unfinished job of a proxy that is gone was undone to its last durable step; resuming it");
                resume.push((id as u64, c));
            }
            None => {
                meta.update_job(
                    id as u64,
                    "failed",
                    0,
                    0,
                    Some("its proxy stopped before the cutover and its change cannot be read back"),
                )
                .await?;
                tracing::error!(job = id, change = %stored, "interrupted job undone; its change cannot be read back")
            }
        }
    }
    Ok(resume)
}

/// The shard list job `id` switched to.
async fn switched_to(
    meta: &Meta,
    id: i64,
) -> Result<Option<Vec<crate::config::ShardConfig>>, RebalanceError> {
    let row = meta
        .0
        .client
        .query_opt(
            "SELECT shards FROM shardgate_meta.shard_maps WHERE job = $1 ORDER BY version DESC LIMIT 1",
            &[&id],
        )
        .await
        .map_err(|e| meta.0.err(e))?;
    Ok(row.and_then(|r| super::meta::decode_shards(&r.get::<_, String>(0))))
}
