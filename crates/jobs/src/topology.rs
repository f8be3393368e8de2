//! The live state of every node: role, health, bans, load, replay position
//! and lag. Written by the monitor tasks and sessions, read on every routing
//! decision without locks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::select::{Candidate, ReadPolicy};

/// Kept out of rotation after a failover replaced it as primary.
const FENCED: u8 = 1;
/// `DRAIN`: no new work; in-flight work finishes.
const DRAINING: u8 = 2;
/// Removed from the configuration by a reload.
const RETIRED: u8 = 4;
/// Added by a reload and not yet polled: no reads until its lag is known.
const UNPOLLED: u8 = 8;

const RECOVERY_UNKNOWN: u8 = 0;
const RECOVERY_YES: u8 = 1;
const RECOVERY_NO: u8 = 2;

/// One Postgres server as the proxy sees it.
#[derive(Debug)]
pub struct NodeState {
    /// Shard index.
    pub shard: usize,
    /// Index within the shard (0 is the configured primary).
    pub index: usize,
    /// `host:port`.
    pub addr: String,
    recovery: AtomicU8,
    banned_until_ms: AtomicU64,
    /// `FENCED`, `DRAINING`, `RETIRED`, `UNPOLLED`: any keeps it out of rotation.
    flags: AtomicU8,
    in_flight: AtomicU32,
    replay_lsn: AtomicU64,
    lag_bytes: AtomicU64,
    /// When the primary was last seen at or before this node's replayed
    /// position: everything missing here was written after it.
    seen_at_ms: AtomicU64,
    caught_up: AtomicBool,
    /// Bumped by the monitor as each health check starts (from 1).
    check_epoch: AtomicU64,
    /// The last check epoch during which a server connection answered a
    /// client; 0 if none ever did.
    answered_epoch: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Times the node was banned.
    bans: AtomicU64,
    /// Wakes the sessions waiting on the node when the monitor bans it.
    unresponsive: tokio::sync::Notify,
    /// Times [`Self::abort_waits`] was called.
    silenced: AtomicU64,
}

impl NodeState {
    fn new(shard: usize, index: usize, addr: String) -> NodeState {
        NodeState {
            shard,
            index,
            addr,
            recovery: AtomicU8::new(RECOVERY_UNKNOWN),
            banned_until_ms: AtomicU64::new(0),
            flags: AtomicU8::new(0),
            in_flight: AtomicU32::new(0),
            replay_lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            seen_at_ms: AtomicU64::new(0),
            caught_up: AtomicBool::new(true),
            check_epoch: AtomicU64::new(1),
            answered_epoch: AtomicU64::new(0),
            last_error: Mutex::new(None),
            bans: AtomicU64::new(0),
            unresponsive: tokio::sync::Notify::new(),
            silenced: AtomicU64::new(0),
        }
    }

    /// How often the node was banned since the proxy started.
    pub fn ban_count(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }

    /// Whether the node is banned at `now_ms`.
    pub fn is_banned(&self, now_ms: u64) -> bool {
        self.banned_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Whether the node may get traffic at `now_ms`.
    pub fn is_usable(&self, now_ms: u64) -> bool {
        !self.is_banned(now_ms) && self.flags.load(Ordering::Relaxed) == 0
    }

    /// Whether the node was never banned and nothing keeps it out of
    /// rotation: usable without reading the clock.
    #[inline]
    pub fn is_clear(&self) -> bool {
        self.banned_until_ms.load(Ordering::Relaxed) == 0 && self.flags.load(Ordering::Relaxed) == 0
    }

    fn has(&self, flag: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & flag != 0
    }

    fn set(&self, flag: u8, on: bool) {
        if on {
            self.flags.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!flag, Ordering::Relaxed);
        }
    }

    /// Whether the node was replaced as primary and must not be used.
    pub fn is_fenced(&self) -> bool {
        self.has(FENCED)
    }

    /// Whether the node is being drained (`DRAIN`): no new work.
    pub fn is_draining(&self) -> bool {
        self.has(DRAINING)
    }

