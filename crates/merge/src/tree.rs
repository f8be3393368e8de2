//! The operator tree of one cross-shard statement, built from its plan
//! ([`MergeSpec`]): the session feeds each shard's DataRows in and writes
//! the rows that come out, knowing nothing of SQL.
//!
//! ```text
//! shard rows ─► SortedMerge ─┬─► FirstPerKey (DISTINCT ON) ─────────────┐
//!                            ├─► WindowRows (windows over merged rows) ─┤
//!                            └─► GroupAggregate ─► GroupOutput ─┬───────┤
//!                                  (HAVING, expressions)        └► BoundedSort
//!                                                                       ▼
//!                                                   LimitOffset ─► client rows
//! ```
//!
//! Every operator is a small type of [`crate::ops`] with its own tests;
//! this module only wires them as the plan says.

use std::sync::Arc;

use bytes::BytesMut;

use crate::error::MergeError;
use crate::key::Key;
use crate::ops::{
    Admit, BoundedSort, FirstPerKey, Group, GroupAggregate, GroupOutput, LimitOffset, SortedMerge,
    WindowRows,
};
use crate::plan::{GroupPlan, MergeMode, MergeSpec};
use crate::row::{strip_hidden, DataRow};

/// What [`MergeTree::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One merged row went through the tree (zero or more rows came out).
    Moved,
    /// An input must show its next row (or end) first.
    Waiting,
    /// Every input ended and every row went through: call
    /// [`MergeTree::finish`].
    Drained,
}

/// The merge of one statement's shard streams.
pub struct MergeTree {
    spec: Arc<dyn MergeSpec>,
    /// Column types of the shards' rows (visible, then hidden).
    types: Option<Vec<u32>>,
    /// Visible columns the client sees.
    visible: usize,
    /// Columns a `SELECT *` expanded to beyond what the plan counted.
    shift: usize,
    input: SortedMerge<BytesMut>,
    first_per_key: Option<FirstPerKey>,
    window: Option<WindowRows>,
    aggregate: GroupAggregate,
    output: Option<GroupOutput>,
    sort: Option<BoundedSort>,
    limit: LimitOffset,
    formats: Vec<i16>,
    budget: usize,
}

impl MergeTree {
    /// The tree of `spec` over `inputs` shard streams, holding at most
    /// `budget` bytes (`proxy.merge_memory_limit`) for sorts, partitions
    /// and gathered values.
    pub fn new(spec: Arc<dyn MergeSpec>, inputs: usize, budget: usize) -> MergeTree {
        let (keys, ordered, distinct_on) = match spec.mode() {
            MergeMode::Concat => (Vec::new(), false, 0),
            MergeMode::Sorted { keys, distinct_on } => (keys.clone(), false, *distinct_on),
            MergeMode::Grouped(g) => (g.merge_keys.clone(), true, 0),
        };
        MergeTree {
            input: SortedMerge::new(inputs, keys, ordered),
            first_per_key: (distinct_on > 0).then(|| FirstPerKey::new(distinct_on)),
            window: spec.window().map(|w| WindowRows::new(w, budget)),
            spec,
            types: None,
            visible: 0,
            shift: 0,
            aggregate: GroupAggregate::new(),
            output: None,
            sort: None,
            limit: LimitOffset::default(),
            formats: Vec::new(),
            budget,
        }
    }

    /// The plan this tree runs.
    pub fn spec(&self) -> Arc<dyn MergeSpec> {
        self.spec.clone()
    }

    /// Estimated bytes held for the end: groups being combined and rows
    /// waiting for the final sort. [`MergeTree::finish`] works through
    /// them all at once, so a caller may run it off its thread when large.
    pub fn held(&self) -> usize {
        self.aggregate.held() + self.sort.as_ref().map_or(0, BoundedSort::held)
    }

    /// LIMIT (or the Execute's row limit when smaller) and OFFSET.
    pub fn set_limit(&mut self, limit: Option<u64>, offset: u64) {
        self.limit = LimitOffset::new(limit, offset);
    }

