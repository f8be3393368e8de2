//! Relaying one server connection's responses to the client.
//!
//! Every request the proxy sends to a server is recorded as an [`Expect`], in
//! order. Responses are matched against the queue by message type only (bodies
//! are not decoded, except ReadyForQuery's status and the rare messages session
//! tracking needs), which lets the proxy hide responses to requests it added
//! itself (replaying session state, preparing a statement on this connection),
//! insert responses it answers itself (ParseComplete for a statement that is
//! already prepared), and know exactly when the connection is idle again.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use shardgate_pool::ServerConn;
use shardgate_protocol::backend::{self, tag, ErrorFields};
use shardgate_protocol::{Header, ProtocolError};

use std::sync::Arc;

use crate::prepared::{ClientStatements, Statement};
use crate::state::{SessionState, DIRTY};

/// Largest message accepted from a server (Postgres's own limit is 1 GB).
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// A message passed to the client verbatim that is larger than this (a wide
/// row, a large COPY chunk) goes on in pieces as it arrives instead of being
/// held whole at the proxy.
pub const STREAM_ABOVE: usize = 256 * 1024;

/// A response the proxy is waiting for, or one it will produce itself.
#[derive(Debug)]
pub enum Expect {
    /// A simple Query (or FunctionCall): everything up to ReadyForQuery.
    /// `forward = false` for queries the proxy injected (state replay).
    Query {
        /// Pass responses to the client.
        forward: bool,
    },
    /// An injected failing Query whose error is replaced by the proxy's own.
    QueryError(Bytes),
    /// ParseComplete.
    Parse {
        /// Pass the response to the client (false for injected Parse).
        forward: bool,
        /// Proxy statement, when prepared under a proxy name.
        stmt: Option<Arc<Statement>>,
        /// Client statement name to forget if the Parse fails.
        client_name: Option<String>,
    },
    /// An injected failing Parse whose error is replaced by the proxy's own.
    ParseError(Bytes),
    /// BindComplete.
    Bind,
    /// ParameterDescription (statements) then RowDescription or NoData.
    Describe,
    /// Rows or COPY data, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute {
        /// A SET/RESET statement this Execute runs, for session tracking.
        set_stmt: Option<String>,
    },
    /// CloseComplete.
    Close {
        /// Pass the response to the client (false for evictions).
        forward: bool,
    },
    /// ReadyForQuery after Sync.
    Sync {
        /// Sent after an Execute, plain batch or Query with no CopyDone or
        /// CopyFail in between: if that command starts a COPY FROM STDIN,
        /// the server ignores this Sync (and sends no ReadyForQuery for it).
        in_copy: bool,
    },
    /// A whole extended batch that ends in Sync and needs no tracking per
    /// message (unnamed statement, unnamed portal, no SET): everything up to
    /// ReadyForQuery goes to the client, as for a simple Query.
    Batch,
    /// The hidden `SELECT pg_current_wal_lsn()` after a cycle on the primary
    /// (read your writes); `lsn` is filled in from its row.
    CommitLsn {
        /// The position returned.
        lsn: Option<u64>,
    },
    /// Bytes the proxy sends the client itself at this point in the stream.
    Synthetic {
        /// The message(s).
        bytes: Bytes,
        /// Client statement name to forget if the server skips this point.
        client_name: Option<String>,
    },
}

