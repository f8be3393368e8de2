//! Pools of server connections, one per (node, user, database).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::{ConnectError, ConnectParams, ServerConn};

/// Idle connections are probed for a closed socket only after this long:
/// a connection handed back moments ago is alive, and probing it would cost
/// a system call per transaction under load. A backend terminated while idle
/// for longer is noticed before any client uses it.
const HEALTH_PROBE_AFTER: Duration = Duration::from_millis(10);

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
}

/// Counters of one pool, for the admin console and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle plus in use).
    pub open: u64,
    /// Connections idle in the pool.
    pub idle: u64,
    /// Slots held by clients (connections in use or being opened).
    pub lent: u64,
    /// Clients waiting for a connection.
    pub waiting: u64,
    /// Connections handed out since start.
    pub checkouts: u64,
    /// Checkouts that timed out.
    pub timeouts: u64,
    /// Idle connections that will be probed before their next use.
    pub idle_untested: u64,
    /// How long the oldest waiting client has waited.
    pub max_wait: Duration,
    /// Microseconds clients spent waiting, in total.
    pub wait_us: u64,
    /// The pool's size limit.
    pub max_size: u64,
    /// What returned loans did.
    pub totals: Totals,
    /// Server errors by SQLSTATE class.
    pub error_classes: Vec<([u8; 2], u64)>,
}

struct Inner {
    key: PoolKey,
    /// How new connections are opened (a reload may change it).
    params: Mutex<Arc<ConnectParams>>,
    /// Idle connections, slots and waiters behind one lock: a checkout and
    /// a release each take it once.
    slots: Mutex<Slots>,
    /// Wakes the pool's sweeper when a client queues while it is idle.
    wake_sweeper: Arc<Notify>,
    open: AtomicU64,
    waiting: AtomicU64,
    timeouts: AtomicU64,
    /// Microseconds clients spent waiting for a connection, in total.
    wait_us: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // An idle sweeper wakes, finds the pool gone and ends.
        self.wake_sweeper.notify_one();
    }
}

/// The task that ends waits past `checkout_timeout`, one per pool.
///
/// A tokio timer per waiting client (registered, then removed) cost about
/// 600 instructions per transaction when most checkouts wait (callgrind, 8
/// clients on pool 4: 9,092 -> 8,498). Waiters queue in FIFO order with the same timeout, so the
/// oldest always expires first: one timer, armed for the oldest waiter's
/// deadline, serves the whole queue, and a busy pool arms it about once
/// per `checkout_timeout` instead of once per checkout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweeper {
    /// Not started: no client has waited yet.
    Absent,
    /// Sleeping until a deadline; it looks at the queue again then.
    Armed,
    /// Waiting for `wake_sweeper`: the queue was empty.
    Idle,
}

/// What the connections of a pool did, in total (published at each return).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Loans returned: transactions in transaction pooling.
    pub loans: u64,
    /// Microseconds connections were lent.
    pub lent_us: u64,
    /// Microseconds clients' statements took (sent until answered).
    pub query_us: u64,
    /// Requests answered (ReadyForQuery received).
    pub queries: u64,
    /// Bytes sent to the server.
    pub bytes_sent: u64,
    /// Bytes received from the server.
    pub bytes_received: u64,
    /// Error responses received from the server.
    pub errors: u64,
}

/// What one loan of a connection did: counted by the session that holds
/// it (no atomics), added to its pool's totals when it comes back.
#[derive(Debug, Default)]
pub struct Loan {
    /// Requests answered (client cycles that ended with ReadyForQuery).
    pub queries: u64,
    /// Microseconds the client's statements took.
    pub query_us: u64,
    /// Bytes sent to the server.
    pub bytes_sent: u64,
    /// Bytes received from the server.
    pub bytes_received: u64,
    /// SQLSTATE classes of the errors the server sent.
    pub error_classes: Vec<[u8; 2]>,
}