    /// The client's result format codes (none: all text).
    pub fn set_formats(&mut self, formats: Vec<i16>) {
        self.formats = formats;
    }

    /// The shards' column types (from the first RowDescription), needed
    /// to decode merge keys.
    pub fn set_types(&mut self, types: Vec<u32>) {
        let expected = self.spec.hidden() + self.spec.visible_fixed();
        self.shift = match self.spec.visible() {
            Some(_) => 0,
            None => types.len().saturating_sub(expected),
        };
        self.types = Some(types);
    }

    /// Whether the column types are known.
    pub fn has_types(&self) -> bool {
        self.types.is_some()
    }

    /// Every shard described the result with `visible` client columns:
    /// types the expressions and checks the tree can compute them.
    pub fn describe(&mut self, visible: usize) -> Result<(), MergeError> {
        self.visible = visible;
        let types = self.types.as_deref().unwrap_or_default();
        // Refused before any row is read, so the caller may answer the
        // statement another way.
        for k in self.input.keys() {
            match types.get(k.column + self.shift) {
                Some(&t) if !crate::key::key_supported(t) => {
                    return Err(MergeError::unsupported(t, "ORDER BY / GROUP BY"));
                }
                _ => {}
            }
        }
        if let Some(w) = self.spec.window() {
            WindowRows::check_types(w, types)?;
        }
        if let MergeMode::Grouped(g) = self.spec.mode() {
            self.output = Some(GroupOutput::bind(g, types, visible)?);
            if !g.final_sort.is_empty() {
                let order = g.final_sort.iter().map(|k| (k.desc, k.nulls_first));
                self.sort = Some(BoundedSort::new(
                    order.collect(),
                    self.budget,
                    self.limit.needed(),
                ));
            }
        }
        Ok(())
    }

    /// Input `i` can take its next row.
    pub fn wants(&self, i: usize) -> bool {
        self.input.wants(i)
    }

    /// Input `i` has no row waiting in the tree.
    pub fn is_empty(&self, i: usize) -> bool {
        self.input.is_empty(i)
    }

    /// The next DataRow of input `i`.
    pub fn push(&mut self, i: usize, row: BytesMut) -> Result<(), MergeError> {
        let keys = self.keys_of(&row)?;
        self.input.push(i, keys, row);
        Ok(())
    }

    /// Input `i` sent its last row.
    pub fn end(&mut self, i: usize) {
        self.input.end(i);
    }

    /// Whether input `i` ended.
    pub fn ended(&self, i: usize) -> bool {
        self.input.ended(i)
    }

    /// Drops the rows waiting (the statement failed).
    pub fn clear(&mut self) {
        self.input.clear();
    }

    /// Rows sent to the client.
    pub fn sent(&self) -> u64 {
        self.limit.sent()
    }

    /// LIMIT rows went out: the shards' remaining work can be cancelled.
    pub fn limit_reached(&self) -> bool {
        self.limit.full()
    }

    /// Moves the next merged row through the tree when its turn is
    /// decided, writing what comes out to `out`.
    pub fn step(&mut self, out: &mut BytesMut) -> Result<Step, MergeError> {
        let Some((keys, row)) = self.input.pop() else {
            return Ok(if self.input.exhausted() {
                Step::Drained
            } else {
                Step::Waiting
            });
        };
        let spec = self.spec.clone();
        match spec.mode() {
            MergeMode::Grouped(g) => self.add_to_group(g, row, out)?,
            _ => {
                if let (Some(w), Some(op)) = (spec.window(), self.window.as_mut()) {
                    let done = op.push(w, self.types.as_deref().unwrap_or_default(), keys, row)?;
                    self.send_windowed(done, out)?;
                } else if self.first_per_key.as_mut().is_none_or(|f| f.admit(&keys)) {
                    let visible = self.visible;
                    self.send(out, |out| strip_hidden(&row, visible, out))?;
                }
            }
        }
        Ok(Step::Moved)
    }

