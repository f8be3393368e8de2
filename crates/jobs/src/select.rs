//! Which replica may serve a read: the consistency policy, as a pure function
//! of the candidates' measured state.

pub use shardgate_router::Consistency;

/// A replica as routing sees it at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the node in its shard.
    pub node: usize,
    /// Queries it is running for shardgate now.
    pub in_flight: u32,
    /// Measured replication lag in milliseconds.
    pub lag_ms: u64,
    /// WAL position it has replayed.
    pub replay_lsn: u64,
}

/// What a read requires of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    /// The client's consistency level.
    pub consistency: Consistency,
    /// Bound for `bounded`.
    pub max_lag_ms: u64,
    /// For `session`: the client's last commit position (0 when it wrote nothing).
    pub min_lsn: u64,
    /// Nodes to pass over (bit `i` for node `i`), e.g. those a login to just
    /// timed out on for this read.
    pub avoid: u64,
}

impl ReadPolicy {
    /// Whether `c` may serve the read.
    pub fn accepts(&self, c: &Candidate) -> bool {
        if self.avoids(c.node) {
            return false;
        }
        match self.consistency {
            Consistency::Strong => false,
            Consistency::Bounded => c.lag_ms <= self.max_lag_ms,
            Consistency::Eventual => true,
            Consistency::Session => c.replay_lsn >= self.min_lsn,
        }
    }

    /// Whether node `index` is to be passed over.
    pub fn avoids(&self, index: usize) -> bool {
        index < 64 && self.avoid & (1 << index) != 0
    }

    /// The replica to use among `candidates`: fewest queries in flight, ties
    /// broken round robin by `turn`; `None` when none is acceptable.
    pub fn choose(&self, candidates: &[Candidate], turn: usize) -> Option<usize> {
        let tied = |c: &&Candidate, fewest: u32| self.accepts(c) && c.in_flight == fewest;
        let fewest = candidates
            .iter()
            .filter(|c| self.accepts(c))
            .map(|c| c.in_flight)
            .min()?;
        let count = candidates.iter().filter(|c| tied(c, fewest)).count();
        candidates
            .iter()
            .filter(|c| tied(c, fewest))
            .nth(turn % count)
            .map(|c| c.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(node: usize, in_flight: u32, lag_ms: u64, replay_lsn: u64) -> Candidate {
        Candidate {
            node,
            in_flight,
            lag_ms,
            replay_lsn,
        }
    }

    fn policy(consistency: Consistency) -> ReadPolicy {
        ReadPolicy {
            consistency,
            max_lag_ms: 500,
            min_lsn: 100,
            avoid: 0,
        }
    }

    #[test]
    fn levels() {
        let cands = [c(1, 0, 800, 50), c(2, 0, 100, 150)];
        assert_eq!(policy(Consistency::Strong).choose(&cands, 0), None);
        assert_eq!(policy(Consistency::Bounded).choose(&cands, 0), Some(2));
        assert_eq!(policy(Consistency::Session).choose(&cands, 0), Some(2));
        assert_eq!(policy(Consistency::Eventual).choose(&cands, 0), Some(1));
        assert_eq!(policy(Consistency::Eventual).choose(&cands, 1), Some(2));
        assert_eq!(
            policy(Consistency::Bounded).choose(&[c(1, 0, 501, 0)], 0),
            None
        );
    }

    #[test]
    fn least_loaded_first() {
        let cands = [c(1, 3, 0, 0), c(2, 1, 0, 0), c(3, 1, 0, 0)];
        let p = policy(Consistency::Eventual);
        assert_eq!(p.choose(&cands, 0), Some(2));
        assert_eq!(p.choose(&cands, 1), Some(3));
        assert_eq!(p.choose(&[], 0), None);
    }

    #[test]
    fn avoided_nodes_are_passed_over() {
        let cands = [c(1, 0, 0, 0), c(2, 5, 0, 0)];
        let mut p = policy(Consistency::Eventual);
        assert_eq!(p.choose(&cands, 0), Some(1));
        p.avoid = 1 << 1;
        assert_eq!(p.choose(&cands, 0), Some(2));
        assert_eq!(p.choose(&cands, 1), Some(2));
        p.avoid |= 1 << 2;
        assert_eq!(p.choose(&cands, 0), None);
    }
}
