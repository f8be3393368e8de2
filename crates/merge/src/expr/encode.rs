//! A computed value in the client's format.

use bytes::{Bytes, BytesMut};

use super::convert::{output_text, Ty};
use crate::error::MergeError;
use crate::key::Key;

/// Whether [`encode_value`] can send a value of this type.
pub fn encodable(type_oid: u32) -> bool {
    matches!(
        Ty::of(type_oid),
        Ty::Bool | Ty::Int(_) | Ty::Numeric | Ty::Float4 | Ty::Float8 | Ty::Text
    )
}

/// `v` (of type `type_oid`) as a DataRow field: `format` 0 = text, 1 =
/// binary; `None` = NULL. Byte-identical to what Postgres sends.
pub fn encode_value(v: &Key, type_oid: u32, format: i16) -> Result<Option<Bytes>, MergeError> {
    if v.is_null() {
        return Ok(None);
    }
    let ty = Ty::of(type_oid);
    if !encodable(type_oid) {
        return Err(MergeError::unsupported(
            type_oid,
            "a value computed at the proxy",
        ));
    }
    if format == 0 {
        return Ok(Some(Bytes::from(output_text(v, ty)?)));
    }
    let wrong = || MergeError::malformed(type_oid, "computed value of another type");
    Ok(Some(match (v, ty) {
        (Key::Bool(b), Ty::Bool) => Bytes::copy_from_slice(&[u8::from(*b)]),
        (Key::Int(i), Ty::Int(w)) => {
            use super::convert::IntWidth;
            match w {
                IntWidth::I2 => Bytes::copy_from_slice(&(*i as i16).to_be_bytes()),
                IntWidth::I4 => Bytes::copy_from_slice(&(*i as i32).to_be_bytes()),
                IntWidth::I8 => Bytes::copy_from_slice(&i.to_be_bytes()),
            }
        }
        (Key::Numeric(n), Ty::Numeric) => {
            let mut out = BytesMut::new();
            n.to_binary(&mut out);
            out.freeze()
        }
        (Key::Float(f), Ty::Float4) => Bytes::copy_from_slice(&(*f as f32).to_be_bytes()),
        (Key::Float(f), Ty::Float8) => Bytes::copy_from_slice(&f.to_be_bytes()),
        (Key::Bytes(b), Ty::Text) => b.clone(),
        _ => return Err(wrong()),
    }))
}
