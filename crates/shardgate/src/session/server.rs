//! Lending server connections: choosing the node, replaying session state,
//! relaying responses, releasing, and what happens when a server fails.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardgate_pool::PooledConn;
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend;
use shardgate_protocol::{Header, PgError, Severity};
use tokio::io::AsyncReadExt;

use super::{
    connect_timed_out, node_unreachable, pool_error, reserve, Backend, Proto, RetryLog, Session,
    SessionError, RETRY_HOLD_LIMIT,
};
use crate::config::PoolMode;
use crate::relay::{relay, Exchange, Expect, RelayContext};
use crate::routing::{choose, Choice, Want};
use crate::state::{DIRTY, FRESH};
use shardgate_router::Consistency;

/// A read to run again on another node, and how often it was tried.
pub(super) struct PendingRetry {
    pub msgs: Vec<Bytes>,
    pub names: Vec<String>,
    pub attempt: usize,
}

impl Session {
    /// The shard unrouted statements go to.
    pub(super) fn default_shard(&self) -> usize {
        self.snap.default_shard()
    }

    /// The pool of node `index` of `shard`, looked up on first use.
    pub(super) fn pool_of(&mut self, shard: usize, index: usize) -> &shardgate_pool::Pool {
        let slot = &mut self.pools[shard][index];
        slot.get_or_insert_with(|| {
            let addr = &self.shards[shard].nodes[index].addr;
            self.runtime
                .pool(&self.snap, addr, &self.user, &self.database)
        })
    }

    /// The node of `shard` to serve `want`, passing over the nodes in
    /// `avoid` (bit `i` for node `i`).
    fn pick(&self, shard: usize, want: Want, avoid: u64) -> Result<Choice, PgError> {
        let state = &self.shards[shard];
        if want == Want::Primary && state.writer().is_clear() {
            // The common case needs no clock.
            return Ok(Choice {
                node: state.writer().clone(),
                replica: false,
            });
        }
        choose(
            state,
            want,
            self.routing.min_lsn,
            self.snap.topology.now_ms(),
            avoid,
        )
    }

    /// Chooses a node of `shard` for `want` and gets a connection to it; an
    /// unreachable node is banned and, for reads, another one is tried.
    pub(super) async fn checkout(
        &mut self,
        shard: usize,
        want: Want,
    ) -> Result<(PooledConn, Choice), PgError> {
        if self.runtime.pause.any() && self.backend.is_none() && self.parked.is_empty() {
            // A new transaction on a paused shard waits for RESUME.
            self.info.set_state(crate::clients::ClientState::Waiting);
            self.runtime.pause.wait_open(shard).await;
            self.info.set_state(crate::clients::ClientState::Idle);
        }
        let attempts = self.shards[shard].nodes.len();
        let mut last_err = None;
        let mut slow = self.lost_on(shard);
        for _ in 0..attempts {
            let choice = match self.pick(shard, want, slow) {
                Ok(c) => c,
                Err(e) => return Err(last_err.unwrap_or(e)),
            };
            let pool = self.pool_of(shard, choice.node.index).clone();
            let conn = match pool.get_idle() {
                Some(conn) => Ok(conn),
                None => {
                    self.info.set_state(crate::clients::ClientState::Waiting);
                    let got = pool.get().await;
                    if got.is_err() {
                        self.info.set_state(crate::clients::ClientState::Idle);
                    }
                    got
                }
            };
            match conn {
                Ok(conn) => return Ok((conn, choice)),
                Err(e) if connect_timed_out(&e) && choice.node.answered_lately() => {
                    // The node answers other clients: a stalled machine or a
                    // busy postmaster, not an outage. Banning it would fail
                    // everyone; the health check decides if it is really down.
                    // A read tries the other nodes first.
                    tracing::warn!(node = %choice.node.addr, error = %e, "slow login to a serving node; not banned");
                    if want == Want::Primary || choice.node.index >= 64 {
                        return Err(pool_error(&e));
                    }
                    slow |= 1 << choice.node.index;
                    last_err = Some(pool_error(&e));
                }
                Err(e) if node_unreachable(&e) => {
                    choice.node.ban(
                        self.snap.topology.now_ms(),
                        self.snap.ban_ms(),
                        &e.to_string(),
                    );
                    pool.drain_idle();
                    last_err = Some(pool_error(&e));
                    if !choice.replica && want == Want::Primary {
                        break;
                    }
                }
                Err(e) => return Err(pool_error(&e)),
            }
        }
        Err(last_err.unwrap_or_else(|| PgError::error("08006", "shardgate: no server available")))
    }

