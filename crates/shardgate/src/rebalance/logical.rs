//! Catch-up from logical decoding (docs/ARCHITECTURE.md §10, mode
//! `logical`): a slot with the built-in `test_decoding` plugin is created
//! on each source before its rows are copied; afterwards the changes it
//! recorded for moving keys are applied to their targets, idempotently
//! (inserts and updates as upserts by primary key, deletes by primary key),
//! so the overlap with the copy converges. Writes to moving keys go on
//! during the copy; only the cutover holds them, for the last changes.
//!
//! `test_decoding` prints each change as text whose values are SQL
//! literals: `table public.t: UPDATE: id[bigint]:5 name[text]:'it''s'`,
//! `null`, or `unchanged-toast-datum` for a TOASTed value an UPDATE left
//! alone. [`parse_change`] reads that.

use std::collections::{HashMap, HashSet};

use shardgate_shardmap::{ShardKey, TableName, TableRule, Transition};

use std::time::{Duration, Instant};

use super::apply::Batch;
use super::db::Conn;
use super::stream::{SlotStream, Streamed};
use super::RebalanceError;
use shardgate_jobs::lsn::parse_lsn;

/// What a decoded change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row (the new values).
    Update,
    /// A removed row (its replica identity: the primary key).
    Delete,
}

/// One column of a decoded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name, as printed (quoted when it needs quotes).
    pub name: String,
    /// Its type, as `format_type` prints it.
    pub type_name: String,
    /// Its value as an SQL literal; `None` for NULL.
    pub value: Option<String>,
    /// An UPDATE left this TOASTed value alone (no value given).
    pub unchanged: bool,
}

/// One decoded row change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `schema.name` as printed.
    pub table: String,
    /// Insert, update or delete.
    pub op: Op,
    /// The row's columns (for a delete: the primary key's).
    pub columns: Vec<Column>,
}

impl Change {
    /// The column called `name` (unquoted names compared as printed).
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.trim_matches('"') == name)
    }
}

/// Parses one line of `test_decoding` output; `None` for BEGIN/COMMIT and
/// anything that is not a row change.
pub fn parse_change(line: &str) -> Option<Change> {
    let rest = line.strip_prefix("table ")?;
    let (table, rest) = split_table(rest)?;
    let rest = rest.strip_prefix(": ")?;
    let (op, mut rest) = if let Some(r) = rest.strip_prefix("INSERT: ") {
        (Op::Insert, r)
    } else if let Some(r) = rest.strip_prefix("UPDATE: ") {
        (Op::Update, r)
    } else if let Some(r) = rest.strip_prefix("DELETE: ") {
        (Op::Delete, r)
    } else {
        return None;
    };
    // An UPDATE that changed the key prints the old key first.
    if let Some(r) = rest.strip_prefix("old-key: ") {
        let at = r.find(" new-tuple: ")?;
        rest = &r[at + " new-tuple: ".len()..];
    }
    if rest == "(no-tuple-data)" {
        return None;
    }
    let mut columns = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        let (col, after) = parse_column(s)?;
        columns.push(col);
        s = after.trim_start_matches(' ');
    }
    Some(Change {
        table: table.to_owned(),
        op,
        columns,
    })
}

/// `schema.name` up to the `: ` that follows it (names may be quoted).
fn split_table(s: &str) -> Option<(&str, &str)> {
    let mut in_quotes = false;
    for (i, ch) in s.char_indices() {
        match ch {
            '"' => in_quotes = !in_quotes,
            ':' if !in_quotes => return Some((&s[..i], &s[i..])),
            _ => {}
        }
    }
    None
}

