//! Cross-shard merges (docs/ARCHITECTURE.md §9): one SELECT runs on several shards at
//! once and the client sees what one unsharded server would have sent.
//!
//! The statement the shards run comes from [`shardgate_router::merge_plan`]:
//! visible columns in the client's formats, then hidden columns in binary
//! (sort keys, group keys, partial aggregates). Each shard gets
//! Parse/Bind/Describe/Execute/Sync; the proxy keeps at most one decoded
//! row per shard (the head of its stream) and emits, in order:
//!
//! - sorted and limited plans: the smallest head (k-way merge on the typed
//!   sort keys), hidden columns stripped, OFFSET skipped, and once LIMIT rows
//!   went out the shards are cancelled;
//! - grouped plans: heads in group-key order, rows of one group combined
//!   (partial aggregates; a DISTINCT aggregate's partials only from the
//!   first row of each value of its argument, which the shards sort by
//!   last), HAVING applied, then emitted in order, or sorted
//!   in memory when the final ORDER BY uses an aggregate (memory bounded by
//!   the number of groups).

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use shardgate_merge::ops::format_of;
use shardgate_merge::plan::compared_columns;
use shardgate_merge::tree::{MergeTree, Step as TreeStep};
use shardgate_merge::MergeError;
use shardgate_protocol::backend::{self, tag as btag, ErrorFields};
use shardgate_protocol::frontend::{self, Bind};
use shardgate_protocol::{Header, PgError};
use shardgate_router::merge_plan::{MergePlan, RowCount};

use super::fanout::{deliver_cancels, read_any, Part};
use super::{Session, SessionError};
use crate::relay::MAX_SERVER_MESSAGE;
use crate::routing::Want;
use shardgate_pool::CancelHandle;

/// Flush rows to the client once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;

/// Bytes a merge may hold for its end (groups, rows to sort) before that
/// end runs on the blocking pool ([`Run::end_rows_unblocking`]); below it
/// the few milliseconds of work cost less than handing it to a thread.
const FINISH_OFF_THREAD_AT: usize = 4 << 20;

/// What the client sent for a merged statement.
pub(super) struct MergeRequest<'a> {
    /// The Bind (extended protocol); `None` for a simple query.
    pub bind: Option<&'a Bind<'a>>,
    /// Parameter types of the client's Parse.
    pub param_types: &'a [u8],
    /// The client sent Describe for the portal (or used the simple protocol).
    pub describe: bool,
    /// The Execute's row limit: at most this many rows, then PortalSuspended.
    pub max_rows: Option<u64>,
    /// The database collation when it does not order text bytewise (text
    /// keys cannot be merged then).
    pub collation: Option<String>,
    /// `COPY (query) TO STDOUT`: the merged rows go out as COPY data.
    pub copy: Option<shardgate_router::CopyRowsOut>,
    /// The shards run a statement the proxy derived, with these
    /// parameters instead of the client's Bind as it is.
    pub params: Option<super::materialize::ParamSet>,
    /// Keep the merged rows (binary) instead of answering the client:
    /// the first step of a materialized subquery.
    pub capture: bool,
}

/// What each shard of a merge is sent: a Parse of the shard statement
/// (skipped where a named one is already prepared), then Bind, Describe,
/// Execute and Sync.
#[derive(Default)]
pub(super) struct ShardRequest {
    /// The proxy-named statement, for a client's prepared statement.
    statement: Option<Arc<crate::prepared::Statement>>,
    /// Its Parse (unnamed without `statement`).
    parse: BytesMut,
    /// Bind, Describe, Execute, Sync.
    run: BytesMut,
}

impl ShardRequest {
    /// Writes the request for `part` into `out`: with a Parse unless the
    /// named statement is prepared on its connection (then recorded as
    /// prepared there, closing the least recently used one when full).
    fn encode_for(&self, part: &mut Part, out: &mut BytesMut) {
        let conn = &mut part.b.conn;
        match &self.statement {
            Some(stmt) if conn.prepared.touch(stmt.id) => part.skip_parse = 0,
            Some(stmt) => {
                if let Some(evicted) = conn.prepared.insert(stmt.id) {
                    let close = shardgate_protocol::frontend::DescribeOrClose {
                        target: shardgate_protocol::frontend::Target::Statement,
                        name: "",
                    };
                    close.encode_as(frontend::tag::CLOSE, &format!("sg_{evicted}"), out);
                }
                out.extend_from_slice(&self.parse);
                part.skip_parse = 1;
                part.preparing = Some(stmt.id);
            }
            None => {
                out.extend_from_slice(&self.parse);
                part.skip_parse = 1;
            }
        }
        out.extend_from_slice(&self.run);
    }
}

impl<'a> MergeRequest<'a> {
    /// An extended-protocol request: the client's Bind, its statement's
    /// parameter types, and what followed the Bind in its batch.
    pub(super) fn bound(
        bind: &'a Bind<'a>,
        param_types: &'a [u8],
        after: &super::sharded::AfterBind,
        collation: Option<String>,
    ) -> Self {
        MergeRequest {
            bind: Some(bind),
            param_types,
            describe: after.describe,
            max_rows: after.max_rows,
            collation,
            copy: None,
            params: None,
            capture: false,
        }
    }

