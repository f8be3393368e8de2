//! Two-phase commit for transactions that wrote on several shards: the
//! durable decision log, and recovery of in-doubt transactions at start-up.
//!
//! A commit runs `PREPARE TRANSACTION '<gid>'` on every participant, then
//! appends `commit <gid>` to the log and syncs it to disk (the decision),
//! then `COMMIT PREPARED` everywhere. A proxy that dies after the decision
//! commits the transaction at its next start; one that dies before rolls it
//! back. Global ids look like `shardgate_<owner>_<run>_<sequence>`: the
//! owner is written once into the log (`owner <hex>`), so it names the
//! proxy whose log holds the decisions; the run is fresh for every start.
//! Recovery resolves only this proxy's ids of earlier runs: another proxy's
//! ids, whose decisions are in its own log, and the prepared transactions
//! of rebalancing moves (`shardgate_move_...`, resolved by their job) are
//! left alone. Ids of the older form `shardgate_<instance>_<sequence>` are
//! resolved by whichever proxy finds them.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;

/// Prefix of every global transaction id shardgate creates.
pub const GID_PREFIX: &str = "shardgate_";

/// Log size past which it is rewritten with only what recovery still
/// needs (the owner and the unfinished decisions).
const COMPACT_AT: u64 = 8 << 20;

/// The decision log and the id source of this proxy instance.
pub struct Coordinator {
    path: PathBuf,
    log: Mutex<Log>,
    /// Size past which the log is compacted.
    compact_at: u64,
    /// This proxy's owner id (from the log).
    owner: String,
    /// This run.
    run: String,
    next: AtomicU64,
    /// Commit decisions recorded.
    commits: AtomicU64,
    /// In-doubt transactions finished by recovery.
    recovered: AtomicU64,
}

/// The open log file and what it says.
struct Log {
    file: File,
    /// Bytes in the file.
    size: u64,
    /// Commit decisions not yet finished everywhere (the file's `commit`
    /// lines without their `done`).
    pending: HashSet<String>,
}

/// The owner and the unfinished decisions of the log at `path` (nothing
/// when it does not exist).
fn read_log(path: &Path) -> (Option<String>, HashSet<String>) {
    let Ok(f) = File::open(path) else {
        return (None, HashSet::new());
    };
    let mut owner = None;
    let mut pending = HashSet::new();
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        match line.split_once(' ') {
            Some(("owner", o)) if owner.is_none() => owner = Some(o.to_owned()),
            Some(("commit", gid)) => {
                pending.insert(gid.to_owned());
            }
            Some(("done", gid)) => {
                pending.remove(gid);
            }
            _ => {}
        }
    }
    (owner, pending)
}

/// A global id shardgate's two-phase commit wrote.
#[derive(Debug, PartialEq, Eq)]
enum Gid<'a> {
    /// `shardgate_<owner>_<run>_<n>`.
    Current {
        /// The proxy whose log decides it.
        owner: &'a str,
        /// The run that prepared it.
        run: &'a str,
    },
    /// `shardgate_<instance>_<n>`, before owners were recorded.
    Legacy,
}

impl Gid<'_> {
    /// Reads a two-phase commit id; `None` for anything else (a move's
    /// `shardgate_move_<job>_<shard>`, another program's ids).
    fn parse(gid: &str) -> Option<Gid<'_>> {
        let rest = gid.strip_prefix(GID_PREFIX)?;
        let parts: Vec<&str> = rest.split('_').collect();
        let hex = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit());
        let num = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
        match parts.as_slice() {
            [owner, run, n] if hex(owner) && hex(run) && num(n) => {
                Some(Gid::Current { owner, run })
            }
            [instance, n] if hex(instance) && num(n) => Some(Gid::Legacy),
            _ => None,
        }
    }
}

/// Why the decision could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the two-phase commit log {path}: {source}")]
pub struct LogError {
    path: String,
    source: std::io::Error,
}

impl Coordinator {
    /// Opens (creating) the decision log.
    pub fn open(path: &Path) -> Result<Coordinator, LogError> {
        Coordinator::open_compacting_at(path, COMPACT_AT)
    }

