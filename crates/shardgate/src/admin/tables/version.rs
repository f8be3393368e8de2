//! `shardgate.version`.

use shardgate_admin::{columns, Table};

use super::text;

/// One row: `shardgate <version>`.
pub fn table() -> Table {
    Table {
        name: "version",
        columns: columns![version: Text],
        rows: vec![vec![text(format!(
            "shardgate {}",
            env!("CARGO_PKG_VERSION")
        ))]],
    }
}