impl Loan {
    /// Records an ErrorResponse by its SQLSTATE class (`fields` is the
    /// message body).
    pub fn note_error(&mut self, fields: &[u8]) {
        let mut rest = fields;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            if kind == b'C' && end >= 2 {
                self.error_classes.push([tail[0], tail[1]]);
                return;
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        self.error_classes.push(*b"XX");
    }
}

/// The state of a pool's `max_size` slots.
struct Slots {
    /// Errors by SQLSTATE class.
    error_classes: Vec<([u8; 2], u64)>,
    /// Limits (a reload may change them).
    config: PoolConfig,
    /// Counters of returned loans.
    totals: Totals,
    /// Connections nobody holds. Boxed so handing one out and back moves a
    /// pointer, not the whole connection state (measured: ~800 instructions
    /// per transaction).
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    /// Slots held: connections handed out plus connections being opened.
    lent: usize,
    /// Clients waiting for a slot, oldest first. A freed slot goes straight
    /// to the oldest, so nobody arriving later can take it (FIFO).
    waiters: VecDeque<Waiter>,
    /// Identifies the next waiter.
    next_waiter: u64,
    /// Slots handed out since start.
    checkouts: u64,
    /// What the pool's sweeper is doing.
    sweeper: Sweeper,
}

/// A client waiting for a slot. Its sender is dropped, unsent, when its
/// deadline passes: that is how it learns it timed out.
struct Waiter {
    id: u64,
    grant: oneshot::Sender<Grant>,
    /// When it began waiting.
    since: Instant,
    /// When it stops waiting.
    deadline: Instant,
}

/// A slot handed to a client.
enum Grant {
    /// With an idle connection.
    Idle(Box<ServerConn>),
    /// Without one: the client opens a new connection.
    Open,
}

impl Slots {
    /// The limit (0 only for a pool taken out of service).
    fn max_size(&self) -> usize {
        self.config.max_size
    }

    /// A slot if one is free: with an idle connection if there is one.
    fn take(&mut self) -> Option<Grant> {
        let max_size = self.max_size();
        // A waiter exists only while every slot is held (a freed slot goes
        // to it), so taking a free slot never jumps the queue.
        let grant = match self.idle.pop() {
            Some(conn) => Grant::Idle(conn),
            None if self.lent < max_size => Grant::Open,
            None => return None,
        };
        self.lent += 1;
        self.checkouts += 1;
        Some(grant)
    }

    /// Frees a slot (with the connection, if it can be reused): to the
    /// oldest waiter still waiting, otherwise back to the pool. Returns a
    /// connection to close when the pool shrank below what is lent.
    fn give_back(&mut self, mut grant: Grant) -> Option<Box<ServerConn>> {
        if self.lent > self.max_size() {
            // The pool was made smaller: this slot goes away.
            self.lent -= 1;
            return match grant {
                Grant::Idle(conn) => Some(conn),
                Grant::Open => None,
            };
        }
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.grant.send(grant) {
                Ok(()) => {
                    self.checkouts += 1;
                    return None;
                }
                // That client stopped waiting.
                Err(back) => grant = back,
            }
        }
        self.lent -= 1;
        if let Grant::Idle(conn) = grant {
            self.idle.push(conn);
        }
        None
    }

    /// Hands free slots to waiters (the pool grew) and returns idle
    /// connections beyond the limit (it shrank), to close.
    #[allow(clippy::vec_box)]
    fn fit(&mut self) -> Vec<Box<ServerConn>> {
        while self.lent < self.max_size() {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            let grant = match self.idle.pop() {
                Some(conn) => Grant::Idle(conn),
                None => Grant::Open,
            };
            match waiter.grant.send(grant) {
                Ok(()) => {
                    self.lent += 1;
                    self.checkouts += 1;
                }
                Err(Grant::Idle(conn)) => self.idle.push(conn),
                Err(Grant::Open) => {}
            }
        }
        let keep = self.max_size().saturating_sub(self.lent);
        if self.idle.len() > keep {
            self.idle.split_off(keep)
        } else {
            Vec::new()
        }
    }

    /// Drops the waiters whose deadline is past `now` (their receivers then
    /// fail: a timeout); returns the next deadline, or marks the sweeper idle
    /// when nobody waits.
    fn expire_waiters(&mut self, now: Instant) -> Option<Instant> {
        while self.waiters.front().is_some_and(|w| w.deadline <= now) {
            self.waiters.pop_front();
        }
        let next = self.waiters.front().map(|w| w.deadline);
        self.sweeper = if next.is_some() {
            Sweeper::Armed
        } else {
            Sweeper::Idle
        };
        next
    }

