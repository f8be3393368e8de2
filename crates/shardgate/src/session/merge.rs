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

use std::cmp::Ordering;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use shardgate_merge::expr::{encodable, encode_value, Bound};
use shardgate_merge::ops::FirstPerKey;
use shardgate_merge::{decode_key, AggKind, AggState, Key, MergeError};
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend::{self, Bind};
use shardgate_protocol::{Header, PgError};
use shardgate_router::merge_plan::{
    FinalKey, GroupPlan, GroupValue, MergeMode, MergePlan, OutputColumn, RowCount, SortKey,
};

mod window;

use super::fanout::{deliver_cancels, read_any, Part};
use super::{Session, SessionError};
use crate::relay::MAX_SERVER_MESSAGE;
use crate::routing::Want;
use shardgate_pool::CancelHandle;

/// Flush rows to the client once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;

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
}

impl MergeRequest<'_> {
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
        }
    }
}

/// One shard's stream during a merge.
pub(super) struct Stream {
    /// RowDescription received.
    pub(super) desc: Option<BytesMut>,
    /// The next row, not yet merged.
    pub(super) head: Option<Head>,
    /// CommandComplete received: no more rows.
    pub(super) complete: bool,
    /// The first error the shard sent.
    pub(super) error: Option<BytesMut>,
}

/// A row waiting to be merged, with its sort keys decoded.
pub(super) struct Head {
    pub(super) row: BytesMut,
    pub(super) keys: Vec<Key>,
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

/// The columns of one result, from the RowDescription.
pub(super) struct Columns {
    types: Vec<u32>,
    /// [`GroupPlan::exprs`] typed by this result.
    exprs: Vec<Bound>,
}

/// Per-group accumulation.
pub(super) struct Group {
    first: BytesMut,
    keys: Vec<Key>,
    aggs: Vec<AggState>,
    /// The last value of [`GroupPlan::distinct_value`] added.
    last_distinct: Option<Key>,
    /// Per aggregate: a DISTINCT one counted that value already (a row of
    /// a shard where FILTER left it out counts nothing).
    counted: Vec<bool>,
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
        let extended = req.bind.is_some();
        if plan.explain {
            self.answer_explain(&shards, &plan, &req);
            return self.flush_client().await;
        }
        let prepared = match self.prepare_merge(&plan, &req).await {
            Ok(p) => p,
            Err(e) => return self.merge_refused(e),
        };
        let (batch, visible, limits) = prepared;
        self.drain_current().await?;
        let mut parts = Vec::with_capacity(shards.len());
        for shard in shards {
            match self.part_for(shard, want).await {
                Ok((mut part, mut out)) => {
                    part.skip_parse = 1;
                    out.extend_from_slice(&batch);
                    part.b.conn.loan.bytes_sent += out.len() as u64;
                    if let Err(e) = part.b.conn.stream.send_all(&out).await {
                        part.b.conn.broken = true;
                        for p in parts {
                            let p: Part = p;
                            self.return_part(p.b);
                        }
                        return self.merge_refused(PgError::error(
                            "08006",
                            format!("connection to a shard failed: {e}"),
                        ));
                    }
                    parts.push(part);
                }
                Err(e) => {
                    for p in parts {
                        self.return_part(p.b);
                    }
                    return self.merge_refused(e);
                }
            }
        }
        let mut run = Run::new(plan.clone(), visible, parts.len(), req.collation.clone());
        run.memory_limit = self.snap.config.proxy.merge_memory_limit;
        run.timer = super::fanout::QueryTimer::new(self.snap.config.proxy.query_timeout);
        run.formats = req.bind.map(|b| b.result_formats()).unwrap_or_default();
        run.offset = limits.1;
        run.limit = match (limits.0, req.max_rows) {
            (Some(l), Some(m)) => Some(l.min(m)),
            (l, m) => l.or(m),
        };
        run.max_rows = req.max_rows;
        run.extended = extended;
        run.describe = req.describe;
        run.copy = req.copy.clone();
        run.copy_mark = self.cout.len();
        let result = self.run_merge(&mut parts, &mut run).await;
        let status = self.finish_merge(&mut parts, &mut run);
        self.convert_to_copy(&mut run);
        for p in parts {
            self.return_part(p.b);
        }
        result?;
        backend::ready_for_query(status, &mut self.cout);
        self.flush_client().await
    }

    /// The batch each shard runs, the visible column count and the client's
    /// LIMIT and OFFSET values.
    async fn prepare_merge(
        &mut self,
        plan: &MergePlan,
        req: &MergeRequest<'_>,
    ) -> Result<(BytesMut, usize, (Option<u64>, u64)), PgError> {
        let (visible, limit, offset) = self.merge_shape(plan, req.bind).await?;
        let client_formats = match &req.copy {
            Some(c) if c.binary() => vec![1],
            _ => req.bind.map(|b| b.result_formats()).unwrap_or_default(),
        };
        let formats = shard_formats(plan, visible, &client_formats);
        let mut batch = BytesMut::new();
        frontend::encode_parse("", &plan.shard_sql, req.param_types, &mut batch);
        match req.bind {
            Some(b) => b.encode_with_results("", &formats, &mut batch),
            None => encode_bind_no_params(&formats, &mut batch),
        }
        encode_describe_portal(&mut batch);
        encode_execute_all(&mut batch);
        frontend::encode_empty(frontend::tag::SYNC, &mut batch);
        Ok((batch, visible, (limit, offset)))
    }

