//! The extended query protocol: Parse, Bind, Describe, Execute, Close, Flush,
//! Sync, with named prepared statements renamed per server connection.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend::{self, tag, Bind, DescribeOrClose, Execute, Parse, Target};
use shardgate_protocol::{Header, PgError};
use shardgate_router::lexer::first_keyword;
use shardgate_router::quick_scan;

use super::{Proto, Session, SessionError, FAILING_SQL};
use crate::config::PoolMode;
use crate::prepared::Statement;
use crate::relay::Expect;
use crate::routing::{StatementRouting, Want};

impl Session {
    /// What the statement a Bind or Describe names needs.
    fn want_of_statement(&self, name: &str) -> Want {
        if self.vtx.is_some() {
            // Inside a transaction spread over shards every part runs on
            // the primary (a replica cannot take part in its commit), or
            // for READ ONLY on the node the transaction holds.
            return self.want_sharded("");
        }
        if name.is_empty() {
            return match &self.unnamed_route {
                Some(r) if self.route_reads => self.routing.want(r.route, &r.hints),
                _ => Want::Primary,
            };
        }
        match self.statements.get(name) {
            Some(s) if self.route_reads => {
                let r = s.routing(|| self.snap.classify(&s.query));
                self.routing.want(r.route, &r.hints)
            }
            _ => Want::Primary,
        }
    }

    /// What an Execute or Describe of a portal needs: the connection the
    /// portal was bound on, if one is attached (a replica's portal is read
    /// there again); else the primary.
    fn want_of_portal(&self) -> Want {
        self.backend.as_ref().map_or(Want::Primary, |b| b.want)
    }

    /// Raises `first` to the primary if any message already received after it
    /// in the same pipeline needs the primary (a pipelined batch runs on one
    /// connection).
    fn batch_want(&self, first: Want, rest: &[u8]) -> Want {
        if first == Want::Primary || !self.route_reads {
            return first;
        }
        let mut pos = 0;
        while let Ok(Some(h)) = Header::complete(&rest[pos..], self.max_message) {
            let body = &rest[pos + 5..pos + h.total];
            pos += h.total;
            let want = match h.tag {
                tag::PARSE => Parse::decode(body)
                    .ok()
                    .map(|p| self.want_for(p.query).unwrap_or(Want::Primary)),
                tag::BIND => Bind::decode(body)
                    .ok()
                    .filter(|b| !b.statement.is_empty())
                    .map(|b| self.want_of_statement(b.statement)),
                tag::QUERY => frontend::parse_query(body)
                    .ok()
                    .map(|q| self.want_for(q).unwrap_or(Want::Primary)),
                _ => None,
            };
            if want == Some(Want::Primary) {
                return Want::Primary;
            }
        }
        first
    }

    /// Attaches for an extended-protocol message whose statement needs `want`.
    async fn attach_extended(
        &mut self,
        msg: &[u8],
        want: Want,
        rest: &[u8],
    ) -> Result<bool, SessionError> {
        if !self.leave_replica_for(want).await? {
            return Ok(false);
        }
        if self.backend.is_some() {
            return Ok(true);
        }
        let want = self.batch_want(want, rest);
        if !self.attach(Proto::Extended, want).await? {
            return Ok(false);
        }
        self.start_retry(msg);
        Ok(true)
    }

