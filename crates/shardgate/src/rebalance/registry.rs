//! This proxy's entry in `shardgate_meta.proxies` (docs/ARCHITECTURE.md
//! §10): a registry connection holds an advisory lock while the proxy
//! lives (a move waits for every proxy holding one to hold its writes) and
//! renews a heartbeat every second. The proxy is *fenced* (its writes to
//! sharded and reference tables wait) while the heartbeat is older than
//! half of `sharding.rebalance_proxy_lease_ms`, or after its registry
//! connection dropped, until it registered again and a round of following
//! the metadata completed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use tokio::sync::Notify;

use super::meta::Meta;
use super::RebalanceError;
use crate::runtime::Runtime;

/// How often the lease is renewed.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How often the fence is re-evaluated.
const FENCE_CHECK: Duration = Duration::from_millis(200);

/// This proxy in the registry.
pub struct Registry {
    /// Its id in `shardgate_meta.proxies` (fresh for every process).
    pub id: String,
    /// `host:port/pid`, for operators.
    pub name: String,
    /// The lease (`sharding.rebalance_proxy_lease_ms` at start).
    lease: Duration,
    /// When this registry was made: times below are milliseconds since.
    origin: Instant,
    /// When the last successful renewal was sent (ms since `origin`;
    /// `u64::MAX`: never).
    renewed_ms: AtomicU64,
    /// The lease lapsed (or was never held) and no round of following the
    /// metadata has completed since it was renewed: this proxy may not know
    /// of a move yet.
    lapsed: AtomicBool,
    /// Counts renewals after a lapse; a following round clears `lapsed`
    /// only if none happened while it ran.
    lapses: AtomicU64,
    /// The second key of the advisory lock the registry connection holds
    /// while this proxy lives (`meta::alive`).
    lock_key: i32,
    /// Whether this proxy takes part (a sharded configuration whose monitor
    /// user may create `shardgate_meta`).
    coordinated: AtomicBool,
    /// The fence as last reported (for the log and waiters).
    reported: AtomicBool,
    unfenced: Notify,
}

impl Registry {
    /// The registry entry of a proxy listening on `listen`; fenced until
    /// its first renewal and a round of following after it, when
    /// `coordinated`.
    pub fn new(listen: &str, lease_ms: u64, coordinated: bool) -> Registry {
        Registry {
            id: format!("{:012x}", rand::rng().random::<u64>() >> 16),
            name: format!("{listen}/{}", std::process::id()),
            lease: Duration::from_millis(lease_ms),
            origin: Instant::now(),
            renewed_ms: AtomicU64::new(u64::MAX),
            lapsed: AtomicBool::new(true),
            lapses: AtomicU64::new(0),
            lock_key: (rand::rng().random::<u32>() >> 1) as i32,
            coordinated: AtomicBool::new(coordinated),
            reported: AtomicBool::new(coordinated),
            unfenced: Notify::new(),
        }
    }

    /// The lease in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Whether the lease was renewed within half its length.
    fn fresh(&self) -> bool {
        let at = self.renewed_ms.load(Ordering::SeqCst);
        at != u64::MAX && self.now_ms().saturating_sub(at) <= self.lease_ms() / 2
    }

    /// Whether writes to sharded tables must wait: the lease was not renewed
    /// within half its length (read from the clock at each call, so a proxy
    /// that was stopped is fenced the moment it runs again), or it lapsed
    /// and no round of following the metadata has completed since.
    pub fn fenced(&self) -> bool {
        self.coordinated.load(Ordering::Relaxed)
            && (self.lapsed.load(Ordering::SeqCst) || !self.fresh())
    }

    /// Waits until the fence lifts; `false` at `deadline`.
    pub async fn wait_unfenced(&self, deadline: Instant) -> bool {
        loop {
            let lifted = self.unfenced.notified();
            tokio::pin!(lifted);
            lifted.as_mut().enable();
            if !self.fenced() {
                return true;
            }
            // Re-checked at least every FENCE_CHECK: the clock lifts it too.
            let until = deadline.min(Instant::now() + FENCE_CHECK);
            if tokio::time::timeout_at(until.into(), lifted).await.is_err()
                && Instant::now() >= deadline
            {
                return !self.fenced();
            }
        }
    }

