//! A rebalancing job (docs/ARCHITECTURE.md §10): one [`Change`] of the
//! shard map, and the rows whose owner it changes moved while clients keep
//! reading and writing.
//!
//! The steps, and the two modes (`logical` when every source has
//! `wal_level = logical` and every moving table a primary key holding its
//! shard key, else `block_writes`), are described in docs/ARCHITECTURE.md
//! §10: `schema`, `hold`, (logical: slots), `copy`, (logical: `catch-up`),
//! `cutover` with `prepare`, the decision recorded in `shardgate_meta`, the
//! commits and the switch.
//!
//! A failure before the decision rolls the move transactions back and
//! reinstalls the old map: nothing moved. A proxy killed at any step
//! leaves the prepared transactions `shardgate_move_<job>_<shard>`; the
//! next start commits them if the decision was recorded, else rolls them
//! back and starts the job again (`recover`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_shardmap::{ShardKey, TableName, Transition};

use super::change::Change;
use super::copy::{columns, copy_rows, Copying, Route, Throttle};
use super::db::Conn;
use super::gate::{GatePhase, MoveGate};
use super::meta::Meta;
use super::stage;
use super::{JobStatus, RebalanceError};
use crate::config::{parse_table_name, Config};
use crate::runtime::{Runtime, Snapshot};

/// Longest catch-up before the cutover (mode logical).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

/// Catch-up is caught up when a call applies everything committed before
/// it began within this long.
const CAUGHT_UP: Duration = Duration::from_millis(500);

/// Keys deleted per statement on a source.
const DELETE_BATCH: usize = 50_000;

/// The move transaction of one shard: rows coming in, rows going out.
struct MoveTx {
    conn: Conn,
    gid: String,
    touched: bool,
}

/// Starts a job for `change`; returns its id once it is recorded.
pub async fn start(rt: &Arc<Runtime>, change: Change) -> Result<u64, RebalanceError> {
    let snap = rt.snapshot();
    let Some(sharding) = snap.sharding.as_ref() else {
        return Err(RebalanceError::Invalid(
            "rebalancing needs a sharded configuration ([[sharded_tables]])".into(),
        ));
    };
    let next = change.apply(&snap.config)?;
    let next_map = Arc::new(
        next.shard_map()
            .map_err(|e| RebalanceError::Invalid(e.to_string()))?,
    );
    Transition::new(sharding.map.clone(), next_map)?;
    let Some(running) = rt.jobs.lock_unless_running().await else {
        return Err(RebalanceError::Invalid(
            "another rebalancing job is running: wait for it (shardgate.jobs)".into(),
        ));
    };
    let mut meta = Meta::open(&snap.config).await?;
    let id = meta
        .insert_job(&change, &rt.registry.id, &snap.config.shards)
        .await?;
    launch(rt, id, change, meta, running);
    Ok(id)
}

/// Resumes job `id`, taken over (`recover`): from its slots and stages
/// when they are there, else from its start.
pub(super) async fn resume(
    rt: &Arc<Runtime>,
    id: u64,
    change: Change,
) -> Result<(), RebalanceError> {
    let Some(running) = rt.jobs.lock_unless_running().await else {
        return Err(RebalanceError::Invalid(
            "another rebalancing job is running".into(),
        ));
    };
    let meta = Meta::open(&rt.snapshot().config).await?;
    launch(rt, id, change, meta, running);
    Ok(())
}

/// Runs job `id` in the background, holding the job lock `running`.
fn launch(
    rt: &Arc<Runtime>,
    id: u64,
    change: Change,
    meta: Meta,
    running: tokio::sync::OwnedMutexGuard<()>,
) {
    let status = Arc::new(JobStatus::new(id, change.kind(), change.describe()));
    rt.jobs.add(status.clone());
    let rt = rt.clone();
    tokio::spawn(async move {
        let result = run(&rt, &status, meta, change).await;
        // Free for the next job (and RELOAD) before the job shows as ended.
        drop(running);
        status.finish(result);
    });
}