/// Request/response bookkeeping of one attached server connection.
#[derive(Debug)]
pub struct Exchange {
    /// Outstanding expectations, oldest first.
    pub expect: VecDeque<Expect>,
    /// Transaction status from the last ReadyForQuery.
    pub status: u8,
    /// The client sent extended-protocol messages not yet followed by Sync.
    pub unsynced: bool,
    /// An error before any Sync: the server ignores messages until Sync.
    pub skipping: bool,
    /// A Bind, Execute or Query since the last Sync: the batch holds a
    /// portal or effects, so it cannot be ended early.
    pub busy_since_sync: bool,
    /// Error of an injected (hidden) query, e.g. a failed state replay.
    pub hidden_error: Option<Box<ErrorFields>>,
    /// A client cycle just ended with the transaction status idle.
    pub cycle_done: bool,
    /// The server sent FATAL or PANIC: it is ending the session.
    pub fatal: Option<Box<ErrorFields>>,
    /// The server asked for COPY data (CopyInResponse or CopyBothResponse)
    /// and has not been ready for a query since: it waits for the client.
    pub copy_in: bool,
    /// A client Execute, plain batch or Query went to the server and the
    /// client has not sent CopyDone or CopyFail since: a Sync now may be one
    /// the server ignores, if that command started a COPY FROM STDIN.
    pub copy_may_follow: bool,
    /// A plain batch started a COPY FROM STDIN, so the server ignored the
    /// batch's Sync: the batch's ReadyForQuery answers the client's next
    /// Sync after the copy, which then needs no expectation of its own.
    pub batch_sync_swallowed: bool,
    /// Statements to run hidden once the connection is idle: the client's
    /// startup values after its `RESET`s.
    pub restore: Option<String>,
    /// Bytes still to come of a large verbatim message whose start already
    /// went to the client (see [`STREAM_ABOVE`]).
    pub streaming: usize,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            expect: VecDeque::new(),
            status: b'I',
            unsynced: false,
            skipping: false,
            busy_since_sync: false,
            hidden_error: None,
            cycle_done: false,
            fatal: None,
            copy_in: false,
            copy_may_follow: false,
            batch_sync_swallowed: false,
            restore: None,
            streaming: 0,
        }
    }
}

impl Exchange {
    /// Whether the connection can go back to the pool (transaction pooling).
    #[inline]
    pub fn idle(&self) -> bool {
        self.expect.is_empty() && self.status == b'I' && !self.unsynced && !self.skipping
    }

    /// What a client's Sync sent now should expect: `None` when the server
    /// will ignore it (a COPY FROM STDIN is running) or when its
    /// ReadyForQuery already ends a plain batch whose own Sync was ignored.
    pub fn sync_expectation(&mut self) -> Option<Expect> {
        if self.copy_in && self.copy_may_follow {
            return None;
        }
        if std::mem::take(&mut self.batch_sync_swallowed) {
            return None;
        }
        Some(Expect::Sync {
            in_copy: self.copy_may_follow,
        })
    }

    /// The server started a COPY FROM STDIN for the oldest expectation (an
    /// Execute, a plain batch or a Query): the Syncs sent before the client's
    /// copy data ended are ignored by the server, and a batch's own Sync too.
    fn copy_started(&mut self) {
        self.copy_in = true;
        // Index 0 is the command that started the copy; what follows it
        // was sent after it.
        while let Some(Expect::Sync { in_copy: true }) = self.expect.get(1) {
            self.expect.remove(1);
        }
        if matches!(self.expect.front(), Some(Expect::Batch)) {
            // The batch now ends with the ReadyForQuery of the client's next Sync.
            match self.expect.get(1) {
                Some(Expect::Sync { in_copy: false }) => {
                    self.expect.remove(1);
                }
                _ => self.batch_sync_swallowed = true,
            }
        }
    }

    /// Queues an expectation; synthetic responses at the head go out at once.
    pub fn push(&mut self, e: Expect, cout: &mut BytesMut) {
        match e {
            Expect::Bind | Expect::Execute { .. } => self.busy_since_sync = true,
            // A simple Query ends with ReadyForQuery, like a Sync.
            Expect::Sync { .. } | Expect::Batch | Expect::Query { forward: true } => {
                self.busy_since_sync = false
            }
            _ => {}
        }
        if matches!(
            e,
            Expect::Execute { .. } | Expect::Batch | Expect::Query { forward: true }
        ) {
            self.copy_may_follow = true;
        }
        self.expect.push_back(e);
        self.drain_synthetic(cout);
    }

    /// Sends every synthetic response that is now at the head of the queue.
    #[inline]
    pub fn drain_synthetic(&mut self, cout: &mut BytesMut) {
        if matches!(self.expect.front(), Some(Expect::Synthetic { .. })) {
            self.drain_synthetic_slow(cout);
        }
    }

