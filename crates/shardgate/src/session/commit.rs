//! Ending a transaction on several shards: plain COMMIT/ROLLBACK, or
//! two-phase commit when `two_phase_commit = true`.

use std::sync::Arc;

use bytes::BytesMut;
use shardgate_protocol::backend::{tag as btag, ErrorFields};
use shardgate_protocol::frontend;
use shardgate_protocol::{Header, PgError};
use tokio::io::AsyncReadExt;

use super::fanout::Part;
use super::{reserve, Session};
use crate::relay::MAX_SERVER_MESSAGE;
use crate::twophase::{failpoint, finish_later, Coordinator, Resolution};

/// What one statement did on one part.
type Outcome = Result<(), ErrorFields>;

impl Session {
    /// Runs `sql(i)` on every part at once and waits for all of them.
    pub(super) async fn exec_all(
        &mut self,
        parts: &mut [Part],
        sql: impl Fn(usize) -> String,
    ) -> Vec<Outcome> {
        let mut sent = vec![false; parts.len()];
        for (i, p) in parts.iter_mut().enumerate() {
            if p.b.conn.broken {
                continue;
            }
            let mut out = BytesMut::new();
            frontend::encode_query(&sql(i), &mut out);
            sent[i] = p.b.conn.stream.send_all(&out).await.is_ok();
            if !sent[i] {
                p.b.conn.broken = true;
            }
        }
        let mut outcomes = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter_mut().enumerate() {
            outcomes.push(if sent[i] {
                read_until_ready(p).await
            } else {
                Err(lost(&p.b.conn.addr))
            });
        }
        outcomes
    }

    /// Ends the transaction every part holds. Commits with two-phase commit
    /// when it is enabled and several shards take part. Returns the error
    /// the client must see (then nothing was committed, unless the decision
    /// had been recorded).
    pub(super) async fn finish_parts(
        &mut self,
        parts: &mut [Part],
        commit: bool,
    ) -> Option<PgError> {
        let coordinator = self.runtime.two_phase.clone();
        let two_phase = commit && parts.len() > 1 && coordinator.is_some();
        if !two_phase {
            let end = if commit { "COMMIT" } else { "ROLLBACK" };
            let outcomes = self.exec_all(parts, |_| end.to_owned()).await;
            return first_error(&outcomes);
        }
        let coordinator = coordinator.expect("checked");
        let gid = coordinator.next_gid();
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        let outcomes = self.exec_all(parts, |_| prepare.clone()).await;
        if let Some(e) = first_error(&outcomes) {
            // Whatever prepared is rolled back; the failed ones already were.
            let prepared: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
            let rollback = format!("ROLLBACK PREPARED '{gid}'");
            let rolled_back = self
                .exec_all(parts, |i| {
                    if prepared[i] {
                        rollback.clone()
                    } else {
                        "ROLLBACK".into()
                    }
                })
                .await;
            // A participant whose connection was lost may have prepared
            // without the answer arriving, or missed its ROLLBACK PREPARED:
            // left alone, it would hold its locks until the next start.
            if outcomes.iter().chain(&rolled_back).any(is_lost) {
                self.finish_later(coordinator, gid, Resolution::Rollback);
            }
            return Some(e);
        }
        failpoint("before_decision");
        // Synced on the blocking pool: an fsync must not hold up the
        // runtime thread's other clients (the only thread with `workers = 1`).
        let decided = {
            let (c, g) = (coordinator.clone(), gid.clone());
            tokio::task::spawn_blocking(move || c.decide_commit(&g))
                .await
                .unwrap_or_else(|e| Err(coordinator.log_error(std::io::Error::other(e))))
        };
        if let Err(e) = decided {
            tracing::error!(error = %e, %gid, "cannot record the commit decision; rolling back");
            let rollback = format!("ROLLBACK PREPARED '{gid}'");
            let _ = self.exec_all(parts, |_| rollback.clone()).await;
            return Some(PgError::error("58030", e.to_string()));
        }
        failpoint("after_decision");
        let commit = format!("COMMIT PREPARED '{gid}'");
        let outcomes = self.exec_all(parts, |_| commit.clone()).await;
        if outcomes.iter().all(Result::is_ok) {
            coordinator.finished(&gid);
        } else {
            // Committed by decision: finished on the shards that missed the
            // COMMIT PREPARED as soon as they can be reached (the prepared
            // transaction holds its locks until then).
            self.finish_later(coordinator, gid, Resolution::Commit);
        }
        None
    }
}

impl Session {
    /// Finishes `gid` on the shards in the background ([`finish_later`]).
    fn finish_later(&self, coordinator: Arc<Coordinator>, gid: String, resolution: Resolution) {
        tracing::warn!(%gid, ?resolution, "a shard's connection was lost during two-phase commit; finishing it in the background");
        let target = self.runtime.snapshot().recovery_target();
        tokio::spawn(finish_later(coordinator, target, gid, resolution));
    }
}

/// Whether an outcome is a lost connection (see [`lost`]).
fn is_lost(outcome: &Outcome) -> bool {
    matches!(outcome, Err(e) if e.code == LOST)
}

/// SQLSTATE of a participant whose connection was lost.
const LOST: &str = "08006";

fn lost(addr: &str) -> ErrorFields {
    ErrorFields {
        severity: "ERROR".into(),
        code: LOST.into(),
        message: format!("connection to server {addr} was lost"),
        ..ErrorFields::default()
    }
}

fn first_error(outcomes: &[Outcome]) -> Option<PgError> {
    outcomes
        .iter()
        .find_map(|o| o.as_ref().err())
        .map(|f| PgError::error(&f.code, f.message.clone()))
}

/// Reads one part's answers up to ReadyForQuery; keeps its transaction status.
async fn read_until_ready(p: &mut Part) -> Outcome {
    let mut error = None;
    loop {
        let conn = &mut *p.b.conn;
        while let Ok(Some(h)) = Header::complete(&conn.read_buf, MAX_SERVER_MESSAGE) {
            let msg = conn.read_buf.split_to(h.total);
            match h.tag {
                btag::ERROR_RESPONSE if error.is_none() => {
                    error = ErrorFields::decode(&msg[5..]).ok();
                }
                btag::READY_FOR_QUERY => {
                    p.b.ex.status = msg.get(5).copied().unwrap_or(b'E');
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
                _ => {}
            }
        }
        reserve(&mut conn.read_buf);
        match conn.stream.read_buf(&mut conn.read_buf).await {
            Ok(n) if n > 0 => p.b.node.node().note_answer(),
            _ => {
                conn.broken = true;
                return Err(lost(&conn.addr));
            }
        }
    }
}
