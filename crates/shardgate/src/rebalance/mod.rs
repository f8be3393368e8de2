//! Online rebalancing (docs/ARCHITECTURE.md §10): jobs that move rows
//! between shards while clients keep reading and writing, and the shard-map
//! versions they leave in the metadata schema.
//!
//! - [`gate`]: the hold sessions consult while rows move.
//! - `db`: connections to the nodes a job works on.
//! - `meta`: the durable metadata (`shardgate_meta` on the metadata node).
//! - `schema`: creating a new shard's tables from an existing shard.
//! - `copy`: streaming the moving rows from a source to a target.
//! - [`change`]: the map changes jobs make, as configuration changes.
//! - [`registry`]: this proxy's lease in `shardgate_meta.proxies`, and its fence.
//! - [`follow`]: other proxies' holds and map versions, and jobs whose proxy is gone.
//! - `move_job`: a job: hold, copy, verify, prepare, cut over.
//! - `recover`: jobs a killed proxy left unfinished.
//! - `logical`: catch-up from logical decoding (mode `logical`).
//! - [`verify`]: `VERIFY JOB`, every row's shard checked.
//! - [`plan`]: `REBALANCE PLAN`, the arcs to move for balance; `load`
//!   measures each arc's data.

mod apply;
pub mod change;
mod copy;
mod db;
pub mod follow;
pub mod gate;
mod load;
mod logical;
pub mod meta;
mod move_job;
pub mod plan;
mod recover;
pub mod registry;
mod schema;
mod sequences;
mod stage;
mod stream;
pub mod verify;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::runtime::Runtime;

pub use change::Change;
pub use move_job::start;
use recover::recover;

/// Why a rebalancing job could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    /// A node refused or failed a statement.
    #[error("{node}: {source}")]
    Db {
        /// The node.
        node: String,
        /// What it said.
        source: tokio_postgres::Error,
    },
    /// The request cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    /// The maps cannot be the two ends of a move.
    #[error(transparent)]
    Transition(#[from] shardgate_shardmap::TransitionError),
    /// Creating the new shard's tables failed.
    #[error("copying the schema to {node}: {message}")]
    Schema {
        /// The new shard's primary.
        node: String,
        /// What pg_dump or psql said.
        message: String,
    },
    /// Sessions did not reach the move's snapshot or finish their statements in time.
    #[error("{0}: set sharding.rebalance_hold_timeout_ms higher or end long transactions, then start the job again")]
    HoldTimeout(String),
    /// The copied rows do not match the source.
    #[error("verification failed: {0}")]
    Verify(String),
    /// `CANCEL JOB` before the cutover.
    #[error("cancelled before its cutover: nothing moved")]
    Cancelled,
    /// A slot's replication stream failed.
    #[error("replication stream from {node}: {message}")]
    Stream {
        /// The source.
        node: String,
        /// What went wrong.
        message: String,
    },
}

impl RebalanceError {
    /// Whether a node refused for lack of privilege (`42501`).
    pub fn insufficient_privilege(&self) -> bool {
        matches!(self, RebalanceError::Db { source, .. } if source.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE))
    }

    /// Whether trying again may succeed: a connection lost, a backend
    /// terminated, a serialization failure or deadlock.
    pub fn retryable(&self) -> bool {
        match self {
            RebalanceError::Stream { .. } => true,
            RebalanceError::Db { source, .. } => {
                source.is_closed()
                    || source.as_db_error().is_none()
                    || source.code().is_some_and(|c| {
                        let c = c.code();
                        c.starts_with("57") || c.starts_with("08") || c.starts_with("40")
                    })
            }
            _ => false,
        }
    }
}

/// What `REBALANCE PLAN` proposes.
pub struct Proposal {
    /// The moves, in order.
    pub moves: Vec<plan::ArcMove>,
    /// `logical`, or `block_writes` and why.
    pub mode: String,
    /// The balance now and after the moves.
    pub before: plan::Balance,
    /// See `before`.
    pub after: plan::Balance,
    /// `sharding.imbalance_threshold`.
    pub threshold: f64,
}

impl Proposal {
    /// The change that carries the moves out.
    pub fn change(&self) -> Change {
        Change::GiveArcs(
            self.moves
                .iter()
                .map(|m| shardgate_shardmap::ArcOwner {
                    shard: m.point.0,
                    vnode: m.point.1,
                    owner: m.to,
                })
                .collect(),
        )
    }
}