    /// The common case of [`Session::attach`], done without suspending: a
    /// connection to the target shard is attached already, or none is and an
    /// idle primary connection is free now. False means nothing was done:
    /// call `attach`.
    pub(super) fn attach_now(&mut self, want: Want) -> bool {
        let shard = self.target;
        if let Some(b) = &self.backend {
            return b.shard == shard && !(want == Want::Primary && b.batch_on_replica());
        }
        // Only the primary: picking a replica rotates between replicas, and
        // a pick here followed by another in `checkout` (no idle connection)
        // would skip one replica every time.
        if !self.parked.is_empty() || want != Want::Primary || self.runtime.pause.any() {
            return false;
        }
        let Ok(choice) = self.pick(shard, want, 0) else {
            return false;
        };
        match self.pool_of(shard, choice.node.index).get_idle() {
            Some(conn) => {
                self.install(conn, choice, want, shard);
                true
            }
            None => false,
        }
    }

    /// Makes sure a server connection is attached. On failure the client has
    /// been sent the error (and, for a simple query, ReadyForQuery) and
    /// `false` is returned.
    pub(super) async fn attach(&mut self, proto: Proto, want: Want) -> Result<bool, SessionError> {
        if !self.leave_replica_for(want).await? {
            return Ok(false);
        }
        let shard = self.target;
        match self.backend.as_ref().map(|b| b.shard) {
            Some(current) if current == shard => {
                self.join_current_to_tx();
                return Ok(true);
            }
            Some(_) if !self.switch_away(proto).await? => return Ok(false),
            _ => {}
        }
        if let Some(i) = self.parked.iter().position(|b| b.shard == shard) {
            let b = self.parked.swap_remove(i);
            self.backend = Some(b);
            self.join_current_to_tx();
            return Ok(true);
        }
        match self.checkout(shard, want).await {
            Ok((conn, choice)) => {
                self.install(conn, choice, want, shard);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(user = %self.user.config.name, error = %e, "no server connection");
                self.runtime.stats.proxy_error(e.code.as_str());
                e.encode(&mut self.cout);
                match proto {
                    Proto::Simple => backend::ready_for_query(b'I', &mut self.cout),
                    Proto::Extended => self.skip_until_sync = true,
                }
                Ok(false)
            }
        }
    }

    /// Puts the current connection aside before a statement for another
    /// shard: waits for its outstanding answers first. A pipelined batch that
    /// spans shards (no Sync in between) cannot be split and is refused.
    async fn switch_away(&mut self, proto: Proto) -> Result<bool, SessionError> {
        self.end_batch_early();
        if self.backend.as_ref().is_some_and(|b| b.ex.unsynced) {
            let err = PgError::error(
                "0A000",
                "an extended-protocol batch cannot span several shards",
            )
            .with_hint("Send Sync between statements that go to different shards.");
            match proto {
                Proto::Simple => {
                    self.runtime.stats.proxy_error(err.code.as_str());
                    err.encode(&mut self.cout);
                    backend::ready_for_query(self.client_status(), &mut self.cout);
                }
                Proto::Extended => {
                    self.refuse_pg(err)?;
                }
            }
            return Ok(false);
        }
        self.drain_current().await?;
        if let Some(mut b) = self.backend.take() {
            if b.ex.status == b'I' && self.vtx.is_none() && self.mode == PoolMode::Transaction {
                self.spare_queue = std::mem::take(&mut b.ex.expect);
            } else {
                self.parked.push(b);
            }
        }
        Ok(true)
    }

