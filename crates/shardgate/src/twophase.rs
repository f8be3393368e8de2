//! Two-phase commit for transactions that wrote on several shards: the
//! durable decision log, and recovery of in-doubt transactions at start-up.
//!
//! A commit runs `PREPARE TRANSACTION '<gid>'` on every participant, then
//! appends `commit <gid>` to the log and syncs it to disk (the decision),
//! then `COMMIT PREPARED` everywhere. A proxy that dies after the decision
//! commits the transaction at its next start; one that dies before rolls it
//! back. Global ids look like `shardgate_<instance>_<sequence>`; recovery
//! leaves the current instance's own ids alone.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::RngExt;

/// Prefix of every global transaction id shardgate creates.
pub const GID_PREFIX: &str = "shardgate_";

/// The decision log and the id source of this proxy instance.
pub struct Coordinator {
    path: PathBuf,
    file: Mutex<File>,
    instance: u64,
    next: AtomicU64,
    /// Commit decisions recorded.
    commits: AtomicU64,
    /// In-doubt transactions finished by recovery.
    recovered: AtomicU64,
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
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LogError {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Coordinator {
            path: path.to_owned(),
            file: Mutex::new(file),
            instance: rand::rng().random::<u64>() >> 16,
            next: AtomicU64::new(1),
            commits: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
        })
    }

    /// A fresh global transaction id.
    pub fn next_gid(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{GID_PREFIX}{:x}_{n}", self.instance)
    }

    /// Whether `gid` belongs to this running instance.
    pub fn is_own(&self, gid: &str) -> bool {
        gid.starts_with(&format!("{GID_PREFIX}{:x}_", self.instance))
    }

    fn append(&self, line: &str, sync: bool) -> Result<(), LogError> {
        let mut f = self.file.lock().expect("2pc log lock");
        let err = |source| LogError {
            path: self.path.display().to_string(),
            source,
        };
        f.write_all(line.as_bytes()).map_err(err)?;
        if sync {
            f.sync_data().map_err(err)?;
        }
        Ok(())
    }

    /// Records, durably, that `gid` commits.
    pub fn decide_commit(&self, gid: &str) -> Result<(), LogError> {
        self.append(&format!("commit {gid}\n"), true)?;
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

    /// Notes that every participant of `gid` finished.
    pub fn finished(&self, gid: &str) {
        if let Err(e) = self.append(&format!("done {gid}\n"), false) {
            tracing::warn!(error = %e, "two-phase commit log");
        }
    }

    /// Global ids whose commit was decided and not yet finished everywhere.
    pub fn decided(&self) -> HashSet<String> {
        let Ok(f) = File::open(&self.path) else {
            return HashSet::new();
        };
        let mut decided = HashSet::new();
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            match line.split_once(' ') {
                Some(("commit", gid)) => {
                    decided.insert(gid.to_owned());
                }
                Some(("done", gid)) => {
                    decided.remove(gid);
                }
                _ => {}
            }
        }
        decided
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
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn recover_node(
    coordinator: &Coordinator,
    decided: &HashSet<String>,
    target: &RecoveryTarget,
    addr: &str,
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
        if coordinator.is_own(&gid) {
            continue;
        }
        let action = if decided.contains(&gid) {
            "COMMIT PREPARED"
        } else {
            "ROLLBACK PREPARED"
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
        coordinator.recovered.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    Ok(n)
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

/// Test hook: `SHARDGATE_FAILPOINT=<name>` aborts the process at that point.
pub fn failpoint(name: &str) {
    if std::env::var("SHARDGATE_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}