    /// [`Coordinator::open`], compacting the log past `compact_at` bytes.
    fn open_compacting_at(path: &Path, compact_at: u64) -> Result<Coordinator, LogError> {
        let err = |source| LogError {
            path: path.display().to_string(),
            source,
        };
        let (owner, pending) = read_log(path);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let owner = match owner {
            Some(o) => o,
            None => {
                let o = format!("{:x}", rand::rng().random::<u64>() >> 16);
                file.write_all(format!("owner {o}\n").as_bytes())
                    .map_err(err)?;
                file.sync_data().map_err(err)?;
                o
            }
        };
        let size = file.metadata().map_err(err)?.len();
        Ok(Coordinator {
            path: path.to_owned(),
            log: Mutex::new(Log {
                file,
                size,
                pending,
            }),
            compact_at,
            owner,
            run: format!("{:x}", rand::rng().random::<u32>()),
            next: AtomicU64::new(1),
            commits: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
        })
    }

    /// A fresh global transaction id.
    pub fn next_gid(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{GID_PREFIX}{}_{}_{n}", self.owner, self.run)
    }

    /// Whether `gid` belongs to this run of this proxy.
    pub fn is_own(&self, gid: &str) -> bool {
        matches!(Gid::parse(gid), Some(Gid::Current { owner, run }) if owner == self.owner && run == self.run)
    }

    /// Whether recovery by this proxy resolves `gid`: its own ids of an
    /// earlier run, and ids of the older form.
    pub fn recovers(&self, gid: &str) -> bool {
        match Gid::parse(gid) {
            Some(Gid::Current { owner, run }) => owner == self.owner && run != self.run,
            Some(Gid::Legacy) => true,
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An error about the decision log.
    pub fn log_error(&self, source: std::io::Error) -> LogError {
        LogError {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Records, durably, that `gid` commits (it syncs the log: call it
    /// off the runtime's threads, e.g. in `spawn_blocking`).
    pub fn decide_commit(&self, gid: &str) -> Result<(), LogError> {
        let err = |source| self.log_error(source);
        let line = format!("commit {gid}\n");
        let mut log = self.lock();
        log.file.write_all(line.as_bytes()).map_err(err)?;
        log.file.sync_data().map_err(err)?;
        log.size += line.len() as u64;
        log.pending.insert(gid.to_owned());
        drop(log);
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Commit decisions recorded since start.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// In-doubt transactions recovery finished since start.
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
    }

    /// Notes that every participant of `gid` finished. A log grown past
    /// its limit is then compacted.
    pub fn finished(&self, gid: &str) {
        let line = format!("done {gid}\n");
        let mut log = self.lock();
        if let Err(e) = log.file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, path = %self.path.display(), "two-phase commit log");
            return;
        }
        log.size += line.len() as u64;
        log.pending.remove(gid);
        if log.size > self.compact_at {
            if let Err(e) = self.compact(&mut log) {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot compact the two-phase commit log; it keeps growing");
            }
        }
    }

    /// Rewrites the log with only the owner and the unfinished decisions:
    /// written to a new file and synced, then renamed over the log, so a
    /// crash at any point leaves one complete log.
    fn compact(&self, log: &mut Log) -> std::io::Result<()> {
        let mut text = format!("owner {}\n", self.owner);
        for gid in &log.pending {
            text.push_str(&format!("commit {gid}\n"));
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".compacting");
        let tmp = PathBuf::from(tmp);
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
        log.file = OpenOptions::new().append(true).open(&self.path)?;
        log.size = text.len() as u64;
        tracing::info!(path = %self.path.display(), unfinished = log.pending.len(), "two-phase commit log compacted");
        Ok(())
    }

    /// Global ids whose commit was decided and not yet finished everywhere.
    pub fn decided(&self) -> HashSet<String> {
        self.lock().pending.clone()
    }
}

/// Where to look for in-doubt transactions.
pub struct RecoveryTarget {
    /// Primary of each shard.
    pub primaries: Vec<String>,
    /// Role that may finish prepared transactions (the owner or a superuser).
    pub user: String,
    /// Its password.
    pub password: Option<String>,
    /// A database to connect to first (`pg_prepared_xacts` lists all).
    pub database: String,
    /// TLS towards the servers (`proxy.server_tls`).
    pub tls: shardgate_pool::ServerTls,
}

/// Commits or rolls back every prepared transaction shardgate left behind
/// (except the running instance's own); returns how many remain unresolved
/// (unreachable shards).
pub async fn recover(coordinator: &Coordinator, target: &RecoveryTarget) -> usize {
    let decided = coordinator.decided();
    let mut unresolved = 0;
    for addr in &target.primaries {
        match recover_node(coordinator, &decided, target, addr).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(node = %addr, resolved = n, "two-phase commit recovery");
                }
            }
            Err(e) => {
                unresolved += 1;
                tracing::warn!(node = %addr, error = %e, "two-phase commit recovery could not reach the node; will retry");
            }
        }
    }
    if unresolved == 0 {
        for gid in decided {
            coordinator.finished(&gid);
        }
    }
    unresolved
}

