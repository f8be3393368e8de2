//! Cursors over several shards, read a batch at a time: SQL cursors
//! (`DECLARE` / `FETCH n` / `MOVE` / `CLOSE`: psycopg's named cursors,
//! psql's `FETCH_COUNT`) and portals read with row-limited Executes
//! (pgjdbc's `setFetchSize`, asyncpg's cursors, pg-cursor).
//!
//! Each shard gets a cursor of its own for the shard's part of the query
//! (the merge plan's statement, with its hidden sort and group columns),
//! inside the transaction; the proxy fetches from the shards only as the
//! merge needs rows, a batch at a time, in the formats the client's fetch
//! asks for, and keeps at most one batch per shard. The client's fetches
//! take rows from the same streaming merge the one-shot queries use
//! (ORDER BY, LIMIT/OFFSET, aggregates and GROUP BY). Outside a
//! transaction (a portal read before the batch's Sync) the proxy opens
//! one for the batch, as Postgres keeps a portal until the Sync.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use shardgate_protocol::backend::{self, tag as btag, ErrorFields};
use shardgate_protocol::frontend::{self, tag, Bind};
use shardgate_protocol::{Header, PgError};
use shardgate_router::merge_plan::MergePlan;
use shardgate_router::FetchCount;

use super::fanout::{read_any, Part};
use super::merge::{encode_bind_no_params, merge_error, shard_formats, Run};
use super::{Session, SessionError, VirtualTx};
use crate::relay::MAX_SERVER_MESSAGE;
use crate::routing::Want;
use shardgate_merge::tree::Step as TreeStep;

/// Fewest and most rows asked of one shard at a time.
const BATCH_MIN: u64 = 64;
const BATCH_MAX: u64 = 1000;

/// What a client calls a cursor over several shards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum CursorKey {
    /// An SQL cursor (`DECLARE name`).
    Sql(String),
    /// A protocol portal (Bind's portal name).
    Portal(String),
}

/// A cursor over several shards.
pub(super) struct MergedCursor {
    run: Run,
    shards: Vec<usize>,
    /// The name of the cursor on each shard.
    shard_cursor: String,
    /// Rows fetched from each shard and not merged yet.
    rows: Vec<VecDeque<BytesMut>>,
    /// A shard's cursor has no more rows.
    exhausted: Vec<bool>,
    /// Merged rows not sent to the client yet.
    ready: VecDeque<BytesMut>,
    /// Every row was merged.
    finished: bool,
    /// The formats the client's rows come in when its fetch does not say
    /// (a portal's Bind; `[1]` for a BINARY cursor; text otherwise).
    formats: Vec<i16>,
    /// The client's RowDescription (in the formats of the first fetch).
    desc: Option<BytesMut>,
}

/// What to tell the client after rows.
pub(super) enum FetchEnd {
    /// `FETCH n` / `MOVE n`: CommandComplete with the count.
    Tag(&'static str),
    /// An Execute of a portal: PortalSuspended when the row limit cut it,
    /// else `SELECT n`.
    Portal,
}

impl Session {
    /// Opens a cursor over `shards` for `plan` (the client's Bind gives
    /// parameters and, for a portal, the result formats).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open_cursor(
        &mut self,
        key: CursorKey,
        plan: Arc<MergePlan>,
        shards: Vec<usize>,
        bind: Option<&Bind<'_>>,
        param_types: &[u8],
        formats: Vec<i16>,
        collation: Option<String>,
    ) -> Result<(), PgError> {
        self.close_cursor(&key).await;
        if self.vtx.is_none() {
            if matches!(key, CursorKey::Sql(_)) {
                return Err(PgError::error(
                    "25P01",
                    "DECLARE CURSOR can only be used in transaction blocks",
                ));
            }
            // A portal lives until the batch's Sync: so does this.
            self.vtx = Some(VirtualTx {
                begin: "BEGIN".into(),
                failed: false,
                read_only: false,
                savepoints: Vec::new(),
                implicit: true,
            });
        }
        let (visible, limit, offset) = self.merge_shape(&plan, bind, None).await?;
        self.next_cursor += 1;
        let shard_cursor = format!("sg_cursor_{}", self.next_cursor);
        let declare = format!(
            "DECLARE {shard_cursor} NO SCROLL CURSOR FOR {}",
            plan.shard_sql
        );
        let mut request = BytesMut::new();
        match bind {
            Some(b) => {
                frontend::encode_parse("", &declare, param_types, &mut request);
                b.encode_with_results("", &[], &mut request);
                encode_execute(&mut request);
                frontend::encode_empty(tag::SYNC, &mut request);
            }
            None => frontend::encode_query(&declare, &mut request),
        }
        let requests: Vec<(usize, BytesMut)> =
            shards.iter().map(|&s| (s, request.clone())).collect();
        self.run_on_shards(requests, |_, _, _| {}).await?;
        let mut run = Run::new(
            plan,
            visible,
            shards.len(),
            collation,
            self.snap.config.proxy.merge_memory_limit,
        );
        run.set_limit(limit, offset);
        let n = shards.len();
        self.merged_cursors.insert(
            key,
            MergedCursor {
                run,
                shards,
                shard_cursor,
                rows: (0..n).map(|_| VecDeque::new()).collect(),
                exhausted: vec![false; n],
                ready: VecDeque::new(),
                finished: false,
                formats,
                desc: None,
            },
        );
        Ok(())
    }

