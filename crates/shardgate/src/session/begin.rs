//! Deferring a plain BEGIN in transaction pooling (`defer_begin`).
//!
//! A client's `BEGIN` alone does nothing on the server a client can see
//! until the next statement, so the proxy answers it itself and sends it in
//! one write together with the client's next message. That saves the server
//! a round trip per transaction and holds a server connection only while the
//! transaction has work in it (TPC-B on the 2-core benchmark machine: 4%
//! less proxy CPU and 1% more throughput). What a client can notice: the
//! transaction's start time (`now()`) is when the first statement after
//! BEGIN arrives, not when BEGIN did; and if no server connection can be had
//! for that statement, the client gets the pool's error and is out of the
//! transaction (ReadyForQuery `I`): nothing ever reached a server.

use shardgate_protocol::backend;
use shardgate_protocol::frontend::tag;

use super::{Proto, Session, SessionError};
use crate::relay::Expect;
use crate::routing::Want;

/// The Query message sent for a deferred BEGIN (every plain form means the same).
const BEGIN_QUERY: &[u8] = b"Q\x00\x00\x00\x0aBEGIN\x00";

/// Longest text checked for a plain BEGIN.
const LONGEST_PLAIN_BEGIN: usize = 32;

/// The command tag Postgres answers `sql` with when it is a plain BEGIN
/// without options (`BEGIN`, `BEGIN WORK`, `BEGIN TRANSACTION`, `START
/// TRANSACTION`, any case, one optional `;`): only those cannot fail.
pub(super) fn plain_begin_tag(sql: &str) -> Option<&'static str> {
    if sql.len() > LONGEST_PLAIN_BEGIN {
        return None;
    }
    let body = sql.trim();
    let body = body.strip_suffix(';').unwrap_or(body);
    let mut words = body.split_ascii_whitespace();
    let first = words.next()?;
    let second = words.next();
    if words.next().is_some() {
        return None;
    }
    let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
    match second {
        None if is(first, "begin") => Some("BEGIN"),
        Some(s) if is(first, "begin") && (is(s, "work") || is(s, "transaction")) => Some("BEGIN"),
        Some(s) if is(first, "start") && is(s, "transaction") => Some("START TRANSACTION"),
        _ => None,
    }
}

impl Session {
    /// Answers a plain BEGIN itself when `defer_begin` applies and no server
    /// connection is attached; BEGIN then goes out with the next message.
    pub(super) fn try_defer_begin(&mut self, sql: &str) -> bool {
        if !self.defer_begin || self.backend.is_some() || self.begin_deferred {
            return false;
        }
        let Some(command_tag) = plain_begin_tag(sql) else {
            return false;
        };
        backend::command_complete(command_tag, &mut self.cout);
        backend::ready_for_query(b'T', &mut self.cout);
        self.begin_deferred = true;
        true
    }

    /// Sends the deferred BEGIN ahead of the client message `t`: attaches a
    /// primary connection and queues BEGIN with a hidden answer. Returns
    /// whether the message still needs handling: not when no connection
    /// could be had for a simple query or function call, which the client
    /// has then been answered with the error and ReadyForQuery.
    pub(super) async fn send_deferred_begin(&mut self, t: u8) -> Result<bool, SessionError> {
        self.begin_deferred = false;
        let proto = match t {
            tag::QUERY | tag::FUNCTION_CALL => Proto::Simple,
            _ => Proto::Extended,
        };
        if !self.attach_now(Want::Primary) && !self.attach(proto, Want::Primary).await? {
            return Ok(matches!(proto, Proto::Extended));
        }
        self.sout.extend_from_slice(BEGIN_QUERY);
        self.push_expect(Expect::Query { forward: false });
        // The client is in a transaction already: a reply the proxy makes
        // before the server's answer to BEGIN arrives must say so.
        self.backend.as_mut().expect("attached").ex.status = b'T';
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_begin_is_deferred() {
        for (sql, tag) in [
            ("BEGIN", "BEGIN"),
            ("begin;", "BEGIN"),
            ("  Begin  Work ; ", "BEGIN"),
            ("BEGIN TRANSACTION", "BEGIN"),
            ("start transaction;", "START TRANSACTION"),
        ] {
            assert_eq!(plain_begin_tag(sql), Some(tag), "{sql}");
        }
        for sql in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "BEGIN READ ONLY",
            "BEGIN; SELECT 1",
            "BEGIN;;",
            "/* shardgate: consistency=strong */ BEGIN",
            "BEGINS",
            "START",
            "COMMIT",
            "",
        ] {
            assert_eq!(plain_begin_tag(sql), None, "{sql}");
        }
    }

    #[test]
    fn the_begin_message_is_well_formed() {
        let h = shardgate_protocol::Header::complete(BEGIN_QUERY, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(h.total, BEGIN_QUERY.len());
        assert_eq!(
            shardgate_protocol::frontend::parse_query(&BEGIN_QUERY[5..]).unwrap(),
            "BEGIN"
        );
    }
}
