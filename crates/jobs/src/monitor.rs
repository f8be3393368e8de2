//! Health and lag monitoring: one task per node polls it every `lag_poll`
//! over its own tokio-postgres connection. The poll is also the health check:
//! a node that fails it, or twice in a row does not answer within
//! `health_check`, is banned for `ban`, and used again after the ban once a
//! poll succeeds. A node that answered a client's query while its check was
//! running is alive whatever the check says, and is not banned: on a
//! saturated machine a check can be slow while the node serves thousands of
//! queries a second.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::lsn::parse_lsn;
use crate::topology::{NodeState, ShardState, Topology};

/// Whether a promoted replica takes over writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleDetection {
    /// Roles are as configured.
    Static,
    /// A replica that leaves recovery becomes the shard's write target.
    Auto,
}

/// Settings of the monitor tasks.
#[derive(Clone)]
pub struct MonitorConfig {
    /// Poll interval.
    pub lag_poll: Duration,
    /// Limit on one check (connect and query).
    pub health_check: Duration,
    /// How long a failed node is kept out of rotation.
    pub ban: Duration,
    /// Static or automatic roles.
    pub role_detection: RoleDetection,
    /// Role the monitor logs in as.
    pub user: String,
    /// Its password.
    pub password: Option<String>,
    /// Database it connects to.
    pub database: String,
    /// TLS towards the servers (`proxy.server_tls`).
    pub tls: shardgate_pool::ServerTls,
}

impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("lag_poll", &self.lag_poll)
            .field("health_check", &self.health_check)
            .field("ban", &self.ban)
            .field("role_detection", &self.role_detection)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The monitor tasks: one per node in rotation (removed nodes have none).
pub struct Monitors {
    tasks: Vec<JoinHandle<()>>,
}

impl Monitors {
    /// Starts one monitor task per node of `topology`.
    pub fn start(topology: &Arc<Topology>, config: MonitorConfig) -> Monitors {
        let config = Arc::new(config);
        let mut tasks = Vec::new();
        for shard in &topology.shards {
            for node in shard.nodes.iter().filter(|n| !n.is_retired()) {
                tasks.push(tokio::spawn(watch_node(
                    topology.clone(),
                    shard.clone(),
                    node.clone(),
                    config.clone(),
                )));
            }
        }
        Monitors { tasks }
    }