    pub(super) async fn on_parse(&mut self, msg: &[u8], rest: &[u8]) -> Result<(), SessionError> {
        let p = Parse::decode(&msg[5..])?;
        // One pass over the text tells which closer looks are needed.
        let scan = quick_scan(p.query);
        if self.parse_virtual(&p, scan.shardgate)? {
            return Ok(());
        }
        if self.mode == PoolMode::Transaction
            && scan.session_effects
            && shardgate_router::leaves_session_state(p.query)
        {
            self.state.note_untracked();
        }
        if self.sharded {
            return self.parse_sharded(&p);
        }
        if p.name.is_empty()
            && !scan.shardgate
            && !scan.set
            && !scan.session_effects
            && self.plain_batches_apply()
        {
            if let Some(len) = plain_batch(rest, self.max_message) {
                return self.forward_plain_batch(msg, p.query, &rest[..len]).await;
            }
        }
        let want = match self.want_for_scanned(p.query, scan.shardgate) {
            Ok(w) => w,
            Err(e) => return self.refuse_pg(e),
        };
        if self.mode == PoolMode::Session || p.name.is_empty() {
            let set = (scan.set && is_set_statement(p.query)).then(|| p.query.to_owned());
            if p.name.is_empty() {
                self.unnamed_set = set;
            } else {
                // Session pooling forwards named statements as they are;
                // their SET/RESET is tracked at Execute as well.
                match set {
                    Some(sql) => self.named_sets.insert(p.name.to_owned(), sql),
                    None => self.named_sets.remove(p.name),
                };
            }
            if p.name.is_empty() && self.route_reads {
                self.unnamed_route = Some(StatementRouting::of(&self.snap.classify(p.query)));
            }
            if self.attach_extended(msg, want, rest).await? {
                if p.name.is_empty() {
                    self.cycle_starts(p.query);
                }
                self.forward(
                    msg,
                    Expect::Parse {
                        forward: true,
                        stmt: None,
                        client_name: None,
                    },
                );
            }
            return Ok(());
        }
        if self.statements.contains(p.name) {
            let err = PgError::error(
                "42P05",
                format!("prepared statement \"{}\" already exists", p.name),
            );
            return self.refuse_pg(err);
        }
        let stmt = self.runtime.statements.intern(p.query, p.param_types);
        let name = p.name.to_owned();
        if self.backend.is_none() && stmt.is_validated() {
            // Known good statement and no transaction: no server needed until
            // it is bound. (A client such as pgbench that prepares with a
            // blocking call while its other connections hold every server
            // connection in open transactions would otherwise deadlock.)
            self.statements.insert(&name, stmt);
            backend::empty(btag::PARSE_COMPLETE, &mut self.cout);
            return Ok(());
        }
        if !self.attach_extended(msg, want, rest).await? {
            return Ok(());
        }
        self.statements.insert(&name, stmt.clone());
        let b = self.backend.as_mut().expect("attached");
        b.cycle_names.push(name.clone());
        if b.conn.prepared.touch(stmt.id) {
            let mut bytes = BytesMut::new();
            backend::empty(btag::PARSE_COMPLETE, &mut bytes);
            b.ex.unsynced = true;
            self.push_expect(Expect::Synthetic {
                bytes: bytes.freeze(),
                client_name: Some(name),
            });
        } else {
            self.prepare_on_server(&stmt, true, Some(name));
        }
        Ok(())
    }

    /// Whether the session is in the state where a batch of unnamed
    /// statement and portal needs nothing but forwarding: transaction
    /// pooling, one shard, no read routing, no shardgate command pending,
    /// nothing being skipped, no batch open on the connection.
    fn plain_batches_apply(&self) -> bool {
        self.mode == PoolMode::Transaction
            && !self.sharded
            && !self.route_reads
            && !self.skip_until_sync
            && self.fanout_state.is_none()
            && self.virtual_stmts.no_unnamed_or_portals()
            && self.backend.as_ref().is_none_or(|b| !b.ex.unsynced)
    }

    /// Forwards an unnamed Parse with the Bind, Describe, Execute and Sync
    /// after it (`tail`) in one piece, expecting its answer as a whole (up to
    /// ReadyForQuery) instead of message by message: nothing in it needs
    /// tracking. A plain SELECT from a driver without named statements
    /// (pgbench `-M extended`, libpq's `PQexecParams`) takes this path.
    async fn forward_plain_batch(
        &mut self,
        parse: &[u8],
        sql: &str,
        tail: &[u8],
    ) -> Result<(), SessionError> {
        if self.backend.is_none() && !self.attach(Proto::Extended, Want::Primary).await? {
            // The error is sent; the normal path skips the rest until Sync.
            self.unnamed_set = None;
            self.bound_set = None;
            return Ok(());
        }
        self.queue_plain_batch(parse, sql, tail);
        Ok(())
    }

