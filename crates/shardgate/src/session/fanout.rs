//! Running one client request on several shards at once and merging the
//! answers into what one server would have sent.
//!
//! Every shard runs the same statement shape (the same text, or per-shard
//! parts of a split INSERT), so their answers line up message by message:
//! rows are forwarded as they arrive from any shard (concatenation), and each
//! control message (ParseComplete, RowDescription, CommandComplete, ...) is
//! sent once when every shard has reached it, with row counts summed. Memory
//! stays bounded by one read buffer per shard.

use std::future::poll_fn;
use std::task::Poll;

use bytes::BytesMut;
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend;
use shardgate_protocol::{Header, PgError};

use super::sharded::CopyRoute;
use super::{reserve, Backend, Session, SessionError};
use crate::relay::MAX_SERVER_MESSAGE;
use crate::routing::Want;
use shardgate_router::CopyOutJoin;

/// One shard's part of a fan-out.
pub(super) struct Part {
    /// The shard's connection.
    pub b: Backend,
    /// Answers of hidden queries (state replay, BEGIN, COMMIT) still to skip.
    pub(super) hidden: usize,
    /// A control message waiting until every shard has reached its own.
    pub(super) pending: Option<BytesMut>,
    /// ParseComplete answers of a Parse the proxy added, still to drop.
    pub(super) skip_parse: usize,
    /// A proxy-named statement (its id) this request prepares, until the
    /// server confirms it with ParseComplete.
    pub(super) preparing: Option<u64>,
    /// RowDescriptions this shard sent for the request so far.
    descs: usize,
    /// Only hidden queries remain: done after them.
    pub(super) closing: bool,
    /// ReadyForQuery status once this shard has answered everything.
    pub(super) done: Option<u8>,
    /// The connection was lost (closed, failed, or its node banned as
    /// silent) rather than the statement failing on it.
    pub(super) lost: bool,
}

impl Part {
    fn needs_data(&self) -> bool {
        self.pending.is_none() && self.done.is_none()
    }
}

/// A request in progress on several shards.
pub(super) struct Fanout {
    pub parts: Vec<Part>,
    /// Bytes still to send to each part (same order as `parts`).
    pub outs: Vec<BytesMut>,
    /// The proxy opened a transaction on every shard for an autocommit
    /// write, so it commits or rolls back everywhere.
    wrap: bool,
    /// A shard failed: what remains is drained, not forwarded.
    pub errored: bool,
    /// Row counts are summed (each shard holds different rows); otherwise
    /// the shards hold copies and the first count stands.
    sum: bool,
    /// The request reached the COPY FROM STDIN stage.
    pub copy_in: bool,
    /// How COPY FROM STDIN rows are spread over the parts.
    pub copy: Option<CopyRoute>,
    /// How the parts' COPY TO STDOUT streams become one.
    copy_out: Option<CopyOutJoin>,
    /// Send ReadyForQuery at the end (the request ended with Sync or was a
    /// simple query, not a statement inside an extended batch).
    ready: bool,
    /// RowDescriptions sent to the client: the first shard to describe a
    /// result describes it for all, so its rows flow at once.
    descs_sent: usize,
    /// Cancel requests to deliver before reading on (delivered, not just
    /// sent, so none can reach a later statement on the connection).
    to_cancel: Vec<shardgate_pool::CancelHandle>,
    /// `query_timeout` of the statement.
    timer: QueryTimer,
}

/// How a fan-out runs.
pub(super) struct FanOpts {
    /// What each shard's node must be.
    pub want: Want,
    /// Wrap an autocommit request in a transaction on every shard.
    pub wrap: bool,
    /// End with ReadyForQuery.
    pub ready: bool,
    /// Sum row counts (partitioned rows) instead of taking the first (copies).
    pub sum: bool,
    /// ParseComplete answers to drop per shard (a Parse the proxy added).
    pub skip_parse: usize,
    /// COPY FROM STDIN routing.
    pub copy: Option<CopyRoute>,
    /// COPY TO STDOUT of several shards: one header and trailer.
    pub copy_out: Option<CopyOutJoin>,
}

