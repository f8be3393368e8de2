//! Per-statement statistics by fingerprint (`shardgate.query_stats`),
//! bounded in memory: when full, the least-called tenth is evicted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use twox_hash::XxHash64;

/// Longest fingerprint kept, in bytes.
pub const MAX_FINGERPRINT: usize = 2048;

/// Where a statement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An unsharded cluster's primary.
    Primary,
    /// An unsharded cluster's replica.
    Replica,
    /// One shard (its primary or a replica).
    Shard(usize),
    /// Several shards at once.
    FanOut,
}

impl Route {
    /// The histogram a statement on this route goes to: 0 primary,
    /// 1 replica, 2 single shard, 3 fan-out.
    pub fn kind_index(self) -> usize {
        match self {
            Route::Primary => 0,
            Route::Replica => 1,
            Route::Shard(_) => 2,
            Route::FanOut => 3,
        }
    }

    /// Names of the kinds, by [`Route::kind_index`].
    pub const KINDS: [&'static str; 4] = ["primary", "replica", "single_shard", "fan_out"];

    /// `primary`, `replica`, `shard 2` or `fan-out`.
    pub fn describe(self) -> String {
        match self {
            Route::Primary => "primary".into(),
            Route::Replica => "replica".into(),
            Route::Shard(n) => format!("shard {n}"),
            Route::FanOut => "fan-out".into(),
        }
    }

    fn encode(self) -> u64 {
        match self {
            Route::Primary => 1,
            Route::Replica => 2,
            Route::FanOut => 3,
            Route::Shard(n) => 4 + n as u64,
        }
    }

    fn decode(v: u64) -> Option<Route> {
        Some(match v {
            0 => return None,
            1 => Route::Primary,
            2 => Route::Replica,
            3 => Route::FanOut,
            n => Route::Shard((n - 4) as usize),
        })
    }
}

/// Counters of one fingerprint.
#[derive(Debug)]
pub struct QueryStat {
    /// The normalised statement (literals removed).
    pub fingerprint: Box<str>,
    calls: AtomicU64,
    rows: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
    last_route: AtomicU64,
    /// Bit n: shard n served it (shards 0..63).
    shards: AtomicU64,
}

/// A [`QueryStat`] read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryStatRow {
    /// The normalised statement.
    pub fingerprint: String,
    /// Times it ran.
    pub calls: u64,
    /// Rows it returned or changed, in total.
    pub rows: u64,
    /// Total time, milliseconds.
    pub total_ms: f64,
    /// Longest run, milliseconds.
    pub max_ms: f64,
    /// Where it ran last.
    pub route: Option<Route>,
    /// The shards it ran on.
    pub shards: Vec<usize>,
}

impl QueryStat {
    fn new(fingerprint: String) -> QueryStat {
        QueryStat {
            fingerprint: fingerprint.into_boxed_str(),
            calls: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            total_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            last_route: AtomicU64::new(0),
            shards: AtomicU64::new(0),
        }
    }

