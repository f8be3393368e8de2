//! The output of a combined group: HAVING decides whether it is kept,
//! then its visible row is built (group columns as the shards sent them,
//! aggregates finished, expressions over them evaluated), with the keys
//! of the final order and how many times the row goes out (INTERSECT ALL
//! and EXCEPT ALL send a row as often as it survives).

use bytes::BytesMut;

use crate::error::MergeError;
use crate::expr::{encodable, encode_value, Bound};
use crate::key::Key;
use crate::ops::group_aggregate::{output_oid, Group};
use crate::plan::{GroupPlan, GroupValue, OutputColumn};
use crate::row::{DataRow, RowWriter};

/// A group's row as it goes to the client.
pub struct Projected {
    /// The DataRow of the visible columns.
    pub row: BytesMut,
    /// Its keys in the final order ([`GroupPlan::final_sort`]).
    pub order: Vec<Key>,
    /// How many times the row is sent.
    pub copies: u64,
}

/// Builds the visible rows of combined groups.
pub struct GroupOutput {
    /// [`GroupPlan::exprs`] typed by the shards' columns.
    exprs: Vec<Bound>,
    visible: usize,
}

impl GroupOutput {
    /// Types the plan's expressions with the shards' columns; an output
    /// expression must be one the proxy can encode as its column's type
    /// (otherwise `0A000`).
    pub fn bind(g: &GroupPlan, types: &[u32], visible: usize) -> Result<GroupOutput, MergeError> {
        let oid_of = |c: usize| types.get(c).copied().unwrap_or(0);
        let input_oid = |v: &GroupValue| match v {
            GroupValue::Column(c) => oid_of(*c),
            GroupValue::Aggregate(s) => {
                let slot = &g.aggregates[*s];
                let oids: Vec<u32> = slot.partials.iter().map(|c| oid_of(*c)).collect();
                output_oid(slot.func, &oids)
            }
            GroupValue::Expr(_) => 0,
        };
        let exprs = g
            .exprs
            .iter()
            .map(|x| {
                let inputs: Vec<u32> = x.inputs.iter().map(input_oid).collect();
                let probes: Vec<u32> = x.probes.iter().map(|c| oid_of(*c)).collect();
                x.tree.bind(&inputs, &probes)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (j, out) in g.outputs.iter().enumerate().take(visible) {
            if let OutputColumn::Expr(n) = out {
                let (want, got) = (oid_of(j), exprs[*n].type_oid());
                let text = |o: u32| matches!(o, 25 | 1043);
                if !encodable(want) || !(want == got || (text(want) && text(got))) {
                    return Err(MergeError::sql(
                        "0A000",
                        format!("not supported across shards: an expression over aggregates of type oid {want} (column {})", j + 1),
                    ));
                }
            }
        }
        Ok(GroupOutput { exprs, visible })
    }

    /// The group's row, or `None` when HAVING drops it. `formats`: the
    /// client's result format codes.
    pub fn project(
        &self,
        g: &GroupPlan,
        types: &[u32],
        group: &Group,
        formats: &[i16],
    ) -> Result<Option<Projected>, MergeError> {
        let first = DataRow::parse(&group.first)?;
        let value = |v: GroupValue| self.value(g, types, group, &first, v);
        if let Some(h) = g.having {
            match value(GroupValue::Expr(h))? {
                Key::Bool(true) => {}
                Key::Bool(false) | Key::Null => return Ok(None),
                _ => {
                    return Err(MergeError::sql(
                        "42804",
                        "argument of HAVING must be type boolean",
                    ))
                }
            }
        }
        let mut row = BytesMut::new();
        let w = RowWriter::begin(&mut row, self.visible);
        for (j, out) in g.outputs.iter().enumerate().take(self.visible) {
            let format = format_of(formats, j);
            match out {
                OutputColumn::Group => RowWriter::put(&mut row, first.field(j)),
                OutputColumn::Aggregate(s) => {
                    let v = group.aggs[*s].finish(format)?;
                    RowWriter::put(&mut row, v.as_deref());
                }
                OutputColumn::Expr(n) => {
                    let v = value(GroupValue::Expr(*n))?;
                    let oid = types.get(j).copied().unwrap_or(0);
                    let v = encode_value(&v, oid, format)?;
                    RowWriter::put(&mut row, v.as_deref());
                }
            }
        }
        w.finish(&mut row);
        let copies = match g.repeat {
            None => 1,
            Some(n) => match value(GroupValue::Expr(n))? {
                Key::Int(c) => c.max(0) as u64,
                _ => 0,
            },
        };
        let order = g
            .final_sort
            .iter()
            .map(|k| value(k.value))
            .collect::<Result<_, _>>()?;
        Ok(Some(Projected { row, order, copies }))
    }

    fn value(
        &self,
        g: &GroupPlan,
        types: &[u32],
        group: &Group,
        first: &DataRow<'_>,
        v: GroupValue,
    ) -> Result<Key, MergeError> {
        let input = |v: GroupValue| match v {
            GroupValue::Column(c) => first.key(c, types),
            GroupValue::Aggregate(s) => group.aggs[s].key(),
            GroupValue::Expr(_) => Err(MergeError::sql("XX000", "shardgate: nested expression")),
        };
        let GroupValue::Expr(n) = v else {
            return input(v);
        };
        let values = g.exprs[n]
            .inputs
            .iter()
            .map(|i| input(*i))
            .collect::<Result<Vec<_>, _>>()?;
        self.exprs[n].eval(&values)
    }
}

/// Format code of visible column `j` under the client's codes (none: all
/// text; one: all columns; else per column).
pub fn format_of(codes: &[i16], j: usize) -> i16 {
    match codes {
        [] => 0,
        [one] => *one,
        many => many.get(j).copied().unwrap_or(0),
    }
}
