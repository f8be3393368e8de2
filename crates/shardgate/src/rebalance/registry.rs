//! This proxy's entry in `shardgate_meta.proxies` and its lease
//! (docs/ARCHITECTURE.md §10): every second the proxy renews its heartbeat;
//! a move waits for every proxy whose lease is live to hold its writes to
//! the moving keys. A proxy that could not renew its lease for half of
//! `sharding.rebalance_proxy_lease_ms` is *fenced*: its writes to sharded
//! and reference tables wait until it renews, because a move elsewhere may
//! by then count it as gone and stop waiting for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// When the last successful renewal was sent.
    renewed: Mutex<Option<Instant>>,
    /// Whether this proxy takes part (a sharded configuration whose monitor
    /// user may create `shardgate_meta`).
    coordinated: AtomicBool,
    fenced: AtomicBool,
    unfenced: Notify,
}

impl Registry {
    /// The registry entry of a proxy listening on `listen`; fenced until
    /// its first renewal when `coordinated`.
    pub fn new(listen: &str, lease_ms: u64, coordinated: bool) -> Registry {
        Registry {
            id: format!("{:012x}", rand::rng().random::<u64>() >> 16),
            name: format!("{listen}/{}", std::process::id()),
            lease: Duration::from_millis(lease_ms),
            renewed: Mutex::new(None),
            coordinated: AtomicBool::new(coordinated),
            fenced: AtomicBool::new(coordinated),
            unfenced: Notify::new(),
        }
    }

    /// The lease in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    /// Whether writes to sharded tables must wait (one relaxed load).
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
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
            if tokio::time::timeout_at(deadline.into(), lifted)
                .await
                .is_err()
            {
                return !self.fenced();
            }
        }
    }

    /// Re-evaluates the fence from the time of the last renewal.
    fn check_fence(&self) {
        let fenced = self.coordinated.load(Ordering::Relaxed)
            && self
                .renewed
                .lock()
                .expect("lease lock")
                .is_none_or(|t| t.elapsed() > self.lease / 2);
        let was = self.fenced.swap(fenced, Ordering::SeqCst);
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
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.id, &self.name];
        let renewal = meta.0.client.execute(
            "INSERT INTO shardgate_meta.proxies (id, name) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            &params,
        );
        match tokio::time::timeout(self.lease / 4, renewal).await {
            Ok(Ok(_)) => {
                *self.renewed.lock().expect("lease lock") = Some(sent);
                self.check_fence();
                Ok(())
            }
            Ok(Err(e)) => Err(meta.0.err(e)),
            Err(_) => Err(RebalanceError::Invalid(
                "the lease renewal did not answer in time".into(),
            )),
        }
    }

    /// Leaves the registry at shutdown, so that moves stop waiting for this
    /// proxy at once rather than when its lease expires.
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
            _ => tracing::warn!("could not leave shardgate_meta.proxies: moves wait for this proxy's lease to expire"),
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
                    match Meta::open(&rt.snapshot().config).await {
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
                        meta = None;
                    } else if beats.is_multiple_of(600) {
                        let _ = m
                            .0
                            .client
                            .execute(
                                "DELETE FROM shardgate_meta.proxies WHERE heartbeat_at < now() - interval '1 hour'",
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