    #[cold]
    fn drain_synthetic_slow(&mut self, cout: &mut BytesMut) {
        while let Some(Expect::Synthetic { .. }) = self.expect.front() {
            if let Some(Expect::Synthetic { bytes, .. }) = self.expect.pop_front() {
                cout.extend_from_slice(&bytes);
            }
        }
    }

    /// Whether server message `t` goes to the client as it is, with nothing
    /// to note, under the oldest expectation: anything but what session
    /// tracking, errors and the end of the cycle need under a client's
    /// simple Query or a whole extended batch, and rows or COPY data under
    /// an Execute.
    #[inline]
    fn passes_verbatim(&self, t: u8) -> bool {
        match self.expect.front() {
            Some(Expect::Query { forward: true } | Expect::Batch) => !matches!(
                t,
                tag::READY_FOR_QUERY
                    | tag::ERROR_RESPONSE
                    | tag::COMMAND_COMPLETE
                    | tag::NOTICE_RESPONSE
                    | tag::NOTIFICATION
                    | tag::PARAMETER_STATUS
                    | tag::COPY_IN
                    | tag::COPY_BOTH
            ),
            Some(Expect::Execute { .. }) => matches!(t, tag::DATA_ROW | tag::COPY_DATA),
            _ => false,
        }
    }

    fn forwarding_async(&self) -> bool {
        !matches!(
            self.expect.front(),
            Some(Expect::Query { forward: false })
                | Some(Expect::Parse { forward: false, .. })
                | Some(Expect::CommitLsn { .. })
        )
    }
}

/// Everything the relay may touch besides the server connection.
pub struct RelayContext<'a> {
    /// Bytes for the client.
    pub cout: &'a mut BytesMut,
    /// Session state tracking.
    pub state: &'a mut SessionState,
    /// The client's statement names (transaction pooling).
    pub statements: &'a mut ClientStatements,
    /// Where the client's last commit position is recorded.
    pub commit_lsn: &'a mut u64,
    /// Rows the server reported in CommandComplete tags (query statistics).
    pub rows: &'a mut u64,
}

/// The row count at the end of a CommandComplete tag (`SELECT 5`,
/// `INSERT 0 3`); 0 when there is none.
#[inline]
pub fn tag_rows(body: &[u8]) -> u64 {
    let text = body.strip_suffix(&[0]).unwrap_or(body);
    let digits = text.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[text.len() - digits..])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Relays every complete message in the server's read buffer.
