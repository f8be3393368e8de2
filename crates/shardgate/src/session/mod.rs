//! One client session after login: reads client messages, lends it a server
//! connection for each transaction (or the whole session), relays responses.
//!
//! - `login`: finishing the startup (ParameterStatus, BackendKeyData).
//! - `extended`: the extended query protocol and prepared statements.
//! - `local`: statements the proxy answers itself (shardgate settings,
//!   DISCARD/DEALLOCATE in transaction pooling).
//! - `server`: lending, replaying state on, releasing and losing server connections.

mod begin;
mod commit;
mod cursor;
mod extended;
mod fanout;
mod insert_select;
mod listen;
mod local;
mod login;
mod materialize;
mod merge;
mod moving;
mod multi;
pub mod probe;
mod server;
mod sharded;
mod split;
mod timeouts;
mod timing;

pub(crate) use extended::is_set_statement;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_jobs::topology::InFlight;
use shardgate_jobs::ShardState;
use shardgate_pool::{ConnectError, Pool, PoolError, PooledConn};
use shardgate_protocol::batch::{batch_end, continues_batch, BatchEnd};
use shardgate_protocol::frontend::{self, tag};
use shardgate_protocol::{Header, PgError, ProtocolError};
use shardgate_router::hints::mentions_shardgate;
use shardgate_router::lexer::split_statements;
use shardgate_router::{leaves_session_state, parse_hints, quick_scan};
#[allow(unused_imports)]
use std::collections::BTreeSet;
use std::pin::Pin;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::futures::OwnedNotified;

use crate::auth::User;
use crate::cancel::CancelKey;
use crate::client_io::ClientStream;
use crate::clients::ClientInfo;
use crate::config::PoolMode;
use crate::prepared::ClientStatements;
use crate::relay::{Exchange, Expect};
use crate::routing::{RoutingState, Want};
use crate::runtime::{Runtime, Snapshot};
use crate::state::SessionState;

/// SQL the server rejects, sent to fail a transaction where the proxy itself
/// reports an error, so the client and server agree the transaction failed.
const FAILING_SQL: &str = "shardgate proxy error";

/// Client messages of one read kept for a retry are capped at this many bytes.
const RETRY_LIMIT: usize = 256 * 1024;

/// Answer bytes of a retryable read held back from the client until the
/// answer is complete; a larger answer is streamed and no longer retryable.
const RETRY_HOLD_LIMIT: usize = 64 * 1024;

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client socket failed or closed.
    #[error("client connection: {0}")]
    ClientIo(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("client protocol violation: {0}")]
    ClientProtocol(#[from] ProtocolError),
    /// The session must end with this error sent to the client.
    #[error("{0}")]
    Fatal(PgError),
}

/// A server connection lent to this session.
struct Backend {
    /// Shard it belongs to.
    shard: usize,
    conn: PooledConn,
    ex: Exchange,
    /// Counts the session on the node while it holds the connection.
    node: InFlight,
    /// What the transaction needed when the node was chosen.
    want: Want,
    /// A read not yet answered, to run it elsewhere if the node fails
    /// first; `None` once that is no longer possible.
    retry: Option<RetryLog>,
    /// Names the client prepared in this cycle (forgotten before a retry).
    cycle_names: Vec<String>,
    /// Record the commit position after each cycle (read your writes).
    track_lsn: bool,
    /// A commit position is still to be asked for.
    lsn_due: bool,
    /// The client's transaction spread over shards reached this connection
    /// (its BEGIN was sent).
    joined_tx: bool,
    /// Shows the connection as the client's in the admin console.
    _link: crate::clients::Linked,
}

impl Drop for Backend {
    /// A connection that leaves the session inside a transaction or with an
    /// answer outstanding is closed, never pooled: nothing a client did in a
    /// transaction may reach another client.
    fn drop(&mut self) {
        if !self.ex.idle() || !self.conn.read_buf.is_empty() {
            self.conn.broken = true;
        }
    }
}

/// What running a read again on another node needs.
struct RetryLog {
    /// The client messages of the read, from the one that attached the connection.
    msgs: Vec<Bytes>,
    /// Length of the client output when the read began: what follows is the
    /// held-back answer, dropped if the read runs again.
    cout_mark: usize,
}

impl Backend {
    /// Whether an extended batch is open on this connection with only
    /// prepared, described or closed statements in it and no error: nothing
    /// a Sync would commit or a portal would need.
    fn quiet_batch(&self) -> bool {
        self.ex.unsynced && !self.ex.busy_since_sync && !self.ex.skipping
    }

    /// A replica connection outside a transaction, held by an open batch
    /// (reads only, or an error the server now skips to Sync over): a
    /// statement that needs the primary ends it there and goes on elsewhere.
    fn batch_on_replica(&self) -> bool {
        matches!(self.want, Want::Read(_)) && self.ex.status == b'I' && self.ex.unsynced
    }

    /// What the batch open on this connection may be ended early with the
    /// proxy's own Sync: a quiet batch, or reads on a replica outside a
    /// transaction (ending them changes nothing the client can see).
    fn may_end_batch_early(&self) -> bool {
        self.quiet_batch() || (self.batch_on_replica() && !self.ex.skipping)
    }
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Shutdown,
    /// A notification for a channel the client listens to.
    Notification(Option<crate::notify::Notification>),
    /// A timeout expired (see `timeouts.rs`).
    Timeout(timeouts::Timeout),
}

