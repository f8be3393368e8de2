//! Window functions over merged rows that arrive sorted by (partition
//! keys, order keys): each partition is held (within a byte limit), then
//! every row gets its window values as one unsharded Postgres computes
//! them with the default frame (RANGE UNBOUNDED PRECEDING to the current
//! row's last peer; the whole partition without ORDER BY).

use crate::error::MergeError;
use crate::float::float8_text;
use crate::key::Key;

/// One window function call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFunc {
    /// `row_number()`
    RowNumber,
    /// `rank()`
    Rank,
    /// `dense_rank()`
    DenseRank,
    /// `percent_rank()`
    PercentRank,
    /// `cume_dist()`
    CumeDist,
    /// `ntile(n)`, `n` > 0 (an `int4` result).
    Ntile(i32),
    /// `lag(x, offset)`: argument `arg` of the row `offset` rows before.
    Lag {
        /// Index of the argument in [`WindowRow::args`].
        arg: usize,
        /// Rows back (negative: forward).
        offset: i64,
    },
    /// `lead(x, offset)`: argument `arg` of the row `offset` rows after.
    Lead {
        /// Index of the argument in [`WindowRow::args`].
        arg: usize,
        /// Rows forward (negative: back).
        offset: i64,
    },
    /// `first_value(x)`
    FirstValue(usize),
    /// `last_value(x)`: the last row of the frame.
    LastValue(usize),
    /// `nth_value(x, n)`, `n` > 0: row `n` of the frame.
    NthValue {
        /// Index of the argument in [`WindowRow::args`].
        arg: usize,
        /// 1-based row of the frame.
        n: i64,
    },
    /// `count(*)` (None) or `count(x)` over the frame.
    Count(Option<usize>),
    /// `min(x)` over the frame: compared by [`WindowRow::keys`], the
    /// value forwarded from [`WindowRow::args`].
    Min(usize),
    /// `max(x)` over the frame, as [`WindowFunc::Min`].
    Max(usize),
}

/// A computed window value.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowValue {
    /// An `int4` result.
    Int4(i32),
    /// An `int8` result.
    Int8(i64),
    /// A `float8` result.
    Float8(f64),
    /// An argument's value forwarded as the shard sent it (None: NULL).
    Forward(Option<Vec<u8>>),
}

impl WindowValue {
    /// The value as a DataRow field in text or binary format (None: NULL).
    pub fn encode(&self, binary: bool) -> Option<Vec<u8>> {
        match self {
            WindowValue::Int4(v) if binary => Some(v.to_be_bytes().to_vec()),
            WindowValue::Int4(v) => Some(v.to_string().into_bytes()),
            WindowValue::Int8(v) if binary => Some(v.to_be_bytes().to_vec()),
            WindowValue::Int8(v) => Some(v.to_string().into_bytes()),
            WindowValue::Float8(v) if binary => Some(v.to_bits().to_be_bytes().to_vec()),
            WindowValue::Float8(v) => Some(float8_text(*v).into_bytes()),
            WindowValue::Forward(v) => v.clone(),
        }
    }
}

/// One input row: its keys, the window functions' arguments and what the
/// caller needs back with the values.
#[derive(Debug, Clone)]
pub struct WindowRow<T> {
    /// The PARTITION BY keys.
    pub partition: Vec<Key>,
    /// The window's ORDER BY keys (empty: every row is a peer).
    pub order: Vec<Key>,
    /// Argument values (None: NULL), as forwarded.
    pub args: Vec<Option<Vec<u8>>>,
    /// Argument values decoded for comparison (`min`/`max`; may be empty
    /// otherwise).
    pub keys: Vec<Key>,
    /// The caller's row.
    pub payload: T,
}

/// Computes window values partition by partition.
#[derive(Debug)]
pub struct Window<T> {
    funcs: Vec<WindowFunc>,
    rows: Vec<WindowRow<T>>,
    held: usize,
    limit: usize,
}

impl<T> Window<T> {
    /// A window computing `funcs`, holding at most `limit` bytes of rows.
    pub fn new(funcs: Vec<WindowFunc>, limit: usize) -> Window<T> {
        Window {
            funcs,
            rows: Vec::new(),
            held: 0,
            limit,
        }
    }

