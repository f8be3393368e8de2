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

impl Session {
    /// Runs `stmts` (one query string, more than one statement) one at a
    /// time; see the module documentation.
    pub(super) async fn run_one_by_one(&mut self, stmts: &[&str]) -> Result<(), SessionError> {
        self.flush_client().await?;
        self.batch_hold = true;
        let r = self.run_statements(stmts).await;
        self.batch_hold = false;
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
            let mark = self.cout.len();
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
            failed = take_ready(&mut self.cout, mark);
            // The statement's answer is complete: the client may have it.
            self.batch_hold = false;
            self.flush_client().await?;
            self.batch_hold = true;
            if failed {
                break;
            }
        }
        if self.vtx.as_ref().is_some_and(|v| v.implicit) {
            let mark = self.cout.len();
            self.end_virtual(!failed, true).await?;
            // The client sees the end's errors, not its ReadyForQuery.
            keep_errors(&mut self.cout, mark);
        }
        Ok(())
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

/// The messages of `out` from `mark` (a message boundary) on: their
/// starts and type bytes.
fn messages(out: &[u8], mark: usize) -> Vec<(usize, u8)> {
    let mut found = Vec::new();
    let mut pos = mark;
    while pos + 5 <= out.len() {
        found.push((pos, out[pos]));
        let len = i32::from_be_bytes([out[pos + 1], out[pos + 2], out[pos + 3], out[pos + 4]]);
        pos += 1 + len.max(4) as usize;
    }
    found
}

/// Removes the ReadyForQuery that ends one statement's answer (written
/// from `mark` on); whether the answer holds an error.
fn take_ready(out: &mut BytesMut, mark: usize) -> bool {
    let found = messages(out, mark);
    if let Some(&(at, btag::READY_FOR_QUERY)) = found.last() {
        out.truncate(at);
    }
    found.iter().any(|&(_, t)| t == btag::ERROR_RESPONSE)
}

/// Keeps only the errors and notices of what was written from `mark` on.
fn keep_errors(out: &mut BytesMut, mark: usize) {
    let found = messages(out, mark);
    let tail = out.split_off(mark);
    let mut ends = found.iter().map(|&(at, _)| at - mark).skip(1);
    for &(at, t) in &found {
        let start = at - mark;
        let end = ends.next().unwrap_or(tail.len()).min(tail.len());
        if matches!(t, btag::ERROR_RESPONSE | btag::NOTICE_RESPONSE) {
            out.extend_from_slice(&tail[start..end]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_protocol::PgError;

    #[test]
    fn the_ready_for_query_ending_an_answer_is_taken_off() {
        let mut out = BytesMut::from(&b"x"[..]);
        backend::command_complete("INSERT 0 1", &mut out);
        backend::ready_for_query(b'T', &mut out);
        let mut want = BytesMut::from(&b"x"[..]);
        backend::command_complete("INSERT 0 1", &mut want);
        assert!(!take_ready(&mut out, 1));
        assert_eq!(out, want);
    }

    #[test]
    fn an_answer_with_an_error_is_reported_failed() {
        let mut out = BytesMut::new();
        PgError::error("42P01", "relation \"t\" does not exist").encode(&mut out);
        backend::ready_for_query(b'E', &mut out);
        assert!(take_ready(&mut out, 0));
        assert_eq!(messages(&out, 0).len(), 1);
    }

    #[test]
    fn only_errors_and_notices_of_a_commit_are_kept() {
        let mut out = BytesMut::from(&b"ab"[..]);
        backend::notice("25P01", "there is no transaction in progress", &mut out);
        backend::command_complete("COMMIT", &mut out);
        PgError::error("40001", "could not serialize").encode(&mut out);
        backend::ready_for_query(b'I', &mut out);
        keep_errors(&mut out, 2);
        let kinds: Vec<u8> = messages(&out, 2).into_iter().map(|(_, t)| t).collect();
        assert_eq!(kinds, vec![btag::NOTICE_RESPONSE, btag::ERROR_RESPONSE]);
        assert_eq!(&out[..2], b"ab");
    }
}
