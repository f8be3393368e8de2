//! `proxy.toml`: the configuration file, its defaults and its validation.
//!
//! Unknown keys and wrong types are errors that name the key and its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shardgate_router::Consistency;
use shardgate_shardmap::{
    ArcOwner, Function, KeyType, ListEntry, MapError, RangeEntry, ShardKey, ShardMap,
    ShardMapConfig, TableName, TableRule,
};

/// A configuration problem, located in the file where possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Syntax error, unknown key or wrong type.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// File name.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        /// File name.
        file: String,
        /// 1-based line (0 when the key is absent from the file).
        line: usize,
        /// Dotted key, e.g. `proxy.pool_size` or `users[1].password`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener, pooling and limits.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Who may log in.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// The shards, in order: shard 0, 1, ...
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Replica routing, health and lag monitoring.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Hash ring settings and where unsharded tables live.
    #[serde(default)]
    pub sharding: ShardingConfig,
    /// Tables split across shards by a key column.
    #[serde(default)]
    pub sharded_tables: Vec<ShardedTableConfig>,
    /// Tables copied on every shard.
    #[serde(default)]
    pub reference_tables: Vec<ReferenceTableConfig>,
    /// The `section.key` settings the file sets (the rest are defaults).
    #[serde(skip)]
    pub file_keys: Vec<String>,
}

/// `[sharding]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardingConfig {
    /// Virtual nodes per unit of weight on the hash ring.
    pub vnodes: u32,
    /// Shard of tables that are neither sharded nor reference tables.
    pub default_shard: usize,
    /// The database holding the sharded tables that rebalancing moves, and
    /// the metadata schema `shardgate_meta` (on shard 0's primary).
    pub rebalance_database: String,
    /// Most megabytes per second a rebalancing copy reads (0: no limit).
    pub rebalance_max_mb_s: u64,
    /// Megabytes of a source table a logical move copies per chunk: the
    /// unit of copy progress a stopped job keeps (at least 1).
    pub rebalance_chunk_mb: u64,
    /// How long a move waits for transactions begun before it, and for
    /// statements in flight at its cutover, before it gives up (ms).
    pub rebalance_hold_timeout_ms: u64,
    /// Longest a logical move's cutover may hold the moving keys while it
    /// applies the last changes and verifies them (ms); past it the move
    /// lets them go, catches up further and tries again.
    pub rebalance_cutover_max_ms: u64,
    /// A proxy that cannot renew its heartbeat in `shardgate_meta.proxies`
    /// for half of this (ms) holds its own writes to sharded tables until
    /// it can and has read the metadata again.
    pub rebalance_proxy_lease_ms: u64,
    /// `REBALANCE` moves arcs until every shard's share of the hash-sharded
    /// data is within this fraction of its weight's ideal share (0.2: 20%).
    pub imbalance_threshold: f64,
    /// `host:port` of the node holding the metadata schema `shardgate_meta`
    /// (map versions, jobs, proxies); empty: shard 0's primary.
    pub metadata_node: String,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        ShardingConfig {
            vnodes: 256,
            default_shard: 0,
            rebalance_database: "postgres".into(),
            rebalance_max_mb_s: 0,
            rebalance_chunk_mb: 64,
            rebalance_hold_timeout_ms: 30_000,
            rebalance_cutover_max_ms: 1_000,
            rebalance_proxy_lease_ms: 10_000,
            imbalance_threshold: 0.2,
            metadata_node: String::new(),
        }
    }
}

/// `[[sharded_tables]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTableConfig {
    /// Table name, optionally schema-qualified.
    pub table: String,
    /// Shard key column.
    pub column: String,
    /// "hash", "range" or "list".
    #[serde(default = "default_function")]
    pub function: String,
    /// "bigint", "text" or "uuid".
    #[serde(default = "default_key_type")]
    pub key_type: String,
    /// Range sharding: `[start, end)` per shard.
    #[serde(default)]
    pub ranges: Vec<RangeConfig>,
    /// List sharding: values per shard.
    #[serde(default)]
    pub lists: Vec<ListConfig>,
}

fn default_function() -> String {
    "hash".into()
}

