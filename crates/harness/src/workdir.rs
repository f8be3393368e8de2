//! The harness base directory, per-cluster work directories owned by the test process, their
//! teardown, and the sweeper for directories left behind by processes that died.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::write_file;
use crate::error::{HarnessError, Result};
use crate::node::StopMode;
use crate::process::{chown_to_postgres, process_alive, process_start_time};
use crate::server;

/// File in each work directory naming the process that owns it: `<pid> <start time>`.
const OWNER_FILE: &str = "owner.pid";
/// Prefixes of work directories the sweeper may remove.
const SWEPT_PREFIXES: [&str; 2] = ["cluster-", "staging-"];
/// How long teardown waits for an immediate shutdown before resorting to SIGKILL.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variable that overrides the harness base directory.
pub(crate) const BASE_DIR_VAR: &str = "SHARDGATE_HARNESS_DIR";

/// `$SHARDGATE_HARNESS_DIR` if set and not empty, else `<temp dir>/shardgate-harness`;
/// made absolute and created if missing.
pub(crate) fn base_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(BASE_DIR_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::temp_dir().join("shardgate-harness"),
    };
    let dir = std::path::absolute(&dir).map_err(|e| HarnessError::io_path("resolving", &dir, e))?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(|e| HarnessError::io_path("creating", &dir, e))?;
    Ok(dir)
}

/// Creates `<base>/<prefix>-<pid>-<counter>-<nanos>` (mode 0700) holding an owner file.
pub(crate) fn create_owned_dir(base: &Path, prefix: &str) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let dir = base.join(name);
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| HarnessError::io_path("creating", &dir, e))?;
    write_file(&dir.join(OWNER_FILE), &owner_record())?;
    Ok(dir)
}

fn owner_record() -> String {
    let pid = std::process::id();
    match process_start_time(pid) {
        Some(start) => format!("{pid} {start}\n"),
        None => format!("{pid}\n"),
    }
}

/// Whether the process that created work directory `dir` still exists. Unknown owners count
/// as alive, so nothing is removed by mistake.
fn owner_alive(dir: &Path) -> bool {
    let record = fs::read_to_string(dir.join(OWNER_FILE)).unwrap_or_default();
    let mut fields = record.split_whitespace();
    let pid = fields
        .next()
        .and_then(|pid| pid.parse().ok())
        .or_else(|| pid_from_name(dir));
    let Some(pid) = pid else {
        return true;
    };
    let recorded_start: Option<u64> = fields.next().and_then(|s| s.parse().ok());
    process_alive(pid) && recorded_start.is_none_or(|start| process_start_time(pid) == Some(start))
}

fn pid_from_name(dir: &Path) -> Option<u32> {
    let name = dir.file_name()?.to_str()?;
    name.split('-').nth(1)?.parse().ok()
}

/// Stops the servers of, and removes, every work directory whose owner process is gone
/// (e.g. a test process that was SIGKILLed). Problems are reported on stderr, not returned.
pub(crate) fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.filter_map(|entry| entry.ok()) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let dir = entry.path();
        if SWEPT_PREFIXES.iter().any(|p| name.starts_with(p)) && dir.is_dir() && !owner_alive(&dir)
        {
            eprintln!("shardgate-harness: removing stale {}", dir.display());
            teardown_dir(&dir);
        }
    }
}

/// Stops every server whose data directory is directly inside `dir`, then removes `dir`.
/// Never panics; problems are reported on stderr.
pub(crate) fn teardown_dir(dir: &Path) {
    stop_servers_in(dir);
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("shardgate-harness: could not remove {}: {e}", dir.display());
        }
    }
}

fn stop_servers_in(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let running: Vec<(PathBuf, u32)> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter_map(|data_dir| server::running_pid(&data_dir).map(|pid| (data_dir, pid)))
        .collect();
    std::thread::scope(|scope| {
        for (data_dir, pid) in &running {
            scope.spawn(move || stop_immediately(data_dir, *pid));
        }
    });
}

fn stop_immediately(data_dir: &Path, pid: u32) {
    if let Err(e) = server::request_stop(data_dir, StopMode::Immediate) {
        eprintln!("shardgate-harness: stopping {}: {e}", data_dir.display());
    }
    if server::wait_stopped(pid, TEARDOWN_TIMEOUT).is_err() {
        eprintln!(
            "shardgate-harness: killing postmaster {pid} of {}",
            data_dir.display()
        );
        if let Err(e) = server::kill_hard(pid) {
            eprintln!("shardgate-harness: {e}");
        }
    }
}

/// A cluster's work directory: `owner.pid`, the `sock` directory, one data directory and
/// one log per node. Dropping it stops the servers and removes it, unless kept.
#[derive(Debug)]
pub(crate) struct ClusterDir {
    path: PathBuf,
    socket_dir: PathBuf,
    keep: bool,
    torn_down: bool,
}

impl ClusterDir {
    /// Creates a fresh cluster directory owned by the user that runs the servers.
    pub(crate) fn create(base: &Path) -> Result<Self> {
        let path = create_owned_dir(base, "cluster")?;
        let dir = ClusterDir {
            socket_dir: path.join("sock"),
            path,
            keep: false,
            torn_down: false,
        };
        DirBuilder::new()
            .mode(0o700)
            .create(&dir.socket_dir)
            .map_err(|e| HarnessError::io_path("creating", &dir.socket_dir, e))?;
        chown_to_postgres(&[&dir.path])?;
        Ok(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Leave servers and files in place when dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }

    /// Stops the servers and removes the directory; later calls do nothing.
    pub(crate) fn teardown(&mut self) {
        if !self.torn_down {
            self.torn_down = true;
            teardown_dir(&self.path);
        }
    }
}

impl Drop for ClusterDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "shardgate-harness: keeping cluster in {}",
                self.path.display()
            );
        } else {
            self.teardown();
        }
    }
}