    /// Every input ended: the last window partition, the last group (or
    /// the one row of an aggregate over no rows) and the final sort.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), MergeError> {
        if let Some(op) = self.window.as_mut() {
            let done = op.finish();
            self.send_windowed(done, out)?;
        }
        let spec = self.spec.clone();
        let MergeMode::Grouped(g) = spec.mode() else {
            return Ok(());
        };
        if let Some(done) = self.aggregate.finish() {
            self.finish_group(g, done, out)?;
        } else if g.single_row
            && (g.distinct_value.is_some() || g.gathered)
            && self.limit.sent() == 0
        {
            // Grouped by the DISTINCT argument (or the ORDER BY keys of a
            // gathered aggregate), the shards sent no row over no rows;
            // the one row holds only aggregates (the plan checked).
            let types = self.types.as_deref().unwrap_or_default();
            let empty = GroupAggregate::empty_group(g, types)?;
            self.finish_group(g, empty, out)?;
        }
        if let Some(sort) = self.sort.as_mut() {
            for row in sort.finish() {
                self.send(out, |out| {
                    out.extend_from_slice(&row);
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    fn keys_of(&self, row: &[u8]) -> Result<Vec<Key>, MergeError> {
        let keys = self.input.keys();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let types = self.types.as_deref().ok_or_else(|| {
            MergeError::sql(
                "08P01",
                "shardgate: a shard sent rows before describing them",
            )
        })?;
        let view = DataRow::parse(row)?;
        keys.iter()
            .map(|k| view.key(k.column + self.shift, types))
            .collect()
    }

    fn add_to_group(
        &mut self,
        g: &GroupPlan,
        row: BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), MergeError> {
        let types = self.types.as_deref().unwrap_or_default();
        if let Some(done) = self.aggregate.add(g, types, row)? {
            self.finish_group(g, done, out)?;
        }
        if self.held() > self.budget {
            return Err(MergeError::MemoryLimit {
                message: format!(
                    "shardgate: the values of one group's ordered-set aggregate in this cross-shard query need more than merge_memory_limit ({} bytes) of proxy memory",
                    self.budget
                ),
                hint: "Restrict the query to one shard, group it more finely, or raise proxy.merge_memory_limit in proxy.toml.",
            });
        }
        Ok(())
    }

    fn finish_group(
        &mut self,
        g: &GroupPlan,
        group: Group,
        out: &mut BytesMut,
    ) -> Result<(), MergeError> {
        let types = self.types.as_deref().unwrap_or_default();
        let output = self.output.as_ref().ok_or_else(|| {
            MergeError::sql("XX000", "shardgate: a group before its columns were typed")
        })?;
        let Some(p) = output.project(g, types, &group, &self.formats)? else {
            return Ok(());
        };
        for _ in 0..p.copies {
            match self.sort.as_mut() {
                Some(sort) => sort.push(p.order.clone(), p.row.clone())?,
                None if self.limit.full() => break,
                None => self.send(out, |out| {
                    out.extend_from_slice(&p.row);
                    Ok(())
                })?,
            }
        }
        Ok(())
    }

    fn send_windowed(
        &mut self,
        rows: Vec<crate::ops::Windowed>,
        out: &mut BytesMut,
    ) -> Result<(), MergeError> {
        let spec = self.spec.clone();
        let Some(w) = spec.window() else {
            return Ok(());
        };
        let (visible, formats) = (self.visible, std::mem::take(&mut self.formats));
        let result = rows.iter().try_for_each(|r| {
            self.send(out, |out| WindowRows::write(w, r, visible, &formats, out))
        });
        self.formats = formats;
        result
    }

    /// One final row through OFFSET and LIMIT, built by `build` if sent.
    fn send(
        &mut self,
        out: &mut BytesMut,
        build: impl FnOnce(&mut BytesMut) -> Result<(), MergeError>,
    ) -> Result<(), MergeError> {
        match self.limit.admit() {
            Admit::Send => build(out),
            Admit::Skip | Admit::Full => Ok(()),
        }
    }
}
