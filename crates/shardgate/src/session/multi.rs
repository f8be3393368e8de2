//! A simple-protocol query string whose statements go to different places
//! (`CREATE TABLE t (...); INSERT INTO t ...` on a sharded cluster): run
//! one statement at a time as Postgres runs a query string: outside a
//! transaction its statements share an implicit transaction block (a
//! `COMMIT` or `ROLLBACK` in the string ends it with a warning, a `BEGIN`
//! makes it the client's), each statement's answer goes out in turn, the
//! first error stops the rest and undoes the implicit block, and one
//! ReadyForQuery ends the string.

use bytes::BytesMut;
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend;

use super::sharded::{tx_control, TxControl};
use super::{Session, SessionError};

/// The client output of a query string run one statement at a time: it
/// streams as usual, minus each statement's ReadyForQuery.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Bytes at the start of the output that end a message partly sent.
    partial: usize,
    /// An ErrorResponse went by since the last statement began.
    failed: bool,
}

impl Batch {
    /// Takes the ReadyForQuery messages out of `out` (which starts at a
    /// message boundary, past `partial`) and notes errors; returns how many
    /// bytes of it may go to the client (all but a message header cut short).
    pub(super) fn pass(&mut self, out: &mut BytesMut) -> usize {
        if self.partial >= out.len() {
            self.partial -= out.len();
            return out.len();
        }
        let mut pos = std::mem::take(&mut self.partial);
        while pos + 5 <= out.len() {
            let len = i32::from_be_bytes([out[pos + 1], out[pos + 2], out[pos + 3], out[pos + 4]]);
            let end = pos + 1 + len.max(4) as usize;
            match out[pos] {
                btag::READY_FOR_QUERY if end <= out.len() => {
                    out.copy_within(end.., pos);
                    out.truncate(out.len() - (end - pos));
                    continue;
                }
                // Not all here yet: it waits.
                btag::READY_FOR_QUERY => return pos,
                btag::ERROR_RESPONSE => self.failed = true,
                _ => {}
            }
            if end > out.len() {
                // A large message streamed: the rest of it follows later.
                self.partial = end - out.len();
                return out.len();
            }
            pos = end;
        }
        pos
    }
}

impl Session {
    /// Runs `stmts` (one query string, more than one statement) one at a
    /// time; see the module documentation.
    pub(super) async fn run_one_by_one(&mut self, stmts: &[&str]) -> Result<(), SessionError> {
        self.flush_client().await?;
        self.batch = Some(Box::default());
        let r = self.run_statements(stmts).await;
        self.batch = None;
        r?;
        backend::ready_for_query(self.client_status(), &mut self.cout);
        self.flush_client().await
    }

    async fn run_statements(&mut self, stmts: &[&str]) -> Result<(), SessionError> {
        let mut failed = false;
        for stmt in stmts {
            if self.enter_statement(tx_control(stmt)) {
                continue;
            }
            let mut msg = BytesMut::new();
            frontend::encode_query(stmt, &mut msg);
            Box::pin(self.on_query_sharded(&msg, stmt)).await?;
            // A statement for one shard was forwarded: its answer is relayed here.
            self.drain_current().await?;
            // A read whose node failed before answering runs again now.
            while let Some(retry) = self.pending_retry.take() {
                Box::pin(self.retry_read(retry)).await?;
                self.drain_current().await?;
            }
            // Its whole answer goes by the filter, which saw any error.
            self.flush_client().await?;
            failed = self
                .batch
                .as_deref_mut()
                .is_some_and(|b| std::mem::take(&mut b.failed));
            if failed {
                break;
            }
        }
        if self.vtx.as_ref().is_some_and(|v| v.implicit) {
            // The implicit block ends without a tag of its own: the client
            // sees only its errors.
            self.end_virtual(!failed, true).await?;
        }
        self.flush_client().await
    }

    /// Before statement `tc` (its transaction control, if any) of a string:
    /// opens the string's implicit block when no transaction is open, and
    /// handles a `BEGIN` inside that block (it becomes the client's) by
    /// itself, returning true. A `COMMIT` or `ROLLBACK` in the block ends
    /// it as the client's would, after Postgres's warning.
    fn enter_statement(&mut self, tc: Option<TxControl>) -> bool {
        let in_block = self.vtx.as_ref().is_some_and(|v| v.implicit);
        match tc {
            None if self.vtx.is_none() => {
                // Its CommandComplete and ReadyForQuery are not the client's.
                self.begin_virtual("BEGIN", &mut BytesMut::new());
                if let Some(v) = self.vtx.as_mut() {
                    v.implicit = true;
                }
                false
            }
            Some(TxControl::Begin) if in_block => {
                if let Some(v) = self.vtx.as_mut() {
                    v.implicit = false;
                }
                backend::command_complete("BEGIN", &mut self.cout);
                true
            }
            Some(TxControl::End(_)) if in_block => {
                backend::warning(
                    "25P01",
                    "there is no transaction in progress",
                    &mut self.cout,
                );
                if let Some(v) = self.vtx.as_mut() {
                    v.implicit = false;
                }
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_protocol::PgError;

    /// The message types in `out`.
    fn kinds(out: &[u8]) -> Vec<u8> {
        let mut found = Vec::new();
        let mut pos = 0;
        while pos + 5 <= out.len() {
            found.push(out[pos]);
            let len = i32::from_be_bytes([out[pos + 1], out[pos + 2], out[pos + 3], out[pos + 4]]);
            pos += 1 + len as usize;
        }
        found
    }

    #[test]
    fn ready_for_query_is_taken_out_and_errors_are_noted() {
        let mut out = BytesMut::new();
        backend::command_complete("INSERT 0 1", &mut out);
        backend::ready_for_query(b'T', &mut out);
        PgError::error("22012", "division by zero").encode(&mut out);
        backend::ready_for_query(b'E', &mut out);
        let mut batch = Batch::default();
        let ready = batch.pass(&mut out);
        assert_eq!(ready, out.len());
        assert_eq!(kinds(&out), vec![b'C', b'E']);
        assert!(batch.failed);
    }

    #[test]
    fn a_message_streamed_in_pieces_is_passed_through_whole() {
        let mut row = BytesMut::new();
        backend::command_complete("SELECT 1", &mut row);
        let mut batch = Batch::default();
        // The first 3 bytes of a message: its header is not complete yet.
        let mut out = BytesMut::from(&row[..3]);
        assert_eq!(batch.pass(&mut out), 0);
        // Its header and part of its body: sent, the rest announced.
        let mut out = BytesMut::from(&row[..7]);
        assert_eq!(batch.pass(&mut out), 7);
        // The rest, then the first byte of a ReadyForQuery header and
        // then all of it: held back until whole, then taken out.
        let mut out = BytesMut::from(&row[7..]);
        let mut ready_msg = BytesMut::new();
        backend::ready_for_query(b'I', &mut ready_msg);
        out.extend_from_slice(&ready_msg[..5]);
        let ready = batch.pass(&mut out);
        assert_eq!(&out[..ready], &row[7..]);
        let mut out = BytesMut::from(&ready_msg[..]);
        assert_eq!(batch.pass(&mut out), 0);
        assert!(out.is_empty());
        assert!(!batch.failed);
    }
}