    /// Queues a plain batch for the attached connection (see
    /// [`Session::forward_plain_batch`]).
    fn queue_plain_batch(&mut self, parse: &[u8], sql: &str, tail: &[u8]) {
        self.cycle_starts(sql);
        self.unnamed_set = None;
        self.bound_set = None;
        self.sout.extend_from_slice(parse);
        self.sout.extend_from_slice(tail);
        self.push_expect(Expect::Batch);
        self.virtual_stmts.end_of_batch();
        self.extra_consumed = tail.len();
    }

    /// A plain batch (see [`Session::forward_plain_batch`]) handled without
    /// suspending, when a connection is attached or idle now. False means
    /// nothing was done: `on_client_message` takes the Parse.
    pub(super) fn plain_batch_now(
        &mut self,
        msg: &[u8],
        rest: &[u8],
    ) -> Result<bool, SessionError> {
        if !self.plain_batches_apply() {
            return Ok(false);
        }
        let Ok(p) = Parse::decode(&msg[5..]) else {
            return Ok(false);
        };
        if !p.name.is_empty() {
            return Ok(false);
        }
        let scan = quick_scan(p.query);
        if scan.shardgate || scan.set || scan.session_effects {
            return Ok(false);
        }
        let Some(len) = plain_batch(rest, self.max_message) else {
            return Ok(false);
        };
        if self.backend.is_some() {
            self.keep_for_retry(msg);
        } else if !self.attach_now(Want::Primary) {
            return Ok(false);
        }
        self.queue_plain_batch(msg, p.query, &rest[..len]);
        Ok(true)
    }

    /// A Bind of a named statement the client prepared, handled without
    /// suspending (transaction pooling, one shard, primary, a connection
    /// attached or idle now, no shardgate command prepared). False means
    /// nothing was done: `on_client_message` takes it.
    pub(super) fn bind_now(&mut self, msg: &[u8]) -> Result<bool, SessionError> {
        if !self.extended_now_applies() || self.mode != PoolMode::Transaction {
            return Ok(false);
        }
        let Ok(bind) = Bind::decode(&msg[5..]) else {
            return Ok(false);
        };
        if bind.statement.is_empty() || self.want_of_statement(bind.statement) != Want::Primary {
            return Ok(false);
        }
        let Some(stmt) = self.statements.get(bind.statement).cloned() else {
            return Ok(false);
        };
        if self.backend.is_some() {
            self.keep_for_retry(msg);
        } else if self.attach_now(Want::Primary) {
            self.start_retry(msg);
        } else {
            return Ok(false);
        }
        self.bind_prepared(msg, &bind, &stmt);
        Ok(true)
    }

    /// An Execute on the attached connection, handled without suspending
    /// (see [`Session::bind_now`]).
    pub(super) fn execute_now(&mut self, msg: &[u8]) -> Result<bool, SessionError> {
        if !self.extended_now_applies() || self.backend.is_none() {
            return Ok(false);
        }
        let Ok(execute) = Execute::decode(&msg[5..]) else {
            return Ok(false);
        };
        self.keep_for_retry(msg);
        let set_stmt = match self.bound_set.take() {
            Some((p, stmt)) if p == execute.portal => Some(stmt),
            _ => None,
        };
        self.forward(msg, Expect::Execute { set_stmt });
        Ok(true)
    }

    /// What [`Session::bind_now`] and [`Session::execute_now`] need: one
    /// shard, nothing being skipped, no shardgate command prepared, and no
    /// replica connection that a statement for the primary must leave.
    fn extended_now_applies(&self) -> bool {
        !self.sharded
            && !self.skip_until_sync
            && self.virtual_stmts.is_empty()
            && !self.backend.as_ref().is_some_and(|b| b.batch_on_replica())
    }