    /// Ends the extended batch open on the current connection with a Sync of
    /// the proxy's own when that changes nothing the client can see (see
    /// [`Backend::may_end_batch_early`]): a driver preparing with Flush, say,
    /// or reads of a pipeline on a replica before a write. That frees the
    /// connection for a statement that belongs elsewhere.
    fn end_batch_early(&mut self) {
        if let Some(b) = self.backend.as_mut().filter(|b| b.may_end_batch_early()) {
            frontend::encode_empty(frontend::tag::SYNC, &mut self.sout);
            b.ex.unsynced = false;
            b.ex.push(Expect::Query { forward: false }, &mut self.cout);
        }
    }

    /// Before a statement that needs the primary: a replica connection held
    /// by an open batch is let go (its answers reach the client first), so
    /// the statement is not run on the replica. Returns false when that
    /// batch failed on the replica: the server skips to Sync, and so must
    /// the rest of the client's batch (`skip_until_sync` is set).
    pub(super) async fn leave_replica_for(&mut self, want: Want) -> Result<bool, SessionError> {
        let on_replica = self.backend.as_ref().is_some_and(Backend::batch_on_replica);
        if want != Want::Primary || !on_replica {
            return Ok(true);
        }
        self.drain_current().await?;
        if self.backend.as_ref().is_some_and(|b| b.ex.skipping) {
            self.skip_until_sync = true;
            return Ok(false);
        }
        self.end_batch_early();
        self.drain_current().await?;
        self.maybe_release();
        Ok(true)
    }

    /// Waits until the current connection has answered everything sent to it,
    /// relaying the answers to the client.
    pub(super) async fn drain_current(&mut self) -> Result<(), SessionError> {
        if let Some(b) = self.backend.as_ref() {
            if b.ex.unsynced && !b.ex.expect.is_empty() {
                // The client's batch has no Sync yet: the server keeps its
                // answers buffered until asked for them (pgjdbc's Close of a
                // fetched portal followed by COMMIT waited here forever).
                frontend::encode_empty(frontend::tag::FLUSH, &mut self.sout);
            }
        }
        self.flush_server().await?;
        while self
            .backend
            .as_ref()
            .is_some_and(|b| !b.ex.expect.is_empty())
        {
            let b = self.backend.as_mut().expect("checked");
            let conn = &mut *b.conn;
            reserve(&mut conn.read_buf);
            let client = &self.client;
            let read = tokio::select! {
                biased;
                r = conn.stream.read_buf(&mut conn.read_buf) => r,
                // A client that left is not waited for: the session ends,
                // and its connection is cancelled and discarded.
                () = std::future::poll_fn(|cx| client.poll_closed(cx)) => {
                    return Err(super::fanout::client_left());
                }
            };
            match read {
                Ok(0) => self.server_lost("server closed the connection unexpectedly".into())?,
                Ok(_) => self.handle_server_input()?,
                Err(e) => self.server_lost(e.to_string())?,
            }
            self.flush_client().await?;
        }
        Ok(())
    }

    /// The transaction status the client should see.
    pub(super) fn client_status(&self) -> u8 {
        if self.tx_aborted() {
            return b'E';
        }
        match (&self.backend, &self.vtx) {
            (Some(b), _) if b.ex.status != b'I' => b.ex.status,
            (_, Some(v)) if v.failed => b'E',
            (_, Some(_)) => b'T',
            (Some(b), None) => b.ex.status,
            (None, None) => b'I',
        }
    }

    /// Adopts a server connection as the current one.
    pub(super) fn install(&mut self, conn: PooledConn, choice: Choice, want: Want, shard: usize) {
        let mut out = std::mem::take(&mut self.sout);
        let b = self.make_backend(conn, choice, want, shard, &mut out);
        self.sout = out;
        self.backend = Some(b);
    }