async fn connect(
    addr: &str,
    target: &RecoveryTarget,
    database: &str,
) -> Result<tokio_postgres::Client, String> {
    let (host, port) = addr.rsplit_once(':').ok_or("bad address")?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port.parse().map_err(|_| "bad port")?)
        .user(&target.user)
        .dbname(database)
        .application_name("shardgate-2pc-recovery")
        .connect_timeout(Duration::from_secs(5));
    if let Some(pw) = &target.password {
        cfg.password(pw);
    }
    target
        .tls
        .connect_pg(&mut cfg)
        .await
        .map_err(|e| e.to_string())
}

async fn recover_node(
    coordinator: &Coordinator,
    decided: &HashSet<String>,
    target: &RecoveryTarget,
    addr: &str,
) -> Result<usize, String> {
    let n = resolve_node(target, addr, |gid| {
        coordinator.recovers(gid).then(|| {
            if decided.contains(gid) {
                "COMMIT PREPARED"
            } else {
                "ROLLBACK PREPARED"
            }
        })
    })
    .await?;
    coordinator.recovered.fetch_add(n as u64, Ordering::Relaxed);
    Ok(n)
}

/// Finishes, on `addr`, the prepared transactions shardgate wrote for
/// which `action` names what to do (`COMMIT PREPARED` or `ROLLBACK
/// PREPARED`); returns how many it finished.
async fn resolve_node(
    target: &RecoveryTarget,
    addr: &str,
    action: impl Fn(&str) -> Option<&'static str>,
) -> Result<usize, String> {
    let client = connect(addr, target, &target.database).await?;
    let rows = client
        .query(
            "SELECT gid, database::text FROM pg_prepared_xacts WHERE gid LIKE 'shardgate\\_%'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    for row in rows {
        let gid: String = row.get(0);
        let database: String = row.get(1);
        let Some(action) = action(&gid) else {
            continue;
        };
        let db_client = if database == target.database {
            None
        } else {
            Some(connect(addr, target, &database).await?)
        };
        let c = db_client.as_ref().unwrap_or(&client);
        c.batch_execute(&format!("{action} '{}'", gid.replace('\'', "''")))
            .await
            .map_err(|e| format!("{action} {gid}: {e}"))?;
        tracing::info!(node = %addr, %gid, action, "resolved an in-doubt transaction");
        n += 1;
    }
    Ok(n)
}

/// How often [`finish_later`] tries again while a shard is unreachable.
const FINISH_RETRY: Duration = Duration::from_millis(500);
/// [`finish_later`] keeps looking this long for a transaction whose
/// `PREPARE TRANSACTION` may still be finishing on a server whose
/// connection was lost.
const FINISH_SETTLE: Duration = Duration::from_secs(2);

/// What [`finish_later`] does with the prepared transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Its commit was decided (and logged).
    Commit,
    /// Its commit was not decided: a participant failed to prepare.
    Rollback,
}

