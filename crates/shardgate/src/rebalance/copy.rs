//! Streaming rows from a source shard to a target: binary `COPY (SELECT
//! ...) TO STDOUT` on the source, the router's COPY splitter to cut rows
//! and read each row's key, and `COPY ... FROM STDIN` on the target with
//! only the rows that move. Rows are forwarded as bytes; only the key is
//! decoded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use shardgate_router::copy::{
    CopyFormat, CopySplitter, FieldValue, BINARY_SIGNATURE, BINARY_TRAILER,
};
use shardgate_shardmap::{ShardKey, TableName, TableRule};

use super::db::Conn;
use super::{JobStatus, RebalanceError};

/// Bytes buffered before a CopyData goes to the target.
const CHUNK: usize = 256 * 1024;

/// What a copy moved.
#[derive(Debug, Default)]
pub(super) struct Copied {
    /// Rows written, per target shard.
    pub rows_to: HashMap<usize, u64>,
    /// Keys of the rows that left the source (empty for a whole-table copy).
    pub keys: Vec<ShardKey>,
}

impl Copied {
    /// Rows written in all.
    pub fn rows(&self) -> u64 {
        self.rows_to.values().sum()
    }
}

/// Where rows go.
pub(super) enum Route<'a> {
    /// Every row to this shard (a reference table).
    All(usize),
    /// Each row to the shard `to` names for its key, or nowhere (`None`:
    /// the row stays); the key is column `field`.
    Keys {
        /// The table's rule.
        rule: &'a TableRule,
        /// The key's position among the copied columns.
        field: usize,
        /// The shard a row with this key moves to.
        to: &'a (dyn Fn(&ShardKey) -> Option<usize> + Sync),
    },
}

/// The columns COPY can write, in table order (dropped and generated
/// columns left out), read on `conn`.
pub(super) async fn columns(conn: &Conn, table: &TableName) -> Result<Vec<String>, RebalanceError> {
    let rows = conn
        .client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[&table.to_string()],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Limits a copy's read rate to `mb_s` megabytes per second (0: none).
/// The most time a throttled copy may be behind its rate and catch up.
const MAX_CREDIT: Duration = Duration::from_secs(1);

pub(super) struct Throttle {
    mb_s: u64,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    /// A throttle starting now.
    pub fn new(mb_s: u64) -> Throttle {
        Throttle {
            mb_s,
            start: Instant::now(),
            bytes: 0,
        }
    }

    async fn account(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        if self.mb_s == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / (self.mb_s as f64 * 1e6));
        let spent = self.start.elapsed();
        if due > spent {
            tokio::time::sleep(due - spent).await;
        } else if spent > due + MAX_CREDIT {
            // Time not spent copying (a PAUSE JOB, a slow source) earns at
            // most MAX_CREDIT of burst above the rate.
            self.start = Instant::now() - (due + MAX_CREDIT);
        }
    }
}

fn copy_error(conn: &Conn, e: impl std::fmt::Display) -> RebalanceError {
    RebalanceError::Invalid(format!("COPY data from {}: {e}", conn.node))
}

/// One target's COPY in progress.
struct Target {
    sink: std::pin::Pin<Box<tokio_postgres::CopyInSink<bytes::Bytes>>>,
    chunk: BytesMut,
    rows: u64,
}

/// Which rows a copy reads and where it writes them.
pub(super) struct Copying<'a> {
    /// The source table.
    pub table: &'a TableName,
    /// Its columns copied ([`columns`]).
    pub cols: &'a [String],
    /// A condition on the source's rows (empty: every row).
    pub filter: String,
    /// The table written on the targets.
    pub into: TableName,
}

impl<'a> Copying<'a> {
    /// Every row of `table` into the same table on the targets.
    pub fn whole(table: &'a TableName, cols: &'a [String]) -> Copying<'a> {
        Copying {
            table,
            cols,
            filter: String::new(),
            into: table.clone(),
        }
    }
}

