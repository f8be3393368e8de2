//! Extended-protocol batches whose statements go to different shards
//! (pgjdbc `executeBatch`, psycopg `executemany` and pipelines, asyncpg
//! `executemany`, libpq pipeline mode): each shard gets its statements of
//! the batch at once, all shards in parallel, and the client gets every
//! answer in the order of its own messages.
//!
//! Outside a transaction a batch is one implicit transaction on a server,
//! so a batch that spans shards runs in one transaction per shard (an
//! implicit [`super::VirtualTx`]), committed together at the batch's Sync
//! (with two-phase commit when it is on) or rolled back together when any
//! statement fails. A batch the client reads with Flush before its Sync
//! (psycopg's `executemany(returning=True)`) keeps that transaction open
//! until the Sync. Inside the client's transaction the shards take part in
//! it. Postgres skips the rest of a
//! batch after an error: here the statements after it may have run on
//! another shard, but they are rolled back with the rest (outside a
//! transaction), or the transaction has failed (inside one), so the client
//! sees the same outcome.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend::{self, tag, Bind, DescribeOrClose, Execute, Parse, Target};
use shardgate_protocol::{Header, PgError};

use super::fanout::{read_any, Part};
use super::sharded::Dest;
use super::{Session, SessionError};
use crate::prepared::Statement;
use crate::relay::MAX_SERVER_MESSAGE;
use crate::routing::Want;

/// One client message of the batch and where its answer comes from.
enum Slot {
    /// Answered by the proxy (ParseComplete, CloseComplete, or an error).
    Local(BytesMut, bool),
    /// Answered by the servers of this many shards (several for a
    /// multi-row INSERT split by shard: their answers are combined).
    Remote(usize),
}

/// What one shard runs for the batch, in order.
enum Op {
    /// The client's Bind of `stmt` (prepared on the connection first if
    /// needed), answering slot `slot`.
    Bind {
        stmt: Arc<Statement>,
        msg: Vec<u8>,
        slot: usize,
    },
    /// A Describe or Execute forwarded as it is (a statement's Describe
    /// renamed), answering slot `slot`.
    Forward { msg: Vec<u8>, slot: usize },
    /// One shard's rows of a multi-row INSERT: an unnamed Parse of its
    /// text and a Bind with its parameters, answering slot `slot`.
    Part { bytes: Vec<u8>, slot: usize },
}

/// What a shard's answer to one of its messages stands for.
#[derive(Clone, Copy)]
enum Expected {
    /// The proxy's Parse of a statement with this id.
    Parse(u64),
    /// The proxy's Close of an evicted statement.
    Close,
    /// The proxy's unnamed Parse of a shard's part of a statement.
    PartParse,
    /// The answer to the client's message `slot`.
    Client(usize),
}

/// The batch as planned: the client's messages in order, and each
/// shard's share of them.
pub(super) struct SplitPlan {
    slots: Vec<Slot>,
    shards: Vec<(usize, Vec<Op>)>,
    /// Statements the batch's Parse and Close messages name (`None`:
    /// closed), applied when the batch runs.
    names: HashMap<String, Option<Arc<Statement>>>,
    /// Bytes of the client's buffer the batch takes after its first Bind.
    consumed: usize,
    /// The batch ends with Sync (else with Flush: more follows).
    ends_with_sync: bool,
}

/// One shard's answers, matched to the client's messages.
struct Reading {
    script: Vec<Expected>,
    /// Hidden queries (state replay, BEGIN) still to skip.
    hidden: usize,
    /// Index in `script` of the answer being read.
    next: usize,
    /// The shard reported an error (it skips the rest until Sync).
    failed: bool,
    /// ReadyForQuery of the closing Sync arrived.
    done: bool,
    /// The script entry whose answer is being collected.
    answering: Option<usize>,
}

