//! `shardgate.slow_queries`: the last statements slower than `slow_query_ms`.

use shardgate_admin::{columns, Table, Value};

use super::{micros, text, Source};

/// Rows: oldest first.
pub fn table(src: &Source<'_>) -> Table {
    let rows = src
        .rt
        .stats
        .slow
        .entries()
        .into_iter()
        .map(|q| {
            vec![
                micros(q.time),
                text(q.user),
                text(q.database),
                text(q.query),
                Value::Float(q.duration_ms),
                text(q.route),
                text(q.shards),
                text(q.node),
            ]
        })
        .collect();
    Table {
        name: "slow_queries",
        columns: columns![
            time: Timestamptz,
            user: Text,
            database: Text,
            query: Text,
            duration_ms: Float8,
            route: Text,
            shards: Text,
            node: Text,
        ],
        rows,
    }
}
