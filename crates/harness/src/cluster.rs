//! Cluster specification, startup and cluster-wide operations.

use std::panic;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{hba_conf, settings_text, write_file, CLUSTER_CONF};
use crate::error::{HarnessError, Result};
use crate::node::{NewNode, Node, NodeRole};
use crate::process::{pg_bin, poll_until, postgres_command, run_ok};
use crate::template;
use crate::workdir::{self, ClusterDir};

/// Time limit for replicas to start streaming after they started.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit for one `pg_basebackup` or template copy.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit for one probe query while polling.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start: shard and replica counts plus extra configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Number of shards, each with its own primary (at least 1).
    pub shards: usize,
    /// Streaming replicas per shard.
    pub replicas: usize,
    /// Extra `postgresql.conf` settings for every node; values are quoted unless they
    /// already are (`'...'`).
    pub settings: Vec<(String, String)>,
    /// Extra settings for replicas only, e.g. `("recovery_min_apply_delay", "300ms")`.
    pub replica_settings: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines, placed before the defaults, e.g.
    /// `host all md5user 127.0.0.1/32 md5`.
    pub hba_lines: Vec<String>,
}

impl Default for ClusterSpec {
    /// One shard with one replica and no extra configuration.
    fn default() -> Self {
        ClusterSpec::new(1, 1)
    }
}

impl ClusterSpec {
    /// `shards` shards with `replicas` replicas each and no extra configuration.
    pub fn new(shards: usize, replicas: usize) -> Self {
        ClusterSpec {
            shards,
            replicas,
            settings: Vec::new(),
            replica_settings: Vec::new(),
            hba_lines: Vec::new(),
        }
    }

    /// Adds a setting for every node.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Adds a setting for replicas only.
    pub fn replica_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.replica_settings.push((key.into(), value.into()));
        self
    }

    /// Adds a `pg_hba.conf` line (placed before the defaults).
    pub fn hba(mut self, line: impl Into<String>) -> Self {
        self.hba_lines.push(line.into());
        self
    }
}

/// One shard: a primary and its streaming replicas.
#[derive(Debug)]
pub struct Shard {
    /// The primary the replicas stream from.
    pub primary: Node,
    /// The replicas, created with `pg_basebackup -R`.
    pub replicas: Vec<Node>,
}

/// A running test cluster. Dropping it (also while unwinding from a panic) stops every
/// server with an immediate shutdown and removes its directory, unless [`Cluster::keep`]
/// was called.
///
/// The superuser is `postgres` with password `postgres`; TCP connections use SCRAM.
#[derive(Debug)]
pub struct Cluster {
    shards: Vec<Shard>,
    dir: ClusterDir,
}

impl Cluster {
    /// Starts the cluster described by `spec` and returns once every replica streams.
    ///
    /// Also removes clusters left behind by test processes that died without cleaning up.
    /// Shards are started in parallel; on error everything started so far is torn down.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        if spec.shards == 0 {
            return Err(HarnessError::InvalidSpec(
                "at least one shard is needed".into(),
            ));
        }
        let base = workdir::base_dir()?;
        workdir::sweep_stale(&base);
        let template = template::ensure(&base)?;
        let dir = ClusterDir::create(&base)?;
        let builder = Builder {
            spec: &spec,
            template: &template,
            dir: &dir,
        };
        let shards = in_parallel(spec.shards, |index| builder.shard(index))?;
        Ok(Cluster { shards, dir })
    }

    /// All shards, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Shard `i`. Panics if there is no such shard.
    pub fn shard(&self, i: usize) -> &Shard {
        &self.shards[i]
    }

    /// The cluster's directory (data directories, logs, socket directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every node, primaries first (in shard order), then the replicas (in shard order).
    pub fn nodes(&self) -> Vec<&Node> {
        let primaries = self.shards.iter().map(|shard| &shard.primary);
        let replicas = self.shards.iter().flat_map(|shard| &shard.replicas);
        primaries.chain(replicas).collect()
    }

    /// Runs `sql` on every primary (in database `postgres`), e.g. `CREATE ROLE`; the replicas
    /// get it by replication.
    pub fn execute_on_primaries(&self, sql: &str) -> Result<()> {
        self.shards
            .iter()
            .try_for_each(|shard| shard.primary.psql("postgres", sql).map(drop))
    }

    /// Waits until every replica of every shard has replayed its primary's current WAL
    /// position. Replicas that are no longer in recovery (promoted) count as caught up.
    pub fn wait_replicas_caught_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for shard in self
            .shards
            .iter()
            .filter(|shard| !shard.replicas.is_empty())
        {
            let lsn = shard.primary.psql_with_timeout(
                "postgres",
                "select pg_current_wal_lsn()",
                PROBE_TIMEOUT.min(timeout),
            )?;
            for replica in &shard.replicas {
                wait_replayed(
                    replica,
                    &lsn,
                    deadline.saturating_duration_since(Instant::now()),
                )?;
            }
        }
        Ok(())
    }

    /// Leaves the servers running and the directory in place when the cluster is dropped
    /// (for debugging); the directory is printed on stderr then.
    pub fn keep(&mut self) {
        self.dir.keep();
    }
}