    /// Adds the next row (`bytes`: its estimated size); returns the rows of
    /// the partition it ends, with their values, in input order.
    pub fn push(
        &mut self,
        row: WindowRow<T>,
        bytes: usize,
    ) -> Result<Vec<(T, Vec<WindowValue>)>, MergeError> {
        let same = self.rows.last().is_some_and(|last| {
            last.partition.len() == row.partition.len()
                && last
                    .partition
                    .iter()
                    .zip(&row.partition)
                    .all(|(a, b)| a.group_eq(b))
        });
        let done = if same { Vec::new() } else { self.finish() };
        self.held = self.held.saturating_add(bytes);
        if self.held > self.limit {
            self.rows.clear();
            self.held = 0;
            return Err(MergeError::MemoryLimit {
                message: format!(
                    "shardgate: a window partition of this cross-shard query needs more than merge_memory_limit ({} bytes) of proxy memory",
                    self.limit
                ),
                hint: "Add a PARTITION BY, restrict the query to one shard, or raise proxy.merge_memory_limit in proxy.toml.",
            });
        }
        self.rows.push(row);
        Ok(done)
    }

    /// Ends the current partition: its rows with their values.
    pub fn finish(&mut self) -> Vec<(T, Vec<WindowValue>)> {
        let rows = std::mem::take(&mut self.rows);
        self.held = 0;
        let peers = Peers::of(&rows);
        let mut columns: Vec<std::vec::IntoIter<WindowValue>> = self
            .funcs
            .iter()
            .map(|f| column(*f, &rows, &peers).into_iter())
            .collect();
        rows.into_iter()
            .map(|row| {
                let vals = columns
                    .iter_mut()
                    .map(|c| c.next().unwrap_or(WindowValue::Forward(None)))
                    .collect();
                (row.payload, vals)
            })
            .collect()
    }
}

/// The peer groups of a partition (rows with equal order keys).
struct Peers {
    /// Per row: the index of its first peer.
    starts: Vec<usize>,
    /// Per row: the index of its last peer (the end of its frame).
    ends: Vec<usize>,
    /// Per row: 1 + the number of peer groups before its own.
    dense: Vec<i64>,
}

impl Peers {
    fn of<T>(rows: &[WindowRow<T>]) -> Peers {
        let n = rows.len();
        let (mut starts, mut ends, mut dense) = (vec![0; n], vec![0; n], vec![0; n]);
        let (mut start, mut group) = (0, 1);
        for i in 0..n {
            let last = i + 1 == n || !peers(&rows[i], &rows[i + 1]);
            if last {
                for j in start..=i {
                    starts[j] = start;
                    ends[j] = i;
                    dense[j] = group;
                }
                start = i + 1;
                group += 1;
            }
        }
        Peers {
            starts,
            ends,
            dense,
        }
    }
}

fn peers<T>(a: &WindowRow<T>, b: &WindowRow<T>) -> bool {
    a.order.len() == b.order.len() && a.order.iter().zip(&b.order).all(|(x, y)| x.group_eq(y))
}

