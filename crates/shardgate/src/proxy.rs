//! The proxy's shared state and its listener: accepting clients, graceful shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardgate_pool::{ConnectParams, Pool, PoolConfig, PoolKey, Pools};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

use crate::auth::{User, UserDirectory};
use crate::cancel::CancelRegistry;
use crate::config::{Config, RoleDetectionConfig};
use crate::prepared::StatementRegistry;
use shardgate_jobs::{spawn_monitors, MonitorConfig, RoleDetection, Topology};
use shardgate_router::shard::ShardPlanner;
use shardgate_router::Classifier;
use shardgate_shardmap::ShardMap;

use crate::catalog::Catalog;
use crate::twophase::{recover, Coordinator, RecoveryTarget};

/// Everything sessions share.
pub struct Proxy {
    /// The loaded configuration.
    pub config: Config,
    /// Users and their secrets.
    pub users: UserDirectory,
    /// Server connection pools.
    pub pools: Pools,
    /// Clients' cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Distinct prepared statements.
    pub statements: StatementRegistry,
    /// TLS for clients, when configured.
    pub tls: Option<TlsAcceptor>,
    /// Becomes `true` when the proxy is shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Woken when shutdown begins (sessions wait on it between transactions).
    pub shutdown_notify: Arc<Notify>,
    stopping: std::sync::atomic::AtomicBool,
    active: AtomicUsize,
    idle: Notify,
    login_params: Mutex<HashMap<LoginKey, ServerParams>>,
    /// Live state of every node (health, roles, lag).
    pub topology: Arc<Topology>,
    /// Statement classification (cached).
    pub classifier: Classifier,
    /// The shard map and its planner; `None` for a single unsharded shard.
    pub sharding: Option<Sharding>,
    /// Two-phase commit coordinator, when `two_phase_commit = true`.
    pub two_phase: Option<Arc<Coordinator>>,
    /// The connections that LISTEN for clients in transaction pooling.
    pub notifications: Arc<crate::notify::Notifications>,
}

/// What routing by shard key needs.
pub struct Sharding {
    /// The shard map.
    pub map: Arc<ShardMap>,
    /// Statement plans (cached).
    pub planner: ShardPlanner,
    /// Column order of tables.
    pub catalog: Catalog,
    /// Merge plans of statements that run on several shards (cached).
    pub merges: shardgate_router::merge_plan::MergePlanner,
}

/// Identifies logins that see the same ParameterStatus values:
/// (database, user, session state fingerprint).
pub type LoginKey = (String, String, u64);

