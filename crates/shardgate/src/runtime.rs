//! The proxy's shared state: one [`Runtime`] per process, holding the
//! current [`Snapshot`] (configuration, users, shard map, topology) that a
//! reload swaps atomically, and the registries that live across snapshots
//! (pools, clients, cancel keys, statistics). See docs/ARCHITECTURE.md §3
//! "The runtime snapshot".

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use shardgate_jobs::{MonitorConfig, Monitors, RoleDetection, Topology};
use shardgate_pool::{ConnectParams, Pool, PoolConfig, PoolKey, Pools};
use shardgate_router::{Analyzer, Classifier};
use shardgate_shardmap::ShardMap;
use tokio::sync::Notify;

use crate::auth::{User, UserDirectory};
use crate::cancel::CancelRegistry;
use crate::catalog::Catalog;
use crate::clients::ClientRegistry;
use crate::config::{Config, RoleDetectionConfig};
use crate::pause::PauseGate;
use crate::prepared::StatementRegistry;
use crate::twophase::{Coordinator, RecoveryTarget};

/// One consistent view of what the proxy serves: a session takes the
/// current one when a transaction starts and keeps it until the transaction
/// ends, so it never sees two versions inside one transaction.
pub struct Snapshot {
    /// Increases with every reload (1 at start).
    pub version: u64,
    /// The validated configuration in force.
    pub config: Arc<Config>,
    /// Users and their secrets.
    pub users: Arc<UserDirectory>,
    /// Every shard's nodes with their live state (shared across snapshots).
    pub topology: Arc<Topology>,
    /// Statement analysis: route, shard plan and merge plan (cached).
    pub analyzer: Arc<Analyzer>,
    /// The shard map and table catalog; `None` for a single unsharded shard.
    pub sharding: Option<Arc<Sharding>>,
    /// TLS for clients, when configured.
    pub tls: Option<crate::tls::ClientTls>,
    /// TLS towards the servers (`server_tls`).
    pub server_tls: Arc<shardgate_pool::ServerTls>,
    /// The hold of a rebalancing move in progress, if any.
    pub move_gate: Option<Arc<crate::rebalance::gate::MoveGate>>,
}

