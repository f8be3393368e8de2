//! `shardgate.query_stats`: statements by fingerprint (literals removed).

use shardgate_admin::{columns, Table, Value};

use super::{int, text, Source};

/// Rows: one per fingerprint kept.
pub fn table(src: &Source<'_>) -> Table {
    let rows = src
        .rt
        .stats
        .queries
        .rows()
        .into_iter()
        .filter(|r| r.calls > 0)
        .map(|r| {
            vec![
                text(r.fingerprint),
                int(r.calls),
                int(r.rows),
                Value::Float(r.total_ms),
                Value::Float(r.total_ms / r.calls as f64),
                Value::Float(r.max_ms),
                r.route.map_or(Value::Null, |r| text(r.describe())),
                text(
                    r.shards
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]
        })
        .collect();
    Table {
        name: "query_stats",
        columns: columns![
            query: Text,
            calls: Int8,
            rows: Int8,
            total_ms: Float8,
            mean_ms: Float8,
            max_ms: Float8,
            route: Text,
            shards: Text,
        ],
        rows,
    }
}
