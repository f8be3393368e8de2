//! `REBALANCE PLAN`: one row per arc move `REBALANCE` would make, with the
//! rows and bytes it moves, the job's mode, and each shard's imbalance
//! before and after the whole plan (docs/ARCHITECTURE.md §10).

use shardgate_admin::{columns, Table, Value};

use super::{int, text};
use crate::rebalance::plan::Balance;
use crate::rebalance::Proposal;

/// `shard 0: +41%, shard 1: -41%`.
fn imbalances(b: &Balance) -> String {
    (0..b.bytes.len())
        .map(|s| format!("shard {s}: {:+.0}%", b.imbalance(s) * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows of `p`.
pub fn table(p: &Proposal) -> Table {
    let (before, after) = (imbalances(&p.before), imbalances(&p.after));
    let rows = p
        .moves
        .iter()
        .enumerate()
        .map(|(i, m)| {
            vec![
                int(i as u64 + 1),
                text(format!("{}-{}", m.point.0, m.point.1)),
                int(m.from),
                int(m.to),
                int(m.rows),
                int(m.bytes),
                text(p.mode.clone()),
                text(before.clone()),
                text(after.clone()),
            ]
        })
        .collect::<Vec<Vec<Value>>>();
    Table {
        name: "rebalance_plan",
        columns: columns![
            step: Int8,
            arc: Text,
            from_shard: Int4,
            to_shard: Int4,
            rows: Int8,
            bytes: Int8,
            mode: Text,
            imbalance_before: Text,
            imbalance_after: Text,
        ],
        rows,
    }
}