/// The values of `f` for every row of a partition.
fn column<T>(f: WindowFunc, rows: &[WindowRow<T>], p: &Peers) -> Vec<WindowValue> {
    let n = rows.len();
    let arg = |r: usize, a: usize| rows[r].args.get(a).cloned().flatten();
    let at = |r: i64, a: usize| {
        WindowValue::Forward(if r >= 0 && (r as usize) < n {
            arg(r as usize, a)
        } else {
            None
        })
    };
    let each = |g: &dyn Fn(usize) -> WindowValue| (0..n).map(g).collect::<Vec<_>>();
    match f {
        WindowFunc::RowNumber => each(&|i| WindowValue::Int8(i as i64 + 1)),
        WindowFunc::Rank => each(&|i| WindowValue::Int8(p.starts[i] as i64 + 1)),
        WindowFunc::DenseRank => each(&|i| WindowValue::Int8(p.dense[i])),
        WindowFunc::PercentRank => each(&|i| {
            WindowValue::Float8(if n > 1 {
                p.starts[i] as f64 / (n - 1) as f64
            } else {
                0.0
            })
        }),
        WindowFunc::CumeDist => each(&|i| WindowValue::Float8((p.ends[i] + 1) as f64 / n as f64)),
        WindowFunc::Ntile(b) => ntile(n, b).into_iter().map(WindowValue::Int4).collect(),
        WindowFunc::Lag { arg, offset } => each(&|i| at((i as i64).saturating_sub(offset), arg)),
        WindowFunc::Lead { arg, offset } => each(&|i| at((i as i64).saturating_add(offset), arg)),
        WindowFunc::FirstValue(a) => each(&|_| WindowValue::Forward(arg(0, a))),
        WindowFunc::LastValue(a) => each(&|i| WindowValue::Forward(arg(p.ends[i], a))),
        WindowFunc::NthValue { arg: a, n: k } => each(&|i| {
            let r = k.saturating_sub(1);
            WindowValue::Forward(if r >= 0 && (r as usize) <= p.ends[i] {
                arg(r as usize, a)
            } else {
                None
            })
        }),
        WindowFunc::Count(a) => {
            // Counted rows up to and including each row.
            let mut upto = Vec::with_capacity(n);
            let mut c = 0i64;
            for r in rows {
                if a.is_none_or(|a| r.args.get(a).is_some_and(|v| v.is_some())) {
                    c += 1;
                }
                upto.push(c);
            }
            each(&|i| WindowValue::Int8(upto[p.ends[i]]))
        }
        WindowFunc::Min(a) | WindowFunc::Max(a) => {
            let upto = extremes(rows, a, matches!(f, WindowFunc::Max(_)));
            each(&|i| WindowValue::Forward(upto[p.ends[i]].and_then(|b| arg(b, a))))
        }
    }
}

/// Per row: the row holding the least (greatest with `max`) non-NULL
/// argument `a` up to it; on ties the later row, as Postgres's
/// `*_smaller`/`*_larger` keep the newer of two equal values.
fn extremes<T>(rows: &[WindowRow<T>], a: usize, max: bool) -> Vec<Option<usize>> {
    use std::cmp::Ordering;
    let mut best: Option<usize> = None;
    let mut out = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        if let Some(k) = row.keys.get(a).filter(|k| !k.is_null()) {
            let replace = match best.and_then(|b| rows[b].keys.get(a)) {
                None => true,
                Some(cur) => {
                    let o = k.cmp_value(cur);
                    if max {
                        o != Ordering::Less
                    } else {
                        o != Ordering::Greater
                    }
                }
            };
            if replace {
                best = Some(r);
            }
        }
        out.push(best);
    }
    out
}