impl Session {
    /// Plans the batch that starts with the Bind `first` (`rest`: the
    /// messages after it, up to its Sync) as a split batch when its
    /// statements go to more than one shard. `None` when it goes to one
    /// shard or holds what a split batch does not handle (BEGIN or COMMIT
    /// inside it, a statement over several shards): the message-by-message
    /// path runs it then, or refuses it.
    /// Nothing changes before the batch runs.
    pub(super) async fn plan_split(
        &mut self,
        first: &[u8],
        rest: &[u8],
    ) -> Result<Option<SplitPlan>, SessionError> {
        if self.split_checked || !has_another_bind(rest, self.max_message) {
            return Ok(None);
        }
        self.split_checked = true;
        let mut plan = SplitPlan {
            slots: Vec::new(),
            shards: Vec::new(),
            names: HashMap::new(),
            consumed: 0,
            ends_with_sync: true,
        };
        let mut pos = 0;
        // A statement's Describe goes where the statement is next bound.
        let mut pending_describe: Option<(usize, Vec<u8>)> = None;
        // Where the portal of the last Bind is (several shards for a
        // multi-row INSERT split by shard).
        let mut last_shards: Vec<usize> = Vec::new();
        let mut msg = first;
        loop {
            let body = &msg[5..];
            match msg[0] {
                tag::BIND => {
                    let Ok(bind) = Bind::decode(body) else {
                        return Ok(None);
                    };
                    if self.virtual_stmts.has_statement(bind.statement) {
                        return Ok(None);
                    }
                    let Some(stmt) = plan.statement(&self.statements, bind.statement) else {
                        return Ok(None);
                    };
                    let sp = self.statement_plan(&stmt);
                    let hints = stmt
                        .routing(|| self.snap.classify(&stmt.query))
                        .hints
                        .clone();
                    let slot = plan.slots.len();
                    match self.dest_for(&stmt.query, &sp, &hints, Some(&bind)).await {
                        Ok(Dest::One(shard)) => {
                            if let Some((slot, describe)) = pending_describe.take() {
                                plan.slots[slot] = Slot::Remote(1);
                                plan.ops(shard).push(Op::Forward {
                                    msg: describe,
                                    slot,
                                });
                            }
                            plan.ops(shard).push(Op::Bind {
                                stmt,
                                msg: msg.to_vec(),
                                slot,
                            });
                            last_shards = vec![shard];
                        }
                        Ok(Dest::Split(parts)) if pending_describe.is_none() => {
                            last_shards.clear();
                            for (shard, text) in parts {
                                let Some(bytes) = part_bytes(&text, &stmt.param_types, &bind)
                                else {
                                    return Ok(None);
                                };
                                plan.ops(shard).push(Op::Part { bytes, slot });
                                last_shards.push(shard);
                            }
                        }
                        _ => return Ok(None),
                    }
                    plan.slots.push(Slot::Remote(last_shards.len()));
                }
                tag::EXECUTE => {
                    // pgjdbc executes batched INSERTs with a row limit of 1:
                    // they return no rows, so it changes nothing. (A portal
                    // it suspends is the shard's until the transaction ends.)
                    if Execute::decode(body).is_err() || last_shards.is_empty() {
                        return Ok(None);
                    }
                    plan.forward_to(&last_shards, msg);
                }
                tag::DESCRIBE => {
                    let Ok(d) = DescribeOrClose::decode(body, "Describe") else {
                        return Ok(None);
                    };
                    if d.target == Target::Statement {
                        let Some(stmt) = plan.statement(&self.statements, d.name) else {
                            return Ok(None);
                        };
                        if pending_describe.is_some() {
                            return Ok(None);
                        }
                        let mut m = BytesMut::new();
                        d.encode_as(tag::DESCRIBE, &stmt.server_name, &mut m);
                        pending_describe = Some((plan.slots.len(), m.to_vec()));
                        plan.slots.push(Slot::Remote(1));
                    } else {
                        // A portal lives where its Bind went.
                        if last_shards.is_empty() {
                            return Ok(None);
                        }
                        plan.forward_to(&last_shards, msg);
                    }
                }
                tag::PARSE => {
                    let Ok(p) = Parse::decode(body) else {
                        return Ok(None);
                    };
                    if super::sharded::tx_control(p.query).is_some()
                        || shardgate_router::quick_scan(p.query).shardgate
                    {
                        return Ok(None);
                    }
                    let exists = plan.statement(&self.statements, p.name).is_some();
                    let mut out = BytesMut::new();
                    let failed = match self.check_parse(&p, exists) {
                        Ok(stmt) => {
                            plan.names.insert(p.name.to_owned(), Some(stmt));
                            backend::empty(btag::PARSE_COMPLETE, &mut out);
                            false
                        }
                        Err(e) => {
                            e.encode(&mut out);
                            true
                        }
                    };
                    plan.slots.push(Slot::Local(out, failed));
                }
                tag::CLOSE => {
                    let Ok(c) = DescribeOrClose::decode(body, "Close") else {
                        return Ok(None);
                    };
                    if c.target == Target::Statement {
                        plan.names.insert(c.name.to_owned(), None);
                    }
                    let mut out = BytesMut::new();
                    backend::empty(btag::CLOSE_COMPLETE, &mut out);
                    plan.slots.push(Slot::Local(out, false));
                }
                tag::SYNC => break,
                tag::FLUSH => {
                    plan.ends_with_sync = false;
                    break;
                }
                _ => return Ok(None),
            }
            let Ok(Some(h)) = Header::complete(&rest[pos..], self.max_message) else {
                return Ok(None);
            };
            msg = &rest[pos..pos + h.total];
            pos += h.total;
        }
        if pending_describe.is_some() || plan.shards.len() < 2 {
            return Ok(None);
        }
        plan.consumed = pos;
        Ok(Some(plan))
    }

