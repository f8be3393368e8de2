//! Operations on a server identified by its data directory, through `pg_ctl`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::node::StopMode;
use crate::process::{is_zombie, pg_bin, poll_until, postgres_command, process_alive, run_ok};

/// Time limit for a start, and the one given to `pg_ctl promote -t`.
pub(crate) const PG_CTL_WAIT_SECS: u64 = 60;
/// Extra time allowed for `pg_ctl` itself beyond its own wait.
const PG_CTL_SLACK: Duration = Duration::from_secs(15);

/// The postmaster pid of the server in `data_dir`, if it is running.
pub(crate) fn running_pid(data_dir: &Path) -> Option<u32> {
    running_postmaster(data_dir).map(|(pid, _)| pid)
}

/// Pid and status line (`starting`, `ready`, `standby`, ...) of the postmaster running in
/// `data_dir`, from its `postmaster.pid`.
fn running_postmaster(data_dir: &Path) -> Option<(u32, String)> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let status = lines.nth(6).unwrap_or_default().trim().to_owned();
    process_alive(pid).then_some((pid, status))
}

/// Waits while the postmaster named in `data_dir`'s `postmaster.pid` is a zombie: a
/// killed postmaster stays one until its parent (init) reaps it, and a new postmaster
/// takes a zombie's pid there (and in its socket's lock file) for a running server.
pub(crate) fn wait_reaped(data_dir: &Path, timeout: Duration) -> Result<()> {
    let Some(pid) = fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    poll_until("a killed postmaster to be reaped", timeout, || {
        Ok((!is_zombie(pid)).then_some(()))
    })
}

fn pg_ctl() -> Command {
    postgres_command(&pg_bin("pg_ctl"))
}

fn pg_ctl_timeout() -> Duration {
    Duration::from_secs(PG_CTL_WAIT_SECS) + PG_CTL_SLACK
}

/// Starts the server (`pg_ctl start`, logging to `log`) and waits until it accepts
/// connections, like `pg_ctl start -w -t 60` but polling more often than pg_ctl's 100 ms.
/// Fails early when the postmaster exits after logging a FATAL or PANIC message.
pub(crate) fn start(data_dir: &Path, log: &Path) -> Result<()> {
    let log_start = log_len(log);
    let mut command = pg_ctl();
    command
        .args(["start", "-W", "-s", "-D"])
        .arg(data_dir)
        .arg("-l")
        .arg(log);
    run_ok(&mut command, None, PG_CTL_SLACK)?;
    let timeout = Duration::from_secs(PG_CTL_WAIT_SECS);
    poll_until(
        "the server to accept connections",
        timeout,
        || match running_postmaster(data_dir).map(|(_, status)| status) {
            Some(status) if status == "ready" || status == "standby" => Ok(Some(Ok(()))),
            Some(status) => Err(format!("postmaster status {status:?}")),
            None if has_failed(log, log_start) => Ok(Some(Err(HarnessError::Failed(
                "the postmaster exited after logging FATAL or PANIC".into(),
            )))),
            None => Err("no postmaster running yet".to_owned()),
        },
    )?
}

fn has_failed(log: &Path, since: u64) -> bool {
    let text = log_since(log, since);
    text.contains("FATAL:") || text.contains("PANIC:")
}

/// The current length of a log file (0 if missing).
pub(crate) fn log_len(log: &Path) -> u64 {
    fs::metadata(log).map_or(0, |meta| meta.len())
}

/// The log text after byte offset `since`.
pub(crate) fn log_since(log: &Path, since: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let start = usize::try_from(since)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// `pg_ctl stop` without waiting; see [`wait_stopped`].
pub(crate) fn request_stop(data_dir: &Path, mode: StopMode) -> Result<()> {
    let mut command = pg_ctl();
    command
        .args(["stop", "-W", "-s", "-m", mode.as_pg_ctl_arg(), "-D"])
        .arg(data_dir);
    run_ok(&mut command, None, pg_ctl_timeout()).map(drop)
}

/// Waits until postmaster `pid` has exited (after its children; its sockets are closed).
pub(crate) fn wait_stopped(pid: u32, timeout: Duration) -> Result<()> {
    poll_until("the server to stop", timeout, || {
        Ok((!process_alive(pid)).then_some(()))
    })
}

/// `pg_ctl promote -w`.
pub(crate) fn promote(data_dir: &Path) -> Result<()> {
    let mut command = pg_ctl();
    command
        .args([
            "promote",
            "-w",
            "-s",
            "-t",
            &PG_CTL_WAIT_SECS.to_string(),
            "-D",
        ])
        .arg(data_dir);
    run_ok(&mut command, None, pg_ctl_timeout()).map(drop)
}

/// Last resort for a server that ignored an immediate shutdown: SIGKILL.
pub(crate) fn kill_hard(pid: u32) -> Result<()> {
    signal(&[pid], "KILL")
}

/// Sends signal `name` (`KILL`, `STOP`, `CONT`, ...) to the processes `pids`; one that
/// ended meanwhile is not a failure.
pub(crate) fn signal(pids: &[u32], name: &str) -> Result<()> {
    match send_signal(pids, name) {
        Ok(()) => Ok(()),
        Err(e) => {
            // A process listed may have ended before the signal (a backend
            // whose client just left); `kill` signalled the others. Once more
            // to those still there, so only a real failure fails.
            let alive: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if alive.len() == pids.len() {
                return Err(e);
            }
            send_signal(&alive, name)
        }
    }
}

fn send_signal(pids: &[u32], name: &str) -> Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut command = Command::new("kill");
    command
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string));
    run_ok(&mut command, None, Duration::from_secs(10)).map(drop)
}
