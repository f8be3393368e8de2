//! `shardgate.stats`: what each node did per database since start
//! (PgBouncer's SHOW STATS columns first, times in microseconds as there).

use std::collections::BTreeMap;

use shardgate_admin::{columns, Table, Value};
use shardgate_pool::Totals;

use super::{int, text, Source};

/// Rows: one per (database, node), summed over users.
pub fn table(src: &Source<'_>) -> Table {
    let mut sums: BTreeMap<(String, String), (Totals, u64)> = BTreeMap::new();
    for p in src.rt.pools.all() {
        let k = p.key();
        let s = p.stats();
        let e = sums
            .entry((k.database.clone(), k.addr.clone()))
            .or_default();
        e.0.add(&s.totals);
        e.1 += s.wait_us;
    }
    let rows = sums
        .into_iter()
        .map(|((database, node), (t, wait_us))| {
            let shard = src
                .snap
                .topology
                .nodes()
                .find(|n| n.addr == node)
                .map_or(Value::Null, |n| int(n.shard));
            // The same counters under PgBouncer's names, then shardgate's.
            let counters = [
                int(t.loans),
                int(t.queries),
                int(t.bytes_received),
                int(t.bytes_sent),
                int(t.lent_us),
                int(t.query_us),
                int(wait_us),
            ];
            let mut row = vec![text(database)];
            row.extend(counters.iter().cloned());
            row.extend([text(node), shard]);
            row.extend(counters);
            row.push(int(t.errors));
            row
        })
        .collect();
    Table {
        name: "stats",
        columns: columns![
            database: Text,
            total_xact_count: Int8,
            total_query_count: Int8,
            total_received: Int8,
            total_sent: Int8,
            total_xact_time: Int8,
            total_query_time: Int8,
            total_wait_time: Int8,
            node: Text,
            shard: Int4,
            xact_count: Int8,
            query_count: Int8,
            bytes_received: Int8,
            bytes_sent: Int8,
            xact_time_us: Int8,
            query_time_us: Int8,
            wait_time_us: Int8,
            errors: Int8,
        ],
        rows,
    }
}