    /// Runs a planned split batch and answers the client (up to its
    /// ReadyForQuery when the batch ended with Sync).
    pub(super) async fn run_split(&mut self, plan: SplitPlan) -> Result<(), SessionError> {
        let SplitPlan {
            mut slots,
            shards,
            names,
            consumed,
            ends_with_sync,
        } = plan;
        self.extra_consumed = consumed;
        self.split_checked = false;
        for (name, stmt) in names {
            match stmt {
                Some(s) => self.statements.insert(&name, s),
                None => {
                    self.statements.remove(&name);
                }
            }
        }
        if !self.leave_replica_for(Want::Primary).await? {
            return Ok(());
        }
        self.drain_current().await?;
        if self.vtx.is_none() {
            // The batch's implicit transaction, one per shard.
            self.vtx = Some(super::VirtualTx {
                begin: "BEGIN".into(),
                failed: false,
                read_only: false,
                savepoints: Vec::new(),
                implicit: true,
            });
        }
        let mut parts: Vec<Part> = Vec::with_capacity(shards.len());
        let mut readings = Vec::with_capacity(shards.len());
        for (shard, ops) in &shards {
            let (mut part, mut out) = match self.part_for(*shard, Want::Primary).await {
                Ok(p) => p,
                Err(e) => {
                    for p in parts {
                        self.return_part(p.settle());
                    }
                    return self.answer_split_refused(e, ends_with_sync).await;
                }
            };
            let script = encode_ops(&mut part, ops, &mut out);
            // Inside the transaction a Sync commits nothing; it ends the
            // shard's batch, and an error's skipping, there.
            frontend::encode_empty(tag::SYNC, &mut out);
            part.b.conn.loan.bytes_sent += out.len() as u64;
            if let Err(e) = part.b.conn.stream.send_all(&out).await {
                tracing::warn!(server = %part.b.conn.addr, error = %e, "write to a shard failed");
                part.b.conn.broken = true;
            }
            readings.push(Reading {
                script,
                hidden: part.hidden,
                next: 0,
                failed: part.b.conn.broken,
                done: part.b.conn.broken,
                answering: None,
            });
            parts.push(part);
        }
        let mut answers: Vec<Vec<(BytesMut, bool)>> =
            (0..slots.len()).map(|_| Vec::new()).collect();
        let mut lost = parts
            .iter()
            .find(|p| p.b.conn.broken)
            .map(|p| lost_shard(&p.b.conn.addr));
        let mut timer = super::fanout::QueryTimer::new(self.snap.config.proxy.query_timeout);
        loop {
            for (part, r) in parts.iter_mut().zip(readings.iter_mut()) {
                read_answers(part, r, &mut answers);
            }
            if readings.iter().all(|r| r.done) {
                break;
            }
            let wanted = |i: usize, _: &Part| !readings[i].done;
            let Ok((i, read)) = read_any(&mut parts, wanted, &self.client, &mut timer).await else {
                super::fanout::abandon(&mut parts);
                return Err(super::fanout::client_left());
            };
            if !matches!(read, Ok(n) if n > 0) {
                parts[i].b.conn.broken = true;
                readings[i].done = true;
                readings[i].failed = true;
                lost.get_or_insert_with(|| lost_shard(&parts[i].b.conn.addr));
            }
        }
        for (part, r) in parts.iter_mut().zip(&readings) {
            forget_unconfirmed(part, r);
        }
        // The client's answers in its order, up to the first error.
        let mut failed = lost.is_some() || readings.iter().any(|r| r.failed);
        for (i, slot) in slots.iter_mut().enumerate() {
            let (bytes, error) = match slot {
                Slot::Local(b, e) => (std::mem::take(b), *e),
                Slot::Remote(n) => {
                    let got = std::mem::take(&mut answers[i]);
                    if got.len() < *n && !got.iter().any(|a| a.1) {
                        // Skipped by its shard after an error there.
                        break;
                    }
                    combine(got)
                }
            };
            self.cout.extend_from_slice(&bytes);
            if error {
                failed = true;
                break;
            }
        }
        if let Some(e) = &lost {
            e.encode(&mut self.cout);
        }
        if let Some(v) = self.vtx.as_mut() {
            v.failed |= failed;
        }
        for p in parts {
            self.return_part(p.settle());
        }
        if ends_with_sync {
            self.end_batch_tx().await
        } else {
            // The rest of the client's batch is skipped after an error.
            self.skip_until_sync = failed;
            self.flush_client().await
        }
    }

