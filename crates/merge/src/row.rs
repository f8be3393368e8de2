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
    /// Where the first field starts.
    first: usize,
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
        DataRow::parse_from(bytes, 5)
    }

    /// [`DataRow::parse`] of a message's body (after its tag and length).
    pub fn parse_body(body: &'r [u8]) -> Result<DataRow<'r>, MergeError> {
        DataRow::parse_from(body, 0)
    }

    /// The fields of a DataRow whose field count is at `at` in `bytes`.
    fn parse_from(bytes: &'r [u8], at: usize) -> Result<DataRow<'r>, MergeError> {
        let n = bytes
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .filter(|n| *n >= 0)
            .ok_or_else(malformed)?;
        let first = at + 2;
        let mut pos = first;
        let mut fields = Vec::with_capacity(n as usize);
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
        Ok(DataRow {
            bytes,
            first,
            fields,
        })
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

    /// Every field in order (`None`: NULL).
    pub fn fields(&self) -> impl Iterator<Item = Option<&'r [u8]>> + '_ {
        let bytes = self.bytes;
        self.fields
            .iter()
            .map(move |f| f.map(|(a, b)| &bytes[a..b]))
    }

    /// Field `c` decoded as a comparable value of its column's type.
    pub fn key(&self, c: usize, types: &[u32]) -> Result<Key, MergeError> {
        decode_key(types.get(c).copied().unwrap_or(0), self.field(c))
    }

    /// Where the first `visible` fields end in the message.
    fn end_of(&self, visible: usize) -> usize {
        let mut end = self.first;
        for f in self.fields.iter().take(visible) {
            end = match f {
                Some((_, e)) => *e,
                None => end + 4,
            };
        }
        end
    }
}

/// The RowDescription message tag.
pub const ROW_DESCRIPTION: u8 = b'T';

/// One column of a [`RowDescription`]: where its name is, its type, and
/// where its entry ends in the message (its format code is the entry's
/// last two bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnEntry {
    name: (usize, usize),
    /// The column's type OID.
    pub type_oid: u32,
    /// The offset just past the column's entry.
    pub end: usize,
}

/// A RowDescription message and the entry of each column (zero-copy).
pub struct RowDescription<'r> {
    bytes: &'r [u8],
    columns: Vec<ColumnEntry>,
}

impl<'r> RowDescription<'r> {
    /// Finds the columns of a whole RowDescription message (tag and length
    /// included); `None` when it does not hold what it announces.
    pub fn parse(bytes: &'r [u8]) -> Option<RowDescription<'r>> {
        let n = i16::from_be_bytes(bytes.get(5..7)?.try_into().ok()?);
        let mut pos = 7;
        let mut columns = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let nul = bytes.get(pos..)?.iter().position(|c| *c == 0)?;
            let name = (pos, pos + nul);
            pos += nul + 1;
            // Table OID, attribute number, type OID, size, modifier, format.
            let entry = bytes.get(pos..pos + 18)?;
            let type_oid = u32::from_be_bytes(entry[6..10].try_into().ok()?);
            pos += 18;
            columns.push(ColumnEntry {
                name,
                type_oid,
                end: pos,
            });
        }
        Some(RowDescription { bytes, columns })
    }

    /// The columns in order.
    pub fn columns(&self) -> &[ColumnEntry] {
        &self.columns
    }

    /// The name of `column` (invalid UTF-8 replaced).
    pub fn name(&self, column: &ColumnEntry) -> std::borrow::Cow<'r, str> {
        String::from_utf8_lossy(&self.bytes[column.name.0..column.name.1])
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
    fn a_body_reads_as_its_message_and_a_negative_count_is_malformed() {
        let row = data_row(&[Some(b"ab"), None]);
        let body = DataRow::parse_body(&row[5..]).unwrap();
        let fields: Vec<_> = body.fields().collect();
        assert_eq!(fields, vec![Some(&b"ab"[..]), None]);
        assert!(DataRow::parse_body(&[0xff, 0xff]).is_err());
        assert!(DataRow::parse_body(&[]).is_err());
    }

    /// A RowDescription of `(name, type OID)` columns, every format text.
    fn row_description(columns: &[(&str, u32)]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u8(ROW_DESCRIPTION);
        out.put_i32(0);
        out.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            out.extend_from_slice(name.as_bytes());
            out.put_u8(0);
            out.put_u32(0);
            out.put_i16(0);
            out.put_u32(*oid);
            out.put_i16(-1);
            out.put_i32(-1);
            out.put_i16(0);
        }
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out
    }

    #[test]
    fn a_row_description_gives_names_types_and_entry_ends() {
        let msg = row_description(&[("id", 20), ("näme", 25)]);
        let d = RowDescription::parse(&msg).unwrap();
        let names: Vec<_> = d.columns().iter().map(|c| d.name(c).into_owned()).collect();
        assert_eq!(names, ["id", "näme"]);
        let types: Vec<u32> = d.columns().iter().map(|c| c.type_oid).collect();
        assert_eq!(types, [20, 25]);
        assert_eq!(d.columns()[1].end, msg.len());
        assert!(RowDescription::parse(&msg[..msg.len() - 1]).is_none());
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
