//! Combining `string_agg`, `array_agg` and `json_agg` partials from several shards.
//!
//! The combined value is the partial values of a group's rows concatenated: in
//! arrival order without `ORDER BY` inside (any order is right then), otherwise in
//! the order of the rows' ORDER BY keys ([`SortedGather`]; the planner makes the
//! shards group by those keys too, so each row holds one combination of them):
//!
//! - `string_agg(x, sep)`: partials `[string_agg(...), sep::text]`; the non-NULL
//!   partial strings joined by the (constant) separator, NULL separator = none.
//! - `array_agg(x)`: one partial, the array in the client's format: binary arrays
//!   (one dimension) concatenated element by element, text arrays `{a,b}` `{c}` joined
//!   as `{a,b,c}` (element quoting does not depend on the neighbours). Arrays of arrays,
//!   and `box` arrays (whose text delimiter is `;`) are refused.
//! - `json_agg(x)` / `jsonb_agg(x)`: one partial in the client's format, `[a, b]` and
//!   `[c]` joined as `[a, b, c]` (jsonb binary: after its version byte). `json_agg` puts
//!   a newline before rows and arrays after the first: joining a partial that starts
//!   with `{` or `[` is refused (a json object input would not have it).
//!
//! A group's gathered values (and keys) live until the group is emitted.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::MergeError;
use crate::key::Key;
use crate::oid;

/// `_box`: its text output separates elements with `;`.
const BOX_ARRAY: u32 = 1020;

/// The gathered value of one `string_agg` or `array_agg`.
#[derive(Debug, Clone)]
pub(crate) enum Gathered {
    /// `string_agg` over text.
    Text {
        /// The separator, from the first row that had one.
        sep: Option<Bytes>,
        value: Option<BytesMut>,
    },
    /// `array_agg`, in the client's format.
    Array {
        array_oid: u32,
        value: Option<ArrayAcc>,
    },
    /// `json_agg` / `jsonb_agg`: the text without its closing bracket, and the jsonb
    /// binary version byte when the partials had one.
    Json {
        type_oid: u32,
        value: Option<BytesMut>,
        version: Option<u8>,
    },
}

/// An array being concatenated.
#[derive(Debug, Clone)]
pub(crate) enum ArrayAcc {
    /// Text output without its closing brace: `{a,b`.
    Text(BytesMut),
    /// Binary: element count, NULL flag, element type and the elements' bytes.
    Binary {
        len: i32,
        has_null: bool,
        elem_oid: u32,
        elems: BytesMut,
    },
}

fn unsupported_array(type_oid: u32, what: &str) -> MergeError {
    MergeError::unsupported(type_oid, format!("array_agg of {what}"))
}

fn read_i32(type_oid: u32, v: &[u8], at: usize) -> Result<i32, MergeError> {
    v.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| MergeError::malformed(type_oid, "truncated array"))
}

impl Gathered {
    /// A `string_agg` state for partials of types `[value, separator]` (text only).
    pub(crate) fn string_agg(partial_oids: &[u32]) -> Result<Gathered, MergeError> {
        match partial_oids {
            [oid::TEXT, oid::TEXT] => Ok(Gathered::Text {
                sep: None,
                value: None,
            }),
            [other, _] => Err(MergeError::unsupported(*other, "string_agg")),
            _ => Err(MergeError::malformed(
                oid::TEXT,
                "string_agg expects 2 partials",
            )),
        }
    }

    /// An `array_agg` state for a partial of array type `array_oid`.
    pub(crate) fn array_agg(array_oid: u32) -> Result<Gathered, MergeError> {
        if array_oid == BOX_ARRAY {
            return Err(unsupported_array(array_oid, "box"));
        }
        Ok(Gathered::Array {
            array_oid,
            value: None,
        })
    }

    /// A `json_agg` (`json` result) or `jsonb_agg` (`jsonb`) state.
    pub(crate) fn json_agg(type_oid: u32) -> Result<Gathered, MergeError> {
        match type_oid {
            oid::JSON | oid::JSONB => Ok(Gathered::Json {
                type_oid,
                value: None,
                version: None,
            }),
            other => Err(MergeError::unsupported(other, "json_agg")),
        }
    }

