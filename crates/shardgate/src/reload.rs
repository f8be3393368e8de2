//! Changing a running proxy: RELOAD and SIGHUP (the file again), `SET`
//! (one setting), `DRAIN`. A change is validated whole, then swapped in as a
//! new snapshot that sessions take at their next transaction boundary;
//! pools and monitors follow. See docs/ARCHITECTURE.md §4.

use std::sync::Arc;
use std::time::Duration;

use shardgate_jobs::NodeState;

use crate::config::{Config, ConfigError};
use crate::runtime::{Runtime, Snapshot};
use crate::settings::{self, SettingError, RESTART_ONLY};

/// What a reload or `SET` changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// The new snapshot's version.
    pub version: u64,
    /// Settings and parts of the file that changed, one line each.
    pub changed: Vec<String>,
    /// Changes that wait for a restart (the running values stay).
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    /// Logs the outcome.
    pub fn log(&self) {
        tracing::info!(version = self.version, changed = ?self.changed, "configuration reloaded");
        for r in &self.restart_needed {
            tracing::warn!("{r}");
        }
    }
}

/// Why a change was not applied (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was started without a file.
    #[error("shardgate was started without a configuration file, so there is nothing to reload")]
    NoFile,
    /// The file does not validate.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The change would move rows between shards.
    #[error("refused: {0}; rows would move between shards, which needs a rebalancing job, not a reload. The running configuration stays.")]
    MovesData(String),
    /// A `SET` value was refused.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A rebalancing job is moving rows.
    #[error("a rebalancing job is running (shardgate.jobs): reload or SET once it is done, or CANCEL JOB it")]
    JobRunning,
}

impl ReloadError {
    /// The SQLSTATE the admin console answers with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ReloadError::NoFile => "55000",
            ReloadError::Invalid(_) => "F0000",
            ReloadError::MovesData(_) => "0A000",
            ReloadError::Setting(e) => e.sqlstate(),
            ReloadError::Tls(_) => "F0000",
            ReloadError::JobRunning => "55000",
        }
    }
}

/// What `next` changes relative to `running`, judged before anything is
/// applied: changes refused because they move data, changes that need a
/// restart (their running values are copied into `next`), and the rest.
pub fn diff(
    running: &Config,
    next: &mut Config,
) -> Result<(Vec<String>, Vec<String>), ReloadError> {
    let mut refused = Vec::new();
    if running.shards.len() != next.shards.len() {
        refused.push(format!(
            "the number of [[shards]] changes from {} to {}",
            running.shards.len(),
            next.shards.len()
        ));
    } else if running.sharding_enabled() != next.sharding_enabled() {
        refused.push("sharding would be turned on or off (sharded or reference tables added to or removed from a single shard)".to_owned());
    } else if let (Ok(old), Ok(new)) = (running.shard_map(), next.shard_map()) {
        refused.extend(old.placement_changes(&new));
    }
    if !refused.is_empty() {
        return Err(ReloadError::MovesData(refused.join("; ")));
    }
    let before = settings::list(running, &Default::default());
    let mut restart = Vec::new();
    for key in RESTART_ONLY {
        let old = before
            .iter()
            .find(|s| s.key == *key)
            .map(|s| s.value.clone());
        let new = settings::list(next, &Default::default())
            .into_iter()
            .find(|s| s.key == *key)
            .map(|s| s.value);
        if old != new {
            restart.push(format!(
                "{key} changed to {:?} in the file; it takes effect at the next restart (running: {:?})",
                new.unwrap_or_default(),
                old.clone().unwrap_or_default()
            ));
        }
    }
    keep_restart_only(running, next);
    let after = settings::list(next, &Default::default());
    let mut changed: Vec<String> = after
        .iter()
        .filter_map(|s| {
            let old = before.iter().find(|b| b.key == s.key)?;
            (old.value != s.value)
                .then(|| format!("{} = {:?} (was {:?})", s.key, s.value, old.value))
        })
        .collect();
    let names = |c: &Config| c.users.iter().map(|u| u.name.clone()).collect::<Vec<_>>();
    let (old_users, new_users) = (names(running), names(next));
    for u in &new_users {
        match running.user(u) {
            None => changed.push(format!("user {u} added")),
            Some(o) if Some(o) != next.user(u) => changed.push(format!("user {u} changed")),
            _ => {}
        }
    }
    for u in old_users.iter().filter(|u| !new_users.contains(u)) {
        changed.push(format!("user {u} removed"));
    }
    for (i, (o, n)) in running.shards.iter().zip(&next.shards).enumerate() {
        if o.primary != n.primary {
            changed.push(format!(
                "shard {i}: primary {} (was {})",
                n.primary, o.primary
            ));
        }
        for r in n.replicas.iter().filter(|r| !o.replicas.contains(r)) {
            changed.push(format!("shard {i}: replica {r} added"));
        }
        for r in o.replicas.iter().filter(|r| !n.replicas.contains(r)) {
            changed.push(format!("shard {i}: replica {r} removed"));
        }
    }
    let tables = |c: &Config| {
        c.sharded_tables
            .iter()
            .map(|t| t.table.clone())
            .chain(c.reference_tables.iter().map(|t| t.table.clone()))
            .collect::<Vec<_>>()
    };
    let old_tables = tables(running);
    for t in tables(next).into_iter().filter(|t| !old_tables.contains(t)) {
        changed.push(format!("table {t} added"));
    }
    Ok((changed, restart))
}

