//! `shardgate.databases`: each database on each node with its pool limits
//! (PgBouncer's SHOW DATABASES columns first).

use std::collections::BTreeMap;

use shardgate_admin::{columns, Table, Value};

use super::{host_port, int, text, Source};

/// Rows: one per (node, database) a pool exists for.
pub fn table(src: &Source<'_>) -> Table {
    let mode = match src.snap.config.proxy.pool_mode {
        crate::config::PoolMode::Transaction => "transaction",
        crate::config::PoolMode::Session => "session",
    };
    let mut seen: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for p in src.rt.pools.all() {
        let s = p.stats();
        let e = seen
            .entry((p.key().addr.clone(), p.key().database.clone()))
            .or_default();
        e.0 = e.0.max(s.max_size);
        e.1 += s.open;
    }
    let rows = seen
        .into_iter()
        .map(|((node, database), (size, open))| {
            let (host, port) = host_port(&node);
            let state = src.snap.topology.nodes().find(|n| n.addr == node).cloned();
            vec![
                text(database.clone()),
                host,
                port,
                text(database),
                Value::Null,
                int(size),
                text(mode),
                int(open),
                int(state
                    .as_ref()
                    .is_some_and(|n| src.rt.pause.is_paused(n.shard))),
                int(state
                    .as_ref()
                    .is_some_and(|n| n.is_draining() || n.is_retired())),
                text(node),
                state.map_or(Value::Null, |n| int(n.shard)),
            ]
        })
        .collect();
    Table {
        name: "databases",
        columns: columns![
            name: Text,
            host: Text,
            port: Int4,
            database: Text,
            force_user: Text,
            pool_size: Int4,
            pool_mode: Text,
            current_connections: Int4,
            paused: Int4,
            disabled: Int4,
            node: Text,
            shard: Int4,
        ],
        rows,
    }
}