    /// A simple-protocol query (no Bind, described), its rows as COPY data
    /// when `copy` says how.
    pub(super) fn simple(
        collation: Option<String>,
        copy: Option<shardgate_router::CopyRowsOut>,
    ) -> Self {
        MergeRequest {
            bind: None,
            param_types: &[],
            describe: true,
            max_rows: None,
            collation,
            copy,
            params: None,
            capture: false,
        }
    }
}

/// How a merge ended.
pub(super) enum MergeEnd {
    /// The client got its whole answer (ReadyForQuery included).
    Answered,
    /// The rows are done; ReadyForQuery with `status` is still to send.
    /// A capturing merge that succeeded has its rows in `captured`.
    Finished {
        status: u8,
        captured: Option<Captured>,
    },
    /// The shards' columns turned out to be of types the merge cannot
    /// combine (`0A000`), before anything of the answer went out: nothing
    /// was sent, the error is for the caller to send or to answer
    /// otherwise.
    Refused(PgError),
}

/// The rows of a capturing merge.
pub(super) struct Captured {
    /// The shards' RowDescription (hidden columns included).
    pub desc: BytesMut,
    /// Its columns the rows hold (the visible ones).
    pub visible: usize,
    /// The DataRow messages, back to back, binary.
    pub rows: BytesMut,
}

/// One shard's stream during a merge.
pub(super) struct Stream {
    /// RowDescription received.
    pub(super) desc: Option<BytesMut>,
    /// The first error the shard sent.
    pub(super) error: Option<BytesMut>,
}

/// A message of a shard's answer that matters to the merge.
enum Step {
    Row(BytesMut),
    Described(BytesMut),
    Complete,
    Ready(u8),
    Error(BytesMut),
    NeedData,
}

impl Session {
    /// Runs `plan` on `shards` and sends the merged result.
    pub(super) async fn merge_query(
        &mut self,
        shards: Vec<usize>,
        plan: Arc<MergePlan>,
        want: Want,
        req: MergeRequest<'_>,
    ) -> Result<(), SessionError> {
        match self.merge_run(shards, plan, want, req).await? {
            MergeEnd::Answered => Ok(()),
            MergeEnd::Finished { status, .. } => {
                backend::ready_for_query(status, &mut self.cout);
                self.flush_client().await
            }
            MergeEnd::Refused(e) => {
                self.merge_refused(e)?;
                self.flush_client().await
            }
        }
    }

