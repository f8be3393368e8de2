//! Following the shard map other proxies record (docs/ARCHITECTURE.md §10):
//! every second the proxy reads the newest map version in `shardgate_meta`;
//! when another proxy's job moved rows (the recorded shard list differs
//! from the one in force and no job of this proxy runs), it switches to
//! that map. This bounds how long a proxy routes by a map the cluster has
//! moved past; it does not hold this proxy's writes during another proxy's
//! move (see the list of what is left).

use std::sync::Arc;
use std::time::Duration;

use super::db::Conn;
use super::meta::latest_shards_on;
use crate::runtime::Runtime;

/// How often the metadata is read.
const MAP_POLL: Duration = Duration::from_secs(1);

/// Starts following; the task ends with the process.
pub fn spawn(rt: Arc<Runtime>) {
    tokio::spawn(async move {
        let mut conn: Option<Conn> = None;
        loop {
            tokio::time::sleep(MAP_POLL).await;
            if rt.shutting_down() {
                return;
            }
            let snap = rt.snapshot();
            if snap.sharding.is_none() {
                continue;
            }
            if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                let Some(first) = snap.config.shards.first() else {
                    continue;
                };
                conn = Conn::open(
                    &snap.config,
                    &first.primary,
                    &snap.config.sharding.rebalance_database,
                )
                .await
                .ok();
            }
            let Some(c) = &conn else { continue };
            match latest_shards_on(c).await {
                Ok(Some((version, shards))) => follow(&rt, version, shards).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read shard map versions");
                    conn = None;
                }
            }
        }
    });
}

/// Switches to the recorded shard list if it differs and no job of this
/// proxy runs.
async fn follow(rt: &Arc<Runtime>, version: u64, shards: Vec<crate::config::ShardConfig>) {
    let Ok(_no_job) = rt.jobs.running.try_lock() else {
        return;
    };
    let _serial = rt.reconfiguring.lock().await;
    let snap = rt.snapshot();
    if super::meta::same_placement(&shards, &snap.config.shards) {
        return;
    }
    let mut next = (*snap.config).clone();
    next.shards = shards;
    if let Err(e) = next.shard_map() {
        tracing::error!(version, error = %e, "the recorded shard map version is not valid here; keeping the map in force");
        return;
    }
    super::move_job::install(rt, &next, None, None);
    tracing::warn!(
        version,
        shards = next.shards.len(),
        "another proxy moved rows: routing by shard map version {version} from shardgate_meta"
    );
}