/// `name[type]:value` at the start of `s`; returns it and the rest.
fn parse_column(s: &str) -> Option<(Column, &str)> {
    let open = s.find('[')?;
    let name = &s[..open];
    let close = s[open..].find("]:")? + open;
    let type_name = &s[open + 1..close];
    let v = &s[close + 2..];
    let (value, unchanged, rest) = if let Some(r) = v.strip_prefix('\'') {
        // A quoted literal: '' is a quote inside it.
        let bytes = r.as_bytes();
        let mut i = 0;
        loop {
            if i >= bytes.len() {
                return None;
            }
            if bytes[i] == b'\'' {
                if bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                break;
            }
            i += 1;
        }
        (Some(format!("'{}'", &r[..i])), false, &r[i + 1..])
    } else {
        let end = v.find(' ').unwrap_or(v.len());
        let word = &v[..end];
        match word {
            "null" => (None, false, &v[end..]),
            "unchanged-toast-datum" => (None, true, &v[end..]),
            _ => (Some(word.to_owned()), false, &v[end..]),
        }
    };
    Some((
        Column {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            value,
            unchanged,
        },
        rest,
    ))
}

/// A moving table as catch-up needs it.
pub(super) struct Table<'a> {
    /// Its rule.
    pub rule: &'a TableRule,
    /// Its primary key columns.
    pub key_columns: Vec<String>,
    /// Its stage table on the targets.
    pub stage: TableName,
}

/// Keys caught up into the stages and not yet taken into the targets' move
/// transactions, per (target shard, table as decoding prints it).
pub(super) type Pending = HashMap<(usize, String), HashSet<String>>;

/// The primary key columns of `table` on `conn` (empty: none).
pub(super) async fn primary_key(
    conn: &Conn,
    table: &TableName,
) -> Result<Vec<String>, RebalanceError> {
    let rows = conn
        .client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&table.to_string()],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether `wal_level` is `logical` on `conn`.
pub(super) async fn wal_is_logical(conn: &Conn) -> Result<bool, RebalanceError> {
    let row = conn
        .client
        .query_one("SELECT current_setting('wal_level') = 'logical'", &[])
        .await
        .map_err(|e| conn.err(e))?;
    Ok(row.get(0))
}

/// The slot of `job` on `shard`.
pub(super) fn slot_name(job: u64, shard: usize) -> String {
    format!("shardgate_move_{job}_{shard}")
}

/// Creates the slot (its changes start now).
pub(super) async fn create_slot(conn: &Conn, slot: &str) -> Result<(), RebalanceError> {
    conn.client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&slot],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(())
}

/// Whether the slot exists.
pub(super) async fn slot_exists(conn: &Conn, slot: &str) -> Result<bool, RebalanceError> {
    Ok(conn
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(|e| conn.err(e))?
        .get(0))
}

/// Drops the slot if it exists, ending the stream that may still use it
/// (a job's own, just closed, or one of an earlier run of the job).
pub(super) async fn drop_slot(conn: &Conn, slot: &str) {
    for _ in 0..50 {
        let _ = free_slot(conn, slot).await;
        let _ = conn
            .client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await;
        match slot_exists(conn, slot).await {
            Ok(true) => tokio::time::sleep(Duration::from_millis(100)).await,
            // Gone, or the node cannot be asked (the takeover drops it).
            _ => return,
        }
    }
    tracing::warn!(slot, node = %conn.node, "cannot drop a slot of a move: drop it by hand");
}

/// Ends a stream an earlier run of the job may have left on `slot`, so
/// that this run can stream it.
pub(super) async fn free_slot(conn: &Conn, slot: &str) -> Result<(), RebalanceError> {
    conn.client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(())
}

/// Drops the slots of `job` that no session uses.
pub(super) async fn drop_slots_of(conn: &Conn, job: u64) -> Result<(), RebalanceError> {
    conn.client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name LIKE $1 AND NOT active",
            &[&format!("shardgate\\_move\\_{job}\\_%")],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(())
}