fn default_key_type() -> String {
    "bigint".into()
}

/// One range of a range-sharded table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeConfig {
    /// Shard that holds the range.
    pub shard: usize,
    /// First key (inclusive).
    pub start: i64,
    /// End key (exclusive).
    pub end: i64,
}

/// The values one shard holds in a list-sharded table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// Shard that holds the values.
    pub shard: usize,
    /// Key values (strings or integers).
    pub values: Vec<toml::Value>,
}

/// `[[reference_tables]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceTableConfig {
    /// Table name, optionally schema-qualified.
    pub table: String,
}

/// `[routing]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Consistency level of reads unless the user, session or statement says otherwise.
    #[serde(deserialize_with = "from_str", serialize_with = "to_str")]
    pub default_consistency: Consistency,
    /// Staleness bound of `bounded` reads, in milliseconds.
    pub max_lag_ms: u64,
    /// How often every node is polled for its WAL position (also a health check).
    pub lag_poll_ms: u64,
    /// A node that does not answer a check within this long fails it.
    pub health_check_ms: u64,
    /// How long a failed node gets no traffic before it is probed again.
    pub ban_ms: u64,
    /// "static" (roles as configured) or "auto" (a promoted replica takes writes).
    pub role_detection: RoleDetectionConfig,
    /// Functions that write (calls route to the primary), besides the built-in list.
    pub write_functions: Vec<String>,
    /// Role the monitor logs in as (default: the first user's server role).
    pub monitor_user: Option<String>,
    /// Its password (default: that user's server password).
    pub monitor_password: Option<String>,
    /// Database the monitor connects to.
    pub monitor_database: String,
    /// Statement analyses (route, shard plan, merge tree) cached by
    /// normalised statement text.
    pub classifier_cache: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_consistency: Consistency::Eventual,
            max_lag_ms: 1000,
            lag_poll_ms: 100,
            health_check_ms: 1000,
            ban_ms: 5000,
            role_detection: RoleDetectionConfig::Static,
            write_functions: Vec::new(),
            monitor_user: None,
            monitor_password: None,
            monitor_database: "postgres".into(),
            classifier_cache: 10_000,
        }
    }
}

/// `routing.role_detection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleDetectionConfig {
    /// Roles as configured.
    Static,
    /// A replica that reports `pg_is_in_recovery() = false` takes over writes.
    Auto,
}

/// Deserializes any type with `FromStr` from a string.
fn from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// How server connections are shared between clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is lent for one transaction.
    Transaction,
    /// A server connection is lent for the whole client session.
    Session,
}

/// TLS towards the servers (libpq's `sslmode` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Never.
    Disable,
    /// When the server offers it (certificate not checked).
    Prefer,
    /// Always (certificate not checked).
    Require,
    /// Always, the certificate signed by `server_tls_root_cert`.
    VerifyCa,
    /// Always, signed by `server_tls_root_cert` and naming the host.
    VerifyFull,
}

impl ServerTlsMode {
    /// The mode as libpq's `sslmode` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (default).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 challenge/response.
    #[serde(rename = "md5")]
    Md5,
    /// No password.
    #[serde(rename = "trust")]
    Trust,
}