    /// Records one run.
    #[inline]
    pub fn record(&self, us: u64, rows: u64, route: Route, shards: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        if rows > 0 {
            self.rows.fetch_add(rows, Ordering::Relaxed);
        }
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
        let r = route.encode();
        if self.last_route.load(Ordering::Relaxed) != r {
            self.last_route.store(r, Ordering::Relaxed);
        }
        if self.shards.load(Ordering::Relaxed) & shards != shards {
            self.shards.fetch_or(shards, Ordering::Relaxed);
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The counters now.
    pub fn row(&self) -> QueryStatRow {
        let mask = self.shards.load(Ordering::Relaxed);
        QueryStatRow {
            fingerprint: self.fingerprint.to_string(),
            calls: self.calls(),
            rows: self.rows.load(Ordering::Relaxed),
            total_ms: self.total_us.load(Ordering::Relaxed) as f64 / 1000.0,
            max_ms: self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
            route: Route::decode(self.last_route.load(Ordering::Relaxed)),
            shards: (0..64).filter(|b| mask & (1u64 << b) != 0).collect(),
        }
    }
}

/// The bit of `shard` in a shard mask (shards beyond 63 are not marked).
pub fn shard_bit(shard: usize) -> u64 {
    if shard < 64 {
        1u64 << shard
    } else {
        0
    }
}

/// Fingerprints to their counters.
type StatMap = HashMap<Box<str>, Arc<QueryStat>, SeededXxHash>;

/// Every fingerprint seen, up to a limit.
#[derive(Debug, Default)]
pub struct QueryStats {
    map: Mutex<StatMap>,
}

/// xxHash64 under a seed drawn when the map is made (from std's random
/// keys), so that clients cannot pick texts whose fingerprints collide.
#[derive(Debug, Clone)]
struct SeededXxHash(u64);

impl Default for SeededXxHash {
    fn default() -> Self {
        SeededXxHash(std::collections::hash_map::RandomState::new().hash_one(0u64))
    }
}

impl BuildHasher for SeededXxHash {
    type Hasher = XxHash64;

    fn build_hasher(&self) -> XxHash64 {
        XxHash64::with_seed(self.0)
    }
}

thread_local! {
    /// Where each statement's fingerprint is written: looking up a known
    /// one allocates nothing.
    static FINGERPRINT: RefCell<String> = const { RefCell::new(String::new()) };
}

impl QueryStats {
    /// The counters of `sql`'s fingerprint, created if new; at most `max`
    /// fingerprints are kept.
    pub fn get(&self, sql: &str, max: usize) -> Arc<QueryStat> {
        FINGERPRINT.with_borrow_mut(|fp| {
            shardgate_router::lexer::fingerprint_into(sql, MAX_FINGERPRINT, fp);
            let mut map = self.map.lock().expect("query stats lock");
            if let Some(s) = map.get(fp.as_str()) {
                return s.clone();
            }
            if map.len() >= max.max(1) {
                evict(&mut map, max.max(1));
            }
            let stat = Arc::new(QueryStat::new(fp.clone()));
            map.insert(fp.as_str().into(), stat.clone());
            stat
        })
    }

    /// Every fingerprint's counters.
    pub fn rows(&self) -> Vec<QueryStatRow> {
        let stats: Vec<Arc<QueryStat>> = self
            .map
            .lock()
            .expect("query stats lock")
            .values()
            .cloned()
            .collect();
        stats.iter().map(|s| s.row()).collect()
    }

    /// Number of fingerprints kept.
    pub fn len(&self) -> usize {
        self.map.lock().expect("query stats lock").len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the least-called tenth (at least one) so a new entry fits under `max`.
fn evict(map: &mut StatMap, max: usize) {
    let mut calls: Vec<(u64, Box<str>)> = map.iter().map(|(k, v)| (v.calls(), k.clone())).collect();
    calls.sort_unstable();
    let drop = (map.len() + 1).saturating_sub(max).max(max / 10).max(1);
    for (_, k) in calls.into_iter().take(drop) {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_share_a_fingerprint_and_counts_add_up() {
        let q = QueryStats::default();
        let a = q.get("SELECT * FROM t WHERE id = 1", 10);
        let b = q.get("select * from t where id = 99", 10);
        assert!(Arc::ptr_eq(&a, &b));
        a.record(1500, 1, Route::Shard(1), shard_bit(1));
        b.record(500, 2, Route::Shard(3), shard_bit(3));
        let rows = q.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.fingerprint, "select * from t where id = ?");
        assert_eq!((r.calls, r.rows), (2, 3));
        assert_eq!((r.total_ms, r.max_ms), (2.0, 1.5));
        assert_eq!(r.route, Some(Route::Shard(3)));
        assert_eq!(r.shards, vec![1, 3]);
        assert_eq!(Route::FanOut.describe(), "fan-out");
    }

    #[test]
    fn bounded_by_evicting_the_least_called() {
        let q = QueryStats::default();
        let hot = q.get("select 1 from hot", 20);
        for _ in 0..5 {
            hot.record(1, 0, Route::Primary, 0);
        }
        for i in 0..100 {
            q.get(&format!("select 1 from t{i}"), 20);
            assert!(q.len() <= 20);
        }
        assert!(q
            .rows()
            .iter()
            .any(|r| r.fingerprint == "select ? from hot"));
    }
}