    /// [`Session::merge_query`] of the client's statement `sql`; when the
    /// merge refuses the shards' column types, the statement is answered by
    /// gathering one of its tables instead ([`Session::gathered`]), with
    /// the request `again` builds.
    pub(super) async fn merge_or_gather<'r>(
        &mut self,
        sql: &str,
        (shards, plan, want): (Vec<usize>, Arc<MergePlan>, Want),
        again: impl Fn() -> MergeRequest<'r>,
    ) -> Result<(), SessionError> {
        let e = match self.merge_run(shards, plan, want, again()).await? {
            MergeEnd::Answered => return Ok(()),
            MergeEnd::Finished { status, .. } => {
                backend::ready_for_query(status, &mut self.cout);
                return self.flush_client().await;
            }
            MergeEnd::Refused(e) => e,
        };
        match self.gathered(sql).await {
            Ok(Some(m)) => self.materialize_query(&m, want, again()).await,
            Ok(None) => {
                self.merge_refused(e)?;
                self.flush_client().await
            }
            Err(e) => {
                self.merge_refused(e)?;
                self.flush_client().await
            }
        }
    }

    /// Runs `plan` on `shards`: the merged rows go to the client (or are
    /// captured), ReadyForQuery is left to the caller.
    pub(super) async fn merge_run(
        &mut self,
        shards: Vec<usize>,
        plan: Arc<MergePlan>,
        want: Want,
        req: MergeRequest<'_>,
    ) -> Result<MergeEnd, SessionError> {
        let extended = req.bind.is_some() && !req.capture;
        if plan.explain {
            self.answer_explain(&shards, &plan, &req);
            self.flush_client().await?;
            return Ok(MergeEnd::Answered);
        }
        let prepared = match self.prepare_merge(&plan, &req).await {
            Ok(p) => p,
            Err(e) => return self.merge_refused(e).map(|()| MergeEnd::Answered),
        };
        let (request, visible, limits) = prepared;
        self.drain_current().await?;
        let mut attempt = 0;
        self.lost_nodes.clear();
        let (mut run, status) = loop {
            let mut parts = match self.merge_parts(&shards, want, &request).await {
                Ok(parts) => parts,
                // A pooled connection found dead on sending: nothing ran.
                Err((_, true)) if self.may_rerun_read(want, &shards, attempt) => {
                    tracing::info!("retrying the read on several shards on other nodes");
                    attempt += 1;
                    continue;
                }
                Err((e, _)) => return self.merge_refused(e).map(|()| MergeEnd::Answered),
            };
            let mut run = Run::new(
                plan.clone(),
                visible,
                parts.len(),
                req.collation.clone(),
                self.snap.config.proxy.merge_memory_limit,
            );
            run.timer = super::fanout::QueryTimer::new(self.snap.config.proxy.query_timeout);
            let formats = match req.capture {
                true => vec![1],
                false => req.bind.map(|b| b.result_formats()).unwrap_or_default(),
            };
            run.tree.set_formats(formats);
            let limit = match (limits.0, req.max_rows) {
                (Some(l), Some(m)) => Some(l.min(m)),
                (l, m) => l.or(m),
            };
            run.set_limit(limit, limits.1);
            run.max_rows = req.max_rows;
            run.extended = extended;
            run.describe = req.describe && !req.capture;
            run.copy = req.copy.clone();
            run.copy_mark = self.cout.len();
            run.unsent = Some(self.cout.len());
            if req.capture {
                run.capture = Some((self.cout.len(), self.snap.config.proxy.merge_memory_limit));
            }
            self.hold_multi_read(true, want, &shards, attempt);
            let result = self.run_merge(&mut parts, &mut run).await;
            let again = self.rerun_lost_read(&parts) && result.is_ok();
            if again {
                for p in parts {
                    self.return_part(p.settle());
                }
                attempt += 1;
                continue;
            }
            let status = self.finish_merge(&mut parts, &mut run);
            self.convert_to_copy(&mut run);
            for p in parts {
                self.return_part(p.settle());
            }
            result?;
            break (run, status);
        };
        if let Some(e) = run.refused_types.take() {
            return Ok(MergeEnd::Refused(e));
        }
        let captured = match run.capture {
            Some((mark, _)) => self.take_captured(mark, &run),
            None => None,
        };
        Ok(MergeEnd::Finished { status, captured })
    }

    /// Connections to `shards` for a merge, each sent `request`; nothing
    /// was answered when this fails (the connections taken are given back),
    /// `true` with the error when a connection was found lost on sending
    /// (its pool's idle connections are checked).
    async fn merge_parts(
        &mut self,
        shards: &[usize],
        want: Want,
        request: &ShardRequest,
    ) -> Result<Vec<Part>, (PgError, bool)> {
        let mut parts: Vec<Part> = Vec::with_capacity(shards.len());
        for &shard in shards {
            let sent = match self.part_for(shard, want).await {
                Ok((mut part, mut out)) => {
                    request.encode_for(&mut part, &mut out);
                    part.b.conn.loan.bytes_sent += out.len() as u64;
                    match part.b.conn.stream.send_all(&out).await {
                        Ok(()) => Ok(part),
                        Err(e) => {
                            part.b.conn.broken = true;
                            self.discard_dead_idle(&part.b);
                            self.note_lost(&part.b);
                            Err((
                                PgError::error(
                                    "08006",
                                    format!("connection to a shard failed: {e}"),
                                ),
                                true,
                            ))
                        }
                    }
                }
                Err(e) => Err((e, false)),
            };
            match sent {
                Ok(part) => parts.push(part),
                Err(e) => {
                    for p in parts {
                        self.return_part(p.settle());
                    }
                    return Err(e);
                }
            }
        }
        Ok(parts)
    }

    /// Splits a capturing merge's output off the client buffer: DataRows
    /// are kept, errors and notices stay for the client.
    fn take_captured(&mut self, mark: usize, run: &Run) -> Option<Captured> {
        let written = self.cout.split_off(mark.min(self.cout.len()));
        let mut rows = BytesMut::new();
        let mut pos = 0;
        while pos + 5 <= written.len() {
            let len = i32::from_be_bytes([
                written[pos + 1],
                written[pos + 2],
                written[pos + 3],
                written[pos + 4],
            ]) as usize;
            let end = (pos + 1 + len).min(written.len());
            let msg = &written[pos..end];
            match msg[0] {
                btag::DATA_ROW if !run.failed => rows.extend_from_slice(msg),
                btag::DATA_ROW => {}
                btag::COMMAND_COMPLETE | btag::PORTAL_SUSPENDED => {}
                _ => self.cout.extend_from_slice(msg),
            }
            pos = end;
        }
        if run.failed {
            return None;
        }
        let desc = run.streams.first().and_then(|s| s.desc.clone())?;
        Some(Captured {
            desc,
            visible: run.visible,
            rows,
        })
    }

    /// The batch each shard runs, the visible column count and the client's
    /// LIMIT and OFFSET values.
    async fn prepare_merge(
        &mut self,
        plan: &MergePlan,
        req: &MergeRequest<'_>,
    ) -> Result<(ShardRequest, usize, (Option<u64>, u64)), PgError> {
        let used = req.params.as_ref().map(|p| p.used.as_slice());
        let (visible, limit, offset) = self.merge_shape(plan, req.bind, used).await?;
        let client_formats = match &req.copy {
            _ if req.capture => vec![1],
            Some(c) if c.binary() => vec![1],
            _ => req.bind.map(|b| b.result_formats()).unwrap_or_default(),
        };
        let formats = shard_formats(plan, visible, &client_formats);
        let mut request = ShardRequest::default();
        match (&req.params, req.bind) {
            (Some(p), bind) => {
                let types = p.param_types(req.param_types);
                frontend::encode_parse("", &plan.shard_sql, &types, &mut request.parse);
                p.encode_bind(bind, &formats, &mut request.run);
            }
            (None, Some(b)) => {
                // A client's prepared statement: the shards keep theirs
                // prepared too (parsed and planned once per connection).
                let stmt = self
                    .runtime
                    .statements
                    .intern(&plan.shard_sql, req.param_types);
                frontend::encode_parse(
                    &stmt.server_name,
                    &stmt.query,
                    &stmt.param_types,
                    &mut request.parse,
                );
                b.encode_with_results(&stmt.server_name, &formats, &mut request.run);
                request.statement = Some(stmt);
            }
            (None, None) => {
                frontend::encode_parse("", &plan.shard_sql, req.param_types, &mut request.parse);
                encode_bind_no_params(&formats, &mut request.run);
            }
        }
        encode_describe_portal(&mut request.run);
        encode_execute_all(&mut request.run);
        frontend::encode_empty(frontend::tag::SYNC, &mut request.run);
        Ok((request, visible, (limit, offset)))
    }

    /// The names the plan took as output aliases in GROUP BY that are
    /// also columns of its FROM tables (Postgres groups by the column).
    pub(super) async fn group_alias_columns(
        &mut self,
        plan: &MergePlan,
    ) -> Result<Vec<String>, PgError> {
        let mut names = Vec::new();
        for (name, tables) in &plan.group_aliases {
            for (schema, table) in tables {
                let columns = self.table_columns(schema.as_deref(), table).await?;
                if columns.iter().any(|c| c == name) && !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        Ok(names)
    }

    /// The visible column count of a merged query, and its LIMIT and
    /// OFFSET values (from the Bind when they are parameters).
    pub(super) async fn merge_shape(
        &mut self,
        plan: &MergePlan,
        bind: Option<&Bind<'_>>,
        used: Option<&[usize]>,
    ) -> Result<(usize, Option<u64>, u64), PgError> {
        if let Some(name) = self.group_alias_columns(plan).await?.first() {
            return Err(PgError::error(
                "0A000",
                format!("not supported across shards: GROUP BY {name}, both an output column's name and an input column here (Postgres groups by the column)"),
            ));
        }
        let visible = match plan.visible {
            Some(v) => v,
            None if plan.hidden == 0 => 0,
            None => {
                let mut n = plan.visible_fixed;
                for (schema, table) in &plan.star_tables {
                    n += self.table_columns(schema.as_deref(), table).await?.len();
                }
                n
            }
        };
        let limit = row_count(plan.limit.as_ref(), bind, used, "LIMIT")?;
        let offset = row_count(plan.offset.as_ref(), bind, used, "OFFSET")?.unwrap_or(0);
        Ok((visible, limit, offset))
    }

    /// `EXPLAIN` of a statement over several shards: the plan's own lines,
    /// as Postgres sends an EXPLAIN result (one text column `QUERY PLAN`).
    fn answer_explain(&mut self, shards: &[usize], plan: &MergePlan, req: &MergeRequest<'_>) {
        self.answer_plan_lines(&plan.describe(shards), req);
    }

    /// An `EXPLAIN` answer of `lines`, one `QUERY PLAN` row each.
    pub(super) fn answer_plan_lines(&mut self, lines: &[String], req: &MergeRequest<'_>) {
        if req.bind.is_some() {
            backend::empty(btag::BIND_COMPLETE, &mut self.cout);
        }
        if req.describe {
            backend::row_description(&[("QUERY PLAN", 25)], &mut self.cout);
        }
        for line in lines {
            backend::data_row(&[Some(line.as_str())], &mut self.cout);
        }
        backend::command_complete("EXPLAIN", &mut self.cout);
        backend::ready_for_query(self.client_status(), &mut self.cout);
    }

    /// Tells the client the merge cannot run (nothing was sent to a shard).
    pub(super) fn merge_refused(&mut self, e: PgError) -> Result<(), SessionError> {
        if let Some(v) = self.vtx.as_mut() {
            v.failed = true;
        }
        e.encode(&mut self.cout);
        backend::ready_for_query(self.client_status(), &mut self.cout);
        Ok(())
    }

    /// Reads every shard and emits merged rows until the result is complete
    /// (or LIMIT is reached, or a shard failed).
    async fn run_merge(&mut self, parts: &mut [Part], run: &mut Run) -> Result<(), SessionError> {
        loop {
            for (i, part) in parts.iter_mut().enumerate() {
                run.pump(part, i, &mut self.cout);
            }
            if let Some(e) = run
                .row_refusal
                .take()
                .filter(|_| !run.failed && !run.stopping)
            {
                run.fail_or_refuse(e, parts, &mut self.cout, self.vtx.is_none());
                continue;
            }
            if run.streams.iter().any(|s| s.error.is_some()) && !run.failed && !run.stopping {
                run.fail(parts, &mut self.cout, self.vtx.is_none());
            }
            if run.failed || run.stopping {
                // Drain: everything left is discarded.
                if parts.iter().all(|p| p.done.is_some()) {
                    return Ok(());
                }
            } else if !run.announced {
                if run.streams.iter().all(|s| s.desc.is_some()) {
                    if let Err(e) = run.describe(&mut self.cout) {
                        if e.code.as_str() == "0A000" {
                            // Nothing was sent yet: the caller may answer
                            // the statement another way.
                            run.refused_types = Some(e);
                        } else {
                            e.encode(&mut self.cout);
                        }
                        run.failed = true;
                        cancel_parts(parts, self.vtx.is_none(), &mut run.to_cancel);
                    }
                    continue;
                }
            } else {
                match run.tree.step(&mut self.cout) {
                    Err(e) => {
                        run.fail_or_refuse(
                            merge_error(e),
                            parts,
                            &mut self.cout,
                            self.vtx.is_none(),
                        );
                        continue;
                    }
                    Ok(TreeStep::Moved) => {
                        if run.limit_reached() {
                            if let Err(e) = run.end_rows(&mut self.cout) {
                                run.fail_with(e, parts, &mut self.cout, false);
                            }
                            run.stopping = true;
                            // What the shards already sent may end their
                            // answers: only those still working are
                            // cancelled (a cancel costs each a connection).
                            for (i, part) in parts.iter_mut().enumerate() {
                                run.pump(part, i, &mut self.cout);
                            }
                            cancel_parts(parts, self.vtx.is_none(), &mut run.to_cancel);
                        }
                        if let Some((mark, limit)) = run.capture {
                            if self.cout.len() - mark > limit {
                                let e = capture_too_large(limit);
                                run.fail_with(e, parts, &mut self.cout, self.vtx.is_none());
                            }
                        } else if self.cout.len() >= FLUSH_AT {
                            self.convert_to_copy(run);
                            self.flush_client().await?;
                            if self.cout.is_empty() {
                                run.unsent = None;
                            }
                        }
                        continue;
                    }
                    Ok(TreeStep::Drained) => {
                        if let Err(e) = run.end_rows_unblocking(&mut self.cout).await {
                            run.fail_or_refuse(e, parts, &mut self.cout, self.vtx.is_none());
                        }
                        run.stopping = true;
                        if parts.iter().all(|p| p.done.is_some()) {
                            return Ok(());
                        }
                    }
                    Ok(TreeStep::Waiting) => {}
                }
            }
            deliver_cancels(std::mem::take(&mut run.to_cancel)).await;
            // The answer's head waits for its first row (so that a type the
            // merge refuses can still be answered another way).
            let holding = run.announced && run.tree.sent() == 0 && !run.failed && !run.stopping;
            if run.capture.is_none() && !holding {
                self.convert_to_copy(run);
                self.flush_client().await?;
                if self.cout.is_empty() {
                    // Sent (unless held back for a retry, then still here).
                    run.unsent = (!run.announced).then_some(0);
                }
            }
            let tree = &run.tree;
            let draining = run.failed || run.stopping;
            let wanted = |i: usize, p: &Part| p.done.is_none() && (draining || tree.is_empty(i));
            let Ok((i, read)) = read_any(parts, wanted, &self.client, &mut run.timer).await else {
                super::fanout::abandon(parts);
                return Err(super::fanout::client_left());
            };
            match read {
                Ok(0) | Err(_) => {
                    let p = &mut parts[i];
                    p.lost = !matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::TimedOut);
                    p.b.conn.broken = true;
                    p.b.conn.read_buf.clear();
                    p.done = Some(b'E');
                    if !run.failed && !run.stopping {
                        match &read {
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                                super::fanout::given_up(e, &p.b.conn.addr)
                            }
                            Err(e) => PgError::error(
                                "08006",
                                format!("connection to server {} was lost: {e}", p.b.conn.addr),
                            ),
                            Ok(_) => PgError::error(
                                "08006",
                                format!("connection to server {} was lost", p.b.conn.addr),
                            ),
                        }
                        .encode(&mut self.cout);
                        run.failed = true;
                        cancel_parts(parts, self.vtx.is_none(), &mut run.to_cancel);
                    }
                }
                Ok(_) => {}
            }
        }
    }

    /// For `COPY (query) TO`: turns what the merge wrote for the client
    /// since the last call into COPY messages.
    fn convert_to_copy(&mut self, run: &mut Run) {
        let Some(copy) = run.copy.as_mut() else {
            return;
        };
        let mark = run.copy_mark.min(self.cout.len());
        let written = self.cout.split_off(mark);
        let mut out = Vec::with_capacity(written.len() + 64);
        copy.convert(&written, &mut out);
        self.cout.extend_from_slice(&out);
        run.copy_mark = self.cout.len();
    }

    /// The client's transaction status after a merge; marks a failed
    /// virtual transaction.
    fn finish_merge(&mut self, parts: &mut [Part], run: &mut Run) -> u8 {
        let mut status = b'I';
        for p in parts.iter() {
            match p.done {
                Some(b'E') => status = b'E',
                Some(b'T') if status != b'E' => status = b'T',
                _ => {}
            }
        }
        if let Some(v) = self.vtx.as_mut() {
            if run.failed {
                v.failed = true;
            }
            return if v.failed { b'E' } else { b'T' };
        }
        status
    }
}

