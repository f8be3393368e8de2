//! `shardgate.jobs`: rebalancing jobs this proxy started (docs/ARCHITECTURE.md §10).

use shardgate_admin::{columns, Table, Value};

use super::{int, micros, text, Source};

/// One row per job, oldest first.
pub fn table(src: &Source<'_>) -> Table {
    let held = src.snap.move_gate.as_ref().map_or(0, |g| g.waiting());
    let rows = src
        .rt
        .jobs
        .all()
        .iter()
        .map(|j| {
            vec![
                int(j.id),
                text(j.kind),
                text(j.state()),
                text(j.phase()),
                text(j.mode()),
                text(&j.args),
                Value::Float(j.progress()),
                int(j.rows_copied.load(std::sync::atomic::Ordering::Relaxed)),
                int(j.bytes_copied.load(std::sync::atomic::Ordering::Relaxed)),
                Value::Float(j.mb_s()),
                int(j.lag_bytes.load(std::sync::atomic::Ordering::Relaxed)),
                j.eta_s().map_or(Value::Null, Value::Float),
                int(if j.state() == "running" { held } else { 0 }),
                int(j.cutover_retries.load(std::sync::atomic::Ordering::Relaxed)),
                micros(j.started),
                j.error().map_or(Value::Null, Value::Text),
            ]
        })
        .collect();
    Table {
        name: "jobs",
        columns: columns![
            id: Int8,
            kind: Text,
            state: Text,
            phase: Text,
            mode: Text,
            args: Text,
            progress: Float8,
            rows_copied: Int8,
            bytes_copied: Int8,
            mb_s: Float8,
            lag_bytes: Int8,
            eta_s: Float8,
            held_statements: Int8,
            cutover_retries: Int8,
            started_at: Timestamptz,
            error: Text,
        ],
        rows,
    }
}
