//! `INSERT INTO <sharded table> ... SELECT ...`.
//!
//! Co-located (the target's shard key comes straight from the shard key of
//! a source table placed the same way): the statement runs as it is on
//! every shard the SELECT touches, like a multi-shard UPDATE. Otherwise the
//! proxy carries the rows: on each shard the SELECT runs on, it declares a
//! cursor for it inside the statement's transaction, fetches a batch of
//! rows, gives each row to the shard that owns its key (the same placement
//! as the point-query planner and COPY), and writes each owner's rows with
//! `COPY target (columns) FROM STDIN` on that owner (with ON CONFLICT, an
//! `INSERT ... VALUES` of the rows plus the clause); then the next batch.
//! Memory holds one batch. Every shard takes part in one transaction: the
//! client's, or one the proxy opens and commits with two-phase commit.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend::{self, tag as ftag, Bind};
use shardgate_protocol::{Header, PgError};
use shardgate_router::lexer::first_keyword;
use shardgate_router::merge_plan::MergeMode;
use shardgate_router::shard::insert_select::{
    copy_text_row, locate_source, pushdown, rows_stay_per_shard, source_shape, values_row,
    SourceShape,
};
use shardgate_router::shard::{InsertPlan, ShardPlan};
use shardgate_shardmap::{ShardKey, ShardMap, TableRule};

use super::fanout::Part;
use super::sharded::{
    bad_key, cross_shard_refusal, not_null, quote_ident, refuse_explain, shard_of_key,
    shards_of_filter, Dest, MapLookup, Params,
};
use super::{Session, SessionError};
use crate::relay::MAX_SERVER_MESSAGE;
use crate::routing::Want;

/// Rows fetched from the source in the first round; later rounds fetch
/// as many as fit in [`BATCH_BYTES`] at the rows' size so far, at most
/// [`MAX_BATCH_ROWS`].
const FIRST_BATCH_ROWS: usize = 100;

/// The most rows fetched in one round.
const MAX_BATCH_ROWS: usize = 10_000;

/// The COPY text one round aims to hold in memory.
const BATCH_BYTES: usize = 8 << 20;

/// The cursor the source query runs in on each source shard.
const CURSOR: &str = "shardgate_insert_select";

/// An `INSERT ... SELECT` whose rows the proxy carries to their owners.
#[derive(Debug, Clone)]
pub(crate) struct StreamInsert {
    /// The whole statement.
    sql: String,
    /// The source query's text.
    query: String,
    /// The shards the query runs on (their rows are concatenated).
    sources: Vec<usize>,
    /// The target's rule.
    rule: Arc<TableRule>,
    /// The map placing its keys.
    map: Arc<ShardMap>,
    /// The target, quoted as it was written.
    target: String,
    /// The inserted columns, in order (the column list, or the table's).
    columns: Vec<String>,
    /// The columns came from a column list (each must get a value).
    listed: bool,
    /// The position of the shard key among `columns`.
    key_index: usize,
    /// The statement's `ON CONFLICT ...` clause: rows are then written
    /// with `INSERT ... VALUES ... <clause>` instead of COPY.
    on_conflict: Option<String>,
}

/// The Bind of an extended-protocol INSERT ... SELECT.
pub(super) struct Bound<'a> {
    /// The client's Bind.
    pub bind: &'a Bind<'a>,
    /// The statement's parameter types (raw, 4 bytes each).
    pub param_types: &'a [u8],
}

/// Why a carried INSERT ... SELECT stopped.
enum Failed {
    /// An ErrorResponse message for the client (a server's, or the proxy's).
    Error(BytesMut),
    /// The client closed its connection meanwhile.
    ClientGone,
}

fn failed(e: PgError) -> Failed {
    let mut out = BytesMut::new();
    e.encode(&mut out);
    Failed::Error(out)
}

/// What reading the servers needs besides the part: the client (watched
/// while waiting) and the notices gathered for it.
struct Io<'a> {
    client: &'a crate::client_io::ClientStream,
    notices: BytesMut,
}

fn unsupported(construct: String) -> PgError {
    PgError::error("0A000", construct).with_hint(
        "Take the target's shard key straight from the shard key of a source table sharded \
         the same way (the statement then runs on each shard), or insert with VALUES or COPY.",
    )
}

