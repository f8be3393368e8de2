//! Taking part in other proxies' moves (docs/ARCHITECTURE.md §10). On
//! every notification on channel `shardgate_meta`, and at least once a
//! second, the proxy reads the metadata and:
//!
//! - holds the moving keys of an unfinished job of another proxy (or of an
//!   earlier run of itself) in the phase the job asks (`jobs.hold`:
//!   `copying`, `cutover`), and acknowledges once its sessions are at the
//!   gate (`proxies.ack_job`, `ack_hold`); the job waits for that. At
//!   `cleaning` (the job switched) it routes by the new map, holding only
//!   statements that cannot name their keys;
//! - switches to the newest settled map version (its job done) when it
//!   differs from its own, opening the hold;
//! - takes over the jobs of proxies that are gone (`recover`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_shardmap::Transition;
use tokio::sync::Notify;

use super::change::Change;
use super::db::Conn;
use super::gate::{GatePhase, MoveGate};
use super::meta::{decode_shards, latest_shards_on, same_placement, CHANNEL, UNFINISHED};
use super::RebalanceError;
use crate::config::{Config, ShardConfig};
use crate::runtime::Runtime;

/// How often the metadata is read without a notification.
const POLL: Duration = Duration::from_secs(1);

/// Another proxy's job, as this proxy holds it.
struct Held {
    job: u64,
    gate: Arc<MoveGate>,
    /// The configuration before the move (back to it if the job fails).
    before: Config,
    /// The configuration after it.
    next: Config,
    /// The snapshot that carries the gate.
    version: u64,
    /// The hold acknowledged last.
    acked: Option<String>,
    /// Once the job switched: the gate of the new map while the sources
    /// delete the rows they gave.
    cleaning: Option<Arc<MoveGate>>,
}

/// An unfinished job that asks every proxy to hold its keys.
struct Asked {
    job: u64,
    change: String,
    hold: String,
    mode: String,
    from: String,
}

/// Runs one round now (before clients are served), then follows in the
/// background until shutdown.
pub async fn spawn(rt: Arc<Runtime>) {
    if rt.snapshot().sharding.is_none() {
        return;
    }
    let heard = Arc::new(Notify::new());
    let mut state = Follower {
        conn: None,
        held: None,
        heard: heard.clone(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(15), state.round(&rt)).await;
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(POLL, heard.notified()).await;
            if rt.shutting_down() {
                return;
            }
            state.round(&rt).await;
        }
    });
}

struct Follower {
    conn: Option<Conn>,
    held: Option<Held>,
    heard: Arc<Notify>,
}