/// Tries the job up to [`ATTEMPTS`] times: a lost connection or a
/// terminated backend before the decision undoes the attempt, and the job
/// starts over.
async fn run(
    rt: &Arc<Runtime>,
    status: &JobStatus,
    mut meta: Meta,
    change: Change,
) -> Result<(), RebalanceError> {
    let mut attempt = 1;
    let result = loop {
        match run_once(rt, status, &mut meta, &change).await {
            Err(e) if e.retryable() && attempt < ATTEMPTS => {
                tracing::warn!(job = status.id, attempt, error = %e, "rebalancing attempt failed before its cutover; undone, trying again");
                status.rows_copied.store(0, Ordering::Relaxed);
                status.bytes_copied.store(0, Ordering::Relaxed);
                status.steps_done.store(0, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => break other,
        }
    };
    if let Err(e) = &result {
        if !status.decided() {
            discard(&rt.snapshot().config, status.id, &change).await;
        }
        record_failure(rt, status, meta, e).await;
    }
    result
}

/// The primaries a job of `change` touches under `config`.
pub(super) fn job_nodes(config: &Config, change: Option<&Change>) -> Vec<String> {
    let mut nodes: Vec<String> = config.shards.iter().map(|s| s.primary.clone()).collect();
    if let Some(Change::AddShard(s)) = change {
        if !nodes.contains(&s.primary) {
            nodes.push(s.primary.clone());
        }
    }
    nodes
}

/// Drops what an undone job leaves: its slots and stages, on every node.
pub(super) async fn discard(config: &Config, job: u64, change: &Change) {
    let db = &config.sharding.rebalance_database;
    for node in job_nodes(config, Some(change)) {
        let dropped = async {
            let conn = Conn::open(config, &node, db).await?;
            super::logical::drop_slots_of(&conn, job).await?;
            stage::discard(&conn, job).await
        }
        .await;
        if let Err(e) = dropped {
            tracing::warn!(job, node = %node, error = %e, "cannot drop the slots and stage of an undone move");
        }
    }
}

/// Marks a job that failed before its decision `failed` in the metadata,
/// so that no proxy takes it over and starts it again. A job past its
/// decision stays `switched`: recovery finishes it.
async fn record_failure(rt: &Arc<Runtime>, status: &JobStatus, mut meta: Meta, e: &RebalanceError) {
    if status.decided() {
        return;
    }
    let message = e.to_string();
    for _ in 0..3 {
        if meta.0.client.is_closed() {
            match Meta::open(&rt.snapshot().config).await {
                Ok(m) => meta = m,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let rows = status.rows_copied.load(Ordering::Relaxed);
        let bytes = status.bytes_copied.load(Ordering::Relaxed);
        if meta
            .update_job(status.id, "failed", rows, bytes, Some(&message))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::error!(job = status.id, "cannot record the job's failure in shardgate_meta: a proxy will take it over and start it again");
}

/// Attempts of a job before it fails.
const ATTEMPTS: u32 = 5;

async fn run_once(
    rt: &Arc<Runtime>,
    status: &JobStatus,
    meta: &mut Meta,
    change: &Change,
) -> Result<(), RebalanceError> {
    let _serial = rt.reconfiguring.lock().await;
    let snap = rt.snapshot();
    let next = change.apply(&snap.config)?;
    let next_map = Arc::new(
        next.shard_map()
            .map_err(|e| RebalanceError::Invalid(e.to_string()))?,
    );
    let current = snap
        .sharding
        .as_ref()
        .expect("checked at start")
        .map
        .clone();
    let transition = Transition::new(current, next_map)?;
    let db = next.sharding.rebalance_database.clone();
    let references: Vec<TableName> = if change.copies_reference_tables() {
        next.reference_tables
            .iter()
            .map(|t| parse_table_name(&t.table))
            .collect()
    } else {
        Vec::new()
    };
    if let Change::AddShard(shard) = &change {
        phase(status, meta, "schema").await;
        let target = Conn::open(&next, &shard.primary, &db).await?;
        let mut tables: Vec<TableName> = next
            .sharded_tables
            .iter()
            .map(|t| parse_table_name(&t.table))
            .collect();
        tables.extend(references.iter().cloned());
        super::schema::copy_schema(&next, &next.shards[0].primary, &target, &tables).await?;
    }

    phase(status, meta, "hold").await;
    let sources = transition.sources();
    let moving = moving_tables(&transition);
    let logical = if sources.is_empty() {
        false
    } else {
        match logical_possible(&next, &sources, &moving).await? {
            None => true,
            Some(why) => {
                tracing::info!(job = status.id, reason = %why, "mode block_writes: writes to moving keys wait for the whole copy");
                false
            }
        }
    };
    status.set_mode(if logical { "logical" } else { "block_writes" });
    let gate = Arc::new(MoveGate::new(
        transition,
        change.copies_reference_tables(),
        !logical,
    ));
    let hold_timeout = Duration::from_millis(next.sharding.rebalance_hold_timeout_ms);
    let held_version = install(rt, &next, Some(gate.clone()), Some(&snap));
    let hold = Hold {
        rt,
        job: status.id,
        mode: status.mode(),
        from: &snap.config.shards,
        timeout: hold_timeout,
        // A proxy fences itself at half its lease; a statement that passed
        // its fence check just before may still wait for a server
        // connection (pool_timeout, connect_timeout) before it is sent.
        outwait: Duration::from_millis(next.sharding.rebalance_proxy_lease_ms)
            + next.proxy.pool_timeout
            + next.proxy.connect_timeout,
    };
    let held = async {
        if !rt
            .clients
            .wait_snapshots(held_version, Instant::now() + hold_timeout)
            .await
        {
            return Err(RebalanceError::HoldTimeout(
                "transactions begun before the move did not end".into(),
            ));
        }
        hold.everywhere(meta, "copying").await
    }
    .await;
    if let Err(e) = held {
        abandon(&hold, meta, &snap, &gate).await;
        return Err(e);
    }
    let moves = Moves {
        sources,
        moving,
        logical,
    };
    let result = move_rows(&hold, status, meta, &next, &gate, &references, &moves).await;
    if result.is_err() && gate.phase() != GatePhase::Open {
        abandon(&hold, meta, &snap, &gate).await;
    }
    result
}

/// The hold of one move across proxies: this proxy's sessions, and every
/// other proxy that renews its lease in `shardgate_meta`.
struct Hold<'a> {
    rt: &'a Arc<Runtime>,
    job: u64,
    mode: &'static str,
    /// The shards before the move (other proxies check they route by them).
    from: &'a [crate::config::ShardConfig],
    timeout: Duration,
    /// How long after its last heartbeat a proxy that lost its registry
    /// connection may still send a write by the old map (its lease, plus
    /// the longest a statement waits for a server connection).
    outwait: Duration,
}

impl Hold<'_> {
    /// Tells the other proxies that the new map is in force for keyed
    /// statements (`cleaning`); they switch without acknowledging.
    async fn cleaning(&self, meta: &Meta) {
        if let Err(e) = meta
            .set_hold(self.job, Some("cleaning"), self.mode, self.from)
            .await
        {
            tracing::warn!(job = self.job, error = %e, "cannot tell other proxies that the cutover is over; they switch when the job is done");
        }
    }

    /// Asks every other live proxy to hold the moving keys in `phase`
    /// (`copying`, `cutover`) and waits until each has.
    async fn everywhere(&self, meta: &Meta, phase: &str) -> Result<(), RebalanceError> {
        meta.set_hold(self.job, Some(phase), self.mode, self.from)
            .await?;
        meta.wait_acks(
            &self.rt.registry.id,
            self.job,
            phase,
            self.outwait,
            Instant::now() + self.timeout,
        )
        .await
    }
}

/// Steps 3 to 6; on an error before the decision the caller reinstalls the
/// old map.
async fn move_rows(
    hold: &Hold<'_>,
    status: &JobStatus,
    meta: &mut Meta,
    next: &Config,
    gate: &Arc<MoveGate>,
    references: &[TableName],
    moves: &Moves,
) -> Result<(), RebalanceError> {
    let rt = hold.rt;
    let (sources, moving, logical) = (&moves.sources[..], &moves.moving[..], moves.logical);
    let t = &gate.transition;
    let db = &next.sharding.rebalance_database;
    let job = status.id;
    // Mode logical copies the reference tables at the merge, uncounted.
    let counted_references = if logical { 0 } else { references.len() };
    status.steps_total.store(
        (counted_references + sources.len() * moving.len()) as u64,
        Ordering::Relaxed,
    );
    phase(status, meta, "copy").await;
    let mut txs: HashMap<usize, MoveTx> = HashMap::new();
    for (i, s) in next.shards.iter().enumerate() {
        let conn = Conn::open(next, &s.primary, db).await?;
        conn.run("BEGIN").await?;
        txs.insert(
            i,
            MoveTx {
                conn,
                gid: format!("shardgate_move_{job}_{i}"),
                touched: false,
            },
        );
    }
    let mut logical = if logical {
        Some(open_logical(next, job, sources, moving).await?)
    } else {
        None
    };
    let hold_timeout = Duration::from_millis(next.sharding.rebalance_hold_timeout_ms);
    let mut cut_at: Option<Instant> = None;
    let mut dirty: Option<Dirty> = None;
    let cut_at_ref = &mut cut_at;
    let outcome = async {
        let cut_at = cut_at_ref;
        copy_and_prepare(
            status,
            meta,
            next,
            t,
            sources,
            moving,
            references,
            &mut txs,
            logical.as_mut(),
        )
        .await?;
        if let Some(l) = logical.as_mut() {
            phase(status, meta, "catch-up").await;
            catch_up_closely(status, l, t, &mut txs).await?;
            l.read_given(t, moving).await?;
        } else {
            crate::twophase::failpoint("rebalance-prepared");
        }
        let cutover_max = Duration::from_millis(next.sharding.rebalance_cutover_max_ms);
        for attempt in 1.. {
            if let Some(l) = logical.as_mut() {
                if attempt > 1 {
                    phase(status, meta, "catch-up").await;
                    catch_up_closely(status, l, t, &mut txs).await?;
                }
                let (before, staged) = (dirty.take(), Rounds::Staged);
                let verified = verify_rounds(status, l, t, moving, &mut txs, before, staged);
                dirty = Some(verified.await?);
                phase(status, meta, "merge").await;
                copy_references(status, next, references, &mut txs).await?;
                l.merge(moving, &mut txs).await?;
                // The changes made during the merge.
                catch_up_closely(status, l, t, &mut txs).await?;
                let (before, merged) = (dirty.take(), Rounds::Merged);
                let verified = verify_rounds(status, l, t, moving, &mut txs, before, merged);
                dirty = Some(verified.await?);
            }
            phase(status, meta, "cutover").await;
            gate.cut_over();
            let held_at = Instant::now();
            *cut_at = Some(held_at);
            if !rt
                .clients
                .wait_moves_settled(held_at + hold_timeout)
                .await
            {
                return Err(RebalanceError::HoldTimeout(
                    "statements on moving keys did not finish".into(),
                ));
            }
            let name = if attempt == 1 {
                "cutover".to_owned()
            } else {
                format!("cutover {attempt}")
            };
            hold.everywhere(meta, &name).await?;
            held_step(job, "moving keys held everywhere", *cut_at);
            let targets = touched_targets(&txs);
            let mut moved: Vec<super::sequences::Moved<'_>> = moving
                .iter()
                .map(|rule| super::sequences::Moved {
                    table: &rule.table,
                    sources: sources.to_vec(),
                    targets: targets.clone(),
                })
                .collect();
            if !references.is_empty() {
                let new_shard = next.shards.len() - 1;
                // Copied from shard 0.
                moved.extend(references.iter().map(|table| super::sequences::Moved {
                    table,
                    sources: vec![0],
                    targets: vec![new_shard],
                }));
            }
            super::sequences::advance(&conns_of(&txs), &moved).await?;
            held_step(job, "sequences advanced", *cut_at);
            let Some(l) = logical.as_mut() else {
                break;
            };
            let stop_at = held_at + cutover_max;
            if attempt == 1 && crate::twophase::failpoint_on("rebalance-cutover-stall") {
                // Catch-up slower than the writes it must apply.
                tokio::time::sleep_until(stop_at.into()).await;
            }
            let drained = loop {
                if l.catch_up(t, Some(stop_at)).await?.1 {
                    break true;
                }
                if Instant::now() >= stop_at {
                    break false;
                }
            };
            // The drain, taking its keys into the move transactions and
            // their verification all end by `stop_at` (a catch-up call
            // ends its batch, so the drain alone may pass it).
            let done = drained
                && Instant::now() < stop_at
                && tokio::time::timeout_at(stop_at.into(), async {
                    l.sync(&mut txs, true).await?;
                    held_step(job, "slots drained", *cut_at);
                    verify_given(l, moving, &txs, dirty.as_ref()).await
                })
                .await
                .ok()
                .transpose()?
                .is_some();
            if !done {
                // Clients wrote more than the cutover could apply and verify
                // in time: the held statements go on (to the sources), and
                // the job catches up further before it tries again.
                gate.resume_copying();
                hold.everywhere(meta, "copying").await?;
                l.unmerge(&mut txs).await?;
                status.cutover_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    job,
                    attempt,
                    held_ms = held_at.elapsed().as_millis() as u64,
                    "cutover: the last changes could not be applied and verified within sharding.rebalance_cutover_max_ms; moving keys released, catching up before the next attempt"
                );
                continue;
            }
            held_step(job, "moved rows verified", *cut_at);
            prepare(&mut txs).await?;
            crate::twophase::failpoint("rebalance-prepared");
            break;
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        // Slots and stages stay: a retry resumes from them; a job that
        // fails for good discards them (`run`).
        rollback_prepared(txs.values()).await;
        return Err(e);
    }
    // The untouched move transactions ended at the prepare; their
    // connections stay for the last catch-up below.
    let go_on = status.checkpoint().await.is_ok() && status.decide();
    if !go_on {
        rollback_prepared(txs.values().filter(|tx| tx.touched)).await;
        return Err(RebalanceError::Cancelled);
    }
    if let Err(e) = meta.record_switch(job, &rt.registry.id, &next.shards).await {
        rollback_prepared(txs.values().filter(|tx| tx.touched)).await;
        return Err(e);
    }
    crate::twophase::failpoint("rebalance-switched");
    // Decided: from here on the move completes.
    for tx in txs.values().filter(|tx| tx.touched) {
        let sql = format!("COMMIT PREPARED '{}'", tx.gid);
        let mut tries = 0;
        while let Err(e) = tx.conn.run(&sql).await {
            tries += 1;
            tracing::error!(node = %tx.conn.node, gid = %tx.gid, error = %e, "COMMIT PREPARED of a move failed; retrying");
            if tries >= 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    held_step(job, "committed", cut_at);
    if let Some(l) = logical.as_mut() {
        // Writes straight to a source (no proxy holds them) committed
        // since the final drain go to their new owners before the held
        // writes do.
        if let Some(sql) = crate::twophase::failpoint_sql("rebalance-direct-write") {
            // A client writing to the first source, not through a proxy.
            if let Some(tx) = sources.first().and_then(|s| txs.get(s)) {
                if let Err(e) = tx.conn.run(&sql).await {
                    tracing::error!(error = %e, "failpoint SQL failed");
                }
            }
        }
        let mut direct = 0;
        loop {
            match l.catch_up(t, None).await {
                Ok((n, drained)) => {
                    direct += n;
                    if drained {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(job, error = %e, "cannot read the writes made straight to the sources during the cutover: VERIFY JOB after the job");
                    break;
                }
            }
        }
        if let Err(e) = l.sync(&mut txs, false).await {
            tracing::error!(job, error = %e, "cannot apply the writes made straight to the sources during the cutover: VERIFY JOB after the job");
        }
        if direct > 0 {
            tracing::warn!(job, changes = direct, "writes made straight to a source during the cutover, not through a proxy, were applied to their new owners");
        }
        held_step(job, "switched: moving keys go to their new owners", cut_at);
        l.discard_stages(job).await;
        // The new map is in force for statements naming their keys; the
        // sources still hold copies of the rows they gave, so statements
        // that cannot name their keys wait until those are deleted.
        let cleaning = Arc::new(gate.cleaning());
        install(rt, next, Some(cleaning.clone()), None);
        gate.open();
        hold.cleaning(meta).await;
        phase(status, meta, "cleanup").await;
        crate::twophase::failpoint("rebalance-cleanup");
        let cleaned = delete_given(next, l, moving).await;
        install(rt, next, None, None);
        cleaning.open();
        l.drop_slots().await;
        // On an error the job stays `switched`: its takeover (by this
        // proxy, once this job ends) removes the copies left on the sources.
        cleaned?;
    } else {
        held_step(job, "switched: moving keys go to their new owners", cut_at);
        install(rt, next, None, None);
        gate.open();
    }
    status.set_phase("done");
    let rows = status.rows_copied.load(Ordering::Relaxed);
    let bytes = status.bytes_copied.load(Ordering::Relaxed);
    meta.update_job(job, "done", rows, bytes, None).await?;
    Ok(())
}

/// Mode logical: catches up (once merged, each call's keys taken into the
/// move transactions) until a call applies everything committed before it
/// began within [`CAUGHT_UP`], or for [`CATCH_UP_LIMIT`] (clients
/// that write faster than catch-up applies leave the rest to the cutover,
/// which gives up and comes back here if it cannot drain it in time).
async fn catch_up_closely(
    status: &JobStatus,
    l: &mut Logical<'_>,
    t: &Transition,
    txs: &mut HashMap<usize, MoveTx>,
) -> Result<(), RebalanceError> {
    let until = Instant::now() + CATCH_UP_LIMIT;
    loop {
        status.checkpoint().await?;
        let began = Instant::now();
        let (_, drained) = l.catch_up(t, None).await?;
        // Once merged, the keys of every call go into the move
        // transactions at once: taken in one set at the end, 133,000 keys
        // took 17 s in the saturated bench, and the cutover then found
        // those 17 s of writes to drain.
        l.sync(txs, true).await?;
        status
            .lag_bytes
            .store(l.lag_bytes().await, Ordering::Relaxed);
        crate::twophase::failpoint("rebalance-catch-up");
        if drained && began.elapsed() < CAUGHT_UP {
            return Ok(());
        }
        if Instant::now() >= until {
            tracing::warn!(
                job = status.id,
                lag_bytes = status.lag_bytes.load(Ordering::Relaxed),
                "catch-up has not caught up with the writes on the sources in {} s; the cutover tries anyway and gives up after sharding.rebalance_cutover_max_ms if it cannot apply the rest",
                CATCH_UP_LIMIT.as_secs()
            );
            return Ok(());
        }
    }
}

/// Which verification rounds [`verify_rounds`] runs (mode logical).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounds {
    /// Before the merge, against the stages: every moved row while clients
    /// write, then again the keys that differed or changed meanwhile (from
    /// `dirty` on a later attempt), until fewer than [`FEW_KEYS`] are left.
    Staged,
    /// After the merge, against the move transactions: the keys written
    /// during it, then again those that changed meanwhile, while each
    /// round leaves at most half as many and at most
    /// [`MERGED_ROUNDS_MAX_KEYS`] (the move transaction holds back vacuum
    /// on its node: a long round there slows catch-up more than the
    /// cutover gains).
    Merged,
}

/// Mode logical: verification rounds while clients write (see [`Rounds`]),
/// with catch-up between them; the cutover, which verifies the rest with
/// the moving keys held, verifies only the keys returned and what changes
/// after.
async fn verify_rounds(
    status: &JobStatus,
    l: &mut Logical<'_>,
    t: &Transition,
    moving: &[Arc<shardgate_shardmap::TableRule>],
    txs: &mut HashMap<usize, MoveTx>,
    mut dirty: Option<Dirty>,
    rounds: Rounds,
) -> Result<Dirty, RebalanceError> {
    let left = |l: &Logical<'_>, d: &Option<Dirty>| -> usize {
        l.changed_keys()
            + d.iter()
                .flat_map(|d| d.values())
                .map(HashSet::len)
                .sum::<usize>()
    };
    let mut before = left(l, &dirty);
    for round in 0..VERIFY_ROUNDS {
        if rounds == Rounds::Merged && (before <= FEW_KEYS / 4 || before > MERGED_ROUNDS_MAX_KEYS) {
            break;
        }
        status.checkpoint().await?;
        let started = Instant::now();
        let found = verify_early(l, moving, txs, dirty.as_ref()).await?;
        let differing: usize = found.values().map(HashSet::len).sum();
        dirty = Some(found);
        catch_up_closely(status, l, t, txs).await?;
        let now = left(l, &dirty);
        tracing::info!(
            job = status.id,
            round,
            against = if l.merged {
                "move transactions"
            } else {
                "stages"
            },
            ms = started.elapsed().as_millis() as u64,
            differing,
            left = now,
            "moved rows verified before the cutover"
        );
        let enough = match rounds {
            Rounds::Staged => now < FEW_KEYS,
            Rounds::Merged => now * 2 > before,
        };
        if enough {
            break;
        }
        before = now;
    }
    Ok(dirty.unwrap_or_default())
}

/// Logs a step of the cutover with the time since it began (how long the
/// moving keys have been held).
fn held_step(job: u64, step: &str, since: Option<Instant>) {
    if let Some(t) = since {
        tracing::info!(
            job,
            held_ms = t.elapsed().as_millis() as u64,
            "cutover: {step}"
        );
    }
}

/// Steps 3 to 5: copy into the targets' move transactions, delete from the
/// sources', verify, prepare the touched ones and roll back the others.
#[allow(clippy::too_many_arguments)]
async fn copy_and_prepare(
    status: &JobStatus,
    meta: &Meta,
    next: &Config,
    t: &Transition,
    sources: &[usize],
    moving: &[Arc<shardgate_shardmap::TableRule>],
    references: &[TableName],
    txs: &mut HashMap<usize, MoveTx>,
    logical: Option<&mut Logical<'_>>,
) -> Result<(), RebalanceError> {
    let db = &next.sharding.rebalance_database;
    let mut throttle = Throttle::new(next.sharding.rebalance_max_mb_s);
    if let Some(l) = logical {
        // Reference tables are copied at the merge.
        return l
            .copy(status, next, t, sources, moving, &mut throttle)
            .await;
    }
    copy_references(status, next, references, txs).await?;
    status
        .steps_done
        .fetch_add(references.len() as u64, Ordering::Relaxed);
    for &s in sources {
        status.checkpoint().await?;
        let reader = Conn::open(next, &next.shards[s].primary, db).await?;
        for rule in moving {
            let (cols, field) = key_field(&reader, rule).await?;
            let to = |k: &ShardKey| match t.next_shard(rule, k) {
                Ok(n) if n != s => Some(n),
                _ => None,
            };
            let conns = conns_of(txs);
            let copied = copy_rows(
                &reader,
                &conns,
                &Copying::whole(&rule.table, &cols),
                Route::Keys {
                    rule,
                    field,
                    to: &to,
                },
                &mut throttle,
                status,
            )
            .await?;
            crate::twophase::failpoint("rebalance-copy");
            for target in copied.rows_to.keys() {
                txs.get_mut(target)
                    .expect("a move transaction per shard")
                    .touched = true;
            }
            let tx = txs.get_mut(&s).expect("a move transaction per shard");
            let texts: Vec<String> = copied.keys.iter().map(|k| k.to_string()).collect();
            let deleted = delete_keys(&tx.conn, rule, &texts).await?;
            if deleted != copied.rows() {
                return Err(RebalanceError::Verify(format!(
                    "shard {s} deleted {deleted} rows of {} but gave {}",
                    rule.table,
                    copied.rows()
                )));
            }
            if deleted > 0 {
                tx.touched = true;
            }
            status.steps_done.fetch_add(1, Ordering::Relaxed);
        }
    }
    phase(status, meta, "prepare").await;
    prepare(txs).await
}

/// `ADD SHARD`: the reference tables, from shard 0 into the new shard's
/// move transaction (their writes are held for the whole move).
async fn copy_references(
    status: &JobStatus,
    next: &Config,
    references: &[TableName],
    txs: &mut HashMap<usize, MoveTx>,
) -> Result<(), RebalanceError> {
    if references.is_empty() {
        return Ok(());
    }
    let mut throttle = Throttle::new(next.sharding.rebalance_max_mb_s);
    let new_shard = next.shards.len() - 1;
    let tx = txs
        .get_mut(&new_shard)
        .expect("a move transaction per shard");
    tx.touched = true;
    for table in references {
        tx.conn.run(&format!("TRUNCATE {table}")).await?;
    }
    let first = Conn::open(
        next,
        &next.shards[0].primary,
        &next.sharding.rebalance_database,
    )
    .await?;
    for table in references {
        let cols = columns(&first, table).await?;
        let conns = conns_of(txs);
        copy_rows(
            &first,
            &conns,
            &Copying::whole(table, &cols),
            Route::All(new_shard),
            &mut throttle,
            status,
        )
        .await?;
    }
    Ok(())
}

/// The columns a copy of `rule`'s table reads on `conn`, and the position
/// of its shard key among them.
async fn key_field(
    conn: &Conn,
    rule: &shardgate_shardmap::TableRule,
) -> Result<(Vec<String>, usize), RebalanceError> {
    let cols = columns(conn, &rule.table).await?;
    let field = cols.iter().position(|c| *c == rule.column).ok_or_else(|| {
        RebalanceError::Invalid(format!(
            "table {} on {} has no column {}",
            rule.table, conn.node, rule.column
        ))
    })?;
    Ok((cols, field))
}

/// Prepares the touched move transactions and rolls back the others.
async fn prepare(txs: &mut HashMap<usize, MoveTx>) -> Result<(), RebalanceError> {
    for tx in txs.values_mut() {
        if tx.touched {
            tx.conn
                .run(&format!("PREPARE TRANSACTION '{}'", tx.gid))
                .await?;
        } else {
            tx.conn.run("ROLLBACK").await?;
        }
    }
    Ok(())
}

/// Mode `logical`: the sources' slots, the moving tables as decoding names
/// them, the targets' stages and the keys each source gives.
struct Logical<'a> {
    job: u64,
    /// Per source: a connection and its slot.
    slots: Vec<(usize, Conn, String)>,
    /// Moving tables by their decoded name (`schema.name`).
    tables: HashMap<String, super::logical::Table<'a>>,
    /// Decoded name of each moving table, by its configured name.
    printed: HashMap<String, String>,
    /// Per source, the keys it gives.
    keys: HashMap<usize, super::logical::KeysOut>,
    /// Per shard, its staging connection (autocommit).
    stages: HashMap<usize, Conn>,
    /// Per source, its slot's stream, from the first catch-up on.
    streams: HashMap<usize, super::stream::SlotStream>,
    /// The configuration after the move (its nodes and monitor user).
    config: Config,
    /// The stages are merged into the move transactions: keys caught up
    /// since are taken into them again (`sync`).
    merged: bool,
    /// Keys caught up into the stages since the last merge or `sync`.
    pending: super::logical::Pending,
    /// Per source, the WAL position up to which catch-up applied changes
    /// (the slot's confirmed position stops at the merge).
    reached: HashMap<usize, u64>,
}

impl Logical<'_> {
    /// How many keys catch-up changed since the last verification round.
    fn changed_keys(&self) -> usize {
        self.keys
            .values()
            .flat_map(|o| o.changed.values())
            .map(HashSet::len)
            .sum()
    }

    fn printed_name(&self, rule: &shardgate_shardmap::TableRule) -> String {
        self.printed
            .get(&rule.table.to_string())
            .cloned()
            .unwrap_or_else(|| rule.table.to_string())
    }

    /// Copies the rows of the moving keys into the targets' stages, chunk
    /// by chunk of pages, each chunk committed on each target with the page
    /// it reached. Every chunk of a source reads one snapshot, taken after
    /// its slot began; a resumed copy starts at the first chunk some
    /// target lacks.
    async fn copy(
        &mut self,
        status: &JobStatus,
        next: &Config,
        t: &Transition,
        sources: &[usize],
        moving: &[Arc<shardgate_shardmap::TableRule>],
        throttle: &mut Throttle,
    ) -> Result<(), RebalanceError> {
        let db = &next.sharding.rebalance_database;
        let job = self.job;
        let chunk = stage::chunk_pages(next.sharding.rebalance_chunk_mb);
        let mut reached: HashMap<usize, HashMap<(usize, usize), i64>> = HashMap::new();
        for (shard, conn) in &self.stages {
            reached.insert(*shard, stage::progress(conn, job).await?);
        }
        for &s in sources {
            status.checkpoint().await?;
            let reader = Conn::open(next, &next.shards[s].primary, db).await?;
            reader.run("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
            for (i, rule) in moving.iter().enumerate() {
                let targets: Vec<usize> = self.stages.keys().copied().filter(|x| *x != s).collect();
                let at = |x: usize| reached[&x].get(&(s, i)).copied().unwrap_or(0);
                let from = targets
                    .iter()
                    .map(|x| at(*x))
                    .min()
                    .unwrap_or(stage::COPIED);
                if from == stage::COPIED {
                    status.steps_done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // A row copied before a stop may be given again.
                let resumed = targets.iter().any(|x| at(*x) > 0);
                let (cols, field) = key_field(&reader, rule).await?;
                let pages: i64 = reader
                    .client
                    .query_one(
                        "SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::int8",
                        &[&rule.table.to_string()],
                    )
                    .await
                    .map_err(|e| reader.err(e))?
                    .get(0);
                if resumed {
                    tracing::info!(job, shard = s, table = %rule.table, from_page = from, pages, "copy resumed where it stopped");
                }
                let mut first = from - from % chunk;
                loop {
                    let last = first + chunk >= pages;
                    let end = if last { stage::COPIED } else { first + chunk };
                    let needing: Vec<usize> =
                        targets.iter().copied().filter(|x| at(*x) < end).collect();
                    let mut filter = format!("ctid >= '({first},0)'::tid");
                    if !last {
                        filter.push_str(&format!(" AND ctid < '({end},0)'::tid"));
                    }
                    for x in &needing {
                        stage::begin_chunk(&self.stages[x], job, i, resumed).await?;
                    }
                    let writers: HashMap<usize, &Conn> =
                        needing.iter().map(|x| (*x, &self.stages[x])).collect();
                    let to = |k: &ShardKey| match t.next_shard(rule, k) {
                        Ok(n) if n != s && writers.contains_key(&n) => Some(n),
                        _ => None,
                    };
                    copy_rows(
                        &reader,
                        &writers,
                        &Copying {
                            table: &rule.table,
                            cols: &cols,
                            filter,
                            into: stage::chunk_table(job, i, resumed),
                        },
                        Route::Keys {
                            rule,
                            field,
                            to: &to,
                        },
                        throttle,
                        status,
                    )
                    .await?;
                    for x in &needing {
                        stage::commit_chunk(&self.stages[x], job, s, i, resumed, end).await?;
                    }
                    if last {
                        break;
                    }
                    first = end;
                }
                crate::twophase::failpoint("rebalance-copy");
                status.steps_done.fetch_add(1, Ordering::Relaxed);
            }
            reader.run("COMMIT").await?;
        }
        Ok(())
    }
    /// Reads back the keys each source gave from the stages (what the
    /// verification compares).
    async fn read_given(
        &mut self,
        t: &Transition,
        moving: &[Arc<shardgate_shardmap::TableRule>],
    ) -> Result<(), RebalanceError> {
        for (i, rule) in moving.iter().enumerate() {
            let printed = self.printed_name(rule);
            for conn in self.stages.values() {
                for text in stage::keys(conn, self.job, i, &rule.column).await? {
                    let Ok(key) = ShardKey::parse_text(rule.key_type, &text) else {
                        continue;
                    };
                    if let Ok(Some((from, _))) = t.key_moves(rule, &key) {
                        self.keys
                            .entry(from)
                            .or_default()
                            .keys
                            .entry(printed.clone())
                            .or_default()
                            .insert(text);
                    }
                }
            }
        }
        Ok(())
    }

    /// Just before the cutover: each target's move transaction takes its
    /// stages in one `INSERT ... SELECT` each, checked against the stage
    /// (count and checksum of the rows, in the same transaction). Late, so
    /// that the move transaction (which holds back vacuum on its node once
    /// it wrote) stays short.
    async fn merge(
        &mut self,
        moving: &[Arc<shardgate_shardmap::TableRule>],
        txs: &mut HashMap<usize, MoveTx>,
    ) -> Result<(), RebalanceError> {
        // Everything the stages took so far goes in now.
        self.pending.clear();
        for (i, rule) in moving.iter().enumerate() {
            let stage = stage::table(self.job, i);
            for shard in self.stages.keys() {
                let tx = txs.get_mut(shard).expect("a move transaction per shard");
                let cols = columns(&tx.conn, &rule.table).await?;
                if stage::merge(&tx.conn, self.job, i, &rule.table, &cols).await? == 0 {
                    continue;
                }
                tx.touched = true;
                if let Some(sql) = crate::twophase::failpoint_sql("rebalance-corrupt") {
                    // A target that holds something else than its stage.
                    tx.conn.run(&sql).await?;
                }
                let column = TableName::new(None, &rule.column);
                let filter = format!("{column} IN (SELECT {column} FROM {stage})");
                let staged = table_digest(&tx.conn, &stage, "").await?;
                let merged = table_digest(&tx.conn, &rule.table, &filter).await?;
                if staged != merged {
                    return Err(RebalanceError::Verify(format!(
                        "shard {shard} staged {} rows of {} (checksum {}) but took {} (checksum {})",
                        staged.rows, rule.table, staged.checksum, merged.rows, merged.checksum
                    )));
                }
            }
        }
        self.merged = true;
        Ok(())
    }

    /// Undoes [`Logical::merge`] (a cutover that gave up): the move
    /// transactions roll back and begin again, so none stays open while
    /// the job catches up further.
    async fn unmerge(&mut self, txs: &mut HashMap<usize, MoveTx>) -> Result<(), RebalanceError> {
        for tx in txs.values_mut() {
            tx.conn.run("ROLLBACK").await?;
            tx.conn.run("BEGIN").await?;
            tx.touched = false;
        }
        self.merged = false;
        self.pending.clear();
        Ok(())
    }

    /// Applies what the slots' streams bring (at most one read's worth
    /// each) to the stages, every source at once; returns how many
    /// changes, and whether every slot is drained.
    async fn catch_up(
        &mut self,
        t: &Transition,
        stop_at: Option<Instant>,
    ) -> Result<(usize, bool), RebalanceError> {
        for (source, conn, slot) in &self.slots {
            if !self.streams.contains_key(source) {
                let stream = start_stream(&self.config, conn, slot).await?;
                self.streams.insert(*source, stream);
            }
            self.keys.entry(*source).or_default();
        }
        let (tables, stages) = (&self.tables, &self.stages);
        let mut streams: HashMap<usize, _> =
            self.streams.iter_mut().map(|(s, st)| (*s, st)).collect();
        let mut outs: HashMap<usize, _> = self.keys.iter_mut().map(|(s, o)| (*s, o)).collect();
        let work = self.slots.iter().filter_map(|(source, conn, _)| {
            let (stream, out) = (streams.remove(source)?, outs.remove(source)?);
            Some(async move {
                let mut pending = super::logical::Pending::new();
                let done = super::logical::catch_up(
                    conn,
                    stream,
                    stop_at,
                    *source,
                    tables,
                    t,
                    stages,
                    out,
                    &mut pending,
                )
                .await;
                (*source, done, pending)
            })
        });
        let results = futures_util::future::join_all(work).await;
        let (mut applied, mut drained, mut failed) = (0, true, None);
        for (source, done, pending) in results {
            // Keys applied before a failure are taken into the move
            // transactions all the same.
            for (at, keys) in pending {
                self.pending.entry(at).or_default().extend(keys);
            }
            match done {
                Ok(done) => {
                    if let Some(lsn) = done.reached {
                        let r = self.reached.entry(source).or_default();
                        *r = (*r).max(lsn);
                    }
                    applied += done.applied;
                    drained &= done.drained;
                }
                Err(e) => {
                    // A new attempt starts a new stream.
                    self.streams.remove(&source);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((applied, drained)),
        }
    }

    /// After the merge: takes the keys caught up since into the move
    /// transactions (`in_move_tx`), or once those committed into the
    /// targets' tables, one transaction per (target, table).
    async fn sync(
        &mut self,
        txs: &mut HashMap<usize, MoveTx>,
        in_move_tx: bool,
    ) -> Result<(), RebalanceError> {
        if !self.merged {
            return Ok(());
        }
        let started = Instant::now();
        let mut keys_synced = 0;
        for ((to, printed), keys) in std::mem::take(&mut self.pending) {
            let (Some(table), Some(tx)) = (self.tables.get(&printed), txs.get_mut(&to)) else {
                continue;
            };
            let keys: Vec<String> = keys.into_iter().collect();
            keys_synced += keys.len();
            let cols = columns(&tx.conn, &table.rule.table).await?;
            let filter = key_in(table.rule);
            let remerge = super::stage::remerge(
                &tx.conn,
                &table.rule.table,
                &table.stage,
                &cols,
                &filter,
                &keys,
            );
            if in_move_tx {
                remerge.await?;
            } else {
                tx.conn.run("BEGIN").await?;
                if let Err(e) = remerge.await {
                    let _ = tx.conn.run("ROLLBACK").await;
                    return Err(e);
                }
                tx.conn.run("COMMIT").await?;
            }
            tx.touched = true;
        }
        tracing::debug!(
            job = self.job,
            keys = keys_synced,
            ms = started.elapsed().as_millis() as u64,
            "caught-up keys taken into the move transactions"
        );
        Ok(())
    }

    /// WAL bytes written on the sources after the position catch-up
    /// applied (durably on the stages or in the move transactions).
    async fn lag_bytes(&self) -> u64 {
        let mut lag = 0;
        for (source, conn, slot) in &self.slots {
            let reached =
                shardgate_jobs::lsn::format_lsn(self.reached.get(source).copied().unwrap_or(0));
            let row = conn
                .client
                .query_one(
                    "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), \
                     greatest(confirmed_flush_lsn, $2::text::pg_lsn)), 0)::int8 \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[slot, &reached],
                )
                .await;
            lag += row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64);
        }
        lag
    }

    async fn drop_slots(&mut self) {
        self.streams.clear();
        for (_, conn, slot) in &self.slots {
            super::logical::drop_slot(conn, slot).await;
        }
    }

    /// Drops the stages (the job is decided: the rows are in the targets'
    /// tables). What a failure leaves is dropped by the job's takeover.
    async fn discard_stages(&self, job: u64) {
        for conn in self.stages.values() {
            if let Err(e) = stage::discard(conn, job).await {
                tracing::warn!(job, node = %conn.node, error = %e, "cannot drop the stage of a finished move");
            }
        }
    }
}

/// Starts streaming `slot` of the source `conn` is connected to, ending a
/// stream an earlier attempt left (its server process may still hold the
/// slot for a moment).
async fn start_stream(
    config: &Config,
    conn: &Conn,
    slot: &str,
) -> Result<super::stream::SlotStream, RebalanceError> {
    let mut tries = 0;
    loop {
        super::logical::free_slot(conn, slot).await?;
        match super::stream::SlotStream::start(config, &conn.node, slot).await {
            Err(RebalanceError::Stream { message, .. })
                if message.starts_with("55006") && tries < 50 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Mode `logical`: the decoded names and primary keys of the moving tables,
/// the slots on the sources and the stages on every shard. The job resumes
/// when every source still has its slot (and the stages, what they
/// hold); otherwise any remains of an earlier attempt go, and fresh slots
/// begin before any row is copied.
async fn open_logical<'a>(
    next: &Config,
    job: u64,
    sources: &[usize],
    moving: &'a [Arc<shardgate_shardmap::TableRule>],
) -> Result<Logical<'a>, RebalanceError> {
    let db = &next.sharding.rebalance_database;
    let mut l = Logical {
        job,
        slots: Vec::new(),
        tables: HashMap::new(),
        printed: HashMap::new(),
        keys: HashMap::new(),
        stages: HashMap::new(),
        streams: HashMap::new(),
        config: next.clone(),
        merged: false,
        pending: HashMap::new(),
        reached: HashMap::new(),
    };
    let first = Conn::open(next, &next.shards[sources[0]].primary, db).await?;
    for (i, rule) in moving.iter().enumerate() {
        let printed: String = first
            .client
            .query_one(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::text::regclass",
                &[&rule.table.to_string()],
            )
            .await
            .map_err(|e| first.err(e))?
            .get(0);
        let key_columns = super::logical::primary_key(&first, &rule.table).await?;
        l.printed.insert(rule.table.to_string(), printed.clone());
        l.tables.insert(
            printed,
            super::logical::Table {
                rule: rule.as_ref(),
                key_columns,
                stage: stage::table(job, i),
            },
        );
    }
    for &s in sources {
        let conn = Conn::open(next, &next.shards[s].primary, db).await?;
        let slot = super::logical::slot_name(job, s);
        l.slots.push((s, conn, slot));
    }
    let mut resumed = true;
    for (_, conn, slot) in &l.slots {
        resumed &= super::logical::slot_exists(conn, slot).await?;
    }
    for (s, shard) in next.shards.iter().enumerate() {
        l.stages
            .insert(s, Conn::open(next, &shard.primary, db).await?);
    }
    if resumed {
        tracing::info!(job, "resuming the move from its slots and stages");
    } else {
        for conn in l.stages.values() {
            stage::discard(conn, job).await?;
        }
        for (_, conn, slot) in &l.slots {
            super::logical::drop_slot(conn, slot).await;
            super::logical::create_slot(conn, slot).await?;
        }
    }
    for (i, rule) in moving.iter().enumerate() {
        let key_columns = &l.tables[&l.printed[&rule.table.to_string()]].key_columns;
        for conn in l.stages.values() {
            stage::create(conn, job, i, &rule.table, key_columns).await?;
        }
    }
    Ok(l)
}

/// Keys to verify again at the cutover, per (source, table as decoding
/// prints it).
type Dirty = HashMap<(usize, String), HashSet<String>>;

/// Early verification rounds at most (mode logical).
const VERIFY_ROUNDS: usize = 5;

/// Keys left to verify below which the cutover begins.
const FEW_KEYS: usize = 2_000;

/// Keys to verify after the merge above which no round runs before the
/// cutover (mode logical; see [`Rounds::Merged`]).
const MERGED_ROUNDS_MAX_KEYS: usize = 30_000;

/// Mode `logical`, before the cutover (moving keys not held): compares
/// given keys' rows on their source and in the targets' stages (once
/// merged: their move transactions), key by key (count and checksum), every (source, table) at once: every given key, or with
/// `last` the keys that differed last time or changed since. Returns the
/// keys that differ: changes in flight. Keys changed on a source after
/// this began reach catch-up and are recorded in `KeysOut::changed`, which
/// is cleared here; the next round or the cutover verifies those and the
/// differing ones again.
async fn verify_early(
    l: &mut Logical<'_>,
    moving: &[Arc<shardgate_shardmap::TableRule>],
    txs: &HashMap<usize, MoveTx>,
    last: Option<&Dirty>,
) -> Result<Dirty, RebalanceError> {
    let mut chosen: HashMap<(usize, String), Vec<String>> = HashMap::new();
    for (source, out) in l.keys.iter_mut() {
        for rule in moving {
            let printed = l
                .printed
                .get(&rule.table.to_string())
                .cloned()
                .unwrap_or_else(|| rule.table.to_string());
            let keys: Vec<String> = match last {
                None => out
                    .keys
                    .get(&printed)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect(),
                Some(d) => recheck(d, *source, &printed, out),
            };
            chosen.insert((*source, printed), keys);
        }
        out.changed.clear();
    }
    let mut work = Vec::new();
    for (i, rule) in moving.iter().enumerate() {
        let stage = stage::table(l.job, i);
        for ((source, printed), keys) in chosen
            .iter()
            .filter(|((_, p), _)| *p == l.printed_name(rule))
        {
            if keys.is_empty() {
                continue;
            }
            // The stages, or once merged the move transactions.
            let (held_in, conns): (TableName, Vec<&Conn>) = if l.merged {
                let shards = l.stages.keys().filter(|s| *s != source);
                (rule.table.clone(), shards.map(|s| &txs[s].conn).collect())
            } else {
                let conns = l.stages.iter().filter(|(s, _)| *s != source);
                (stage.clone(), conns.map(|(_, c)| c).collect())
            };
            work.push(async move {
                let given = key_digests(&txs[source].conn, &rule.table, rule, keys).await?;
                let mut held: HashMap<String, Digest> = HashMap::new();
                for conn in conns {
                    for (k, d) in key_digests(conn, &held_in, rule, keys).await? {
                        held.entry(k).or_default().add(d);
                    }
                }
                let mut dirty: HashSet<String> = given
                    .iter()
                    .filter(|(k, d)| held.get(*k) != Some(d))
                    .map(|(k, _)| k.clone())
                    .collect();
                dirty.extend(held.keys().filter(|k| !given.contains_key(*k)).cloned());
                Ok::<_, RebalanceError>(((*source, printed.clone()), dirty))
            });
        }
    }
    Ok(futures_util::future::try_join_all(work)
        .await?
        .into_iter()
        .collect())
}

/// The keys of `source`'s table `printed` to verify again: those that
/// differed last time, and those caught up since.
fn recheck(d: &Dirty, source: usize, printed: &str, out: &super::logical::KeysOut) -> Vec<String> {
    let mut k: HashSet<String> = d
        .get(&(source, printed.to_owned()))
        .cloned()
        .unwrap_or_default();
    k.extend(out.changed.get(printed).into_iter().flatten().cloned());
    k.into_iter().collect()
}

/// The move transactions that took rows (the targets).
fn touched_targets(txs: &HashMap<usize, MoveTx>) -> Vec<usize> {
    txs.iter()
        .filter(|(_, tx)| tx.touched)
        .map(|(s, _)| *s)
        .collect()
}

/// Mode `logical`, at the cutover: the targets must hold exactly the rows
/// of the keys the sources gave (copied or caught up), by count and by a
/// checksum of the rows' text, per table: each source sums the rows of the
/// keys it gives, each target the rows of every key given by the others
/// (a source still holds its own), one query per node and table, all at
/// once; the sums must agree. With `dirty` (from [`verify_early`]) only the
/// keys that differed then or changed since are read.
async fn verify_given(
    l: &Logical<'_>,
    moving: &[Arc<shardgate_shardmap::TableRule>],
    txs: &HashMap<usize, MoveTx>,
    dirty: Option<&Dirty>,
) -> Result<(), RebalanceError> {
    let targets = touched_targets(txs);
    let mut work = Vec::new();
    for rule in moving {
        let printed = l.printed_name(rule);
        let given: Vec<(usize, Vec<String>)> = l
            .keys
            .iter()
            .filter_map(|(source, out)| {
                let all = out.keys.get(&printed)?;
                let keys: Vec<String> = match dirty {
                    None => all.iter().cloned().collect(),
                    Some(d) => recheck(d, *source, &printed, out),
                };
                (!keys.is_empty()).then_some((*source, keys))
            })
            .collect();
        if given.is_empty() {
            continue;
        }
        let held: Vec<(usize, Vec<String>)> = targets
            .iter()
            .map(|t| {
                let keys = given
                    .iter()
                    .filter(|(s, _)| s != t)
                    .flat_map(|(_, k)| k.iter().cloned())
                    .collect();
                (*t, keys)
            })
            .collect();
        work.push(async move {
            let sum = |sides: Vec<(usize, Vec<String>)>| async move {
                let sums = sides
                    .iter()
                    .map(|(s, keys)| sum_keys(&txs[s].conn, rule, keys));
                let mut total = Digest::default();
                for d in futures_util::future::try_join_all(sums).await? {
                    total.add(d);
                }
                Ok::<_, RebalanceError>(total)
            };
            let (given, held) = futures_util::future::try_join(sum(given), sum(held)).await?;
            if held != given {
                return Err(RebalanceError::Verify(format!(
                    "the sources gave {} rows of {} (checksum {}) but the targets hold {} (checksum {})",
                    given.rows, rule.table, given.checksum, held.rows, held.checksum
                )));
            }
            Ok(())
        });
    }
    futures_util::future::try_join_all(work).await?;
    Ok(())
}

/// Mode `logical`, after the switch: each source deletes the rows it gave,
/// every (source, table) at once on connections of its own, each tried a
/// few times. The rows are the targets' now; copies a source could not
/// delete are removed by the takeover of the unfinished job (`recover`).
async fn delete_given(
    next: &Config,
    l: &Logical<'_>,
    moving: &[Arc<shardgate_shardmap::TableRule>],
) -> Result<(), RebalanceError> {
    let db = &next.sharding.rebalance_database;
    let mut work = Vec::new();
    for (source, out) in &l.keys {
        for rule in moving {
            let Some(keys) = out.keys.get(&l.printed_name(rule)) else {
                continue;
            };
            let keys: Vec<String> = keys.iter().cloned().collect();
            let node = next.shards[*source].primary.clone();
            work.push(async move {
                let mut tries = 0;
                loop {
                    let deleted = async {
                        let conn = Conn::open(next, &node, db).await?;
                        delete_keys(&conn, rule, &keys).await
                    }
                    .await;
                    match deleted {
                        Ok(_) => return Ok(()),
                        Err(e) if tries < 5 => {
                            tries += 1;
                            tracing::warn!(shard = source, table = %rule.table, error = %e, "deleting moved rows from their source failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => {
                            tracing::error!(shard = source, table = %rule.table, error = %e, "cannot delete the moved rows from their source: the job stays unfinished and its takeover removes them");
                            return Err(e);
                        }
                    }
                }
            });
        }
    }
    futures_util::future::try_join_all(work).await?;
    Ok(())
}

/// What a job moves: from which shards, which tables, in which mode.
struct Moves {
    sources: Vec<usize>,
    moving: Vec<Arc<shardgate_shardmap::TableRule>>,
    /// Mode logical (else block_writes).
    logical: bool,
}

/// The tables whose rows a transition moves.
fn moving_tables(t: &Transition) -> Vec<Arc<shardgate_shardmap::TableRule>> {
    t.from()
        .tables()
        .iter()
        .filter(|r| t.table_moves(r))
        .cloned()
        .collect()
}

/// `logical`, or `block_writes: <why>`, for the move of `t` to `next`.
pub(super) async fn mode_of(next: &Config, t: &Transition) -> Result<String, RebalanceError> {
    let sources = t.sources();
    if sources.is_empty() {
        return Ok("none: no rows move".into());
    }
    Ok(
        match logical_possible(next, &sources, &moving_tables(t)).await? {
            None => "logical".into(),
            Some(why) => format!("block_writes: {why}"),
        },
    )
}

/// Whether the move can use catch-up: `wal_level = logical` on every
/// source, the monitor user may stream (REPLICATION or superuser), and
/// every moving table has a primary key holding its shard key
/// (deletes are decoded as their primary key, which must name the shard).
async fn logical_possible(
    next: &Config,
    sources: &[usize],
    moving: &[Arc<shardgate_shardmap::TableRule>],
) -> Result<Option<String>, RebalanceError> {
    let db = &next.sharding.rebalance_database;
    for &s in sources {
        let conn = Conn::open(next, &next.shards[s].primary, db).await?;
        if !super::logical::wal_is_logical(&conn).await? {
            return Ok(Some(format!("wal_level is not logical on shard {s}")));
        }
        let may_stream: bool = conn
            .client
            .query_one(
                "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| conn.err(e))?
            .get(0);
        if !may_stream {
            return Ok(Some(format!(
                "the monitor user may not stream changes on shard {s} (it needs the REPLICATION attribute)"
            )));
        }
        for rule in moving {
            let pk = super::logical::primary_key(&conn, &rule.table).await?;
            if !pk.iter().any(|c| *c == rule.column) {
                return Ok(Some(format!(
                    "table {} has no primary key holding its shard key {}",
                    rule.table, rule.column
                )));
            }
        }
    }
    Ok(None)
}

/// The move transactions' connections by shard, for [`copy_rows`].
fn conns_of(txs: &HashMap<usize, MoveTx>) -> HashMap<usize, &Conn> {
    txs.iter().map(|(s, tx)| (*s, &tx.conn)).collect()
}

/// `= ANY ($1::text[]::<key type>[])` on `rule`'s key column.
fn key_in(rule: &shardgate_shardmap::TableRule) -> String {
    let cast = match rule.key_type {
        shardgate_shardmap::KeyType::BigInt => "bigint",
        shardgate_shardmap::KeyType::Text => "text",
        shardgate_shardmap::KeyType::Uuid => "uuid",
    };
    format!(
        "{} = ANY ($1::text[]::{cast}[])",
        TableName::new(None, &rule.column)
    )
}

/// Deletes the rows of `keys` (as text) in `rule`'s table; returns how many went.
pub(super) async fn delete_keys(
    conn: &Conn,
    rule: &shardgate_shardmap::TableRule,
    keys: &[String],
) -> Result<u64, RebalanceError> {
    let sql = format!("DELETE FROM {} WHERE {}", rule.table, key_in(rule));
    let mut deleted = 0;
    for batch in keys.chunks(DELETE_BATCH) {
        deleted += conn
            .client
            .execute(&sql, &[&batch])
            .await
            .map_err(|e| conn.err(e))?;
    }
    Ok(deleted)
}

/// How many rows, and the sum of a hash of each row's text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Digest {
    rows: u64,
    checksum: i128,
}

impl Digest {
    fn add(&mut self, other: Digest) {
        self.rows += other.rows;
        self.checksum += other.checksum;
    }
}

/// The [`Digest`] of the rows of each of `keys` (as text) of `rule` in
/// `table` (its table or a stage), by key as the database prints it (keys
/// without rows are absent).
async fn key_digests(
    conn: &Conn,
    table: &TableName,
    rule: &shardgate_shardmap::TableRule,
    keys: &[String],
) -> Result<HashMap<String, Digest>, RebalanceError> {
    let column = TableName::new(None, &rule.column);
    let sql = format!(
        "SELECT {column}::text, count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text \
         FROM {table} t WHERE {} GROUP BY 1",
        key_in(rule)
    );
    let mut out = HashMap::new();
    for batch in keys.chunks(DELETE_BATCH) {
        for row in conn
            .client
            .query(&sql, &[&batch])
            .await
            .map_err(|e| conn.err(e))?
        {
            let checksum: String = row.get(2);
            out.insert(
                row.get::<_, String>(0),
                Digest {
                    rows: row.get::<_, i64>(1) as u64,
                    checksum: checksum.parse().unwrap_or_default(),
                },
            );
        }
    }
    Ok(out)
}

/// The [`Digest`] of the rows of `keys` (as text) in `rule`'s table.
async fn sum_keys(
    conn: &Conn,
    rule: &shardgate_shardmap::TableRule,
    keys: &[String],
) -> Result<Digest, RebalanceError> {
    let filter = key_in(rule);
    let started = Instant::now();
    let mut d = Digest::default();
    for batch in keys.chunks(DELETE_BATCH) {
        d.add(digest_where(conn, &rule.table, &filter, &[&batch]).await?);
    }
    tracing::debug!(
        node = %conn.node,
        table = %rule.table,
        keys = keys.len(),
        ms = started.elapsed().as_millis() as u64,
        "keys summed"
    );
    Ok(d)
}

/// Count and checksum of the rows of `table` on `conn` (those matching
/// `filter` unless it is empty).
async fn table_digest(
    conn: &Conn,
    table: &TableName,
    filter: &str,
) -> Result<Digest, RebalanceError> {
    digest_where(conn, table, filter, &[]).await
}

/// Count and checksum of the rows of `table` matching `filter` (all if
/// empty) with `params`.
async fn digest_where(
    conn: &Conn,
    table: &TableName,
    filter: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Digest, RebalanceError> {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {filter}")
    };
    let sql = format!(
        "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {table} t{filter}"
    );
    let row = conn
        .client
        .query_one(&sql, params)
        .await
        .map_err(|e| conn.err(e))?;
    let checksum: String = row.get(1);
    Ok(Digest {
        rows: row.get::<_, i64>(0) as u64,
        checksum: checksum.parse().unwrap_or_default(),
    })
}

/// Rolls back move transactions, prepared or not.
async fn rollback_prepared<'a>(txs: impl Iterator<Item = &'a MoveTx>) {
    for tx in txs {
        let _ = tx.conn.run("ROLLBACK").await;
        if let Err(e) = tx
            .conn
            .run(&format!("ROLLBACK PREPARED '{}'", tx.gid))
            .await
        {
            tracing::debug!(node = %tx.conn.node, gid = %tx.gid, error = %e, "no prepared move transaction to roll back");
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
/// `keep_map_of` (a new shard's nodes join the topology, owning nothing);
/// without, the map of `config`. Returns its version.
pub(super) fn install(
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
/// back, held statements go on, and other proxies end their hold.
async fn abandon(hold: &Hold<'_>, meta: &Meta, before: &Snapshot, gate: &MoveGate) {
    install(hold.rt, &before.config, None, None);
    gate.open();
    if let Err(e) = meta.set_hold(hold.job, None, hold.mode, hold.from).await {
        tracing::warn!(job = hold.job, error = %e, "cannot end the hold of other proxies; they end it when the job is marked failed or taken over");
    }
}