    /// Sends Parse for a proxy-named statement on the attached connection.
    fn prepare_on_server(
        &mut self,
        stmt: &Arc<Statement>,
        forward: bool,
        client_name: Option<String>,
    ) {
        let b = self.backend.as_mut().expect("attached");
        if let Some(evicted) = b.conn.prepared.insert(stmt.id) {
            let mut close = BytesMut::new();
            let target = DescribeOrClose {
                target: Target::Statement,
                name: "",
            };
            target.encode_as(tag::CLOSE, &format!("sg_{evicted}"), &mut close);
            self.sout.extend_from_slice(&close);
            self.push_expect(Expect::Close { forward: false });
        }
        frontend::encode_parse(
            &stmt.server_name,
            &stmt.query,
            &stmt.param_types,
            &mut self.sout,
        );
        self.backend.as_mut().expect("attached").ex.unsynced = true;
        self.push_expect(Expect::Parse {
            forward,
            stmt: Some(stmt.clone()),
            client_name,
        });
    }

    /// Makes sure the client's statement `name` exists on the attached
    /// connection; returns it, or `None` if the client never prepared it (the
    /// server then reports the error itself).
    fn ensure_prepared(&mut self, name: &str) -> Option<Arc<Statement>> {
        let stmt = self.statements.get(name)?.clone();
        let b = self.backend.as_mut().expect("attached");
        if !b.conn.prepared.touch(stmt.id) {
            self.prepare_on_server(&stmt, false, None);
        }
        Some(stmt)
    }

    pub(super) async fn on_bind(&mut self, msg: &[u8], rest: &[u8]) -> Result<(), SessionError> {
        let bind = Bind::decode(&msg[5..])?;
        if self.bind_virtual(&bind) {
            return Ok(());
        }
        if self.sharded {
            return Box::pin(self.bind_sharded(msg, &bind, rest)).await;
        }
        let want = self.want_of_statement(bind.statement);
        if !self.attach_extended(msg, want, rest).await? {
            return Ok(());
        }
        if self.mode == PoolMode::Session || bind.statement.is_empty() {
            let set = if bind.statement.is_empty() {
                self.unnamed_set.as_ref()
            } else {
                self.named_sets.get(bind.statement)
            };
            self.bound_set = set.map(|s| (bind.portal.to_owned(), s.clone()));
            self.forward(msg, Expect::Bind);
            return Ok(());
        }
        match self.statements.get(bind.statement).cloned() {
            Some(stmt) => self.bind_prepared(msg, &bind, &stmt),
            None => self.forward(msg, Expect::Bind),
        }
        Ok(())
    }

    /// Forwards a Bind of the client's statement `stmt` under its proxy name,
    /// preparing it on the attached connection first if needed.
    pub(super) fn bind_prepared(&mut self, msg: &[u8], bind: &Bind<'_>, stmt: &Arc<Statement>) {
        self.cycle_starts_statement(stmt);
        let b = self.backend.as_mut().expect("attached");
        if !b.conn.prepared.touch(stmt.id) {
            self.prepare_on_server(stmt, false, None);
        }
        self.bound_set = stmt
            .is_set
            .then(|| (bind.portal.to_owned(), stmt.query.clone()));
        let mut out = BytesMut::with_capacity(msg.len() + 8);
        bind.encode_with_statement(&stmt.server_name, &mut out);
        self.forward(&out, Expect::Bind);
    }