    /// The number of lapses so far; a following round passes it back to
    /// [`Registry::followed`].
    pub(super) fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::SeqCst)
    }

    /// A round of following that began at lapse count `lapses`, after a
    /// renewal, completed: the proxy knows the metadata's holds and map.
    pub(super) fn followed(&self, lapses: u64) {
        if self.fresh() && self.lapses() == lapses {
            self.lapsed.store(false, Ordering::SeqCst);
            self.check_fence();
        }
    }

    /// The registry connection is gone, and with it the advisory lock that
    /// says this proxy lives: a move elsewhere may stop waiting for it now,
    /// so writes wait until it has registered again and read the metadata.
    fn lost(&self) {
        self.lapsed.store(true, Ordering::SeqCst);
        self.lapses.fetch_add(1, Ordering::SeqCst);
        self.check_fence();
    }

    /// Takes the advisory lock and writes this proxy's row, on a new
    /// registry connection.
    async fn register(&self, meta: &Meta) -> Result<(), RebalanceError> {
        let client = &meta.0.client;
        client
            .execute(
                "SELECT pg_advisory_lock($1, $2)",
                &[&super::meta::LOCK_CLASS, &self.lock_key],
            )
            .await
            .map_err(|e| meta.0.err(e))?;
        client
            .execute(
                "INSERT INTO shardgate_meta.proxies (id, name, lock_key) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), lock_key = $3",
                &[&self.id, &self.name, &self.lock_key],
            )
            .await
            .map_err(|e| meta.0.err(e))?;
        Ok(())
    }

    /// Logs a change of the fence and wakes waiters when it lifts.
    fn check_fence(&self) {
        let fenced = self.fenced();
        let was = self.reported.swap(fenced, Ordering::SeqCst);
        if was && !fenced {
            self.unfenced.notify_waiters();
            tracing::info!("lease in shardgate_meta held: writes to sharded tables go on");
        } else if fenced && !was {
            tracing::error!(
                lease_ms = self.lease_ms(),
                "cannot renew this proxy's lease in shardgate_meta (sharding.metadata_node): writes to sharded tables wait until it answers, so that a move run by another proxy cannot lose them"
            );
        }
    }

    /// Leaves the cluster: no fence, no lease.
    fn uncoordinate(&self) {
        self.coordinated.store(false, Ordering::Relaxed);
        self.check_fence();
    }

    /// Renews the lease once on `meta` (registering first if needed).
    async fn renew(&self, meta: &Meta) -> Result<(), RebalanceError> {
        let sent = Instant::now();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.id];
        let renewal = meta.0.client.execute(
            "UPDATE shardgate_meta.proxies SET heartbeat_at = now() WHERE id = $1",
            &params,
        );
        match tokio::time::timeout(self.lease / 4, renewal).await {
            Ok(Ok(_)) => {
                if !self.fresh() {
                    // Lapsed (or never held): other proxies may have moved
                    // rows meanwhile; the fence stays until a round of
                    // following has read the metadata.
                    self.lapsed.store(true, Ordering::SeqCst);
                    self.lapses.fetch_add(1, Ordering::SeqCst);
                }
                let sent_ms = sent.saturating_duration_since(self.origin).as_millis() as u64;
                self.renewed_ms.store(sent_ms, Ordering::SeqCst);
                self.check_fence();
                Ok(())
            }
            Ok(Err(e)) => Err(meta.0.err(e)),
            Err(_) => Err(RebalanceError::Invalid(
                "the lease renewal did not answer in time".into(),
            )),
        }
    }

    /// Leaves the registry at shutdown (its row goes; its lock goes with
    /// the connection either way).
    pub async fn leave(rt: &Runtime) {
        if !rt.registry.coordinated.load(Ordering::Relaxed) {
            return;
        }
        let config = rt.snapshot().config.clone();
        let gone = async {
            let conn = super::meta::open_node(&config).await?;
            conn.client
                .execute(
                    "DELETE FROM shardgate_meta.proxies WHERE id = $1",
                    &[&rt.registry.id],
                )
                .await
                .map_err(|e| conn.err(e))
        };
        match tokio::time::timeout(Duration::from_secs(3), gone).await {
            Ok(Ok(_)) => tracing::info!("left shardgate_meta.proxies"),
            _ => tracing::warn!("could not remove this proxy's row from shardgate_meta.proxies; its lock goes with its connection"),
        }
    }

    /// Registers and renews until shutdown.
    /// Returns once the first renewal succeeded or failed.
    pub async fn spawn(rt: Arc<Runtime>) {
        if !rt.registry.coordinated.load(Ordering::Relaxed) {
            return;
        }
        let first = Arc::new(Notify::new());
        let ready = first.clone();
        let watch = rt.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FENCE_CHECK).await;
                watch.registry.check_fence();
                if watch.shutting_down() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut meta: Option<Meta> = None;
            let mut beats = 0u64;
            loop {
                if rt.shutting_down() {
                    return;
                }
                if meta.as_ref().is_none_or(|m| m.0.client.is_closed()) {
                    let watcher = rt.clone();
                    let opened =
                        Meta::open_watched(&rt.snapshot().config, move || watcher.registry.lost())
                            .await;
                    let registered = match opened {
                        Ok(m) => rt.registry.register(&m).await.map(|()| m),
                        Err(e) => Err(e),
                    };
                    match registered {
                        Ok(m) => meta = Some(m),
                        Err(e) if e.insufficient_privilege() => {
                            tracing::error!(error = %e, "the monitor user cannot create schema shardgate_meta: this proxy is not coordinated with others during rebalancing (grant it CREATE on sharding.rebalance_database)");
                            rt.registry.uncoordinate();
                            first.notify_one();
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot reach shardgate_meta to renew the lease")
                        }
                    }
                }
                if let Some(m) = &meta {
                    if let Err(e) = rt.registry.renew(m).await {
                        tracing::debug!(error = %e, "lease renewal failed");
                        rt.registry.lost();
                        meta = None;
                    } else if beats.is_multiple_of(600) {
                        let _ = m
                            .0
                            .client
                            .execute(
                                &format!(
                                    "DELETE FROM shardgate_meta.proxies q WHERE heartbeat_at < now() - interval '1 hour' AND NOT {}",
                                    super::meta::alive("q.id")
                                ),
                                &[],
                            )
                            .await;
                    }
                }
                beats += 1;
                first.notify_one();
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(15), ready.notified()).await;
    }
}
