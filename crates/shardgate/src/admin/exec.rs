//! Running the admin commands (everything but SQL and SHOW) against the
//! runtime: each returns its command tag and notices, or a clear error.

use std::sync::Arc;
use std::time::Duration;

use shardgate_jobs::NodeState;
use shardgate_protocol::PgError;

use super::command::Command;
use super::tables::nodes::ADMIN_BAN;
use crate::clients::EndReason;
use crate::runtime::Runtime;

/// What a command did: its tag and the notices to send before it.
pub struct Done {
    /// CommandComplete tag.
    pub tag: &'static str,
    /// Notices (NOTICE severity), one per line.
    pub notices: Vec<String>,
    /// Warnings (WARNING severity).
    pub warnings: Vec<String>,
}

fn done(tag: &'static str) -> Done {
    Done {
        tag,
        notices: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Runs `cmd`.
pub async fn run(rt: &Arc<Runtime>, cmd: Command) -> Result<Done, PgError> {
    match cmd {
        Command::Reload => {
            let report = rt.reload().await.map_err(|e| {
                PgError::error(e.sqlstate(), format!("RELOAD failed: {e}"))
                    .with_hint("Nothing was changed: the running configuration stays. Fix the file and RELOAD again.")
            })?;
            report.log();
            Ok(Done {
                tag: "RELOAD",
                notices: report.changed,
                warnings: report.restart_needed,
            })
        }
        Command::Set { key, value } => {
            let report = rt.set_setting(&key, &value).await.map_err(|e| {
                PgError::error(e.sqlstate(), e.to_string())
                    .with_hint("shardgate.config lists the settings and which ones SET can change.")
            })?;
            report.log();
            Ok(Done {
                tag: "SET",
                notices: report.changed,
                warnings: Vec::new(),
            })
        }
        Command::Pause(shard) => {
            let shards = shards_named(rt, shard)?;
            for &s in &shards {
                rt.pause.pause(s);
            }
            tracing::info!(
                ?shards,
                "PAUSE: new transactions wait; waiting for running ones"
            );
            wait_quiet(rt, &shards).await;
            tracing::info!(?shards, "PAUSE: shards quiet");
            Ok(done("PAUSE"))
        }
        Command::Resume(shard) => {
            let shards = shards_named(rt, shard)?;
            for &s in &shards {
                rt.pause.resume(s);
            }
            tracing::info!(?shards, "RESUME");
            Ok(done("RESUME"))
        }
        Command::Ban { node, duration } => {
            let n = node_named(rt, &node)?;
            let snap = rt.snapshot();
            let ms = duration.map_or(snap.ban_ms(), |d| d.as_millis() as u64);
            n.ban(
                snap.topology.now_ms(),
                ms,
                &format!(
                    "{ADMIN_BAN} for {}",
                    crate::config::format_duration(Duration::from_millis(ms))
                ),
            );
            Ok(done("BAN"))
        }
        Command::Unban(node) => {
            let n = node_named(rt, &node)?;
            n.unban();
            n.set_draining(false);
            tracing::info!(node = %n.addr, "UNBAN: the node gets traffic again");
            Ok(done("UNBAN"))
        }
        Command::Drain(node) => {
            let n = node_named(rt, &node)?;
            let snap = rt.snapshot();
            let shard = &snap.topology.shards[n.shard];
            if shard.writer_index() == n.index {
                return Err(PgError::error(
                    "55000",
                    format!("{node} is the primary of shard {}: draining it would stop the shard's writes", n.shard),
                )
                .with_hint("Make another node the primary in proxy.toml and RELOAD first, or BAN it for a while."));
            }
            tracing::info!(node = %n.addr, "DRAIN: no new work; pools close once in-flight work has finished");
            rt.drain_node(n);
            Ok(done("DRAIN"))
        }
        Command::KillClient(id) => {
            let c = rt.clients.get(id).ok_or_else(|| {
                PgError::error("42704", format!("no client with id {id}"))
                    .with_hint("shardgate.clients lists the connected clients and their ids.")
            })?;
            tracing::info!(client = id, user = %c.user, "KILL CLIENT");
            c.end(EndReason::Killed);
            Ok(done("KILL"))
        }
        Command::Shutdown => {
            tracing::info!("SHUTDOWN requested from the admin console");
            rt.shutdown_requested.notify_one();
            Ok(done("SHUTDOWN"))
        }
        Command::Rebalance(change) => {
            let id = crate::rebalance::start(rt, change).await.map_err(|e| {
                PgError::error("55000", e.to_string()).with_hint(
                    "Nothing was changed. shardgate.jobs shows the jobs and their errors.",
                )
            })?;
            Ok(Done {
                tag: "REBALANCE",
                notices: vec![format!(
                    "job {id} started: SELECT * FROM shardgate.jobs WHERE id = {id}"
                )],
                warnings: Vec::new(),
            })
        }
        Command::RebalanceNow => {
            let proposal = crate::rebalance::propose(rt)
                .await
                .map_err(|e| PgError::error("55000", format!("REBALANCE: {e}")))?;
            if proposal.moves.is_empty() {
                return Ok(Done {
                    tag: "REBALANCE",
                    notices: vec![format!(
                        "nothing to move: every shard is within {:.0}% of its ideal share (sharding.imbalance_threshold), or no whole arc would bring it closer",
                        proposal.threshold * 100.0
                    )],
                    warnings: Vec::new(),
                });
            }
            Box::pin(run(rt, Command::Rebalance(proposal.change()))).await
        }
        Command::JobControl(id, control) => {
            let job = rt.jobs.get(id).ok_or_else(|| {
                PgError::error("42704", format!("no job {id} on this proxy"))
                    .with_hint("shardgate.jobs lists the jobs.")
            })?;
            job.set_control(control)
                .map_err(|e| PgError::error("55000", e))?;
            tracing::info!(job = id, ?control, "job control");
            Ok(done(match control {
                crate::rebalance::Control::Pause => "PAUSE JOB",
                crate::rebalance::Control::Run => "RESUME JOB",
                crate::rebalance::Control::Cancel => "CANCEL JOB",
            }))
        }
        Command::VerifyJob(id) => {
            let job = rt.jobs.get(id).ok_or_else(|| {
                PgError::error("42704", format!("no job {id} on this proxy"))
                    .with_hint("shardgate.jobs lists the jobs.")
            })?;
            if job.state() == "running" || job.state() == "paused" {
                return Err(PgError::error(
                    "55000",
                    format!("job {id} has not finished: verify it once it is done"),
                ));
            }
            let v = crate::rebalance::verify::verify_placement(rt)
                .await
                .map_err(|e| PgError::error("58000", format!("VERIFY JOB {id}: {e}")))?;
            if v.misplaced > 0 {
                return Err(PgError::error(
                    "XX001",
                    format!(
                        "VERIFY JOB {id}: {} rows are on a shard that does not own their key: {}",
                        v.misplaced,
                        v.lines.join("; ")
                    ),
                ));
            }
            Ok(Done {
                tag: "VERIFY JOB",
                notices: v.lines,
                warnings: Vec::new(),
            })
        }
        Command::Show(_)
        | Command::Sql(_)
        | Command::RebalancePlan
        | Command::Begin
        | Command::End
        | Command::NoOp(_) => {
            unreachable!("answered by the console")
        }
    }
}

/// The shards a PAUSE/RESUME names (all when none).
fn shards_named(rt: &Runtime, shard: Option<usize>) -> Result<Vec<usize>, PgError> {
    let count = rt.snapshot().topology.shards.len();
    match shard {
        None => Ok((0..count).collect()),
        Some(s) if s < count => Ok(vec![s]),
        Some(s) => Err(PgError::error(
            "22023",
            format!(
                "there is no shard {s}: shards are numbered 0 to {}",
                count - 1
            ),
        )),
    }
}

/// The node `addr` (not one a reload removed).
fn node_named(rt: &Runtime, addr: &str) -> Result<Arc<NodeState>, PgError> {
    rt.snapshot()
        .topology
        .nodes()
        .find(|n| n.addr == addr && !n.is_retired())
        .cloned()
        .ok_or_else(|| {
            PgError::error("42704", format!("no node {addr}"))
                .with_hint("shardgate.nodes lists the nodes as host:port.")
        })
}

/// Waits until no server connection of `shards`' nodes is lent.
async fn wait_quiet(rt: &Runtime, shards: &[usize]) {
    loop {
        let snap = rt.snapshot();
        let addrs: Vec<&str> = shards
            .iter()
            .flat_map(|&s| {
                snap.topology.shards[s]
                    .nodes
                    .iter()
                    .map(|n| n.addr.as_str())
            })
            .collect();
        let busy = rt
            .pools
            .all()
            .iter()
            .any(|p| addrs.contains(&p.key().addr.as_str()) && p.stats().lent > 0);
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