    /// The client's Sync ends a batch: the proxy's implicit transaction
    /// for it commits (or rolls back after an error) on every shard, then
    /// ReadyForQuery; inside the client's own transaction, only
    /// ReadyForQuery.
    pub(super) async fn end_batch_tx(&mut self) -> Result<(), SessionError> {
        self.skip_until_sync = false;
        self.split_checked = false;
        self.virtual_stmts.end_of_batch();
        if self.vtx.as_ref().is_some_and(|v| v.implicit) {
            let commit = !self.tx_aborted();
            return self.end_virtual(commit, true).await;
        }
        backend::ready_for_query(self.client_status(), &mut self.cout);
        self.flush_client().await
    }

    /// No connection for a shard of the batch: it fails.
    async fn answer_split_refused(
        &mut self,
        e: PgError,
        ends_with_sync: bool,
    ) -> Result<(), SessionError> {
        if let Some(v) = self.vtx.as_mut() {
            v.failed = true;
        }
        e.encode(&mut self.cout);
        if ends_with_sync {
            self.end_batch_tx().await
        } else {
            self.skip_until_sync = true;
            Ok(())
        }
    }
}

impl SplitPlan {
    /// The operations of `shard`, added on first use.
    fn ops(&mut self, shard: usize) -> &mut Vec<Op> {
        let i = match self.shards.iter().position(|(s, _)| *s == shard) {
            Some(i) => i,
            None => {
                self.shards.push((shard, Vec::new()));
                self.shards.len() - 1
            }
        };
        &mut self.shards[i].1
    }

    /// A Describe or Execute of the last Bind's portal, for each shard it
    /// is on.
    fn forward_to(&mut self, shards: &[usize], msg: &[u8]) {
        let slot = self.slots.len();
        for &shard in shards {
            self.ops(shard).push(Op::Forward {
                msg: msg.to_vec(),
                slot,
            });
        }
        self.slots.push(Slot::Remote(shards.len()));
    }

