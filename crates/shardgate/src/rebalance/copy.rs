//! Streaming rows from a source shard to a target: binary `COPY (SELECT
//! ...) TO STDOUT` on the source, the router's COPY splitter to cut rows
//! and read each row's key, and `COPY ... FROM STDIN` on the target with
//! only the rows that move. Rows are forwarded as bytes; only the key is
//! decoded.

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
    /// Rows written to the target.
    pub rows: u64,
    /// Keys of those rows (empty for a whole-table copy).
    pub keys: Vec<ShardKey>,
}

/// Which rows to copy.
pub(super) enum Select<'a> {
    /// Every row (a reference table).
    All,
    /// The rows whose key `keep` accepts, the key being column `field`.
    Keys {
        /// The table's rule.
        rule: &'a TableRule,
        /// The key's position among the copied columns.
        field: usize,
        /// Whether a row with this key is copied.
        keep: &'a (dyn Fn(&ShardKey) -> bool + Sync),
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
        }
    }
}

fn copy_error(conn: &Conn, e: impl std::fmt::Display) -> RebalanceError {
    RebalanceError::Invalid(format!("COPY data from {}: {e}", conn.node))
}

/// Copies the selected rows of `table` from `src` to `dst`.
pub(super) async fn copy_rows(
    src: &Conn,
    dst: &Conn,
    table: &TableName,
    cols: &[String],
    select: Select<'_>,
    throttle: &mut Throttle,
    status: &JobStatus,
) -> Result<Copied, RebalanceError> {
    let list = cols
        .iter()
        .map(|c| TableName::new(None, c).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let out = src
        .client
        .copy_out(&format!(
            "COPY (SELECT {list} FROM {table}) TO STDOUT (FORMAT binary)"
        ))
        .await
        .map_err(|e| src.err(e))?;
    let sink = dst
        .client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} ({list}) FROM STDIN (FORMAT binary)"))
        .await
        .map_err(|e| dst.err(e))?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    let mut splitter = match &select {
        Select::All => CopySplitter::unkeyed(CopyFormat::Binary, b'\t', b'"', b'"', "", false),
        Select::Keys { field, .. } => {
            CopySplitter::new(CopyFormat::Binary, b'\t', b'"', b'"', "", false, *field)
        }
    };
    let mut copied = Copied::default();
    let mut chunk = BytesMut::with_capacity(CHUNK);
    let mut rows = Vec::new();
    let mut header_sent = false;
    let mut finished = false;
    loop {
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
        if !header_sent {
            if let Some(h) = splitter.header_bytes() {
                chunk.extend_from_slice(h);
                header_sent = true;
            }
        }
        for row in &rows {
            if let Select::Keys { rule, keep, .. } = &select {
                let key = match &row.key {
                    Some(FieldValue::Binary(b)) => {
                        ShardKey::parse_binary(rule.key_type, b).map_err(|e| copy_error(src, e))?
                    }
                    _ => continue,
                };
                if !keep(&key) {
                    continue;
                }
                copied.keys.push(key);
            }
            chunk.extend_from_slice(splitter.row_bytes(row));
            copied.rows += 1;
            status
                .rows_copied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        status
            .bytes_copied
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        throttle.account(data.len()).await;
        if finished {
            break;
        }
        if chunk.len() >= CHUNK {
            sink.send(chunk.split().freeze())
                .await
                .map_err(|e| dst.err(e))?;
        }
    }
    if !header_sent {
        chunk.extend_from_slice(BINARY_SIGNATURE);
        chunk.extend_from_slice(&[0; 8]);
    }
    chunk.extend_from_slice(&BINARY_TRAILER);
    sink.send(chunk.split().freeze())
        .await
        .map_err(|e| dst.err(e))?;
    sink.as_mut().finish().await.map_err(|e| dst.err(e))?;
    Ok(copied)
}