/// How far [`Session::message_now`] got with a client message.
enum Now {
    /// Handled.
    Done,
    /// A simple query that only needs a connection attached for `Want`,
    /// then forwarding.
    AfterAttach(Want),
    /// Untouched: the general path handles it.
    General,
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Which protocol a failed request came from, to finish the reply correctly.
#[derive(Clone, Copy)]
enum Proto {
    Simple,
    Extended,
}

/// A client transaction spread over shards: BEGIN is sent to each shard
/// when the transaction first uses it.
#[derive(Debug, Clone)]
pub(crate) struct VirtualTx {
    /// The client's BEGIN statement, replayed on each shard.
    pub begin: String,
    /// A statement failed: COMMIT becomes ROLLBACK everywhere.
    pub failed: bool,
    /// `BEGIN READ ONLY`: each shard's part may run on a replica.
    pub read_only: bool,
    /// Names of the savepoints open now, oldest first (as the server keeps
    /// them): a shard that joins the transaction later gets them too, so a
    /// `ROLLBACK TO` reaches every shard.
    pub savepoints: Vec<String>,
    /// Opened by the proxy for an extended-protocol batch that spans
    /// shards outside a transaction (the batch's implicit transaction,
    /// made one per shard): it ends at the client's Sync.
    pub implicit: bool,
}

/// Whether any shard has a node besides its primary, so reads are routed.
fn routes_reads(shards: &[Arc<ShardState>]) -> bool {
    shards
        .iter()
        .any(|s| s.nodes.iter().filter(|n| !n.is_retired()).count() > 1)
}

/// Everything a session needs that is fixed at login.
pub struct SessionSetup {
    /// Shared proxy state.
    pub runtime: Arc<Runtime>,
    /// The snapshot the client logged in with.
    pub snap: Arc<Snapshot>,
    /// What the client publishes for the admin console.
    pub info: Arc<ClientInfo>,
    /// The authenticated user.
    pub user: Arc<User>,
    /// Database on the servers.
    pub database: String,
    /// The client connection.
    pub client: ClientStream,
    /// Bytes already read from the client.
    pub cbuf: BytesMut,
    /// Session state from the startup packet.
    pub state: SessionState,
    /// Consistency settings from configuration, user and startup options.
    pub routing: RoutingState,
    /// The client's cancel key.
    pub cancel: CancelKey,
}

/// A logged-in client.
pub struct Session {
    runtime: Arc<Runtime>,
    /// The snapshot in force: replaced only between transactions.
    snap: Arc<Snapshot>,
    info: Arc<ClientInfo>,
    /// Whether `info` says the client is in a transaction.
    published_in_tx: bool,
    user: Arc<User>,
    database: String,
    client: ClientStream,
    cbuf: BytesMut,
    cout: BytesMut,
    sout: BytesMut,
    /// The connection the current statement runs on.
    backend: Option<Backend>,
    /// Other connections held in a transaction that touched several shards.
    parked: Vec<Backend>,
    /// Every shard's live state.
    shards: Vec<Arc<ShardState>>,
    /// Shard the next statement goes to.
    target: usize,
    /// Pools of every shard's nodes, looked up on first use.
    pools: Vec<Vec<Option<Pool>>>,
    /// A transaction the proxy opened on behalf of the client (sharding):
    /// BEGIN reaches each shard when the transaction first uses it.
    vtx: Option<VirtualTx>,
    /// A request running on several shards, parked while the client sends COPY data.
    fanout_state: Option<Box<fanout::Fanout>>,
    /// Statements are routed by shard key (several shards or sharded tables).
    sharded: bool,
    /// `SET shardgate.shard`.
    shard_hint: Option<usize>,
    /// `SET shardgate.sharding_key`.
    key_hint: Option<String>,
    /// The shard of each SQL cursor the client declared (sharding).
    cursors: std::collections::HashMap<String, usize>,
    /// Cursors and portals over several shards, read a batch at a time.
    merged_cursors: std::collections::HashMap<cursor::CursorKey, cursor::MergedCursor>,
    /// Numbers the cursors the proxy declares on shards.
    next_cursor: u64,
    /// Bytes after the current message that its handler consumed too.
    extra_consumed: usize,
    state: SessionState,
    routing: RoutingState,
    /// The shard has replicas, so statements are classified.
    route_reads: bool,
    statements: ClientStatements,
    cancel: CancelKey,
    mode: PoolMode,
    max_message: usize,
    /// `max_client_buffer`: most bytes of client input held at once.
    max_buffer: usize,
    /// Client input was refused for its size: the client may still be
    /// sending it when the session ends.
    input_refused: bool,
    /// Completes when the proxy starts shutting down (registered once).
    shutdown: Pin<Box<OwnedNotified>>,
    /// The proxy refused a message of the current extended batch: drop
    /// client messages until Sync.
    skip_until_sync: bool,
    /// Route of the unnamed statement.
    unnamed_route: Option<crate::routing::StatementRouting>,
    /// The unnamed statement is a SET/RESET (session tracking in extended protocol).
    unnamed_set: Option<String>,
    /// Named SET/RESET statements of a session-pooled client, by name.
    named_sets: std::collections::HashMap<String, String>,
    /// Portal bound to a SET/RESET statement.
    bound_set: Option<(String, String)>,
    /// Statements and portals the proxy answers itself (extended protocol).
    virtual_stmts: local::VirtualStatements,
    /// Login finished (errors of hidden queries are then only logged).
    logged_in: bool,
    /// A read whose node failed before answering, to run again.
    pending_retry: Option<server::PendingRetry>,
    /// When the statement the server is running was sent (query_timeout).
    query_started: Option<tokio::time::Instant>,
    /// That statement was cancelled for query_timeout already.
    query_cancelled: bool,
    /// How often the current read was retried.
    retry_attempt: usize,
    /// A read on several shards that may still run again elsewhere: where
    /// its answer starts in the client buffer (held back until complete,
    /// up to [`RETRY_HOLD_LIMIT`]).
    held_read: Option<usize>,
    /// Nodes (shard, node index) the current read lost a connection to:
    /// its next attempt passes over them, even before they are banned.
    lost_nodes: Vec<(usize, usize)>,
    /// A query string run one statement at a time: its statements'
    /// ReadyForQuery messages are taken out of the client output (see
    /// `multi`).
    batch: Option<Box<multi::Batch>>,
    /// The expectation queue of the last released connection, kept so
    /// lending a connection allocates nothing (in the thread's cache while
    /// the client is idle, with the buffers: see [`Session::wait_idle`]).
    spare_queue: VecDeque<Expect>,
    /// A plain BEGIN may be answered by the proxy and sent with the next
    /// message (`defer_begin`, transaction pooling, not sharded).
    defer_begin: bool,
    /// The client's BEGIN was answered but not yet sent to a server.
    begin_deferred: bool,
    /// LISTEN in transaction pooling: the client's subscription and the
    /// notifications held while it is in a transaction.
    notifications: crate::notify::ClientNotifications,
    /// Extended-protocol batches are handled only once they are whole (up
    /// to Sync or Flush), so routing sees every statement in them however
    /// the client's messages fell into reads: reads are routed or the
    /// cluster is sharded.
    gathers: bool,
    /// Bytes of an incomplete batch at the start of the client buffer
    /// already scanned for its end.
    batch_scanned: usize,
    /// The current batch was checked for statements on several shards
    /// (see `split`); reset at its Sync.
    split_checked: bool,
    /// The statement running now, for the query statistics.
    cycle: Option<timing::Cycle>,
    /// Query statistics counters by hash of the raw statement text.
    stat_cache: std::collections::HashMap<u64, Arc<crate::stats::queries::QueryStat>>,
}

impl Drop for Session {
    /// The client socket closes after this (a field): the registry forgets
    /// its descriptor first, also when the session panics.
    fn drop(&mut self) {
        self.info.forget_socket();
    }
}

impl Session {
    /// A session for an authenticated client.
    pub fn new(setup: SessionSetup) -> Session {
        let SessionSetup {
            runtime,
            snap,
            info,
            user,
            database,
            client,
            cbuf,
            state,
            routing,
            cancel,
        } = setup;
        let mode = snap.config.proxy.pool_mode;
        let max_message = snap.config.proxy.max_message_size;
        let max_buffer = snap.config.proxy.max_client_buffer;
        let shutdown = Box::pin(runtime.shutdown_notify.clone().notified_owned());
        let shards = snap.topology.shards.clone();
        let route_reads = routes_reads(&shards);
        let sharded = snap.sharding.is_some();
        let defer_begin =
            snap.config.proxy.defer_begin && mode == PoolMode::Transaction && !sharded;
        Session {
            cycle: None,
            stat_cache: Default::default(),
            defer_begin,
            begin_deferred: false,
            notifications: Default::default(),
            gathers: route_reads || sharded,
            batch_scanned: 0,
            split_checked: false,
            pools: shards.iter().map(|s| vec![None; s.nodes.len()]).collect(),
            target: 0,
            parked: Vec::new(),
            vtx: None,
            fanout_state: None,
            sharded,
            shard_hint: None,
            key_hint: None,
            cursors: Default::default(),
            merged_cursors: Default::default(),
            next_cursor: 0,
            extra_consumed: 0,
            runtime,
            snap,
            info,
            published_in_tx: false,
            user,
            database,
            client,
            cbuf,
            cout: BytesMut::with_capacity(4096),
            sout: BytesMut::with_capacity(1024),
            backend: None,
            shards,
            state,
            routing,
            route_reads,
            statements: ClientStatements::default(),
            cancel,
            mode,
            max_message,
            max_buffer,
            input_refused: false,
            shutdown,
            skip_until_sync: false,
            unnamed_route: None,
            unnamed_set: None,
            named_sets: Default::default(),
            bound_set: None,
            virtual_stmts: Default::default(),
            logged_in: false,
            pending_retry: None,
            query_started: None,
            query_cancelled: false,
            retry_attempt: 0,
            held_read: None,
            lost_nodes: Vec::new(),
            batch: None,
            spare_queue: VecDeque::with_capacity(crate::memory::QUEUE_CAPACITY),
        }
    }