impl FanOpts {
    /// Defaults: no wrap, ReadyForQuery at the end, counts summed.
    pub fn new(want: Want) -> FanOpts {
        FanOpts {
            want,
            wrap: false,
            ready: true,
            sum: true,
            skip_parse: 0,
            copy: None,
            copy_out: None,
        }
    }
}

/// How a fan-out stage ended.
enum Stage {
    /// Every shard answered.
    Done,
    /// Every shard waits for COPY data from the client.
    CopyIn,
}

impl Session {
    /// Runs `requests` (per shard: a simple Query, or an extended batch
    /// ending with Sync) on their shards and sends the client one merged
    /// answer, as `opts` says.
    pub(super) async fn fanout(
        &mut self,
        requests: Vec<(usize, BytesMut)>,
        opts: FanOpts,
    ) -> Result<(), SessionError> {
        let FanOpts {
            want,
            wrap,
            ready,
            sum,
            skip_parse,
            mut copy,
            mut copy_out,
        } = opts;
        if !self.leave_replica_for(want).await? {
            // A batch the replica holds failed: the server skips to Sync.
            return Ok(());
        }
        self.drain_current().await?;
        let wrap = wrap && self.vtx.is_none();
        let shards: Vec<usize> = requests.iter().map(|(s, _)| *s).collect();
        let retryable = !wrap && copy.is_none() && copy_out.is_none();
        let mut attempt = 0;
        self.lost_nodes.clear();
        loop {
            let mut parts = Vec::with_capacity(requests.len());
            let mut outs = Vec::with_capacity(requests.len());
            for (shard, request) in &requests {
                match self.part_for(*shard, want).await {
                    Ok((mut part, mut out)) => {
                        part.skip_parse = skip_parse;
                        if wrap {
                            frontend::encode_query("BEGIN", &mut out);
                            part.hidden += 1;
                        }
                        out.extend_from_slice(request);
                        parts.push(part);
                        outs.push(out);
                    }
                    Err(e) => {
                        // Nothing was sent yet: give back what was taken.
                        for p in parts {
                            self.return_part(p.settle());
                        }
                        e.encode(&mut self.cout);
                        if ready {
                            backend::ready_for_query(self.client_status(), &mut self.cout);
                        } else {
                            self.skip_until_sync = true;
                        }
                        return Ok(());
                    }
                }
            }
            let mut fan = Fanout {
                parts,
                outs,
                sum,
                wrap,
                errored: false,
                copy_in: false,
                copy: copy.take(),
                copy_out: copy_out.take(),
                ready,
                descs_sent: 0,
                to_cancel: Vec::new(),
                timer: QueryTimer::new(self.snap.config.proxy.query_timeout),
            };
            self.hold_multi_read(retryable, want, &shards, attempt);
            self.write_parts(&mut fan).await;
            if self.held_read.is_none() {
                return self.continue_fanout(fan).await;
            }
            // A read: it never waits for COPY data.
            self.drive(&mut fan).await?;
            if !self.rerun_lost_read(&fan.parts) {
                return self.end_fanout(fan).await;
            }
            for p in fan.parts {
                self.return_part(p.settle());
            }
            attempt += 1;
        }
    }

    /// Sends every part what is queued for it.
    pub(super) async fn write_parts(&mut self, fan: &mut Fanout) {
        for (part, out) in fan.parts.iter_mut().zip(fan.outs.iter_mut()) {
            if out.is_empty() || part.b.conn.broken {
                out.clear();
                continue;
            }
            part.b.conn.loan.bytes_sent += out.len() as u64;
            if let Err(e) = part.b.conn.stream.send_all(out).await {
                fail_part(
                    part,
                    &format!("write failed: {e}"),
                    &mut self.cout,
                    &mut fan.errored,
                );
            }
            out.clear();
        }
    }