/// Finishes a two-phase transaction on the shards whose connection was lost
/// in the middle of it (`COMMIT PREPARED` or `ROLLBACK PREPARED` not sent or
/// not answered, or a `PREPARE TRANSACTION` whose answer was lost): retries
/// on every primary until each was reached with `gid` no longer prepared,
/// then, for a commit, notes it finished. A prepared transaction keeps its
/// locks, so this runs at once rather than at the next start's recovery; if
/// the proxy stops first, that recovery finishes it from the decision log.
pub async fn finish_later(
    coordinator: Arc<Coordinator>,
    target: RecoveryTarget,
    gid: String,
    resolution: Resolution,
) {
    let action = match resolution {
        Resolution::Commit => "COMMIT PREPARED",
        Resolution::Rollback => "ROLLBACK PREPARED",
    };
    let started = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let mut left = 0;
        for addr in &target.primaries {
            match resolve_node(&target, addr, |g| (g == gid).then_some(action)).await {
                Ok(n) => {
                    coordinator.recovered.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    left += 1;
                    if attempt.is_multiple_of(20) {
                        tracing::warn!(node = %addr, %gid, action, error = %e, "cannot finish a two-phase transaction yet; retrying");
                    }
                }
            }
        }
        if left == 0 && started.elapsed() >= FINISH_SETTLE {
            if resolution == Resolution::Commit {
                coordinator.finished(&gid);
            }
            return;
        }
        attempt += 1;
        tokio::time::sleep(FINISH_RETRY).await;
    }
}

/// Test hook: when `SHARDGATE_FAILPOINT` names `name`, the SQL in
/// `SHARDGATE_FAILPOINT_SQL` (a fault to inject), else `None`.
pub fn failpoint_sql(name: &str) -> Option<String> {
    if std::env::var("SHARDGATE_FAILPOINT").is_ok_and(|v| v == name) {
        let sql = std::env::var("SHARDGATE_FAILPOINT_SQL").ok()?;
        tracing::error!(failpoint = name, sql = %sql, "failpoint reached: injecting a fault");
        return Some(sql);
    }
    None
}

/// Test hook: whether `SHARDGATE_FAILPOINT` names `name` (the caller
/// injects a delay or a fault of its own).
pub fn failpoint_on(name: &str) -> bool {
    let on = std::env::var("SHARDGATE_FAILPOINT").is_ok_and(|v| v == name);
    if on {
        tracing::error!(failpoint = name, "failpoint reached");
    }
    on
}

/// Test hook: `SHARDGATE_FAILPOINT=<name>` aborts the process at that point.
pub fn failpoint(name: &str) {
    if std::env::var("SHARDGATE_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod gid_tests {
    use super::*;

    /// A fresh directory of this test process, named after `what`.
    fn scratch_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-2pc-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn recovery_touches_only_this_proxys_earlier_runs() {
        let dir = scratch_dir("owners");
        let log = dir.join("a.log");
        let first = Coordinator::open(&log).expect("opens");
        let old = first.next_gid();
        let again = Coordinator::open(&log).expect("opens again");
        let mine_now = again.next_gid();
        let other = Coordinator::open(&dir.join("b.log"))
            .expect("another proxy")
            .next_gid();
        assert_eq!(first.owner, again.owner, "the owner is kept in the log");
        assert!(again.recovers(&old), "{old}: an earlier run of this proxy");
        assert!(!again.recovers(&mine_now), "{mine_now}: this run's own");
        assert!(again.is_own(&mine_now));
        assert!(!again.recovers(&other), "{other}: another proxy's");
        assert!(!again.recovers("shardgate_move_12_0"), "a move's");
        assert!(!again.recovers("someone_else_1"));
        assert!(again.recovers("shardgate_1f2e_7"), "the older form");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_compacted_log_keeps_the_owner_and_the_unfinished_decisions() {
        let dir = scratch_dir("compact");
        let path = dir.join("decisions.log");
        let c = Coordinator::open_compacting_at(&path, 4096).expect("opens");
        let mut unfinished = HashSet::new();
        for i in 0..500 {
            let gid = c.next_gid();
            c.decide_commit(&gid).expect("decides");
            if i % 100 == 7 {
                unfinished.insert(gid);
            } else {
                c.finished(&gid);
            }
        }
        let size = std::fs::metadata(&path).expect("log").len();
        assert!(size < 8192, "compacted: {size} bytes");
        assert_eq!(c.decided(), unfinished);
        let again = Coordinator::open(&path).expect("opens again");
        assert_eq!(again.owner, c.owner);
        assert_eq!(again.decided(), unfinished, "what recovery reads");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