/// `[proxy]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address to listen on.
    pub listen: String,
    /// Transaction (default) or session pooling.
    pub pool_mode: PoolMode,
    /// Server connections per node, user and database.
    pub pool_size: usize,
    /// Database name that opens the admin console.
    pub admin_database: String,
    /// How long a client waits for a free server connection.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub pool_timeout: Duration,
    /// Limit on opening and logging in to a server connection.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub connect_timeout: Duration,
    /// Idle server connections older than this are closed.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub idle_timeout: Duration,
    /// Server connections older than this are closed when returned.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub server_lifetime: Duration,
    /// How long running transactions may take to finish after SIGTERM.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub shutdown_timeout: Duration,
    /// Largest message a client may send, in bytes.
    pub max_message_size: usize,
    /// Bytes of one client's input the proxy holds at once (one message, or
    /// an extended-protocol batch gathered up to its Sync); beyond it the
    /// client gets `54000` and is disconnected.
    pub max_client_buffer: usize,
    /// Most client connections at once.
    pub max_client_connections: usize,
    /// Runtime worker threads; 0 means automatic ([`ProxyConfig::worker_threads`]).
    pub workers: usize,
    /// PEM certificate chain for TLS to clients.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS to clients.
    pub tls_key: Option<PathBuf>,
    /// Prepared statements kept per server connection (LRU).
    pub prepared_statements_cache: usize,
    /// Commit transactions that wrote on several shards with two-phase commit.
    pub two_phase_commit: bool,
    /// File of durable commit decisions (two-phase commit).
    pub two_phase_log: PathBuf,
    /// Answer a plain BEGIN in the proxy and send it to the server with the
    /// transaction's first statement (transaction pooling, unsharded).
    pub defer_begin: bool,
    /// Address of the Prometheus endpoint (`GET /metrics`); off when unset.
    pub metrics_listen: Option<String>,
    /// Statements that take longer than this (milliseconds) go to the slow-query log.
    pub slow_query_ms: u64,
    /// Entries kept in the slow-query log (the oldest go first).
    pub slow_query_log_size: usize,
    /// Distinct statement fingerprints kept in the query statistics.
    pub query_stats_max: usize,
    /// Bytes one cross-shard query may hold at the proxy (groups sorted by
    /// an aggregate, gathered values); beyond it the query fails with
    /// `53400`.
    pub merge_memory_limit: usize,
    /// A client that has not finished logging in by then is disconnected.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub auth_timeout: Duration,
    /// A client idle outside a transaction this long is disconnected
    /// (`57P05`); 0 = never.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub client_idle_timeout: Duration,
    /// A client idle inside a transaction this long is disconnected
    /// (`25P03`) and its transaction rolled back, freeing the server
    /// connection; 0 = never.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub idle_transaction_timeout: Duration,
    /// A statement running this long is cancelled at the server (`57014`);
    /// 0 = never.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub query_timeout: Duration,
    /// Most client connections of one user at once (`53300` beyond); 0 =
    /// no limit other than `max_client_connections`.
    pub max_connections_per_user: usize,
    /// TLS towards the servers.
    pub server_tls: ServerTlsMode,
    /// PEM root certificate(s) for `verify-ca` / `verify-full`.
    pub server_tls_root_cert: Option<PathBuf>,
}

impl ProxyConfig {
    /// The runtime threads to start: `workers`, or when it is 0 half the
    /// CPU cores the process may use, at least one. Most of the proxy's
    /// time per statement is the kernel's socket work, and on a machine of
    /// few cores it shares them with Postgres or the clients: on 2 cores one
    /// thread gave 13–18% more `-S` throughput at 3–6% less CPU per
    /// transaction than two (README, *Benchmarks*), where the second
    /// thread's wake-ups compete with the processes it serves.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            admin_database: "shardgate".into(),
            pool_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(30),
            max_message_size: 256 << 20,
            max_client_buffer: 16 << 20,
            max_client_connections: 10_000,
            workers: 0,
            tls_cert: None,
            tls_key: None,
            prepared_statements_cache: 1000,
            two_phase_commit: false,
            two_phase_log: PathBuf::from("shardgate-2pc.log"),
            defer_begin: true,
            merge_memory_limit: 256 << 20,
            auth_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            max_connections_per_user: 0,
            server_tls: ServerTlsMode::Prefer,
            server_tls_root_cert: None,
            metrics_listen: None,
            slow_query_ms: 1000,
            slow_query_log_size: 1000,
            query_stats_max: 5000,
        }
    }
}

/// `[[users]]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Plain text, a SCRAM-SHA-256 verifier, or an md5 hash (`md5...`).
    pub password: Option<String>,
    /// Authentication method.
    #[serde(default = "default_auth")]
    pub auth: AuthMethod,
    /// Role shardgate logs in to Postgres as (default: `name`).
    pub server_user: Option<String>,
    /// Password for `server_user` (default: `password` when it is plain text).
    pub server_password: Option<String>,
    /// Override of `proxy.pool_size` for this user.
    pub pool_size: Option<usize>,
    /// May open the admin console.
    #[serde(default)]
    pub admin: bool,
    /// This user's default consistency level (overrides `routing.default_consistency`).
    #[serde(default, deserialize_with = "opt_from_str")]
    pub consistency: Option<Consistency>,
    /// This user's staleness bound (overrides `routing.max_lag_ms`).
    pub max_lag_ms: Option<u64>,
}