impl Session {
    /// Where `INSERT INTO <sharded table> ... SELECT` runs: on the source's
    /// shards as it is (co-located), or as rows the proxy carries.
    pub(super) async fn insert_select_dest(
        &mut self,
        rule: &Arc<TableRule>,
        sql: &str,
        ins: &InsertPlan,
        params: Params<'_>,
    ) -> Result<Dest, PgError> {
        let map = self.map();
        let table = &rule.table;
        if first_keyword(sql).is_some_and(|k| k.eq_ignore_ascii_case("explain")) {
            return Err(cross_shard_refusal(&format!(
                "EXPLAIN of INSERT ... SELECT into sharded table {table}"
            )));
        }
        let Some(src) = locate_source(sql) else {
            return Err(unsupported(format!(
                "this form of INSERT ... SELECT into sharded table {table} (WITH before INSERT, \
                 OVERRIDING, DEFAULT VALUES)"
            )));
        };
        let query = sql.get(src.query.clone()).unwrap_or("").to_owned();
        let key_index = self.insert_key_index(ins, rule).await?.ok_or_else(|| {
            PgError::error(
                "0A000",
                format!(
                    "INSERT into sharded table {table} must give its shard key {}",
                    rule.column
                ),
            )
        })?;
        let default = map.default_shard();
        let plan = self.plan_of(&query);
        let (sources, sharded_source) = match &plan {
            ShardPlan::Unsharded | ShardPlan::NoTable | ShardPlan::ReferenceRead => {
                (vec![default], false)
            }
            ShardPlan::Keyed { table, filter } => {
                let source_rule = map
                    .table(table.0.as_deref(), &table.1)
                    .cloned()
                    .ok_or_else(|| PgError::error("XX000", format!("no rule for {}", table.1)))?;
                let shards = shards_of_filter(&map, &source_rule, filter, params)?;
                (shards.unwrap_or_else(|| map.all_shards()), true)
            }
            ShardPlan::NoKey { .. } => (map.all_shards(), true),
            ShardPlan::Unsupported { construct } => return Err(cross_shard_refusal(construct)),
            ShardPlan::ReferenceWrite | ShardPlan::Broadcast | ShardPlan::Insert(_) => {
                return Err(unsupported(format!(
                    "INSERT ... SELECT into sharded table {table} whose query writes"
                )))
            }
        };
        if self.is_write(&query) {
            return Err(unsupported(format!(
                "INSERT ... SELECT into sharded table {table} whose query writes or locks rows"
            )));
        }
        // Whether the shards' rows of the query are simply concatenated
        // (`Err`: what the merge layer cannot answer).
        let concat: Result<bool, String> = if sources.len() <= 1 {
            Ok(true)
        } else {
            let sharding = self.snap.sharding.as_ref().expect("sharded session");
            let merged = self
                .snap
                .analyzer
                .merge_plan(&query, &MapLookup(&sharding.map));
            match &merged {
                Ok(p) => Ok(p.mode == MergeMode::Concat),
                Err(e) => Err(e.construct.clone()),
            }
        };
        let per_shard = matches!(concat, Ok(true)) || rows_stay_per_shard(&query);
        if sharded_source && per_shard {
            let lookup = MapLookup(&map);
            let shape = source_shape(&query, &lookup);
            let star_key = match &shape {
                SourceShape::Star(schema, name) => {
                    let key = map.table(schema.as_deref(), name).map(|r| r.column.clone());
                    let cols = self.table_columns(schema.as_deref(), name).await?;
                    key.and_then(|k| cols.iter().position(|c| *c == k))
                }
                _ => None,
            };
            let target = (ins.table.0.as_deref(), ins.table.1.as_str());
            if pushdown(&shape, key_index, star_key, target, &lookup) {
                return Ok(match sources.as_slice() {
                    [] => Dest::One(default),
                    [one] => Dest::One(*one),
                    _ => {
                        refuse_explain(sql)?;
                        Dest::Many(sources)
                    }
                });
            }
        }
        match concat {
            Ok(true) => {}
            Ok(false) => {
                return Err(unsupported(format!(
                    "INSERT ... SELECT into sharded table {table} whose SELECT over several \
                     shards must merge their rows (ORDER BY, LIMIT, aggregates, DISTINCT, ...)"
                )))
            }
            Err(construct) => return Err(cross_shard_refusal(&construct)),
        }
        for (has, what) in [
            (src.returning, "RETURNING"),
            (
                src.on_conflict && src.rest_has_params,
                "a parameter in ON CONFLICT",
            ),
        ] {
            if has {
                return Err(unsupported(format!(
                    "{what} in INSERT ... SELECT into sharded table {table} whose rows are not \
                     co-located with their source"
                )));
            }
        }
        let on_conflict = src
            .on_conflict
            .then(|| sql.get(src.rest.clone()).unwrap_or("").to_owned());
        refuse_explain(sql)?;
        let (columns, listed) = match &ins.columns {
            Some(c) => (c.clone(), true),
            None => (
                self.table_columns(ins.table.0.as_deref(), &ins.table.1)
                    .await?
                    .to_vec(),
                false,
            ),
        };
        let target = match &ins.table.0 {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&ins.table.1)),
            None => quote_ident(&ins.table.1),
        };
        Ok(Dest::Stream(Box::new(StreamInsert {
            sql: sql.to_owned(),
            query,
            sources,
            rule: rule.clone(),
            map,
            target,
            columns,
            listed,
            key_index,
            on_conflict,
        })))
    }

    /// Runs a carried INSERT ... SELECT and answers the client: a simple
    /// query (`describe` is `None`), or the Bind, optional Describe,
    /// Execute and Sync of an extended one.
    pub(super) async fn insert_select_run(
        &mut self,
        si: StreamInsert,
        bound: Option<Bound<'_>>,
        describe: Option<bool>,
    ) -> Result<(), SessionError> {
        if !self.leave_replica_for(Want::Primary).await? {
            return Ok(());
        }
        self.drain_current().await?;
        if let Some(d) = describe {
            backend::empty(btag::BIND_COMPLETE, &mut self.cout);
            if d {
                backend::empty(btag::NO_DATA, &mut self.cout);
            }
        }
        let wrap = self.vtx.is_none();
        let mut parts: Vec<Part> = Vec::new();
        let mut result: Result<u64, Failed> = Ok(0);
        for shard in si.map.all_shards() {
            match self.part_for(shard, Want::Primary).await {
                Ok((mut p, mut prologue)) => {
                    if wrap {
                        frontend::encode_query("BEGIN", &mut prologue);
                        p.hidden += 1;
                    }
                    let hidden = std::mem::take(&mut p.hidden);
                    let mut io = Io {
                        client: &self.client,
                        notices: BytesMut::new(),
                    };
                    let r = prepare_part(&mut p, &prologue, hidden, &mut io).await;
                    parts.push(p);
                    if let Err(e) = r {
                        result = Err(e);
                        break;
                    }
                }
                Err(e) => {
                    result = Err(failed(e));
                    break;
                }
            }
        }
        // A cancel request reaches every shard (only the one running a
        // statement of ours acts on it).
        for (i, p) in parts.iter().enumerate() {
            if i == 0 {
                self.cancel.slot.set_one(&p.b.conn.cancel);
            } else {
                self.cancel.slot.add(&p.b.conn.cancel);
            }
        }
        let mut used = vec![false; parts.len()];
        if result.is_ok() {
            let mut io = Io {
                client: &self.client,
                notices: BytesMut::new(),
            };
            result = carry(&si, &mut parts, &mut used, bound, &mut io).await;
            self.cout.extend_from_slice(&io.notices);
        }
        let error = match result {
            Ok(total) => {
                let end = if wrap {
                    self.end_carry(&mut parts, &used, true).await
                } else {
                    None
                };
                match end {
                    None => {
                        backend::command_complete(&format!("INSERT 0 {total}"), &mut self.cout);
                        None
                    }
                    Some(e) => Some(failed(e)),
                }
            }
            Err(Failed::ClientGone) => {
                // Every connection is discarded: its transaction rolls back.
                super::fanout::abandon(&mut parts);
                return Err(super::fanout::client_left());
            }
            Err(e) => {
                if wrap {
                    self.end_carry(&mut parts, &used, false).await;
                }
                Some(e)
            }
        };
        if let Some(Failed::Error(e)) = error {
            if let Some(v) = self.vtx.as_mut() {
                v.failed = true;
            }
            self.cout.extend_from_slice(&e);
        }
        for p in parts {
            self.return_part(p.settle());
        }
        if self.vtx.is_none() && self.parked.is_empty() && self.backend.is_none() {
            // The connections went back to their pools.
            self.cancel.slot.clear();
        }
        backend::ready_for_query(self.client_status(), &mut self.cout);
        self.flush_client().await
    }

    /// Ends the transaction the proxy opened: the shards that took part
    /// commit together (two-phase when several), the others roll back.
    async fn end_carry(
        &mut self,
        parts: &mut Vec<Part>,
        used: &[bool],
        commit: bool,
    ) -> Option<PgError> {
        let (mut taking, mut idle): (Vec<Part>, Vec<Part>) = (Vec::new(), Vec::new());
        for (i, p) in std::mem::take(parts).into_iter().enumerate() {
            if p.b.conn.broken {
                continue;
            }
            if commit && used.get(i).copied().unwrap_or(false) {
                taking.push(p);
            } else {
                idle.push(p);
            }
        }
        let e = if taking.is_empty() {
            None
        } else {
            self.finish_parts(&mut taking, commit).await
        };
        let _ = self.finish_parts(&mut idle, false).await;
        parts.extend(taking);
        parts.extend(idle);
        e
    }
}