    pub(super) async fn on_describe(
        &mut self,
        msg: &[u8],
        rest: &[u8],
    ) -> Result<(), SessionError> {
        let d = DescribeOrClose::decode(&msg[5..], "Describe")?;
        if self.sharded && !self.merged_cursors.is_empty() {
            let desc = match d.target {
                Target::Portal => Box::pin(self.describe_cursor_portal(d.name)).await,
                Target::Statement => Box::pin(self.describe_cursor_statement(d.name)).await,
            };
            if let Some(desc) = desc {
                match desc {
                    Ok(bytes) => self.emit_local(bytes.freeze()),
                    Err(e) => self.refuse_pg(e)?,
                }
                return Ok(());
            }
        }
        if self.describe_virtual(&d) {
            return Ok(());
        }
        if self.sharded {
            self.target_for_unrouted();
        }
        let want = match d.target {
            Target::Statement => self.want_of_statement(d.name),
            Target::Portal => self.want_of_portal(),
        };
        if !self.attach_extended(msg, want, rest).await? {
            return Ok(());
        }
        if self.mode == PoolMode::Transaction && d.target == Target::Statement && !d.name.is_empty()
        {
            if let Some(stmt) = self.ensure_prepared(d.name) {
                let mut out = BytesMut::new();
                d.encode_as(tag::DESCRIBE, &stmt.server_name, &mut out);
                self.forward(&out, Expect::Describe);
                return Ok(());
            }
        }
        self.forward(msg, Expect::Describe);
        Ok(())
    }

    pub(super) async fn on_execute(&mut self, msg: &[u8], rest: &[u8]) -> Result<(), SessionError> {
        let execute = Execute::decode(&msg[5..])?;
        let portal = execute.portal;
        if self.virtual_stmts.is_portal(portal) && Box::pin(self.execute_virtual(portal)).await? {
            return Ok(());
        }
        if self.sharded {
            let key = super::cursor::CursorKey::Portal(portal.to_owned());
            if self.has_cursor(&key) {
                // A portal over several shards, read a batch at a time.
                let count = match execute.max_rows {
                    0 => shardgate_router::FetchCount::All,
                    n => shardgate_router::FetchCount::Rows(n as u64),
                };
                let end = super::cursor::FetchEnd::Portal;
                if let Err(e) =
                    Box::pin(self.fetch_cursor(&key, count, None, false, false, end)).await
                {
                    return self.refuse_pg(e);
                }
                return Ok(());
            }
            self.target_for_unrouted();
        }
        if !self
            .attach_extended(msg, self.want_of_portal(), rest)
            .await?
        {
            return Ok(());
        }
        let set_stmt = match self.bound_set.take() {
            Some((p, stmt)) if p == portal => Some(stmt),
            _ => None,
        };
        self.forward(msg, Expect::Execute { set_stmt });
        Ok(())
    }

    pub(super) async fn on_close(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let c = DescribeOrClose::decode(&msg[5..], "Close")?;
        if self.sharded && c.target == Target::Portal {
            let key = super::cursor::CursorKey::Portal(c.name.to_owned());
            if Box::pin(self.close_cursor(&key)).await {
                let mut bytes = BytesMut::new();
                backend::empty(btag::CLOSE_COMPLETE, &mut bytes);
                self.emit_local(bytes.freeze());
                return Ok(());
            }
        }
        if self.close_virtual(&c) {
            return Ok(());
        }
        let local = self.mode == PoolMode::Transaction
            && c.target == Target::Statement
            && !c.name.is_empty();
        if local {
            self.statements.remove(c.name);
        }
        if local || self.backend.is_none() {
            // Nothing to close on a server: answer in order.
            let mut bytes = BytesMut::new();
            backend::empty(btag::CLOSE_COMPLETE, &mut bytes);
            self.emit_local(bytes.freeze());
            return Ok(());
        }
        self.forward(msg, Expect::Close { forward: true });
        Ok(())
    }

    /// Flush: the server sends what it owes. It opens no batch (psycopg
    /// sends one right after Sync; marking the connection busy then kept it
    /// from the pool and from the next statement's routing).
    pub(super) fn on_flush(&mut self, msg: &[u8]) {
        // The next Bind may start a batch over several shards again.
        self.split_checked = false;
        if self.backend.is_some() {
            self.sout.extend_from_slice(msg);
        }
    }

