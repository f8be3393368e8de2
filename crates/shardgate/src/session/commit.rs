//! Ending a transaction on several shards: plain COMMIT/ROLLBACK, or
//! two-phase commit when `two_phase_commit = true`.

use bytes::BytesMut;
use shardgate_protocol::backend::{tag as btag, ErrorFields};
use shardgate_protocol::frontend;
use shardgate_protocol::{Header, PgError};
use tokio::io::AsyncReadExt;

use super::fanout::Part;
use super::{reserve, Session};
use crate::relay::MAX_SERVER_MESSAGE;
use crate::twophase::failpoint;

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
            let _ = self
                .exec_all(parts, |i| {
                    if prepared[i] {
                        rollback.clone()
                    } else {
                        "ROLLBACK".into()
                    }
                })
                .await;
            return Some(e);
        }
        failpoint("before_decision");
        if let Err(e) = coordinator.decide_commit(&gid) {
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
            // Committed by decision; recovery finishes it on that shard.
            tracing::warn!(%gid, "COMMIT PREPARED failed on a shard; the proxy's recovery will finish it");
        }
        None
    }
}

fn lost(addr: &str) -> ErrorFields {
    ErrorFields {
        severity: "ERROR".into(),
        code: "08006".into(),
        message: format!("connection to server {addr} was lost"),
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