    /// Closes a cursor over several shards, if there is one by that name.
    pub(super) async fn close_cursor(&mut self, key: &CursorKey) -> bool {
        let Some(cur) = self.merged_cursors.remove(key) else {
            return false;
        };
        let mut close = BytesMut::new();
        frontend::encode_query(&format!("CLOSE {}", cur.shard_cursor), &mut close);
        let requests = cur.shards.iter().map(|&s| (s, close.clone())).collect();
        if let Err(e) = self.run_on_shards(requests, |_, _, _| {}).await {
            tracing::debug!(error = %e.message, "closing a cursor on the shards failed");
        }
        true
    }

    /// Whether `key` names a cursor over several shards.
    pub(super) fn has_cursor(&self, key: &CursorKey) -> bool {
        self.merged_cursors.contains_key(key)
    }

    /// The client's RowDescription of a cursor in `formats` (fetching its
    /// first rows if it was not described yet).
    pub(super) async fn describe_cursor(
        &mut self,
        key: &CursorKey,
        formats: Option<&[i16]>,
    ) -> Result<BytesMut, PgError> {
        let (mut cur, formats) = self.take_cursor(key, formats).await?;
        let result = self.ensure_described(&mut cur, &formats).await;
        let desc = cur.desc.clone();
        self.merged_cursors.insert(key.clone(), cur);
        result?;
        Ok(with_formats(&desc.unwrap_or_default(), &formats))
    }

    /// Fetches up to `count` rows (`None`: all) of a cursor, in `formats`
    /// (`None`: the cursor's), and writes them with the end `end` asks for;
    /// `describe`: a RowDescription first (a simple-protocol FETCH).
    /// `discard`: MOVE (rows counted, not sent).
    pub(super) async fn fetch_cursor(
        &mut self,
        key: &CursorKey,
        count: FetchCount,
        formats: Option<&[i16]>,
        describe: bool,
        discard: bool,
        end: FetchEnd,
    ) -> Result<(), PgError> {
        let limit = match count {
            FetchCount::Rows(n) => Some(n),
            FetchCount::All => None,
            FetchCount::NotForward => {
                return Err(PgError::error("55000", "cursor can only scan forward")
                    .with_hint("Cursors over several shards fetch forward only; declare the cursor on one shard for SCROLL."))
            }
        };
        let (mut cur, formats) = self.take_cursor(key, formats).await?;
        let mut out = BytesMut::new();
        let result = self
            .fetch_rows(&mut cur, limit, &formats, &mut out, discard)
            .await;
        let desc = cur.desc.clone();
        self.merged_cursors.insert(key.clone(), cur);
        let sent = result?;
        if describe {
            self.cout
                .extend_from_slice(&with_formats(&desc.unwrap_or_default(), &formats));
        }
        self.cout.extend_from_slice(&out);
        match end {
            FetchEnd::Tag(verb) => {
                backend::command_complete(&format!("{verb} {sent}"), &mut self.cout)
            }
            FetchEnd::Portal if limit.is_some_and(|n| n > 0 && sent == n) => {
                backend::empty(btag::PORTAL_SUSPENDED, &mut self.cout)
            }
            FetchEnd::Portal => {
                backend::command_complete(&format!("SELECT {sent}"), &mut self.cout)
            }
        }
        Ok(())
    }