    /// The statement the client calls `name` at this point of the batch.
    fn statement(
        &self,
        known: &crate::prepared::ClientStatements,
        name: &str,
    ) -> Option<Arc<Statement>> {
        match self.names.get(name) {
            Some(s) => s.clone(),
            None => known.get(name).cloned(),
        }
    }
}

/// Writes a shard's operations, preparing statements its connection
/// lacks; returns what each answer stands for.
fn encode_ops(part: &mut Part, ops: &[Op], out: &mut BytesMut) -> Vec<Expected> {
    let mut script = Vec::new();
    for op in ops {
        match op {
            Op::Bind { stmt, msg, slot } => {
                let conn = &mut part.b.conn;
                if !conn.prepared.touch(stmt.id) {
                    if let Some(evicted) = conn.prepared.insert(stmt.id) {
                        let close = DescribeOrClose {
                            target: Target::Statement,
                            name: "",
                        };
                        close.encode_as(tag::CLOSE, &format!("sg_{evicted}"), out);
                        script.push(Expected::Close);
                    }
                    frontend::encode_parse(&stmt.server_name, &stmt.query, &stmt.param_types, out);
                    script.push(Expected::Parse(stmt.id));
                }
                match Bind::decode(&msg[5..]) {
                    Ok(b) => b.encode_with_statement(&stmt.server_name, out),
                    Err(_) => out.extend_from_slice(msg),
                }
                script.push(Expected::Client(*slot));
            }
            Op::Forward { msg, slot } => {
                out.extend_from_slice(msg);
                script.push(Expected::Client(*slot));
            }
            Op::Part { bytes, slot } => {
                out.extend_from_slice(bytes);
                script.push(Expected::PartParse);
                script.push(Expected::Client(*slot));
            }
        }
    }
    script
}

/// One shard's part of a multi-row INSERT as Parse and Bind: its text with
/// the placeholders renumbered, and the Bind passing their values.
pub(super) fn part_bytes(text: &str, param_types: &[u8], bind: &Bind<'_>) -> Option<Vec<u8>> {
    let (sql, old) = shardgate_router::shard::renumber_params(text)?;
    let types: Vec<u8> = old
        .iter()
        .flat_map(|&i| {
            param_types
                .get(i * 4..i * 4 + 4)
                .map_or([0u8; 4], |t| [t[0], t[1], t[2], t[3]])
        })
        .collect();
    let mut out = BytesMut::new();
    frontend::encode_parse("", &sql, &types, &mut out);
    bind.encode_with_params("", &old, &mut out);
    Some(out.to_vec())
}

/// The client's answer from the answers of every shard a message went to:
/// one shard's as it is; of several, the first error, or the rows of all
/// with the row counts of the command tags summed.
fn combine(mut got: Vec<(BytesMut, bool)>) -> (BytesMut, bool) {
    if got.len() == 1 {
        return got.pop().expect("one");
    }
    if let Some(i) = got.iter().position(|a| a.1) {
        return got.swap_remove(i);
    }
    let mut rows = BytesMut::new();
    let mut tags: Vec<Vec<u8>> = Vec::new();
    let mut head: Option<BytesMut> = None;
    let mut end: Option<BytesMut> = None;
    for (bytes, _) in &got {
        let mut pos = 0;
        while let Ok(Some(h)) = Header::complete(&bytes[pos..], MAX_SERVER_MESSAGE) {
            let m = &bytes[pos..pos + h.total];
            match h.tag {
                btag::DATA_ROW => rows.extend_from_slice(m),
                btag::COMMAND_COMPLETE => tags.push(m[5..].to_vec()),
                // The end of a row-limited Execute, or of an empty query.
                btag::PORTAL_SUSPENDED | btag::EMPTY_QUERY => {
                    end.get_or_insert_with(|| BytesMut::from(m));
                }
                // BindComplete, RowDescription, NoData: once.
                _ => {
                    head.get_or_insert_with(|| BytesMut::from(m));
                }
            }
            pos += h.total;
        }
    }
    let mut answer = head.unwrap_or_default();
    answer.extend_from_slice(&rows);
    if !tags.is_empty() {
        let tags: Vec<&[u8]> = tags.iter().map(Vec::as_slice).collect();
        backend::command_complete(&super::fanout::sum_tags(&tags), &mut answer);
    } else if let Some(end) = end {
        answer.extend_from_slice(&end);
    }
    (answer, false)
}

