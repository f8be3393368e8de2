//! Typed result messages of the admin console: RowDescription with real
//! type OIDs and sizes, DataRow in text or binary per column,
//! ParameterDescription.

use bytes::{BufMut, BytesMut};
use shardgate_admin::{AdminError, ColType, Value};
use shardgate_protocol::backend::{patch_len, tag};
use shardgate_protocol::frontend::put_cstr;

/// The format of column `i` given a Bind's result format codes (none: all
/// text; one: all that; otherwise one per column).
pub fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// Appends a RowDescription.
pub fn row_description(columns: &[(String, ColType)], formats: &[i16], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::ROW_DESCRIPTION);
    out.put_i32(0);
    out.put_i16(columns.len() as i16);
    for (i, (name, ty)) in columns.iter().enumerate() {
        put_cstr(out, name.as_bytes());
        out.put_u32(0);
        out.put_i16(0);
        out.put_u32(ty.oid());
        out.put_i16(ty.type_size());
        out.put_i32(-1);
        out.put_i16(format_of(formats, i));
    }
    patch_len(out, start);
}

/// Appends a DataRow of `values` typed by `columns`.
pub fn data_row(
    values: &[Value],
    columns: &[(String, ColType)],
    formats: &[i16],
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> Result<(), AdminError> {
    let start = out.len();
    out.put_u8(tag::DATA_ROW);
    out.put_i32(0);
    out.put_i16(values.len() as i16);
    for (i, (v, (_, ty))) in values.iter().zip(columns).enumerate() {
        if v.is_null() {
            out.put_i32(-1);
            continue;
        }
        scratch.clear();
        if format_of(formats, i) == 1 {
            v.encode_binary(*ty, scratch)?;
        } else {
            v.encode_text(*ty, scratch)?;
        }
        out.put_i32(scratch.len() as i32);
        out.extend_from_slice(scratch);
    }
    patch_len(out, start);
    Ok(())
}

/// Appends a ParameterDescription.
pub fn parameter_description(types: &[ColType], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::PARAMETER_DESCRIPTION);
    out.put_i32(0);
    out.put_i16(types.len() as i16);
    for t in types {
        out.put_u32(t.oid());
    }
    patch_len(out, start);
}

/// The column type of a parameter type OID a client named in Parse (0:
/// not named).
pub fn type_of_oid(oid: u32) -> Option<ColType> {
    Some(match oid {
        16 => ColType::Bool,
        20 => ColType::Int8,
        21 | 23 => ColType::Int4,
        700 | 701 | 1700 => ColType::Float8,
        25 | 1043 | 1042 | 19 | 705 => ColType::Text,
        1114 | 1184 => ColType::Timestamptz,
        _ => return None,
    })
}

/// Decodes a bound parameter the client sent in binary for type `oid`,
/// for the widths `decode_param` has no column type of (int2, float4,
/// numeric); `None` for other types.
pub fn decode_binary_oid(bytes: &[u8], oid: u32) -> Option<Result<Value, AdminError>> {
    let bad = || {
        Err(AdminError::Value {
            code: "22P03",
            message: format!("incorrect binary data format for a parameter of type oid {oid}"),
        })
    };
    Some(match oid {
        21 => match <[u8; 2]>::try_from(bytes) {
            Ok(b) => Ok(Value::Int(i64::from(i16::from_be_bytes(b)))),
            Err(_) => bad(),
        },
        700 => match <[u8; 4]>::try_from(bytes) {
            Ok(b) => Ok(Value::Float(f64::from(f32::from_be_bytes(b)))),
            Err(_) => bad(),
        },
        1700 => numeric(bytes).map_or_else(bad, Ok),
        _ => return None,
    })
}

/// A binary `numeric` as an integer (no fraction, fits) or a float.
fn numeric(b: &[u8]) -> Option<Value> {
    let word = |i: usize| -> Option<i16> { Some(i16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(2)?, word(4)? as u16, word(6)?);
    if sign == 0xC000 {
        return Some(Value::Float(f64::NAN));
    }
    let mut int: Option<i64> = (dscale == 0).then_some(0);
    let mut float = 0f64;
    for i in 0..ndigits.max(0) as usize {
        let d = word(8 + 2 * i)?;
        let exp = i32::from(weight) - i as i32;
        float += f64::from(d) * 10000f64.powi(exp);
        int = match int {
            Some(v) if exp >= 0 => 10000i64
                .checked_pow(exp as u32)
                .and_then(|p| p.checked_mul(i64::from(d)))
                .and_then(|x| v.checked_add(x)),
            _ => None,
        };
    }
    let negative = sign == 0x4000;
    Some(match int {
        Some(v) => Value::Int(if negative { -v } else { v }),
        None => Value::Float(if negative { -float } else { float }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_typed_per_column_format() {
        let cols = vec![
            ("n".to_owned(), ColType::Int4),
            ("t".to_owned(), ColType::Text),
        ];
        let mut out = BytesMut::new();
        row_description(&cols, &[1, 0], &mut out);
        assert_eq!(out[0], b'T');
        let mut scratch = Vec::new();
        let mut out = BytesMut::new();
        data_row(
            &[Value::Int(7), Value::Null],
            &cols,
            &[1],
            &mut scratch,
            &mut out,
        )
        .unwrap();
        // 'D', length, 2 columns, int4 binary (4 bytes: 7), NULL.
        assert_eq!(&out[7..15], &[0, 0, 0, 4, 0, 0, 0, 7]);
        assert_eq!(&out[15..19], &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(format_of(&[], 3), 0);
        assert_eq!(type_of_oid(23), Some(ColType::Int4));
        assert_eq!(type_of_oid(0), None);
    }

    #[test]
    fn narrow_binary_parameters() {
        assert_eq!(
            decode_binary_oid(&[0, 7], 21).unwrap().unwrap(),
            Value::Int(7)
        );
        assert!(decode_binary_oid(&[0, 0, 7], 21).unwrap().is_err());
        assert_eq!(
            decode_binary_oid(&1.5f32.to_be_bytes(), 700)
                .unwrap()
                .unwrap(),
            Value::Float(1.5)
        );
        // numeric 123456789: ndigits 3, weight 2, sign +, dscale 0, digits 1 2345 6789
        let n = [0, 3, 0, 2, 0, 0, 0, 0, 0, 1, 0x09, 0x29, 0x1a, 0x85];
        assert_eq!(
            decode_binary_oid(&n, 1700).unwrap().unwrap(),
            Value::Int(123_456_789)
        );
        // -1.5: ndigits 2, weight 0, sign -, dscale 1, digits 1 5000
        let n = [0, 2, 0, 0, 0x40, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(
            decode_binary_oid(&n, 1700).unwrap().unwrap(),
            Value::Float(-1.5)
        );
        assert!(decode_binary_oid(&[1], 25).is_none());
    }
}
