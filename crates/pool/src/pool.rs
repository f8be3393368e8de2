//! Pools of server connections, one per (node, user, database).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{ConnectError, ConnectParams, ServerConn};

/// Idle connections are probed for a closed socket only after this long.
const HEALTH_PROBE_AFTER: Duration = Duration::from_millis(500);

/// Identifies one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// `host:port` of the node.
    pub addr: String,
    /// Server role.
    pub user: String,
    /// Database.
    pub database: String,
}

/// Limits of one pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most server connections open at once.
    pub max_size: usize,
    /// How long a client waits for a free connection.
    pub checkout_timeout: Duration,
    /// Idle connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// Connections older than this are closed instead of reused.
    pub max_lifetime: Duration,
}

/// Why no connection could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every connection stayed busy for the whole `pool_timeout`.
    #[error(
        "no server connection to {addr} became free within {timeout_ms} ms (pool_size {size})"
    )]
    Timeout {
        /// Node address.
        addr: String,
        /// The configured wait.
        timeout_ms: u128,
        /// The configured pool size.
        size: usize,
    },
    /// Opening a new connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The pool was closed (shutdown).
    #[error("pool for {0} is closed")]
    Closed(String),
}

/// Counters of one pool, for the admin console and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle plus in use).
    pub open: u64,
    /// Connections idle in the pool.
    pub idle: u64,
    /// Clients waiting for a connection.
    pub waiting: u64,
    /// Connections handed out since start.
    pub checkouts: u64,
    /// Checkouts that timed out.
    pub timeouts: u64,
}

struct Inner {
    key: PoolKey,
    params: ConnectParams,
    config: PoolConfig,
    slots: Arc<Semaphore>,
    /// Boxed so handing a connection out and back moves a pointer, not the
    /// whole connection state (measured: ~800 instructions per transaction).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    open: AtomicU64,
    waiting: AtomicU64,
    checkouts: AtomicU64,
    timeouts: AtomicU64,
}

/// A pool of connections to one node as one user to one database.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.inner.key)
            .finish()
    }
}

impl Pool {
    /// An empty pool; connections are opened on demand.
    pub fn new(key: PoolKey, params: ConnectParams, config: PoolConfig) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.max_size.max(1))),
                key,
                params,
                config,
                idle: Mutex::new(Vec::new()),
                open: AtomicU64::new(0),
                waiting: AtomicU64::new(0),
                checkouts: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
            }),
        }
    }

    /// The pool's identity.
    pub fn key(&self) -> &PoolKey {
        &self.inner.key
    }

    /// Hands out a connection: an idle one if there is one, otherwise a new
    /// one, waiting up to `checkout_timeout` while all are in use.
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        let inner = &self.inner;
        let permit = match inner.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(PoolError::Closed(inner.key.addr.clone()))
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => self.wait_for_slot().await?,
        };
        inner.checkouts.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        loop {
            let candidate = inner.idle.lock().expect("pool lock").pop();
            match candidate {
                Some(mut conn) => {
                    // `last_used` is when it was last handed out: one clock
                    // read per transaction instead of two.
                    let idle_for = now.saturating_duration_since(conn.last_used);
                    // A connection used moments ago is alive and young; checking
                    // it further would cost a system call per transaction.
                    let stale = now > conn.retire_at
                        || (idle_for > HEALTH_PROBE_AFTER
                            && (idle_for > inner.config.idle_timeout || !conn.looks_healthy()));
                    if stale {
                        inner.open.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    conn.last_used = now;
                    return Ok(PooledConn::new(conn, permit, self.inner.clone()));
                }
                None => break,
            }
        }
        let mut conn = Box::new(ServerConn::connect(&inner.params).await?);
        conn.retire_at = conn.created + inner.config.max_lifetime;
        inner.open.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(server = %inner.key.addr, user = %inner.key.user, database = %inner.key.database, "server connection opened");
        Ok(PooledConn::new(conn, permit, self.inner.clone()))
    }

    async fn wait_for_slot(&self) -> Result<OwnedSemaphorePermit, PoolError> {
        let inner = &self.inner;
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        let waited = tokio::time::timeout(
            inner.config.checkout_timeout,
            inner.slots.clone().acquire_owned(),
        )
        .await;
        inner.waiting.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(PoolError::Closed(inner.key.addr.clone())),
            Err(_) => {
                inner.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(PoolError::Timeout {
                    addr: inner.key.addr.clone(),
                    timeout_ms: inner.config.checkout_timeout.as_millis(),
                    size: inner.config.max_size,
                })
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        PoolStats {
            open: inner.open.load(Ordering::Relaxed),
            idle: inner.idle.lock().expect("pool lock").len() as u64,
            waiting: inner.waiting.load(Ordering::Relaxed),
            checkouts: inner.checkouts.load(Ordering::Relaxed),
            timeouts: inner.timeouts.load(Ordering::Relaxed),
        }
    }

    /// Closes every idle connection (used when a node goes down or at shutdown).
    pub fn drain_idle(&self) {
        let drained: Vec<Box<ServerConn>> =
            std::mem::take(&mut *self.inner.idle.lock().expect("pool lock"));
        self.inner
            .open
            .fetch_sub(drained.len() as u64, Ordering::Relaxed);
    }
}

/// A connection checked out of a pool; returned to it on drop unless broken.
pub struct PooledConn {
    conn: Option<Box<ServerConn>>,
    _permit: OwnedSemaphorePermit,
    pool: Arc<Inner>,
}

impl PooledConn {
    fn new(conn: Box<ServerConn>, permit: OwnedSemaphorePermit, pool: Arc<Inner>) -> Self {
        PooledConn {
            conn: Some(conn),
            _permit: permit,
            pool,
        }
    }

    /// The pool this connection belongs to.
    pub fn pool_key(&self) -> &PoolKey {
        &self.pool.key
    }
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.broken || !conn.read_buf.is_empty() {
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(server = %self.pool.key.addr, broken = conn.broken, "server connection closed");
            return;
        }
        self.pool.idle.lock().expect("pool lock").push(conn);
        // The permit is released after the connection is back, so a waiter
        // woken by it finds the connection idle.
    }
}

/// Every pool the proxy has, created on first use.
#[derive(Default)]
pub struct Pools {
    pools: RwLock<HashMap<PoolKey, Pool>>,
}

impl Pools {
    /// No pools yet.
    pub fn new() -> Self {
        Pools::default()
    }

    /// The pool for `key`, creating it with `make` the first time.
    pub fn get_or_create(
        &self,
        key: &PoolKey,
        make: impl FnOnce() -> (ConnectParams, PoolConfig),
    ) -> Pool {
        if let Some(p) = self.pools.read().expect("pools lock").get(key) {
            return p.clone();
        }
        let mut w = self.pools.write().expect("pools lock");
        w.entry(key.clone())
            .or_insert_with(|| {
                let (params, config) = make();
                Pool::new(key.clone(), params, config)
            })
            .clone()
    }

    /// A snapshot of every pool.
    pub fn all(&self) -> Vec<Pool> {
        self.pools
            .read()
            .expect("pools lock")
            .values()
            .cloned()
            .collect()
    }
}
