//! Where a client's statements go: its consistency settings and the choice of
//! node for each transaction.

use std::sync::Arc;

use shardgate_jobs::topology::NodeState;
use shardgate_jobs::{ReadPolicy, ShardState};
use shardgate_protocol::PgError;
use shardgate_router::{Classification, Consistency, Hints, Route};

/// What a transaction needs from the node that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The shard's write target.
    Primary,
    /// A read outside a transaction (may be retried on another node if its
    /// node fails before answering).
    Read(ReadLevel),
    /// A `READ ONLY` transaction, held on one node until it ends.
    ReadOnlyTx(ReadLevel),
}

/// How a statement routes: its classification and its hint comments.
#[derive(Debug, Clone)]
pub struct StatementRouting {
    /// Where it may run.
    pub route: Route,
    /// Hints written in the statement.
    pub hints: Hints,
}

impl StatementRouting {
    /// The routing of a statement classified as `c`; invalid hints are
    /// ignored here (they are refused when the statement arrives).
    pub fn of(c: &Classification) -> StatementRouting {
        StatementRouting {
            route: c.route,
            hints: c.hints().cloned().unwrap_or_default(),
        }
    }
}

/// Consistency requirements of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLevel {
    /// Level in force for this statement.
    pub consistency: Consistency,
    /// Bound for `bounded`.
    pub max_lag_ms: u64,
}

impl ReadLevel {
    /// The level the configuration gives `user`: its own settings, else `[routing]`'s.
    pub fn configured(
        config: &crate::config::Config,
        user: &crate::config::UserConfig,
    ) -> ReadLevel {
        let r = &config.routing;
        ReadLevel {
            consistency: user.consistency.unwrap_or(r.default_consistency),
            max_lag_ms: user.max_lag_ms.unwrap_or(r.max_lag_ms),
        }
    }
}

/// A client's consistency settings and read-your-writes position.
#[derive(Debug, Clone)]
pub struct RoutingState {
    base: ReadLevel,
    current: ReadLevel,
    /// WAL position of the client's last commit on the primary (read your writes).
    pub min_lsn: u64,
}

impl RoutingState {
    /// Settings from configuration, user and startup options (what `RESET` returns to).
    pub fn new(base: ReadLevel) -> RoutingState {
        RoutingState {
            base,
            current: base,
            min_lsn: 0,
        }
    }

    /// The level in force for the session.
    pub fn level(&self) -> ReadLevel {
        self.current
    }

    /// A reload changed the configured defaults from `old` to `new`: every
    /// setting that followed the old default follows the new one; what the
    /// startup options or `SET` chose stays.
    pub fn rebase(&mut self, old: ReadLevel, new: ReadLevel) {
        if self.base.consistency == old.consistency {
            if self.current.consistency == self.base.consistency {
                self.current.consistency = new.consistency;
            }
            self.base.consistency = new.consistency;
        }
        if self.base.max_lag_ms == old.max_lag_ms {
            if self.current.max_lag_ms == self.base.max_lag_ms {
                self.current.max_lag_ms = new.max_lag_ms;
            }
            self.base.max_lag_ms = new.max_lag_ms;
        }
    }

    /// `SET shardgate.consistency`.
    pub fn set_consistency(&mut self, c: Consistency) {
        self.current.consistency = c;
    }

    /// `SET shardgate.max_lag_ms`.
    pub fn set_max_lag_ms(&mut self, ms: u64) {
        self.current.max_lag_ms = ms;
    }

    /// `RESET shardgate.consistency`.
    pub fn reset_consistency(&mut self) {
        self.current.consistency = self.base.consistency;
    }

    /// `RESET shardgate.max_lag_ms`.
    pub fn reset_max_lag_ms(&mut self) {
        self.current.max_lag_ms = self.base.max_lag_ms;
    }

    /// What a statement with `route` and `hints` needs.
    pub fn want(&self, route: Route, hints: &Hints) -> Want {
        let level = ReadLevel {
            consistency: hints.consistency.unwrap_or(self.current.consistency),
            max_lag_ms: hints.max_lag_ms.unwrap_or(self.current.max_lag_ms),
        };
        match route {
            Route::Read if level.consistency != Consistency::Strong => Want::Read(level),
            Route::Begin { read_only: true } if level.consistency != Consistency::Strong => {
                Want::ReadOnlyTx(level)
            }
            _ => Want::Primary,
        }
    }
}

/// The node chosen for a transaction.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The node.
    pub node: Arc<NodeState>,
    /// Whether it is a replica (not the write target).
    pub replica: bool,
}

/// Picks the node for `want` in `shard` at `now_ms`, passing over the nodes
/// in `avoid` (bit `i` for node `i`).
pub fn choose(
    shard: &ShardState,
    want: Want,
    min_lsn: u64,
    now_ms: u64,
    avoid: u64,
) -> Result<Choice, PgError> {
    let level = match want {
        Want::Primary => return primary(shard, now_ms),
        Want::Read(l) | Want::ReadOnlyTx(l) => l,
    };
    let policy = ReadPolicy {
        consistency: level.consistency,
        max_lag_ms: level.max_lag_ms,
        min_lsn,
        avoid,
    };
    match shard.choose_replica(&policy, now_ms) {
        Some(node) => Ok(Choice {
            node: node.clone(),
            replica: true,
        }),
        None if policy.avoids(shard.writer().index) => Err(PgError::error(
            "08006",
            format!("shardgate: no node of shard {} accepted a connection in time", shard.index),
        )
        .with_hint("The servers are slow to log in; retry, or raise connect_timeout.")),
        None => primary(shard, now_ms).map_err(|e| {
            e.with_detail(format!(
                "No replica of shard {} satisfies consistency {} right now, so the read needs the primary.",
                shard.index, level.consistency
            ))
        }),
    }
}

fn primary(shard: &ShardState, now_ms: u64) -> Result<Choice, PgError> {
    let node = shard.writer();
    if node.is_usable(now_ms) {
        return Ok(Choice {
            node: node.clone(),
            replica: false,
        });
    }
    let why = node
        .last_error()
        .unwrap_or_else(|| "it is fenced after a failover".into());
    Err(PgError::error(
        "08006",
        format!("shardgate: the primary of shard {} ({}) is unavailable: {why}", shard.index, node.addr),
    )
    .with_hint("Writes and strong reads fail until it is back; reads at eventual or bounded consistency still work on replicas."))
}
