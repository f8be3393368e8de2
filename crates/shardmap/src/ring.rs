//! The consistent hash ring (see the crate docs for the exact algorithm).
//!
//! `hashring` computes every point through `BuildHasher::hash_one`, so
//! placement would depend on `Hash` impls. Both types hashed here therefore
//! write exactly one canonical byte string with a single `Hasher::write`:
//! [`VNode`] its label `shard-{s}-vnode-{v}`, [`CanonicalBytes`] the key's
//! canonical bytes (not `<[u8] as Hash>`, which adds a length prefix).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use twox_hash::XxHash64;

use crate::map::ArcOwner;

/// The seed of every xxhash64 computed for placement.
pub(crate) const SEED: u64 = 0;

/// Builds xxhash64 hashers with the fixed seed [`SEED`] (never random, so
/// every proxy and every restart computes the same ring).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct XxHash64Seed0;

impl BuildHasher for XxHash64Seed0 {
    type Hasher = XxHash64;

    fn build_hasher(&self) -> XxHash64 {
        XxHash64::with_seed(SEED)
    }
}

/// One virtual node: the `vnode`-th point of `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VNode {
    /// The shard owning this point.
    pub(crate) shard: usize,
    /// The index of the point among the shard's points.
    pub(crate) vnode: u32,
}

impl VNode {
    /// The bytes hashed to place this virtual node: `shard-{s}-vnode-{v}`
    /// in ASCII, both numbers in decimal without leading zeros.
    pub(crate) fn label(&self) -> String {
        format!("shard-{}-vnode-{}", self.shard, self.vnode)
    }
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.label().as_bytes());
    }
}

/// A key's canonical bytes as the ring hashes them: one `write` of exactly
/// these bytes.
struct CanonicalBytes<'a>(&'a [u8]);

impl Hash for CanonicalBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// A ring with `vnodes * weight` points per shard.
pub(crate) struct Ring {
    ring: HashRing<VNode, XxHash64Seed0>,
    /// Every point as (hash, owner of the arc it ends), sorted by hash.
    points: Vec<(u64, usize)>,
    /// The (shard, vnode) of each of `points`.
    labels: Vec<(usize, u32)>,
    /// Arcs given to another shard, by (shard, vnode) of their end point.
    given: HashMap<(usize, u32), usize>,
}

impl Ring {
    /// Builds the ring; shard `s` gets points `0..vnodes * weights[s]`;
    /// `arcs` give some arcs to other shards. The caller has validated
    /// that the total is small enough and that every arc's point exists.
    pub(crate) fn new(weights: &[u32], vnodes: u32, arcs: &[ArcOwner]) -> Ring {
        let given: HashMap<(usize, u32), usize> =
            arcs.iter().map(|a| ((a.shard, a.vnode), a.owner)).collect();
        let nodes: Vec<VNode> = weights
            .iter()
            .enumerate()
            .flat_map(|(shard, &weight)| {
                (0..vnodes.saturating_mul(weight)).map(move |vnode| VNode { shard, vnode })
            })
            .collect();
        let mut labelled: Vec<(u64, usize, usize, u32)> = nodes
            .iter()
            .map(|n| {
                let owner = given.get(&(n.shard, n.vnode)).copied().unwrap_or(n.shard);
                (XxHash64Seed0.hash_one(n), owner, n.shard, n.vnode)
            })
            .collect();
        labelled.sort_unstable();
        let points = labelled.iter().map(|&(h, o, _, _)| (h, o)).collect();
        let labels = labelled.iter().map(|&(_, _, s, v)| (s, v)).collect();
        let mut ring = HashRing::with_hasher(XxHash64Seed0);
        ring.batch_add(nodes);
        Ring {
            ring,
            points,
            labels,
            given,
        }
    }

    /// The end point `(shard, vnode)` of every arc, in ring order (the
    /// order of [`Ring::arcs`]).
    pub(crate) fn arc_points(&self) -> &[(usize, u32)] {
        &self.labels
    }

    /// The ring as arcs `(from, to, shard)` of 64-bit key hashes, both ends
    /// inclusive, in order: a key whose hash falls in an arc goes to its
    /// shard. The last arc wraps around zero (`from > to`).
    pub(crate) fn arcs(&self) -> Vec<(u64, u64, usize)> {
        let n = self.points.len();
        (0..n)
            .map(|i| {
                let (to, shard) = self.points[i];
                let from = if i == 0 {
                    self.points[n - 1].0.wrapping_add(1)
                } else {
                    self.points[i - 1].0 + 1
                };
                (from, to, shard)
            })
            .collect()
    }