/// The shards still running the statement, to cancel. Inside a
/// transaction nothing is cancelled (that would abort the client's
/// transaction on the shard); the rest of the rows are read and dropped.
fn cancel_parts(parts: &[Part], allowed: bool, to_cancel: &mut Vec<CancelHandle>) {
    if !allowed {
        return;
    }
    for p in parts {
        if p.done.is_none() && p.hidden == 0 {
            to_cancel.push(p.b.conn.cancel.clone());
        }
    }
}

/// A merge in progress: the shards' streams as the protocol sees them,
/// and the operator tree ([`MergeTree`]) their rows go through.
pub(super) struct Run {
    pub(super) plan: Arc<MergePlan>,
    pub(super) visible: usize,
    /// The Execute's row limit.
    pub(super) max_rows: Option<u64>,
    pub(super) extended: bool,
    pub(super) describe: bool,
    pub(super) collation: Option<String>,
    pub(super) streams: Vec<Stream>,
    /// The merge operators.
    pub(super) tree: MergeTree,
    /// BindComplete and RowDescription went to the client.
    pub(super) announced: bool,
    /// LIMIT reached or rows ended: the rest is drained.
    pub(super) stopping: bool,
    /// An error went to the client: the rest is drained.
    pub(super) failed: bool,
    /// Cancel requests to deliver before reading on.
    pub(super) to_cancel: Vec<CancelHandle>,
    /// `proxy.query_timeout` of this statement.
    pub(super) timer: super::fanout::QueryTimer,
    /// `COPY (query) TO`: how the client's rows become COPY data.
    pub(super) copy: Option<shardgate_router::CopyRowsOut>,
    /// Where in the client buffer the merge's unconverted output starts.
    pub(super) copy_mark: usize,
    /// A capturing merge: where its output starts in the client buffer
    /// (never flushed) and the bytes it may hold there.
    pub(super) capture: Option<(usize, usize)>,
    /// The merge refused the shards' column types before any of the
    /// answer left the proxy (what it wrote was taken back).
    pub(super) refused_types: Option<PgError>,
    /// A shard row the merge could not take because of its types (`0A000`),
    /// not yet acted on.
    row_refusal: Option<PgError>,
    /// Where the answer starts in the client buffer while none of it was
    /// sent; `None` once some may have been.
    pub(super) unsent: Option<usize>,
}