    /// Drives a fan-out until it ends, or parks it while the client streams
    /// COPY data.
    pub(super) async fn continue_fanout(&mut self, mut fan: Fanout) -> Result<(), SessionError> {
        match self.drive(&mut fan).await? {
            Stage::CopyIn => {
                fan.copy_in = true;
                self.fanout_state = Some(Box::new(fan));
                self.flush_client().await
            }
            Stage::Done => self.end_fanout(fan).await,
        }
    }

    /// Sends the end of a fan-out every shard has answered (commits or
    /// rolls back a wrapped request) and gives back the connections.
    async fn end_fanout(&mut self, mut fan: Fanout) -> Result<(), SessionError> {
        let mut status = combined_status(&fan);
        if fan.wrap {
            let commit = !fan.errored && status == b'T';
            let mut parts: Vec<Part> = std::mem::take(&mut fan.parts)
                .into_iter()
                .filter(|p| !p.b.conn.broken)
                .collect();
            if let Some(e) = self.finish_parts(&mut parts, commit).await {
                if !fan.errored {
                    e.encode(&mut self.cout);
                    fan.errored = true;
                }
            }
            fan.parts = parts;
            status = b'I';
        }
        if let Some(v) = self.vtx.as_mut() {
            if fan.errored {
                v.failed = true;
            }
            status = if v.failed { b'E' } else { b'T' };
        } else if fan.errored && status == b'T' {
            status = b'E';
        }
        if fan.ready {
            backend::ready_for_query(status, &mut self.cout);
        }
        for p in fan.parts {
            self.return_part(p.settle());
        }
        self.flush_client().await?;
        Ok(())
    }

    /// Takes (or opens) the connection to `shard` for a fan-out; returns it
    /// with the bytes that must precede the request on it.
    pub(super) async fn part_for(
        &mut self,
        shard: usize,
        want: Want,
    ) -> Result<(Part, BytesMut), PgError> {
        let mut out = BytesMut::new();
        let held = if self.backend.as_ref().is_some_and(|b| b.shard == shard) {
            self.backend.take()
        } else {
            let i = self.parked.iter().position(|b| b.shard == shard);
            i.map(|i| self.parked.swap_remove(i))
        };
        if let Some(mut b) = held {
            let mut part_hidden = 0;
            if let Some(begin) = self.vtx_begin().filter(|_| !b.joined_tx) {
                // Attached before the transaction began: it joins now.
                b.joined_tx = true;
                frontend::encode_query(&begin, &mut out);
                part_hidden = 1;
            }
            let mut part = Part::ready(b);
            part.hidden = part_hidden;
            return Ok((part, out));
        }
        let (conn, choice) = self.checkout(shard, want).await?;
        let mut b = self.make_backend(conn, choice, want, shard, &mut out);
        let hidden = b.ex.expect.len();
        b.ex.expect.clear();
        Ok((
            Part {
                b,
                hidden,
                pending: None,
                skip_parse: 0,
                preparing: None,
                descs: 0,
                closing: false,
                done: None,
                lost: false,
            },
            out,
        ))
    }

    /// Keeps a connection for the rest of the transaction, or releases it.
    pub(super) fn return_part(&mut self, mut b: Backend) {
        if b.conn.broken {
            return;
        }
        if self.vtx.is_none() {
            b.joined_tx = false;
        }
        if self.vtx.is_some() || b.ex.status != b'I' {
            self.parked.push(b);
        }
    }