/// After the batch: statements whose Parse the server did not confirm
/// are not prepared there; an unconfirmed eviction leaves the connection
/// in an unknown state.
fn forget_unconfirmed(part: &mut Part, r: &Reading) {
    for e in &r.script[r.next.min(r.script.len())..] {
        match e {
            Expected::Parse(id) => part.b.conn.prepared.remove(*id),
            Expected::Close => part.b.conn.broken = true,
            Expected::PartParse | Expected::Client(_) => {}
        }
    }
}

/// Whether another Bind follows before the batch's Sync or Flush.
fn has_another_bind(rest: &[u8], max: usize) -> bool {
    let mut pos = 0;
    while let Ok(Some(h)) = Header::complete(&rest[pos..], max) {
        match h.tag {
            tag::BIND => return true,
            tag::SYNC | tag::FLUSH => return false,
            _ => pos += h.total,
        }
    }
    false
}

fn lost_shard(addr: &str) -> PgError {
    PgError::error("08006", format!("connection to server {addr} was lost")).with_hint(
        "The batch was rolled back where it could be; check the other shards if it wrote.",
    )
}

/// Matches the whole messages in a shard's buffer to the client's slots.
fn read_answers(part: &mut Part, r: &mut Reading, answers: &mut [Vec<(BytesMut, bool)>]) {
    while !r.done {
        let buf = &mut part.b.conn.read_buf;
        let Ok(Some(h)) = Header::complete(buf, MAX_SERVER_MESSAGE) else {
            return;
        };
        let msg = buf.split_to(h.total);
        if h.tag == btag::READY_FOR_QUERY {
            if r.hidden > 0 {
                r.hidden -= 1;
            } else {
                part.b.ex.status = msg.get(5).copied().unwrap_or(b'E');
                r.done = true;
            }
            continue;
        }
        if matches!(h.tag, btag::PARAMETER_STATUS | btag::NOTIFICATION) {
            continue;
        }
        // The client message this answers: the current entry's, or for
        // an answer to something hidden, the next client message's.
        let slot = if r.hidden > 0 {
            if h.tag != btag::ERROR_RESPONSE {
                continue;
            }
            first_client(&r.script[..])
        } else {
            first_client(&r.script[r.next.min(r.script.len())..])
        };
        if h.tag == btag::ERROR_RESPONSE {
            if let Some(s) = slot {
                answers[s].push((BytesMut::from(&msg[..]), true));
            }
            // The server skips to the Sync.
            r.failed = true;
            r.hidden = 0;
            continue;
        }
        if let (Some(Expected::Client(_)), Some(s)) = (r.script.get(r.next), slot) {
            // This shard's answer to the message: one entry per shard,
            // started by its first message.
            let fresh = r.answering != Some(r.next);
            r.answering = Some(r.next);
            if fresh {
                answers[s].push((BytesMut::new(), false));
            }
            answers[s]
                .last_mut()
                .expect("pushed")
                .0
                .extend_from_slice(&msg);
        }
        if matches!(
            h.tag,
            btag::PARSE_COMPLETE
                | btag::BIND_COMPLETE
                | btag::CLOSE_COMPLETE
                | btag::ROW_DESCRIPTION
                | btag::NO_DATA
                | btag::COMMAND_COMPLETE
                | btag::EMPTY_QUERY
                | btag::PORTAL_SUSPENDED
        ) {
            r.next += 1;
        }
    }
}

/// The first client message among `entries`.
fn first_client(entries: &[Expected]) -> Option<usize> {
    entries.iter().find_map(|e| match e {
        Expected::Client(s) => Some(*s),
        _ => None,
    })
}
