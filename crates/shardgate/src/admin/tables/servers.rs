//! `shardgate.servers`: server connections, lent to clients or idle in
//! their pools.

use shardgate_admin::{columns, Table, Value};

use super::{host_port, int, text, wall, Source};

/// Rows: lent connections (with their client), then idle ones.
pub fn table(src: &Source<'_>) -> Table {
    let shard_of = |addr: &str| {
        src.snap
            .topology
            .nodes()
            .find(|n| n.addr == addr)
            .map_or(Value::Null, |n| int(n.shard))
    };
    let mut rows = Vec::new();
    for c in src.rt.clients.all() {
        let server_user = src
            .snap
            .config
            .user(&c.user)
            .map_or_else(|| c.user.clone(), |u| u.server_user().to_owned());
        for l in c.links() {
            let (host, port) = host_port(&l.addr);
            rows.push(vec![
                text(l.addr.to_string()),
                shard_of(&l.addr),
                text(server_user.clone()),
                text(c.database.clone()),
                text("active"),
                host,
                port,
                wall(l.opened),
                int(l.pid),
                int(c.id),
            ]);
        }
    }
    for p in src.rt.pools.all() {
        let k = p.key();
        for (pid, opened, _) in p.idle_connections() {
            let (host, port) = host_port(&k.addr);
            rows.push(vec![
                text(k.addr.clone()),
                shard_of(&k.addr),
                text(k.user.clone()),
                text(k.database.clone()),
                text("idle"),
                host,
                port,
                wall(opened),
                int(pid),
                Value::Null,
            ]);
        }
    }
    Table {
        name: "servers",
        columns: columns![
            node: Text,
            shard: Int4,
            user: Text,
            database: Text,
            state: Text,
            addr: Text,
            port: Int4,
            connect_time: Timestamptz,
            remote_pid: Int4,
            client_id: Int8,
        ],
        rows,
    }
}