    /// Logs the client in and serves it until it leaves; returns why it ended.
    /// The session is boxed: an `async fn` taking it by value would keep it
    /// twice in its future (the argument and the moved local), and the task
    /// holds that future for the client's whole life.
    pub async fn run(mut self: Box<Self>) -> Result<(), SessionError> {
        // Boxed, as every path a session rarely takes: the task's future is
        // as large as its largest state, and an idle client holds it all.
        let result = match Box::pin(self.login()).await {
            Ok(()) => self.serve().await,
            Err(e) => Err(e),
        };
        // Boxed too: the end runs once, and its state (returning or closing
        // server connections, telling the client why) would otherwise stay
        // part of the task's future all along.
        Box::pin(self.finish(result)).await
    }

    /// The session is over with `result`: tells the client why if it must,
    /// gives back or closes its server connections, closes the client's
    /// connection; returns `result` as the client was told it.
    async fn finish(&mut self, result: Result<(), SessionError>) -> Result<(), SessionError> {
        // Ended by the proxy (KILL CLIENT, user removed): the client saw its
        // socket close for reading; it is told why.
        let result = match (self.info.end_reason(), result) {
            (
                Some(reason),
                Ok(()) | Err(SessionError::ClientProtocol(_) | SessionError::ClientIo(_)),
            ) => Err(SessionError::Fatal(reason.to_pg_error())),
            (_, r) => r,
        };
        let result = match result {
            Err(SessionError::ClientProtocol(e)) => {
                let mut out = BytesMut::new();
                e.to_pg_error().encode(&mut out);
                let _ = self.client.write_all(&out).await;
                Err(SessionError::ClientProtocol(e))
            }
            Err(SessionError::Fatal(e)) => {
                let mut out = std::mem::take(&mut self.cout);
                e.encode(&mut out);
                let _ = self.client.send_all(&out).await;
                Err(SessionError::Fatal(e))
            }
            other => other,
        };
        self.detach_at_end().await;
        let _ = self.client.shutdown().await;
        if matches!(
            &result,
            Err(SessionError::ClientProtocol(ProtocolError::TooLarge { .. }))
        ) || self.input_refused
        {
            linger(&mut self.client).await;
        }
        result
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            self.at_turn()?;
            if let Some(retry) = self.pending_retry.take() {
                Box::pin(self.retry_read(retry)).await?;
            }
            self.flush_client().await?;
            if self.backend.is_none() && !self.begin_deferred && self.runtime.shutting_down() {
                return Err(SessionError::Fatal(shutdown_error()));
            }
            match self.wait().await {
                Event::Client(Ok(0)) if self.cbuf.is_empty() => return Ok(()),
                Event::Client(Ok(0)) => return Err(ProtocolError::Incomplete.into()),
                Event::Client(Ok(_)) => {
                    self.enter_input()?;
                    let large = self.cbuf.len() >= crate::memory::TRIM_AFTER;
                    let flow = if self.client_input_now()? {
                        self.end_client_input(large).await?;
                        Flow::Continue
                    } else {
                        // Boxed: handling input (statements, waiting for a
                        // server connection) is most of this future's size,
                        // and an idle client would hold it all; allocated
                        // only for input the path above left (measured: the
                        // allocation was ~650 of 9,840 instructions per
                        // pgbench -S transaction).
                        Box::pin(self.handle_client_input(large)).await?
                    };
                    if flow == Flow::Stop {
                        return Ok(());
                    }
                }
                Event::Client(Err(e)) => return Err(SessionError::ClientIo(e)),
                Event::Server(Ok(0)) => {
                    self.server_lost("server closed the connection unexpectedly".into())?
                }
                Event::Server(Ok(_)) => {
                    self.handle_server_input()?;
                    self.after_cycle().await?;
                }
                Event::Server(Err(e)) => self.server_lost(e.to_string())?,
                Event::Shutdown => {}
                Event::Timeout(t) => self.on_timeout(t)?,
                Event::Notification(Some(n)) => self.notifications.held.push(n),
                Event::Notification(None) => self.notifications.subscription = None,
            }
            self.maybe_release();
            self.deliver_notifications();
        }
    }

