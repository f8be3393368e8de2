//! DataRow messages as the merge reads and writes them: a zero-copy view
//! of a shard's row ([`DataRow`]) and a builder for the rows the proxy
//! computes ([`RowWriter`]).

use bytes::{BufMut, BytesMut};

use crate::error::MergeError;
use crate::key::{decode_key, Key};

/// The DataRow message tag.
pub const DATA_ROW: u8 = b'D';

/// A DataRow message and the byte range of each field (zero-copy).
pub struct DataRow<'r> {
    bytes: &'r [u8],
    fields: Vec<Option<(usize, usize)>>,
}

fn malformed() -> MergeError {
    MergeError::sql("08P01", "shardgate: a shard sent a malformed DataRow")
}

impl<'r> DataRow<'r> {
    /// Finds the fields of a whole DataRow message (tag and length
    /// included); a message that does not hold what it announces is an
    /// `08P01` protocol error.
    pub fn parse(bytes: &'r [u8]) -> Result<DataRow<'r>, MergeError> {
        let n = bytes
            .get(5..7)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(malformed)?;
        let mut pos = 7;
        let mut fields = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let len = bytes
                .get(pos..pos + 4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(malformed)?;
            pos += 4;
            if len < 0 {
                fields.push(None);
            } else {
                let end = pos.checked_add(len as usize).ok_or_else(malformed)?;
                if end > bytes.len() {
                    return Err(malformed());
                }
                fields.push(Some((pos, end)));
                pos = end;
            }
        }
        Ok(DataRow { bytes, fields })
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// No fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `c` (`None`: NULL or no such field).
    pub fn field(&self, c: usize) -> Option<&'r [u8]> {
        self.fields
            .get(c)
            .copied()
            .flatten()
            .map(|(a, b)| &self.bytes[a..b])
    }

    /// Field `c` decoded as a comparable value of its column's type.
    pub fn key(&self, c: usize, types: &[u32]) -> Result<Key, MergeError> {
        decode_key(types.get(c).copied().unwrap_or(0), self.field(c))
    }

    /// Where the first `visible` fields end in the message.
    fn end_of(&self, visible: usize) -> usize {
        let mut end = 7;
        for f in self.fields.iter().take(visible) {
            end = match f {
                Some((_, e)) => *e,
                None => end + 4,
            };
        }
        end
    }
}

/// Copies a DataRow without its fields after the first `visible` (the
/// hidden columns the shards computed for the merge).
pub fn strip_hidden(row: &[u8], visible: usize, out: &mut BytesMut) -> Result<(), MergeError> {
    let n = row
        .get(5..7)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(malformed)?;
    if n.max(0) as usize <= visible {
        out.extend_from_slice(row);
        return Ok(());
    }
    let end = DataRow::parse(row)?.end_of(visible);
    let w = RowWriter::begin(out, visible);
    out.extend_from_slice(&row[7..end]);
    w.finish(out);
    Ok(())
}

/// A DataRow being written field by field into a buffer.
#[must_use = "finish() sets the message length"]
pub struct RowWriter {
    start: usize,
}

impl RowWriter {
    /// Starts a row of `fields` fields at the end of `out`.
    pub fn begin(out: &mut BytesMut, fields: usize) -> RowWriter {
        let start = out.len();
        out.put_u8(DATA_ROW);
        out.put_i32(0);
        out.put_i16(fields as i16);
        RowWriter { start }
    }

    /// Appends one field (`None`: NULL).
    pub fn put(out: &mut BytesMut, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.extend_from_slice(v);
            }
            None => out.put_i32(-1),
        }
    }

    /// Sets the message length once every field is written.
    pub fn finish(self, out: &mut BytesMut) {
        let len = (out.len() - self.start - 1) as i32;
        out[self.start + 1..self.start + 5].copy_from_slice(&len.to_be_bytes());
    }
}

/// A DataRow of the given fields (for tests and rows built whole).
pub fn data_row(fields: &[Option<&[u8]>]) -> BytesMut {
    let mut out = BytesMut::new();
    let w = RowWriter::begin(&mut out, fields.len());
    for f in fields {
        RowWriter::put(&mut out, *f);
    }
    w.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_nulls_are_found() {
        let row = data_row(&[Some(b"ab"), None, Some(b"")]);
        let view = DataRow::parse(&row).unwrap();
        assert_eq!(view.len(), 3);
        assert_eq!(view.field(0), Some(&b"ab"[..]));
        assert_eq!(view.field(1), None);
        assert_eq!(view.field(2), Some(&b""[..]));
        assert_eq!(view.field(9), None);
    }

    #[test]
    fn a_field_longer_than_the_message_is_a_protocol_error() {
        let mut row = data_row(&[Some(b"abcd")]);
        row.truncate(row.len() - 1);
        let e = DataRow::parse(&row).err().unwrap();
        assert_eq!(e.sqlstate(), "08P01");
        assert!(DataRow::parse(&row[..3]).is_err());
    }

    #[test]
    fn hidden_fields_are_stripped() {
        let row = data_row(&[Some(b"x"), None, Some(b"hidden")]);
        let mut out = BytesMut::new();
        strip_hidden(&row, 2, &mut out).unwrap();
        assert_eq!(out, data_row(&[Some(b"x"), None]));
        out.clear();
        strip_hidden(&row, 3, &mut out).unwrap();
        assert_eq!(out, row);
    }
}
