//! `shardgate.jobs`: background jobs. Rebalancing (issue #8) is the first
//! kind; until it exists the table is empty, with its columns fixed.

use shardgate_admin::{columns, Table};

use super::Source;

/// Rows: none yet.
pub fn table(_src: &Source<'_>) -> Table {
    Table {
        name: "jobs",
        columns: columns![
            id: Int8,
            kind: Text,
            state: Text,
            phase: Text,
            progress: Float8,
            started_at: Timestamptz,
            error: Text,
        ],
        rows: Vec::new(),
    }
}