impl Run {
    /// A merge of `plan` over `streams` shard streams with `visible`
    /// columns for the client, holding at most `memory_limit` bytes; no
    /// LIMIT, OFFSET or row limit yet.
    pub(super) fn new(
        plan: Arc<MergePlan>,
        visible: usize,
        streams: usize,
        collation: Option<String>,
        memory_limit: usize,
    ) -> Run {
        Run {
            tree: MergeTree::new(plan.clone(), streams, memory_limit),
            plan,
            visible,
            max_rows: None,
            extended: false,
            describe: true,
            collation,
            streams: (0..streams)
                .map(|_| Stream {
                    desc: None,
                    error: None,
                })
                .collect(),
            announced: false,
            stopping: false,
            failed: false,
            to_cancel: Vec::new(),
            timer: super::fanout::QueryTimer::off(),
            copy: None,
            copy_mark: 0,
            capture: None,
            refused_types: None,
            row_refusal: None,
            unsent: None,
        }
    }

    /// Handles part `i`'s buffered messages until it yields a row (into
    /// the tree), needs more bytes, or is done.
    fn pump(&mut self, part: &mut Part, i: usize, cout: &mut BytesMut) {
        let draining = self.failed || self.stopping;
        loop {
            if part.done.is_some() || (!draining && !self.tree.is_empty(i)) {
                return;
            }
            match next_step(part, cout) {
                Step::NeedData => return,
                Step::Row(row) => {
                    if draining {
                        continue;
                    }
                    if let Err(e) = self.tree.push(i, row) {
                        let e = merge_error(e);
                        if e.code.as_str() == "0A000" {
                            self.row_refusal.get_or_insert(e);
                        } else {
                            self.streams[i].error = Some(encode_error(&e));
                        }
                    }
                }
                Step::Described(d) => {
                    if !self.tree.has_types() {
                        match parse_row_description(&d) {
                            Ok((types, _)) => self.tree.set_types(types),
                            Err(()) => {
                                self.streams[i].error = Some(encode_error(&PgError::error(
                                    "08P01",
                                    "shardgate: a shard sent a malformed RowDescription",
                                )))
                            }
                        }
                    }
                    self.streams[i].desc = Some(d);
                }
                Step::Complete => self.tree.end(i),
                Step::Ready(status) => {
                    part.b.ex.status = status;
                    part.done = Some(status);
                    self.tree.end(i);
                }
                Step::Error(e) => {
                    self.tree.end(i);
                    if self.streams[i].error.is_none() {
                        self.streams[i].error = Some(e);
                    }
                }
            }
        }
    }