/// Copies the rows `what` names from `src` to the targets `route` picks,
/// each into the writer connection of its shard (in its transaction).
pub(super) async fn copy_rows(
    src: &Conn,
    writers: &HashMap<usize, &Conn>,
    what: &Copying<'_>,
    route: Route<'_>,
    throttle: &mut Throttle,
    status: &JobStatus,
) -> Result<Copied, RebalanceError> {
    let table = what.table;
    let list = what
        .cols
        .iter()
        .map(|c| TableName::new(None, c).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let filter = if what.filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", what.filter)
    };
    let out = src
        .client
        .copy_out(&format!(
            "COPY (SELECT {list} FROM {table}{filter}) TO STDOUT (FORMAT binary)"
        ))
        .await
        .map_err(|e| src.err(e))?;
    futures_util::pin_mut!(out);
    let mut splitter = match &route {
        Route::All(_) => CopySplitter::unkeyed(CopyFormat::Binary, b'\t', b'"', b'"', "", false),
        Route::Keys { field, .. } => {
            CopySplitter::new(CopyFormat::Binary, b'\t', b'"', b'"', "", false, *field)
        }
    };
    let copy_in = format!("COPY {} ({list}) FROM STDIN (FORMAT binary)", what.into);
    let mut targets: HashMap<usize, Target> = HashMap::new();
    let mut copied = Copied::default();
    let mut rows = Vec::new();
    let mut finished = false;
    while !finished {
        let data = match out.next().await {
            Some(d) => d.map_err(|e| src.err(e))?,
            None => {
                finished = true;
                bytes::Bytes::new()
            }
        };
        if finished {
            rows = splitter.finish().map_err(|e| copy_error(src, e))?;
        } else {
            splitter
                .feed_into(&data, &mut rows)
                .map_err(|e| copy_error(src, e))?;
        }
        for row in &rows {
            let to = match &route {
                Route::All(to) => *to,
                Route::Keys { rule, to, .. } => {
                    let key = match &row.key {
                        Some(FieldValue::Binary(b)) => ShardKey::parse_binary(rule.key_type, b)
                            .map_err(|e| copy_error(src, e))?,
                        _ => continue,
                    };
                    let Some(to) = to(&key) else { continue };
                    copied.keys.push(key);
                    to
                }
            };
            let target = match targets.entry(to) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let w = writers.get(&to).ok_or_else(|| {
                        RebalanceError::Invalid(format!("no connection to shard {to}"))
                    })?;
                    let sink = w
                        .client
                        .copy_in::<_, bytes::Bytes>(&copy_in)
                        .await
                        .map_err(|e| w.err(e))?;
                    let mut chunk = BytesMut::with_capacity(CHUNK);
                    chunk.extend_from_slice(BINARY_SIGNATURE);
                    chunk.extend_from_slice(&[0; 8]);
                    e.insert(Target {
                        sink: Box::pin(sink),
                        chunk,
                        rows: 0,
                    })
                }
            };
            target.chunk.extend_from_slice(splitter.row_bytes(row));
            target.rows += 1;
            status
                .rows_copied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if target.chunk.len() >= CHUNK {
                let w = &writers[&to];
                target
                    .sink
                    .send(target.chunk.split().freeze())
                    .await
                    .map_err(|e| w.err(e))?;
            }
        }
        status
            .bytes_copied
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        throttle.account(data.len()).await;
        status.checkpoint().await?;
    }
    for (to, mut target) in targets {
        let w = &writers[&to];
        target.chunk.extend_from_slice(&BINARY_TRAILER);
        target
            .sink
            .send(target.chunk.split().freeze())
            .await
            .map_err(|e| w.err(e))?;
        let written = target.sink.as_mut().finish().await.map_err(|e| w.err(e))?;
        if written != target.rows {
            return Err(RebalanceError::Verify(format!(
                "shard {to} took {written} rows of {table}, {} were sent",
                target.rows
            )));
        }
        copied.rows_to.insert(to, written);
    }
    Ok(copied)
}
