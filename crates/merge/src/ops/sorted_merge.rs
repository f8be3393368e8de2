//! K-way merge of sorted input streams: each input shows at most one
//! row (its head); the smallest head by the sort keys goes next, once
//! every input that has not ended shows one.

use std::cmp::Ordering;

use crate::key::Key;
use crate::plan::SortKey;

/// Merges inputs sorted by the same keys into one sorted stream.
pub struct SortedMerge<R> {
    heads: Vec<Option<(Vec<Key>, R)>>,
    ended: Vec<bool>,
    keys: Vec<SortKey>,
    /// The order matters: a head goes only when every input shows one.
    ordered: bool,
}

impl<R> SortedMerge<R> {
    /// A merge of `inputs` streams sorted by `keys`; `ordered` false
    /// passes rows in arrival order (no keys to compare).
    pub fn new(inputs: usize, keys: Vec<SortKey>, ordered: bool) -> SortedMerge<R> {
        SortedMerge {
            heads: (0..inputs).map(|_| None).collect(),
            ended: vec![false; inputs],
            ordered: ordered || !keys.is_empty(),
            keys,
        }
    }

    /// The sort keys, most significant first.
    pub fn keys(&self) -> &[SortKey] {
        &self.keys
    }

    /// Input `i` can take its next row.
    pub fn wants(&self, i: usize) -> bool {
        self.heads[i].is_none() && !self.ended[i]
    }

    /// Input `i` has no row waiting (it may not have ended).
    pub fn is_empty(&self, i: usize) -> bool {
        self.heads[i].is_none()
    }

    /// The next row of input `i`, with its decoded sort keys.
    pub fn push(&mut self, i: usize, keys: Vec<Key>, row: R) {
        debug_assert!(self.heads[i].is_none(), "input {i} already shows a row");
        self.heads[i] = Some((keys, row));
    }

    /// Input `i` has no more rows (its head, if any, still goes out).
    pub fn end(&mut self, i: usize) {
        self.ended[i] = true;
    }

    /// Whether input `i` ended.
    pub fn ended(&self, i: usize) -> bool {
        self.ended[i]
    }

    /// Every input ended and every row went out.
    pub fn exhausted(&self) -> bool {
        self.ended.iter().all(|e| *e) && self.heads.iter().all(Option::is_none)
    }

    /// Drops the rows waiting (the result failed or is complete).
    pub fn clear(&mut self) {
        self.heads.iter_mut().for_each(|h| *h = None);
    }

    /// The next row in order, when it is decided.
    pub fn pop(&mut self) -> Option<(Vec<Key>, R)> {
        let i = self.next_input()?;
        self.heads[i].take()
    }

    fn next_input(&self) -> Option<usize> {
        if !self.ordered {
            return self.heads.iter().position(Option::is_some);
        }
        if self
            .heads
            .iter()
            .zip(&self.ended)
            .any(|(h, ended)| h.is_none() && !ended)
        {
            return None;
        }
        let mut best: Option<(usize, &[Key])> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some((keys, _)) = head else { continue };
            match best {
                Some((_, b)) if compare(keys, b, &self.keys) != Ordering::Less => {}
                _ => best = Some((i, keys)),
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Compares two rows' keys in the order `keys` gives.
pub fn compare(a: &[Key], b: &[Key], keys: &[SortKey]) -> Ordering {
    for ((x, y), k) in a.iter().zip(b).zip(keys) {
        match x.cmp_sort(y, k.desc, k.nulls_first) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(column: usize, desc: bool) -> SortKey {
        SortKey {
            column,
            desc,
            nulls_first: desc,
        }
    }

    /// Feeds `inputs` (each sorted) through the merge, refilling an input
    /// whenever it wants a row, and returns the rows in output order.
    fn merge_all(inputs: Vec<Vec<Option<i64>>>, desc: bool) -> Vec<Option<i64>> {
        let mut m = SortedMerge::new(inputs.len(), vec![key(0, desc)], true);
        let mut iters: Vec<_> = inputs.into_iter().map(|v| v.into_iter()).collect();
        let mut out = Vec::new();
        loop {
            for (i, it) in iters.iter_mut().enumerate() {
                if m.wants(i) {
                    match it.next() {
                        Some(v) => m.push(i, vec![v.map_or(Key::Null, Key::Int)], v),
                        None => m.end(i),
                    }
                }
            }
            match m.pop() {
                Some((_, v)) => out.push(v),
                None if m.exhausted() => return out,
                None => {}
            }
        }
    }

    #[test]
    fn sorted_inputs_merge_into_the_sorted_union() {
        let out = merge_all(
            vec![
                vec![Some(1), Some(4), Some(9)],
                vec![],
                vec![Some(2), Some(4), None],
                vec![Some(0)],
            ],
            false,
        );
        assert_eq!(
            out,
            vec![Some(0), Some(1), Some(2), Some(4), Some(4), Some(9), None]
        );
    }

    #[test]
    fn descending_keys_put_nulls_first() {
        let out = merge_all(vec![vec![None, Some(3)], vec![Some(5), Some(1)]], true);
        assert_eq!(out, vec![None, Some(5), Some(3), Some(1)]);
    }

    #[test]
    fn nothing_goes_until_every_open_input_shows_a_row() {
        let mut m = SortedMerge::new(2, vec![key(0, false)], true);
        m.push(0, vec![Key::Int(7)], "a");
        assert!(m.pop().is_none(), "input 1 may still send a smaller row");
        m.end(1);
        assert_eq!(m.pop().map(|(_, r)| r), Some("a"));
        assert!(m.wants(0) && !m.wants(1));
    }

    #[test]
    fn without_keys_rows_pass_in_arrival_order() {
        let mut m = SortedMerge::new(3, Vec::new(), false);
        m.push(2, Vec::new(), "c");
        assert_eq!(m.pop().map(|(_, r)| r), Some("c"));
        m.push(0, Vec::new(), "a");
        m.push(1, Vec::new(), "b");
        assert_eq!(m.pop().map(|(_, r)| r), Some("a"));
        m.clear();
        assert!(m.pop().is_none());
    }
}
