//! An in-memory sort within a byte budget: the rows whose final order
//! the shards cannot give (ORDER BY an aggregate) are held here and sorted
//! at the end. With a LIMIT only the best `limit + offset` rows are kept
//! (pruned in batches), so a top-N over any number of groups stays small.

use std::cmp::Ordering;

use bytes::BytesMut;

use crate::error::MergeError;
use crate::key::Key;

/// Rows held for a final sort.
pub struct BoundedSort {
    rows: Vec<(Vec<Key>, BytesMut)>,
    /// Per key: (descending, NULLs first).
    order: Vec<(bool, bool)>,
    /// Estimated bytes of `rows`.
    held: usize,
    budget: usize,
    keep: Option<usize>,
}

impl BoundedSort {
    /// A sort by `order` ((descending, NULLs first) per key) holding at
    /// most `budget` bytes, keeping only the first `keep` rows when set.
    pub fn new(order: Vec<(bool, bool)>, budget: usize, keep: Option<u64>) -> BoundedSort {
        BoundedSort {
            rows: Vec::new(),
            order,
            held: 0,
            budget,
            keep: keep.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
        }
    }

    /// Estimated bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Holds one row with its sort keys; fails with `53400` past the budget.
    pub fn push(&mut self, keys: Vec<Key>, row: BytesMut) -> Result<(), MergeError> {
        self.held += row_bytes(&keys, &row);
        self.rows.push((keys, row));
        if let Some(keep) = self.keep {
            if self.rows.len() >= keep.saturating_mul(2).max(1024) {
                self.sort();
                self.rows.truncate(keep);
                self.held = self.rows.iter().map(|(k, r)| row_bytes(k, r)).sum();
            }
        }
        if self.held > self.budget {
            return Err(MergeError::MemoryLimit {
                message: format!(
                    "shardgate: sorting the groups of this cross-shard query needs more than merge_memory_limit ({} bytes) of proxy memory",
                    self.budget
                ),
                hint: "Add a LIMIT, restrict the query to one shard, or raise proxy.merge_memory_limit in proxy.toml.",
            });
        }
        Ok(())
    }

    /// The rows in order (stable: equal keys keep their arrival order).
    pub fn finish(&mut self) -> Vec<BytesMut> {
        self.sort();
        self.held = 0;
        std::mem::take(&mut self.rows)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    fn sort(&mut self) {
        let order = &self.order;
        self.rows.sort_by(|a, b| compare(&a.0, &b.0, order));
    }
}

fn compare(a: &[Key], b: &[Key], order: &[(bool, bool)]) -> Ordering {
    for ((x, y), (desc, nulls_first)) in a.iter().zip(b).zip(order) {
        match x.cmp_sort(y, *desc, *nulls_first) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

/// Estimated bytes one held row takes: its message, its keys' heap and
/// the bookkeeping around them.
pub fn row_bytes(keys: &[Key], row: &BytesMut) -> usize {
    let heap: usize = keys
        .iter()
        .map(|k| match k {
            Key::Bytes(b) => b.len(),
            Key::Numeric(_) => 32,
            _ => 0,
        })
        .sum();
    row.capacity() + heap + std::mem::size_of_val(keys) + 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tag: u8) -> BytesMut {
        BytesMut::from(&[tag][..])
    }

    fn tags(rows: Vec<BytesMut>) -> Vec<u8> {
        rows.iter().map(|r| r[0]).collect()
    }

    #[test]
    fn rows_come_out_sorted_and_ties_keep_arrival_order() {
        let mut s = BoundedSort::new(vec![(true, false)], usize::MAX, None);
        for (k, t) in [(1, b'a'), (3, b'b'), (1, b'c'), (2, b'd')] {
            s.push(vec![Key::Int(k)], row(t)).unwrap();
        }
        assert_eq!(tags(s.finish()), b"bdac".to_vec());
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn with_a_limit_only_the_best_rows_are_kept() {
        let mut s = BoundedSort::new(vec![(false, false)], 200_000, Some(3));
        for k in (0..10_000).rev() {
            s.push(vec![Key::Int(k)], row(b'x')).unwrap();
        }
        assert!(s.held() < 200_000);
        let out = s.finish();
        assert!(out.len() >= 3);
        let mut check = BoundedSort::new(vec![(false, false)], usize::MAX, Some(3));
        for k in [5, 0, 9, 1, 2] {
            check.push(vec![Key::Int(k)], row(k as u8)).unwrap();
        }
        assert_eq!(tags(check.finish())[..3], [0, 1, 2]);
    }

    #[test]
    fn past_the_budget_the_sort_fails_with_53400() {
        let mut s = BoundedSort::new(vec![(false, false)], 1_000, None);
        let e = (0..100)
            .find_map(|k| s.push(vec![Key::Int(k)], row(b'x')).err())
            .expect("over budget");
        assert_eq!(e.sqlstate(), "53400");
        assert!(e.to_string().contains("merge_memory_limit (1000 bytes)"));
        assert!(e.hint().is_some());
    }
}
