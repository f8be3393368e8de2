//! `ADD SHARD 'host:port' [REPLICAS (...)] [WEIGHT w]`: a new shard joins
//! owning nothing, gets the tables, a copy of the reference tables and then
//! the hash-ring arcs the new ring gives it (docs/ARCHITECTURE.md §10).
//!
//! Mode `block_writes`: writes to the moving keys (and to reference tables)
//! wait from the moment every session routes by the move's snapshot until
//! the switch; reads go on, to the source. Steps:
//!
//! 1. `schema`: the tables are created on the new shard (pg_dump/psql).
//! 2. `hold`: a snapshot with the new shard's nodes (no keys yet) and the
//!    move's gate is installed; the job waits until no session routes by an
//!    older one, so no transaction that could write moving rows unheld is
//!    still open.
//! 3. `copy`: reference tables whole, then each source's moving rows.
//! 4. `verify`: the target's row counts equal what was copied.
//! 5. `prepare`: each source deletes its moved rows in a prepared
//!    transaction (invisible until the switch).
//! 6. `cutover`: every statement touching moving keys waits; once those in
//!    flight end, the new map version is written to the metadata (the
//!    decision), the prepared deletes commit, the new map is installed and
//!    the held statements go on, routed by it.
//!
//! A failure before the decision rolls the prepared deletes back and
//! reinstalls the old map: nothing moved. Known gap: a proxy killed between
//! the decision and the commits leaves prepared transactions named
//! `shardgate_move_<job>_<shard>` to commit by hand.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_shardmap::{ShardKey, TableName, Transition};

use super::copy::{columns, copy_rows, Select, Throttle};
use super::db::Conn;
use super::gate::MoveGate;
use super::meta::Meta;
use super::{JobStatus, RebalanceError};
use crate::config::{parse_table_name, Config, ShardConfig};
use crate::runtime::{Runtime, Snapshot};

/// The rows of one table a source gave to the new shard.
struct Given {
    table: TableName,
    /// The key column, quoted.
    column: String,
    /// The key's SQL type.
    cast: &'static str,
    keys: Vec<ShardKey>,
}

/// Keys deleted per statement on a source.
const DELETE_BATCH: usize = 5_000;

/// Starts an `ADD SHARD` job; returns its id once it is recorded.
pub async fn start_add_shard(rt: &Arc<Runtime>, shard: ShardConfig) -> Result<u64, RebalanceError> {
    let snap = rt.snapshot();
    if snap.sharding.is_none() {
        return Err(RebalanceError::Invalid(
            "ADD SHARD needs a sharded configuration ([[sharded_tables]])".into(),
        ));
    }
    if snap
        .config
        .shards
        .iter()
        .any(|s| s.primary == shard.primary || s.replicas.contains(&shard.primary))
    {
        return Err(RebalanceError::Invalid(format!(
            "{} is already a node of the cluster",
            shard.primary
        )));
    }
    let args = format!(
        "'{}'{}{}",
        shard.primary,
        if shard.replicas.is_empty() {
            String::new()
        } else {
            format!(" REPLICAS ('{}')", shard.replicas.join("', '"))
        },
        format_args!(" WEIGHT {}", shard.weight)
    );
    let Ok(running) = rt.jobs.running.clone().try_lock_owned() else {
        return Err(RebalanceError::Invalid(
            "another rebalancing job is running: wait for it (shardgate.jobs)".into(),
        ));
    };
    let meta = Meta::open(&snap.config).await?;
    let id = meta.insert_job("add_shard", &args).await?;
    let status = Arc::new(JobStatus::new(id, "add_shard", args));
    rt.jobs.add(status.clone());
    let rt = rt.clone();
    tokio::spawn(async move {
        let result = run(&rt, &status, meta, shard).await;
        status.finish(result);
        drop(running);
    });
    Ok(id)
}

