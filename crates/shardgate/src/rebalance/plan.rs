//! `REBALANCE PLAN` (pure): given how much hash-sharded data each arc of
//! the ring holds, the arcs to move so that every shard's share of the data
//! is within `imbalance_threshold` of its weight's ideal share
//! (docs/ARCHITECTURE.md §10).

/// The data one arc of the ring holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ArcLoad {
    /// The arc's end point: `(shard, vnode)`.
    pub point: (usize, u32),
    /// The shard that owns it now.
    pub owner: usize,
    /// Rows of the hash-sharded tables in it.
    pub rows: u64,
    /// Their estimated bytes.
    pub bytes: u64,
}

/// One planned move of an arc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcMove {
    /// The arc's end point: `(shard, vnode)`.
    pub point: (usize, u32),
    /// The shard that owns it now.
    pub from: usize,
    /// The shard it goes to.
    pub to: usize,
    /// Rows moving.
    pub rows: u64,
    /// Bytes moving (estimated).
    pub bytes: u64,
}

/// Each shard's data and its weight's ideal share of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    /// Bytes per shard.
    pub bytes: Vec<u64>,
    /// Ideal bytes per shard (its weight's share of the total).
    pub ideal: Vec<f64>,
}

impl Balance {
    /// The balance of `loads` over shards of `weights`.
    pub fn of(loads: &[ArcLoad], weights: &[u32]) -> Balance {
        let mut bytes = vec![0u64; weights.len()];
        for l in loads {
            if let Some(b) = bytes.get_mut(l.owner) {
                *b += l.bytes;
            }
        }
        let total: u64 = bytes.iter().sum();
        let weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let ideal = weights
            .iter()
            .map(|&w| {
                if weight == 0 {
                    0.0
                } else {
                    total as f64 * f64::from(w) / weight as f64
                }
            })
            .collect();
        Balance { bytes, ideal }
    }

    /// `(bytes - ideal) / ideal` of shard `s` (0 for a shard of weight 0).
    pub fn imbalance(&self, s: usize) -> f64 {
        if self.ideal[s] <= 0.0 {
            return 0.0;
        }
        (self.bytes[s] as f64 - self.ideal[s]) / self.ideal[s]
    }

    /// Whether every shard with a weight is within `threshold`.
    pub fn within(&self, threshold: f64) -> bool {
        (0..self.bytes.len()).all(|s| self.imbalance(s).abs() <= threshold + 1e-9)
    }
}

/// The moves that bring every shard within `threshold` (0.2 = 20%), or as
/// close as whole arcs allow: repeatedly the most loaded shard gives the
/// least loaded one its arc that best fills the gap without overshooting.
pub fn plan(loads: &[ArcLoad], weights: &[u32], threshold: f64) -> Vec<ArcMove> {
    let mut loads = loads.to_vec();
    let mut moves: Vec<ArcMove> = Vec::new();
    // Each step moves one arc and lowers the largest deviation; an arc
    // moves at most once.
    for _ in 0..loads.len() {
        let b = Balance::of(&loads, weights);
        if b.within(threshold) {
            break;
        }
        let live: Vec<usize> = (0..weights.len()).filter(|&s| weights[s] > 0).collect();
        let excess = |s: usize| b.bytes[s] as f64 - b.ideal[s];
        let Some(&donor) = live
            .iter()
            .max_by(|&&x, &&y| excess(x).total_cmp(&excess(y)))
        else {
            break;
        };
        let Some(&receiver) = live
            .iter()
            .min_by(|&&x, &&y| excess(x).total_cmp(&excess(y)))
        else {
            break;
        };
        if donor == receiver {
            break;
        }
        // Moving `x` bytes leaves deviations excess(d) - x and
        // excess(r) + x: it helps while x < 2 * min(gap).
        let gap = excess(donor).min(-excess(receiver));
        let moved_before = |p: (usize, u32)| moves.iter().any(|m| m.point == p);
        let best = loads
            .iter()
            .enumerate()
            .filter(|(_, l)| l.owner == donor && l.bytes > 0 && !moved_before(l.point))
            .filter(|(_, l)| (l.bytes as f64) < 2.0 * gap)
            .min_by(|(_, a), (_, b)| {
                let fit = |x: &ArcLoad| (x.bytes as f64 - gap).abs();
                fit(a).total_cmp(&fit(b))
            })
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        let l = &mut loads[i];
        moves.push(ArcMove {
            point: l.point,
            from: l.owner,
            to: receiver,
            rows: l.rows,
            bytes: l.bytes,
        });
        l.owner = receiver;
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arcs(owner: usize, n: u32, bytes: u64) -> Vec<ArcLoad> {
        (0..n)
            .map(|v| ArcLoad {
                point: (owner, v),
                owner,
                rows: bytes / 100,
                bytes,
            })
            .collect()
    }

    #[test]
    fn a_balanced_cluster_needs_no_move() {
        let mut loads = arcs(0, 10, 1000);
        loads.extend(arcs(1, 10, 1100));
        assert!(plan(&loads, &[1, 1], 0.2).is_empty());
    }

    #[test]
    fn a_skewed_cluster_ends_within_the_threshold() {
        // Shard 0 holds three times what shard 1 does.
        let mut loads = arcs(0, 30, 3000);
        loads.extend(arcs(1, 30, 1000));
        let moves = plan(&loads, &[1, 1], 0.2);
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|m| m.from == 0 && m.to == 1));
        for m in &moves {
            let l = loads.iter_mut().find(|l| l.point == m.point).unwrap();
            l.owner = m.to;
        }
        let b = Balance::of(&loads, &[1, 1]);
        assert!(b.within(0.2), "{b:?}");
    }

    #[test]
    fn weights_set_the_ideal_share() {
        // Equal data, but shard 1 weighs 3: it should hold 3/4.
        let mut loads = arcs(0, 40, 1000);
        loads.extend(arcs(1, 40, 1000));
        let moves = plan(&loads, &[1, 3], 0.1);
        for m in &moves {
            let l = loads.iter_mut().find(|l| l.point == m.point).unwrap();
            l.owner = m.to;
        }
        let b = Balance::of(&loads, &[1, 3]);
        assert!(b.within(0.1), "{b:?}");
        assert!(b.bytes[1] > 2 * b.bytes[0]);
    }

    #[test]
    fn one_huge_arc_is_not_moved_back_and_forth() {
        let mut loads = arcs(0, 1, 10_000);
        loads.extend(arcs(1, 5, 10));
        let moves = plan(&loads, &[1, 1], 0.2);
        assert!(moves.len() <= 1, "{moves:?}");
        assert!(moves.iter().all(|m| m.bytes < 10_000));
    }
}