fn opt_from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<Option<T>, D::Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    from_str(d).map(Some)
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("server_user", &self.server_user)
            .finish_non_exhaustive()
    }
}

fn default_auth() -> AuthMethod {
    AuthMethod::ScramSha256
}

impl UserConfig {
    /// Role used on the servers.
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// Password used on the servers, if any.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or_else(|| {
            self.password
                .as_deref()
                .filter(|p| !is_scram_verifier(p) && !is_md5_hash(p))
        })
    }
}

/// Whether a stored password is a SCRAM-SHA-256 verifier.
pub fn is_scram_verifier(p: &str) -> bool {
    p.starts_with("SCRAM-SHA-256$")
}

/// Whether a stored password is an md5 hash.
pub fn is_md5_hash(p: &str) -> bool {
    p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `[[shards]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// `host:port` of the primary.
    pub primary: String,
    /// `host:port` of each streaming replica.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Relative share of the hash ring.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Arcs of the ring given to this shard by `REBALANCE`, each named by
    /// the point that ends it: `"<shard>-<vnode>"` (the point
    /// `shard-<shard>-vnode-<vnode>`). Recorded in `shardgate_meta`.
    #[serde(default)]
    pub arcs: Vec<String>,
}

/// Parses an arc name `"<shard>-<vnode>"`.
pub fn parse_arc(name: &str) -> Option<(usize, u32)> {
    let (s, v) = name.split_once('-')?;
    Some((s.parse().ok()?, v.parse().ok()?))
}

fn default_weight() -> u32 {
    1
}

/// Serializes any `Display` type as its text.
fn to_str<S: Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Writes a duration the way a person would: `"5s"`, `"250ms"`, `"10m"`.
fn duration_text<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// `"1h"`, `"10m"`, `"5s"` or `"250ms"`: the largest unit that is exact.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Accepts an integer number of milliseconds or a string such as `"250ms"`, `"5s"`, `"2m"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(s) => parse_duration(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: use milliseconds (5000) or a string like \"5s\", \"250ms\", \"2m\""
            ))
        }),
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" | "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(e, text, file))?;
        config.validate(text, file)?;
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            for (section, value) in &table {
                if let toml::Value::Table(keys) = value {
                    config
                        .file_keys
                        .extend(keys.keys().map(|k| format!("{section}.{k}")));
                }
            }
        }
        Ok(config)
    }

    /// The listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.proxy
            .listen
            .parse()
            .expect("validated when the configuration was loaded")
    }

    /// `(primary, replicas)` of every shard, in order.
    pub fn topology_spec(&self) -> Vec<(String, Vec<String>)> {
        self.shards
            .iter()
            .map(|s| (s.primary.clone(), s.replicas.clone()))
            .collect()
    }

    /// Validates a configuration changed in memory (`SET`): errors name
    /// the key, without a line.
    pub fn revalidate(&self) -> Result<(), ConfigError> {
        self.validate("", "SET")
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line: locate(text, key),
            key: key.to_owned(),
            message,
        };
        let p = &self.proxy;
        if p.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "proxy.listen",
                format!("{:?} is not an address like \"127.0.0.1:6432\"", p.listen),
            ));
        }
        if p.pool_size == 0 {
            return Err(invalid("proxy.pool_size", "must be at least 1".into()));
        }
        if p.auth_timeout.is_zero() {
            return Err(invalid(
                "proxy.auth_timeout",
                "must be more than 0 (a silent client would hold its connection forever)".into(),
            ));
        }
        if p.merge_memory_limit < 1 << 20 {
            return Err(invalid(
                "proxy.merge_memory_limit",
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if p.max_client_buffer < 64 * 1024 {
            return Err(invalid(
                "proxy.max_client_buffer",
                "must be at least 65536 bytes".into(),
            ));
        }
        if p.max_message_size < 1024 {
            return Err(invalid(
                "proxy.max_message_size",
                "must be at least 1024 bytes".into(),
            ));
        }
        if let Some(m) = &p.metrics_listen {
            if m.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "proxy.metrics_listen",
                    format!("{m:?} is not an address like \"127.0.0.1:9930\""),
                ));
            }
        }
        if p.admin_database.is_empty() {
            return Err(invalid("proxy.admin_database", "must not be empty".into()));
        }
        if p.tls_cert.is_some() != p.tls_key.is_some() {
            return Err(invalid(
                if p.tls_cert.is_some() {
                    "proxy.tls_key"
                } else {
                    "proxy.tls_cert"
                },
                "tls_cert and tls_key must be set together".into(),
            ));
        }
        if self.users.is_empty() {
            return Err(invalid(
                "users",
                "at least one [[users]] entry is required".into(),
            ));
        }
        for (i, u) in self.users.iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            if u.name.is_empty() {
                return Err(invalid(&key("name"), "must not be empty".into()));
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                return Err(invalid(
                    &key("name"),
                    format!("user {:?} is defined twice", u.name),
                ));
            }
            match (u.auth, u.password.as_deref()) {
                (AuthMethod::Trust, _) => {}
                (_, None) => {
                    return Err(invalid(
                        &key("password"),
                        format!("user {:?} needs a password unless auth = \"trust\"", u.name),
                    ))
                }
                (AuthMethod::Md5, Some(pw)) if is_scram_verifier(pw) => {
                    return Err(invalid(
                        &key("password"),
                        "md5 authentication needs the plain-text password or its md5 hash, not a SCRAM verifier".into(),
                    ))
                }
                (AuthMethod::ScramSha256, Some(pw)) if is_md5_hash(pw) => {
                    return Err(invalid(
                        &key("password"),
                        "SCRAM authentication needs the plain-text password or a SCRAM verifier, not an md5 hash".into(),
                    ))
                }
                (AuthMethod::ScramSha256, Some(pw)) if is_scram_verifier(pw) => {
                    shardgate_protocol::auth::scram::Verifier::parse(pw)
                        .map_err(|e| invalid(&key("password"), e.to_string()))?;
                }
                _ => {}
            }
            if u.pool_size == Some(0) {
                return Err(invalid(&key("pool_size"), "must be at least 1".into()));
            }
        }
        let r = &self.routing;
        if r.lag_poll_ms == 0 {
            return Err(invalid("routing.lag_poll_ms", "must be at least 1".into()));
        }
        if r.health_check_ms == 0 {
            return Err(invalid(
                "routing.health_check_ms",
                "must be at least 1".into(),
            ));
        }
        if r.classifier_cache == 0 {
            return Err(invalid(
                "routing.classifier_cache",
                "must be at least 1".into(),
            ));
        }
        if self.shards.is_empty() {
            return Err(invalid(
                "shards",
                "at least one [[shards]] entry is required".into(),
            ));
        }
        for (i, s) in self.shards.iter().enumerate() {
            for (k, addr) in std::iter::once(("primary", &s.primary))
                .chain(s.replicas.iter().map(|r| ("replicas", r)))
            {
                if !is_host_port(addr) {
                    return Err(invalid(
                        &format!("shards[{i}].{k}"),
                        format!("{addr:?} is not an address like \"127.0.0.1:5432\""),
                    ));
                }
            }
        }
        if !self.shards.is_empty() && self.shards.iter().all(|s| s.weight == 0) {
            return Err(invalid(
                "shards[0].weight",
                "every shard has weight 0: at least one needs 1 or more (0 marks a shard REMOVE SHARD drained)".into(),
            ));
        }
        if !self.sharding.metadata_node.is_empty() && !is_host_port(&self.sharding.metadata_node) {
            return Err(invalid(
                "sharding.metadata_node",
                "must be host:port (empty: shard 0's primary)".into(),
            ));
        }
        let t = self.sharding.imbalance_threshold;
        if !(t > 0.0 && t < 10.0) {
            return Err(invalid(
                "sharding.imbalance_threshold",
                "must be above 0 and below 10 (0.2 means within 20% of the ideal share)".into(),
            ));
        }
        let lease = self.sharding.rebalance_proxy_lease_ms;
        if lease < 3_000 || lease >= self.sharding.rebalance_hold_timeout_ms {
            return Err(invalid(
                "sharding.rebalance_proxy_lease_ms",
                format!(
                    "must be at least 3000 (proxies renew their lease every second) and below sharding.rebalance_hold_timeout_ms ({}), so that a move outwaits a proxy that died",
                    self.sharding.rebalance_hold_timeout_ms
                ),
            ));
        }
        if self.sharding.rebalance_cutover_max_ms < 100 {
            return Err(invalid(
                "sharding.rebalance_cutover_max_ms",
                "must be at least 100: a cutover needs a few round trips to every shard".into(),
            ));
        }
        if self.sharding.default_shard >= self.shards.len().max(1) {
            return Err(invalid(
                "sharding.default_shard",
                format!(
                    "there are only {} shards (numbered from 0)",
                    self.shards.len()
                ),
            ));
        }
        if let Err(e) = self.shard_map() {
            let key = match &e {
                ShardMapBuildError::Table { index, .. } => format!("sharded_tables[{index}]"),
                ShardMapBuildError::Map(_) => "sharded_tables".to_owned(),
                ShardMapBuildError::Arc(_) => "shards".to_owned(),
            };
            return Err(invalid(&key, e.to_string()));
        }
        Ok(())
    }
}

