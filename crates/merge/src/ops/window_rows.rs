//! Window functions over merged DataRows: each row (sorted by the
//! window's partition and order keys) goes through [`Window`], and comes
//! out with its window columns filled in.

use bytes::BytesMut;

use crate::error::MergeError;
use crate::key::Key;
use crate::oid;
use crate::ops::bounded_sort::row_bytes;
use crate::ops::group_output::format_of;
use crate::ops::window::{Window, WindowFunc, WindowRow, WindowValue};
use crate::plan::WindowPlan;
use crate::row::{DataRow, RowWriter};

/// A merged row and its window values.
pub type Windowed = (BytesMut, Vec<WindowValue>);

/// Computes a [`WindowPlan`] over DataRows, holding one partition at a
/// time within a byte budget.
pub struct WindowRows {
    op: Window<BytesMut>,
}

impl WindowRows {
    /// The window of `w`, holding at most `budget` bytes of one partition.
    pub fn new(w: &WindowPlan, budget: usize) -> WindowRows {
        WindowRows {
            op: Window::new(w.calls.iter().map(|c| c.func).collect(), budget),
        }
    }

    /// Refuses `min`/`max` over a column whose type Postgres's `min`/`max`
    /// would not return as it is (`varchar` gives `text`; `bool`, `json`,
    /// ... have none).
    pub fn check_types(w: &WindowPlan, types: &[u32]) -> Result<(), MergeError> {
        for c in &w.calls {
            if !matches!(c.func, WindowFunc::Min(_) | WindowFunc::Max(_)) {
                continue;
            }
            let t = types.get(c.output).copied().unwrap_or(0);
            let kept = matches!(
                t,
                oid::INT2
                    | oid::INT4
                    | oid::INT8
                    | oid::FLOAT4
                    | oid::FLOAT8
                    | oid::NUMERIC
                    | oid::TEXT
                    | oid::BPCHAR
                    | oid::DATE
                    | oid::TIME
                    | oid::TIMESTAMP
                    | oid::TIMESTAMPTZ
            );
            if !kept {
                return Err(MergeError::sql(
                    "0A000",
                    format!("not supported across shards: min/max OVER (...) of type oid {t} with window functions whose PARTITION BY does not include the shard key"),
                ));
            }
        }
        Ok(())
    }

    /// Adds one merged row (`keys`: its merge keys, partition keys first);
    /// returns the rows of the partition it ends.
    pub fn push(
        &mut self,
        w: &WindowPlan,
        types: &[u32],
        keys: Vec<Key>,
        row: BytesMut,
    ) -> Result<Vec<Windowed>, MergeError> {
        let view = DataRow::parse(&row)?;
        let args: Vec<Option<Vec<u8>>> = w
            .calls
            .iter()
            .map(|c| c.arg.and_then(|col| view.field(col).map(<[u8]>::to_vec)))
            .collect();
        let values = w
            .calls
            .iter()
            .map(|c| match c.key {
                Some(col) => view.key(col, types),
                None => Ok(Key::Null),
            })
            .collect::<Result<Vec<Key>, MergeError>>()?;
        let bytes = row_bytes(&values, &row)
            + row_bytes(&keys, &row)
            + args.iter().flatten().map(Vec::len).sum::<usize>();
        let (pk, ok) = (w.partition_keys, w.order_keys);
        let mut partition = keys;
        let order = partition.get(pk..).map(|k| k.to_vec()).unwrap_or_default();
        partition.truncate(pk);
        drop(view);
        self.op.push(
            WindowRow {
                partition,
                order: order.into_iter().take(ok).collect(),
                args,
                keys: values,
                payload: row,
            },
            bytes,
        )
    }

    /// Every row merged: the last partition's rows.
    pub fn finish(&mut self) -> Vec<Windowed> {
        self.op.finish()
    }

    /// Writes a windowed row's first `visible` columns, the window columns
    /// filled in (`formats`: the client's result format codes).
    pub fn write(
        w: &WindowPlan,
        (row, values): &Windowed,
        visible: usize,
        formats: &[i16],
        out: &mut BytesMut,
    ) -> Result<(), MergeError> {
        let view = DataRow::parse(row)?;
        let writer = RowWriter::begin(out, visible);
        for j in 0..visible {
            match w.calls.iter().position(|c| c.output == j) {
                Some(k) => {
                    let binary = format_of(formats, j) == 1;
                    RowWriter::put(out, values[k].encode(binary).as_deref());
                }
                None => RowWriter::put(out, view.field(j)),
            }
        }
        writer.finish(out);
        Ok(())
    }
}