/// What routing by shard key needs.
pub struct Sharding {
    /// The shard map.
    pub map: Arc<ShardMap>,
    /// Column order of tables (kept across reloads).
    pub catalog: Arc<Catalog>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The two-phase commit log cannot be opened.
    #[error(transparent)]
    TwoPhaseLog(#[from] crate::twophase::LogError),
    /// Could not bind an address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

impl Snapshot {
    /// The snapshot of `config`, sharing what did not change with `previous`
    /// (caches stay warm across a reload that does not touch them).
    pub fn build(
        config: Config,
        version: u64,
        topology: Arc<Topology>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, crate::tls::TlsError> {
        let tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let server_tls = Arc::new(crate::tls::server_tls(&config.proxy)?);
        let analyzer = match previous {
            Some(p)
                if p.config.routing.write_functions == config.routing.write_functions
                    && p.config.routing.classifier_cache == config.routing.classifier_cache =>
            {
                p.analyzer.clone()
            }
            _ => Arc::new(Analyzer::new(
                Classifier::new(&config.routing.write_functions),
                config.routing.classifier_cache,
            )),
        };
        let map = config.sharding_enabled().then(|| {
            config
                .shard_map()
                .expect("validated with the configuration")
        });
        let sharding = map.map(|map| {
            let prev = previous.and_then(|p| p.sharding.as_ref());
            match prev {
                Some(s) if s.map.same_rules(&map) => s.clone(),
                _ => Arc::new(Sharding {
                    map: Arc::new(map.with_version(prev.map_or(1, |s| s.map.version() + 1))),
                    catalog: prev.map_or_else(Default::default, |s| s.catalog.clone()),
                }),
            }
        });
        Ok(Snapshot {
            version,
            users: Arc::new(UserDirectory::reusing(&config, previous.map(|p| &*p.users))),
            config: Arc::new(config),
            topology,
            analyzer,
            sharding,
            tls,
            server_tls,
            move_gate: None,
        })
    }

    /// The shard unrouted statements go to.
    pub fn default_shard(&self) -> usize {
        self.sharding.as_ref().map_or(0, |s| s.map.default_shard())
    }

    /// How long a failed node is banned.
    pub fn ban_ms(&self) -> u64 {
        self.config.routing.ban_ms
    }

    /// Where two-phase commit recovery looks.
    pub fn recovery_target(&self) -> RecoveryTarget {
        let m = self.monitor_config();
        RecoveryTarget {
            primaries: self
                .config
                .shards
                .iter()
                .map(|s| s.primary.clone())
                .collect(),
            user: m.user,
            password: m.password,
            database: m.database,
            tls: m.tls,
        }
    }

    /// Settings of the health and lag monitor.
    pub fn monitor_config(&self) -> MonitorConfig {
        monitor_config(&self.config, (*self.server_tls).clone())
    }

    /// How connections of `user` to `addr` and `database` are opened and limited.
    pub fn pool_settings(
        &self,
        addr: &str,
        user: &User,
        database: &str,
    ) -> (ConnectParams, PoolConfig) {
        let p = &self.config.proxy;
        (
            ConnectParams {
                addr: addr.into(),
                user: user.config.server_user().to_owned(),
                password: user.config.server_password().map(str::to_owned),
                database: database.to_owned(),
                connect_timeout: p.connect_timeout,
                prepared_capacity: p.prepared_statements_cache,
                tls: self.server_tls.clone(),
            },
            PoolConfig {
                max_size: user.config.pool_size.unwrap_or(p.pool_size),
                checkout_timeout: p.pool_timeout,
                idle_timeout: p.idle_timeout,
                max_lifetime: p.server_lifetime,
            },
        )
    }

    /// The user whose server role a pool of `key` logs in as: the first
    /// configured user with that server role.
    pub fn user_for_pool(&self, key: &PoolKey) -> Option<Arc<User>> {
        self.config
            .users
            .iter()
            .find(|u| u.server_user() == key.user)
            .and_then(|u| self.users.get(&u.name))
    }
}

/// Settings of the health and lag monitor (its login is also the one
/// rebalancing and the admin probes use), with `tls` towards the servers.
pub fn monitor_config(config: &Config, tls: shardgate_pool::ServerTls) -> MonitorConfig {
    let r = &config.routing;
    let first = &config.users[0];
    MonitorConfig {
        lag_poll: Duration::from_millis(r.lag_poll_ms),
        health_check: Duration::from_millis(r.health_check_ms),
        ban: Duration::from_millis(r.ban_ms),
        role_detection: match r.role_detection {
            RoleDetectionConfig::Static => RoleDetection::Static,
            RoleDetectionConfig::Auto => RoleDetection::Auto,
        },
        user: r
            .monitor_user
            .clone()
            .unwrap_or_else(|| first.server_user().to_owned()),
        password: r
            .monitor_password
            .clone()
            .or_else(|| first.server_password().map(str::to_owned)),
        database: r.monitor_database.clone(),
        tls,
    }
}

/// Room in the per-shard arrays (PAUSE gate, latency histograms) for shards
/// rebalancing jobs add while the process runs.
const SHARDS_ADDED_LATER: usize = 64;

/// Identifies logins that see the same ParameterStatus values:
/// (database, user, session state fingerprint).
pub type LoginKey = (String, String, u64);

/// ParameterStatus values as (name, value) pairs.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// Most remembered ParameterStatus sets (one per pool and session state).
const LOGIN_PARAMS_CAPACITY: usize = 1024;

/// Everything sessions, the admin console and the metrics endpoint share.
pub struct Runtime {
    current: RwLock<Arc<Snapshot>>,
    /// Version of `current`: sessions compare it with theirs once per
    /// transaction (one relaxed load) and take the lock only on a change.
    version: AtomicU64,
    /// Server connection pools (they outlive snapshots).
    pub pools: Pools,
    /// Clients' cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Distinct prepared statements.
    pub statements: StatementRegistry,
    /// Every connected client, for the admin tables and `KILL CLIENT`.
    pub clients: ClientRegistry,
    /// `PAUSE` / `RESUME` per shard.
    pub pause: PauseGate,
    /// Statement statistics, the slow-query log and latency histograms.
    pub stats: crate::stats::Stats,
    /// Two-phase commit coordinator, when `two_phase_commit = true`.
    pub two_phase: Option<Arc<Coordinator>>,
    /// Rebalancing jobs.
    pub jobs: crate::rebalance::Jobs,
    /// This proxy's lease among the proxies of the cluster.
    pub registry: crate::rebalance::registry::Registry,
    /// The connections that LISTEN for clients in transaction pooling.
    pub notifications: Arc<crate::notify::Notifications>,
    /// The configuration file (RELOAD and SIGHUP read it again).
    pub config_path: Option<PathBuf>,
    /// Settings changed with `SET` since the file was last read.
    pub overrides: Mutex<HashMap<String, String>>,
    /// Serialises reloads, `SET` and `DRAIN`.
    pub(crate) reconfiguring: tokio::sync::Mutex<()>,
    pub(crate) monitors: Mutex<Option<Monitors>>,
    /// When the process started.
    pub started: SystemTime,
    stopping: AtomicBool,
    /// Woken when an operator asks for shutdown (`SHUTDOWN`).
    pub shutdown_requested: Notify,
    /// Woken when shutdown begins (idle sessions wait on it).
    pub shutdown_notify: Arc<Notify>,
    active: AtomicUsize,
    idle: Notify,
    login_params: Mutex<HashMap<LoginKey, ServerParams>>,
}

impl Runtime {
    /// The runtime of a validated configuration.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Runtime, StartError> {
        let topology = Arc::new(Topology::new(&config.topology_spec()));
        let two_phase = if config.proxy.two_phase_commit {
            Some(Arc::new(Coordinator::open(&config.proxy.two_phase_log)?))
        } else {
            None
        };
        let registry = crate::rebalance::registry::Registry::new(
            &config.proxy.listen,
            config.sharding.rebalance_proxy_lease_ms,
            config.sharding_enabled(),
        );
        let snapshot = Snapshot::build(config, 1, topology, None)?;
        Ok(Runtime {
            pause: PauseGate::new(snapshot.config.shards.len() + SHARDS_ADDED_LATER),
            stats: crate::stats::Stats::new(snapshot.config.shards.len() + SHARDS_ADDED_LATER),
            current: RwLock::new(Arc::new(snapshot)),
            version: AtomicU64::new(1),
            pools: Pools::new(),
            cancels: Arc::new(CancelRegistry::default()),
            statements: StatementRegistry::default(),
            clients: ClientRegistry::default(),
            two_phase,
            jobs: Default::default(),
            registry,
            notifications: Default::default(),
            config_path,
            overrides: Mutex::new(HashMap::new()),
            reconfiguring: tokio::sync::Mutex::new(()),
            monitors: Mutex::new(None),
            started: SystemTime::now(),
            stopping: AtomicBool::new(false),
            shutdown_requested: Notify::new(),
            shutdown_notify: Arc::new(Notify::new()),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            login_params: Mutex::new(HashMap::new()),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("snapshot lock").clone()
    }

    /// Version of the current snapshot.
    #[inline]
    pub fn version(&self) -> u64 {
        // SeqCst (a plain load on x86): pairs with `ClientInfo::use_snapshot`.
        self.version.load(Ordering::SeqCst)
    }

    /// Makes `snapshot` current; sessions pick it up at their next
    /// transaction boundary.
    pub(crate) fn install(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        *self.current.write().expect("snapshot lock") = Arc::new(snapshot);
        self.version.store(version, Ordering::SeqCst);
    }

    /// Starts the health and lag monitors of the current topology (again).
    pub fn start_monitors(&self) {
        let snap = self.snapshot();
        let mut m = self.monitors.lock().expect("monitors lock");
        if let Some(mut old) = m.take() {
            old.stop();
        }
        *m = Some(Monitors::start(&snap.topology, snap.monitor_config()));
    }

    /// Stops the monitors.
    pub fn stop_monitors(&self) {
        if let Some(mut m) = self.monitors.lock().expect("monitors lock").take() {
            m.stop();
        }
    }

    /// The pool of connections to `addr` for `user` and `database`.
    pub fn pool(&self, snap: &Snapshot, addr: &str, user: &User, database: &str) -> Pool {
        let key = PoolKey {
            addr: addr.to_owned(),
            user: user.config.server_user().to_owned(),
            database: database.to_owned(),
        };
        self.pools
            .get_or_create(&key, || snap.pool_settings(addr, user, database))
    }

    /// The ParameterStatus values a previous login with the same database,
    /// user and session state received, so the next one needs no server connection.
    pub fn login_params(&self, key: &LoginKey) -> Option<ServerParams> {
        self.login_params
            .lock()
            .expect("login params lock")
            .get(key)
            .cloned()
    }

    /// Remembers the ParameterStatus values of a successful login.
    pub fn remember_login_params(&self, key: LoginKey, params: Vec<(String, String)>) {
        let mut map = self.login_params.lock().expect("login params lock");
        if map.len() >= LOGIN_PARAMS_CAPACITY {
            map.clear();
        }
        map.insert(key, Arc::new(params));
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Begins shutdown: sessions end at their next transaction boundary.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.shutdown_notify.notify_waiters();
    }

    /// Number of client connections open now.
    pub fn active_clients(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a client connection until the guard drops.
    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    /// Waits until no client connection is open.
    pub async fn all_gone(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active_clients() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a client connection while it lives.
pub struct ActiveGuard(Arc<Runtime>);

impl ActiveGuard {
    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