pub fn relay(
    conn: &mut ServerConn,
    ex: &mut Exchange,
    cx: &mut RelayContext<'_>,
) -> Result<(), ProtocolError> {
    // Taken out while relaying so the connection's other fields stay usable.
    let mut rbuf = std::mem::take(&mut conn.read_buf);
    let mut pos = 0;
    // Start of the messages passed on verbatim and not yet copied: a run of
    // rows goes to the client with one copy instead of one per message.
    let mut run_start = 0;
    let result = loop {
        if ex.streaming > 0 {
            // The rest of a large verbatim message: on to the client as it comes.
            let n = ex.streaming.min(rbuf.len() - pos);
            pos += n;
            ex.streaming -= n;
            if ex.streaming > 0 {
                break Ok(());
            }
            continue;
        }
        let buf = &rbuf[pos..];
        let h = match Header::complete(buf, MAX_SERVER_MESSAGE) {
            Ok(Some(h)) => h,
            Ok(None) => {
                if let Ok(Some(h)) = Header::peek(buf, MAX_SERVER_MESSAGE) {
                    if h.total > STREAM_ABOVE && ex.passes_verbatim(h.tag) {
                        // Not held whole: what arrived goes now, the rest as it comes.
                        ex.streaming = h.total - buf.len();
                        pos = rbuf.len();
                    }
                }
                break Ok(());
            }
            Err(e) => break Err(e),
        };
        if ex.passes_verbatim(h.tag) {
            pos += h.total;
            continue;
        }
        cx.cout.extend_from_slice(&rbuf[run_start..pos]);
        ex.drain_synthetic(cx.cout);
        let msg = &rbuf[pos..pos + h.total];
        pos += h.total;
        run_start = pos;
        match h.tag {
            tag::NOTICE_RESPONSE if is_shutdown_warning(&msg[5..]) => {
                // "terminating connection due to ... shutdown": the server is
                // going away; the session decides what the client sees.
                conn.broken = true;
            }
            tag::NOTICE_RESPONSE | tag::NOTIFICATION => {
                if ex.forwarding_async() {
                    cx.cout.extend_from_slice(msg);
                }
            }
            tag::PARAMETER_STATUS => {
                if let Ok((k, v)) = backend::decode_parameter_status(&msg[5..]) {
                    if matches!(k, "session_authorization" | "is_superuser")
                        && ex.forwarding_async()
                    {
                        // The client changed who the session runs as (SET
                        // ROLE, set_config, a function): whatever it was,
                        // the connection is cleaned before anyone else uses it.
                        cx.state.note_untracked();
                    }
                    match conn.server_params.iter_mut().find(|(name, _)| name == k) {
                        Some(entry) => entry.1 = v.to_owned(),
                        None => conn.server_params.push((k.to_owned(), v.to_owned())),
                    }
                }
                if ex.forwarding_async() {
                    cx.cout.extend_from_slice(msg);
                }
            }
            tag::ERROR_RESPONSE if is_fatal(&msg[5..]) => {
                // The server is ending the session (shutdown, crash, terminate):
                // the session decides what the client sees (a retry, or an error).
                ex.fatal = ErrorFields::decode(&msg[5..]).ok().map(Box::new);
                conn.broken = true;
            }
            t => {
                if matches!(t, tag::COPY_IN | tag::COPY_BOTH) {
                    ex.copy_started();
                }
                if t == tag::ERROR_RESPONSE {
                    conn.loan.note_error(&msg[5..]);
                    if ErrorFields::decode(&msg[5..]).is_ok_and(|e| e.is_stale_cached_plan()) {
                        // A proxy-named statement here would fail for every
                        // later client: this one sees the error (as Postgres
                        // answers a stale prepared statement), then the
                        // connection closes instead of going back to the pool.
                        conn.retire = true;
                    }
                }
                if let Err(e) = response(conn, ex, cx, t, msg) {
                    break Err(e);
                }
            }
        }
    };
    cx.cout.extend_from_slice(&rbuf[run_start..pos]);
    conn.loan.bytes_received += pos as u64;
    shardgate_protocol::consume_front(&mut rbuf, pos);
    conn.read_buf = rbuf;
    ex.drain_synthetic(cx.cout);
    result
}

