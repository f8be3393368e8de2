//! `shardgate.reference_tables`: tables copied on every shard.

use shardgate_admin::{columns, Table};

use super::{text, Source};

/// Rows: one per reference table.
pub fn table(src: &Source<'_>) -> Table {
    let rows = src
        .snap
        .sharding
        .iter()
        .flat_map(|s| s.map.reference_tables().iter().cloned())
        .map(|t| vec![text(t.to_string())])
        .collect();
    Table {
        name: "reference_tables",
        columns: columns![table: Text],
        rows,
    }
}
