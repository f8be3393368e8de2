//! The slow-query log (`shardgate.slow_queries`): the last statements that
//! took longer than `slow_query_ms`, newest last.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// One slow statement.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowQuery {
    /// When it finished.
    pub time: SystemTime,
    /// Client user.
    pub user: String,
    /// Client database.
    pub database: String,
    /// The normalised statement (literals removed).
    pub query: String,
    /// How long it took, milliseconds.
    pub duration_ms: f64,
    /// `primary`, `replica`, `shard n` or `fan-out`.
    pub route: String,
    /// The shards it ran on, comma-separated.
    pub shards: String,
    /// The node that served it (empty for a fan-out).
    pub node: String,
}

/// The last slow statements, bounded.
#[derive(Debug, Default)]
pub struct SlowLog {
    entries: Mutex<VecDeque<SlowQuery>>,
}

impl SlowLog {
    /// Adds `q`, keeping at most `capacity` entries.
    pub fn push(&self, q: SlowQuery, capacity: usize) {
        let mut e = self.entries.lock().expect("slow log lock");
        while e.len() >= capacity.max(1) {
            e.pop_front();
        }
        e.push_back(q);
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> Vec<SlowQuery> {
        self.entries
            .lock()
            .expect("slow log lock")
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(ms: f64) -> SlowQuery {
        SlowQuery {
            time: SystemTime::UNIX_EPOCH,
            user: "u".into(),
            database: "d".into(),
            query: "select pg_sleep(?)".into(),
            duration_ms: ms,
            route: "primary".into(),
            shards: "0".into(),
            node: "h:1".into(),
        }
    }

    #[test]
    fn keeps_the_newest_up_to_capacity() {
        let log = SlowLog::default();
        for i in 0..5 {
            log.push(q(i as f64), 3);
        }
        let e = log.entries();
        assert_eq!(
            e.iter().map(|q| q.duration_ms).collect::<Vec<_>>(),
            vec![2.0, 3.0, 4.0]
        );
    }
}
