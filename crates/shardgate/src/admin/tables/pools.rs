//! `shardgate.pools`: server connection pools (PgBouncer's SHOW POOLS
//! columns first, then shardgate's).

use shardgate_admin::{columns, Table, Value};

use super::{int, text, Source};

/// Rows: one per (node, server user, database), sorted.
pub fn table(src: &Source<'_>) -> Table {
    let mode = match src.snap.config.proxy.pool_mode {
        crate::config::PoolMode::Transaction => "transaction",
        crate::config::PoolMode::Session => "session",
    };
    let mut pools = src.rt.pools.all();
    pools.sort_by(|a, b| {
        a.key()
            .addr
            .cmp(&b.key().addr)
            .then(a.key().user.cmp(&b.key().user))
    });
    let rows = pools
        .iter()
        .map(|p| {
            let k = p.key();
            let s = p.stats();
            let shard = src
                .snap
                .topology
                .nodes()
                .find(|n| n.addr == k.addr)
                .map_or(Value::Null, |n| int(n.shard));
            vec![
                text(k.database.clone()),
                text(k.user.clone()),
                int(s.lent),
                int(s.waiting),
                int(s.lent),
                int(s.idle.saturating_sub(s.idle_untested)),
                int(s.idle_untested),
                int(0),
                int(0),
                int(s.max_wait.as_secs()),
                int(s.max_wait.subsec_micros()),
                text(mode),
                text(k.addr.clone()),
                shard,
                int(s.max_size),
                int(s.open),
                int(s.checkouts),
                int(s.timeouts),
            ]
        })
        .collect();
    Table {
        name: "pools",
        columns: columns![
            database: Text,
            user: Text,
            cl_active: Int4,
            cl_waiting: Int4,
            sv_active: Int4,
            sv_idle: Int4,
            sv_used: Int4,
            sv_tested: Int4,
            sv_login: Int4,
            maxwait: Int4,
            maxwait_us: Int4,
            pool_mode: Text,
            node: Text,
            shard: Int4,
            pool_size: Int4,
            sv_open: Int4,
            checkouts: Int8,
            timeouts: Int8,
        ],
        rows,
    }
}