    /// Removes waiter `id`; false if it was handed a slot already.
    fn leave_queue(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|w| w.id == id) {
            Some(i) => {
                self.waiters.remove(i);
                true
            }
            None => false,
        }
    }
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
                key,
                params: Mutex::new(Arc::new(params)),
                slots: Mutex::new(Slots {
                    error_classes: Vec::new(),
                    config,
                    totals: Totals::default(),
                    idle: Vec::new(),
                    lent: 0,
                    waiters: VecDeque::new(),
                    next_waiter: 0,
                    checkouts: 0,
                    sweeper: Sweeper::Absent,
                }),
                wake_sweeper: Arc::new(Notify::new()),
                open: AtomicU64::new(0),
                waiting: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                wait_us: AtomicU64::new(0),
            }),
        }
    }

    /// The pool's identity.
    pub fn key(&self) -> &PoolKey {
        &self.inner.key
    }

    /// How this pool's connections are opened, for a connection of the
    /// same kind kept outside the pool (a shared LISTEN connection).
    pub fn connect_params(&self) -> Arc<ConnectParams> {
        self.inner.params.lock().expect("pool params lock").clone()
    }

    /// Applies new limits and login settings (a reload): a larger pool
    /// serves waiting clients at once; a smaller one closes idle
    /// connections beyond the limit now and lent ones as they come back.
    /// Connections already open keep their login.
    pub fn reconfigure(&self, params: ConnectParams, config: PoolConfig) {
        *self.inner.params.lock().expect("pool params lock") = Arc::new(params);
        let surplus = {
            let mut slots = self.inner.lock();
            slots.config = config;
            slots.fit()
        };
        self.inner
            .open
            .fetch_sub(surplus.len() as u64, Ordering::Relaxed);
    }

    /// Closes the idle connections and keeps none that come back.
    fn reconfigure_closed(&self) {
        let surplus = {
            let mut slots = self.inner.lock();
            slots.config.max_size = 0;
            let mut idle = std::mem::take(&mut slots.idle);
            idle.extend(slots.fit());
            idle
        };
        self.inner
            .open
            .fetch_sub(surplus.len() as u64, Ordering::Relaxed);
    }

    /// The limits in force.
    pub fn config(&self) -> PoolConfig {
        self.inner.lock().config.clone()
    }

    /// An idle connection if one is free and fit for use right now, without
    /// waiting or opening one; `None` leaves the pool as it was.
    pub fn get_idle(&self) -> Option<PooledConn> {
        let inner = &self.inner;
        let mut slots = inner.lock();
        let idle_timeout = slots.config.idle_timeout;
        let conn = slots.idle.last_mut()?;
        let now = Instant::now();
        if !fresh(conn, now, idle_timeout) {
            return None;
        }
        conn.last_used = now;
        let conn = slots.idle.pop();
        slots.lent += 1;
        slots.checkouts += 1;
        drop(slots);
        Some(PooledConn {
            conn,
            pool: inner.clone(),
        })
    }

    /// Hands out a connection: an idle one if there is one, otherwise a new
    /// one, waiting up to `checkout_timeout` while all are in use.
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        let inner = &self.inner;
        let (free, config) = {
            let mut slots = inner.lock();
            (slots.take(), slots.config.clone())
        };
        let mut grant = match free {
            Some(grant) => grant,
            None => self.wait_for_slot().await?,
        };
        // From here the slot is freed on every way out, including this
        // future being dropped while a new connection is opened.
        let mut pooled = PooledConn {
            conn: None,
            pool: inner.clone(),
        };
        let now = Instant::now();
        while let Grant::Idle(mut conn) = grant {
            if fresh(&mut conn, now, config.idle_timeout) {
                conn.last_used = now;
                pooled.conn = Some(conn);
                return Ok(pooled);
            }
            inner.open.fetch_sub(1, Ordering::Relaxed);
            drop(conn);
            // The slot stays ours: the next idle connection, or a new one.
            let next = inner.lock().idle.pop();
            grant = next.map_or(Grant::Open, Grant::Idle);
        }
        let params = inner.params.lock().expect("pool params lock").clone();
        // Boxed: connecting (TLS, login) would otherwise make every
        // checkout's future, and so every client session's, that large.
        let mut conn = Box::new(Box::pin(ServerConn::connect(&params)).await?);
        conn.retire_at = conn.created + config.max_lifetime;
        inner.open.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(server = %inner.key.addr, user = %inner.key.user, database = %inner.key.database, "server connection opened");
        pooled.conn = Some(conn);
        Ok(pooled)
    }

    /// Queues for a slot until one is handed over or `checkout_timeout` ends.
    async fn wait_for_slot(&self) -> Result<Grant, PoolError> {
        let inner = &*self.inner;
        let (sender, receiver) = oneshot::channel();
        let started = Instant::now();
        let (id, sweeper) = {
            let mut slots = inner.lock();
            // A slot may have been freed since the first look.
            if let Some(grant) = slots.take() {
                return Ok(grant);
            }
            // Read under the lock, so deadlines grow along the queue.
            let since = Instant::now();
            let deadline = deadline_after(since, slots.config.checkout_timeout);
            let id = slots.next_waiter;
            slots.next_waiter += 1;
            slots.waiters.push_back(Waiter {
                id,
                grant: sender,
                since,
                deadline,
            });
            let sweeper = slots.sweeper;
            if sweeper != Sweeper::Armed {
                slots.sweeper = Sweeper::Armed;
            }
            (id, sweeper)
        };
        match sweeper {
            Sweeper::Absent => {
                tokio::spawn(sweep(
                    Arc::downgrade(&self.inner),
                    inner.wake_sweeper.clone(),
                ));
            }
            Sweeper::Idle => inner.wake_sweeper.notify_one(),
            Sweeper::Armed => {}
        }
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        let mut queued = Queued {
            inner,
            id,
            receiver: Some(receiver),
        };
        let receiver = queued.receiver.as_mut().expect("set above");
        let granted = receiver.await;
        // Either way it is out of the queue now.
        queued.receiver = None;
        inner
            .wait_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match granted {
            Ok(grant) => Ok(grant),
            Err(_) => {
                inner.timeouts.fetch_add(1, Ordering::Relaxed);
                let config = inner.lock().config.clone();
                Err(PoolError::Timeout {
                    addr: inner.key.addr.clone(),
                    timeout_ms: config.checkout_timeout.as_millis(),
                    size: config.max_size,
                })
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let now = Instant::now();
        let slots = inner.lock();
        PoolStats {
            open: inner.open.load(Ordering::Relaxed),
            idle: slots.idle.len() as u64,
            lent: slots.lent as u64,
            waiting: inner.waiting.load(Ordering::Relaxed),
            checkouts: slots.checkouts,
            timeouts: inner.timeouts.load(Ordering::Relaxed),
            idle_untested: slots
                .idle
                .iter()
                .filter(|c| now.saturating_duration_since(c.last_used) > HEALTH_PROBE_AFTER)
                .count() as u64,
            max_wait: slots
                .waiters
                .front()
                .map_or(Duration::ZERO, |w| now.saturating_duration_since(w.since)),
            wait_us: inner.wait_us.load(Ordering::Relaxed),
            max_size: slots.config.max_size as u64,
            totals: slots.totals,
            error_classes: slots.error_classes.clone(),
        }
    }

    /// The idle connections: (backend pid, opened, idle since).
    pub fn idle_connections(&self) -> Vec<(i32, Instant, Instant)> {
        self.inner
            .lock()
            .idle
            .iter()
            .map(|c| (c.backend_key.0, c.created, c.last_used))
            .collect()
    }

    /// Closes the idle connections whose server has gone (an error or a
    /// closed socket waiting on them), keeping the live ones: after one
    /// connection was lost, the others may or may not have been.
    pub fn discard_dead_idle(&self) {
        let mut slots = self.inner.lock();
        let before = slots.idle.len();
        slots.idle.retain_mut(|c| c.looks_healthy());
        let dropped = before - slots.idle.len();
        drop(slots);
        if dropped > 0 {
            self.inner.open.fetch_sub(dropped as u64, Ordering::Relaxed);
            tracing::debug!(server = %self.inner.key.addr, dropped, "dead idle server connections closed");
        }
    }

    /// Closes every idle connection (used when a node goes down or at shutdown).
    pub fn drain_idle(&self) {
        let drained: Vec<Box<ServerConn>> = std::mem::take(&mut self.inner.lock().idle);
        self.inner
            .open
            .fetch_sub(drained.len() as u64, Ordering::Relaxed);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().expect("pool lock")
    }
}

/// Whether an idle connection may be handed out at `now`.
fn fresh(conn: &mut ServerConn, now: Instant, idle_timeout: Duration) -> bool {
    // `last_used` is when it was last handed out: one clock read per
    // transaction instead of two.
    let idle_for = now.saturating_duration_since(conn.last_used);
    // A connection used moments ago is alive and young; checking it
    // further would cost a system call per transaction.
    now <= conn.retire_at
        && (idle_for <= HEALTH_PROBE_AFTER || (idle_for <= idle_timeout && conn.looks_healthy()))
}

/// `now` plus `wait`; a wait too long to add means never.
fn deadline_after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(u64::from(u32::MAX)))
}