    /// Once per turn of the loop: publishes whether the client is in a
    /// transaction and, between transactions, takes a newer snapshot.
    #[inline]
    fn at_turn(&mut self) -> Result<(), SessionError> {
        let between = self.between_transactions();
        if between == self.published_in_tx {
            self.published_in_tx = !between;
            self.info.set_in_transaction(!between);
        }
        if between && self.runtime.version() != self.snap.version {
            self.take_snapshot()?;
        }
        if between {
            self.info.use_snapshot(0);
        }
        if between && self.info.touching_moves() {
            self.info.set_touching_moves(false);
        }
        Ok(())
    }

    /// Client input arrived: input after `KILL CLIENT` ends the session;
    /// between transactions, publish the snapshot the
    /// session routes by, then take a newer one if a reload or a move
    /// installed it meanwhile (docs/ARCHITECTURE.md §10).
    #[inline]
    fn enter_input(&mut self) -> Result<(), SessionError> {
        if self.info.ended() {
            return Err(SessionError::ClientIo(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the session was ended by the proxy",
            )));
        }
        if !self.between_transactions() {
            return Ok(());
        }
        self.info.use_snapshot(self.snap.version);
        if self.runtime.version() != self.snap.version {
            self.take_snapshot()?;
            self.info.use_snapshot(self.snap.version);
        }
        Ok(())
    }

    /// Whether the client is between transactions: nothing of a transaction
    /// is held (in session pooling, the server connection is idle).
    #[inline]
    fn between_transactions(&self) -> bool {
        self.backend.as_ref().is_none_or(|b| b.ex.idle())
            && self.parked.is_empty()
            && self.vtx.is_none()
            && !self.begin_deferred
            && self.fanout_state.is_none()
            && self.pending_retry.is_none()
    }

    /// Switches to the runtime's current snapshot (a reload happened).
    /// Shard and node indices keep their meaning across snapshots, so an
    /// attached session-pooled connection stays valid.
    fn take_snapshot(&mut self) -> Result<(), SessionError> {
        let snap = self.runtime.snapshot();
        let Some(user) = snap.users.get(&self.user.config.name) else {
            return Err(SessionError::Fatal(
                crate::clients::EndReason::UserRemoved.to_pg_error(),
            ));
        };
        let old = crate::routing::ReadLevel::configured(&self.snap.config, &self.user.config);
        let new = crate::routing::ReadLevel::configured(&snap.config, &user.config);
        self.routing.rebase(old, new);
        self.info.set_consistency(self.routing.level().consistency);
        self.user = user;
        self.shards = snap.topology.shards.clone();
        self.pools = self
            .shards
            .iter()
            .map(|s| vec![None; s.nodes.len()])
            .collect();
        self.route_reads = routes_reads(&self.shards);
        self.gathers = self.route_reads || self.sharded;
        self.max_message = snap.config.proxy.max_message_size;
        self.max_buffer = snap.config.proxy.max_client_buffer;
        self.defer_begin =
            snap.config.proxy.defer_begin && self.mode == PoolMode::Transaction && !self.sharded;
        self.snap = snap;
        Ok(())
    }

    /// Passes held notifications to the client once it is between
    /// transactions (Postgres delivers them then too).
    #[inline]
    fn deliver_notifications(&mut self) {
        if !self.notifications.held.is_empty()
            && self.backend.is_none()
            && self.vtx.is_none()
            && !self.begin_deferred
        {
            for n in self.notifications.held.drain(..) {
                self.cout.extend_from_slice(&n);
            }
        }
    }

    async fn wait(&mut self) -> Event {
        let timer = self.next_timeout();
        let (deadline, why) = match timer {
            Some((d, w)) => (Some(d), w),
            None => (None, timeouts::Timeout::Query),
        };
        if self.notifications.subscription.is_some() {
            reserve(&mut self.cbuf);
            return self.wait_listening(deadline, why).await;
        }
        if self.backend.is_none()
            && !self.begin_deferred
            && self.cbuf.is_empty()
            && self.cout.is_empty()
            && self.sout.is_empty()
            && self.spare_queue.is_empty()
            && !self.client.is_tls()
        {
            return self.wait_idle(deadline, why).await;
        }
        reserve(&mut self.cbuf);
        let client = &mut self.client;
        let cbuf = &mut self.cbuf;
        match &mut self.backend {
            Some(b) => {
                let conn = &mut *b.conn;
                reserve(&mut conn.read_buf);
                // A statement waiting on a node the monitor finds
                // unresponsive ends as if its connection were lost: a read
                // runs again elsewhere, anything else fails with 08006.
                let waiting = !b.ex.expect.is_empty();
                let node = b.node.node();
                tokio::select! {
                    biased;
                    r = conn.stream.read_buf(&mut conn.read_buf) => Event::Server(r),
                    r = client.read_buf(cbuf) => Event::Client(r),
                    _ = timeouts::until(deadline) => Event::Timeout(why),
                    _ = node.unresponsive(), if waiting => Event::Server(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the node stopped answering (banned by its health check)",
                    ))),
                }
            }
            // A deferred BEGIN is an open transaction: shutdown lets it finish.
            None if self.begin_deferred => tokio::select! {
                biased;
                r = client.read_buf(cbuf) => Event::Client(r),
                _ = timeouts::until(deadline) => Event::Timeout(why),
            },
            None => {
                let shutdown = self.shutdown.as_mut();
                // Biased: no random pick per wait; a client that keeps
                // sending still sees shutdown, checked on every turn of serve.
                tokio::select! {
                    biased;
                    r = client.read_buf(cbuf) => Event::Client(r),
                    _ = shutdown => Event::Shutdown,
                    _ = timeouts::until(deadline) => Event::Timeout(why),
                }
            }
        }
    }

    /// [`Session::wait`] for a client between statements with nothing
    /// buffered (plain TCP): the session's buffers and spare expectation
    /// queue go to the thread's cache while it waits for the socket to
    /// become readable and come back (from the cache, so without allocating
    /// while clients keep coming) before it reads. An idle client thus holds
    /// no buffer (docs/ARCHITECTURE.md §1).
    /// Over TLS the session reads as usual: the TLS layer may hold decrypted
    /// bytes the socket's readiness does not show.
    async fn wait_idle(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        why: timeouts::Timeout,
    ) -> Event {
        let Session {
            client,
            cbuf,
            cout,
            sout,
            spare_queue,
            shutdown,
            ..
        } = self;
        let shardgate_pool::MaybeTls::Plain(tcp) = client else {
            unreachable!("wait_idle is for plain TCP clients");
        };
        crate::memory::Buffers {
            input: cbuf,
            output: cout,
            server: sout,
            queue: spare_queue,
        }
        .park();
        // Readiness first, buffers then: a read that finds nothing after
        // all (stale readiness, rare) waits holding them.
        let read = std::future::poll_fn(|cx| {
            if cbuf.capacity() == 0 {
                std::task::ready!(tcp.poll_read_ready(cx))?;
                crate::memory::Buffers {
                    input: &mut *cbuf,
                    output: &mut *cout,
                    server: &mut *sout,
                    queue: &mut *spare_queue,
                }
                .unpark();
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut *tcp), cx, &mut *cbuf)
        });
        // Biased: no random pick per wait; a client that keeps sending
        // still sees shutdown, checked on every turn of serve.
        let event = tokio::select! {
            biased;
            r = read => Event::Client(r),
            _ = shutdown.as_mut() => Event::Shutdown,
            _ = timeouts::until(deadline) => Event::Timeout(why),
        };
        crate::memory::Buffers {
            input: cbuf,
            output: cout,
            server: sout,
            queue: spare_queue,
        }
        .unpark();
        event
    }

    /// [`Session::wait`] for a client that listens: notifications too.
    async fn wait_listening(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        why: timeouts::Timeout,
    ) -> Event {
        let client = &mut self.client;
        let cbuf = &mut self.cbuf;
        let sub = self.notifications.subscription.as_mut().expect("listening");
        match &mut self.backend {
            Some(b) => {
                let conn = &mut *b.conn;
                reserve(&mut conn.read_buf);
                tokio::select! {
                    biased;
                    r = conn.stream.read_buf(&mut conn.read_buf) => Event::Server(r),
                    r = client.read_buf(cbuf) => Event::Client(r),
                    n = sub.incoming.recv() => Event::Notification(n),
                    _ = timeouts::until(deadline) => Event::Timeout(why),
                }
            }
            None => {
                let shutdown = self.shutdown.as_mut();
                tokio::select! {
                    biased;
                    r = client.read_buf(cbuf) => Event::Client(r),
                    n = sub.incoming.recv() => Event::Notification(n),
                    _ = shutdown, if !self.begin_deferred => Event::Shutdown,
                    _ = timeouts::until(deadline) => Event::Timeout(why),
                }
            }
        }
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
        if let Some(mark) = self.held_read {
            if self.cout.len().saturating_sub(mark) <= RETRY_HOLD_LIMIT {
                return Ok(());
            }
            // Too large to hold: streamed, and no longer run again.
            self.held_read = None;
        }
        if !self.cout.is_empty() && !self.holding_answer() {
            if let Some(batch) = self.batch.as_deref_mut() {
                let ready = batch.pass(&mut self.cout);
                self.client.send_all(&self.cout[..ready]).await?;
                bytes::Buf::advance(&mut self.cout, ready);
                return Ok(());
            }
            self.client.send_all(&self.cout).await?;
            self.cout.clear();
            if self.cout.capacity() > RETRY_HOLD_LIMIT {
                // A held-back answer grew it: idle sessions keep little memory.
                self.cout = BytesMut::new();
            }
        }
        Ok(())
    }

    /// Whether the client output is held back because the read it answers
    /// may still run again elsewhere.
    #[inline]
    fn holding_answer(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.retry.is_some())
    }

    async fn flush_server(&mut self) -> Result<(), SessionError> {
        if self.sout.is_empty() {
            return Ok(());
        }
        let Some(b) = self.backend.as_mut() else {
            self.sout.clear();
            return Ok(());
        };
        b.conn.loan.bytes_sent += self.sout.len() as u64;
        let written = b.conn.stream.send_all(&self.sout).await;
        self.sout.clear();
        if let Err(e) = written {
            self.server_lost(e.to_string())?;
        }
        Ok(())
    }

    // ---- client side -------------------------------------------------------

    /// Handles the complete messages at the front of the client's input
    /// that take the common path (`message_now`: no waiting, no batch to
    /// route as a whole), without the boxed future of
    /// [`Self::handle_client_input`]. True when that was all of the input
    /// (a partial message may stay for the next read); false leaves the
    /// rest, from the first message that needs more, to that future.
    fn client_input_now(&mut self) -> Result<bool, SessionError> {
        if self.gathers {
            return Ok(false);
        }
        let mut buf = std::mem::take(&mut self.cbuf);
        let mut pos = 0;
        let result = self.messages_now(&buf, &mut pos);
        shardgate_protocol::consume_front(&mut buf, pos);
        self.cbuf = buf;
        result
    }

    /// The loop of [`Self::client_input_now`], advancing `pos` past each
    /// message handled.
    fn messages_now(&mut self, buf: &[u8], pos: &mut usize) -> Result<bool, SessionError> {
        while let Some(h) = Header::complete(&buf[*pos..], self.max_message)? {
            self.within_buffer(h.total)?;
            if self.begin_deferred || self.sout.len() >= 64 * 1024 {
                return Ok(false);
            }
            let (msg, rest) = buf[*pos..].split_at(h.total);
            if !matches!(self.message_now(h.tag, msg, rest)?, Now::Done) {
                // `General` did nothing; `AfterAttach` only found no idle
                // connection, which the general path looks for again.
                return Ok(false);
            }
            *pos += h.total + std::mem::take(&mut self.extra_consumed);
        }
        if let Some(h) = Header::peek(&buf[*pos..], self.max_message)? {
            self.within_buffer(h.total)?;
        }
        Ok(true)
    }

    async fn handle_client_input(&mut self, large: bool) -> Result<Flow, SessionError> {
        let mut buf = std::mem::take(&mut self.cbuf);
        let result = self.process_client_buffer(&mut buf).await;
        self.cbuf = buf;
        let flow = result?;
        self.end_client_input(large).await?;
        Ok(flow)
    }

    /// After a read of client input is handled: sends what it produced for
    /// the server and gives back buffer memory a large input needed.
    async fn end_client_input(&mut self, large: bool) -> Result<(), SessionError> {
        self.flush_server().await?;
        crate::memory::shrink_if_idle(&mut self.sout);
        if crate::memory::shrink_if_idle(&mut self.cbuf) || large {
            // The analysis of a large statement freed much more than this.
            crate::memory::give_back();
        }
        Ok(())
    }

    async fn process_client_buffer(&mut self, buf: &mut BytesMut) -> Result<Flow, SessionError> {
        let mut pos = 0;
        let result = self.process_client_messages(buf, &mut pos).await;
        // Consumed once per read, so a pipelined batch is not shifted per message.
        shardgate_protocol::consume_front(buf, pos);
        result
    }

    /// Handles every complete message from `pos` on, advancing `pos` past each.
    async fn process_client_messages(
        &mut self,
        buf: &[u8],
        pos: &mut usize,
    ) -> Result<Flow, SessionError> {
        // Messages before this offset belong to a batch known to be whole.
        let mut batch_whole_until = 0;
        while let Some(h) = Header::complete(&buf[*pos..], self.max_message)? {
            self.within_buffer(h.total)?;
            if self.gathers && *pos >= batch_whole_until && continues_batch(h.tag) {
                // A batch is routed as a whole: wait for its Sync or Flush.
                match batch_end(&buf[*pos..], self.batch_scanned, self.max_message)? {
                    BatchEnd::Complete(n) => {
                        batch_whole_until = *pos + n;
                        self.batch_scanned = 0;
                    }
                    BatchEnd::Incomplete(_) if buf.len() - *pos > self.max_buffer => {
                        self.input_refused = true;
                        return Err(SessionError::Fatal(batch_too_large(self.max_buffer)));
                    }
                    BatchEnd::Incomplete(n) => {
                        self.batch_scanned = n;
                        break;
                    }
                }
            }
            let (msg, rest) = buf[*pos..].split_at(h.total);
            if self.begin_deferred
                && h.tag != tag::TERMINATE
                && !self.send_deferred_begin(h.tag).await?
            {
                // No connection: the client has its error for this message.
                *pos += h.total;
                continue;
            }
            let flow = match self.message_now(h.tag, msg, rest)? {
                Now::Done => Flow::Continue,
                Now::AfterAttach(want) => {
                    // Only the wait for a connection remains: the statement
                    // is not scanned and classified again.
                    if self.attach(Proto::Simple, want).await? {
                        self.start_retry(msg);
                        if let Ok(sql) = frontend::parse_query(&msg[5..]) {
                            self.cycle_starts(sql);
                        }
                        self.forward(msg, Expect::Query { forward: true });
                    }
                    Flow::Continue
                }
                Now::General => self.on_client_message(h.tag, msg, rest).await?,
            };
            let extra = std::mem::take(&mut self.extra_consumed);
            *pos += h.total + extra;
            if flow == Flow::Stop {
                return Ok(Flow::Stop);
            }
            if self.sout.len() >= 64 * 1024 {
                self.flush_server().await?;
            }
        }
        // Reject an oversized message as soon as its header is in.
        if let Some(h) = Header::peek(&buf[*pos..], self.max_message)? {
            self.within_buffer(h.total)?;
        }
        Ok(Flow::Continue)
    }

    /// Fails the session with `54000` when holding `len` bytes of one
    /// client's input would pass `max_client_buffer`: what Postgres says
    /// when a message would grow its own buffer past its limit ("out of
    /// memory", program_limit_exceeded), not 53200, which reports the
    /// allocator running dry.
    fn within_buffer(&mut self, len: usize) -> Result<(), SessionError> {
        if len <= self.max_buffer {
            return Ok(());
        }
        self.input_refused = true;
        Err(SessionError::Fatal(
            PgError::fatal(
                "54000",
                format!(
                    "out of memory: a message of {len} bytes exceeds max_client_buffer ({} bytes)",
                    self.max_buffer
                ),
            )
            .with_hint("Send smaller statements, or raise max_client_buffer in proxy.toml."),
        ))
    }

    /// Handles one client message; `rest` holds the messages after it that
    /// have already arrived (to route a pipelined batch as a whole).
    async fn on_client_message(
        &mut self,
        t: u8,
        msg: &[u8],
        rest: &[u8],
    ) -> Result<Flow, SessionError> {
        if !matches!(
            t,
            tag::QUERY | tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE | tag::EXECUTE
        ) {
            // The others are decoded (and so validated) by their handlers.
            frontend::validate(t, &msg[5..])?;
        }
        if self.skip_until_sync && t != tag::SYNC && t != tag::TERMINATE {
            frontend::validate(t, &msg[5..])?;
            return Ok(Flow::Continue);
        }
        self.keep_for_retry(msg);
        match t {
            tag::QUERY => self.on_query(msg).await?,
            tag::PARSE => self.on_parse(msg, rest).await?,
            tag::BIND => self.on_bind(msg, rest).await?,
            tag::DESCRIBE => self.on_describe(msg, rest).await?,
            tag::CLOSE => self.on_close(msg).await?,
            tag::EXECUTE => self.on_execute(msg, rest).await?,
            tag::FLUSH => self.on_flush(msg),
            tag::SYNC if self.vtx.as_ref().is_some_and(|v| v.implicit) => {
                Box::pin(self.end_batch_tx()).await?
            }
            tag::SYNC => self.on_sync(msg),
            tag::TERMINATE => return Ok(Flow::Stop),
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL if self.fanout_state.is_some() => {
                Box::pin(self.copy_message(t, msg)).await?
            }
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                // Outside COPY these are ignored, as Postgres does.
                if let Some(b) = self.backend.as_mut() {
                    if t != tag::COPY_DATA {
                        b.ex.copy_may_follow = false;
                    }
                    self.sout.extend_from_slice(msg);
                }
            }
            tag::FUNCTION_CALL => {
                if self.attach(Proto::Simple, Want::Primary).await? {
                    self.forward(msg, Expect::Query { forward: true });
                }
            }
            other => return Err(ProtocolError::UnknownType(other).into()),
        }
        Ok(Flow::Continue)
    }

    /// Appends a client message for the server with its expectation.
    fn forward(&mut self, msg: &[u8], e: Expect) {
        let b = self.backend.as_mut().expect("attached before forwarding");
        if !matches!(e, Expect::Query { .. } | Expect::Sync { .. }) {
            b.ex.unsynced = true;
        }
        self.sout.extend_from_slice(msg);
        self.push_expect(e);
    }

    /// Forwards a client's Sync with the expectation it needs, if any (see
    /// [`Exchange::sync_expectation`]).
    fn forward_sync(&mut self, msg: &[u8]) {
        self.sout.extend_from_slice(msg);
        let b = self.backend.as_mut().expect("attached before forwarding");
        if let Some(e) = b.ex.sync_expectation() {
            self.push_expect(e);
        }
    }

    /// Hidden queries that follow a client's cycle on its connection once
    /// the server has answered everything: the startup values after a
    /// `RESET` (see [`crate::relay::Exchange::restore`]), and for a
    /// read-your-writes client after a write committed on the primary, the
    /// primary's WAL position. The client already has its answer; only the
    /// connection's return to the pool waits for these.
    async fn after_cycle(&mut self) -> Result<(), SessionError> {
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        if std::mem::take(&mut b.ex.cycle_done) && b.track_lsn {
            b.lsn_due = true;
        }
        if b.ex.restore.is_some() && b.ex.expect.is_empty() && !b.ex.unsynced {
            let restore = b.ex.restore.take().expect("checked");
            frontend::encode_query(&restore, &mut self.sout);
            b.ex.expect.push_back(Expect::Query { forward: false });
            self.flush_server().await?;
            return Ok(());
        }
        if b.lsn_due && b.ex.expect.is_empty() && !b.ex.unsynced {
            b.lsn_due = false;
            frontend::encode_query(COMMIT_LSN_SQL, &mut self.sout);
            b.ex.expect.push_back(Expect::CommitLsn { lsn: None });
            self.flush_server().await?;
        }
        Ok(())
    }

    /// Queues an expectation; a synthetic response emitted at once means the
    /// client has seen part of the answer, so the read can no longer be retried.
    fn push_expect(&mut self, e: Expect) {
        let b = self.backend.as_mut().expect("attached");
        let before = self.cout.len();
        b.ex.push(e, &mut self.cout);
        if self.cout.len() != before {
            b.retry = None;
        }
    }

    /// Keeps a copy of a client message while its read may still be retried.
    fn keep_for_retry(&mut self, msg: &[u8]) {
        if let Some(b) = self.backend.as_mut() {
            if let Some(kept) = b.retry.as_mut() {
                if kept.msgs.iter().map(Bytes::len).sum::<usize>() + msg.len() > RETRY_LIMIT {
                    b.retry = None;
                } else {
                    kept.msgs.push(Bytes::copy_from_slice(msg));
                }
            }
        }
    }

    /// What a statement needs, from its classification and hint comments.
    fn want_for(&self, sql: &str) -> Result<Want, PgError> {
        self.want_for_scanned(sql, mentions_shardgate(sql))
    }

    /// [`Session::want_for`] when it is already known whether `sql` mentions shardgate.
    fn want_for_scanned(&self, sql: &str, mentions: bool) -> Result<Want, PgError> {
        if !self.route_reads {
            // Only hints need checking: everything goes to the primary.
            if mentions {
                parse_hints(sql).map_err(hint_error)?;
            }
            return Ok(Want::Primary);
        }
        self.want_of(&self.snap.classify(sql))
    }

    /// What a statement classified as `c` needs (when reads are routed).
    fn want_of(&self, c: &shardgate_router::Classification) -> Result<Want, PgError> {
        let hints = c.hints().map_err(|e| hint_error(e.clone()))?;
        Ok(self.routing.want(c.route, hints))
    }

    /// Handles the common messages without suspending: a simple query, a
    /// plain extended batch, Bind and Execute of a prepared statement, Sync.
    /// Keeping this path synchronous spares each statement four nested
    /// futures (message, query, attach, checkout): 9% fewer instructions per
    /// `-S` transaction and 40% fewer data cache lines written (callgrind).
    fn message_now(&mut self, t: u8, msg: &[u8], rest: &[u8]) -> Result<Now, SessionError> {
        let done = match t {
            tag::QUERY => return self.query_now(msg),
            tag::PARSE => self.plain_batch_now(msg, rest)?,
            tag::BIND => self.bind_now(msg)?,
            tag::EXECUTE => self.execute_now(msg)?,
            tag::SYNC if self.vtx.as_ref().is_some_and(|v| v.implicit) => false,
            tag::SYNC => {
                // What `on_client_message` does for Sync, which never suspends.
                frontend::validate(t, &msg[5..])?;
                self.keep_for_retry(msg);
                self.on_sync(msg);
                true
            }
            _ => false,
        };
        Ok(if done { Now::Done } else { Now::General })
    }

    /// A simple query on the common path, handled without suspending: not
    /// sharded, nothing for the proxy to answer or track, and a connection
    /// attached or idle now. When only a connection is missing, the caller
    /// attaches one (`Now::AfterAttach`); `Now::General` means nothing was
    /// done: `on_client_message` takes it.
    fn query_now(&mut self, msg: &[u8]) -> Result<Now, SessionError> {
        if self.sharded || self.skip_until_sync {
            return Ok(Now::General);
        }
        let Ok(sql) = frontend::parse_query(&msg[5..]) else {
            return Ok(Now::General);
        };
        if self.try_defer_begin(sql) {
            return Ok(Now::Done);
        }
        let scan = quick_scan(sql);
        if scan.shardgate
            || scan.discard_or_deallocate
            || scan.session_effects
            || (scan.set && SessionState::may_change_state(sql))
        {
            return Ok(Now::General);
        }
        match &self.backend {
            Some(b) => {
                if b.batch_on_replica() {
                    return Ok(Now::General);
                }
                self.keep_for_retry(msg);
            }
            None => {
                let Ok(want) = self.want_for_scanned(sql, false) else {
                    return Ok(Now::General);
                };
                if !self.attach_now(want) {
                    return Ok(Now::AfterAttach(want));
                }
                self.start_retry(msg);
            }
        }
        self.cycle_starts(sql);
        self.forward(msg, Expect::Query { forward: true });
        Ok(Now::Done)
    }

    async fn on_query(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let sql = frontend::parse_query(&msg[5..])?;
        let scan = quick_scan(sql);
        if scan.shardgate && self.answer_shardgate_query(sql) {
            return Ok(());
        }
        if self.mode == PoolMode::Transaction {
            if scan.discard_or_deallocate && self.answer_locally(sql) {
                return Ok(());
            }
            if scan.session_effects && self.answer_listen_query(sql).await {
                return Ok(());
            }
            if scan.set {
                self.state.note_query(sql);
            }
            if scan.session_effects && split_statements(sql).into_iter().any(leaves_session_state) {
                self.state.note_untracked();
            }
        }
        if self.sharded {
            return Box::pin(self.on_query_sharded(msg, sql)).await;
        }
        // Classified once: to leave a replica a batch holds, and to attach.
        let mut classified = None;
        if self.backend.as_ref().is_some_and(Backend::batch_on_replica) {
            let c = self.want_for_scanned(sql, scan.shardgate);
            if !self
                .leave_replica_for(*c.as_ref().unwrap_or(&Want::Primary))
                .await?
            {
                // The batch failed: the server ignores this query too.
                return Ok(());
            }
            classified = Some(c);
        }
        if self.backend.is_none() {
            let classified =
                classified.unwrap_or_else(|| self.want_for_scanned(sql, scan.shardgate));
            let want = match classified {
                Ok(w) => w,
                Err(e) => {
                    self.runtime.stats.proxy_error(e.code.as_str());
                    e.encode(&mut self.cout);
                    shardgate_protocol::backend::ready_for_query(b'I', &mut self.cout);
                    return Ok(());
                }
            };
            if !self.attach(Proto::Simple, want).await? {
                return Ok(());
            }
            self.start_retry(msg);
        }
        self.cycle_starts(sql);
        self.forward(msg, Expect::Query { forward: true });
        if scan.set {
            self.restore_startup_values(sql);
        }
        Ok(())
    }

    /// After a query that `RESET`s parameters the client connected with:
    /// the server reset them to its own defaults (the pooled connection
    /// got the client's values by `SET`), so the startup values are set
    /// again right behind it, before anything else of the client's runs.
    pub(super) fn restore_startup_values(&mut self, sql: &str) {
        if self.backend.is_none() {
            return;
        }
        if let Some(restore) = self.state.restore_after_reset(sql) {
            frontend::encode_query(&restore, &mut self.sout);
            self.push_expect(Expect::Query { forward: false });
        }
    }
}