/// Measures the data of every arc and plans the moves that bring every
/// shard within `sharding.imbalance_threshold` of its ideal share.
pub async fn propose(rt: &Arc<Runtime>) -> Result<Proposal, RebalanceError> {
    let snap = rt.snapshot();
    let sharding = snap.sharding.as_ref().ok_or_else(|| {
        RebalanceError::Invalid(
            "rebalancing needs a sharded configuration ([[sharded_tables]])".into(),
        )
    })?;
    let config = &snap.config;
    let weights: Vec<u32> = config.shards.iter().map(|s| s.weight).collect();
    let threshold = config.sharding.imbalance_threshold;
    let loads = load::arc_loads(config, &sharding.map).await?;
    let moves = plan::plan(&loads, &weights, threshold);
    let before = plan::Balance::of(&loads, &weights);
    let mut moved = loads.clone();
    for m in &moves {
        if let Some(l) = moved.iter_mut().find(|l| l.point == m.point) {
            l.owner = m.to;
        }
    }
    let after = plan::Balance::of(&moved, &weights);
    let mut proposal = Proposal {
        moves,
        mode: String::new(),
        before,
        after,
        threshold,
    };
    if !proposal.moves.is_empty() {
        let next = proposal.change().apply(config)?;
        let to = Arc::new(
            next.shard_map()
                .map_err(|e| RebalanceError::Invalid(e.to_string()))?,
        );
        let t = shardgate_shardmap::Transition::new(sharding.map.clone(), to)?;
        proposal.mode = move_job::mode_of(&next, &t).await?;
    }
    Ok(proposal)
}

/// Where a job stands, as `shardgate.jobs` shows it.
pub struct JobStatus {
    /// Its id (the metadata's job id).
    pub id: u64,
    /// `add_shard`, ...
    pub kind: &'static str,
    /// Its arguments as written.
    pub args: String,
    /// When it started.
    pub started: SystemTime,
    phase: Mutex<&'static str>,
    /// When the copy began (for its rate).
    copy_started: Mutex<Option<std::time::Instant>>,
    mode: Mutex<&'static str>,
    error: Mutex<Option<String>>,
    finished: AtomicBool,
    /// Rows copied so far.
    pub rows_copied: AtomicU64,
    /// Bytes copied so far.
    pub bytes_copied: AtomicU64,
    /// Table copies done.
    pub steps_done: AtomicU64,
    /// Table copies in all.
    pub steps_total: AtomicU64,
    /// Mode logical: WAL bytes the slots have not caught up yet (at the
    /// last catch-up round).
    pub lag_bytes: AtomicU64,
    /// Cutovers that gave up because the last changes did not apply within
    /// `sharding.rebalance_cutover_max_ms` (the job caught up and tried
    /// again).
    pub cutover_retries: AtomicU64,
    /// [`Control`] asked by `PAUSE JOB`, `RESUME JOB`, `CANCEL JOB`.
    /// [`Control`] as u8, or [`DECIDED`] once past the decision.
    control: AtomicU8,
    control_changed: tokio::sync::Notify,
}

/// `JobStatus::control` once the job is past its decision.
const DECIDED: u8 = 3;

/// What an operator asked of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Control {
    /// Go on.
    Run = 0,
    /// Wait at the next checkpoint (between COPY chunks and steps).
    Pause = 1,
    /// Undo at the next checkpoint, if before the decision.
    Cancel = 2,
}

impl JobStatus {
    fn new(id: u64, kind: &'static str, args: String) -> JobStatus {
        JobStatus {
            id,
            kind,
            args,
            started: SystemTime::now(),
            phase: Mutex::new("starting"),
            copy_started: Mutex::new(None),
            mode: Mutex::new(""),
            error: Mutex::new(None),
            finished: AtomicBool::new(false),
            rows_copied: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            steps_done: AtomicU64::new(0),
            steps_total: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            cutover_retries: AtomicU64::new(0),
            control: AtomicU8::new(Control::Run as u8),
            control_changed: tokio::sync::Notify::new(),
        }
    }

    /// What the operator asked.
    pub fn control(&self) -> Control {
        match self.control.load(Ordering::Acquire) {
            1 => Control::Pause,
            2 => Control::Cancel,
            _ => Control::Run,
        }
    }

