//! Window functions computed at the proxy: the merged rows (sorted by the
//! window's keys) go through [`Window`], and each row is sent with its
//! window columns filled in (docs/ARCHITECTURE.md §9).

use bytes::{BufMut, BytesMut};
use shardgate_merge::ops::{Window, WindowFunc, WindowRow, WindowValue};
use shardgate_merge::{oid, Key};
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::PgError;
use shardgate_router::merge_plan::WindowPlan;

use super::{field, format_of, group_bytes, key_at, merge_error, put_field, row_fields, Head, Run};

impl Run {
    /// Feeds one merged row to the window; sends the rows of the
    /// partition it ends.
    pub(super) fn window_row(
        &mut self,
        w: &WindowPlan,
        head: Head,
        cout: &mut BytesMut,
    ) -> Result<(), PgError> {
        let fields = row_fields(&head.row)?;
        let args: Vec<Option<Vec<u8>>> = w
            .calls
            .iter()
            .map(|c| {
                c.arg
                    .and_then(|col| field(&head.row, &fields, col).map(<[u8]>::to_vec))
            })
            .collect();
        let columns = self.columns.as_ref().ok_or_else(|| {
            PgError::error(
                "08P01",
                "shardgate: a shard sent rows before describing them",
            )
        })?;
        let values = w
            .calls
            .iter()
            .map(|c| match c.key {
                Some(col) => key_at(&head.row, &fields, columns, col),
                None => Ok(Key::Null),
            })
            .collect::<Result<Vec<Key>, PgError>>()?;
        let bytes = group_bytes(&values, &head.row)
            + group_bytes(&head.keys, &head.row)
            + args.iter().flatten().map(Vec::len).sum::<usize>();
        let (pk, ok) = (w.partition_keys, w.order_keys);
        let mut keys = head.keys;
        let order = keys.get(pk..).map(|k| k.to_vec()).unwrap_or_default();
        keys.truncate(pk);
        let row = WindowRow {
            partition: keys,
            order: order.into_iter().take(ok).collect(),
            args,
            keys: values,
            payload: head.row,
        };
        let limit = self.memory_limit;
        let op = self
            .window
            .get_or_insert_with(|| Window::new(w.calls.iter().map(|c| c.func).collect(), limit));
        let done = op.push(row, bytes).map_err(|e| {
            merge_error(e).with_hint(
                "Add a PARTITION BY, restrict the query to one shard, or raise proxy.merge_memory_limit in proxy.toml.",
            )
        })?;
        self.send_windowed(w, done, cout)
    }

    /// Refuses `min`/`max` over a column whose type Postgres's `min`/`max`
    /// would not return as it is (`varchar` gives `text`; `bool`, `json`,
    /// ... have none).
    pub(super) fn check_window_types(&self, types: &[u32]) -> Result<(), PgError> {
        let Some(w) = &self.plan.window else {
            return Ok(());
        };
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
                return Err(PgError::error(
                    "0A000",
                    format!("not supported across shards: min/max OVER (...) of type oid {t} with window functions whose PARTITION BY does not include the shard key"),
                ));
            }
        }
        Ok(())
    }

    /// Every row merged: the last partition goes out.
    pub(super) fn finish_window(&mut self, cout: &mut BytesMut) -> Result<(), PgError> {
        let plan = self.plan.clone();
        let (Some(w), Some(op)) = (&plan.window, self.window.as_mut()) else {
            return Ok(());
        };
        let done = op.finish();
        self.send_windowed(w, done, cout)
    }

    fn send_windowed(
        &mut self,
        w: &WindowPlan,
        rows: Vec<(BytesMut, Vec<WindowValue>)>,
        cout: &mut BytesMut,
    ) -> Result<(), PgError> {
        let formats = self.formats.clone();
        for (row, values) in rows {
            self.output(cout, |visible, out| {
                let fields = row_fields(&row)?;
                let start = out.len();
                out.put_u8(btag::DATA_ROW);
                out.put_i32(0);
                out.put_i16(visible as i16);
                for j in 0..visible {
                    match w.calls.iter().position(|c| c.output == j) {
                        Some(k) => {
                            let binary = format_of(&formats, j) == 1;
                            put_field(out, values[k].encode(binary).as_deref());
                        }
                        None => put_field(out, field(&row, &fields, j)),
                    }
                }
                backend::patch_len(out, start);
                Ok(())
            })?;
        }
        Ok(())
    }
}