/// Ends the waits of `pool` whose deadline passed, sleeping until the oldest
/// waiter's deadline or, when nobody waits, until a client queues; ends
/// with the pool.
async fn sweep(pool: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = match pool.upgrade() {
            Some(inner) => inner.lock().expire_waiters(Instant::now()),
            None => return,
        };
        match next {
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => wake.notified().await,
        }
    }
}

/// A client's place in a pool's queue. Leaving it (timeout, or the client
/// going away while it waits) removes the place, or frees the slot it was
/// handed in the meantime, so no slot is ever lost.
struct Queued<'a> {
    inner: &'a Inner,
    id: u64,
    /// `None` once it left the queue.
    receiver: Option<oneshot::Receiver<Grant>>,
}

impl Queued<'_> {
    /// Leaves the queue; returns the slot if one was handed over already.
    fn leave(&mut self) -> Option<Grant> {
        let mut receiver = self.receiver.take()?;
        let mut slots = self.inner.lock();
        if slots.leave_queue(self.id) {
            return None;
        }
        // Not queued any more: a slot was sent while the lock was held.
        receiver.try_recv().ok()
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(grant) = self.leave() {
            self.inner.lock().give_back(grant);
        }
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection checked out of a pool; returned to it on drop unless broken.
pub struct PooledConn {
    /// `None` only while the connection is being opened or after drop.
    conn: Option<Box<ServerConn>>,
    pool: Arc<Inner>,
}

impl PooledConn {
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
        let mut loan = Totals::default();
        let mut errors = Vec::new();
        if let Some(conn) = self.conn.as_mut() {
            let l = &mut conn.loan;
            loan = Totals {
                loans: 1,
                lent_us: conn.last_used.elapsed().as_micros() as u64,
                queries: std::mem::take(&mut l.queries),
                query_us: std::mem::take(&mut l.query_us),
                bytes_sent: std::mem::take(&mut l.bytes_sent),
                bytes_received: std::mem::take(&mut l.bytes_received),
                errors: l.error_classes.len() as u64,
            };
            if !l.error_classes.is_empty() {
                errors = std::mem::take(&mut l.error_classes);
            }
        }
        let grant = match self.conn.take() {
            Some(conn) if conn.broken || conn.retire || !conn.read_buf.is_empty() => {
                self.pool.open.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(server = %self.pool.key.addr, broken = conn.broken, "server connection closed");
                // Closed here, outside the pool's lock.
                drop(conn);
                Grant::Open
            }
            Some(conn) => Grant::Idle(conn),
            None => Grant::Open,
        };
        let surplus = {
            let mut slots = self.pool.lock();
            slots.totals.add(&loan);
            for class in errors {
                match slots.error_classes.iter_mut().find(|(c, _)| *c == class) {
                    Some((_, n)) => *n += 1,
                    None => slots.error_classes.push((class, 1)),
                }
            }
            slots.give_back(grant)
        };
        if let Some(conn) = surplus {
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
            drop(conn);
        }
    }
}

impl Totals {
    /// Adds `other` to these totals.
    pub fn add(&mut self, other: &Totals) {
        self.loans += other.loans;
        self.lent_us += other.lent_us;
        self.query_us += other.query_us;
        self.queries += other.queries;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.errors += other.errors;
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

    /// Takes the pools whose key matches out of the registry (a drained or
    /// removed node, a removed user): they close their idle connections;
    /// lent ones close as they come back.
    pub fn remove_where(&self, matches: impl Fn(&PoolKey) -> bool) -> Vec<Pool> {
        let mut w = self.pools.write().expect("pools lock");
        let keys: Vec<PoolKey> = w.keys().filter(|k| matches(k)).cloned().collect();
        let removed: Vec<Pool> = keys.iter().filter_map(|k| w.remove(k)).collect();
        drop(w);
        for p in &removed {
            p.reconfigure_closed();
        }
        removed
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