fn hint_error(e: shardgate_router::HintError) -> PgError {
    PgError::error("22023", e.to_string())
        .with_hint("Hints look like /* shardgate: consistency=strong */.")
}

/// Asks the primary for its WAL position right after a client's cycle: the
/// answer is at or past the client's commit, and costs the client no round trip.
const COMMIT_LSN_SQL: &str = "SELECT pg_current_wal_lsn()::text";

/// After refusing a client's input for its size: reads and drops what the
/// client still sends, for up to a second, so the connection ends with a
/// FIN the client reads after the error (closing a socket with input
/// unread resets it, and the client may lose the error sent just before).
async fn linger(client: &mut ClientStream) {
    // On the heap: this future is part of every session's.
    let mut sink = vec![0u8; 8192];
    let drain = async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

#[inline]
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(16 * 1024);
    }
}

/// An extended-protocol batch grew past `max_client_buffer` without a Sync
/// or Flush.
fn batch_too_large(max: usize) -> PgError {
    PgError::fatal(
        "54000",
        format!("out of memory: an extended-protocol batch exceeds max_client_buffer ({max} bytes) before its Sync or Flush"),
    )
    .with_hint("Send Sync or Flush more often, or raise max_client_buffer in proxy.toml.")
}

fn shutdown_error() -> PgError {
    PgError::fatal(
        "57P01",
        "terminating connection because shardgate is shutting down",
    )
}