    /// A shard failed: its error goes to the client once; the others are
    /// cancelled.
    fn fail(&mut self, parts: &[Part], cout: &mut BytesMut, cancel: bool) {
        if let Some(e) = self.streams.iter().find_map(|s| s.error.clone()) {
            cout.extend_from_slice(&e);
        }
        self.failed = true;
        self.tree.clear();
        cancel_parts(parts, cancel, &mut self.to_cancel);
    }

    /// [`Run::fail_with`], unless `e` refuses types the merge cannot
    /// combine before any row of the answer left the proxy: then what was
    /// written is taken back and the refusal kept for the caller, who may
    /// answer another way.
    fn fail_or_refuse(&mut self, e: PgError, parts: &[Part], cout: &mut BytesMut, cancel: bool) {
        match self.unsent {
            Some(start) if e.code.as_str() == "0A000" && self.tree.sent() == 0 => {
                cout.truncate(start);
                self.refused_types = Some(e);
                self.failed = true;
                self.tree.clear();
                cancel_parts(parts, cancel, &mut self.to_cancel);
            }
            _ => self.fail_with(e, parts, cout, cancel),
        }
    }

    fn fail_with(&mut self, e: PgError, parts: &[Part], cout: &mut BytesMut, cancel: bool) {
        e.encode(cout);
        self.failed = true;
        self.tree.clear();
        cancel_parts(parts, cancel, &mut self.to_cancel);
    }

    /// LIMIT and OFFSET (the Execute's row limit applies when smaller).
    pub(super) fn set_limit(&mut self, limit: Option<u64>, offset: u64) {
        self.tree.set_limit(limit, offset);
    }

