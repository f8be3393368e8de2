//! A slot's changes streamed over the logical replication protocol
//! (docs/ARCHITECTURE.md §10, catch-up): `START_REPLICATION SLOT ...
//! LOGICAL` on a `replication = database` connection. The server decodes
//! its WAL once, in order, and resumes after a stop from the position the
//! job confirmed: the job confirms a commit only once the changes before
//! it are committed on the targets' stages, so that position is the job's
//! durable catch-up LSN. (The SQL functions `pg_logical_slot_*_changes`
//! decode again from the slot's restart point on every call, whose cost
//! grows with the writes since then.)
//!
//! A task owns the socket: it forwards each change and each position the
//! server reports, in the order they come, and sends the confirmed
//! position every few seconds (and when asked, with a request for the
//! server's position), so the server never times the stream out while the
//! job does something else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use shardgate_pool::{ConnectParams, ServerConn};
use shardgate_protocol::backend::{tag, ErrorFields};
use shardgate_protocol::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::RebalanceError;
use crate::config::Config;

/// Largest message accepted from the server.
const MAX_MESSAGE: usize = 1 << 30;

/// Batches of messages (each what one read of the socket held) buffered
/// between the socket and the job.
const BUFFERED: usize = 64;

/// Room made in the read buffer before each read of the socket.
const READ_SIZE: usize = 256 * 1024;

/// How often the task tells the server the confirmed position.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What the stream carries, in the server's order.
#[derive(Debug)]
pub(super) enum Streamed {
    /// One line of `test_decoding` output; `lsn` is where a change is, or
    /// for a `COMMIT` line the end of the commit record.
    Change {
        /// Its position.
        lsn: u64,
        /// The line.
        data: String,
    },
    /// The server has sent everything decoded up to this position.
    Position(u64),
}

/// A running stream of one slot.
pub(super) struct SlotStream {
    /// The node.
    pub node: String,
    rx: mpsc::Receiver<Result<Vec<Streamed>, RebalanceError>>,
    /// Received and not taken yet.
    ready: std::collections::VecDeque<Streamed>,
    confirmed: Arc<AtomicU64>,
    ask: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlotStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stream_error(node: &str, message: impl Into<String>) -> RebalanceError {
    RebalanceError::Stream {
        node: node.to_owned(),
        message: message.into(),
    }
}

impl SlotStream {
    /// Connects to `node` and starts streaming `slot` from the position it
    /// confirmed last.
    pub async fn start(
        config: &Config,
        node: &str,
        slot: &str,
    ) -> Result<SlotStream, RebalanceError> {
        let m = super::db::login(config)?;
        let params = ConnectParams {
            addr: node.into(),
            user: m.user.clone(),
            password: m.password.clone(),
            database: config.sharding.rebalance_database.clone(),
            connect_timeout: Duration::from_secs(10),
            prepared_capacity: 0,
            tls: std::sync::Arc::new(m.tls.clone()),
        };
        let mut conn = ServerConn::connect_with(
            &params,
            &[
                ("replication", "database"),
                ("application_name", "shardgate-rebalance"),
            ],
        )
        .await
        .map_err(|e| stream_error(node, e.to_string()))?;
        let mut out = BytesMut::new();
        shardgate_protocol::frontend::encode_query(
            &format!(
                "START_REPLICATION SLOT \"{slot}\" LOGICAL 0/0 (\"skip-empty-xacts\" '1', \"include-xids\" '0')"
            ),
            &mut out,
        );
        conn.stream
            .send_all(&out)
            .await
            .map_err(|e| stream_error(node, e.to_string()))?;
        // Up to CopyBothResponse.
        loop {
            let (t, body) = conn
                .read_message()
                .await
                .map_err(|e| stream_error(node, e.to_string()))?;
            match t {
                tag::COPY_BOTH => break,
                tag::ERROR_RESPONSE => {
                    let f = ErrorFields::decode(&body).unwrap_or_default();
                    return Err(stream_error(node, format!("{} {}", f.code, f.message)));
                }
                _ => {}
            }
        }
        let (tx, rx) = mpsc::channel(BUFFERED);
        let (ask, asked) = mpsc::channel(4);
        let confirmed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(pump(conn, node.to_owned(), tx, asked, confirmed.clone()));
        Ok(SlotStream {
            node: node.to_owned(),
            rx,
            ready: std::collections::VecDeque::new(),
            confirmed,
            ask,
            task,
        })
    }

