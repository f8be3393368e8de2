//! One PostgreSQL server of a test cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::{conninfo_value, node_conf, write_file, NODE_CONF};
use crate::error::{HarnessError, Result};
use crate::process::{pg_bin, process_tree, run_ok};
use crate::server::{log_len, log_since};
use crate::{ports, server};

/// Superuser name and password of every harness cluster.
pub(crate) const SUPERUSER: &str = "postgres";
const SUPERUSER_PASSWORD: &str = "postgres";
/// Default time limit of [`Node::psql`].
const PSQL_TIMEOUT: Duration = Duration::from_secs(600);
/// Time limit for a stopping server to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a fresh node tries another port when its port turned out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// Whether a node was created as a primary or as a streaming replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Created by copying the initdb template; accepts writes.
    Primary,
    /// Created with `pg_basebackup -R` from its shard's primary; a hot standby.
    Replica,
}

/// How [`Node::stop`] shuts a server down (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit cleanly.
    Fast,
    /// Exit at once, as in a crash; the next start runs recovery.
    Immediate,
}

impl StopMode {
    pub(crate) fn as_pg_ctl_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One server: a primary or a replica, listening on 127.0.0.1.
///
/// All methods take `&self`; the running state is read from the data directory.
#[derive(Debug)]
pub struct Node {
    name: String,
    role: NodeRole,
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl Node {
    /// The node name, e.g. `shard0-primary` or `shard1-replica0` (replicas count from 0).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role the node was created with (a promoted replica still reports `Replica`).
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:<port>"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log written by `pg_ctl -l`.
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// A libpq `key=value` connection string for TCP on 127.0.0.1.
    pub fn conninfo(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={}",
            self.port,
            conninfo_value(user),
            conninfo_value(password),
            conninfo_value(database)
        )
    }

    /// [`Node::conninfo`] for the superuser `postgres` (password `postgres`).
    pub fn superuser_conninfo(&self, database: &str) -> String {
        self.conninfo(SUPERUSER, SUPERUSER_PASSWORD, database)
    }

    /// Runs `sql` (one or more statements) with `psql` as the superuser over TCP and returns
    /// its trimmed unaligned, tuples-only output. Stops at the first error, whose message
    /// (psql's stderr) is in the returned error. Time limit: 10 minutes.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        self.psql_with_timeout(database, sql, PSQL_TIMEOUT)
    }

    /// [`Node::psql`] with an explicit time limit.
    pub fn psql_with_timeout(
        &self,
        database: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String> {
        let mut command = Command::new(pg_bin("psql"));
        command
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.superuser_conninfo(database))
            .env("PGCONNECT_TIMEOUT", "10");
        let output = run_ok(&mut command, Some(sql), timeout)?;
        Ok(output.stdout.trim().to_owned())
    }

    /// Stops the server and waits until it has exited. A no-op if it is not running.
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        let Some(pid) = server::running_pid(&self.data_dir) else {
            return Ok(());
        };
        server::request_stop(&self.data_dir, mode)
            .and_then(|()| server::wait_stopped(pid, STOP_TIMEOUT))
            .map_err(|e| self.error(format!("stop ({}) failed: {e}", mode.as_pg_ctl_arg())))
    }

    /// Starts a stopped server (`pg_ctl start`) and waits up to 60 s until it accepts
    /// connections (as a hot standby for a replica). A no-op if it is running.
    pub fn start(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        server::wait_reaped(&self.data_dir, STOP_TIMEOUT)
            .and_then(|()| server::start(&self.data_dir, &self.log_path))
            .map_err(|e| self.error(format!("start failed: {e}")))
    }

    /// Crashes the server: SIGKILL to the postmaster and every server process at once
    /// (as when the machine dies), then waits until they are gone. The next
    /// [`Node::start`] runs crash recovery. A no-op if it is not running.
    pub fn kill(&self) -> Result<()> {
        let Some(pid) = server::running_pid(&self.data_dir) else {
            return Ok(());
        };
        let tree = process_tree(pid);
        server::signal(&tree, "KILL")
            .and_then(|()| {
                tree.iter()
                    .try_for_each(|&p| server::wait_stopped(p, STOP_TIMEOUT))
            })
            .map_err(|e| self.error(format!("kill -9 failed: {e}")))
    }

    /// Freezes the server: SIGSTOP to the postmaster and every server process. Its sockets
    /// stay open but nothing answers (connections are accepted by the kernel's backlog)
    /// until [`Node::resume`].
    pub fn pause(&self) -> Result<()> {
        self.signal_all("STOP")
    }

    /// Thaws a server frozen by [`Node::pause`] (SIGCONT to all its processes).
    pub fn resume(&self) -> Result<()> {
        self.signal_all("CONT")
    }

    /// Restarts the server: an immediate stop (if it runs) then [`Node::start`].
    pub fn restart(&self) -> Result<()> {
        self.stop(StopMode::Immediate)?;
        self.start()
    }

    fn signal_all(&self, signal: &str) -> Result<()> {
        let pid = server::running_pid(&self.data_dir)
            .ok_or_else(|| self.error(format!("SIG{signal}: the server is not running")))?;
        server::signal(&process_tree(pid), signal)
            .map_err(|e| self.error(format!("SIG{signal} failed: {e}")))
    }

    /// Promotes a replica to a primary (`pg_ctl promote -w -t 60`).
    pub fn promote(&self) -> Result<()> {
        server::promote(&self.data_dir).map_err(|e| self.error(format!("promote failed: {e}")))
    }

    /// Whether the server's postmaster is running (per `postmaster.pid` and `/proc`).
    pub fn is_running(&self) -> bool {
        server::running_pid(&self.data_dir).is_some()
    }

    /// An error about this node, quoting the tail of its log.
    pub(crate) fn error(&self, message: String) -> HarnessError {
        HarnessError::Node {
            node: self.name.clone(),
            message,
            log: self.log_path.display().to_string(),
            log_tail: log_tail(&self.log_path),
        }
    }
}

/// Everything needed to create and start a node whose data directory is ready except for
/// its own settings file.
pub(crate) struct NewNode<'a> {
    pub name: String,
    pub role: NodeRole,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub socket_dir: &'a Path,
    pub settings: &'a [(String, String)],
}

impl NewNode<'_> {
    /// Picks a free port, writes the node's settings file and starts the server, trying
    /// another port when the chosen one was taken in the meantime.
    pub(crate) fn start(self) -> Result<Node> {
        let mut attempt = 1;
        loop {
            let port = ports::free_port()?;
            let conf = node_conf(port, self.socket_dir, self.settings);
            write_file(&self.data_dir.join(NODE_CONF), &conf)?;
            let node = Node {
                name: self.name.clone(),
                role: self.role,
                port,
                data_dir: self.data_dir.clone(),
                log_path: self.log_path.clone(),
            };
            let log_start = log_len(&self.log_path);
            match node.start() {
                Ok(()) => return Ok(node),
                Err(_) if attempt < PORT_ATTEMPTS && port_was_taken(&self.log_path, log_start) => {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn port_was_taken(log: &Path, since: u64) -> bool {
    let text = log_since(log, since);
    text.contains("Address already in use") || text.contains("could not create any TCP/IP sockets")
}

/// The last lines of a server log.
fn log_tail(log: &Path) -> String {
    let text = log_since(log, 0);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
