//! Per-statement statistics by fingerprint (`shardgate.query_stats`),
//! bounded in memory: when full, the least-called tenth is evicted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
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

/// A key of `sql` under which statements that differ only in their numeric
/// literals meet, found without lexing: a hash of the text in which every
/// run of ASCII digits between a delimiter (whitespace, `=`, `(`, `,`, `<`,
/// `>`) and a terminator (whitespace, `)`, `,`, `;`, the end) is one `0`.
/// Such a run is a numeric literal or lies inside a string or comment,
/// where [`shardgate_router::lexer::fingerprint`] keeps no digit either, so
/// texts with equal keys have equal fingerprints (up to a 64-bit hash
/// collision). `None` when the text holds a double quote: a quoted
/// identifier keeps its digits in the fingerprint.
pub fn literal_blind_key(sql: &str) -> Option<u64> {
    let b = sql.as_bytes();
    if b.contains(&b'"') {
        return None;
    }
    let mut h = XxHash64::with_seed(0);
    let (mut kept, mut i) = (0, 1);
    while i < b.len() {
        if !(b[i].is_ascii_digit() && opens_number(b[i - 1])) {
            i += 1;
            continue;
        }
        let end = b[i..]
            .iter()
            .position(|c| !c.is_ascii_digit())
            .map_or(b.len(), |n| i + n);
        if end == b.len() || closes_number(b[end]) {
            h.write(&b[kept..i]);
            h.write(b"0");
            kept = end;
        }
        i = end;
    }
    h.write(&b[kept..]);
    Some(h.finish())
}

/// A byte after which a run of digits starts a token of its own.
fn opens_number(c: u8) -> bool {
    matches!(
        c,
        b' ' | b'\t' | b'\n' | b'\r' | b'=' | b'(' | b',' | b'<' | b'>'
    )
}

/// A byte that ends a numeric literal and belongs to no number.
fn closes_number(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b')' | b',' | b';')
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

    #[test]
    fn literal_blind_keys_meet_only_where_fingerprints_do() {
        use shardgate_router::lexer::fingerprint;
        let key = |s: &str| literal_blind_key(s);
        let same = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 99017;",
            ),
            (
                "select * from t where a in (1,2, 3)",
                "select * from t where a in (7,8, 9)",
            ),
            ("select '= 5 ' /* = 12 */", "select '= 77 ' /* = 3 */"),
        ];
        for (a, b) in same {
            assert_eq!(key(a), key(b), "{a} / {b}");
            assert_eq!(fingerprint(a, 1000), fingerprint(b, 1000));
        }
        // Digits that belong to a name, a parameter or a longer literal are kept.
        let apart = [
            (
                "select * from t1 where a = 1",
                "select * from t2 where a = 1",
            ),
            ("select $1 , 2", "select $2 , 2"),
            ("select 1.5 ", "select 2.5 "),
            ("select 1e5 ", "select 1e6 "),
            ("select 5a ", "select 6a "),
        ];
        for (a, b) in apart {
            assert_ne!(key(a), key(b), "{a} / {b}");
        }
        assert_eq!(key("select \"c1\" = 1"), None);
    }

    /// Random texts over the characters that decide tokens, each against
    /// copies with digit runs rewritten: an equal key always comes with an
    /// equal fingerprint.
    #[test]
    fn equal_literal_blind_keys_mean_equal_fingerprints() {
        use shardgate_router::lexer::fingerprint;
        const ALPHABET: &[u8] = b" \n=(),;<>'$-/*.:eEaxU&\\_190";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut met = 0;
        for _ in 0..200_000 {
            let len = 1 + next(24);
            let a: Vec<u8> = (0..len).map(|_| ALPHABET[next(ALPHABET.len())]).collect();
            let mut b = Vec::with_capacity(a.len() + 8);
            let mut i = 0;
            while i < a.len() {
                if a[i].is_ascii_digit() {
                    while i < a.len() && a[i].is_ascii_digit() {
                        i += 1;
                    }
                    for _ in 0..1 + next(3) {
                        b.push(b'0' + next(10) as u8);
                    }
                } else {
                    b.push(a[i]);
                    i += 1;
                }
            }
            let (a, b) = (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
            if literal_blind_key(&a).is_some() && literal_blind_key(&a) == literal_blind_key(&b) {
                met += 1;
                assert_eq!(
                    fingerprint(&a, 1000),
                    fingerprint(&b, 1000),
                    "{a:?} / {b:?}"
                );
            }
        }
        assert!(met > 10_000, "only {met} texts met");
    }
}
