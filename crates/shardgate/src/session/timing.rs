//! Statement timing for the query statistics, the slow-query log and the
//! latency histograms. A cycle starts when the client's statement goes to a
//! server and ends when nothing is outstanding on the connection; in a
//! pipeline the first statement carries the time of the whole batch.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::Session;
use crate::stats::queries::{literal_blind_key, shard_bit, QueryStat, Route};
use crate::stats::slow::SlowQuery;

/// Most statement keys a session remembers the counters of.
const SESSION_STAT_CACHE: usize = 256;

/// A statement on its way.
pub(super) struct Cycle {
    started: Instant,
    stat: Arc<QueryStat>,
    /// Rows reported so far.
    pub rows: u64,
}

impl Cycle {
    fn new(stat: Arc<QueryStat>) -> Cycle {
        Cycle {
            started: Instant::now(),
            stat,
            rows: 0,
        }
    }
}

impl Session {
    /// The counters of `sql`'s fingerprint: looked up in the session's
    /// cache first, by a key that ignores numeric literals where it can
    /// ([`literal_blind_key`]), so a statement repeated with other numbers
    /// is not lexed again.
    fn stat_for(&mut self, sql: &str) -> Arc<QueryStat> {
        let h = literal_blind_key(sql)
            .unwrap_or_else(|| twox_hash::XxHash64::oneshot(1, sql.as_bytes()));
        if let Some(s) = self.stat_cache.get(&h) {
            return s.clone();
        }
        if self.stat_cache.len() >= SESSION_STAT_CACHE {
            self.stat_cache.clear();
        }
        let s = self
            .runtime
            .stats
            .queries
            .get(sql, self.snap.config.proxy.query_stats_max);
        self.stat_cache.insert(h, s.clone());
        s
    }

    /// A client statement goes to a server now (unless one is still running).
    #[inline]
    pub(super) fn cycle_starts(&mut self, sql: &str) {
        let running = self.cycle.is_some()
            && self
                .backend
                .as_ref()
                .is_some_and(|b| !b.ex.expect.is_empty());
        if !running {
            let stat = self.stat_for(sql);
            self.cycle = Some(Cycle {
                started: Instant::now(),
                stat,
                rows: 0,
            });
        }
    }

    /// A prepared statement runs (its counters are kept with it).
    #[inline]
    pub(super) fn cycle_starts_statement(&mut self, stmt: &crate::prepared::Statement) {
        let running = self.cycle.is_some()
            && self
                .backend
                .as_ref()
                .is_some_and(|b| !b.ex.expect.is_empty());
        if !running {
            let max = self.snap.config.proxy.query_stats_max;
            let stat = stmt
                .stats
                .get_or_init(|| self.runtime.stats.queries.get(&stmt.query, max))
                .clone();
            self.cycle = Some(Cycle {
                started: Instant::now(),
                stat,
                rows: 0,
            });
        }
    }

    /// After the server's answers were relayed: a cycle whose answers are
    /// all in is recorded.
    #[inline]
    pub(super) fn cycle_check_end(&mut self) {
        let Some(b) = self.backend.as_ref() else {
            return;
        };
        if self.cycle.is_none() || !b.ex.expect.is_empty() {
            return;
        }
        let route = if self.sharded {
            Route::Shard(b.shard)
        } else if b.node.node().index != self.shards[b.shard].writer_index() {
            Route::Replica
        } else {
            Route::Primary
        };
        let node = b.node.node().clone();
        let shards = shard_bit(b.shard);
        let c = self.cycle.take().expect("checked");
        let us = c.started.elapsed().as_micros() as u64;
        if let Some(b) = self.backend.as_mut() {
            b.conn.loan.query_us += us;
        }
        self.record(c, us, route, shards, || node.addr.clone());
    }

    /// Records a finished statement everywhere it counts.
    fn record(
        &mut self,
        c: Cycle,
        us: u64,
        route: Route,
        shards: u64,
        node: impl FnOnce() -> String,
    ) {
        c.stat.record(us, c.rows, route, shards);
        self.runtime.stats.observe(route, us);
        let slow_ms = self.snap.config.proxy.slow_query_ms;
        if us >= slow_ms.saturating_mul(1000) {
            let row = c.stat.row();
            let q = SlowQuery {
                time: SystemTime::now(),
                user: self.user.config.name.clone(),
                database: self.database.clone(),
                query: row.fingerprint,
                duration_ms: us as f64 / 1000.0,
                route: route.describe(),
                shards: row_shards(shards),
                node: node(),
            };
            tracing::warn!(user = %q.user, database = %q.database, duration_ms = q.duration_ms,
                route = %q.route, node = %q.node, query = %q.query, "slow query");
            self.runtime
                .stats
                .slow
                .push(q, self.snap.config.proxy.slow_query_log_size);
        }
    }

    /// A statement that runs on several shards starts.
    pub(super) fn fanout_starts(&mut self, sql: &str) -> Cycle {
        Cycle::new(self.stat_for(sql))
    }

    /// It ended, having used `shards`.
    pub(super) fn fanout_ends(&mut self, c: Cycle, shards: &[usize]) {
        self.runtime.stats.fanout(shards.len());
        let mask = shards.iter().fold(0, |m, &s| m | shard_bit(s));
        let us = c.started.elapsed().as_micros() as u64;
        self.record(c, us, Route::FanOut, mask, String::new);
    }
}

fn row_shards(mask: u64) -> String {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b: u32| b.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