    /// Starts or ends draining the node.
    pub fn set_draining(&self, on: bool) {
        self.set(DRAINING, on);
    }

    /// Whether a reload removed the node from the configuration.
    pub fn is_retired(&self) -> bool {
        self.has(RETIRED)
    }

    /// Whether the node was added by a reload and has not been polled yet.
    pub fn is_unpolled(&self) -> bool {
        self.has(UNPOLLED)
    }

    /// Lifts a ban now (operator action); the next failure bans it again.
    pub fn unban(&self) {
        self.banned_until_ms.store(0, Ordering::Relaxed);
        *self.last_error.lock().expect("node error lock") = None;
    }

    /// The node's state in one word: `up`, `banned`, `draining`, `fenced`,
    /// `removed` (by a reload, draining) or `new` (added, not yet polled).
    pub fn state_name(&self, now_ms: u64) -> &'static str {
        if self.is_retired() {
            "removed"
        } else if self.is_fenced() {
            "fenced"
        } else if self.is_draining() {
            "draining"
        } else if self.is_banned(now_ms) {
            "banned"
        } else if self.is_unpolled() {
            "new"
        } else {
            "up"
        }
    }

    /// Whether the node last reported being in recovery (`None` if unknown).
    pub fn in_recovery(&self) -> Option<bool> {
        match self.recovery.load(Ordering::Relaxed) {
            RECOVERY_YES => Some(true),
            RECOVERY_NO => Some(false),
            _ => None,
        }
    }

    /// Queries shardgate runs on this node now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a query (or transaction) on this node until the guard drops.
    pub fn begin_use(self: Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Replayed WAL position (replicas) or current position (primary).
    pub fn replay_lsn(&self) -> u64 {
        self.replay_lsn.load(Ordering::Relaxed)
    }

    /// Replication lag in bytes at the last sample.
    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }

    /// Replication lag in milliseconds at `now_ms`: 0 for a replica that had
    /// replayed everything the primary had at the last sample; otherwise how
    /// long ago the primary was last seen at or before the replayed position,
    /// growing with wall time until the next sample.
    pub fn lag_ms(&self, now_ms: u64) -> u64 {
        if self.caught_up.load(Ordering::Relaxed) {
            return 0;
        }
        now_ms.saturating_sub(self.seen_at_ms.load(Ordering::Relaxed))
    }

    /// An upper bound on how stale a read here can be at `now_ms`: how long
    /// ago the primary was last seen at or before the replayed position (for
    /// a caught-up replica, the time since that primary sample). When the
    /// primary is down nothing new can be written, so a caught-up replica is
    /// as fresh as it gets.
    pub fn staleness_ms(&self, now_ms: u64, primary_down: bool) -> u64 {
        if primary_down && self.caught_up.load(Ordering::Relaxed) {
            return 0;
        }
        now_ms.saturating_sub(self.seen_at_ms.load(Ordering::Relaxed))
    }

    /// The last error that banned the node.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("node error lock").clone()
    }

    /// Bans the node until `now_ms + ban_ms`; returns whether it was usable before.
    pub fn ban(&self, now_ms: u64, ban_ms: u64, reason: &str) -> bool {
        let was = !self.is_banned(now_ms);
        self.banned_until_ms
            .store(now_ms + ban_ms.max(1), Ordering::Relaxed);
        *self.last_error.lock().expect("node error lock") = Some(reason.to_owned());
        if was {
            self.bans.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %self.addr, shard = self.shard, ban_ms, reason, "node banned");
        }
        was
    }

    /// The monitor found the node unresponsive (and banned it): every
    /// session waiting on it for an answer is woken to give up or rerun its
    /// statement elsewhere (see [`Self::unresponsive`]).
    pub fn abort_waits(&self) {
        self.silenced.fetch_add(1, Ordering::Relaxed);
        self.unresponsive.notify_waiters();
    }

    /// How often [`Self::abort_waits`] was called: a waiter that polls
    /// rather than awaits [`Self::unresponsive`] compares two readings.
    pub fn silenced(&self) -> u64 {
        self.silenced.load(Ordering::Relaxed)
    }

    /// Completes at the next [`Self::abort_waits`] after it is first polled.
    pub fn unresponsive(&self) -> tokio::sync::futures::Notified<'_> {
        self.unresponsive.notified()
    }

    /// A health check succeeded at `now_ms`: lifts an expired ban.
    pub fn check_passed(&self, now_ms: u64) {
        if self.is_unpolled() {
            self.set(UNPOLLED, false);
            tracing::info!(node = %self.addr, shard = self.shard, "new node answered its first poll; it gets traffic now");
        }
        let until = self.banned_until_ms.load(Ordering::Relaxed);
        if until != 0 && until <= now_ms {
            self.banned_until_ms.store(0, Ordering::Relaxed);
            *self.last_error.lock().expect("node error lock") = None;
            tracing::info!(node = %self.addr, shard = self.shard, "node healthy again; ban lifted");
        }
    }

    /// A health check starts: returns its epoch for [`Self::answered_since`].
    pub fn begin_check(&self) -> u64 {
        self.check_epoch.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The node sent a client's server connection an answer: proof that it
    /// is alive, whatever its health check says. Called for every answer, so
    /// it only reads, except for the first answer of each check epoch.
    #[inline]
    pub fn note_answer(&self) {
        let epoch = self.check_epoch.load(Ordering::Relaxed);
        if self.answered_epoch.load(Ordering::Relaxed) != epoch {
            self.answered_epoch.fetch_max(epoch, Ordering::Relaxed);
        }
    }

    /// Whether the node answered a client since the check `epoch` began.
    pub fn answered_since(&self, epoch: u64) -> bool {
        self.answered_epoch.load(Ordering::Relaxed) >= epoch
    }

    /// Whether the node answered a client during the current or the previous
    /// check epoch: it is serving, so a slow login to it is no outage. (A
    /// machine that stalls stops the checks too, so the epoch stays put.)
    pub fn answered_lately(&self) -> bool {
        let answered = self.answered_epoch.load(Ordering::Relaxed);
        answered != 0 && answered + 1 >= self.check_epoch.load(Ordering::Relaxed)
    }

    /// Records a health/role sample.
    pub fn record_recovery(&self, in_recovery: bool) {
        self.recovery.store(
            if in_recovery {
                RECOVERY_YES
            } else {
                RECOVERY_NO
            },
            Ordering::Relaxed,
        );
    }

    /// Records a replica's replay position and its lag.
    pub fn record_lag(&self, replay_lsn: u64, lag: Lag) {
        self.replay_lsn.store(replay_lsn, Ordering::Relaxed);
        self.lag_bytes.store(lag.bytes, Ordering::Relaxed);
        self.seen_at_ms.store(lag.seen_at_ms, Ordering::Relaxed);
        self.caught_up.store(lag.caught_up, Ordering::Relaxed);
    }

    /// Records the primary's current position.
    pub fn record_primary_lsn(&self, lsn: u64) {
        self.replay_lsn.store(lsn, Ordering::Relaxed);
        self.lag_bytes.store(0, Ordering::Relaxed);
        self.caught_up.store(true, Ordering::Relaxed);
    }

    fn fence(&self) {
        self.set(FENCED, true);
    }

    /// Lifts the fence (operator action after a failover).
    pub fn unfence(&self) {
        self.set(FENCED, false);
    }
}