    /// Takes a cursor out for a fetch (it goes back after), with the
    /// formats of the fetch (`None`: the cursor's); answers owed to the
    /// client before it are relayed first.
    async fn take_cursor(
        &mut self,
        key: &CursorKey,
        formats: Option<&[i16]>,
    ) -> Result<(MergedCursor, Vec<i16>), PgError> {
        self.drain_current().await.map_err(session_to_pg)?;
        let cur = self
            .merged_cursors
            .remove(key)
            .ok_or_else(|| missing(key))?;
        let formats = formats.map_or_else(|| cur.formats.clone(), <[i16]>::to_vec);
        Ok((cur, formats))
    }

    /// Merges rows until `limit` of them are ready (or all are), writing
    /// them to `out` unless `discard`; returns how many.
    async fn fetch_rows(
        &mut self,
        cur: &mut MergedCursor,
        limit: Option<u64>,
        formats: &[i16],
        out: &mut BytesMut,
        discard: bool,
    ) -> Result<u64, PgError> {
        cur.run.tree.set_formats(formats.to_vec());
        self.ensure_described(cur, formats).await?;
        let mut sent = 0u64;
        let mut scratch = BytesMut::new();
        loop {
            if limit.is_some_and(|n| sent >= n) {
                break;
            }
            if let Some(row) = cur.ready.pop_front() {
                if !discard {
                    out.extend_from_slice(&row);
                }
                sent += 1;
                continue;
            }
            if cur.finished {
                break;
            }
            // Heads from the rows each shard sent.
            for i in 0..cur.shards.len() {
                if cur.run.tree.is_empty(i) {
                    if let Some(row) = cur.rows[i].pop_front() {
                        cur.run.tree.push(i, row).map_err(merge_error)?;
                    }
                }
                if cur.exhausted[i] && cur.rows[i].is_empty() {
                    cur.run.tree.end(i);
                }
            }
            let need: Vec<usize> = (0..cur.shards.len())
                .filter(|&i| {
                    cur.run.tree.is_empty(i) && cur.rows[i].is_empty() && !cur.exhausted[i]
                })
                .collect();
            if !need.is_empty() {
                let batch = limit.unwrap_or(BATCH_MAX).clamp(BATCH_MIN, BATCH_MAX);
                self.refill(cur, &need, formats, batch).await?;
                continue;
            }
            scratch.clear();
            if cur.run.limit_reached() {
                cur.finished = true;
            } else {
                match cur.run.tree.step(&mut scratch).map_err(merge_error)? {
                    TreeStep::Moved => {}
                    TreeStep::Drained => {
                        cur.run.end_rows_unblocking(&mut scratch).await?;
                        cur.finished = true;
                    }
                    TreeStep::Waiting => {
                        // Every stream shows a head or ended after a refill.
                        return Err(PgError::error("XX000", "shardgate: cursor merge stalled"));
                    }
                }
            }
            split_rows(&scratch, &mut cur.ready);
        }
        Ok(sent)
    }

    /// Makes sure the shards described the cursor's rows (fetching a first
    /// batch if needed) and the client's RowDescription is known.
    async fn ensure_described(
        &mut self,
        cur: &mut MergedCursor,
        formats: &[i16],
    ) -> Result<(), PgError> {
        if cur.desc.is_some() {
            return Ok(());
        }
        let need: Vec<usize> = (0..cur.shards.len())
            .filter(|&i| cur.run.streams[i].desc.is_none())
            .collect();
        if !need.is_empty() {
            // FETCH FORWARD 0 describes the rows without taking any: the
            // client's fetches decide their formats.
            self.refill(cur, &need, formats, 0).await?;
        }
        let mut desc = BytesMut::new();
        cur.run.extended = false;
        cur.run.describe = true;
        cur.run.describe(&mut desc)?;
        cur.desc = Some(desc);
        Ok(())
    }