    /// The visible column count of a merged query, and its LIMIT and
    /// OFFSET values (from the Bind when they are parameters).
    pub(super) async fn merge_shape(
        &mut self,
        plan: &MergePlan,
        bind: Option<&Bind<'_>>,
    ) -> Result<(usize, Option<u64>, u64), PgError> {
        for (name, tables) in &plan.group_aliases {
            for (schema, table) in tables {
                if self
                    .table_columns(schema.as_deref(), table)
                    .await?
                    .iter()
                    .any(|c| c == name)
                {
                    return Err(PgError::error(
                        "0A000",
                        format!("not supported across shards: GROUP BY {name}, both an output column's name and a column of {table} (Postgres groups by the column)"),
                    ));
                }
            }
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
        let limit = row_count(plan.limit.as_ref(), bind, "LIMIT")?;
        let offset = row_count(plan.offset.as_ref(), bind, "OFFSET")?.unwrap_or(0);
        Ok((visible, limit, offset))
    }

    /// `EXPLAIN` of a statement over several shards: the plan's own lines,
    /// as Postgres sends an EXPLAIN result (one text column `QUERY PLAN`).
    fn answer_explain(&mut self, shards: &[usize], plan: &MergePlan, req: &MergeRequest<'_>) {
        if req.bind.is_some() {
            backend::empty(btag::BIND_COMPLETE, &mut self.cout);
        }
        if req.describe {
            backend::row_description(&[("QUERY PLAN", 25)], &mut self.cout);
        }
        for line in plan.describe(shards) {
            backend::data_row(&[Some(line.as_str())], &mut self.cout);
        }
        backend::command_complete("EXPLAIN", &mut self.cout);
        backend::ready_for_query(self.client_status(), &mut self.cout);
    }

    /// Tells the client the merge cannot run (nothing was sent to a shard).
    fn merge_refused(&mut self, e: PgError) -> Result<(), SessionError> {
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
                        e.encode(&mut self.cout);
                        run.failed = true;
                        cancel_parts(parts, self.vtx.is_none(), &mut run.to_cancel);
                    }
                    continue;
                }
            } else if let Some(i) = run.pick() {
                let head = run.streams[i].head.take().expect("picked");
                if let Err(e) = run.emit(head, &mut self.cout) {
                    run.fail_with(e, parts, &mut self.cout, self.vtx.is_none());
                } else if run.limit_reached() {
                    cancel_parts(parts, self.vtx.is_none(), &mut run.to_cancel);
                    if let Err(e) = run.end_rows(&mut self.cout) {
                        run.fail_with(e, parts, &mut self.cout, false);
                    }
                    run.stopping = true;
                }
                if self.cout.len() >= FLUSH_AT {
                    self.convert_to_copy(run);
                    self.flush_client().await?;
                }
                continue;
            } else if run.streams.iter().all(|s| s.complete && s.head.is_none()) {
                if let Err(e) = run.end_rows(&mut self.cout) {
                    run.fail_with(e, parts, &mut self.cout, self.vtx.is_none());
                }
                run.stopping = true;
                if parts.iter().all(|p| p.done.is_some()) {
                    return Ok(());
                }
            }
            deliver_cancels(std::mem::take(&mut run.to_cancel)).await;
            self.convert_to_copy(run);
            self.flush_client().await?;
            let streams = &run.streams;
            let draining = run.failed || run.stopping;
            let wanted =
                |i: usize, p: &Part| p.done.is_none() && (draining || streams[i].head.is_none());
            let Ok((i, read)) = read_any(parts, wanted, &self.client, &mut run.timer).await else {
                super::fanout::abandon(parts);
                return Err(super::fanout::client_left());
            };
            match read {
                Ok(0) | Err(_) => {
                    let p = &mut parts[i];
                    p.b.conn.broken = true;
                    p.b.conn.read_buf.clear();
                    p.done = Some(b'E');
                    if !run.failed && !run.stopping {
                        PgError::error(
                            "08006",
                            format!("connection to server {} was lost", p.b.conn.addr),
                        )
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

/// A merge in progress.
pub(super) struct Run {
    pub(super) plan: Arc<MergePlan>,
    pub(super) visible: usize,
    pub(super) formats: Vec<i16>,
    /// LIMIT, or the Execute's row limit if smaller.
    pub(super) limit: Option<u64>,
    /// The Execute's row limit.
    pub(super) max_rows: Option<u64>,
    pub(super) offset: u64,
    pub(super) extended: bool,
    pub(super) describe: bool,
    pub(super) collation: Option<String>,
    pub(super) streams: Vec<Stream>,
    pub(super) columns: Option<Columns>,
    /// BindComplete and RowDescription went to the client.
    pub(super) announced: bool,
    /// Rows sent to the client.
    pub(super) sent: u64,
    /// Rows skipped for OFFSET.
    pub(super) skipped: u64,
    /// LIMIT reached or rows ended: the rest is drained.
    pub(super) stopping: bool,
    /// An error went to the client: the rest is drained.
    pub(super) failed: bool,
    /// Cancel requests to deliver before reading on.
    pub(super) to_cancel: Vec<CancelHandle>,
    pub(super) group: Option<Group>,
    /// `DISTINCT ON`: passes the first row of each distinct key.
    pub(super) first_per_key: Option<FirstPerKey>,
    pub(super) sorted_groups: Vec<(Vec<Key>, BytesMut)>,
    /// Bytes of `sorted_groups` (estimated), bounded by `memory_limit`.
    held: usize,
    /// `proxy.merge_memory_limit`.
    pub(super) memory_limit: usize,
    /// `proxy.query_timeout` of this statement.
    pub(super) timer: super::fanout::QueryTimer,
    /// `COPY (query) TO`: how the client's rows become COPY data.
    pub(super) copy: Option<shardgate_router::CopyRowsOut>,
    /// Window functions computed at the proxy (see `merge/window.rs`).
    window: Option<shardgate_merge::ops::Window<BytesMut>>,
    /// Where in the client buffer the merge's unconverted output starts.
    pub(super) copy_mark: usize,
}

impl Run {
    /// A merge of `plan` over `streams` shard streams with `visible`
    /// columns for the client; no LIMIT, OFFSET or row limit yet.
    pub(super) fn new(
        plan: Arc<MergePlan>,
        visible: usize,
        streams: usize,
        collation: Option<String>,
    ) -> Run {
        let first_per_key = match &plan.mode {
            MergeMode::Sorted { distinct_on, .. } if *distinct_on > 0 => {
                Some(FirstPerKey::new(*distinct_on))
            }
            _ => None,
        };
        Run {
            plan,
            visible,
            formats: Vec::new(),
            offset: 0,
            limit: None,
            max_rows: None,
            extended: false,
            describe: true,
            collation,
            streams: (0..streams)
                .map(|_| Stream {
                    desc: None,
                    head: None,
                    complete: false,
                    error: None,
                })
                .collect(),
            columns: None,
            announced: false,
            sent: 0,
            skipped: 0,
            stopping: false,
            failed: false,
            to_cancel: Vec::new(),
            group: None,
            first_per_key,
            sorted_groups: Vec::new(),
            held: 0,
            memory_limit: crate::config::ProxyConfig::default().merge_memory_limit,
            timer: super::fanout::QueryTimer::off(),
            copy: None,
            copy_mark: 0,
            window: None,
        }
    }

    /// Handles part `i`'s buffered messages until it yields a row (kept as
    /// its head), needs more bytes, or is done.
    fn pump(&mut self, part: &mut Part, i: usize, cout: &mut BytesMut) {
        let draining = self.failed || self.stopping;
        loop {
            if part.done.is_some() || (!draining && self.streams[i].head.is_some()) {
                return;
            }
            match next_step(part, cout) {
                Step::NeedData => return,
                Step::Row(row) => {
                    if draining {
                        continue;
                    }
                    match self.head_of(row) {
                        Ok(h) => self.streams[i].head = Some(h),
                        Err(e) => {
                            self.streams[i].error = Some(encode_error(&e));
                        }
                    }
                }
                Step::Described(d) => {
                    if self.columns.is_none() {
                        match parse_row_description(&d) {
                            Ok((types, _)) => {
                                self.columns = Some(Columns {
                                    types,
                                    exprs: Vec::new(),
                                })
                            }
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
                Step::Complete => self.streams[i].complete = true,
                Step::Ready(status) => {
                    part.b.ex.status = status;
                    part.done = Some(status);
                    self.streams[i].complete = true;
                }
                Step::Error(e) => {
                    self.streams[i].complete = true;
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
        for s in &mut self.streams {
            s.head = None;
        }
        cancel_parts(parts, cancel, &mut self.to_cancel);
    }

    fn fail_with(&mut self, e: PgError, parts: &[Part], cout: &mut BytesMut, cancel: bool) {
        e.encode(cout);
        self.failed = true;
        for s in &mut self.streams {
            s.head = None;
        }
        cancel_parts(parts, cancel, &mut self.to_cancel);
    }

    /// All shards described the result: checks they agree and sends the
    /// client's BindComplete and RowDescription.
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
            let text_key = key_columns(&self.plan)
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
        if self.extended {
            backend::empty(btag::BIND_COMPLETE, cout);
        }
        if self.describe {
            cout.extend_from_slice(&client_desc);
        }
        self.check_window_types(&types)?;
        let exprs = match &self.plan.mode {
            MergeMode::Grouped(g) => bind_exprs(g, &types, visible)?,
            _ => Vec::new(),
        };
        self.columns = Some(Columns { types, exprs });
        self.announced = true;
        Ok(())
    }

    /// The next head to emit, when the order is decided.
    pub(super) fn pick(&self) -> Option<usize> {
        let keys: &[SortKey] = match &self.plan.mode {
            MergeMode::Sorted { keys, .. } => keys,
            MergeMode::Grouped(g) => &g.merge_keys,
            MergeMode::Concat => &[],
        };
        if keys.is_empty() && !matches!(self.plan.mode, MergeMode::Grouped(_)) {
            return self.streams.iter().position(|s| s.head.is_some());
        }
        // Every stream must show its head (or be finished) before choosing.
        if self.streams.iter().any(|s| s.head.is_none() && !s.complete) {
            return None;
        }
        let mut best: Option<usize> = None;
        for (i, s) in self.streams.iter().enumerate() {
            let Some(h) = &s.head else { continue };
            best = match best {
                None => Some(i),
                Some(b) => {
                    let bh = self.streams[b].head.as_ref().expect("head");
                    if compare_keys(&h.keys, &bh.keys, keys) == Ordering::Less {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
            };
        }
        best
    }

    /// Decodes a row's merge keys.
    pub(super) fn head_of(&self, row: BytesMut) -> Result<Head, PgError> {
        let keys: &[SortKey] = match &self.plan.mode {
            MergeMode::Sorted { keys, .. } => keys,
            MergeMode::Grouped(g) => &g.merge_keys,
            MergeMode::Concat => &[],
        };
        if keys.is_empty() {
            return Ok(Head {
                row,
                keys: Vec::new(),
            });
        }
        let columns = self.columns.as_ref().ok_or_else(|| {
            PgError::error(
                "08P01",
                "shardgate: a shard sent rows before describing them",
            )
        })?;
        let fields = row_fields(&row)?;
        // With `SELECT *` the plan counted only the other visible columns.
        let shift = match self.plan.visible {
            Some(_) => 0,
            None => columns
                .types
                .len()
                .saturating_sub(self.plan.hidden + self.plan.visible_fixed),
        };
        let keys = keys
            .iter()
            .map(|k| key_at(&row, &fields, columns, k.column + shift))
            .collect::<Result<_, _>>()?;
        Ok(Head { row, keys })
    }

    /// The Execute's row limit cut the result short.
    pub(super) fn suspended(&self) -> bool {
        !self.failed && self.max_rows.is_some_and(|m| self.sent >= m)
    }

    pub(super) fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|l| self.sent >= l)
    }

    /// Emits one merged row (sorted/concat) or adds it to its group.
    pub(super) fn emit(&mut self, head: Head, cout: &mut BytesMut) -> Result<(), PgError> {
        let plan = self.plan.clone();
        match &plan.mode {
            MergeMode::Grouped(g) => self.add_to_group(g, head, cout),
            _ => {
                if let Some(w) = &plan.window {
                    return self.window_row(w, head, cout);
                }
                if let Some(f) = &mut self.first_per_key {
                    if !f.admit(&head.keys) {
                        return Ok(());
                    }
                }
                self.output(cout, |visible, out| strip_hidden(&head.row, visible, out))
            }
        }
    }

    /// Applies OFFSET and LIMIT to one output row built by `build`.
    fn output(
        &mut self,
        cout: &mut BytesMut,
        build: impl FnOnce(usize, &mut BytesMut) -> Result<(), PgError>,
    ) -> Result<(), PgError> {
        if self.limit_reached() {
            return Ok(());
        }
        if self.skipped < self.offset {
            self.skipped += 1;
            return Ok(());
        }
        build(self.visible, cout)?;
        self.sent += 1;
        Ok(())
    }

    fn add_to_group(
        &mut self,
        g: &GroupPlan,
        head: Head,
        cout: &mut BytesMut,
    ) -> Result<(), PgError> {
        let fields = row_fields(&head.row)?;
        let group_keys: Vec<Key> = {
            let columns = self.columns.as_ref().expect("described");
            g.group_columns
                .iter()
                .map(|c| key_at(&head.row, &fields, columns, *c))
                .collect::<Result<_, _>>()?
        };
        let same = self.group.as_ref().is_some_and(|cur| {
            cur.keys.len() == group_keys.len()
                && cur.keys.iter().zip(&group_keys).all(|(a, b)| a.group_eq(b))
        });
        if !same {
            if let Some(done) = self.group.take() {
                self.finish_group(g, done, cout)?;
            }
            self.group = Some(Group {
                first: head.row.clone(),
                keys: group_keys,
                aggs: self.new_aggs(g)?,
                last_distinct: None,
                counted: vec![false; g.aggregates.len()],
            });
        }
        // A DISTINCT aggregate's value repeated on several shards arrives
        // in adjacent rows of the group: only the first one counts.
        let distinct_value = match g.distinct_value {
            Some(c) => {
                let columns = self.columns.as_ref().expect("described");
                Some(key_at(&head.row, &fields, columns, c)?)
            }
            None => None,
        };
        let cur = self.group.as_mut().expect("group");
        let repeated = match (&distinct_value, &cur.last_distinct) {
            (Some(v), Some(last)) => v.group_eq(last),
            _ => false,
        };
        if distinct_value.is_some() {
            cur.last_distinct = distinct_value;
        }
        if !repeated {
            cur.counted.iter_mut().for_each(|c| *c = false);
        }
        for ((slot, state), counted) in g
            .aggregates
            .iter()
            .zip(cur.aggs.iter_mut())
            .zip(cur.counted.iter_mut())
        {
            if slot.distinct && *counted {
                continue;
            }
            let values: Vec<Option<&[u8]>> = slot
                .partials
                .iter()
                .map(|c| field(&head.row, &fields, *c))
                .collect();
            if slot.order.is_empty() {
                state.add(&values).map_err(merge_error)?;
            } else {
                let columns = self.columns.as_ref().expect("described");
                let keys = slot
                    .order
                    .iter()
                    .map(|k| key_at(&head.row, &fields, columns, k.column))
                    .collect::<Result<_, _>>()?;
                state.add_keyed(keys, &values).map_err(merge_error)?;
            }
            if slot.distinct {
                *counted = counts_a_value(slot.func, &values);
            }
        }
        self.check_group_memory()
    }

    /// The values one group's ordered-set aggregates hold stay within
    /// `memory_limit` (with the groups held for the final sort).
    fn check_group_memory(&self) -> Result<(), PgError> {
        let held: usize = self
            .group
            .as_ref()
            .map_or(0, |cur| cur.aggs.iter().map(AggState::held_bytes).sum());
        if held.saturating_add(self.held) > self.memory_limit {
            return Err(PgError::error(
                "53400",
                format!(
                    "shardgate: the values of one group's ordered-set aggregate in this cross-shard query need more than merge_memory_limit ({} bytes) of proxy memory",
                    self.memory_limit
                ),
            )
            .with_hint("Restrict the query to one shard, group it more finely, or raise proxy.merge_memory_limit in proxy.toml."));
        }
        Ok(())
    }

    /// The aggregates of a new group, typed from the shards' columns.
    fn new_aggs(&self, g: &GroupPlan) -> Result<Vec<AggState>, PgError> {
        let columns = self.columns.as_ref().ok_or_else(|| {
            PgError::error("XX000", "shardgate: rows of a merge before its columns")
        })?;
        let oid_of = |c: usize| columns.types.get(c).copied().unwrap_or(0);
        g.aggregates
            .iter()
            .map(|slot| {
                let oids: Vec<u32> = slot.partials.iter().map(|c| oid_of(*c)).collect();
                if slot.distinct && matches!(slot.func, AggKind::Sum | AggKind::Avg) {
                    // Equal values of other types may differ (1.0 and 1.00,
                    // 0 and -0): which one a shard kept would show.
                    use shardgate_merge::oid;
                    let arg = g.distinct_value.map_or(0, oid_of);
                    if !matches!(arg, oid::INT2 | oid::INT4 | oid::INT8) {
                        return Err(PgError::error(
                            "0A000",
                            "shardgate: sum/avg(DISTINCT ...) of a type other than smallint, integer or bigint across shards is not supported",
                        ));
                    }
                }
                let state = AggState::new(slot.func, output_oid(slot.func, &oids), &oids);
                match &slot.order[..] {
                    [] => state,
                    keys => state.and_then(|s| {
                        s.ordered(keys.iter().map(|k| (k.desc, k.nulls_first)).collect())
                    }),
                }
                .map_err(merge_error)
            })
            .collect()
    }

    /// A group is complete: HAVING, then output or keep for the final sort.
    fn finish_group(
        &mut self,
        g: &GroupPlan,
        group: Group,
        cout: &mut BytesMut,
    ) -> Result<(), PgError> {
        let columns = self.columns.as_ref().expect("described");
        let fields = row_fields(&group.first)?;
        let input = |v: GroupValue| -> Result<Key, PgError> {
            match v {
                GroupValue::Column(c) => key_at(&group.first, &fields, columns, c),
                GroupValue::Aggregate(s) => group.aggs[s].key().map_err(merge_error),
                GroupValue::Expr(_) => Err(PgError::error("XX000", "shardgate: nested expression")),
            }
        };
        let value = |v: GroupValue| -> Result<Key, PgError> {
            let GroupValue::Expr(n) = v else {
                return input(v);
            };
            let values = g.exprs[n]
                .inputs
                .iter()
                .map(|i| input(*i))
                .collect::<Result<Vec<_>, _>>()?;
            let bound = columns.exprs.get(n).ok_or_else(|| {
                PgError::error("XX000", "shardgate: an expression before its types")
            })?;
            bound.eval(&values).map_err(merge_error)
        };
        if let Some(h) = g.having {
            match value(GroupValue::Expr(h))? {
                Key::Bool(true) => {}
                Key::Bool(false) | Key::Null => return Ok(()),
                _ => {
                    return Err(PgError::error(
                        "42804",
                        "argument of HAVING must be type boolean",
                    ))
                }
            }
        }
        let mut row = BytesMut::new();
        let visible = self.visible;
        row.put_u8(btag::DATA_ROW);
        row.put_i32(0);
        row.put_i16(visible as i16);
        for (j, out) in g.outputs.iter().enumerate().take(visible) {
            match out {
                OutputColumn::Group => match field(&group.first, &fields, j) {
                    Some(v) => {
                        row.put_i32(v.len() as i32);
                        row.extend_from_slice(v);
                    }
                    None => row.put_i32(-1),
                },
                OutputColumn::Aggregate(s) => {
                    let v = group.aggs[*s]
                        .finish(format_of(&self.formats, j))
                        .map_err(merge_error)?;
                    put_field(&mut row, v.as_deref());
                }
                OutputColumn::Expr(n) => {
                    let v = value(GroupValue::Expr(*n))?;
                    let oid = columns.types.get(j).copied().unwrap_or(0);
                    let v =
                        encode_value(&v, oid, format_of(&self.formats, j)).map_err(merge_error)?;
                    put_field(&mut row, v.as_deref());
                }
            }
        }
        backend::patch_len(&mut row, 0);
        // INTERSECT ALL / EXCEPT ALL send a row as often as it survives.
        let copies = match g.repeat {
            None => 1,
            Some(n) => match value(GroupValue::Expr(n))? {
                Key::Int(c) => c.max(0) as u64,
                _ => 0,
            },
        };
        if g.final_sort.is_empty() {
            for _ in 0..copies {
                if self.limit_reached() {
                    break;
                }
                self.output(cout, |_, out| {
                    out.extend_from_slice(&row);
                    Ok(())
                })?;
            }
            return Ok(());
        }
        let keys: Vec<Key> = g
            .final_sort
            .iter()
            .map(|k| value(k.value))
            .collect::<Result<_, _>>()?;
        for _ in 0..copies {
            self.hold_group(keys.clone(), row.clone())?;
        }
        Ok(())
    }

    /// Keeps a group for the final sort: within `memory_limit`, and with a
    /// LIMIT only the best `limit + offset` (pruned in batches).
    fn hold_group(&mut self, keys: Vec<Key>, row: BytesMut) -> Result<(), PgError> {
        self.held += group_bytes(&keys, &row);
        self.sorted_groups.push((keys, row));
        let MergeMode::Grouped(g) = &self.plan.mode else {
            return Ok(());
        };
        if let Some(keep) = self.limit.map(|l| l.saturating_add(self.offset) as usize) {
            if self.sorted_groups.len() >= keep.saturating_mul(2).max(1024) {
                let order = &g.final_sort;
                self.sorted_groups
                    .sort_by(|a, b| compare_final(&a.0, &b.0, order));
                self.sorted_groups.truncate(keep);
                self.held = self
                    .sorted_groups
                    .iter()
                    .map(|(k, r)| group_bytes(k, r))
                    .sum();
            }
        }
        if self.held > self.memory_limit {
            return Err(PgError::error(
                "53400",
                format!(
                    "shardgate: sorting the groups of this cross-shard query needs more than merge_memory_limit ({} bytes) of proxy memory",
                    self.memory_limit
                ),
            )
            .with_hint("Add a LIMIT, restrict the query to one shard, or raise proxy.merge_memory_limit in proxy.toml."));
        }
        Ok(())
    }

    /// Every shard finished its rows: the last group, the final sort, and
    /// CommandComplete.
    pub(super) fn end_rows(&mut self, cout: &mut BytesMut) -> Result<(), PgError> {
        self.finish_window(cout)?;
        let plan = self.plan.clone();
        if let MergeMode::Grouped(g) = &plan.mode {
            if let Some(done) = self.group.take() {
                self.finish_group(g, done, cout)?;
            } else if g.single_row && (g.distinct_value.is_some() || g.gathered) && self.sent == 0 {
                // Grouped by the DISTINCT argument (or the ORDER BY keys of a
                // gathered aggregate), the shards sent no row
                // over no rows; the one row holds only aggregates (the plan
                // checked), so its other fields are NULL.
                let n = self.columns.as_ref().map_or(0, |c| c.types.len());
                let mut first = BytesMut::new();
                backend::data_row::<&str>(&vec![None; n], &mut first);
                let empty = Group {
                    first,
                    keys: Vec::new(),
                    aggs: self.new_aggs(g)?,
                    last_distinct: None,
                    counted: vec![false; g.aggregates.len()],
                };
                self.finish_group(g, empty, cout)?;
            }
            if !g.final_sort.is_empty() {
                let order = &g.final_sort;
                let mut groups = std::mem::take(&mut self.sorted_groups);
                groups.sort_by(|a, b| compare_final(&a.0, &b.0, order));
                for (_, row) in groups {
                    self.output(cout, |_, out| {
                        out.extend_from_slice(&row);
                        Ok(())
                    })?;
                }
            }
        }
        if self.suspended() {
            // As Postgres: the Execute's row limit reached, the portal is
            // suspended (a later Execute of it is refused).
            backend::empty(btag::PORTAL_SUSPENDED, cout);
        } else {
            backend::command_complete(&format!("SELECT {}", self.sent), cout);
        }
        Ok(())
    }
}

/// Columns the merge compares (sort, group and final-order keys).
fn key_columns(plan: &MergePlan) -> Vec<usize> {
    match &plan.mode {
        MergeMode::Concat => Vec::new(),
        MergeMode::Sorted { keys, .. } => keys
            .iter()
            .map(|k| k.column)
            // min/max OVER (...) compare their arguments.
            .chain(
                plan.window
                    .iter()
                    .flat_map(|w| w.calls.iter().filter_map(|c| c.key)),
            )
            .collect(),
        MergeMode::Grouped(g) => g
            .merge_keys
            .iter()
            .map(|k| k.column)
            .chain(g.group_columns.iter().copied())
            .chain(g.final_sort.iter().filter_map(|k| match k.value {
                GroupValue::Column(c) => Some(c),
                GroupValue::Aggregate(_) | GroupValue::Expr(_) => None,
            }))
            // Expressions compare and order their text inputs.
            .chain(g.exprs.iter().flat_map(|x| {
                x.inputs
                    .iter()
                    .filter_map(|i| match i {
                        GroupValue::Column(c) => Some(*c),
                        _ => None,
                    })
                    .chain(x.probes.iter().copied())
            }))
            .chain(
                g.aggregates
                    .iter()
                    .filter(|a| matches!(a.func, AggKind::Min | AggKind::Max))
                    .map(|a| a.partials[0]),
            )
            // The ORDER BY keys inside gathered aggregates.
            .chain(
                g.aggregates
                    .iter()
                    .flat_map(|a| a.order.iter().map(|k| k.column)),
            )
            // A string_agg compared in HAVING or ORDER BY (a hidden partial).
            .chain(
                g.aggregates
                    .iter()
                    .filter(|a| a.func == AggKind::StringAgg && a.partials[0] >= plan.visible_fixed)
                    .map(|a| a.partials[0]),
            )
            .collect(),
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
            btag::ERROR_RESPONSE => return Step::Error(msg),
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

fn merge_error(e: MergeError) -> PgError {
    PgError::error(e.sqlstate(), e.to_string())
}

/// Format code of visible column `j` under the client's codes.
pub(super) fn format_of(codes: &[i16], j: usize) -> i16 {
    match codes {
        [] => 0,
        [one] => *one,
        many => many.get(j).copied().unwrap_or(0),
    }
}

/// The value of a LIMIT or OFFSET.
fn row_count(
    c: Option<&RowCount>,
    bind: Option<&Bind<'_>>,
    what: &str,
) -> Result<Option<u64>, PgError> {
    let v: i64 = match c {
        None => return Ok(None),
        Some(RowCount::Literal(n)) => return Ok(Some(*n)),
        Some(RowCount::Param(i)) => {
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
    let n = i16::from_be_bytes(msg.get(5..7).ok_or(())?.try_into().map_err(|_| ())?);
    let mut pos = 7;
    let mut types = Vec::with_capacity(n.max(0) as usize);
    let mut ends = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let nul = memchr_zero(msg.get(pos..).ok_or(())?).ok_or(())?;
        pos += nul + 1;
        let rest = msg.get(pos..pos + 18).ok_or(())?;
        types.push(u32::from_be_bytes(rest[6..10].try_into().map_err(|_| ())?));
        pos += 18;
        ends.push(pos);
    }
    Ok((types, ends))
}

fn memchr_zero(b: &[u8]) -> Option<usize> {
    b.iter().position(|c| *c == 0)
}

/// Byte ranges of a DataRow's fields (`None` = NULL).
fn row_fields(row: &[u8]) -> Result<Vec<Option<(usize, usize)>>, PgError> {
    let bad = || PgError::error("08P01", "shardgate: a shard sent a malformed DataRow");
    let n = i16::from_be_bytes(
        row.get(5..7)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let mut pos = 7;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(
            row.get(pos..pos + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = pos + len as usize;
            if end > row.len() {
                return Err(bad());
            }
            out.push(Some((pos, end)));
            pos = end;
        }
    }
    Ok(out)
}

fn field<'r>(row: &'r [u8], fields: &[Option<(usize, usize)>], c: usize) -> Option<&'r [u8]> {
    fields.get(c).copied().flatten().map(|(a, b)| &row[a..b])
}

fn key_at(
    row: &[u8],
    fields: &[Option<(usize, usize)>],
    columns: &Columns,
    c: usize,
) -> Result<Key, PgError> {
    let oid = columns.types.get(c).copied().unwrap_or(0);
    decode_key(oid, field(row, fields, c)).map_err(merge_error)
}

/// Copies a DataRow without its hidden trailing columns.
fn strip_hidden(row: &[u8], visible: usize, out: &mut BytesMut) -> Result<(), PgError> {
    let n = i16::from_be_bytes([row[5], row[6]]) as usize;
    if n <= visible {
        out.extend_from_slice(row);
        return Ok(());
    }
    let fields = row_fields(row)?;
    let mut end = 7;
    for f in &fields[..visible] {
        end = match f {
            Some((_, e)) => *e,
            None => end + 4,
        };
    }
    let start = out.len();
    out.put_u8(btag::DATA_ROW);
    out.put_i32(0);
    out.put_i16(visible as i16);
    out.extend_from_slice(&row[7..end]);
    backend::patch_len(out, start);
    Ok(())
}

fn compare_keys(a: &[Key], b: &[Key], keys: &[SortKey]) -> Ordering {
    for ((x, y), k) in a.iter().zip(b).zip(keys) {
        match x.cmp_sort(y, k.desc, k.nulls_first) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

fn compare_final(a: &[Key], b: &[Key], keys: &[FinalKey]) -> Ordering {
    for ((x, y), k) in a.iter().zip(b).zip(keys) {
        match x.cmp_sort(y, k.desc, k.nulls_first) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

/// Whether a DISTINCT aggregate's partials of one row (one value of its
/// argument) hold that value: count 1, a sum, an average over 1 (not a
/// NULL argument or one FILTER left out, which add nothing).
fn counts_a_value(f: AggKind, partials: &[Option<&[u8]>]) -> bool {
    let nonzero = |v: Option<&[u8]>| v.is_some_and(|b| b.iter().any(|x| *x != 0));
    match f {
        AggKind::Count => nonzero(partials.first().copied().flatten()),
        AggKind::Avg => nonzero(partials.get(1).copied().flatten()),
        _ => partials.first().is_some_and(|v| v.is_some()),
    }
}

/// The type Postgres gives the aggregate's result, from its partials' types.
fn output_oid(f: AggKind, partials: &[u32]) -> u32 {
    use shardgate_merge::oid;
    match f {
        AggKind::Count => oid::INT8,
        AggKind::BoolAnd | AggKind::BoolOr => oid::BOOL,
        AggKind::Avg => partials.get(2).copied().unwrap_or(oid::NUMERIC),
        AggKind::Sum | AggKind::Min | AggKind::Max => partials.first().copied().unwrap_or(0),
        AggKind::StringAgg | AggKind::ArrayAgg | AggKind::JsonAgg => {
            partials.first().copied().unwrap_or(0)
        }
        AggKind::Statistic(_) => shardgate_merge::statistic_output_oid(partials),
        AggKind::Bits(_) => partials.first().copied().unwrap_or(0),
        AggKind::Regression(r) => r.output_oid(),
        AggKind::OrderedSet(shardgate_merge::OrderedSet::PercentileCont) => oid::FLOAT8,
        AggKind::OrderedSet(_) => partials.get(1).copied().unwrap_or(0),
    }
}

/// Estimated bytes one kept group takes.
fn group_bytes(keys: &[Key], row: &BytesMut) -> usize {
    let heap: usize = keys
        .iter()
        .map(|k| match k {
            Key::Bytes(b) => b.len(),
            Key::Numeric(_) => 32,
            _ => 0,
        })
        .sum();
    row.capacity() + heap + std::mem::size_of_val(keys) + 64
}

/// Appends one DataRow field (`None`: NULL).
fn put_field(row: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            row.put_i32(v.len() as i32);
            row.extend_from_slice(v);
        }
        None => row.put_i32(-1),
    }
}

/// Types the plan's expressions with the shards' columns; an output
/// expression must be one the proxy can encode as the column's type.
fn bind_exprs(g: &GroupPlan, types: &[u32], visible: usize) -> Result<Vec<Bound>, PgError> {
    let oid_of = |c: usize| types.get(c).copied().unwrap_or(0);
    let input_oid = |v: &GroupValue| match v {
        GroupValue::Column(c) => oid_of(*c),
        GroupValue::Aggregate(s) => {
            let slot = &g.aggregates[*s];
            let oids: Vec<u32> = slot.partials.iter().map(|c| oid_of(*c)).collect();
            output_oid(slot.func, &oids)
        }
        GroupValue::Expr(_) => 0,
    };
    let bound = g
        .exprs
        .iter()
        .map(|x| {
            let inputs: Vec<u32> = x.inputs.iter().map(input_oid).collect();
            let probes: Vec<u32> = x.probes.iter().map(|c| oid_of(*c)).collect();
            x.tree.bind(&inputs, &probes).map_err(merge_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (j, out) in g.outputs.iter().enumerate().take(visible) {
        if let OutputColumn::Expr(n) = out {
            let (want, got) = (oid_of(j), bound[*n].type_oid());
            let text = |o: u32| matches!(o, 25 | 1043);
            if !encodable(want) || !(want == got || (text(want) && text(got))) {
                return Err(PgError::error(
                    "0A000",
                    format!("not supported across shards: an expression over aggregates of type oid {want} (column {})", j + 1),
                ));
            }
        }
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_merge::oid;
    use shardgate_router::{ShardedTable, TableLookup};

    struct Tables;

    impl TableLookup for Tables {
        fn sharded(&self, _schema: Option<&str>, name: &str) -> Option<ShardedTable> {
            (name == "t").then(|| ShardedTable {
                column: "id".into(),
                ranged: false,
            })
        }
        fn is_reference(&self, _schema: Option<&str>, _name: &str) -> bool {
            false
        }
    }

    fn run(sql: &str, types: Vec<u32>) -> Run {
        let plan = shardgate_router::merge_plan::plan_merge(sql, &Tables).expect(sql);
        let visible = plan.visible.expect("visible");
        let mut run = Run::new(Arc::new(plan), visible, 2, None);
        let exprs = match &run.plan.mode {
            MergeMode::Grouped(g) => bind_exprs(g, &types, visible).expect("typed"),
            _ => Vec::new(),
        };
        run.columns = Some(Columns { types, exprs });
        run
    }

    /// A DataRow of binary int8 (`Some`) and NULL (`None`) fields, the last
    /// one an int4.
    fn row(values: &[Option<i64>]) -> Head {
        let mut r = BytesMut::new();
        r.put_u8(btag::DATA_ROW);
        r.put_i32(0);
        r.put_i16(values.len() as i16);
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) if i + 1 == values.len() => {
                    r.put_i32(4);
                    r.put_i32(*v as i32);
                }
                Some(v) => {
                    r.put_i32(8);
                    r.put_i64(*v);
                }
                None => r.put_i32(-1),
            }
        }
        backend::patch_len(&mut r, 0);
        Head {
            row: r,
            keys: Vec::new(),
        }
    }

    /// The text fields of the DataRows in `out`.
    fn rows(out: &[u8]) -> Vec<Vec<Option<String>>> {
        let mut res = Vec::new();
        let mut pos = 0;
        while pos + 5 <= out.len() {
            let len = i32::from_be_bytes(out[pos + 1..pos + 5].try_into().unwrap()) as usize;
            let msg = &out[pos..pos + 1 + len];
            if msg[0] == btag::DATA_ROW {
                let fields = row_fields(msg).unwrap();
                res.push(
                    (0..fields.len())
                        .map(|c| {
                            field(msg, &fields, c).map(|v| String::from_utf8(v.to_vec()).unwrap())
                        })
                        .collect(),
                );
            }
            pos += 1 + len;
        }
        res
    }

    const DISTINCT: &str = "SELECT count(DISTINCT x), count(*), sum(DISTINCT x) FROM t";

    fn distinct_types() -> Vec<u32> {
        // Visible count, count, sum; hidden partials; the argument x (int4).
        vec![
            oid::INT8,
            oid::INT8,
            oid::INT8,
            oid::INT8,
            oid::INT8,
            oid::INT8,
            oid::INT4,
        ]
    }

    #[test]
    fn distinct_values_repeated_across_shards_count_once() {
        let mut run = run(DISTINCT, distinct_types());
        let mut out = BytesMut::new();
        // Rows in x order: x = 1 from two shards, 2 from one, NULL from two.
        for (cd, c, sd, x) in [
            (Some(1), 2, Some(1), Some(1)),
            (Some(1), 3, Some(1), Some(1)),
            (Some(1), 1, Some(2), Some(2)),
            (Some(0), 4, None, None),
            (Some(0), 1, None, None),
        ] {
            run.emit(row(&[cd, Some(c), sd, cd, Some(c), sd, x]), &mut out)
                .unwrap();
        }
        run.end_rows(&mut out).unwrap();
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(rows(&out), vec![vec![s("2"), s("11"), s("3")]]);
    }

    #[test]
    fn a_value_left_out_by_filter_on_one_shard_counts_from_another() {
        let sql = "SELECT count(DISTINCT x) FILTER (WHERE y), count(*), sum(DISTINCT x) FILTER (WHERE y) FROM t";
        let mut run = run(sql, distinct_types());
        let mut out = BytesMut::new();
        // x = 1: the first shard's rows all filtered out, the second's not.
        for (cd, c, sd, x) in [
            (Some(0), 2, None, Some(1)),
            (Some(1), 3, Some(1), Some(1)),
            (Some(1), 1, Some(2), Some(2)),
            (Some(1), 1, Some(2), Some(2)),
            (Some(0), 1, None, Some(3)),
        ] {
            run.emit(row(&[cd, Some(c), sd, cd, Some(c), sd, x]), &mut out)
                .unwrap();
        }
        run.end_rows(&mut out).unwrap();
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(rows(&out), vec![vec![s("2"), s("8"), s("3")]]);
    }

    #[test]
    fn distinct_aggregates_over_no_rows_give_one_row() {
        let mut run = run(DISTINCT, distinct_types());
        let mut out = BytesMut::new();
        run.end_rows(&mut out).unwrap();
        assert_eq!(
            rows(&out),
            vec![vec![Some("0".to_owned()), Some("0".to_owned()), None]]
        );
    }

    #[test]
    fn distinct_sums_of_non_integers_are_refused() {
        let mut types = distinct_types();
        types[2] = oid::NUMERIC;
        types[5] = oid::NUMERIC;
        types[6] = oid::NUMERIC;
        let mut run = run(DISTINCT, types);
        let mut out = BytesMut::new();
        let err = run.end_rows(&mut out).unwrap_err();
        assert_eq!(err.code.as_str(), "0A000");
    }
}