/// Decrements a node's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<NodeState>);

impl InFlight {
    /// The node being used.
    pub fn node(&self) -> &Arc<NodeState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lag of a replica at one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// WAL bytes behind the primary's last sample.
    pub bytes: u64,
    /// When the primary was last seen at or before the replayed position
    /// (the latest primary sample when caught up).
    pub seen_at_ms: u64,
    /// The replica had replayed everything the primary had at its last sample.
    pub caught_up: bool,
}

/// How long primary positions are remembered for lag computation.
const HISTORY: Duration = Duration::from_secs(300);

/// One shard: its nodes, which one takes writes, and the primary's recent positions.
#[derive(Debug)]
pub struct ShardState {
    /// Shard index.
    pub index: usize,
    /// Nodes; 0 is the configured primary.
    pub nodes: Vec<Arc<NodeState>>,
    /// Index of the node the configuration names primary.
    configured_primary: usize,
    writer: AtomicUsize,
    /// Times a replica took over writes.
    failovers: Arc<AtomicU64>,
    turn: AtomicUsize,
    history: Mutex<VecDeque<(u64, u64)>>,
}

impl ShardState {
    /// The node that takes writes, even if it is down (`None` only if fenced away).
    pub fn writer(&self) -> &Arc<NodeState> {
        &self.nodes[self.writer.load(Ordering::Relaxed)]
    }