async fn run(
    rt: &Arc<Runtime>,
    status: &JobStatus,
    mut meta: Meta,
    shard: ShardConfig,
) -> Result<(), RebalanceError> {
    let _serial = rt.reconfiguring.lock().await;
    let snap = rt.snapshot();
    let mut next = (*snap.config).clone();
    next.shards.push(shard);
    let next_map = Arc::new(
        next.shard_map()
            .map_err(|e| RebalanceError::Invalid(e.to_string()))?,
    );
    let current = snap.sharding.as_ref().expect("checked").map.clone();
    let transition = Transition::new(current, next_map)?;
    let target_shard = next.shards.len() - 1;
    let db = next.sharding.rebalance_database.clone();
    let target = Conn::open(&next, &next.shards[target_shard].primary, &db).await?;

    phase(status, &meta, "schema").await;
    let mut tables: Vec<TableName> = next
        .sharded_tables
        .iter()
        .map(|t| parse_table_name(&t.table))
        .collect();
    let references: Vec<TableName> = next
        .reference_tables
        .iter()
        .map(|t| parse_table_name(&t.table))
        .collect();
    tables.extend(references.iter().cloned());
    super::schema::copy_schema(&next, &next.shards[0].primary, &target, &tables).await?;

    phase(status, &meta, "hold").await;
    let gate = Arc::new(MoveGate::new(transition, true));
    let hold_timeout = Duration::from_millis(next.sharding.rebalance_hold_timeout_ms);
    let held_version = install(rt, &next, Some(gate.clone()), Some(&snap));
    if !rt
        .clients
        .wait_snapshots(held_version, Instant::now() + hold_timeout)
        .await
    {
        abandon(rt, &snap, &gate);
        return Err(RebalanceError::HoldTimeout(
            "transactions begun before the move did not end".into(),
        ));
    }
    let result = move_rows(rt, status, &mut meta, &next, &gate, &target, &references).await;
    if result.is_err() && gate.phase() != super::gate::GatePhase::Open {
        abandon(rt, &snap, &gate);
    }
    result
}

