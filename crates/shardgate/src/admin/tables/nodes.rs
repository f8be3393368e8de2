//! `shardgate.nodes`: every Postgres node as the proxy sees it now.
//!
//! `state`: `up`; `banned` (out of rotation for a while: failed health
//! checks or connections, or `BAN`; `last_error` says which); `draining`
//! (`DRAIN`, or removed by a reload, until its work finished); `fenced`
//! (a former primary after a failover); `new` (added by a reload, no
//! traffic until its first poll answers) and `down` (added, and its polls
//! fail).

use shardgate_admin::{columns, Table, Value};
use shardgate_jobs::lsn::format_lsn;

use super::{int, text, Source};

/// Prefix of the reason an operator's `BAN` records.
pub const ADMIN_BAN: &str = "banned by an operator";

/// Rows: one per node, removed nodes while they drain.
pub fn table(src: &Source<'_>) -> Table {
    let t = &src.snap.topology;
    let now = t.now_ms();
    let mut rows = Vec::new();
    for shard in &t.shards {
        let writer = shard.writer_index();
        for n in &shard.nodes {
            if n.is_retired() && n.in_flight() == 0 {
                continue;
            }
            let is_writer = n.index == writer;
            let error = n.last_error();
            let state = if n.is_retired() || n.is_draining() {
                "draining"
            } else if n.is_fenced() {
                "fenced"
            } else if n.is_banned(now) {
                "banned"
            } else if n.is_unpolled() && error.is_some() {
                "down"
            } else if n.is_unpolled() {
                "new"
            } else {
                "up"
            };
            rows.push(vec![
                text(n.addr.clone()),
                int(shard.index),
                text(if is_writer { "primary" } else { "replica" }),
                text(state),
                n.in_recovery().map_or(Value::Null, Value::Bool),
                text(format_lsn(n.replay_lsn())),
                if is_writer {
                    int(0)
                } else {
                    int(n.lag_bytes())
                },
                if is_writer {
                    int(0)
                } else {
                    int(n.lag_ms(now))
                },
                int(n.in_flight()),
                error.map_or(Value::Null, Value::Text),
                int(n.ban_count()),
                Value::Bool(src.rt.pause.is_paused(shard.index)),
            ]);
        }
    }
    Table {
        name: "nodes",
        columns: columns![
            node: Text,
            shard: Int4,
            role: Text,
            state: Text,
            in_recovery: Bool,
            lsn: Text,
            lag_bytes: Int8,
            lag_ms: Int8,
            in_flight: Int4,
            last_error: Text,
            bans: Int8,
            paused: Bool,
        ],
        rows,
    }
}