    pub(super) fn on_sync(&mut self, msg: &[u8]) {
        self.skip_until_sync = false;
        self.split_checked = false;
        self.virtual_stmts.end_of_batch();
        if self.backend.is_some() {
            self.backend.as_mut().expect("attached").ex.unsynced = false;
            self.forward_sync(msg);
        } else {
            backend::ready_for_query(self.client_status(), &mut self.cout);
        }
    }

    /// Sends the client bytes the proxy produced, in order with server responses.
    pub(super) fn emit_local(&mut self, bytes: Bytes) {
        if self.backend.is_some() {
            self.backend.as_mut().expect("attached").ex.unsynced = true;
            self.push_expect(Expect::Synthetic {
                bytes,
                client_name: None,
            });
        } else {
            self.cout.extend_from_slice(&bytes);
        }
    }

    /// Reports a proxy-detected error inside an extended batch.
    pub(super) fn refuse_pg(&mut self, err: PgError) -> Result<(), SessionError> {
        self.runtime.stats.proxy_error(err.code.as_str());
        let mut bytes = BytesMut::new();
        err.encode(&mut bytes);
        if self.backend.is_some() {
            self.fail_in_server(bytes.freeze(), Proto::Extended);
        } else {
            self.cout.extend_from_slice(&bytes);
            self.skip_until_sync = true;
        }
        Ok(())
    }

    /// Sends the server a statement that fails, replacing its error with
    /// `err`, so the transaction fails on the server exactly as the client is told.
    pub(super) fn fail_in_server(&mut self, err: Bytes, proto: Proto) -> bool {
        match proto {
            Proto::Simple => {
                frontend::encode_query(FAILING_SQL, &mut self.sout);
                self.push_expect(Expect::QueryError(err));
            }
            Proto::Extended => {
                frontend::encode_parse("", FAILING_SQL, &[], &mut self.sout);
                self.backend.as_mut().expect("attached").ex.unsynced = true;
                self.push_expect(Expect::ParseError(err));
                self.skip_until_sync = true;
            }
        }
        true
    }
}

/// The length of the batch that follows an unnamed Parse in `rest` when it
/// is exactly Bind (unnamed portal and statement), an optional Describe of
/// either, Execute of that portal and Sync, each complete and well formed.
/// Anything else is left to the message-by-message path, which reports
/// errors.
fn plain_batch(rest: &[u8], max_message: usize) -> Option<usize> {
    let mut pos = 0;
    let mut next = |want: &[u8]| -> Option<(u8, &[u8])> {
        let h = Header::complete(&rest[pos..], max_message).ok()??;
        if !want.contains(&h.tag) {
            return None;
        }
        let body = &rest[pos + 5..pos + h.total];
        pos += h.total;
        Some((h.tag, body))
    };
    let (_, bind) = next(&[tag::BIND])?;
    let bind = Bind::decode(bind).ok()?;
    if !bind.portal.is_empty() || !bind.statement.is_empty() {
        return None;
    }
    let (mut t, mut body) = next(&[tag::DESCRIBE, tag::EXECUTE])?;
    if t == tag::DESCRIBE {
        if !DescribeOrClose::decode(body, "Describe")
            .ok()?
            .name
            .is_empty()
        {
            return None;
        }
        (t, body) = next(&[tag::EXECUTE])?;
    }
    debug_assert_eq!(t, tag::EXECUTE);
    if !Execute::decode(body).ok()?.portal.is_empty() {
        return None;
    }
    let (_, sync) = next(&[tag::SYNC])?;
    if !sync.is_empty() {
        return None;
    }
    Some(pos)
}

/// Whether `sql` is a SET or RESET statement.
pub(crate) fn is_set_statement(sql: &str) -> bool {
    first_keyword(sql)
        .is_some_and(|k| k.eq_ignore_ascii_case("set") || k.eq_ignore_ascii_case("reset"))
}