    /// Adds one shard row's partials.
    pub(crate) fn add(&mut self, partials: &[Option<&[u8]>]) -> Result<(), MergeError> {
        match self {
            Gathered::Text { sep, value } => {
                if sep.is_none() {
                    *sep = partials
                        .get(1)
                        .copied()
                        .flatten()
                        .map(Bytes::copy_from_slice);
                }
                let Some(v) = partials.first().copied().flatten() else {
                    return Ok(());
                };
                match value {
                    None => *value = Some(BytesMut::from(v)),
                    Some(out) => {
                        if let Some(s) = sep {
                            out.extend_from_slice(s);
                        }
                        out.extend_from_slice(v);
                    }
                }
            }
            Gathered::Array { array_oid, value } => {
                if let Some(v) = partials.first().copied().flatten() {
                    add_array(*array_oid, value, v)?;
                }
            }
            Gathered::Json {
                type_oid,
                value,
                version,
            } => {
                if let Some(v) = partials.first().copied().flatten() {
                    add_json(*type_oid, value, version, v)?;
                }
            }
        }
        Ok(())
    }

    /// The combined value as the client gets it (the partials already are in its
    /// format); `None` = NULL.
    pub(crate) fn finish(&self) -> Option<Bytes> {
        match self {
            Gathered::Text { value, .. } => value.as_ref().map(|v| Bytes::copy_from_slice(v)),
            Gathered::Array { value, .. } => value.as_ref().map(|acc| match acc {
                ArrayAcc::Text(t) => {
                    let mut out = BytesMut::with_capacity(t.len() + 1);
                    out.extend_from_slice(t);
                    out.put_u8(b'}');
                    out.freeze()
                }
                ArrayAcc::Binary {
                    len,
                    has_null,
                    elem_oid,
                    elems,
                } => {
                    let mut out = BytesMut::with_capacity(elems.len() + 20);
                    out.put_i32(1);
                    out.put_i32(i32::from(*has_null));
                    out.put_u32(*elem_oid);
                    out.put_i32(*len);
                    out.put_i32(1);
                    out.extend_from_slice(elems);
                    out.freeze()
                }
            }),
            Gathered::Json { value, version, .. } => value.as_ref().map(|t| {
                let mut out = BytesMut::with_capacity(t.len() + 2);
                out.extend(version.iter());
                out.extend_from_slice(t);
                out.put_u8(b']');
                out.freeze()
            }),
        }
    }

    /// The combined value as a [`Key`] (`string_agg` only).
    pub(crate) fn key(&self) -> Result<Key, MergeError> {
        match self {
            Gathered::Text { value, .. } => Ok(value
                .as_ref()
                .map_or(Key::Null, |v| Key::Bytes(Bytes::copy_from_slice(v)))),
            Gathered::Array {
                array_oid: type_oid,
                ..
            }
            | Gathered::Json { type_oid, .. } => Err(MergeError::unsupported(
                *type_oid,
                "comparing array_agg/json_agg results (HAVING, ORDER BY)",
            )),
        }
    }
}

/// Appends one shard's array (text `{...}` or binary) to the gathered one.
fn add_array(array_oid: u32, acc: &mut Option<ArrayAcc>, v: &[u8]) -> Result<(), MergeError> {
    let malformed = |r: &str| MergeError::malformed(array_oid, r.to_string());
    if matches!(v.first(), Some(b'{' | b'[')) {
        // Text: `[1:2]={...}` (lower bound not 1) cannot come from array_agg.
        let inner = v
            .strip_prefix(b"{")
            .and_then(|r| r.strip_suffix(b"}"))
            .ok_or_else(|| unsupported_array(array_oid, "arrays with bounds"))?;
        if inner.first() == Some(&b'{') {
            return Err(unsupported_array(array_oid, "arrays (several dimensions)"));
        }
        match acc {
            None => *acc = Some(ArrayAcc::Text(BytesMut::from(&v[..v.len() - 1]))),
            Some(ArrayAcc::Text(t)) => {
                if !inner.is_empty() {
                    if t.len() > 1 {
                        t.put_u8(b',');
                    }
                    t.extend_from_slice(inner);
                }
            }
            Some(ArrayAcc::Binary { .. }) => return Err(malformed("text and binary arrays mixed")),
        }
        return Ok(());
    }
    let ndim = read_i32(array_oid, v, 0)?;
    if ndim == 0 {
        return Ok(());
    }
    if ndim != 1 {
        return Err(unsupported_array(array_oid, "arrays (several dimensions)"));
    }
    let flags = read_i32(array_oid, v, 4)?;
    let elem = read_i32(array_oid, v, 8)? as u32;
    let n = read_i32(array_oid, v, 12)?;
    let body = v.get(20..).ok_or_else(|| malformed("truncated array"))?;
    match acc {
        None => {
            *acc = Some(ArrayAcc::Binary {
                len: n,
                has_null: flags != 0,
                elem_oid: elem,
                elems: BytesMut::from(body),
            })
        }
        Some(ArrayAcc::Binary {
            len,
            has_null,
            elem_oid,
            elems,
        }) => {
            if *elem_oid != elem {
                return Err(malformed("element types differ between shards"));
            }
            *len = len.checked_add(n).ok_or_else(|| {
                MergeError::Overflow("array size exceeds the maximum allowed".into())
            })?;
            *has_null |= flags != 0;
            elems.extend_from_slice(body);
        }
        Some(ArrayAcc::Text(_)) => return Err(malformed("text and binary arrays mixed")),
    }
    Ok(())
}