/// Sends a part what must precede the statement (state, BEGIN) and reads
/// its `hidden` answers.
async fn prepare_part(
    p: &mut Part,
    prologue: &[u8],
    hidden: usize,
    io: &mut Io<'_>,
) -> Result<(), Failed> {
    if hidden == 0 && prologue.is_empty() {
        return Ok(());
    }
    send(p, prologue).await?;
    let mut error = None;
    for _ in 0..hidden {
        match read_ready(p, io, &mut Vec::new()).await {
            Err(Failed::ClientGone) => return Err(Failed::ClientGone),
            Err(e) => {
                error.get_or_insert(e);
            }
            Ok(()) => {}
        }
    }
    // Notices of the hidden statements are not the client's.
    io.notices.clear();
    error.map_or(Ok(()), Err)
}

/// Runs the source query on its shards and writes its rows to their
/// owners; returns how many rows were inserted. `used`: the parts that took
/// part.
async fn carry(
    si: &StreamInsert,
    parts: &mut [Part],
    used: &mut [bool],
    bound: Option<Bound<'_>>,
    io: &mut Io<'_>,
) -> Result<u64, Failed> {
    let pos_of = |parts: &[Part], shard: usize| parts.iter().position(|p| p.b.shard == shard);
    let declare_sql = format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR {}", si.query);
    let mut declare = BytesMut::new();
    match &bound {
        None => frontend::encode_query(&declare_sql, &mut declare),
        Some(b) => {
            // The parameters' types as the whole INSERT gives them (the
            // SELECT alone may infer others, e.g. text for `SELECT $1`).
            let types = match si.sources.first().and_then(|&s| pos_of(parts, s)) {
                Some(i) if b.bind.param_count() > 0 => {
                    parameter_types(&mut parts[i], &si.sql, b.param_types, io).await?
                }
                _ => b.param_types.to_vec(),
            };
            let Some(bytes) = super::split::part_bytes(&declare_sql, &types, b.bind) else {
                return Err(failed(PgError::error(
                    "08P01",
                    "invalid parameter reference",
                )));
            };
            declare.extend_from_slice(&bytes);
            encode_execute(b.bind.portal, &mut declare);
            if !b.bind.portal.is_empty() {
                encode_close_portal(b.bind.portal, &mut declare);
            }
            frontend::encode_empty(ftag::SYNC, &mut declare);
        }
    }
    let mut sources = Vec::new();
    for &s in &si.sources {
        let i = pos_of(parts, s)
            .ok_or_else(|| failed(PgError::error("XX000", "source shard missing")))?;
        sources.push(i);
        used[i] = true;
    }
    // Every part sent to is read to its end before an error returns, so
    // none is left with an answer outstanding.
    let mut error = None;
    let mut sent = Vec::new();
    for &i in &sources {
        match send(&mut parts[i], &declare).await {
            Ok(()) => sent.push(i),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    for i in sent {
        match read_ready(&mut parts[i], io, &mut Vec::new()).await {
            Err(Failed::ClientGone) => return Err(Failed::ClientGone),
            Err(e) => {
                error.get_or_insert(e);
            }
            Ok(()) => {}
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    let mut copy_sql: Option<String> = None;
    let mut rows: Vec<Vec<u8>> = vec![Vec::new(); parts.len()];
    let mut total = 0u64;
    let mut want = FIRST_BATCH_ROWS;
    for &src in &sources {
        loop {
            let mut fetch = BytesMut::new();
            frontend::encode_query(&format!("FETCH {want} FROM {CURSOR}"), &mut fetch);
            send(&mut parts[src], &fetch).await?;
            let fetched = read_batch(si, parts, src, &mut rows, &mut copy_sql, io).await?;
            let bytes: usize = rows.iter().map(Vec::len).sum();
            let head = copy_sql.as_deref().unwrap_or("");
            let clause = si.on_conflict.as_deref();
            total += write_owners(parts, &mut rows, used, head, clause, io).await?;
            if fetched < want {
                break;
            }
            want = (BATCH_BYTES.saturating_mul(fetched) / bytes.max(1)).clamp(1, MAX_BATCH_ROWS);
        }
    }
    let mut close = BytesMut::new();
    frontend::encode_query(&format!("CLOSE {CURSOR}"), &mut close);
    for &i in &sources {
        send(&mut parts[i], &close).await?;
        read_ready(&mut parts[i], io, &mut Vec::new()).await?;
    }
    Ok(total)
}

/// Reads one FETCH answer from part `src`, appending each row as COPY text
/// to the buffer of its owner; returns how many rows came.
async fn read_batch(
    si: &StreamInsert,
    parts: &mut [Part],
    src: usize,
    rows: &mut [Vec<u8>],
    copy_sql: &mut Option<String>,
    io: &mut Io<'_>,
) -> Result<usize, Failed> {
    let mut count = 0;
    let mut error: Option<Failed> = None;
    let shard_pos: Vec<usize> = parts.iter().map(|p| p.b.shard).collect();
    let p = &mut parts[src];
    loop {
        let msg = next_msg(p, io.client).await?;
        if error.is_some() && msg[0] != btag::READY_FOR_QUERY {
            continue;
        }
        match msg[0] {
            btag::ROW_DESCRIPTION if copy_sql.is_none() => {
                let n = msg
                    .get(5..7)
                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
                match copy_statement(si, n) {
                    Ok(sql) => *copy_sql = Some(sql),
                    Err(e) => error = Some(failed(e)),
                }
            }
            btag::DATA_ROW => {
                count += 1;
                let r = row_owner(si, &msg[5..]).and_then(|(owner, fields)| {
                    let i = shard_pos
                        .iter()
                        .position(|s| *s == owner)
                        .ok_or_else(|| PgError::error("XX000", "owner shard missing"))?;
                    match si.on_conflict {
                        None => copy_text_row(fields, &mut rows[i]),
                        Some(_) => values_row(fields, &mut rows[i]),
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    error = Some(failed(e));
                }
            }
            btag::NOTICE_RESPONSE => io.notices.extend_from_slice(&msg),
            btag::ERROR_RESPONSE => error = Some(Failed::Error(msg)),
            btag::READY_FOR_QUERY => {
                p.b.ex.status = msg.get(5).copied().unwrap_or(b'E');
                return error.map_or(Ok(count), Err);
            }
            _ => {}
        }
    }
}

/// How rows are written for a query with `n` output columns: `COPY target
/// (columns) FROM STDIN`, or `INSERT INTO target (columns) VALUES ` when
/// the statement has ON CONFLICT; or the error INSERT would give.
fn copy_statement(si: &StreamInsert, n: usize) -> Result<String, PgError> {
    if n > si.columns.len() {
        return Err(PgError::error(
            "42601",
            "INSERT has more expressions than target columns",
        ));
    }
    if si.listed && n < si.columns.len() {
        return Err(PgError::error(
            "42601",
            "INSERT has more target columns than expressions",
        ));
    }
    if si.key_index >= n {
        return Err(PgError::error(
            "0A000",
            format!(
                "INSERT into sharded table {} must give its shard key {}",
                si.rule.table, si.rule.column
            ),
        ));
    }
    let cols: Vec<String> = si.columns[..n].iter().map(|c| quote_ident(c)).collect();
    if si.on_conflict.is_some() {
        return Ok(format!(
            "INSERT INTO {} ({}) VALUES ",
            si.target,
            cols.join(", ")
        ));
    }
    Ok(format!(
        "COPY {} ({}) FROM STDIN",
        si.target,
        cols.join(", ")
    ))
}

/// The values of a DataRow (`None` for NULL).
pub(super) type Fields<'a> = Vec<Option<&'a [u8]>>;

/// The owner shard of a DataRow and its text fields.
fn row_owner<'a>(si: &StreamInsert, body: &'a [u8]) -> Result<(usize, Fields<'a>), PgError> {
    let fields = data_row_fields(body)
        .ok_or_else(|| PgError::error("08P01", "malformed DataRow from a shard"))?;
    let rule = &si.rule;
    let key = match fields.get(si.key_index).copied().flatten() {
        None => return Err(not_null(&rule.table.to_string(), &rule.column)),
        Some(raw) => {
            let text = std::str::from_utf8(raw).map_err(|_| bad_key(rule, "not valid UTF-8"))?;
            ShardKey::parse_text(rule.key_type, text).map_err(|e| bad_key(rule, e))?
        }
    };
    Ok((shard_of_key(&si.map, rule, &key)?, fields))
}

/// The values of a DataRow body (`None` for NULL); `None` if malformed.
pub(super) fn data_row_fields(body: &[u8]) -> Option<Fields<'_>> {
    let row = shardgate_merge::row::DataRow::parse_body(body).ok()?;
    Some(row.fields().collect())
}

/// Writes each owner's buffered rows with one COPY (or one INSERT ending
/// with `on_conflict`); returns the rows the owners report.
async fn write_owners(
    parts: &mut [Part],
    rows: &mut [Vec<u8>],
    used: &mut [bool],
    head: &str,
    on_conflict: Option<&str>,
    io: &mut Io<'_>,
) -> Result<u64, Failed> {
    let mut sent = Vec::new();
    let mut error = None;
    for (i, buf) in rows.iter_mut().enumerate() {
        if buf.is_empty() {
            continue;
        }
        let mut out = BytesMut::with_capacity(buf.len() + head.len() + 64);
        match on_conflict {
            None => {
                frontend::encode_query(head, &mut out);
                for chunk in buf.chunks(256 * 1024) {
                    super::fanout::copy_data(chunk, &mut out);
                }
                out.extend_from_slice(&[ftag::COPY_DONE, 0, 0, 0, 4]);
            }
            Some(clause) => {
                // A Query message of raw bytes: the values are the
                // server's text, in its encoding.
                out.put_u8(ftag::QUERY);
                out.put_i32(0);
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(buf);
                out.put_u8(b' ');
                out.extend_from_slice(clause.as_bytes());
                out.put_u8(0);
                backend::patch_len(&mut out, 0);
            }
        }
        buf.clear();
        used[i] = true;
        match send(&mut parts[i], &out).await {
            Ok(()) => sent.push(i),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    let mut total = 0u64;
    for i in sent {
        let mut tags = Vec::new();
        match read_ready(&mut parts[i], io, &mut tags).await {
            Err(Failed::ClientGone) => return Err(Failed::ClientGone),
            Ok(()) => {
                total += tags
                    .iter()
                    .filter_map(|t| t.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>()
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    error.map_or(Ok(total), Err)
}

/// The parameter types the server infers for `sql` given `declared`
/// (raw, 4 bytes each, as in Parse).
async fn parameter_types(
    p: &mut Part,
    sql: &str,
    declared: &[u8],
    io: &mut Io<'_>,
) -> Result<Vec<u8>, Failed> {
    let mut out = BytesMut::new();
    frontend::encode_parse("", sql, declared, &mut out);
    let start = out.len();
    out.put_u8(ftag::DESCRIBE);
    out.put_i32(0);
    out.put_u8(b'S');
    frontend::put_cstr(&mut out, b"");
    backend::patch_len(&mut out, start);
    frontend::encode_empty(ftag::SYNC, &mut out);
    send(p, &out).await?;
    let mut types = None;
    let mut error = None;
    loop {
        let msg = next_msg(p, io.client).await?;
        match msg[0] {
            btag::PARAMETER_DESCRIPTION => types = Some(msg.get(7..).unwrap_or(&[]).to_vec()),
            btag::NOTICE_RESPONSE => io.notices.extend_from_slice(&msg),
            btag::ERROR_RESPONSE => {
                error.get_or_insert(Failed::Error(msg));
            }
            btag::READY_FOR_QUERY => {
                p.b.ex.status = msg.get(5).copied().unwrap_or(b'E');
                return match (error, types) {
                    (Some(e), _) => Err(e),
                    (None, Some(t)) => Ok(t),
                    (None, None) => Ok(declared.to_vec()),
                };
            }
            _ => {}
        }
    }
}

fn encode_execute(portal: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(ftag::EXECUTE);
    out.put_i32(0);
    frontend::put_cstr(out, portal.as_bytes());
    out.put_i32(0);
    backend::patch_len(out, start);
}

fn encode_close_portal(portal: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(ftag::CLOSE);
    out.put_i32(0);
    out.put_u8(b'P');
    frontend::put_cstr(out, portal.as_bytes());
    backend::patch_len(out, start);
}

fn lost(p: &Part, why: &str) -> Failed {
    failed(
        PgError::error(
            "08006",
            format!("connection to server {} was lost: {why}", p.b.conn.addr),
        )
        .with_hint("The statement failed; nothing it wrote is kept."),
    )
}

async fn send(p: &mut Part, bytes: &[u8]) -> Result<(), Failed> {
    if p.b.conn.broken {
        return Err(lost(p, "connection broken"));
    }
    p.b.conn.loan.bytes_sent += bytes.len() as u64;
    if let Err(e) = p.b.conn.stream.send_all(bytes).await {
        p.b.conn.broken = true;
        return Err(lost(p, &e.to_string()));
    }
    Ok(())
}

/// The next complete message from a part's server; waiting for it, the
/// client is watched ([`super::fanout::read_any`]).
async fn next_msg(
    p: &mut Part,
    client: &crate::client_io::ClientStream,
) -> Result<BytesMut, Failed> {
    loop {
        match Header::complete(&p.b.conn.read_buf, MAX_SERVER_MESSAGE) {
            Ok(Some(h)) => return Ok(p.b.conn.read_buf.split_to(h.total)),
            Ok(None) => {}
            Err(e) => {
                p.b.conn.broken = true;
                return Err(lost(p, &format!("protocol error from server: {e}")));
            }
        }
        let read = super::fanout::read_any(
            std::slice::from_mut(p),
            |_, _| true,
            client,
            &mut super::fanout::QueryTimer::off(),
        )
        .await;
        match read {
            Err(_) => return Err(Failed::ClientGone),
            Ok((_, Ok(n))) if n > 0 => {}
            Ok((_, Ok(_))) => {
                p.b.conn.broken = true;
                return Err(lost(p, "server closed the connection unexpectedly"));
            }
            Ok((_, Err(e))) => {
                p.b.conn.broken = true;
                return Err(lost(p, &e.to_string()));
            }
        }
    }
}

/// Reads a part's answers up to ReadyForQuery: notices go to `notices`,
/// CommandComplete tags to `tags`; the first error is the result.
async fn read_ready(p: &mut Part, io: &mut Io<'_>, tags: &mut Vec<String>) -> Result<(), Failed> {
    let mut error = None;
    loop {
        let msg = next_msg(p, io.client).await?;
        match msg[0] {
            btag::NOTICE_RESPONSE => io.notices.extend_from_slice(&msg),
            btag::ERROR_RESPONSE => {
                error.get_or_insert(Failed::Error(msg));
            }
            btag::COMMAND_COMPLETE => {
                let t = std::str::from_utf8(&msg[5..]).unwrap_or("");
                tags.push(t.trim_end_matches('\0').to_owned());
            }
            btag::READY_FOR_QUERY => {
                p.b.ex.status = msg.get(5).copied().unwrap_or(b'E');
                p.b.conn.loan.queries += 1;
                return error.map_or(Ok(()), Err);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_are_read_with_nulls_and_bounds() {
        let mut row = BytesMut::new();
        backend::data_row(&[Some("12"), None, Some("")], &mut row);
        let fields = data_row_fields(&row[5..]).unwrap();
        assert_eq!(fields, vec![Some(&b"12"[..]), None, Some(&b""[..])]);
        assert!(data_row_fields(&row[5..row.len() - 1]).is_none());
        assert!(data_row_fields(&[0, 1, 0, 0, 0, 9, b'x']).is_none());
        assert!(data_row_fields(&[]).is_none());
    }
}