/// What a client is told when no server connection could be had.
pub fn pool_error(e: &PoolError) -> PgError {
    match e {
        PoolError::Timeout { addr, timeout_ms, size } => PgError::error(
            "53300",
            format!(
                "shardgate: no server connection to {addr} became free within pool_timeout ({timeout_ms} ms); all {size} are busy"
            ),
        )
        .with_hint("Retry, raise pool_size or pool_timeout in proxy.toml, or shorten long transactions."),
        PoolError::Connect(ConnectError::Refused { fields, .. }) => {
            PgError::error(&fields.code, fields.message.clone())
        }
        PoolError::Connect(c) => PgError::error("08006", format!("shardgate: {c}"))
            .with_hint("Check that the server is running and reachable, and the [[shards]] addresses in proxy.toml."),
    }
}

/// Opening a server connection took longer than `connect_timeout`.
fn connect_timed_out(e: &PoolError) -> bool {
    matches!(e, PoolError::Connect(ConnectError::Timeout(_)))
}

/// Whether a pool error means the node itself is unreachable (not an
/// authentication or database problem, and not a busy pool).
fn node_unreachable(e: &PoolError) -> bool {
    match e {
        PoolError::Connect(ConnectError::Io { .. } | ConnectError::Timeout(_)) => true,
        PoolError::Connect(ConnectError::Refused { fields, .. }) => {
            // Shutting down, starting up, in recovery crash: the node, not the login.
            matches!(fields.code.as_str(), "57P01" | "57P02" | "57P03")
        }
        _ => false,
    }
}