    /// `PAUSE JOB`, `RESUME JOB`, `CANCEL JOB`: `Err` with the reason when
    /// the job cannot take it (finished, past its decision, or cancelled).
    pub fn set_control(&self, c: Control) -> Result<(), String> {
        if self.finished.load(Ordering::Acquire) {
            return Err(format!("job {} has finished ({})", self.id, self.state()));
        }
        let mut cur = self.control.load(Ordering::Acquire);
        loop {
            if cur == DECIDED {
                return Err(format!(
                    "job {} is past its cutover: it finishes and cannot be paused or cancelled",
                    self.id
                ));
            }
            if cur == Control::Cancel as u8 {
                return Err(format!("job {} is being cancelled", self.id));
            }
            match self
                .control
                .compare_exchange(cur, c as u8, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.control_changed.notify_waiters();
        Ok(())
    }

    /// Called between steps and COPY chunks: waits while paused; `Err`
    /// when cancelled.
    pub(crate) async fn checkpoint(&self) -> Result<(), RebalanceError> {
        loop {
            let changed = self.control_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.control() {
                Control::Run => return Ok(()),
                Control::Cancel => return Err(RebalanceError::Cancelled),
                Control::Pause => changed.await,
            }
        }
    }

    /// Takes the decision unless the job was cancelled: from then on it
    /// completes. `false`: cancelled.
    pub(crate) fn decide(&self) -> bool {
        let mut cur = self.control.load(Ordering::Acquire);
        loop {
            if cur == Control::Cancel as u8 {
                return false;
            }
            match self
                .control
                .compare_exchange(cur, DECIDED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Whether the job is past its decision (it completes).
    pub fn decided(&self) -> bool {
        self.control.load(Ordering::Acquire) == DECIDED
    }

    /// Whether the job is paused by an operator.
    pub fn paused(&self) -> bool {
        self.control() == Control::Pause
    }

    /// `logical` or `block_writes` (empty until decided).
    pub fn mode(&self) -> &'static str {
        *self.mode.lock().expect("job mode lock")
    }

    fn set_mode(&self, m: &'static str) {
        *self.mode.lock().expect("job mode lock") = m;
    }

    /// The phase now.
    pub fn phase(&self) -> &'static str {
        *self.phase.lock().expect("job phase lock")
    }

    fn set_phase(&self, p: &'static str) {
        tracing::info!(
            job = self.id,
            kind = self.kind,
            phase = p,
            "rebalancing job"
        );
        *self.phase.lock().expect("job phase lock") = p;
        if p == "copy" {
            *self.copy_started.lock().expect("job copy lock") = Some(std::time::Instant::now());
        }
    }

    /// Megabytes of COPY data read per second since the copy began.
    pub fn mb_s(&self) -> f64 {
        let Some(t) = *self.copy_started.lock().expect("job copy lock") else {
            return 0.0;
        };
        let secs = t.elapsed().as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.bytes_copied.load(Ordering::Relaxed) as f64 / 1e6 / secs
    }

    /// `running`, `paused`, `done` or `failed`.
    pub fn state(&self) -> &'static str {
        match (
            self.finished.load(Ordering::Acquire),
            self.error().is_some(),
        ) {
            (false, _) if self.paused() => "paused",
            (false, _) => "running",
            (true, false) => "done",
            (true, true) => "failed",
        }
    }

    /// Why it failed.
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("job error lock").clone()
    }

    /// Seconds the copy needs still, from its rate so far (`None` outside
    /// the copy, or before its first table is done).
    pub fn eta_s(&self) -> Option<f64> {
        if self.phase() != "copy" {
            return None;
        }
        let started = (*self.copy_started.lock().expect("job copy lock"))?;
        let p = self.progress();
        (p > 0.0).then(|| started.elapsed().as_secs_f64() * (1.0 - p) / p)
    }

    /// Copy progress from 0 to 1.
    pub fn progress(&self) -> f64 {
        if self.state() == "done" {
            return 1.0;
        }
        let total = self.steps_total.load(Ordering::Relaxed);
        if total == 0 {
            return 0.0;
        }
        self.steps_done.load(Ordering::Relaxed) as f64 / total as f64
    }

    fn finish(&self, result: Result<(), RebalanceError>) {
        match result {
            Ok(()) => self.set_phase("done"),
            Err(e) => {
                tracing::error!(job = self.id, error = %e, "rebalancing job failed");
                *self.error.lock().expect("job error lock") = Some(e.to_string());
                self.set_phase("failed");
            }
        }
        self.finished.store(true, Ordering::Release);
    }
}

/// The jobs this proxy runs or ran.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<Vec<Arc<JobStatus>>>,
    /// One job moves rows at a time.
    pub(crate) running: Arc<tokio::sync::Mutex<()>>,
}

impl Jobs {
    /// The job `id`, if this proxy runs or ran it.
    pub fn get(&self, id: u64) -> Option<Arc<JobStatus>> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .iter()
            .find(|j| j.id == id)
            .cloned()
    }

    /// Every job, oldest first.
    pub fn all(&self) -> Vec<Arc<JobStatus>> {
        self.jobs.lock().expect("jobs lock").clone()
    }

    /// The job lock, unless a job holds it: it is also taken briefly by
    /// each round of following other proxies (`follow`), so this waits a
    /// little; a job holds it until it ends.
    pub(crate) async fn lock_unless_running(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.running.clone().lock_owned(),
        )
        .await
        .ok()
    }

    /// Adds `job`, in place of an earlier run of the same id.
    fn add(&self, job: Arc<JobStatus>) {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.retain(|j| j.id != job.id);
        jobs.push(job);
    }
}