/// Copies the settings that need a restart from `running` into `next`.
fn keep_restart_only(running: &Config, next: &mut Config) {
    let (r, n) = (&running.proxy, &mut next.proxy);
    n.listen = r.listen.clone();
    n.workers = r.workers;
    n.pool_mode = r.pool_mode;
    n.admin_database = r.admin_database.clone();
    n.two_phase_commit = r.two_phase_commit;
    n.two_phase_log = r.two_phase_log.clone();
    n.metrics_listen = r.metrics_listen.clone();
}

/// `[[shards]]` entries the file appends to the running list (whose
/// primaries it keeps, in order): they become `ADD SHARD` jobs, and `next`
/// keeps the running list meanwhile so the rest of the file applies.
fn new_shards(running: &Config, next: &mut Config) -> Vec<crate::config::ShardConfig> {
    let n = running.shards.len();
    let appended = next.shards.len() > n
        && running
            .shards
            .iter()
            .zip(&next.shards)
            .all(|(a, b)| a.primary == b.primary);
    if !appended || !running.sharding_enabled() {
        return Vec::new();
    }
    next.shards.split_off(n)
}

impl Runtime {
    /// RELOAD / SIGHUP: reads the configuration file again and applies it;
    /// `SET` values are dropped (the file wins).
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let _one = self.reconfiguring_unless_moving().await?;
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        let next = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| {
                ReloadError::Invalid(ConfigError::Read {
                    path: Default::default(),
                    source: std::io::Error::other(e),
                })
            })??;
        let running = self.snapshot();
        if running.config.sharding_enabled() && next.shards.len() < running.config.shards.len() {
            return Err(ReloadError::MovesData(format!(
                "the file lists {} shards, the cluster has {}: a shard leaves only through REMOVE SHARD n, which empties it and keeps its [[shards]] entry with weight = 0",
                next.shards.len(),
                running.config.shards.len()
            )));
        }
        let mut next = crate::rebalance::meta::with_latest_shards(next, true).await;
        let added = new_shards(&running.config, &mut next);
        let mut report = self.apply(next)?;
        self.overrides.lock().expect("overrides lock").clear();
        if let Some(first) = added.first() {
            let primary = first.primary.clone();
            match crate::rebalance::start(self, crate::rebalance::Change::AddShard(first.clone()))
                .await
            {
                Ok(id) => report.changed.push(format!(
                    "[[shards]] adds {primary}: ADD SHARD job {id} started (shardgate.jobs)"
                )),
                Err(e) => report.restart_needed.push(format!(
                    "[[shards]] adds {primary}, but ADD SHARD cannot start: {e}"
                )),
            }
            if added.len() > 1 {
                report.restart_needed.push(format!(
                    "{} more [[shards]] entries wait: one shard is added at a time; RELOAD again once the job is done",
                    added.len() - 1
                ));
            }
        }
        Ok(report)
    }

    /// `SET key = value`: one reloadable setting, until the next RELOAD.
    pub async fn set_setting(
        self: &Arc<Self>,
        name: &str,
        value: &str,
    ) -> Result<ReloadReport, ReloadError> {
        let _one = self.reconfiguring_unless_moving().await?;
        let running = self.snapshot();
        let (next, key) = settings::apply(&running.config, name, value)?;
        let report = self.apply(next)?;
        let shown = settings::list(&self.snapshot().config, &Default::default())
            .into_iter()
            .find(|s| s.key == key)
            .map_or_else(|| value.to_owned(), |s| s.value);
        self.overrides
            .lock()
            .expect("overrides lock")
            .insert(key, shown);
        Ok(report)
    }

    /// The reconfiguration lock, unless a rebalancing job holds (or waits
    /// for) it: a reload would otherwise wait for the whole job.
    async fn reconfiguring_unless_moving(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ReloadError> {
        let Some(_no_job) = self.jobs.lock_unless_running().await else {
            return Err(ReloadError::JobRunning);
        };
        Ok(self.reconfiguring.lock().await)
    }

    /// Validates `next` against the running configuration and swaps it in.
    fn apply(self: &Arc<Self>, mut next: Config) -> Result<ReloadReport, ReloadError> {
        let running = self.snapshot();
        let (changed, restart_needed) = diff(&running.config, &mut next)?;
        // Monitors may promote nodes: none runs while the topology is rebuilt.
        self.stop_monitors();
        let (topology, _) = running.topology.reconfigured(&next.topology_spec());
        let built = Snapshot::build(
            next,
            running.version + 1,
            Arc::new(topology),
            Some(&running),
        );
        let mut snap = match built {
            Ok(s) => s,
            Err(e) => {
                self.start_monitors();
                return Err(e.into());
            }
        };
        snap.move_gate = running.move_gate.clone();
        let version = snap.version;
        let removed_users: Vec<String> = running
            .users
            .names()
            .filter(|u| snap.users.get(u).is_none())
            .map(str::to_owned)
            .collect();
        self.install(snap);
        self.start_monitors();
        self.reconfigure_pools();
        for u in &removed_users {
            self.clients.end_user(u);
        }
        for node in self.snapshot().topology.nodes() {
            if node.is_retired() {
                self.drain_node(node.clone());
            }
        }
        Ok(ReloadReport {
            version,
            changed,
            restart_needed,
        })
    }

    /// Gives every pool the limits and login settings of the current
    /// snapshot; pools of users that no longer exist close.
    fn reconfigure_pools(&self) {
        let snap = self.snapshot();
        for pool in self.pools.all() {
            let key = pool.key().clone();
            match snap.user_for_pool(&key) {
                Some(user) => {
                    let (params, config) = snap.pool_settings(&key.addr, &user, &key.database);
                    pool.reconfigure(params, config);
                }
                None => {
                    self.pools.remove_where(|k| *k == key);
                }
            }
        }
    }

    /// `DRAIN`, or a node a reload removed: no new work goes to it; once
    /// its in-flight work has finished, its pools close.
    pub fn drain_node(self: &Arc<Self>, node: Arc<NodeState>) {
        if !node.is_retired() {
            node.set_draining(true);
        }
        let runtime = self.clone();
        tokio::spawn(async move {
            loop {
                let busy = node.in_flight() > 0
                    || runtime
                        .pools
                        .all()
                        .iter()
                        .any(|p| p.key().addr == node.addr && p.stats().lent > 0);
                if !busy || !(node.is_draining() || node.is_retired()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if node.is_draining() || node.is_retired() {
                let closed = runtime.pools.remove_where(|k| k.addr == node.addr).len();
                tracing::info!(node = %node.addr, shard = node.shard, pools = closed, "node drained: its pools are closed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
pool_size = 5

[[users]]
name = "app"
password = "secret"

[[users]]
name = "old"
password = "x"

[[shards]]
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433"]

[[shards]]
primary = "127.0.0.1:6432"

[[sharded_tables]]
table = "accounts"
column = "id"
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    #[test]
    fn reloadable_changes_are_listed_and_restart_only_ones_kept() {
        let running = parse(BASE);
        let text = BASE
            .replace("pool_size = 5", "pool_size = 9\nworkers = 3")
            .replace("listen = \"127.0.0.1:6432\"", "listen = \"127.0.0.1:7000\"")
            .replace(
                "replicas = [\"127.0.0.1:5433\"]",
                "replicas = [\"127.0.0.1:5434\"]",
            )
            .replace("[[users]]\nname = \"old\"\npassword = \"x\"\n", "")
            + "\n[[sharded_tables]]\ntable = \"orders\"\ncolumn = \"id\"\n";
        let mut next = parse(&text);
        let (changed, restart) = diff(&running, &mut next).unwrap();
        let changed = changed.join("\n");
        assert!(
            changed.contains("proxy.pool_size = \"9\" (was \"5\")"),
            "{changed}"
        );
        assert!(
            changed.contains("shard 0: replica 127.0.0.1:5434 added"),
            "{changed}"
        );
        assert!(
            changed.contains("shard 0: replica 127.0.0.1:5433 removed"),
            "{changed}"
        );
        assert!(changed.contains("user old removed"), "{changed}");
        assert!(changed.contains("table orders added"), "{changed}");
        let restart = restart.join("\n");
        assert!(
            restart.contains("proxy.listen") && restart.contains("proxy.workers"),
            "{restart}"
        );
        assert_eq!(
            next.proxy.listen, "127.0.0.1:6432",
            "the running value stays"
        );
        assert_eq!(next.proxy.workers, 0);
        assert_eq!(next.proxy.pool_size, 9);
    }

    #[test]
    fn changes_that_move_rows_are_refused_with_what_they_are() {
        let running = parse(BASE);
        let mut more_shards =
            parse(&(BASE.to_owned() + "\n[[shards]]\nprimary = \"127.0.0.1:7432\"\n"));
        let e = diff(&running, &mut more_shards).unwrap_err();
        assert_eq!(e.sqlstate(), "0A000");
        assert!(
            e.to_string()
                .contains("number of [[shards]] changes from 2 to 3"),
            "{e}"
        );
        let mut key = parse(&BASE.replace("column = \"id\"", "column = \"owner\""));
        let e = diff(&running, &mut key).unwrap_err().to_string();
        assert!(
            e.contains("accounts: shard key changes from id to owner"),
            "{e}"
        );
        let mut weight = parse(&BASE.replace(
            "primary = \"127.0.0.1:6432\"",
            "primary = \"127.0.0.1:6432\"\nweight = 3",
        ));
        let e = diff(&running, &mut weight).unwrap_err().to_string();
        assert!(e.contains("weights change"), "{e}");
    }
}
