//! What the benches that start proxy processes share: PgBouncer's configuration and
//! start, the proxy process (stopped when dropped), and readings of `/proc`.
//!
//! Included by `#[path]` from `pgbench.rs` and `idle_clients.rs`; not every bench uses
//! every item.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use shardgate_harness::{postgres_command, Cluster};

pub const USER: &str = "app";
pub const PASSWORD: &str = "secret";
pub const DATABASE: &str = "app";
pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// util-linux `setsid`: runs a program in a new session. It execs in place (same pid)
/// because the bench's children are not process-group leaders.
pub const SETSID: &str = "/usr/bin/setsid";
/// How long a proxy may take to accept connections after it was started.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a proxy may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of a log or of pgbench's output quoted when something fails.
pub const TAIL_LINES: usize = 20;

/// Starts PgBouncer ([`pgbouncer_config`]) as the `postgres` OS user (it refuses to run
/// as root), in a session of its own, with its files in `dir` (which that user owns);
/// returns its port and process (whose `pid` is PgBouncer's own, read from its pidfile).
pub fn start_pgbouncer(
    dir: &Path,
    server_port: u16,
    pool: usize,
    max_clients: usize,
) -> (u16, Process) {
    let port = free_port();
    let users = dir.join("pgbouncer-users.txt");
    let pidfile = dir.join("pgbouncer.pid");
    let config = dir.join("pgbouncer.ini");
    write_readable(&users, &format!("\"{USER}\" \"{PASSWORD}\"\n"));
    let text = pgbouncer_config(server_port, pool, max_clients, port, &users, &pidfile);
    write_readable(&config, &text);
    let mut command = postgres_command(Path::new(SETSID));
    // `runuser`'s PAM session may lower the soft descriptor limit (to 1024 here): PgBouncer
    // gets the hard one, as a proxy started for many clients would be configured.
    command
        .args([
            "/bin/sh",
            "-c",
            "ulimit -n \"$(ulimit -Hn)\" && exec \"$0\" \"$@\"",
        ])
        .arg(PGBOUNCER)
        .arg(&config);
    let mut process = Process::spawn("pgbouncer", command, &dir.join("pgbouncer.log"));
    process.wait_listening(port);
    // Under `runuser` the child is the wrapper; memory is read from PgBouncer itself.
    process.pid = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("read PgBouncer's pid from {}", pidfile.display()));
    (port, process)
}

/// PgBouncer in transaction mode in front of the server on `server_port`, SCRAM logins of
/// the [`USER`] in `users`, `default_pool_size = pool`, at most `max_clients` clients.
pub fn pgbouncer_config(
    server_port: u16,
    pool: usize,
    max_clients: usize,
    port: u16,
    users: &Path,
    pidfile: &Path,
) -> String {
    format!(
        "[databases]\n\
         {DATABASE} = host=127.0.0.1 port={server_port} dbname={DATABASE}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         pidfile = {pidfile}\n\
         auth_type = scram-sha-256\n\
         auth_file = {users}\n\
         pool_mode = transaction\n\
         default_pool_size = {pool}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_client_conn = {max_clients}\n\
         ignore_startup_parameters = extra_float_digits\n",
        pidfile = pidfile.display(),
        users = users.display(),
    )
}

/// Writes `path` readable by everyone (PgBouncer reads it as another OS user).
pub fn write_readable(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free port")
}

// ---------------------------------------------------------------------------------------
// Proxy processes
// ---------------------------------------------------------------------------------------

/// A proxy process; stopped (SIGTERM, then SIGKILL) when dropped, also during a panic.
pub struct Process {
    pub name: &'static str,
    child: Child,
    /// The proxy itself; differs from the child's pid when it runs under `runuser`.
    pub pid: u32,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr going to `log`.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> Process {
        let log_file = fs::File::create(log)
            .unwrap_or_else(|e| panic!("create {name} log {}: {e}", log.display()));
        let stdout = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicate {name} log handle: {e}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        Process {
            name,
            pid: child.id(),
            child,
            log: log.to_owned(),
        }
    }

    /// Waits until the proxy accepts TCP connections on `port`.
    pub fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before listening:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not listen on port {port} within {STARTUP_TIMEOUT:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- tail of {} ---\n{}", self.log.display(), tail(&text))
    }

    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.has_exited() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Only signal `pid` while the child still runs, so a reused pid is never hit.
        if !self.has_exited() {
            signal(self.pid, "TERM");
            if !self.wait_exit(STOP_TIMEOUT) {
                eprintln!("{} did not exit after SIGTERM; killing it", self.name);
                signal(self.pid, "KILL");
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Sends `SIG<name>` to `pid`; failures (e.g. the process is gone) are ignored.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// `program` in a session of its own, as a proxy started as a service and a client started
/// from a shell would be. With the kernel's autogroup scheduling (on by default), the CPU is
/// shared between sessions first: a proxy in the bench's own session would share one
/// session's CPU share with pgbench (and every Postgres backend has a session of its own).
pub fn in_own_session(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(SETSID);
    command.arg(program);
    command
}

/// The last [`TAIL_LINES`] lines of `text`.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmHWM` (peak RSS) or `VmRSS`.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    line.split_whitespace().next()?.parse().ok()
}

pub fn mib(kb: Option<u64>) -> String {
    kb.map_or("unknown".to_owned(), |kb| {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    })
}

pub fn pgbouncer_version() -> String {
    Command::new(PGBOUNCER)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "PgBouncer (unknown version)".to_owned())
}

/// Creates the bench's role (a superuser, so pgbench may create its tables)
/// and database on every primary of `cluster`.
pub fn create_app(cluster: &Cluster) {
    cluster
        .execute_on_primaries(&format!(
            "CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
        ))
        .expect("create the app role");
    cluster
        .execute_on_primaries(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"))
        .expect("create the app database");
}