    /// Wraps a server connection for this session; writes to `out` what the
    /// connection must run first (session state it lacks, the client's BEGIN
    /// when a transaction spread over shards reaches it).
    pub(super) fn make_backend(
        &mut self,
        mut conn: PooledConn,
        choice: Choice,
        want: Want,
        shard: usize,
        out: &mut BytesMut,
    ) -> Backend {
        let mut ex = Exchange {
            expect: std::mem::take(&mut self.spare_queue),
            ..Exchange::default()
        };
        let wanted = self.state.fingerprint();
        if conn.state_fingerprint != wanted {
            let (discard, sql) = self.state.replay(conn.state_fingerprint);
            if let Some(discard) = discard {
                // The proxy's statements there go too.
                conn.prepared.clear();
                conn.pending_closes.clear();
                frontend::encode_query(discard, out);
                ex.expect.push_back(Expect::Query { forward: false });
            }
            if !sql.is_empty() {
                frontend::encode_query(&sql, out);
                ex.expect.push_back(Expect::Query { forward: false });
            }
            conn.state_fingerprint = wanted;
        }
        let joined_tx = match self.vtx_begin() {
            Some(begin) => {
                // The client's transaction reaches this shard now.
                frontend::encode_query(&begin, out);
                ex.expect.push_back(Expect::Query { forward: false });
                true
            }
            None => false,
        };
        if self.parked.is_empty() && self.backend.is_none() {
            self.cancel.slot.set_one(&conn.cancel);
        } else {
            self.cancel.slot.add(&conn.cancel);
        }
        let track_lsn = !choice.replica
            && want == Want::Primary
            && self.route_reads
            && self.routing.level().consistency == Consistency::Session;
        let _link = self.info.link(crate::clients::ServerLink {
            addr: conn.addr.clone(),
            pid: conn.backend_key.0,
            opened: conn.created,
        });
        Backend {
            _link,
            shard,
            conn,
            ex,
            node: choice.node.begin_use(),
            want,
            retry: None,
            cycle_names: Vec::new(),
            track_lsn,
            lsn_due: false,
            joined_tx,
        }
    }

    /// What a shard runs when the client's transaction spread over shards
    /// first reaches it: the client's BEGIN and the savepoints open now.
    pub(super) fn vtx_begin(&self) -> Option<String> {
        let v = self.vtx.as_ref()?;
        let mut begin = v.begin.clone();
        for name in &v.savepoints {
            begin.push(';');
            begin.push_str(&shardgate_router::savepoint_statement(name));
        }
        Some(begin)
    }

    /// Sends the transaction's BEGIN on the current connection if the
    /// transaction has not reached it yet (it was attached before the
    /// transaction began: session pooling, a batch's connection).
    pub(super) fn join_current_to_tx(&mut self) {
        let Some(begin) = self.vtx_begin() else {
            return;
        };
        if let Some(b) = self.backend.as_mut().filter(|b| !b.joined_tx) {
            b.joined_tx = true;
            frontend::encode_query(&begin, &mut self.sout);
            b.ex.push(Expect::Query { forward: false }, &mut self.cout);
        }
    }

    /// Starts keeping the client messages of a replica read so it can be
    /// retried elsewhere; `first` is the message that attached the connection.
    pub(super) fn start_retry(&mut self, first: &[u8]) {
        if let Some(b) = self.backend.as_mut() {
            if matches!(b.want, Want::Read(_)) && b.ex.status == b'I' {
                b.retry = Some(RetryLog {
                    msgs: vec![Bytes::copy_from_slice(first)],
                    cout_mark: self.cout.len(),
                });
            }
        }
    }