/// `ntile(buckets)` of each row of a partition of `total` rows, as
/// Postgres's `window_ntile` deals them.
fn ntile(total: usize, buckets: i32) -> Vec<i32> {
    let buckets = u64::from(buckets.max(1).unsigned_abs());
    let total64 = total as u64;
    let mut boundary = total64 / buckets;
    let mut remainder = 0;
    if boundary == 0 {
        boundary = 1;
    } else {
        remainder = total64 % buckets;
        if remainder != 0 {
            boundary += 1;
        }
    }
    let mut tile = 1i32;
    let mut in_bucket = 0u64;
    let mut out = Vec::with_capacity(total);
    for _ in 0..total {
        in_bucket += 1;
        if boundary < in_bucket {
            if remainder != 0 && u64::from(tile.unsigned_abs()) == remainder {
                remainder = 0;
                boundary -= 1;
            }
            tile = tile.saturating_add(1);
            in_bucket = 1;
        }
        out.push(tile);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: i64, o: Option<i64>, x: Option<&str>) -> WindowRow<usize> {
        WindowRow {
            partition: vec![Key::Int(p)],
            order: vec![o.map_or(Key::Null, Key::Int)],
            args: vec![x.map(|s| s.as_bytes().to_vec())],
            keys: vec![x.map_or(Key::Null, |s| {
                Key::Bytes(bytes::Bytes::copy_from_slice(s.as_bytes()))
            })],
            payload: 0,
        }
    }

    fn run(funcs: Vec<WindowFunc>, rows: Vec<WindowRow<usize>>) -> Vec<Vec<Option<String>>> {
        let mut w = Window::new(funcs, 1 << 20);
        let mut out = Vec::new();
        for (i, mut r) in rows.into_iter().enumerate() {
            r.payload = i;
            out.extend(w.push(r, 10).unwrap());
        }
        out.extend(w.finish());
        out.iter()
            .map(|(_, v)| {
                v.iter()
                    .map(|x| x.encode(false).map(|b| String::from_utf8(b).unwrap()))
                    .collect()
            })
            .collect()
    }

    fn col(out: &[Vec<Option<String>>], c: usize) -> Vec<Option<&str>> {
        out.iter().map(|r| r[c].as_deref()).collect()
    }

    #[test]
    fn ranks_with_ties_and_nulls() {
        use WindowFunc::*;
        let rows = vec![
            row(1, Some(1), None),
            row(1, Some(1), None),
            row(1, Some(2), None),
            row(1, None, None),
            row(2, Some(5), None),
        ];
        let out = run(
            vec![RowNumber, Rank, DenseRank, PercentRank, CumeDist],
            rows,
        );
        assert_eq!(
            col(&out, 0),
            [Some("1"), Some("2"), Some("3"), Some("4"), Some("1")]
        );
        assert_eq!(
            col(&out, 1),
            [Some("1"), Some("1"), Some("3"), Some("4"), Some("1")]
        );
        assert_eq!(
            col(&out, 2),
            [Some("1"), Some("1"), Some("2"), Some("3"), Some("1")]
        );
        assert_eq!(
            col(&out, 3),
            [
                Some("0"),
                Some("0"),
                Some("0.6666666666666666"),
                Some("1"),
                Some("0")
            ]
        );
        assert_eq!(
            col(&out, 4),
            [Some("0.5"), Some("0.5"), Some("0.75"), Some("1"), Some("1")]
        );
    }

    #[test]
    fn ntile_deals_the_remainder_first() {
        assert_eq!(ntile(7, 3), [1, 1, 1, 2, 2, 3, 3]);
        assert_eq!(ntile(2, 5), [1, 2]);
        assert_eq!(ntile(6, 3), [1, 1, 2, 2, 3, 3]);
        assert!(ntile(0, 3).is_empty());
    }

    #[test]
    fn values_from_other_rows() {
        use WindowFunc::*;
        let rows = vec![
            row(1, Some(1), Some("a")),
            row(1, Some(2), None),
            row(1, Some(2), Some("c")),
            row(2, Some(1), Some("d")),
        ];
        let funcs = vec![
            Lag { arg: 0, offset: 1 },
            Lead { arg: 0, offset: 2 },
            FirstValue(0),
            LastValue(0),
            NthValue { arg: 0, n: 3 },
            Count(Some(0)),
            Count(None),
            Min(0),
            Max(0),
        ];
        let out = run(funcs, rows);
        assert_eq!(col(&out, 0), [None, Some("a"), None, None]);
        assert_eq!(col(&out, 1), [Some("c"), None, None, None]);
        assert_eq!(col(&out, 2), [Some("a"), Some("a"), Some("a"), Some("d")]);
        assert_eq!(col(&out, 3), [Some("a"), Some("c"), Some("c"), Some("d")]);
        assert_eq!(col(&out, 4), [None, Some("c"), Some("c"), None]);
        assert_eq!(col(&out, 5), [Some("1"), Some("2"), Some("2"), Some("1")]);
        assert_eq!(col(&out, 6), [Some("1"), Some("3"), Some("3"), Some("1")]);
        assert_eq!(col(&out, 7), [Some("a"), Some("a"), Some("a"), Some("d")]);
        assert_eq!(col(&out, 8), [Some("a"), Some("c"), Some("c"), Some("d")]);
    }

    #[test]
    fn a_partition_over_the_limit_fails_with_53400() {
        let mut w: Window<()> = Window::new(vec![WindowFunc::RowNumber], 25);
        let r = || WindowRow {
            partition: vec![],
            order: vec![],
            args: vec![],
            keys: vec![],
            payload: (),
        };
        assert!(w.push(r(), 10).is_ok());
        assert!(w.push(r(), 10).is_ok());
        let e = w.push(r(), 10).unwrap_err();
        assert_eq!(e.sqlstate(), "53400");
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(
            WindowValue::Int8(2).encode(true),
            Some(vec![0, 0, 0, 0, 0, 0, 0, 2])
        );
        assert_eq!(
            WindowValue::Float8(0.5).encode(true),
            Some(0.5f64.to_bits().to_be_bytes().to_vec())
        );
        assert_eq!(WindowValue::Forward(None).encode(true), None);
    }
}