/// Appends one shard's `json_agg`/`jsonb_agg` value (`[...]`, jsonb binary with its
/// version byte first) to the gathered one.
fn add_json(
    type_oid: u32,
    acc: &mut Option<BytesMut>,
    version: &mut Option<u8>,
    v: &[u8],
) -> Result<(), MergeError> {
    let (ver, text) = match v.first() {
        Some(b'[') => (None, v),
        Some(b) if type_oid == oid::JSONB => (Some(*b), &v[1..]),
        _ => return Err(MergeError::malformed(type_oid, "not a json array")),
    };
    let inner = text
        .strip_prefix(b"[")
        .and_then(|r| r.strip_suffix(b"]"))
        .ok_or_else(|| MergeError::malformed(type_oid, "not a json array"))?;
    let Some(out) = acc else {
        *version = ver;
        *acc = Some(BytesMut::from(&text[..text.len() - 1]));
        return Ok(());
    };
    if *version != ver {
        return Err(MergeError::malformed(type_oid, "json formats mixed"));
    }
    if inner.is_empty() {
        return Ok(());
    }
    if type_oid == oid::JSON && matches!(inner.first(), Some(b'{' | b'[')) {
        return Err(MergeError::unsupported(
            type_oid,
            "json_agg of rows, arrays or json values",
        ));
    }
    if out.len() > 1 {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(inner);
    Ok(())
}

/// A gathered aggregate with `ORDER BY` inside whose rows arrive in another order:
/// each row's partials are kept with its ORDER BY keys and combined in that order
/// (stable: ties stay in arrival order, which Postgres leaves unspecified too).
#[derive(Debug, Clone)]
pub(crate) struct SortedGather {
    base: Gathered,
    /// Per key: `(desc, nulls_first)`.
    order: Vec<(bool, bool)>,
    rows: Vec<(Vec<Key>, Vec<Option<Bytes>>)>,
}

impl SortedGather {
    /// Sorts the rows of `base` by keys in `order` before combining them.
    pub(crate) fn new(base: Gathered, order: Vec<(bool, bool)>) -> SortedGather {
        SortedGather {
            base,
            order,
            rows: Vec::new(),
        }
    }

    /// Keeps one row's partials with its ORDER BY keys.
    pub(crate) fn add(
        &mut self,
        keys: Vec<Key>,
        partials: &[Option<&[u8]>],
    ) -> Result<(), MergeError> {
        if keys.len() != self.order.len() {
            return Err(MergeError::malformed(
                oid::TEXT,
                format!(
                    "expected {} ORDER BY keys, got {}",
                    self.order.len(),
                    keys.len()
                ),
            ));
        }
        let values = partials
            .iter()
            .map(|p| p.map(Bytes::copy_from_slice))
            .collect();
        self.rows.push((keys, values));
        Ok(())
    }

    /// The rows combined in ORDER BY order.
    pub(crate) fn combined(&self) -> Result<Gathered, MergeError> {
        let mut rows: Vec<&(Vec<Key>, Vec<Option<Bytes>>)> = self.rows.iter().collect();
        rows.sort_by(|a, b| {
            a.0.iter()
                .zip(&b.0)
                .zip(&self.order)
                .map(|((x, y), (desc, nulls_first))| x.cmp_sort(y, *desc, *nulls_first))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut out = self.base.clone();
        for (_, values) in rows {
            let values: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            out.add(&values)?;
        }
        Ok(out)
    }
}