    pub(super) fn handle_server_input(&mut self) -> Result<(), SessionError> {
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        b.node.node().note_answer();
        let mut rows = 0;
        let mut cx = RelayContext {
            cout: &mut self.cout,
            state: &mut self.state,
            statements: &mut self.statements,
            commit_lsn: &mut self.routing.min_lsn,
            rows: &mut rows,
        };
        if let Err(e) = relay(&mut b.conn, &mut b.ex, &mut cx) {
            tracing::error!(server = %b.conn.addr, error = %e, "server broke the protocol");
            return self.server_lost(format!("protocol error from server: {e}"));
        }
        if let Some(c) = self.cycle.as_mut() {
            c.rows += rows;
        }
        self.cycle_check_end();
        let b = self.backend.as_mut().expect("attached above");
        if let Some(r) = &b.retry {
            // A complete answer, or one too large to hold, goes to the client;
            // the read cannot run again after that.
            if b.ex.expect.is_empty()
                || self.cout.len().saturating_sub(r.cout_mark) > RETRY_HOLD_LIMIT
            {
                b.retry = None;
            }
        }
        if b.ex.skipping && !b.ex.unsynced {
            // The client's Sync is already queued; nothing to skip.
            b.ex.skipping = false;
        } else if b.ex.skipping {
            self.skip_until_sync = true;
        }
        if let Some(err) = b.ex.hidden_error.take_if(|_| self.logged_in) {
            tracing::warn!(server = %b.conn.addr, code = %err.code, message = %err.message, "replaying session state failed");
            b.conn.state_fingerprint = DIRTY;
        }
        if let Some(fatal) = b.ex.fatal.take() {
            return self.server_lost(format!("{} ({})", fatal.message, fatal.code));
        }
        if b.conn.broken && b.ex.expect.is_empty() {
            self.server_lost("server ended the session".into())?;
        }
        Ok(())
    }

    /// Returns the server connection to its pool when the transaction is over.
    pub(super) fn maybe_release(&mut self) {
        let idle = self
            .backend
            .as_ref()
            .is_some_and(|b| b.ex.idle() && self.sout.is_empty() && b.conn.read_buf.is_empty());
        if idle {
            // The read (if any) is answered: the next one starts afresh.
            self.retry_attempt = 0;
            self.lost_nodes.clear();
        }
        if self.mode != PoolMode::Transaction || self.vtx.is_some() {
            return;
        }
        if idle {
            if let Some(mut b) = self.backend.take() {
                // A large answer grew it: pooled connections keep little.
                crate::memory::shrink_if_idle(&mut b.conn.read_buf);
                self.spare_queue = std::mem::take(&mut b.ex.expect);
            }
            // Connections kept for a finished multi-shard transaction go too.
            self.parked
                .retain(|p| !(p.ex.idle() && p.conn.read_buf.is_empty()));
            if self.parked.is_empty() {
                self.cancel.slot.clear();
            }
        }
    }

    /// The server connection failed. A replica read nobody has seen an answer
    /// to yet runs again on another node. Otherwise, outside a transaction
    /// the client gets an error and may go on; inside one the session ends,
    /// as with Postgres.
    pub(super) fn server_lost(&mut self, why: String) -> Result<(), SessionError> {
        let Some(addr) = self.backend.as_ref().map(|b| b.conn.addr.clone()) else {
            return Ok(());
        };
        let err = PgError::error(
            "08006",
            format!("connection to server {addr} was lost: {why}"),
        )
        .with_hint("The transaction, if any, was rolled back. Retry it.");
        self.give_up_server(err, why)
    }