/// Starts the nodes of one cluster inside its directory.
struct Builder<'a> {
    spec: &'a ClusterSpec,
    template: &'a Path,
    dir: &'a ClusterDir,
}

impl Builder<'_> {
    fn shard(&self, shard: usize) -> Result<Shard> {
        let primary = self.primary(shard)?;
        let replicas = in_parallel(self.spec.replicas, |index| {
            self.replica(shard, index, &primary)
        })?;
        wait_streaming(&primary, &replicas)?;
        Ok(Shard { primary, replicas })
    }

    fn primary(&self, shard: usize) -> Result<Node> {
        let name = format!("shard{shard}-primary");
        let data_dir = self.dir.path().join(&name);
        let mut copy = Command::new("cp");
        copy.arg("-a").arg(self.template).arg(&data_dir);
        run_ok(&mut copy, None, COPY_TIMEOUT)?;
        let cluster_conf = settings_text(self.spec.settings.iter().cloned());
        write_file(&data_dir.join(CLUSTER_CONF), &cluster_conf)?;
        write_file(
            &data_dir.join("pg_hba.conf"),
            &hba_conf(&self.spec.hba_lines),
        )?;
        self.new_node(name, NodeRole::Primary, &[]).start()
    }

    fn replica(&self, shard: usize, index: usize, primary: &Node) -> Result<Node> {
        let name = format!("shard{shard}-replica{index}");
        base_backup(primary, &name, &self.dir.path().join(&name))?;
        self.new_node(name, NodeRole::Replica, &self.spec.replica_settings)
            .start()
    }

    fn new_node<'s>(
        &'s self,
        name: String,
        role: NodeRole,
        settings: &'s [(String, String)],
    ) -> NewNode<'s> {
        NewNode {
            data_dir: self.dir.path().join(&name),
            log_path: self.dir.path().join(format!("{name}.log")),
            name,
            role,
            socket_dir: self.dir.socket_dir(),
            settings,
        }
    }
}

/// Runs `f(0..count)` on scoped threads and collects the results in order.
fn in_parallel<T: Send>(count: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..count).map(|i| scope.spawn(move || f(i))).collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|p| panic::resume_unwind(p)))
            .collect()
    })
}

/// `pg_basebackup -R` of `primary` into `data_dir` for the replica `name`.
fn base_backup(primary: &Node, name: &str, data_dir: &Path) -> Result<()> {
    let conninfo = format!(
        "{} application_name={name}",
        primary.superuser_conninfo("postgres")
    );
    let mut command = postgres_command(&pg_bin("pg_basebackup"));
    command
        .arg("-d")
        .arg(conninfo)
        .arg("-D")
        .arg(data_dir)
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
    run_ok(&mut command, None, COPY_TIMEOUT)
        .map(drop)
        .map_err(|e| primary.error(format!("pg_basebackup for {name} failed: {e}")))
}

/// Waits until the primary reports every replica streaming (by the `application_name`
/// that `pg_basebackup -R` put in `primary_conninfo`) and each replica is in recovery.
fn wait_streaming(primary: &Node, replicas: &[Node]) -> Result<()> {
    if replicas.is_empty() {
        return Ok(());
    }
    let expected = replicas.len().to_string();
    let names: Vec<String> = replicas.iter().map(|r| format!("'{}'", r.name())).collect();
    let sql = format!(
        "select count(*) from pg_stat_replication \
         where state = 'streaming' and application_name in ({})",
        names.join(", ")
    );
    let what = format!("the replicas of {} to stream", primary.name());
    poll_until(&what, STREAMING_TIMEOUT, || {
        let streaming = probe(primary, &sql)?;
        if streaming != expected {
            return Err(format!("{streaming} of {expected} replicas streaming"));
        }
        for replica in replicas {
            if probe(replica, "select pg_is_in_recovery()")? != "t" {
                return Err(format!("{} is not in recovery", replica.name()));
            }
        }
        Ok(Some(()))
    })
}

/// Waits until `replica` has replayed up to `lsn` (or is no longer in recovery).
fn wait_replayed(replica: &Node, lsn: &str, timeout: Duration) -> Result<()> {
    let sql = format!(
        "select not pg_is_in_recovery() or pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
        lsn.replace('\'', "")
    );
    let what = format!("{} to replay up to {lsn}", replica.name());
    poll_until(&what, timeout, || match probe(replica, &sql)?.as_str() {
        "t" => Ok(Some(())),
        other => Err(format!("replayed up to {lsn}: {other:?}")),
    })
}

/// A short query for polling; errors become the observation text.
fn probe(node: &Node, sql: &str) -> std::result::Result<String, String> {
    node.psql_with_timeout("postgres", sql, PROBE_TIMEOUT)
        .map_err(|e| e.to_string())
}