    /// How often a replica took over writes since the proxy started.
    pub fn failover_count(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// The node the configuration names primary.
    pub fn configured_primary(&self) -> &Arc<NodeState> {
        &self.nodes[self.configured_primary]
    }

    /// Index of the write target.
    pub fn writer_index(&self) -> usize {
        self.writer.load(Ordering::Relaxed)
    }

    /// Makes `index` the write target and fences the previous one.
    pub fn promote(&self, index: usize) {
        let old = self.writer.swap(index, Ordering::Relaxed);
        if old != index {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            self.nodes[old].fence();
            tracing::warn!(shard = self.index, new_primary = %self.nodes[index].addr, old_primary = %self.nodes[old].addr,
                "replica promoted: it now takes writes; the old primary is fenced until an operator lifts it (restart or RELOAD)");
        }
    }

    /// The replica that should serve a read under `policy` at `now_ms`, if any.
    pub fn choose_replica(&self, policy: &ReadPolicy, now_ms: u64) -> Option<&Arc<NodeState>> {
        let writer = self.writer_index();
        let primary_down = !self.nodes[writer].is_usable(now_ms);
        let mut candidates = [Candidate {
            node: 0,
            in_flight: 0,
            lag_ms: 0,
            replay_lsn: 0,
        }; 16];
        let mut n = 0;
        for node in &self.nodes {
            if node.index == writer || !node.is_usable(now_ms) || node.in_recovery() == Some(false)
            {
                continue;
            }
            if n == candidates.len() {
                break;
            }
            candidates[n] = Candidate {
                node: node.index,
                in_flight: node.in_flight(),
                lag_ms: node.staleness_ms(now_ms, primary_down),
                replay_lsn: node.replay_lsn(),
            };
            n += 1;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        policy
            .choose(&candidates[..n], turn)
            .map(|i| &self.nodes[i])
    }

    /// Records the primary's position at `now_ms`.
    pub fn record_primary_sample(&self, now_ms: u64, lsn: u64) {
        let mut h = self.history.lock().expect("history lock");
        if h.back().is_some_and(|&(_, last)| lsn < last) {
            // A different timeline (failover): old positions no longer compare.
            h.clear();
        }
        h.push_back((now_ms, lsn));
        let horizon = now_ms.saturating_sub(HISTORY.as_millis() as u64);
        while h.len() > 2 && h.front().is_some_and(|&(t, _)| t < horizon) {
            h.pop_front();
        }
    }

    /// Lag of a replica that has replayed `replay_lsn` at `now_ms`.
    pub fn lag_of(&self, now_ms: u64, replay_lsn: u64) -> Lag {
        let h = self.history.lock().expect("history lock");
        let Some(&(latest_at, latest)) = h.back() else {
            // No primary sample yet: nothing known to be missing.
            return Lag {
                bytes: 0,
                seen_at_ms: now_ms,
                caught_up: true,
            };
        };
        if replay_lsn >= latest {
            return Lag {
                bytes: 0,
                seen_at_ms: latest_at,
                caught_up: true,
            };
        }
        // The last time the primary was seen not beyond the replayed position:
        // everything written since may be missing on the replica.
        let seen = h
            .iter()
            .rev()
            .find(|&&(_, lsn)| lsn <= replay_lsn)
            .or_else(|| h.front())
            .map(|&(t, _)| t)
            .unwrap_or(now_ms);
        Lag {
            bytes: latest - replay_lsn,
            seen_at_ms: seen,
            caught_up: false,
        }
    }
}

/// Every shard's live state.
#[derive(Debug)]
pub struct Topology {
    /// Shards in configuration order.
    pub shards: Vec<Arc<ShardState>>,
    epoch: Instant,
}

impl Topology {
    /// Builds the state from `(primary, replicas)` per shard.
    pub fn new(shards: &[(String, Vec<String>)]) -> Topology {
        let shards = shards
            .iter()
            .enumerate()
            .map(|(si, (primary, replicas))| Arc::new(ShardState::new(si, primary, replicas)))
            .collect();
        Topology {
            shards,
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the topology was created (the clock of bans and lag).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Every node of every shard, removed ones included.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeState>> {
        self.shards.iter().flat_map(|s| s.nodes.iter())
    }

    /// The topology after a reload lists `(primary, replicas)` per shard
    /// (as many shards as now), and the shards whose nodes changed. Live
    /// state carries over: a node keeps its `NodeState` (bans, lag, load,
    /// index) for as long as the process runs. A node no longer listed is
    /// kept, retired (no new work), so sessions of older snapshots and the
    /// admin tables still find it; one listed again comes back. A new node
    /// is appended and gets no traffic until its first successful poll. A
    /// new configured primary becomes the write target; otherwise the
    /// current one (possibly promoted by `role_detection = "auto"`) stays.
    /// Fences are lifted: a reload is the operator's word on roles.
    ///
    /// Nothing may promote nodes of a changed shard while this runs (stop
    /// its monitors first).
    pub fn reconfigured(&self, shards: &[(String, Vec<String>)]) -> (Topology, Vec<usize>) {
        let mut changed = Vec::new();
        let mut new_shards: Vec<Arc<ShardState>> = self
            .shards
            .iter()
            .zip(shards)
            .map(|(old, (primary, replicas))| {
                let listed: Vec<&String> = std::iter::once(primary).chain(replicas).collect();
                for n in &old.nodes {
                    if n.is_fenced() && n.addr != *primary {
                        n.unfence();
                    }
                }
                let same = old.nodes.iter().filter(|n| !n.is_retired()).count() == listed.len()
                    && listed
                        .iter()
                        .all(|a| old.nodes.iter().any(|n| &n.addr == *a && !n.is_retired()))
                    && old.configured_primary().addr == *primary;
                if same {
                    return old.clone();
                }
                changed.push(old.index);
                Arc::new(old.rebuilt(&listed))
            })
            .collect();
        // Shards a rebalancing job adds: their replicas take reads only once
        // polled; the primary takes writes at once.
        for (si, (primary, replicas)) in shards.iter().enumerate().skip(self.shards.len()) {
            let shard = ShardState::new(si, primary, replicas);
            for n in &shard.nodes[1..] {
                n.set(UNPOLLED, true);
            }
            tracing::info!(shard = si, primary = %primary, "shard added");
            changed.push(si);
            new_shards.push(Arc::new(shard));
        }
        (
            Topology {
                shards: new_shards,
                epoch: self.epoch,
            },
            changed,
        )
    }
}

impl ShardState {
    /// Shard `index` with a primary and replicas, none polled yet.
    fn new(index: usize, primary: &str, replicas: &[String]) -> ShardState {
        let mut nodes = vec![Arc::new(NodeState::new(index, 0, primary.to_owned()))];
        for (ri, r) in replicas.iter().enumerate() {
            nodes.push(Arc::new(NodeState::new(index, ri + 1, r.clone())));
        }
        ShardState {
            index,
            nodes,
            configured_primary: 0,
            writer: AtomicUsize::new(0),
            failovers: Default::default(),
            turn: AtomicUsize::new(0),
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// A copy of this shard listing `listed` (primary first): see
    /// [`Topology::reconfigured`].
    fn rebuilt(&self, listed: &[&String]) -> ShardState {
        let mut nodes = self.nodes.clone();
        for n in &nodes {
            n.set(RETIRED, !listed.contains(&&n.addr));
        }
        for addr in listed {
            if !nodes.iter().any(|n| &n.addr == *addr) {
                let node = NodeState::new(self.index, nodes.len(), (*addr).clone());
                node.set(UNPOLLED, true);
                tracing::info!(node = %addr, shard = self.index, "node added by reload");
                nodes.push(Arc::new(node));
            }
        }
        let primary = listed[0];
        let (writer, configured) = if self.configured_primary().addr == *primary {
            (self.writer_index(), self.configured_primary)
        } else {
            let w = nodes
                .iter()
                .position(|n| &n.addr == primary)
                .expect("listed nodes are present");
            // The operator names it primary: it takes writes at once.
            nodes[w].set(UNPOLLED, false);
            (w, w)
        };
        ShardState {
            index: self.index,
            nodes,
            configured_primary: configured,
            writer: AtomicUsize::new(writer),
            failovers: self.failovers.clone(),
            turn: AtomicUsize::new(0),
            history: Mutex::new(self.history.lock().expect("history lock").clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::Consistency;

    fn topo() -> Topology {
        Topology::new(&[("p:1".into(), vec!["r1:1".into(), "r2:1".into()])])
    }

    #[test]
    fn answers_count_only_for_the_check_they_happen_during() {
        let t = topo();
        let n = &t.shards[0].nodes[0];
        n.note_answer();
        let first = n.begin_check();
        assert!(
            !n.answered_since(first),
            "an answer before the check is no evidence"
        );
        n.note_answer();
        assert!(n.answered_since(first));
        let second = n.begin_check();
        assert!(!n.answered_since(second));
    }

    #[test]
    fn answered_lately_spans_the_current_and_previous_check() {
        let t = topo();
        let n = &t.shards[0].nodes[0];
        assert!(!n.answered_lately(), "a node that never answered");
        n.note_answer();
        assert!(n.answered_lately());
        n.begin_check();
        assert!(n.answered_lately(), "answered during the previous check");
        n.begin_check();
        assert!(!n.answered_lately(), "silent for a whole check");
        n.note_answer();
        assert!(n.answered_lately());
    }

    #[test]
    fn lag_is_zero_when_caught_up_and_grows_when_behind() {
        let t = topo();
        let s = &t.shards[0];
        s.record_primary_sample(0, 100);
        s.record_primary_sample(100, 100);
        let caught_up = s.lag_of(150, 100);
        assert!(caught_up.caught_up);
        let r = &s.nodes[1];
        r.record_lag(100, caught_up);
        assert_eq!(r.lag_ms(150), 0);
        assert_eq!(r.staleness_ms(150, false), 50);
        assert_eq!(r.staleness_ms(150, true), 0);
        s.record_primary_sample(200, 300);
        s.record_primary_sample(300, 500);
        let lag = s.lag_of(350, 100);
        assert_eq!(
            lag,
            Lag {
                bytes: 400,
                seen_at_ms: 100,
                caught_up: false
            }
        );
        r.record_lag(100, lag);
        assert_eq!(r.lag_ms(350), 250);
        assert_eq!(r.lag_ms(1350), 1250);
    }

    #[test]
    fn bounded_skips_lagging_and_banned_replicas() {
        let t = topo();
        let s = &t.shards[0];
        s.nodes[1].record_lag(
            0,
            Lag {
                bytes: 10,
                seen_at_ms: 0,
                caught_up: false,
            },
        );
        s.nodes[2].record_lag(
            0,
            Lag {
                bytes: 0,
                seen_at_ms: 900,
                caught_up: true,
            },
        );
        let p = ReadPolicy {
            consistency: Consistency::Bounded,
            max_lag_ms: 500,
            min_lsn: 0,
            avoid: 0,
        };
        for _ in 0..4 {
            assert_eq!(s.choose_replica(&p, 1000).unwrap().index, 2);
        }
        s.nodes[2].ban(1000, 1000, "test");
        assert!(s.choose_replica(&p, 1010).is_none());
        s.nodes[2].check_passed(2000);
        s.nodes[2].record_lag(
            0,
            Lag {
                bytes: 0,
                seen_at_ms: 1990,
                caught_up: true,
            },
        );
        assert_eq!(s.choose_replica(&p, 2000).unwrap().index, 2);
    }

    #[test]
    fn promotion_fences_the_old_primary() {
        let t = topo();
        let s = &t.shards[0];
        s.promote(1);
        assert_eq!(s.writer().index, 1);
        assert!(s.nodes[0].is_fenced());
        let p = ReadPolicy {
            consistency: Consistency::Eventual,
            max_lag_ms: 0,
            min_lsn: 0,
            avoid: 0,
        };
        for _ in 0..4 {
            assert_eq!(s.choose_replica(&p, 0).unwrap().index, 2);
        }
    }

    #[test]
    fn reload_keeps_live_state_retires_removed_and_holds_new_nodes_back() {
        let t = topo();
        let now = t.now_ms();
        t.shards[0].nodes[1].ban(now, 60_000, "test");
        let same = t.reconfigured(&[("p:1".into(), vec!["r2:1".into(), "r1:1".into()])]);
        assert!(same.1.is_empty(), "order of replicas does not matter");
        assert!(Arc::ptr_eq(&same.0.shards[0], &t.shards[0]));

        let (t2, changed) = t.reconfigured(&[("p:1".into(), vec!["r2:1".into(), "r3:1".into()])]);
        assert_eq!(changed, vec![0]);
        let s = &t2.shards[0];
        assert_eq!(s.nodes.len(), 4);
        assert!(
            Arc::ptr_eq(&s.nodes[1], &t.shards[0].nodes[1]),
            "state kept"
        );
        assert!(s.nodes[1].is_retired() && s.nodes[1].is_banned(now));
        assert_eq!(s.nodes[1].state_name(now), "removed");
        assert_eq!(s.nodes[3].addr, "r3:1");
        assert_eq!(s.nodes[3].index, 3);
        assert_eq!(s.nodes[3].state_name(now), "new");
        assert!(!s.nodes[3].is_usable(now));
        s.nodes[3].check_passed(now);
        assert!(s.nodes[3].is_usable(now));
        assert_eq!(s.writer_index(), 0);

        // r1 comes back: the same node, no longer retired.
        let (t3, _) = t2.reconfigured(&[("p:1".into(), vec!["r1:1".into()])]);
        assert!(!t3.shards[0].nodes[1].is_retired());
        assert!(t3.shards[0].nodes[2].is_retired() && t3.shards[0].nodes[3].is_retired());

        // The operator names a replica primary: it takes writes.
        let (t4, _) = t3.reconfigured(&[("r1:1".into(), vec!["p:1".into()])]);
        assert_eq!(t4.shards[0].writer().addr, "r1:1");
        assert_eq!(t4.shards[0].configured_primary().addr, "r1:1");
        let (_, unchanged) = t4.reconfigured(&[("r1:1".into(), vec!["p:1".into()])]);
        assert!(unchanged.is_empty());
    }

    #[test]
    fn draining_and_unban() {
        let t = topo();
        let n = &t.shards[0].nodes[2];
        n.set_draining(true);
        assert!(!n.is_clear() && n.state_name(t.now_ms()) == "draining");
        n.set_draining(false);
        n.ban(t.now_ms(), 60_000, "x");
        assert_eq!(n.state_name(t.now_ms()), "banned");
        n.unban();
        assert!(n.is_clear() && n.last_error().is_none());
    }
}