    /// Reads and merges until every part answered (or all wait for COPY data).
    async fn drive(&mut self, fan: &mut Fanout) -> Result<Stage, SessionError> {
        loop {
            for i in 0..fan.parts.len() {
                self.consume(fan, i);
            }
            deliver_cancels(std::mem::take(&mut fan.to_cancel)).await;
            if fan.parts.iter().all(|p| p.done.is_some()) {
                self.flush_client().await?;
                return Ok(Stage::Done);
            }
            if fan.parts.iter().all(|p| !p.needs_data()) {
                if let Some(stage) = self.step(fan) {
                    self.flush_client().await?;
                    return Ok(stage);
                }
                self.write_parts(fan).await;
                continue;
            }
            self.flush_client().await?;
            let wanted = |_: usize, p: &Part| p.needs_data();
            let Ok((i, read)) =
                read_any(&mut fan.parts, wanted, &self.client, &mut fan.timer).await
            else {
                abandon(&mut fan.parts);
                return Err(client_left());
            };
            match read {
                Ok(0) => fail_part(
                    &mut fan.parts[i],
                    "server closed the connection unexpectedly",
                    &mut self.cout,
                    &mut fan.errored,
                ),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let part = &mut fan.parts[i];
                    let err = given_up(&e, &part.b.conn.addr);
                    fail_part_with(part, err, &mut self.cout, &mut fan.errored);
                }
                Err(e) => fail_part(
                    &mut fan.parts[i],
                    &e.to_string(),
                    &mut self.cout,
                    &mut fan.errored,
                ),
            }
        }
    }

    /// Handles the complete messages part `i` has buffered, up to its next
    /// control message.
    fn consume(&mut self, fan: &mut Fanout, i: usize) {
        let part = &mut fan.parts[i];
        while part.needs_data() {
            let buf = &mut part.b.conn.read_buf;
            let h = match Header::complete(buf, MAX_SERVER_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(e) => {
                    let why = format!("protocol error from server: {e}");
                    fail_part(part, &why, &mut self.cout, &mut fan.errored);
                    return;
                }
            };
            let msg = buf.split_to(h.total);
            if part.hidden > 0 {
                match h.tag {
                    btag::READY_FOR_QUERY => {
                        part.hidden -= 1;
                        if part.hidden == 0 && part.closing {
                            let status = msg.get(5).copied().unwrap_or(b'E');
                            part.b.ex.status = status;
                            part.done = Some(status);
                        }
                    }
                    btag::ERROR_RESPONSE => {
                        if !fan.errored {
                            self.cout.extend_from_slice(&msg);
                        }
                        fan.errored = true;
                    }
                    _ => {}
                }
                continue;
            }
            match h.tag {
                btag::PARSE_COMPLETE if part.skip_parse > 0 => part.skip_parse -= 1,
                btag::NOTICE_RESPONSE | btag::NOTIFICATION => self.cout.extend_from_slice(&msg),
                btag::PARAMETER_STATUS => {}
                btag::DATA_ROW | btag::COPY_DATA => {
                    // Copies (reference tables) answer once, from the first shard.
                    if fan.errored || !(fan.sum || i == 0) {
                        continue;
                    }
                    match fan.copy_out.as_mut().filter(|_| h.tag == btag::COPY_DATA) {
                        None => self.cout.extend_from_slice(&msg),
                        Some(join) => match join.pass(i, &msg[5..]) {
                            None => {}
                            Some(p) if p.len() + 5 == msg.len() => {
                                self.cout.extend_from_slice(&msg)
                            }
                            Some(p) => copy_data(&p, &mut self.cout),
                        },
                    }
                }
                btag::READY_FOR_QUERY => {
                    let status = msg.get(5).copied().unwrap_or(b'E');
                    part.b.ex.status = status;
                    part.b.conn.loan.queries += 1;
                    part.done = Some(status);
                }
                btag::ROW_DESCRIPTION => {
                    part.descs += 1;
                    if part.descs > fan.descs_sent {
                        fan.descs_sent = part.descs;
                        if !fan.errored {
                            self.cout.extend_from_slice(&msg);
                        }
                    }
                }
                btag::ERROR_RESPONSE if crate::relay::is_fatal(&msg[5..]) => {
                    // The server is ending this connection (terminated, shut
                    // down): for the client that is a lost shard, not a
                    // FATAL of its own session, which goes on.
                    let first = !fan.errored;
                    let why = backend::ErrorFields::decode(&msg[5..]).map_or_else(
                        |_| "the server ended the connection".to_owned(),
                        |f| format!("{} ({})", f.message, f.code),
                    );
                    fail_part(part, &why, &mut self.cout, &mut fan.errored);
                    if first {
                        cancel_running(fan, i);
                    }
                    return;
                }
                btag::ERROR_RESPONSE => {
                    // The first error goes to the client at once; the other
                    // shards are cancelled and their answers drained.
                    let first = !fan.errored;
                    if first {
                        self.cout.extend_from_slice(&msg);
                        fan.errored = true;
                    }
                    part.pending = Some(msg);
                    if first {
                        cancel_running(fan, i);
                    }
                    return;
                }
                _ => part.pending = Some(msg),
            }
        }
    }

    /// Every part waits at a control message (or is done): sends the merged
    /// message once. Returns a stage end when the request waits for COPY data.
    fn step(&mut self, fan: &mut Fanout) -> Option<Stage> {
        let mut pending: Vec<BytesMut> = Vec::with_capacity(fan.parts.len());
        let mut copy_in = Vec::new();
        for (i, p) in fan.parts.iter_mut().enumerate() {
            if let Some(m) = p.pending.take() {
                if m[0] == btag::COPY_IN {
                    copy_in.push(i);
                }
                pending.push(m);
            }
        }
        let first = pending.first()?;
        let error = pending.iter().find(|m| m[0] == btag::ERROR_RESPONSE);
        if fan.errored || error.is_some() {
            if let (Some(err), false) = (error, fan.errored) {
                self.cout.extend_from_slice(err);
                fan.errored = true;
            }
            // Shards that started a COPY FROM STDIN while another failed
            // would wait for data forever: end their COPY.
            for i in copy_in {
                fan.outs[i].extend_from_slice(COPY_FAIL_AFTER_ERROR);
            }
            return None;
        }
        let finished = fan.parts.iter().any(|p| p.done.is_some());
        if finished || pending.iter().any(|m| m[0] != first[0]) {
            PgError::error(
                "XX000",
                "shardgate: shards answered the same request differently",
            )
            .encode(&mut self.cout);
            fan.errored = true;
            return None;
        }
        match first[0] {
            btag::COMMAND_COMPLETE if fan.sum => {
                let tags: Vec<&[u8]> = pending.iter().map(|m| &m[5..]).collect();
                backend::command_complete(&sum_tags(&tags), &mut self.cout);
            }
            btag::COPY_IN => {
                self.cout.extend_from_slice(first);
                return Some(Stage::CopyIn);
            }
            btag::COPY_DONE => {
                if let Some(trailer) = fan.copy_out.as_mut().and_then(CopyOutJoin::trailer) {
                    copy_data(&trailer, &mut self.cout);
                }
                self.cout.extend_from_slice(first);
            }
            _ => self.cout.extend_from_slice(first),
        }
        None
    }
}