    /// Fetches the next `batch` rows from the shards `need` (indexes).
    async fn refill(
        &mut self,
        cur: &mut MergedCursor,
        need: &[usize],
        formats: &[i16],
        batch: u64,
    ) -> Result<(), PgError> {
        let shard_formats = shard_formats(&cur.run.plan, cur.run.visible, formats);
        let requests: Vec<(usize, BytesMut)> = need
            .iter()
            .map(|&i| {
                let mut m = BytesMut::new();
                let fetch = format!("FETCH FORWARD {batch} FROM {}", cur.shard_cursor);
                frontend::encode_parse("", &fetch, &[], &mut m);
                encode_bind_no_params(&shard_formats, &mut m);
                if cur.run.streams[i].desc.is_none() {
                    m.extend_from_slice(&[tag::DESCRIBE, 0, 0, 0, 6, b'P', 0]);
                }
                encode_execute(&mut m);
                frontend::encode_empty(tag::SYNC, &mut m);
                (cur.shards[i], m)
            })
            .collect();
        let shard_index: Vec<usize> = need.to_vec();
        let mut fetched = vec![0u64; need.len()];
        self.run_on_shards(requests, |j, t, msg| {
            let i = shard_index[j];
            match t {
                btag::DATA_ROW => {
                    fetched[j] += 1;
                    cur.rows[i].push_back(BytesMut::from(msg));
                }
                btag::ROW_DESCRIPTION => cur.run.streams[i].desc = Some(BytesMut::from(msg)),
                btag::NO_DATA => {
                    let mut d = BytesMut::new();
                    d.put_u8(btag::ROW_DESCRIPTION);
                    d.put_i32(6);
                    d.put_i16(0);
                    cur.run.streams[i].desc = Some(d);
                }
                _ => {}
            }
        })
        .await?;
        for (j, &i) in need.iter().enumerate() {
            if batch > 0 && fetched[j] < batch {
                cur.exhausted[i] = true;
            }
        }
        Ok(())
    }