/// ParameterStatus values as (name, value) pairs.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// Most remembered ParameterStatus sets (one per pool and session state).
const LOGIN_PARAMS_CAPACITY: usize = 1024;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The two-phase commit log cannot be opened.
    #[error(transparent)]
    TwoPhaseLog(#[from] crate::twophase::LogError),
    /// Could not bind the listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

impl Proxy {
    /// Builds the shared state from a validated configuration.
    pub fn new(config: Config, shutdown: watch::Receiver<bool>) -> Result<Proxy, StartError> {
        let tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let topology = Arc::new(Topology::new(
            &config
                .shards
                .iter()
                .map(|s| (s.primary.clone(), s.replicas.clone()))
                .collect::<Vec<_>>(),
        ));
        let classifier = Classifier::new(
            &config.routing.write_functions,
            config.routing.classifier_cache,
        );
        let two_phase = if config.proxy.two_phase_commit {
            Some(Arc::new(Coordinator::open(&config.proxy.two_phase_log)?))
        } else {
            None
        };
        let sharding = config.sharding_enabled().then(|| Sharding {
            map: Arc::new(
                config
                    .shard_map()
                    .expect("validated with the configuration"),
            ),
            planner: ShardPlanner::new(config.routing.classifier_cache),
            catalog: Catalog::default(),
            merges: Default::default(),
        });
        Ok(Proxy {
            users: UserDirectory::new(&config),
            config,
            pools: Pools::new(),
            cancels: Arc::new(CancelRegistry::default()),
            statements: StatementRegistry::default(),
            tls,
            shutdown,
            shutdown_notify: Arc::new(Notify::new()),
            stopping: Default::default(),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            login_params: Mutex::new(HashMap::new()),
            topology,
            classifier,
            sharding,
            two_phase,
            notifications: Default::default(),
        })
    }

    /// The pool of connections to `addr` for `user` and `database`.
    pub fn pool(&self, addr: &str, user: &User, database: &str) -> Pool {
        let key = PoolKey {
            addr: addr.to_owned(),
            user: user.config.server_user().to_owned(),
            database: database.to_owned(),
        };
        let p = &self.config.proxy;
        self.pools.get_or_create(&key, || {
            (
                ConnectParams {
                    addr: addr.into(),
                    user: user.config.server_user().to_owned(),
                    password: user.config.server_password().map(str::to_owned),
                    database: database.to_owned(),
                    connect_timeout: p.connect_timeout,
                    prepared_capacity: p.prepared_statements_cache,
                },
                PoolConfig {
                    max_size: user.config.pool_size.unwrap_or(p.pool_size),
                    checkout_timeout: p.pool_timeout,
                    idle_timeout: p.idle_timeout,
                    max_lifetime: p.server_lifetime,
                },
            )
        })
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

    /// The shard unrouted statements go to.
    pub fn default_shard(&self) -> usize {
        self.sharding.as_ref().map_or(0, |s| s.map.default_shard())
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
        }
    }

    /// How long a failed node is banned.
    pub fn ban_ms(&self) -> u64 {
        self.config.routing.ban_ms
    }

    /// Settings of the health and lag monitor.
    pub fn monitor_config(&self) -> MonitorConfig {
        let r = &self.config.routing;
        let first = &self.config.users[0];
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
        }
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Number of client connections open now.
    pub fn active_clients(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Counts a client connection while it lives.
struct ActiveGuard(Arc<Proxy>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Accepts clients until `stop` resolves, then stops listening, lets open
/// transactions finish for up to `shutdown_timeout` and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let (tx, rx) = watch::channel(false);
    let proxy = Arc::new(Proxy::new(config, rx)?);
    let monitors = spawn_monitors(proxy.topology.clone(), proxy.monitor_config());
    if let Some(coordinator) = proxy.two_phase.clone() {
        let target = proxy.recovery_target();
        // In-doubt transactions of an earlier run are resolved before clients come in.
        let left = tokio::time::timeout(Duration::from_secs(30), recover(&coordinator, &target))
            .await
            .unwrap_or(1);
        if left > 0 {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    if recover(&coordinator, &target).await == 0 {
                        break;
                    }
                }
            });
        }
    }
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    if proxy.active_clients() >= proxy.config.proxy.max_client_connections {
                        tokio::spawn(crate::handshake::refuse_too_many(socket));
                        continue;
                    }
                    proxy.active.fetch_add(1, Ordering::AcqRel);
                    let guard = ActiveGuard(proxy.clone());
                    tokio::spawn(async move {
                        crate::handshake::handle_client(guard.0.clone(), socket, peer).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    drop(listener);
    let timeout = proxy.config.proxy.shutdown_timeout;
    tracing::info!(
        clients = proxy.active_clients(),
        timeout_ms = timeout.as_millis() as u64,
        "shutting down: no new connections; waiting for open transactions"
    );
    let _ = tx.send(true);
    proxy.stopping.store(true, Ordering::Relaxed);
    proxy.shutdown_notify.notify_waiters();
    let drained = tokio::time::timeout(timeout, async {
        loop {
            let notified = proxy.idle.notified();
            if proxy.active_clients() == 0 {
                break;
            }
            notified.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            clients = proxy.active_clients(),
            "shutdown_timeout reached; closing remaining connections"
        );
    }
    for m in monitors {
        m.abort();
    }
    for pool in proxy.pools.all() {
        pool.drain_idle();
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Binds the listen address of `config`.
pub async fn bind(config: &Config) -> Result<TcpListener, StartError> {
    TcpListener::bind(config.listen_addr())
        .await
        .map_err(|source| StartError::Bind {
            addr: config.proxy.listen.clone(),
            source,
        })
}