    /// All shards described the result: checks they agree and that the
    /// merge handles their types, then sends the client's BindComplete and
    /// RowDescription (nothing when it fails).
    pub(super) fn describe(&mut self, cout: &mut BytesMut) -> Result<(), PgError> {
        let desc = self.streams[0].desc.clone().expect("described");
        let (types, ends) = parse_row_description(&desc).map_err(|_| {
            PgError::error(
                "08P01",
                "shardgate: a shard sent a malformed RowDescription",
            )
        })?;
        let total = types.len();
        let visible = if self.plan.hidden == 0 {
            total
        } else {
            total.checked_sub(self.plan.hidden).ok_or_else(|| {
                PgError::error("XX000", "shardgate: a shard returned too few columns")
            })?
        };
        if self.plan.hidden > 0 && self.plan.visible.is_some() && visible != self.visible {
            return Err(PgError::error(
                "XX000",
                "shardgate: a shard returned an unexpected number of columns",
            ));
        }
        self.visible = visible;
        if let Some(collation) = &self.collation {
            let shift = match self.plan.visible {
                Some(_) => 0,
                None => visible.saturating_sub(self.plan.visible_fixed),
            };
            let text_key = compared_columns(&*self.plan)
                .into_iter()
                .any(|c| matches!(types.get(c + shift), Some(25 | 1042 | 1043)));
            if text_key {
                return Err(PgError::error(
                    "0A000",
                    format!("not supported across shards: ordering or grouping text under the collation {collation} (the merge compares text bytewise, as the C collation does)"),
                )
                .with_hint("Create the database with the C collation, or restrict the query to one shard."));
            }
        }
        let mut client_desc = BytesMut::with_capacity(desc.len());
        client_desc.put_u8(btag::ROW_DESCRIPTION);
        client_desc.put_i32(0);
        client_desc.put_i16(visible as i16);
        let start = 7;
        let end = if visible == 0 {
            start
        } else {
            ends[visible - 1]
        };
        client_desc.extend_from_slice(&desc[start..end]);
        backend::patch_len(&mut client_desc, 0);
        // Types first: a refusal leaves nothing written.
        self.tree.set_types(types);
        self.tree.describe(visible).map_err(merge_error)?;
        if self.extended {
            backend::empty(btag::BIND_COMPLETE, cout);
        }
        if self.describe {
            cout.extend_from_slice(&client_desc);
        }
        self.announced = true;
        Ok(())
    }

    /// The Execute's row limit cut the result short.
    pub(super) fn suspended(&self) -> bool {
        !self.failed && self.max_rows.is_some_and(|m| self.tree.sent() >= m)
    }

    pub(super) fn limit_reached(&self) -> bool {
        self.tree.limit_reached()
    }

    /// Every shard finished its rows: what the tree still holds goes out,
    /// then CommandComplete (or PortalSuspended).
    pub(super) fn end_rows(&mut self, cout: &mut BytesMut) -> Result<(), PgError> {
        self.tree.finish(cout).map_err(merge_error)?;
        self.complete(cout);
        Ok(())
    }

    /// [`Run::end_rows`], on the blocking pool when the tree holds more
    /// than [`FINISH_OFF_THREAD_AT`] bytes: sorting a million groups takes
    /// a CPU for a good part of a second, which would stall every other
    /// client of the runtime thread (all of them with `workers = 1`).
    pub(super) async fn end_rows_unblocking(&mut self, cout: &mut BytesMut) -> Result<(), PgError> {
        if self.tree.held() < FINISH_OFF_THREAD_AT {
            return self.end_rows(cout);
        }
        tracing::debug!(
            bytes = self.tree.held(),
            "cross-shard merge: final step on the blocking pool"
        );
        let spare = MergeTree::new(self.tree.spec(), 0, 0);
        let mut tree = std::mem::replace(&mut self.tree, spare);
        let mut out = std::mem::take(cout);
        let finished = tokio::task::spawn_blocking(move || {
            let r = tree.finish(&mut out);
            (tree, out, r)
        })
        .await;
        let (tree, out, r) = finished.map_err(|e| {
            PgError::error(
                "XX000",
                format!("shardgate: the merge's final step failed: {e}"),
            )
        })?;
        self.tree = tree;
        *cout = out;
        r.map_err(merge_error)?;
        self.complete(cout);
        Ok(())
    }

    /// CommandComplete, or PortalSuspended when the Execute's row limit cut
    /// the rows short.
    fn complete(&self, cout: &mut BytesMut) {
        if self.suspended() {
            // As Postgres: the Execute's row limit reached, the portal is
            // suspended (a later Execute of it is refused).
            backend::empty(btag::PORTAL_SUSPENDED, cout);
        } else {
            backend::command_complete(&format!("SELECT {}", self.tree.sent()), cout);
        }
    }
}