/// What catch-up keeps per source: the keys (text) of each moving table
/// that are on their way to a target, so the cutover deletes them on the
/// source.
#[derive(Default)]
pub(super) struct KeysOut {
    /// Per table (as printed by test_decoding, `schema.name`), per key.
    pub keys: HashMap<String, HashSet<String>>,
    /// The keys caught up since the job last cleared this (per table):
    /// those the cutover verifies again after the early verification.
    pub changed: HashMap<String, HashSet<String>>,
}

/// How soon the server's position is asked again after an answer short
/// of the goal.
const ASK_EVERY: Duration = Duration::from_millis(10);

/// A transactional logical message (its commit flushes the WAL up to it):
/// the position a catch-up call must reach.
const DRAIN_MARKER: &str = "SELECT pg_logical_emit_message(true, 'shardgate', '')::text";

/// Changes read from a stream per call at most.
const CHANGES_PER_READ: usize = 50_000;

/// Statement text sent to a target per round trip.
const APPLY_BATCH_BYTES: usize = 256 * 1024;

/// What one catch-up call did.
pub(super) struct CaughtUp {
    /// Changes applied to targets.
    pub applied: usize,
    /// Everything committed on the source when the call began is applied.
    pub drained: bool,
    /// The source's WAL position up to which changes are applied.
    pub reached: Option<u64>,
}

