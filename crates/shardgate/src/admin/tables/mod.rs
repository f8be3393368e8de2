//! The admin tables, one module each: what a table holds is decided here
//! from the runtime's state, as typed rows (see `shardgate_admin::Table`).

mod clients;
mod config;
mod databases;
mod help;
mod jobs;
pub mod nodes;
mod pools;
mod probe;
mod query_stats;
pub mod rebalance_plan;
mod reference_tables;
mod servers;
mod shard_map;
mod sharded_tables;
mod shards;
mod slow_queries;
mod stats;
mod transactions;
mod version;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use shardgate_admin::{Table, Value};

use crate::runtime::{Runtime, Snapshot};

/// What a table is built from.
pub struct Source<'a> {
    /// The runtime.
    pub rt: &'a Arc<Runtime>,
    /// The current snapshot.
    pub snap: &'a Snapshot,
}

/// Every table: name and what it holds.
pub const TABLES: &[(&str, &str)] = &[
    (
        "nodes",
        "every Postgres node: shard, role, state, WAL position, replication lag, load",
    ),
    (
        "pools",
        "server connection pools per node, user and database (PgBouncer's SHOW POOLS)",
    ),
    ("clients", "connected clients (PgBouncer's SHOW CLIENTS)"),
    (
        "servers",
        "server connections, idle or lent to a client (PgBouncer's SHOW SERVERS)",
    ),
    (
        "stats",
        "transactions, queries, bytes and times per node and database (PgBouncer's SHOW STATS)",
    ),
    (
        "databases",
        "databases per node with pool limits (PgBouncer's SHOW DATABASES)",
    ),
    ("shards", "shards: weight, nodes, data size and balance"),
    (
        "sharded_tables",
        "tables split across shards and their keys",
    ),
    ("reference_tables", "tables copied on every shard"),
    (
        "shard_map",
        "where keys go: hash-ring arcs, ranges and list values, with the map version",
    ),
    (
        "query_stats",
        "statements by fingerprint: calls, rows, time, route",
    ),
    (
        "slow_queries",
        "the last statements slower than slow_query_ms",
    ),
    (
        "transactions",
        "two-phase transactions in doubt or being recovered",
    ),
    ("jobs", "background jobs (rebalancing)"),
    (
        "config",
        "settings: value, default, whether RELOAD/SET can change them, and their source",
    ),
    ("version", "the shardgate version"),
    ("help", "the admin commands and tables"),
];

/// The table `name` holds now (`None` for an unknown name).
pub async fn build(name: &str, src: &Source<'_>) -> Option<Table> {
    Some(match name {
        "nodes" => nodes::table(src),
        "pools" => pools::table(src),
        "clients" => clients::table(src),
        "servers" => servers::table(src),
        "stats" => stats::table(src),
        "databases" => databases::table(src),
        "shards" => shards::table(src).await,
        "sharded_tables" => sharded_tables::table(src),
        "reference_tables" => reference_tables::table(src),
        "shard_map" => shard_map::table(src),
        "query_stats" => query_stats::table(src),
        "slow_queries" => slow_queries::table(src),
        "transactions" => transactions::table(src).await,
        "jobs" => jobs::table(src),
        "config" => config::table(src),
        "version" => version::table(),
        "help" => help::table(),
        _ => return None,
    })
}

/// The table a `SHOW` name stands for.
pub fn show_name(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let alias = match name.as_str() {
        "replication" => "nodes",
        other => other,
    };
    TABLES.iter().map(|(n, _)| *n).find(|n| *n == alias)
}

/// Microseconds since the Unix epoch.
pub fn micros(t: SystemTime) -> Value {
    Value::Time(
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64),
    )
}

/// The wall-clock time of a monotonic instant.
pub fn wall(i: Instant) -> Value {
    micros(SystemTime::now() - i.elapsed())
}

/// A text value.
pub fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

/// An integer value.
pub fn int(v: impl TryInto<i64>) -> Value {
    Value::Int(v.try_into().unwrap_or(i64::MAX))
}

/// Splits `host:port`.
pub fn host_port(addr: &str) -> (Value, Value) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (text(h), p.parse::<i64>().map_or(Value::Null, Value::Int)),
        None => (text(addr), Value::Null),
    }
}
