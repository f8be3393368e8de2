//! `shardgate.transactions`: two-phase transactions prepared on a shard and
//! not finished: in progress (this proxy's own), or in doubt (an earlier
//! run's) and what recovery will do with them.

use shardgate_admin::{columns, Table, Value};

use super::{int, probe, text, Source};

/// Rows: one per prepared transaction per shard; nothing without
/// `two_phase_commit`.
pub async fn table(src: &Source<'_>) -> Table {
    let mut rows = Vec::new();
    if let Some(coordinator) = &src.rt.two_phase {
        let decided = coordinator.decided();
        for shard in &src.snap.topology.shards {
            let addr = shard.writer().addr.clone();
            let sql = "SELECT gid, database::text, owner::text, \
                       to_char(prepared AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
                       FROM pg_prepared_xacts WHERE gid LIKE 'shardgate\\_%' ORDER BY prepared";
            let found = match probe::query(src.snap, &addr, None, sql).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = %addr, error = %e, "shardgate.transactions: cannot list prepared transactions");
                    continue;
                }
            };
            for r in found {
                let cell = |i: usize| r.get(i).cloned().flatten();
                let gid = cell(0).unwrap_or_default();
                let (state, decision) = if coordinator.is_own(&gid) {
                    (
                        "in progress",
                        if decided.contains(&gid) {
                            "commit"
                        } else {
                            "undecided"
                        },
                    )
                } else if !coordinator.recovers(&gid) {
                    ("another proxy's or a move's", "left to its owner")
                } else if decided.contains(&gid) {
                    ("in doubt", "commit")
                } else {
                    ("in doubt", "rollback")
                };
                rows.push(vec![
                    text(gid),
                    int(shard.index),
                    text(addr.clone()),
                    cell(1).map_or(Value::Null, Value::Text),
                    cell(2).map_or(Value::Null, Value::Text),
                    cell(3)
                        .and_then(|t| shardgate_admin::parse_timestamptz(&format!("{t}+00")))
                        .map_or(Value::Null, Value::Time),
                    text(state),
                    text(decision),
                ]);
            }
        }
    }
    Table {
        name: "transactions",
        columns: columns![
            gid: Text,
            shard: Int4,
            node: Text,
            database: Text,
            owner: Text,
            prepared: Timestamptz,
            state: Text,
            decision: Text,
        ],
        rows,
    }
}