impl Part {
    pub(super) fn ready(b: Backend) -> Part {
        Part {
            b,
            hidden: 0,
            pending: None,
            skip_parse: 0,
            preparing: None,
            descs: 0,
            closing: false,
            done: None,
            lost: false,
        }
    }

    /// The connection, its prepared-statement bookkeeping settled: a
    /// statement this request prepared without a ParseComplete is not
    /// there when the shard answered everything (its Parse failed), and
    /// unknown otherwise (the connection is not reused).
    pub(super) fn settle(mut self) -> Backend {
        if let Some(id) = self.preparing.take() {
            if self.done.is_some() {
                self.b.conn.prepared.remove(id);
            } else {
                self.b.conn.broken = true;
            }
        }
        self.b
    }
}

/// The client closed its connection while the proxy waited for servers.
#[derive(Debug)]
pub(super) struct ClientGone;

/// Waits until one of the parts `wanted` selects has read more bytes into
/// its buffer; returns which part and the read's result. Watches the
/// client too: if it goes away meanwhile, the wait ends with [`ClientGone`]
/// (a statement waiting on a lock must not keep its transaction open for
/// a client that is no longer there).
/// `query_timeout` of a statement that runs on several shards: when it
/// expires, every shard still answering gets a cancel request (and answers
/// `57014`).
/// A shard that has not ended its statement [`super::timeouts::CANCEL_GRACE`]
/// after the cancel is given up: its part fails with this (`TimedOut`) error.
pub(super) struct QueryTimer {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// How long the shards have to end the statement after the cancel.
    grace: std::time::Duration,
    /// The cancel requests went out.
    cancelled: bool,
    /// The grace after the cancel ran out too.
    expired: bool,
    /// Ticks while the statement waits, to see whether a node it waits on
    /// was banned for not answering; `None` until the first wait.
    watch: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Whether to watch at all (not for [`QueryTimer::off`]).
    watching: bool,
    /// Each part's node's `silenced` reading when the statement began.
    silenced: Vec<u64>,
}

