//! `shardgate.shards`: each shard's weight, nodes, how much sharded data it
//! holds and how far that is from its fair share.

use shardgate_admin::{columns, Table, Value};

use std::sync::Arc;

use super::{int, probe, text, Source};
use crate::runtime::Snapshot;

/// Size and estimated rows of the sharded tables on one shard's primary,
/// summed over `databases`.
async fn sharded_data(
    snap: Arc<Snapshot>,
    addr: String,
    databases: Vec<String>,
) -> Option<(i64, i64)> {
    let tables: Vec<String> = snap
        .config
        .sharded_tables
        .iter()
        .map(|t| {
            let n = crate::config::parse_table_name(&t.table);
            format!(
                "({}, {})",
                n.schema.as_deref().map_or("NULL".into(), probe::literal),
                probe::literal(&n.name)
            )
        })
        .collect();
    if tables.is_empty() {
        return Some((0, 0));
    }
    let sql = format!(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8, \
                coalesce(sum(greatest(c.reltuples, 0)), 0)::int8 \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN (VALUES {}) AS t(s, r) ON c.relname = t.r \
              AND (n.nspname = t.s OR (t.s IS NULL AND n.nspname = ANY (current_schemas(false)))) \
         WHERE c.relkind IN ('r', 'p')",
        tables.join(", ")
    );
    let mut total = (0, 0);
    for db in &databases {
        match probe::query(&snap, &addr, Some(db), &sql).await {
            Ok(rows) => {
                let r = rows.first()?;
                let num = |i: usize| r.get(i)?.as_deref()?.parse::<i64>().ok();
                total.0 += num(0)?;
                total.1 += num(1)?;
            }
            Err(e) => {
                tracing::warn!(node = %addr, database = %db, error = %e, "shardgate.shards: cannot read table sizes");
                return None;
            }
        }
    }
    Some(total)
}

/// Rows: one per shard; sizes are NULL for a shard that did not answer.
pub async fn table(src: &Source<'_>) -> Table {
    let t = &src.snap.topology;
    let weights: Vec<u32> = src.snap.config.shards.iter().map(|s| s.weight).collect();
    let weight_sum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    // The databases clients use (the sharded tables live there).
    let mut databases: Vec<String> = src
        .rt
        .pools
        .all()
        .iter()
        .map(|p| p.key().database.clone())
        .collect();
    databases.sort();
    databases.dedup();
    if databases.is_empty() {
        databases.push(src.snap.config.routing.monitor_database.clone());
    }
    let probes: Vec<_> = t
        .shards
        .iter()
        .map(|s| {
            tokio::spawn(sharded_data(
                src.rt.snapshot(),
                s.writer().addr.clone(),
                databases.clone(),
            ))
        })
        .collect();
    let mut sizes: Vec<Option<(i64, i64)>> = Vec::new();
    for p in probes {
        sizes.push(p.await.ok().flatten());
    }
    let total: i64 = sizes.iter().flatten().map(|(b, _)| b).sum();
    let rows = t
        .shards
        .iter()
        .zip(&sizes)
        .map(|(s, size)| {
            let weight = weights.get(s.index).copied().unwrap_or(1);
            let ideal = f64::from(weight) / weight_sum.max(1.0);
            let share = size.map(|(b, _)| {
                if total > 0 {
                    b as f64 / total as f64
                } else {
                    0.0
                }
            });
            let replicas: Vec<&str> = s
                .nodes
                .iter()
                .filter(|n| n.index != s.writer_index() && !n.is_retired())
                .map(|n| n.addr.as_str())
                .collect();
            vec![
                int(s.index),
                int(weight),
                text(s.writer().addr.clone()),
                text(replicas.join(",")),
                size.map_or(Value::Null, |(b, _)| int(b)),
                size.map_or(Value::Null, |(_, r)| int(r)),
                share.map_or(Value::Null, Value::Float),
                Value::Float(ideal),
                match share {
                    Some(sh) if total > 0 => Value::Float(sh / ideal - 1.0),
                    _ => Value::Null,
                },
                Value::Bool(src.rt.pause.is_paused(s.index)),
            ]
        })
        .collect();
    Table {
        name: "shards",
        columns: columns![
            shard: Int4,
            weight: Int4,
            primary_node: Text,
            replicas: Text,
            tables_bytes: Int8,
            rows_estimate: Int8,
            share: Float8,
            ideal_share: Float8,
            imbalance: Float8,
            paused: Bool,
        ],
        rows,
    }
}