impl Follower {
    async fn round(&mut self, rt: &Arc<Runtime>) {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = self.listen(rt).await.ok();
        }
        if self.conn.is_none() {
            return;
        }
        let lapses = rt.registry.lapses();
        let restart = match self.step(rt).await {
            Ok(restart) => {
                rt.registry.followed(lapses);
                restart
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read shardgate_meta");
                self.conn = None;
                return;
            }
        };
        for (id, change) in restart {
            if let Err(e) = super::move_job::resume(rt, id, change).await {
                tracing::error!(job = id, error = %e, "cannot resume a rebalancing job taken over from a proxy that is gone");
            }
        }
    }

    async fn listen(&self, rt: &Arc<Runtime>) -> Result<Conn, RebalanceError> {
        let snap = rt.snapshot();
        let conn = Conn::open_listening(
            &snap.config,
            super::meta::metadata_node(&snap.config)?,
            &snap.config.sharding.rebalance_database,
            self.heard.clone(),
        )
        .await?;
        conn.run(&format!("LISTEN {CHANNEL}")).await?;
        Ok(conn)
    }

    /// One round; returns the jobs taken over, to start again once this
    /// round no longer holds the job lock.
    async fn step(&mut self, rt: &Arc<Runtime>) -> Result<Vec<(u64, Change)>, RebalanceError> {
        let Ok(_no_job) = rt.jobs.running.try_lock() else {
            return Ok(Vec::new());
        };
        let conn = self.conn.as_ref().expect("connected");
        // Jobs and holds exist only once a proxy of this version made the
        // registry.
        let (restart, asked) = if super::meta::has_registry(conn).await? {
            (
                super::recover(rt, conn).await,
                asked(conn, &rt.registry.id).await?,
            )
        } else {
            (Vec::new(), None)
        };
        let settled = latest_shards_on(conn).await?;
        if let Some(held) = &self.held {
            if asked.as_ref().is_none_or(|a| a.job != held.job) {
                let held = self.held.take().expect("held");
                let done = settled
                    .as_ref()
                    .is_some_and(|(_, s)| same_placement(s, &held.next.shards));
                let _serial = rt.reconfiguring.lock().await;
                super::move_job::install(
                    rt,
                    if done { &held.next } else { &held.before },
                    None,
                    None,
                );
                held.gate.open();
                if let Some(c) = &held.cleaning {
                    c.open();
                }
                tracing::info!(
                    job = held.job,
                    switched = done,
                    "another proxy's move ended: its hold is open"
                );
            }
        }
        if self.held.is_none() {
            if let Some((version, shards)) = settled {
                follow(rt, version, shards).await;
            }
        }
        if let Some(a) = asked {
            self.hold(rt, a).await?;
        }
        Ok(restart)
    }

    /// Holds the moving keys of `a` and acknowledges it.
    async fn hold(&mut self, rt: &Arc<Runtime>, a: Asked) -> Result<(), RebalanceError> {
        if self.held.is_none() {
            let Some(held) = self.install(rt, &a).await else {
                return Ok(());
            };
            self.held = Some(held);
        }
        let held = self.held.as_mut().expect("held");
        if a.hold == "cleaning" {
            // The job switched: keyed statements go to the new owners now.
            if held.cleaning.is_none() {
                let _serial = rt.reconfiguring.lock().await;
                let cleaning = Arc::new(held.gate.cleaning());
                super::move_job::install(rt, &held.next, Some(cleaning.clone()), None);
                held.gate.open();
                held.cleaning = Some(cleaning);
                tracing::info!(
                    job = a.job,
                    "another proxy's move switched: routing by its new map"
                );
            }
            return Ok(());
        }
        if held.acked.as_deref() == Some(a.hold.as_str()) {
            return Ok(());
        }
        let timeout = Duration::from_millis(held.next.sharding.rebalance_hold_timeout_ms);
        if !rt
            .clients
            .wait_snapshots(held.version, Instant::now() + timeout)
            .await
        {
            tracing::warn!(job = a.job, "transactions begun before another proxy's move did not end: not acknowledging its hold yet");
            return Ok(());
        }
        if a.hold.starts_with("cutover") {
            // `cutover`, then `cutover 2`, ... for the job's attempts: an
            // acknowledgement names the attempt it holds for.
            held.gate.cut_over();
            if !rt
                .clients
                .wait_moves_settled(Instant::now() + timeout)
                .await
            {
                tracing::warn!(job = a.job, "statements on moving keys did not finish: not acknowledging another proxy's cutover yet");
                return Ok(());
            }
        }
        if a.hold == "copying" && held.gate.phase() == GatePhase::CuttingOver {
            // The job's cutover gave up: held statements go on.
            held.gate.resume_copying();
        }
        let conn = self.conn.as_ref().expect("connected");
        conn.client
            .execute(
                "UPDATE shardgate_meta.proxies SET ack_job = $2, ack_hold = $3 WHERE id = $1",
                &[&rt.registry.id, &(a.job as i64), &a.hold],
            )
            .await
            .map_err(|e| conn.err(e))?;
        tracing::info!(job = a.job, hold = %a.hold, "holding another proxy's moving keys");
        held.acked = Some(a.hold);
        Ok(())
    }

    /// Installs a snapshot with the gate of `a`'s move.
    async fn install(&self, rt: &Arc<Runtime>, a: &Asked) -> Option<Held> {
        let _serial = rt.reconfiguring.lock().await;
        let snap = rt.snapshot();
        let from = decode_shards(&a.from).unwrap_or_default();
        if !same_placement(&from, &snap.config.shards) {
            tracing::error!(job = a.job, "another proxy's move starts from a shard map this proxy does not route by: not holding it (the move waits, then gives up)");
            return None;
        }
        let gate = (|| {
            let change = Change::decode(&a.change)?;
            let next = change.apply(&snap.config).ok()?;
            let to = Arc::new(next.shard_map().ok()?);
            let from = snap.sharding.as_ref()?.map.clone();
            let t = Transition::new(from, to).ok()?;
            let gate = MoveGate::new(t, change.copies_reference_tables(), a.mode != "logical");
            Some((next, Arc::new(gate)))
        })();
        let Some((next, gate)) = gate else {
            tracing::error!(job = a.job, change = %a.change, "cannot read another proxy's move: not holding it");
            return None;
        };
        let version = super::move_job::install(rt, &next, Some(gate.clone()), Some(&snap));
        Some(Held {
            job: a.job,
            gate,
            before: (*snap.config).clone(),
            next,
            version,
            acked: None,
            cleaning: None,
        })
    }
}

/// The unfinished job of another proxy (or of an earlier run) that asks for a
/// hold (the registry exists).
async fn asked(conn: &Conn, me: &str) -> Result<Option<Asked>, RebalanceError> {
    let row = conn
        .client
        .query_opt(
            &format!(
                "SELECT id, change, hold, coalesce(mode, ''), coalesce(from_shards, '') \
                 FROM shardgate_meta.jobs WHERE {UNFINISHED} AND hold IS NOT NULL \
                 AND owner IS DISTINCT FROM $1 ORDER BY id LIMIT 1"
            ),
            &[&me],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(row.map(|r| Asked {
        job: r.get::<_, i64>(0) as u64,
        change: r.get(1),
        hold: r.get(2),
        mode: r.get(3),
        from: r.get(4),
    }))
}

/// Switches to the recorded shard list if it differs.
async fn follow(rt: &Arc<Runtime>, version: u64, shards: Vec<ShardConfig>) {
    let _serial = rt.reconfiguring.lock().await;
    let snap = rt.snapshot();
    if same_placement(&shards, &snap.config.shards) {
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