/// How often a statement on several shards checks whether a node it waits
/// on was banned for not answering.
const SILENCE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// The message of the error a part gets when its node was banned for not
/// answering while the statement waited on it.
pub(super) const SILENCED: &str = "the node stopped answering (banned by its health check)";

/// The message of the error a part gets when [`QueryTimer`] gives it up.
pub(super) const GIVEN_UP: &str =
    "the shard did not end the statement within query_timeout and its cancel";

impl QueryTimer {
    /// A timer of `limit` from now (none when `limit` is zero).
    pub(super) fn new(limit: std::time::Duration) -> QueryTimer {
        QueryTimer {
            sleep: (!limit.is_zero()).then(|| Box::pin(tokio::time::sleep(limit))),
            grace: limit.min(super::timeouts::CANCEL_GRACE),
            cancelled: false,
            expired: false,
            watch: None,
            watching: true,
            silenced: Vec::new(),
        }
    }

    /// No timer.
    pub(super) fn off() -> QueryTimer {
        QueryTimer {
            sleep: None,
            grace: std::time::Duration::ZERO,
            cancelled: false,
            expired: false,
            watch: None,
            watching: false,
            silenced: Vec::new(),
        }
    }

    /// A wanted part whose node the monitor banned for not answering since
    /// the statement began (checked every [`SILENCE_CHECK`] while waiting).
    fn poll_silenced(
        &mut self,
        cx: &mut std::task::Context<'_>,
        parts: &[Part],
        wanted: impl Fn(usize, &Part) -> bool,
    ) -> Option<usize> {
        if !self.watching {
            return None;
        }
        if self.silenced.len() != parts.len() {
            self.silenced = parts.iter().map(|p| p.b.node.node().silenced()).collect();
        }
        let watch = self
            .watch
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(SILENCE_CHECK)));
        if std::future::Future::poll(watch.as_mut(), cx).is_pending() {
            return None;
        }
        watch
            .as_mut()
            .reset(tokio::time::Instant::now() + SILENCE_CHECK);
        let _ = std::future::Future::poll(watch.as_mut(), cx);
        parts
            .iter()
            .enumerate()
            .position(|(i, p)| wanted(i, p) && p.b.node.node().silenced() != self.silenced[i])
    }

    /// Cancels the unfinished parts once the time is up (once); returns
    /// whether the grace after the cancel ran out as well, so the parts
    /// still answering are to be given up.
    fn poll_expired(&mut self, cx: &mut std::task::Context<'_>, parts: &[Part]) -> bool {
        let Some(sleep) = self.sleep.as_mut() else {
            return self.expired;
        };
        if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
            return false;
        }
        if self.cancelled {
            self.sleep = None;
            self.expired = true;
            return true;
        }
        self.cancelled = true;
        let mut grace = Box::pin(tokio::time::sleep(self.grace));
        // Registers the waker for the end of the grace.
        let _ = std::future::Future::poll(grace.as_mut(), cx);
        self.sleep = Some(grace);
        let handles: Vec<_> = parts
            .iter()
            .filter(|p| p.done.is_none())
            .map(|p| p.b.conn.cancel.clone())
            .collect();
        tracing::info!(
            shards = handles.len(),
            "statement cancelled on its shards: query_timeout"
        );
        tokio::spawn(deliver_cancels(handles));
        false
    }
}