/// Reads the next message of a part that matters to the merge.
fn next_step(part: &mut Part, cout: &mut BytesMut) -> Step {
    loop {
        let buf = &mut part.b.conn.read_buf;
        let h = match Header::complete(buf, MAX_SERVER_MESSAGE) {
            Ok(Some(h)) => h,
            Ok(None) => return Step::NeedData,
            Err(e) => {
                part.b.conn.broken = true;
                part.done = Some(b'E');
                return Step::Error(encode_error(&PgError::error(
                    "08P01",
                    format!("protocol error from server: {e}"),
                )));
            }
        };
        let msg = buf.split_to(h.total);
        if h.tag == btag::PARSE_COMPLETE && part.hidden == 0 {
            part.preparing = None;
        }
        if part.hidden > 0 {
            match h.tag {
                btag::READY_FOR_QUERY => part.hidden -= 1,
                btag::ERROR_RESPONSE => return Step::Error(msg),
                _ => {}
            }
            continue;
        }
        match h.tag {
            btag::DATA_ROW => return Step::Row(msg),
            btag::ROW_DESCRIPTION => return Step::Described(msg),
            btag::COMMAND_COMPLETE | btag::EMPTY_QUERY | btag::PORTAL_SUSPENDED => {
                return Step::Complete
            }
            btag::READY_FOR_QUERY => return Step::Ready(msg.get(5).copied().unwrap_or(b'E')),
            btag::ERROR_RESPONSE => {
                if ErrorFields::decode(&msg[5..]).is_ok_and(|e| e.is_stale_cached_plan()) {
                    // Its named shard statement would fail every run: the
                    // connection is not reused (a new one prepares afresh).
                    part.b.conn.retire = true;
                }
                return Step::Error(msg);
            }
            btag::NOTICE_RESPONSE | btag::NOTIFICATION => cout.extend_from_slice(&msg),
            btag::NO_DATA => {
                return Step::Described({
                    let mut d = BytesMut::new();
                    d.put_u8(btag::ROW_DESCRIPTION);
                    d.put_i32(6);
                    d.put_i16(0);
                    d
                })
            }
            // ParseComplete, BindComplete, ParameterStatus, ...
            _ => {}
        }
    }
}

pub(super) fn encode_error(e: &PgError) -> BytesMut {
    let mut out = BytesMut::new();
    e.encode(&mut out);
    out
}

/// A captured subquery result over `proxy.merge_memory_limit`.
fn capture_too_large(limit: usize) -> PgError {
    PgError::error(
        "53400",
        format!("shardgate: the rows of a subquery over several shards need more than merge_memory_limit ({limit} bytes) of proxy memory"),
    )
    .with_hint("Filter the subquery further, restrict it to one shard, or raise proxy.merge_memory_limit in proxy.toml.")
}

/// A merge error as the client sees it (with its hint, if any).
pub(super) fn merge_error(e: MergeError) -> PgError {
    let hint = e.hint();
    let err = PgError::error(e.sqlstate(), e.to_string());
    match hint {
        Some(h) => err.with_hint(h),
        None => err,
    }
}

/// The value of a LIMIT or OFFSET.
fn row_count(
    c: Option<&RowCount>,
    bind: Option<&Bind<'_>>,
    used: Option<&[usize]>,
    what: &str,
) -> Result<Option<u64>, PgError> {
    let v: i64 = match c {
        None => return Ok(None),
        Some(RowCount::Literal(n)) => return Ok(Some(*n)),
        Some(RowCount::Param(i)) => {
            // A derived statement's parameter `i` is the client's `used[i]`.
            let i = &used.and_then(|u| u.get(*i).copied()).unwrap_or(*i);
            let Some(b) = bind else { return Ok(None) };
            let Some(raw) = b.param(*i) else {
                return Ok(None);
            };
            let parsed = if b.param_format(*i) == 1 {
                match raw.len() {
                    8 => Some(i64::from_be_bytes(raw.try_into().expect("8 bytes"))),
                    4 => Some(i32::from_be_bytes(raw.try_into().expect("4 bytes")) as i64),
                    2 => Some(i16::from_be_bytes(raw.try_into().expect("2 bytes")) as i64),
                    _ => None,
                }
            } else {
                std::str::from_utf8(raw)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            };
            parsed.ok_or_else(|| PgError::error("22P02", format!("invalid value for {what}")))?
        }
    };
    u64::try_from(v).map(Some).map_err(|_| {
        let code = if what == "LIMIT" { "2201W" } else { "2201X" };
        PgError::error(code, format!("{what} must not be negative"))
    })
}

/// The result formats the shards are asked for: the visible columns in
/// the client's formats, the hidden ones (keys, partial aggregates) binary.
pub(super) fn shard_formats(plan: &MergePlan, visible: usize, client: &[i16]) -> Vec<i16> {
    if plan.hidden == 0 {
        return client.to_vec();
    }
    (0..visible)
        .map(|j| format_of(client, j))
        .chain(std::iter::repeat_n(1, plan.hidden))
        .collect()
}

pub(super) fn encode_bind_no_params(formats: &[i16], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(frontend::tag::BIND);
    out.put_i32(0);
    out.put_u8(0);
    out.put_u8(0);
    out.put_i16(0);
    out.put_i16(0);
    out.put_i16(formats.len() as i16);
    for f in formats {
        out.put_i16(*f);
    }
    backend::patch_len(out, start);
}

fn encode_describe_portal(out: &mut BytesMut) {
    out.put_u8(frontend::tag::DESCRIBE);
    out.put_i32(6);
    out.put_u8(b'P');
    out.put_u8(0);
}

fn encode_execute_all(out: &mut BytesMut) {
    out.put_u8(frontend::tag::EXECUTE);
    out.put_i32(9);
    out.put_u8(0);
    out.put_i32(0);
}

/// Field types of a RowDescription and the end offset of each field.
pub(super) fn parse_row_description(msg: &[u8]) -> Result<(Vec<u32>, Vec<usize>), ()> {
    let d = shardgate_merge::row::RowDescription::parse(msg).ok_or(())?;
    Ok(d.columns().iter().map(|c| (c.type_oid, c.end)).unzip())
}