    /// [`Session::server_lost`] with the error the client gets when the
    /// statement is not run again (and `why` for the log).
    pub(super) fn give_up_server(&mut self, err: PgError, why: String) -> Result<(), SessionError> {
        let Some(mut b) = self.backend.take() else {
            return Ok(());
        };
        self.cancel.slot.clear();
        b.conn.broken = true;
        tracing::warn!(server = %b.conn.addr, user = %self.user.config.name, reason = %why, "server connection lost");
        // One connection's end is not the node's (pg_terminate_backend, an
        // idle timeout on the server): the node is banned only on what shows
        // it down, a failed health poll or a refused connection. The pool's
        // other idle connections are checked now, so a crashed node's are
        // not handed out again.
        self.discard_dead_idle(&b);
        if b.ex.streaming > 0 {
            // Part of a large message already went to the client: nothing
            // can follow it on this connection but the rest of it.
            return Err(SessionError::ClientIo(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!(
                    "the server was lost in the middle of a message streamed to the client: {why}"
                ),
            )));
        }
        let attempt = self.retry_attempt + 1;
        tracing::debug!(retryable = b.retry.is_some(), status = %(b.ex.status as char), attempt, "deciding whether to retry");
        if let Some(retry) = b.retry.take() {
            if b.ex.status == b'I' && attempt < self.shards[b.shard].nodes.len() {
                tracing::info!(server = %b.conn.addr, "retrying the read on another node");
                self.note_lost(&b);
                self.sout.clear();
                // The client has not seen any of the answer: it was held back.
                self.cout.truncate(retry.cout_mark);
                self.pending_retry = Some(PendingRetry {
                    msgs: retry.msgs,
                    names: std::mem::take(&mut b.cycle_names),
                    attempt,
                });
                return Ok(());
            }
        }
        if b.ex.idle() {
            // Nothing was outstanding: the client lost nothing.
            self.sout.clear();
            return Ok(());
        }
        if b.ex.status != b'I' {
            return Err(SessionError::Fatal(PgError {
                severity: Severity::Fatal,
                ..err
            }));
        }
        self.runtime.stats.proxy_error(err.code.as_str());
        err.encode(&mut self.cout);
        for e in &b.ex.expect {
            if matches!(
                e,
                Expect::Sync { .. }
                    | Expect::Batch
                    | Expect::Query { forward: true }
                    | Expect::QueryError(_)
            ) {
                backend::ready_for_query(b'I', &mut self.cout);
            }
        }
        if b.ex.unsynced {
            self.skip_until_sync = true;
        }
        self.sout.clear();
        Ok(())
    }

    /// Checks the idle connections of the pool `b` came from (its own
    /// connection was lost), so a crashed node's are not handed out again.
    pub(super) fn discard_dead_idle(&self, b: &Backend) {
        if let Some(pool) = self.pools[b.shard][b.node.node().index].as_ref() {
            pool.discard_dead_idle();
        }
    }

    /// Before one attempt of a read on `shards`: holds its answer back
    /// from the client (so it can run again if a node fails under it) when
    /// it is `retryable` (no COPY, nothing wrapped), a read outside any
    /// transaction, and `attempt` leaves another node to try.
    pub(super) fn hold_multi_read(
        &mut self,
        retryable: bool,
        want: Want,
        shards: &[usize],
        attempt: usize,
    ) {
        let hold = retryable && self.may_rerun_read(want, shards, attempt);
        self.held_read = hold.then_some(self.cout.len());
    }

    /// Remembers that the current read lost its connection to `b`'s node,
    /// so its next attempt goes elsewhere.
    pub(super) fn note_lost(&mut self, b: &Backend) {
        let node = (b.shard, b.node.node().index);
        if !self.lost_nodes.contains(&node) {
            self.lost_nodes.push(node);
        }
    }

    /// The nodes of `shard` the current read lost a connection to (bit `i`
    /// for node `i`).
    fn lost_on(&self, shard: usize) -> u64 {
        self.lost_nodes
            .iter()
            .filter(|&&(s, i)| s == shard && i < 64)
            .fold(0, |mask, &(_, i)| mask | 1 << i)
    }

    /// Whether attempt `attempt` of a read on `shards` may be followed by
    /// another: a read outside any transaction, with another node to try.
    pub(super) fn may_rerun_read(&self, want: Want, shards: &[usize], attempt: usize) -> bool {
        let nodes = shards
            .iter()
            .map(|&s| self.shards[s].nodes.len())
            .max()
            .unwrap_or(0);
        matches!(want, Want::Read(_))
            && self.vtx.is_none()
            && self.client_status() == b'I'
            && attempt + 1 < nodes
    }

    /// After an attempt of a read on several shards: whether it runs again
    /// because one of its connections was lost while nothing of the answer
    /// had reached the client. The answer so far is dropped, and the lost
    /// connections' pools check their idle ones. Ends the hold either way.
    pub(super) fn rerun_lost_read(&mut self, parts: &[super::fanout::Part]) -> bool {
        let Some(mark) = self.held_read.take() else {
            return false;
        };
        let mut lost = false;
        for p in parts.iter().filter(|p| p.lost) {
            tracing::info!(server = %p.b.conn.addr, "retrying the read on several shards on other nodes");
            self.discard_dead_idle(&p.b);
            self.note_lost(&p.b);
            lost = true;
        }
        if lost {
            self.cout.truncate(mark);
        }
        lost
    }

    /// Runs a read again after its node failed before answering.
    pub(super) async fn retry_read(&mut self, retry: PendingRetry) -> Result<(), SessionError> {
        self.skip_until_sync = false;
        for name in &retry.names {
            self.statements.remove(name);
        }
        self.retry_attempt = retry.attempt;
        let mut rest = BytesMut::new();
        for m in &retry.msgs {
            rest.extend_from_slice(m);
        }
        for m in retry.msgs {
            bytes::Buf::advance(&mut rest, m.len());
            self.on_client_message(m[0], &m, &rest).await?;
        }
        self.flush_server().await?;
        Ok(())
    }

    /// The client is gone: return a clean connection, discard any other.
    pub(super) async fn detach_at_end(&mut self) {
        self.cancel.slot.clear();
        if let Some(mut fan) = self.fanout_state.take() {
            // A request on several shards parked while the client sent COPY
            // data: every shard still waits for the rest of it.
            super::fanout::abandon(&mut fan.parts);
            tracing::info!(user = %self.user.config.name, "client left mid-COPY on several shards; server connections discarded");
        }
        let mut all: Vec<Backend> = std::mem::take(&mut self.parked);
        all.extend(self.backend.take());
        for b in all {
            self.detach_one(b).await;
        }
    }

    async fn detach_one(&mut self, mut b: Backend) {
        if !b.ex.idle() || !b.conn.read_buf.is_empty() {
            if !b.ex.expect.is_empty() {
                let handle = b.conn.cancel.clone();
                tokio::spawn(async move {
                    let _ = handle.cancel().await;
                });
            }
            b.conn.broken = true;
            tracing::info!(user = %self.user.config.name, "client left mid-transaction; server connection discarded (rolled back)");
            return;
        }
        if self.mode == PoolMode::Session {
            reset_session_connection(&mut b.conn).await;
        }
    }
}

/// Cleans a session-pooled connection for the next client, or marks it broken.
async fn reset_session_connection(conn: &mut PooledConn) {
    let conn: &mut shardgate_pool::ServerConn = conn;
    let mut out = BytesMut::new();
    frontend::encode_query("DISCARD ALL", &mut out);
    let ok = tokio::time::timeout(Duration::from_secs(2), async {
        conn.stream.send_all(&out).await.ok()?;
        loop {
            reserve(&mut conn.read_buf);
            if conn.stream.read_buf(&mut conn.read_buf).await.ok()? == 0 {
                return None;
            }
            while let Some(h) = Header::complete(&conn.read_buf, 1 << 20).ok()? {
                let msg = conn.read_buf.split_to(h.total);
                if h.tag == btag::READY_FOR_QUERY {
                    return (msg.get(5) == Some(&b'I') && conn.read_buf.is_empty()).then_some(());
                }
            }
        }
    })
    .await;
    if matches!(ok, Ok(Some(()))) {
        conn.prepared.clear();
        conn.state_fingerprint = FRESH;
    } else {
        conn.broken = true;
    }
}