pub(super) async fn read_any(
    parts: &mut [Part],
    wanted: impl Fn(usize, &Part) -> bool,
    client: &crate::client_io::ClientStream,
    timer: &mut QueryTimer,
) -> Result<(usize, std::io::Result<usize>), ClientGone> {
    poll_fn(|cx| {
        // First, so shards that keep sending cannot starve the timer.
        if timer.poll_expired(cx, parts) {
            if let Some(i) = parts.iter().enumerate().position(|(i, p)| wanted(i, p)) {
                let given_up = std::io::Error::new(std::io::ErrorKind::TimedOut, GIVEN_UP);
                return Poll::Ready(Ok((i, Err(given_up))));
            }
        }
        if let Some(i) = timer.poll_silenced(cx, parts, &wanted) {
            let silenced = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, SILENCED);
            return Poll::Ready(Ok((i, Err(silenced))));
        }
        for (i, p) in parts.iter_mut().enumerate() {
            if !wanted(i, p) {
                continue;
            }
            let conn = &mut *p.b.conn;
            reserve(&mut conn.read_buf);
            if let Poll::Ready(r) = tokio_util::io::poll_read_buf(
                std::pin::Pin::new(&mut conn.stream),
                cx,
                &mut conn.read_buf,
            ) {
                if let Ok(n @ 1..) = r {
                    p.b.node.node().note_answer();
                    conn.loan.bytes_received += n as u64;
                }
                return Poll::Ready(Ok((i, r)));
            }
        }
        if client.poll_closed(cx).is_ready() {
            return Poll::Ready(Err(ClientGone));
        }
        Poll::Pending
    })
    .await
}

/// The client is gone in the middle of a request on several shards: every
/// connection is discarded (its transaction rolled back), and statements
/// still running are cancelled.
pub(super) fn abandon(parts: &mut [Part]) {
    for p in parts.iter_mut() {
        if p.done.is_none() {
            let handle = p.b.conn.cancel.clone();
            tokio::spawn(async move {
                let _ = handle.cancel().await;
            });
        }
        p.b.conn.broken = true;
    }
}

/// The session error for a client that left mid-request.
pub(super) fn client_left() -> SessionError {
    SessionError::ClientIo(std::io::ErrorKind::UnexpectedEof.into())
}

/// CopyFail for a shard whose COPY FROM STDIN cannot go on because another
/// shard failed the statement.
const COPY_FAIL_AFTER_ERROR: &[u8] =
    b"f\x00\x00\x00\x2dshardgate: another shard failed the COPY\x00";