    /// The next message, waiting at most `wait`; `Ok(None)` when none came.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Streamed>, RebalanceError> {
        if let Some(m) = self.ready.pop_front() {
            return Ok(Some(m));
        }
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(batch)) => {
                self.ready.extend(batch?);
                Ok(self.ready.pop_front())
            }
            Ok(None) => Err(stream_error(&self.node, "the replication stream ended")),
        }
    }

    /// Records that everything before `lsn` is durable on the targets; the
    /// server learns it with the next status.
    pub fn confirm(&self, lsn: u64) {
        self.confirmed.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Asks the server for its position now (a [`Streamed::Position`]
    /// follows everything it sent before).
    pub fn ask_position(&self) {
        let _ = self.ask.try_send(());
    }
}

/// A Standby Status Update: everything before `lsn` written, flushed and
/// applied; `reply` asks the server to answer with its position.
fn status_update(lsn: u64, reply: bool) -> BytesMut {
    // Microseconds since 2000-01-01.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64 - 946_684_800_000_000)
        .unwrap_or(0);
    let mut out = BytesMut::with_capacity(40);
    out.put_u8(b'd');
    out.put_i32(4 + 1 + 8 * 4 + 1);
    out.put_u8(b'r');
    out.put_u64(lsn);
    out.put_u64(lsn);
    out.put_u64(lsn);
    out.put_i64(now);
    out.put_u8(u8::from(reply));
    out
}

/// One decoded CopyData of the stream.
fn decode_copy_data(mut body: BytesMut, node: &str) -> Result<Option<Streamed>, RebalanceError> {
    let short = || stream_error(node, "a short replication message");
    match body.first() {
        Some(b'w') => {
            if body.len() < 25 {
                return Err(short());
            }
            body.advance(1);
            let start = body.get_u64();
            let _end = body.get_u64();
            let _time = body.get_i64();
            Ok(Some(Streamed::Change {
                lsn: start,
                data: String::from_utf8_lossy(&body).into_owned(),
            }))
        }
        Some(b'k') => {
            if body.len() < 18 {
                return Err(short());
            }
            body.advance(1);
            Ok(Some(Streamed::Position(body.get_u64())))
        }
        _ => Ok(None),
    }
}

/// The task: server messages to `tx` (in batches: what one read held),
/// statuses to the server.
async fn pump(
    conn: ServerConn,
    node: String,
    tx: mpsc::Sender<Result<Vec<Streamed>, RebalanceError>>,
    mut asked: mpsc::Receiver<()>,
    confirmed: Arc<AtomicU64>,
) {
    let ServerConn {
        stream,
        mut read_buf,
        ..
    } = conn;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut pending: Vec<Streamed> = Vec::new();
    let result: Result<(), RebalanceError> = async {
        loop {
            if pending.is_empty() {
                while let Some(h) = Header::complete(&read_buf, MAX_MESSAGE)
                    .map_err(|e| stream_error(&node, e.to_string()))?
                {
                    let mut msg = read_buf.split_to(h.total);
                    msg.advance(5);
                    match h.tag {
                        b'd' => {
                            if let Some(m) = decode_copy_data(msg, &node)? {
                                // BEGIN lines say nothing catch-up needs.
                                if !matches!(&m, Streamed::Change { data, .. } if data.starts_with("BEGIN")) {
                                    pending.push(m);
                                }
                            }
                        }
                        tag::ERROR_RESPONSE => {
                            let f = ErrorFields::decode(&msg).unwrap_or_default();
                            return Err(stream_error(&node, format!("{} {}", f.code, f.message)));
                        }
                        _ => {}
                    }
                }
            }
            tokio::select! {
                permit = tx.reserve(), if !pending.is_empty() => {
                    let Ok(permit) = permit else { return Ok(()) };
                    permit.send(Ok(std::mem::take(&mut pending)));
                }
                read = async {
                    read_buf.reserve(READ_SIZE);
                    rd.read_buf(&mut read_buf).await
                }, if pending.is_empty() => {
                    match read {
                        Ok(0) => return Err(stream_error(&node, "the server closed the replication connection")),
                        Ok(_) => {}
                        Err(e) => return Err(stream_error(&node, e.to_string())),
                    }
                }
                _ = tick.tick() => {
                    let out = status_update(confirmed.load(Ordering::Acquire), false);
                    wr.write_all(&out).await.map_err(|e| stream_error(&node, e.to_string()))?;
                    wr.flush().await.map_err(|e| stream_error(&node, e.to_string()))?;
                }
                Some(()) = asked.recv() => {
                    let out = status_update(confirmed.load(Ordering::Acquire), true);
                    wr.write_all(&out).await.map_err(|e| stream_error(&node, e.to_string()))?;
                    wr.flush().await.map_err(|e| stream_error(&node, e.to_string()))?;
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_messages_decode() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(42);
        w.put_u64(50);
        w.put_i64(0);
        w.put_slice(b"COMMIT");
        match decode_copy_data(w, "n").expect("ok") {
            Some(Streamed::Change { lsn, data }) => {
                assert_eq!(lsn, 42);
                assert_eq!(data, "COMMIT");
            }
            other => panic!("{other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(77);
        k.put_i64(0);
        k.put_u8(1);
        assert!(matches!(
            decode_copy_data(k, "n").expect("ok"),
            Some(Streamed::Position(77))
        ));
        assert!(decode_copy_data(BytesMut::from(&b"w1"[..]), "n").is_err());
        let s = status_update(0x10, true);
        assert_eq!(s.len(), 1 + 4 + 34);
        assert_eq!(s[5], b'r');
        assert_eq!(*s.last().expect("reply flag"), 1);
    }
}