    /// Stops every task (they end at their next await).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one poll learned.
struct Sample {
    in_recovery: bool,
    lsn: u64,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("{}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("unexpected answer: {0}")]
    Answer(String),
}

/// An error and what caused it (a TLS handshake error says why).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Timed-out checks in a row after which the monitor opens a new connection.
const RECONNECT_AFTER_TIMEOUTS: u32 = 3;

/// Timed-out checks in a row that ban a node (an error bans at once).
const TIMEOUTS_BEFORE_BAN: u32 = 2;

const PROBE_SQL: &str = "SELECT pg_is_in_recovery()::text, \
     (CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_lsn() END)::text";

async fn watch_node(
    topology: Arc<Topology>,
    shard: Arc<ShardState>,
    node: Arc<NodeState>,
    config: Arc<MonitorConfig>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(config.lag_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_static = false;
    let mut timeouts_in_a_row = 0u32;
    let mut excused = false;
    loop {
        tick.tick().await;
        let epoch = node.begin_check();
        let outcome =
            match tokio::time::timeout(config.health_check, probe(&node, &mut client, &config))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(ProbeError::Timeout(config.health_check.as_millis())),
            };
        let now = topology.now_ms();
        match outcome {
            Ok(sample) => {
                timeouts_in_a_row = 0;
                if std::mem::take(&mut excused) {
                    tracing::info!(node = %node.addr, shard = shard.index, "health check answers again");
                }
                node.check_passed(now);
                node.record_recovery(sample.in_recovery);
                apply_sample(&shard, &node, &sample, now, &config, &mut warned_static);
            }
            Err(e) => {
                let timed_out = matches!(e, ProbeError::Timeout(_));
                timeouts_in_a_row = if timed_out { timeouts_in_a_row + 1 } else { 0 };
                // A late answer still arrives on the same connection, but one
                // that stays silent may be dead without knowing it.
                if !timed_out || timeouts_in_a_row.is_multiple_of(RECONNECT_AFTER_TIMEOUTS) {
                    client = None;
                }
                if node.answered_since(epoch) {
                    // A node that answers clients is up: a slow or lost check
                    // (an overloaded machine, a killed monitor session) does
                    // not take it out of rotation.
                    if !std::mem::replace(&mut excused, true) {
                        tracing::warn!(node = %node.addr, shard = shard.index, error = %e,
                            "health check failed, but the node is answering clients; not banned");
                    }
                } else if timed_out && timeouts_in_a_row < TIMEOUTS_BEFORE_BAN {
                    // One late answer may be the proxy's own stall (a
                    // descheduled process times out every check at once).
                    tracing::info!(node = %node.addr, shard = shard.index, error = %e, "health check timed out once; banned if the next one does too");
                } else {
                    let reason = if timed_out {
                        format!("health check failed: {e}, {timeouts_in_a_row} times in a row")
                    } else {
                        format!("health check failed: {e}")
                    };
                    node.ban(now, config.ban.as_millis() as u64, &reason);
                    if timed_out {
                        // The node is silent (nothing answered a client
                        // during the checks either): statements waiting on
                        // it will not be answered. A refused or closed
                        // check connection shows on theirs by itself.
                        node.abort_waits();
                    }
                }
            }
        }
    }
}

fn apply_sample(
    shard: &ShardState,
    node: &NodeState,
    sample: &Sample,
    now: u64,
    config: &MonitorConfig,
    warned_static: &mut bool,
) {
    let is_writer = shard.writer_index() == node.index;
    if sample.in_recovery {
        if !is_writer {
            let lag = shard.lag_of(now, sample.lsn);
            node.record_lag(sample.lsn, lag);
        }
        return;
    }
    if is_writer {
        shard.record_primary_sample(now, sample.lsn);
        node.record_primary_lsn(sample.lsn);
        return;
    }
    if node.is_fenced() {
        return;
    }
    match config.role_detection {
        RoleDetection::Auto => {
            shard.promote(node.index);
            shard.record_primary_sample(now, sample.lsn);
            node.record_primary_lsn(sample.lsn);
        }
        RoleDetection::Static => {
            if !*warned_static {
                tracing::warn!(node = %node.addr, shard = shard.index,
                    "replica is not in recovery (promoted?); with role_detection = \"static\" it is not used for writes");
                *warned_static = true;
            }
        }
    }
}

async fn probe(
    node: &NodeState,
    client: &mut Option<tokio_postgres::Client>,
    config: &MonitorConfig,
) -> Result<Sample, ProbeError> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect(node, config).await?);
    }
    let c = client.as_ref().expect("connected above");
    let rows = c.simple_query(PROBE_SQL).await?;
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .ok_or_else(|| ProbeError::Answer("no row".into()))?;
    let in_recovery = row.get(0) == Some("true");
    let lsn_text = row.get(1).unwrap_or("0/0");
    let lsn =
        parse_lsn(lsn_text).ok_or_else(|| ProbeError::Answer(format!("bad LSN {lsn_text:?}")))?;
    Ok(Sample { in_recovery, lsn })
}

async fn connect(
    node: &NodeState,
    config: &MonitorConfig,
) -> Result<tokio_postgres::Client, ProbeError> {
    let (host, port) = node
        .addr
        .rsplit_once(':')
        .ok_or_else(|| ProbeError::Answer(format!("bad address {:?}", node.addr)))?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(host)
        .port(
            port.parse()
                .map_err(|_| ProbeError::Answer(format!("bad port in {:?}", node.addr)))?,
        )
        .user(&config.user)
        .dbname(&config.database)
        .application_name("shardgate-monitor")
        .connect_timeout(config.health_check);
    if let Some(pw) = &config.password {
        pg.password(pw);
    }
    Ok(config.tls.connect_pg(&mut pg).await?)
}
