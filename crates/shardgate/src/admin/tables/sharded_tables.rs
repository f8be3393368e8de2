//! `shardgate.sharded_tables`: the tables split across shards.

use shardgate_admin::{columns, Table};
use shardgate_shardmap::Function;

use super::{int, text, Source};

/// Rows: one per sharded table, as the shard map has it.
pub fn table(src: &Source<'_>) -> Table {
    let rows = src
        .snap
        .sharding
        .iter()
        .flat_map(|s| s.map.tables().iter().cloned())
        .map(|rule| {
            let entries = match &rule.function {
                Function::Hash => 0,
                Function::Range(r) => r.len(),
                Function::List(l) => l.len(),
            };
            vec![
                text(rule.table.to_string()),
                text(rule.column.clone()),
                text(rule.function.name()),
                text(rule.key_type.to_string()),
                int(entries),
            ]
        })
        .collect();
    Table {
        name: "sharded_tables",
        columns: columns![table: Text, column: Text, function: Text, key_type: Text, entries: Int4],
        rows,
    }
}