/// Appends a CopyData message with `payload`.
pub(super) fn copy_data(payload: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(&[btag::COPY_DATA]);
    out.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// One shard failed: the statement is cancelled on the shards still
/// running it, so none keeps working for an answer nobody will see.
fn cancel_running(fan: &mut Fanout, failed: usize) {
    for (j, p) in fan.parts.iter().enumerate() {
        if j != failed && p.done.is_none() && p.pending.is_none() && p.hidden == 0 {
            fan.to_cancel.push(p.b.conn.cancel.clone());
        }
    }
}

/// Sends cancel requests and waits until the servers have taken them, so
/// a late one cannot cancel the next statement on the same connection.
pub(super) async fn deliver_cancels(handles: Vec<shardgate_pool::CancelHandle>) {
    let tasks: Vec<_> = handles
        .into_iter()
        .map(|h| tokio::spawn(async move { h.cancel().await }))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// A shard's connection failed during a fan-out: the client hears about it
/// once, and the part counts as done. It holds no transaction any more
/// (`I`): outside a transaction the client is idle again, inside one the
/// failed request makes the combined status `E`.
fn fail_part(part: &mut Part, why: &str, cout: &mut BytesMut, errored: &mut bool) {
    part.lost = true;
    let err = PgError::error(
        "08006",
        format!("connection to server {} was lost: {why}", part.b.conn.addr),
    )
    .with_hint("The statement failed on that shard; if it wrote, check the other shards.");
    fail_part_with(part, err, cout, errored);
}

/// The error of a part [`QueryTimer`] gave up on (`e`: the `TimedOut`
/// read error it reported), as Postgres reports a statement timeout.
pub(super) fn given_up(e: &std::io::Error, addr: &str) -> PgError {
    PgError::error(
        "57014",
        format!("canceling statement due to statement timeout: {e} ({addr})"),
    )
}

/// [`fail_part`] with the error the client gets (if it is the first).
fn fail_part_with(part: &mut Part, err: PgError, cout: &mut BytesMut, errored: &mut bool) {
    part.b.conn.broken = true;
    part.b.conn.read_buf.clear();
    part.pending = None;
    part.hidden = 0;
    part.done = Some(b'I');
    if !*errored {
        err.encode(cout);
    }
    *errored = true;
}

/// The transaction status the shards ended in together.
fn combined_status(fan: &Fanout) -> u8 {
    let statuses = fan.parts.iter().filter_map(|p| p.done);
    let mut out = b'I';
    for s in statuses {
        match s {
            b'E' => return b'E',
            b'T' => out = b'T',
            _ => {}
        }
    }
    out
}

/// Merges CommandComplete tags: row counts are summed (`INSERT 0 n`,
/// `UPDATE n`, `DELETE n`, `SELECT n`, `COPY n`, `MERGE n`, ...); tags
/// without a count are taken from the first shard.
pub fn sum_tags(tags: &[&[u8]]) -> String {
    let texts: Vec<&str> = tags
        .iter()
        .map(|t| std::str::from_utf8(t).unwrap_or("").trim_end_matches('\0'))
        .collect();
    let first = texts.first().copied().unwrap_or("");
    let split = |t: &str| {
        t.rsplit_once(' ')
            .and_then(|(head, n)| n.parse::<u64>().ok().map(|n| (head.to_owned(), n)))
    };
    let Some((head, _)) = split(first) else {
        return first.to_owned();
    };
    let mut total = 0u64;
    for t in &texts {
        match split(t) {
            Some((h, n)) if h == head => total += n,
            _ => return first.to_owned(),
        }
    }
    format!("{head} {total}")
}

#[cfg(test)]
mod tests {
    use super::sum_tags;

    #[test]
    fn the_copy_fail_message_is_well_formed() {
        let m = super::COPY_FAIL_AFTER_ERROR;
        let h = shardgate_protocol::Header::complete(m, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(h.total, m.len());
        assert_eq!(m.last(), Some(&0));
    }

    #[test]
    fn tags_sum_counts() {
        assert_eq!(sum_tags(&[b"INSERT 0 2", b"INSERT 0 3"]), "INSERT 0 5");
        assert_eq!(sum_tags(&[b"UPDATE 1", b"UPDATE 0"]), "UPDATE 1");
        assert_eq!(
            sum_tags(&[b"CREATE TABLE", b"CREATE TABLE"]),
            "CREATE TABLE"
        );
        assert_eq!(sum_tags(&[b"COPY 10\0", b"COPY 5\0"]), "COPY 15");
        assert_eq!(
            sum_tags(&[b"SELECT 4", b"SELECT 6", b"SELECT 0"]),
            "SELECT 10"
        );
    }
}