    /// Sends each shard its request (ending in Sync or a simple Query) on
    /// the connection the transaction holds there, reads every answer up
    /// to ReadyForQuery, passing each message to `on_message(request index,
    /// tag, message)`; the first error (a shard's, or a lost connection)
    /// fails the client's transaction.
    async fn run_on_shards(
        &mut self,
        requests: Vec<(usize, BytesMut)>,
        mut on_message: impl FnMut(usize, u8, &[u8]),
    ) -> Result<(), PgError> {
        self.drain_current().await.map_err(session_to_pg)?;
        let mut parts: Vec<Part> = Vec::with_capacity(requests.len());
        let mut first_error: Option<PgError> = None;
        for (shard, request) in &requests {
            match self.part_for(*shard, Want::Primary).await {
                Ok((mut part, mut out)) => {
                    out.extend_from_slice(request);
                    if part.b.conn.stream.send_all(&out).await.is_err() {
                        part.b.conn.broken = true;
                        first_error.get_or_insert_with(|| lost(&part.b.conn.addr));
                    }
                    parts.push(part);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    break;
                }
            }
        }
        let mut done: Vec<bool> = parts.iter().map(|p| p.b.conn.broken).collect();
        let mut timer = super::fanout::QueryTimer::new(self.snap.config.proxy.query_timeout);
        loop {
            for (j, p) in parts.iter_mut().enumerate() {
                while !done[j] {
                    let buf = &mut p.b.conn.read_buf;
                    let Ok(Some(h)) = Header::complete(buf, MAX_SERVER_MESSAGE) else {
                        break;
                    };
                    let msg = buf.split_to(h.total);
                    match h.tag {
                        btag::READY_FOR_QUERY if p.hidden > 0 => p.hidden -= 1,
                        btag::READY_FOR_QUERY => {
                            p.b.ex.status = msg.get(5).copied().unwrap_or(b'E');
                            done[j] = true;
                        }
                        btag::ERROR_RESPONSE => {
                            let f = ErrorFields::decode(&msg[5..]).ok();
                            first_error.get_or_insert_with(|| match f {
                                Some(f) => PgError::error(&f.code, f.message),
                                None => PgError::error("XX000", "a shard failed"),
                            });
                        }
                        _ if p.hidden > 0 => {}
                        t => on_message(j, t, &msg),
                    }
                }
            }
            if done.iter().all(|d| *d) {
                break;
            }
            let wanted = |j: usize, _: &Part| !done[j];
            let Ok((j, read)) = read_any(&mut parts, wanted, &self.client, &mut timer).await else {
                super::fanout::abandon(&mut parts);
                return Err(PgError::fatal("08006", "the client closed the connection"));
            };
            if !matches!(read, Ok(n) if n > 0) {
                parts[j].b.conn.broken = true;
                done[j] = true;
                first_error.get_or_insert_with(|| lost(&parts[j].b.conn.addr));
            }
        }
        for p in parts {
            self.return_part(p.settle());
        }
        match first_error {
            Some(e) => {
                if let Some(v) = self.vtx.as_mut() {
                    v.failed = true;
                }
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// Where a DECLARE's query runs, when it runs on several shards: the
/// shards, the merge plan and the collation (as for a one-shot query).
pub(super) struct CursorTarget {
    pub shards: Vec<usize>,
    pub plan: Arc<MergePlan>,
    pub collation: Option<String>,
}

impl Session {
    /// The target of `DECLARE ... FOR query` when the query runs on
    /// several shards; `Ok(None)` when it runs on one (the cursor lives
    /// there). `params`: the Bind of an extended-protocol DECLARE.
    pub(super) async fn declare_target(
        &mut self,
        declare: &shardgate_router::Declare,
        sql: &str,
        params: Option<&Bind<'_>>,
    ) -> Result<Option<CursorTarget>, PgError> {
        let hints = shardgate_router::parse_hints(sql).map_err(super::hint_error)?;
        let plan = self.plan_of(&declare.query);
        let dest = self.dest_for(&declare.query, &plan, &hints, params).await?;
        let (shards, plan, collation) = match dest {
            super::sharded::Dest::Merge(shards, plan, collation) => (shards, plan, collation),
            super::sharded::Dest::Many(shards) => {
                let sharding = self.snap.sharding.as_ref().expect("sharded session");
                let lookup = super::sharded::MapLookup(&sharding.map);
                match self.snap.analyzer.merge_plan(&declare.query, &lookup) {
                    Ok(p) => (shards, p, None),
                    Err(e) => {
                        return Err(PgError::error(
                            "0A000",
                            format!("not supported across shards: {}", e.construct),
                        ))
                    }
                }
            }
            _ => return Ok(None),
        };
        if declare.scroll || declare.hold {
            return Err(PgError::error(
                "0A000",
                "not supported across shards: DECLARE ... SCROLL or WITH HOLD for a query over several shards",
            )
            .with_hint("Declare it NO SCROLL inside the transaction, or restrict the query to one shard."));
        }
        Ok(Some(CursorTarget {
            shards,
            plan,
            collation,
        }))
    }

    /// A simple query that is DECLARE over several shards, or FETCH, MOVE
    /// or CLOSE of such a cursor: answered here. `None`: not one of those.
    pub(super) async fn cursor_query(&mut self, sql: &str) -> Result<Option<()>, SessionError> {
        use shardgate_router::CursorStatement;
        let Some(stmt) = CursorStatement::parse(sql) else {
            return Ok(None);
        };
        let result = match stmt {
            CursorStatement::Declare(_) => {
                let Some(declare) = shardgate_router::Declare::parse(sql) else {
                    return Ok(None);
                };
                match self.declare_target(&declare, sql, None).await {
                    Ok(None) => return Ok(None),
                    Ok(Some(t)) => {
                        let formats = if declare.binary { vec![1] } else { Vec::new() };
                        let key = CursorKey::Sql(declare.name);
                        self.open_cursor(key, t.plan, t.shards, None, &[], formats, t.collation)
                            .await
                            .map(|()| backend::command_complete("DECLARE CURSOR", &mut self.cout))
                    }
                    Err(e) => Err(e),
                }
            }
            CursorStatement::Use(name) => {
                let key = CursorKey::Sql(name);
                if !self.has_cursor(&key) {
                    return Ok(None);
                }
                self.cursor_verb(&key, sql, None, true).await
            }
            CursorStatement::CloseAll => {
                let keys: Vec<CursorKey> = self.merged_cursors.keys().cloned().collect();
                for k in keys {
                    self.close_cursor(&k).await;
                }
                return Ok(None);
            }
        };
        match result {
            Ok(()) => {
                let status = self.client_status();
                backend::ready_for_query(status, &mut self.cout);
            }
            Err(e) => self.reply_error(e)?,
        }
        Ok(Some(()))
    }

    /// FETCH, MOVE or CLOSE of a cursor over several shards; `formats`:
    /// the result formats of an extended-protocol FETCH; `describe`: a
    /// RowDescription before the rows (simple protocol).
    pub(super) async fn cursor_verb(
        &mut self,
        key: &CursorKey,
        sql: &str,
        formats: Option<&[i16]>,
        describe: bool,
    ) -> Result<(), PgError> {
        let verb = shardgate_router::lexer::first_keyword(sql)
            .unwrap_or("")
            .to_ascii_lowercase();
        if verb == "close" {
            self.close_cursor(key).await;
            backend::command_complete("CLOSE CURSOR", &mut self.cout);
            return Ok(());
        }
        let count = shardgate_router::fetch_count(sql).unwrap_or(FetchCount::NotForward);
        if verb == "move" {
            self.fetch_cursor(key, count, formats, false, true, FetchEnd::Tag("MOVE"))
                .await
        } else {
            self.fetch_cursor(key, count, formats, describe, false, FetchEnd::Tag("FETCH"))
                .await
        }
    }
}

impl Session {
    /// An extended-protocol DECLARE (psycopg's named cursors) whose query
    /// runs on several shards: the cursor opens now; the client's Execute of
    /// the portal gets `DECLARE CURSOR`. `None`: the query runs on one shard.
    pub(super) async fn declare_bound(
        &mut self,
        bind: &Bind<'_>,
        stmt: &crate::prepared::Statement,
    ) -> Result<Option<()>, SessionError> {
        let Some(declare) = shardgate_router::Declare::parse(&stmt.query) else {
            return Ok(None);
        };
        let target = match self.declare_target(&declare, &stmt.query, Some(bind)).await {
            Ok(None) => return Ok(None),
            Ok(Some(t)) => t,
            Err(e) => return self.refuse_pg(e).map(Some),
        };
        let formats = if declare.binary { vec![1] } else { Vec::new() };
        let key = CursorKey::Sql(declare.name);
        let opened = self
            .open_cursor(
                key,
                target.plan,
                target.shards,
                Some(bind),
                &stmt.param_types,
                formats,
                target.collation,
            )
            .await;
        if let Err(e) = opened {
            return self.refuse_pg(e).map(Some);
        }
        let mut out = BytesMut::new();
        backend::empty(btag::BIND_COMPLETE, &mut out);
        self.emit_local(out.freeze());
        self.virtual_stmts
            .set_portal(bind.portal, super::local::ShardgateCommand::Declared);
        Ok(Some(()))
    }

    /// A portal over several shards that the client reads a batch at a
    /// time: the cursor opens now, and the Bind is answered.
    pub(super) async fn open_portal_cursor(
        &mut self,
        bind: &Bind<'_>,
        stmt: &crate::prepared::Statement,
        shards: Vec<usize>,
        plan: Arc<MergePlan>,
        collation: Option<String>,
    ) -> Result<(), SessionError> {
        let key = CursorKey::Portal(bind.portal.to_owned());
        let opened = self
            .open_cursor(
                key,
                plan,
                shards,
                Some(bind),
                &stmt.param_types,
                bind.result_formats(),
                collation,
            )
            .await;
        match opened {
            Ok(()) => {
                let mut out = BytesMut::new();
                backend::empty(btag::BIND_COMPLETE, &mut out);
                self.emit_local(out.freeze());
                Ok(())
            }
            Err(e) => self.refuse_pg(e),
        }
    }

    /// Describe of a portal over several shards: a portal read in
    /// batches, an SQL cursor (Postgres describes a cursor as the portal of
    /// its name: psycopg's named cursors do), or the portal of a FETCH from
    /// one. `None`: none of those.
    pub(super) async fn describe_cursor_portal(
        &mut self,
        portal: &str,
    ) -> Option<Result<BytesMut, PgError>> {
        for key in [
            CursorKey::Portal(portal.to_owned()),
            CursorKey::Sql(portal.to_owned()),
        ] {
            if self.has_cursor(&key) {
                return Some(self.describe_cursor(&key, None).await);
            }
        }
        let (sql, formats) = self.virtual_stmts.cursor_portal(portal)?;
        Some(self.describe_fetch(&sql, Some(&formats)).await)
    }

    /// Describe of a statement that FETCHes from a cursor over several
    /// shards (asyncpg prepares every statement): no parameters, and the
    /// cursor's columns in text. `None`: not such a statement.
    pub(super) async fn describe_cursor_statement(
        &mut self,
        name: &str,
    ) -> Option<Result<BytesMut, PgError>> {
        let sql = self.virtual_stmts.cursor_statement(name)?;
        let mut out = BytesMut::new();
        out.extend_from_slice(&[btag::PARAMETER_DESCRIPTION, 0, 0, 0, 6, 0, 0]);
        Some(self.describe_fetch(&sql, None).await.map(|d| {
            out.extend_from_slice(&d);
            out
        }))
    }

    /// What a FETCH, MOVE or CLOSE of a cursor over several shards is
    /// described as: FETCH the cursor's columns, the others no data.
    async fn describe_fetch(
        &mut self,
        sql: &str,
        formats: Option<&[i16]>,
    ) -> Result<BytesMut, PgError> {
        let fetch = shardgate_router::lexer::first_keyword(sql)
            .is_some_and(|k| k.eq_ignore_ascii_case("fetch"));
        let name = match shardgate_router::CursorStatement::parse(sql) {
            Some(shardgate_router::CursorStatement::Use(name)) if fetch => name,
            _ => {
                let mut out = BytesMut::new();
                backend::empty(btag::NO_DATA, &mut out);
                return Ok(out);
            }
        };
        let key = CursorKey::Sql(name);
        let formats = formats.map_or_else(Vec::new, <[i16]>::to_vec);
        self.describe_cursor(&key, Some(&formats)).await
    }
}

fn missing(key: &CursorKey) -> PgError {
    match key {
        CursorKey::Sql(n) => PgError::error("34000", format!("cursor \"{n}\" does not exist")),
        CursorKey::Portal(n) => PgError::error("34000", format!("portal \"{n}\" does not exist")),
    }
}

fn lost(addr: &str) -> PgError {
    PgError::error("08006", format!("connection to server {addr} was lost"))
}

fn session_to_pg(e: SessionError) -> PgError {
    PgError::error("08006", e.to_string())
}

/// An Execute of the unnamed portal for all rows.
fn encode_execute(out: &mut BytesMut) {
    out.put_u8(tag::EXECUTE);
    out.put_i32(9);
    out.put_u8(0);
    out.put_i32(0);
}

/// Moves the DataRows in `msgs` (what the merge wrote) into `ready`.
fn split_rows(msgs: &[u8], ready: &mut VecDeque<BytesMut>) {
    let mut pos = 0;
    while let Ok(Some(h)) = Header::complete(&msgs[pos..], MAX_SERVER_MESSAGE) {
        if h.tag == btag::DATA_ROW {
            ready.push_back(BytesMut::from(&msgs[pos..pos + h.total]));
        }
        pos += h.total;
    }
}

/// A RowDescription with every column's format code set from `formats`
/// (the client's codes: none, one for all, or one per column).
pub(super) fn with_formats(desc: &[u8], formats: &[i16]) -> BytesMut {
    let mut out = BytesMut::from(desc);
    let ends: Vec<usize> = match shardgate_merge::row::RowDescription::parse(desc) {
        Some(d) => d.columns().iter().map(|c| c.end).collect(),
        None => return out,
    };
    for (j, end) in ends.into_iter().enumerate() {
        let f = shardgate_merge::ops::format_of(formats, j);
        out[end - 2..end].copy_from_slice(&f.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_descriptions_take_the_fetch_formats() {
        let mut d = BytesMut::new();
        d.put_u8(btag::ROW_DESCRIPTION);
        d.put_i32(0);
        d.put_i16(2);
        for name in ["id", "owner"] {
            d.extend_from_slice(name.as_bytes());
            d.put_u8(0);
            d.extend_from_slice(&[0; 16]);
            d.put_i16(0);
        }
        backend::patch_len(&mut d, 0);
        let b = with_formats(&d, &[1]);
        let (types, ends) = super::super::merge::parse_row_description(&b).unwrap();
        assert_eq!(types.len(), 2);
        assert_eq!(&b[ends[0] - 2..ends[0]], &[0, 1]);
        assert_eq!(&b[ends[1] - 2..ends[1]], &[0, 1]);
        let t = with_formats(&b, &[0, 1]);
        assert_eq!(&t[ends[0] - 2..ends[0]], &[0, 0]);
        assert_eq!(&t[ends[1] - 2..ends[1]], &[0, 1]);
    }
}