/// Applies the changes the slot's stream brings, in order, many statements
/// per round trip, until the stream has given everything committed on the
/// source when the call began (`drained`) or [`CHANGES_PER_READ`] changes,
/// or until `stop_at`, to the targets' stages (`stages`, autocommit): they
/// are committed there, then confirmed to the stream up to the last commit
/// read. A stop in between makes the server send them again: upserts and
/// deletes by key converge. The keys applied are added to `pending`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn catch_up(
    src: &Conn,
    stream: &mut SlotStream,
    stop_at: Option<Instant>,
    source: usize,
    tables: &HashMap<String, Table<'_>>,
    transition: &Transition,
    stages: &HashMap<usize, Conn>,
    out: &mut KeysOut,
    pending: &mut Pending,
) -> Result<CaughtUp, RebalanceError> {
    // The goal: a marker committed (and so flushed) now, after everything
    // committed before this call. The server's flush position would not
    // do: it can end inside a record whose rest is not flushed until some
    // later commit, and the stream cannot reach it before (with every
    // writer held at the cutover, that took the next running-transactions
    // record, 15 s).
    let marker: String = src
        .client
        .query_one(DRAIN_MARKER, &[])
        .await
        .map_err(|e| src.err(e))?
        .get(0);
    let began = Instant::now();
    let until = parse_lsn(&marker)
        .ok_or_else(|| RebalanceError::Invalid(format!("{}: bad LSN {marker}", src.node)))?;
    // The server's position, asked for anew once the last answer fell
    // short (it answers after what it sent before: changes buffered here
    // come first), or when an answer is overdue.
    let mut asked: Option<Instant> = None;
    let mut answered = Instant::now() - ASK_EVERY;
    let mut applied = 0;
    let mut read = 0;
    let mut drained = false;
    let mut reached = None;
    let mut applying = Duration::ZERO;
    let mut last_commit: Option<u64> = None;
    let mut batches: HashMap<usize, Batch> = HashMap::new();
    while read < CHANGES_PER_READ && stop_at.is_none_or(|t| Instant::now() < t) {
        let due = match asked {
            None => answered.elapsed() >= ASK_EVERY,
            Some(at) => at.elapsed() >= Duration::from_secs(1),
        };
        if due {
            stream.ask_position();
            asked = Some(Instant::now());
        }
        let data = match stream.next(ASK_EVERY).await? {
            None => continue,
            Some(Streamed::Position(p)) => {
                if p >= until {
                    drained = true;
                    reached = Some(p);
                    break;
                }
                asked = None;
                answered = Instant::now();
                continue;
            }
            Some(Streamed::Change { lsn, data }) => {
                read += 1;
                if data.starts_with("COMMIT") {
                    last_commit = Some(lsn);
                    continue;
                }
                data
            }
        };
        let Some(change) = parse_change(&data) else {
            continue;
        };
        let Some(table) = tables.get(&change.table) else {
            continue;
        };
        let Some(key_col) = change.column(&table.rule.column) else {
            continue;
        };
        let Some(literal) = key_col.value.as_deref() else {
            continue;
        };
        let text = literal
            .strip_prefix('\'')
            .and_then(|l| l.strip_suffix('\''))
            .map_or_else(|| literal.to_owned(), |l| l.replace("''", "'"));
        let Ok(key) = ShardKey::parse_text(table.rule.key_type, &text) else {
            continue;
        };
        let to = match transition.next_shard(table.rule, &key) {
            Ok(n) if n != source => n,
            _ => continue,
        };
        let Some(target) = stages.get(&to) else {
            continue;
        };
        pending
            .entry((to, change.table.clone()))
            .or_default()
            .insert(text.clone());
        out.changed
            .entry(change.table.clone())
            .or_default()
            .insert(text.clone());
        out.keys
            .entry(change.table.clone())
            .or_default()
            .insert(text);
        let batch = batches.entry(to).or_default();
        batch.add(&table.stage, &table.key_columns, change)?;
        if batch.bytes() >= APPLY_BATCH_BYTES {
            // One implicit transaction.
            let at = Instant::now();
            target.run(&batch.take_sql()).await?;
            applying += at.elapsed();
        }
        applied += 1;
    }
    let at = Instant::now();
    for (to, mut batch) in batches {
        if !batch.is_empty() {
            stages[&to].run(&batch.take_sql()).await?;
        }
    }
    applying += at.elapsed();
    if let Some(lsn) = last_commit {
        stream.confirm(lsn);
    }
    tracing::debug!(
        node = %src.node,
        read,
        applied,
        drained,
        ms = began.elapsed().as_millis() as u64,
        apply_ms = applying.as_millis() as u64,
        "catch-up call"
    );
    Ok(CaughtUp {
        applied,
        drained,
        reached: reached.or(last_commit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_decoding_lines_are_read() {
        let c = parse_change(
            "table public.accounts: UPDATE: id[bigint]:5 balance[bigint]:-11 note[text]:'it''s: [x]' ts[timestamp with time zone]:'2026-01-01 00:00:00+00' gone[text]:null big[text]:unchanged-toast-datum",
        )
        .expect("a change");
        assert_eq!(c.table, "public.accounts");
        assert_eq!(c.op, Op::Update);
        assert_eq!(c.columns.len(), 6);
        assert_eq!(
            c.column("id").and_then(|c| c.value.clone()).as_deref(),
            Some("5")
        );
        assert_eq!(c.columns[1].value.as_deref(), Some("-11"));
        assert_eq!(c.columns[2].value.as_deref(), Some("'it''s: [x]'"));
        assert_eq!(c.columns[3].type_name, "timestamp with time zone");
        assert_eq!(c.columns[4].value, None);
        assert!(!c.columns[4].unchanged);
        assert!(c.columns[5].unchanged);
        let d = parse_change("table public.entries: DELETE: account_id[bigint]:7 seq[bigint]:2")
            .expect("a delete");
        assert_eq!(d.op, Op::Delete);
        assert_eq!(d.columns.len(), 2);
        let k = parse_change(
            "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 v[text]:'x'",
        )
        .expect("a key update");
        assert_eq!(
            k.column("id").and_then(|c| c.value.clone()).as_deref(),
            Some("2")
        );
        assert!(parse_change("BEGIN 529").is_none());
        assert!(parse_change("COMMIT 529").is_none());
        assert!(parse_change("table public.t: TRUNCATE: (no-flags)").is_none());
        assert!(parse_change("table public.t: INSERT: v[text]:'unterminated").is_none());
    }
}