    /// The hash of every point, in order.
    pub(crate) fn point_hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.points.iter().map(|(h, _)| *h)
    }

    /// The index (in [`Ring::arcs`] order) of the arc holding the key whose
    /// canonical bytes are `bytes`; `None` for an empty ring.
    pub(crate) fn arc_index_of(&self, bytes: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = XxHash64Seed0.hash_one(CanonicalBytes(bytes));
        let i = self.points.partition_point(|(p, _)| *p < h);
        Some(if i == self.points.len() { 0 } else { i })
    }

    /// The shard owning key hash `h`: the first point at or after it
    /// (wrapping); `None` for an empty ring.
    pub(crate) fn shard_of_hash(&self, h: u64) -> Option<usize> {
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points
            .get(i)
            .or_else(|| self.points.first())
            .map(|(_, s)| *s)
    }

    /// The number of points on the ring.
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    /// The shard owning the first point at or after the hash of `bytes`
    /// (wrapping), or `None` for an empty ring.
    pub(crate) fn shard_of(&self, bytes: &[u8]) -> Option<usize> {
        let node = self.ring.get(&CanonicalBytes(bytes))?;
        if self.given.is_empty() {
            return Some(node.shard);
        }
        Some(
            self.given
                .get(&(node.shard, node.vnode))
                .copied()
                .unwrap_or(node.shard),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writes_exactly_the_canonical_bytes() {
        let node = VNode {
            shard: 2,
            vnode: 17,
        };
        assert_eq!(node.label(), "shard-2-vnode-17");
        assert_eq!(
            XxHash64Seed0.hash_one(node),
            XxHash64::oneshot(SEED, b"shard-2-vnode-17")
        );
        assert_eq!(
            XxHash64Seed0.hash_one(CanonicalBytes(b"abc")),
            XxHash64::oneshot(SEED, b"abc")
        );
        assert_eq!(
            XxHash64Seed0.hash_one(CanonicalBytes(b"")),
            XxHash64::oneshot(SEED, b"")
        );
    }

    #[test]
    fn arcs_say_where_every_key_goes() {
        let ring = Ring::new(&[1, 2], 8, &[]);
        let arcs = ring.arcs();
        assert_eq!(arcs.len(), 24);
        for key in 0..2000u32 {
            let bytes = key.to_le_bytes();
            let h = XxHash64::oneshot(SEED, &bytes);
            let arc = arcs
                .iter()
                .find(|&&(from, to, _)| {
                    if from <= to {
                        (from..=to).contains(&h)
                    } else {
                        h >= from || h <= to
                    }
                })
                .expect("the arcs cover every hash");
            assert_eq!(Some(arc.2), ring.shard_of(&bytes), "key {key}");
        }
    }

    #[test]
    fn given_arcs_change_owner_and_nothing_else() {
        let plain = Ring::new(&[1, 1], 8, &[]);
        let (shard, vnode) = plain.arc_points()[3];
        let owner = 1 - shard;
        let given = Ring::new(
            &[1, 1],
            8,
            &[ArcOwner {
                shard,
                vnode,
                owner,
            }],
        );
        let (a, b) = (plain.arcs(), given.arcs());
        for key in 0..5000u32 {
            let bytes = key.to_le_bytes();
            let h = XxHash64::oneshot(SEED, &bytes);
            let in_arc = if a[3].0 <= a[3].1 {
                (a[3].0..=a[3].1).contains(&h)
            } else {
                h >= a[3].0 || h <= a[3].1
            };
            let want = if in_arc {
                Some(owner)
            } else {
                plain.shard_of(&bytes)
            };
            assert_eq!(given.shard_of(&bytes), want, "key {key}");
            assert_eq!(given.shard_of_hash(h), want, "hash of key {key}");
        }
        assert_eq!(b[3].2, owner);
        assert_eq!(
            b.iter()
                .filter(|x| x.2 != a.iter().find(|y| y.1 == x.1).map_or(9, |y| y.2))
                .count(),
            1
        );
    }

    #[test]
    fn ring_size_is_vnodes_times_weight() {
        let ring = Ring::new(&[1, 2, 3], 4, &[]);
        assert_eq!(ring.len(), 24);
        assert!(Ring::new(&[], 4, &[]).shard_of(b"x").is_none());
    }
}
