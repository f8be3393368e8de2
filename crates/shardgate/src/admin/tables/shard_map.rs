//! `shardgate.shard_map`: where keys go, with the map's version: one row
//! per hash-ring arc (`table` is `(ring)`, shared by every hash-sharded
//! table; `from`/`to` are 64-bit key hashes), per range of a range-sharded
//! table (`from` inclusive, `to` exclusive) and per value of a list-sharded
//! table.

use shardgate_admin::{columns, Table, Value};
use shardgate_shardmap::Function;

use super::{int, text, Source};

/// Rows in that order: ring arcs, then each table's ranges or values.
pub fn table(src: &Source<'_>) -> Table {
    let mut rows = Vec::new();
    if let Some(s) = &src.snap.sharding {
        let map = &s.map;
        let version = int(map.version());
        for (from, to, shard) in map.ring_arcs() {
            rows.push(vec![
                version.clone(),
                text("(ring)"),
                text("hash"),
                text(from.to_string()),
                text(to.to_string()),
                Value::Null,
                int(shard),
            ]);
        }
        for rule in map.tables() {
            match &rule.function {
                Function::Hash => {}
                Function::Range(ranges) => {
                    for r in ranges {
                        rows.push(vec![
                            version.clone(),
                            text(rule.table.to_string()),
                            text("range"),
                            text(r.start.to_string()),
                            text(r.end.to_string()),
                            Value::Null,
                            int(r.shard),
                        ]);
                    }
                }
                Function::List(lists) => {
                    for l in lists {
                        for v in &l.values {
                            rows.push(vec![
                                version.clone(),
                                text(rule.table.to_string()),
                                text("list"),
                                Value::Null,
                                Value::Null,
                                text(v.to_string()),
                                int(l.shard),
                            ]);
                        }
                    }
                }
            }
        }
    }
    Table {
        name: "shard_map",
        columns: columns![
            version: Int8,
            table: Text,
            function: Text,
            from: Text,
            to: Text,
            value: Text,
            shard: Int4,
        ],
        rows,
    }
}