/// Why the shard map could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ShardMapBuildError {
    /// One `[[sharded_tables]]` entry is wrong.
    #[error("table {table}: {message}")]
    Table {
        /// Position in `[[sharded_tables]]`.
        index: usize,
        /// The table as written.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// The map as a whole is inconsistent.
    #[error(transparent)]
    Map(#[from] MapError),
    /// An arc name in `[[shards]].arcs` cannot be read.
    #[error("{0}")]
    Arc(String),
}

/// Splits `schema.table` (parts may be double-quoted; unquoted parts are
/// lower-cased as Postgres folds them).
pub fn parse_table_name(s: &str) -> TableName {
    let fold = |p: &str| {
        let p = p.trim();
        match p.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None => p.to_ascii_lowercase(),
        }
    };
    match s.split_once('.') {
        Some((schema, name)) => TableName::new(Some(&fold(schema)), &fold(name)),
        None => TableName::new(None, &fold(s)),
    }
}

impl Config {
    /// Whether statements need shard routing at all (several shards, or
    /// sharded or reference tables).
    pub fn sharding_enabled(&self) -> bool {
        self.shards.len() > 1
            || !self.sharded_tables.is_empty()
            || !self.reference_tables.is_empty()
    }

    /// The shard map this configuration describes (version 1).
    pub fn shard_map(&self) -> Result<ShardMap, ShardMapBuildError> {
        let mut tables = Vec::new();
        for (index, t) in self.sharded_tables.iter().enumerate() {
            let err = |message: String| ShardMapBuildError::Table {
                index,
                table: t.table.clone(),
                message,
            };
            let key_type: KeyType = t
                .key_type
                .parse()
                .map_err(|e: shardgate_shardmap::KeyError| err(e.to_string()))?;
            let function = match t.function.to_ascii_lowercase().as_str() {
                "hash" => Function::Hash,
                "range" => Function::Range(
                    t.ranges
                        .iter()
                        .map(|r| RangeEntry {
                            shard: r.shard,
                            start: r.start,
                            end: r.end,
                        })
                        .collect(),
                ),
                "list" => {
                    let mut entries = Vec::new();
                    for l in &t.lists {
                        let mut values = Vec::new();
                        for v in &l.values {
                            let text = match v {
                                toml::Value::String(s) => s.clone(),
                                toml::Value::Integer(i) => i.to_string(),
                                other => {
                                    return Err(err(format!(
                                        "list value {other} must be a string or an integer"
                                    )))
                                }
                            };
                            values.push(
                                ShardKey::parse_text(key_type, &text)
                                    .map_err(|e| err(e.to_string()))?,
                            );
                        }
                        entries.push(ListEntry {
                            shard: l.shard,
                            values,
                        });
                    }
                    Function::List(entries)
                }
                other => {
                    return Err(err(format!(
                        "function {other:?} must be \"hash\", \"range\" or \"list\""
                    )))
                }
            };
            tables.push(TableRule {
                table: parse_table_name(&t.table),
                column: t.column.to_ascii_lowercase(),
                key_type,
                function,
            });
        }
        let mut arcs = Vec::new();
        for (owner, s) in self.shards.iter().enumerate() {
            for name in &s.arcs {
                let (shard, vnode) = parse_arc(name).ok_or_else(|| {
                    ShardMapBuildError::Arc(format!(
                        "shards[{owner}].arcs: {name:?} is not an arc name (<shard>-<vnode>)"
                    ))
                })?;
                arcs.push(ArcOwner {
                    shard,
                    vnode,
                    owner,
                });
            }
        }
        let cfg = ShardMapConfig {
            arcs,
            weights: self.shards.iter().map(|s| s.weight).collect(),
            vnodes: self.sharding.vnodes,
            default_shard: self.sharding.default_shard,
            tables,
            reference_tables: self
                .reference_tables
                .iter()
                .map(|r| parse_table_name(&r.table))
                .collect(),
        };
        Ok(ShardMap::new(cfg, 1)?)
    }
}

fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn parse_error(e: toml::de::Error, text: &str, file: &str) -> ConfigError {
    let span = e.span();
    let line = span.as_ref().map_or(0, |s| line_of(text, s.start));
    let mut message = e.message().trim().to_owned();
    // Name the key for type errors, whose span points at the value.
    if let Some(s) = span {
        let line_start = text[..s.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line_text = &text[line_start..];
        if let Some((key, _)) = line_text.lines().next().and_then(|l| l.split_once('=')) {
            let key = key.trim();
            if !key.is_empty() && !message.contains(key) {
                message = format!("key `{key}`: {message}");
            }
        }
    }
    ConfigError::Parse {
        file: file.to_owned(),
        line,
        message,
    }
}

/// Finds the line of a dotted key such as `proxy.pool_size` or `users[1].password`
/// (or of its table when the key itself is absent); 0 when not found.
pub fn locate(text: &str, key: &str) -> usize {
    let (table, field) = key.split_once('.').unwrap_or((key, ""));
    let (table, index) = match table.split_once('[') {
        Some((t, rest)) => (t, rest.trim_end_matches(']').parse::<usize>().unwrap_or(0)),
        None => (table, 0),
    };
    let single = format!("[{table}]");
    let array = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut in_table = false;
    let mut table_line = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            in_table = false;
            if line.starts_with(&array) || line.starts_with(&single) {
                if seen == index {
                    in_table = true;
                    table_line = n + 1;
                }
                seen += 1;
            }
            continue;
        }
        if in_table && !field.is_empty() {
            if let Some((k, _)) = line.split_once('=') {
                if k.trim() == field {
                    return n + 1;
                }
            }
        }
    }
    table_line
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:6432"

[[users]]
name = "app"
password = "secret"

[[shards]]
primary = "127.0.0.1:5432"
"#;

    #[test]
    fn minimal_with_defaults() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.proxy.pool_size, 20);
        assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
        assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
        assert_eq!(c.users[0].server_password(), Some("secret"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = MINIMAL.replace("listen = ", "pool_sise = 3\nlisten = ");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("pool_sise"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = MINIMAL.replace("listen = ", "pool_size = \"ten\"\nlisten = ");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:3:") && e.contains("pool_size"), "{e}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = MINIMAL.replace("password = \"secret\"", "auth = \"md5\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("users[0].password") && e.starts_with("t.toml:5:"),
            "{e}"
        );
        let text = MINIMAL.replace("127.0.0.1:5432", "nowhere");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("shards[0].primary") && e.starts_with("t.toml:10:"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("fast"), None);
        let text = MINIMAL.replace("listen = ", "pool_timeout = \"3s\"\nlisten = ");
        assert_eq!(
            Config::parse(&text, "t").unwrap().proxy.pool_timeout,
            Duration::from_secs(3)
        );
    }
}