/// Steps 3 to 6; on an error before the decision the caller reinstalls the
/// old map.
async fn move_rows(
    rt: &Arc<Runtime>,
    status: &JobStatus,
    meta: &mut Meta,
    next: &Config,
    gate: &Arc<MoveGate>,
    target: &Conn,
    references: &[TableName],
) -> Result<(), RebalanceError> {
    let t = &gate.transition;
    let db = &next.sharding.rebalance_database;
    let target_shard = next.shards.len() - 1;
    let sources = t.sources();
    let moving: Vec<_> = t
        .from()
        .tables()
        .iter()
        .filter(|r| t.table_moves(r))
        .cloned()
        .collect();
    status.steps_total.store(
        (references.len() + sources.len() * moving.len()) as u64,
        Ordering::Relaxed,
    );
    phase(status, meta, "copy").await;
    let mut throttle = Throttle::new(next.sharding.rebalance_max_mb_s);
    // The new shard owns nothing yet: what an earlier attempt left goes.
    for table in references.iter().chain(moving.iter().map(|r| &r.table)) {
        target.run(&format!("TRUNCATE {table}")).await?;
    }
    let first = Conn::open(next, &next.shards[0].primary, db).await?;
    for table in references {
        let cols = columns(&first, table).await?;
        copy_rows(
            &first,
            target,
            table,
            &cols,
            Select::All,
            &mut throttle,
            status,
        )
        .await?;
        status.steps_done.fetch_add(1, Ordering::Relaxed);
    }
    drop(first);
    // Per source: its connection and, per moving table, the keys it gives.
    let mut given: Vec<(Conn, Vec<Given>)> = Vec::new();
    let mut expected: Vec<u64> = vec![0; moving.len()];
    for &s in &sources {
        let src = Conn::open(next, &next.shards[s].primary, db).await?;
        let mut per_table = Vec::new();
        for (i, rule) in moving.iter().enumerate() {
            let cols = columns(&src, &rule.table).await?;
            let field = cols.iter().position(|c| *c == rule.column).ok_or_else(|| {
                RebalanceError::Invalid(format!(
                    "table {} on {} has no column {}",
                    rule.table, src.node, rule.column
                ))
            })?;
            let keep = |k: &ShardKey| matches!(t.next_shard(rule, k), Ok(n) if n == target_shard);
            let copied = copy_rows(
                &src,
                target,
                &rule.table,
                &cols,
                Select::Keys {
                    rule,
                    field,
                    keep: &keep,
                },
                &mut throttle,
                status,
            )
            .await?;
            expected[i] += copied.rows;
            per_table.push(Given {
                table: rule.table.clone(),
                column: quoted(&rule.column),
                cast: sql_type(rule.key_type),
                keys: copied.keys,
            });
            status.steps_done.fetch_add(1, Ordering::Relaxed);
        }
        given.push((src, per_table));
    }

    phase(status, meta, "verify").await;
    for (rule, want) in moving.iter().zip(&expected) {
        let got: i64 = target
            .client
            .query_one(&format!("SELECT count(*) FROM {}", rule.table), &[])
            .await
            .map_err(|e| target.err(e))?
            .get(0);
        if got as u64 != *want {
            return Err(RebalanceError::Verify(format!(
                "table {} has {got} rows on the new shard, {want} were copied",
                rule.table
            )));
        }
    }

    phase(status, meta, "prepare").await;
    let job = status.id;
    let mut prepared: Vec<(&Conn, String)> = Vec::new();
    let result = prepare_deletes(&given, job, &mut prepared).await;
    if let Err(e) = result {
        rollback(&prepared).await;
        return Err(e);
    }

    phase(status, meta, "cutover").await;
    gate.cut_over();
    let hold_timeout = Duration::from_millis(next.sharding.rebalance_hold_timeout_ms);
    if !rt
        .clients
        .wait_moves_settled(Instant::now() + hold_timeout)
        .await
    {
        rollback(&prepared).await;
        return Err(RebalanceError::HoldTimeout(
            "statements on moving keys did not finish".into(),
        ));
    }
    if let Err(e) = meta.record_switch(job, &next.shards).await {
        rollback(&prepared).await;
        return Err(e);
    }
    // Decided: from here on the move completes.
    for (conn, gid) in &prepared {
        let sql = format!("COMMIT PREPARED '{gid}'");
        let mut tries = 0;
        while let Err(e) = conn.run(&sql).await {
            tries += 1;
            tracing::error!(node = %conn.node, gid = %gid, error = %e, "COMMIT PREPARED of a move failed; retrying");
            if tries >= 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    install(rt, next, None, None);
    gate.open();
    meta.0
        .run(&format!(
            "UPDATE shardgate_meta.jobs SET phase = 'done', rows_copied = {}, bytes_copied = {}, updated_at = now() WHERE id = {job}",
            status.rows_copied.load(Ordering::Relaxed),
            status.bytes_copied.load(Ordering::Relaxed)
        ))
        .await?;
    Ok(())
}

/// Each source deletes the rows it gave in a prepared transaction.
async fn prepare_deletes<'a>(
    given: &'a [(Conn, Vec<Given>)],
    job: u64,
    prepared: &mut Vec<(&'a Conn, String)>,
) -> Result<(), RebalanceError> {
    for (i, (src, tables)) in given.iter().enumerate() {
        let gid = format!("shardgate_move_{job}_{i}");
        src.run("BEGIN").await?;
        for g in tables {
            let (table, column, cast) = (&g.table, &g.column, g.cast);
            for batch in g.keys.chunks(DELETE_BATCH) {
                let texts: Vec<String> = batch.iter().map(|k| k.to_string()).collect();
                src.client
                    .execute(
                        &format!("DELETE FROM {table} WHERE {column} = ANY ($1::text[]::{cast}[])"),
                        &[&texts],
                    )
                    .await
                    .map_err(|e| src.err(e))?;
            }
        }
        src.run(&format!("PREPARE TRANSACTION '{gid}'")).await?;
        prepared.push((src, gid));
    }
    Ok(())
}

async fn rollback(prepared: &[(&Conn, String)]) {
    for (conn, gid) in prepared {
        if let Err(e) = conn.run(&format!("ROLLBACK PREPARED '{gid}'")).await {
            tracing::error!(node = %conn.node, gid = %gid, error = %e, "ROLLBACK PREPARED of an abandoned move failed");
        }
    }
}

async fn phase(status: &JobStatus, meta: &Meta, p: &'static str) {
    status.set_phase(p);
    let rows = status.rows_copied.load(Ordering::Relaxed);
    let bytes = status.bytes_copied.load(Ordering::Relaxed);
    if let Err(e) = meta.update_job(status.id, p, rows, bytes, None).await {
        tracing::warn!(job = status.id, error = %e, "cannot record the job's phase");
    }
}

/// Installs a snapshot of `config`: with `gate`, routing keeps the map of
/// `keep_map_of` (the new shard's nodes join the topology, owning nothing);
/// without, the map of `config`. Returns its version.
fn install(
    rt: &Arc<Runtime>,
    config: &Config,
    gate: Option<Arc<MoveGate>>,
    keep_map_of: Option<&Snapshot>,
) -> u64 {
    let running = rt.snapshot();
    rt.stop_monitors();
    let (topology, _) = running.topology.reconfigured(&config.topology_spec());
    let mut snap = Snapshot::build(
        config.clone(),
        running.version + 1,
        Arc::new(topology),
        Some(&running),
    )
    .expect("TLS settings unchanged since they were loaded");
    if let Some(old) = keep_map_of {
        snap.sharding = old.sharding.clone();
    }
    snap.move_gate = gate;
    let version = snap.version;
    rt.install(snap);
    rt.start_monitors();
    version
}

/// Gives up a move before its decision: the old configuration and map come
/// back and held statements go on.
fn abandon(rt: &Arc<Runtime>, before: &Snapshot, gate: &MoveGate) {
    install(rt, &before.config, None, None);
    gate.open();
}

fn sql_type(k: shardgate_shardmap::KeyType) -> &'static str {
    match k {
        shardgate_shardmap::KeyType::BigInt => "bigint",
        shardgate_shardmap::KeyType::Text => "text",
        shardgate_shardmap::KeyType::Uuid => "uuid",
    }
}

fn quoted(column: &str) -> String {
    TableName::new(None, column).to_string()
}