fn response(
    conn: &mut ServerConn,
    ex: &mut Exchange,
    cx: &mut RelayContext<'_>,
    t: u8,
    msg: &[u8],
) -> Result<(), ProtocolError> {
    let Some(front) = ex.expect.front() else {
        // Nothing outstanding: a FATAL before the server closes, say.
        if t == tag::ERROR_RESPONSE {
            cx.cout.extend_from_slice(msg);
            conn.broken = true;
        } else {
            tracing::warn!(server = %conn.addr, tag = %(t as char), "unexpected message from server");
        }
        return Ok(());
    };
    match front {
        Expect::Query { .. } | Expect::Batch => {
            let forward = !matches!(front, Expect::Query { forward: false });
            match t {
                tag::READY_FOR_QUERY => {
                    ex.expect.pop_front();
                    ready_for_query(conn, ex, cx, msg, forward)?;
                }
                tag::ERROR_RESPONSE if !forward => {
                    ex.hidden_error = ErrorFields::decode(&msg[5..]).ok().map(Box::new);
                }
                tag::ERROR_RESPONSE => cx.state.note_error(),
                tag::COMMAND_COMPLETE if forward => {
                    *cx.rows += tag_rows(&msg[5..]);
                    cx.state.note_command_tag(&msg[5..])
                }
                _ => {}
            }
            if forward {
                cx.cout.extend_from_slice(msg);
            }
        }
        Expect::QueryError(replacement) => match t {
            tag::ERROR_RESPONSE => {
                cx.cout.extend_from_slice(replacement);
                cx.state.note_error();
            }
            tag::READY_FOR_QUERY => {
                ex.expect.pop_front();
                ready_for_query(conn, ex, cx, msg, true)?;
                cx.cout.extend_from_slice(msg);
            }
            _ => {}
        },
        Expect::Parse { forward, stmt, .. } => {
            let forward = *forward;
            match t {
                tag::PARSE_COMPLETE => {
                    if let Some(s) = stmt {
                        s.mark_validated();
                    }
                    ex.expect.pop_front();
                    if forward {
                        cx.cout.extend_from_slice(msg);
                    }
                }
                tag::ERROR_RESPONSE => extended_error(conn, ex, cx, msg),
                _ => unexpected(conn, t),
            }
        }
        Expect::ParseError(_) => match t {
            tag::ERROR_RESPONSE => {
                if let Some(Expect::ParseError(replacement)) = ex.expect.front() {
                    let replacement = replacement.clone();
                    extended_error(conn, ex, cx, &replacement);
                }
            }
            _ => unexpected(conn, t),
        },
        Expect::Bind => single(conn, ex, cx, t, msg, tag::BIND_COMPLETE),
        Expect::Close { forward } => {
            let forward = *forward;
            match t {
                tag::CLOSE_COMPLETE => {
                    ex.expect.pop_front();
                    if forward {
                        cx.cout.extend_from_slice(msg);
                    }
                }
                tag::ERROR_RESPONSE => extended_error(conn, ex, cx, msg),
                _ => unexpected(conn, t),
            }
        }
        Expect::Describe => match t {
            tag::PARAMETER_DESCRIPTION => cx.cout.extend_from_slice(msg),
            tag::ROW_DESCRIPTION | tag::NO_DATA => {
                ex.expect.pop_front();
                cx.cout.extend_from_slice(msg);
            }
            tag::ERROR_RESPONSE => extended_error(conn, ex, cx, msg),
            _ => unexpected(conn, t),
        },
        Expect::Execute { .. } => match t {
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY | tag::PORTAL_SUSPENDED => {
                if let Some(Expect::Execute {
                    set_stmt: Some(stmt),
                }) = ex.expect.pop_front()
                {
                    if t == tag::COMMAND_COMPLETE {
                        cx.state.note_statement(&stmt);
                    }
                }
                if t == tag::COMMAND_COMPLETE {
                    *cx.rows += tag_rows(&msg[5..]);
                    cx.state.note_command_tag(&msg[5..]);
                }
                cx.cout.extend_from_slice(msg);
            }
            tag::ERROR_RESPONSE => extended_error(conn, ex, cx, msg),
            _ => cx.cout.extend_from_slice(msg),
        },
        Expect::Sync { .. } => {
            match t {
                tag::READY_FOR_QUERY => {
                    ex.expect.pop_front();
                    ready_for_query(conn, ex, cx, msg, true)?;
                }
                tag::ERROR_RESPONSE => cx.state.note_error(),
                _ => {}
            }
            cx.cout.extend_from_slice(msg);
        }
        Expect::CommitLsn { .. } => match t {
            tag::DATA_ROW => {
                let value = first_column_text(&msg[5..]).and_then(shardgate_jobs::lsn::parse_lsn);
                if let Some(Expect::CommitLsn { lsn }) = ex.expect.front_mut() {
                    *lsn = value;
                }
            }
            tag::READY_FOR_QUERY => {
                if let Some(Expect::CommitLsn { lsn: Some(lsn) }) = ex.expect.pop_front() {
                    if msg.get(5) == Some(&b'I') {
                        *cx.commit_lsn = (*cx.commit_lsn).max(lsn);
                    }
                }
                ready_for_query(conn, ex, cx, msg, false)?;
            }
            _ => {}
        },
        Expect::Synthetic { .. } => unreachable!("synthetic expectations are drained first"),
    }
    Ok(())
}

