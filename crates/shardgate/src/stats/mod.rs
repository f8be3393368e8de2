//! What sessions publish about the statements they run: per-fingerprint
//! statistics, the slow-query log, latency histograms by route and shard,
//! and counters of events (errors the proxy sent, two-phase commits, fan-out
//! width). Read by the admin console and the metrics endpoint.

pub mod histogram;
pub mod queries;
pub mod slow;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use histogram::Histogram;
use queries::{QueryStats, Route};
use slow::SlowLog;

/// Everything in one place, owned by the runtime.
#[derive(Debug)]
pub struct Stats {
    /// Per-fingerprint counters.
    pub queries: QueryStats,
    /// The last slow statements.
    pub slow: SlowLog,
    /// Statement latency by route kind (see [`Route::kind_index`]).
    pub latency: [Histogram; 4],
    /// Statement latency per shard.
    pub shard_latency: Vec<Histogram>,
    /// Statements that ran on several shards, and the shards they used in total.
    pub fanout_statements: AtomicU64,
    /// Sum of the shards of those statements.
    pub fanout_shards: AtomicU64,
    /// Errors the proxy itself sent to clients, by SQLSTATE class.
    pub proxy_errors: Mutex<Vec<([u8; 2], u64)>>,
}

impl Stats {
    /// Counters for a cluster of `shards` shards.
    pub fn new(shards: usize) -> Stats {
        Stats {
            queries: QueryStats::default(),
            slow: SlowLog::default(),
            latency: Default::default(),
            shard_latency: (0..shards).map(|_| Histogram::default()).collect(),
            fanout_statements: AtomicU64::new(0),
            fanout_shards: AtomicU64::new(0),
            proxy_errors: Mutex::new(Vec::new()),
        }
    }

    /// Records a statement's latency on `route` (and its shard).
    #[inline]
    pub fn observe(&self, route: Route, us: u64) {
        self.latency[route.kind_index()].observe_us(us);
        if let Route::Shard(n) = route {
            if let Some(h) = self.shard_latency.get(n) {
                h.observe_us(us);
            }
        }
    }

    /// Records a statement that ran on `width` shards.
    pub fn fanout(&self, width: usize) {
        self.fanout_statements.fetch_add(1, Ordering::Relaxed);
        self.fanout_shards
            .fetch_add(width as u64, Ordering::Relaxed);
    }

    /// Counts an error the proxy sent (its SQLSTATE).
    pub fn proxy_error(&self, sqlstate: &str) {
        let b = sqlstate.as_bytes();
        let class = [*b.first().unwrap_or(&b'X'), *b.get(1).unwrap_or(&b'X')];
        let mut e = self.proxy_errors.lock().expect("proxy errors lock");
        match e.iter_mut().find(|(c, _)| *c == class) {
            Some((_, n)) => *n += 1,
            None => e.push((class, 1)),
        }
    }
}