/// Whether an ErrorResponse body has severity FATAL or PANIC.
/// Whether an ErrorResponse body has severity FATAL or PANIC (the server
/// is ending the connection).
pub fn is_fatal(body: &[u8]) -> bool {
    body.starts_with(b"SFATAL\0") || body.starts_with(b"SPANIC\0")
}

/// Whether a NoticeResponse is the warning a server sends before it drops
/// the connection for a shutdown or crash (SQLSTATE class 57P0x).
fn is_shutdown_warning(body: &[u8]) -> bool {
    ErrorFields::decode(body).is_ok_and(|f| f.code.starts_with("57P0"))
}

/// The first column of a DataRow as text, if present and not NULL.
fn first_column_text(body: &[u8]) -> Option<&str> {
    let mut r = shardgate_protocol::MessageReader::new(body, "DataRow");
    if r.count16().ok()? == 0 {
        return None;
    }
    let len = r.i32().ok()?;
    if len < 0 {
        return None;
    }
    std::str::from_utf8(r.bytes(len as usize).ok()?).ok()
}

fn single(
    conn: &mut ServerConn,
    ex: &mut Exchange,
    cx: &mut RelayContext<'_>,
    t: u8,
    msg: &[u8],
    want: u8,
) {
    if t == want {
        ex.expect.pop_front();
        cx.cout.extend_from_slice(msg);
    } else if t == tag::ERROR_RESPONSE {
        extended_error(conn, ex, cx, msg);
    } else {
        unexpected(conn, t);
    }
}

fn unexpected(conn: &mut ServerConn, t: u8) {
    tracing::warn!(server = %conn.addr, tag = %(t as char), "unexpected response from server; connection will be discarded");
    conn.broken = true;
}

fn ready_for_query(
    conn: &mut ServerConn,
    ex: &mut Exchange,
    cx: &mut RelayContext<'_>,
    msg: &[u8],
    client_cycle: bool,
) -> Result<(), ProtocolError> {
    let status = *msg
        .get(5)
        .ok_or(ProtocolError::Malformed("ReadyForQuery", "missing status"))?;
    ex.status = status;
    ex.skipping = false;
    ex.copy_in = false;
    if client_cycle {
        conn.loan.queries += 1;
        ex.cycle_done = status == b'I';
        let outcome = cx.state.end_cycle(status);
        if outcome.untracked {
            conn.state_fingerprint = DIRTY;
        } else if let Some(restore) = outcome.restore {
            // The startup values come back before anything else runs here.
            ex.restore = Some(restore);
            conn.state_fingerprint = cx.state.fingerprint();
        } else if outcome.server_reset {
            conn.state_fingerprint = DIRTY;
        } else if outcome.changed {
            conn.state_fingerprint = cx.state.fingerprint();
        }
    }
    Ok(())
}

/// An ErrorResponse in the extended protocol: the server now ignores every
/// message up to the next Sync, so the expectations for them go too.
fn extended_error(conn: &mut ServerConn, ex: &mut Exchange, cx: &mut RelayContext<'_>, msg: &[u8]) {
    cx.cout.extend_from_slice(msg);
    cx.state.note_error();
    while let Some(front) = ex.expect.front() {
        if matches!(
            front,
            Expect::Sync { .. } | Expect::Batch | Expect::Query { .. } | Expect::QueryError(_)
        ) {
            return;
        }
        if let Some(dropped) = ex.expect.pop_front() {
            undo(conn, cx, dropped);
        }
    }
    ex.skipping = true;
}

/// Reverts the bookkeeping of a request the server failed or skipped.
fn undo(conn: &mut ServerConn, cx: &mut RelayContext<'_>, e: Expect) {
    match e {
        Expect::Parse {
            stmt, client_name, ..
        } => {
            if let Some(s) = stmt {
                conn.prepared.remove(s.id);
            }
            if let Some(name) = client_name {
                cx.statements.remove(&name);
            }
        }
        Expect::Synthetic {
            client_name: Some(name),
            ..
        } => {
            cx.statements.remove(&name);
        }
        // A skipped eviction leaves a statement on the server we no longer
        // track; discard the connection rather than risk a name clash.
        Expect::Close { forward: false } => conn.broken = true,
        _ => {}
    }
}
