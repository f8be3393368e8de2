//! Combining `bit_and`, `bit_or` and `bit_xor` over int2/int4/int8 from several shards:
//! each shard sends the aggregate itself and the proxy applies the same operation to
//! the shards' values (NULL = no rows; the operations are associative and commutative).

use bytes::Bytes;

use crate::error::MergeError;
use crate::oid;

/// Which bitwise aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOp {
    /// `bit_and(x)`.
    And,
    /// `bit_or(x)`.
    Or,
    /// `bit_xor(x)`.
    Xor,
}

impl BitOp {
    /// The operation a Postgres aggregate name computes.
    pub fn from_name(name: &str) -> Option<BitOp> {
        Some(match name {
            "bit_and" => BitOp::And,
            "bit_or" => BitOp::Or,
            "bit_xor" => BitOp::Xor,
            _ => return None,
        })
    }

    /// The aggregate's name.
    pub fn name(self) -> &'static str {
        match self {
            BitOp::And => "bit_and",
            BitOp::Or => "bit_or",
            BitOp::Xor => "bit_xor",
        }
    }
}

/// The combined value of one bitwise aggregate over an integer type.
#[derive(Debug, Clone)]
pub(crate) struct Bits {
    op: BitOp,
    type_oid: u32,
    value: Option<i64>,
}

impl Bits {
    /// The state for a partial of type `type_oid` (int2, int4 or int8 only).
    pub(crate) fn new(op: BitOp, type_oid: u32) -> Result<Bits, MergeError> {
        match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 => Ok(Bits {
                op,
                type_oid,
                value: None,
            }),
            _ => Err(MergeError::unsupported(type_oid, op.name())),
        }
    }

    fn width(&self) -> usize {
        match self.type_oid {
            oid::INT2 => 2,
            oid::INT4 => 4,
            _ => 8,
        }
    }

    /// Adds one shard's value (binary format; `None` = NULL).
    pub(crate) fn add(&mut self, partial: Option<&[u8]>) -> Result<(), MergeError> {
        let Some(v) = partial else {
            return Ok(());
        };
        let v = match v.len() {
            2 if self.width() == 2 => i64::from(i16::from_be_bytes([v[0], v[1]])),
            4 if self.width() == 4 => i64::from(i32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            8 if self.width() == 8 => i64::from_be_bytes(
                v.try_into()
                    .map_err(|_| MergeError::malformed(self.type_oid, "expected 8 bytes"))?,
            ),
            _ => {
                return Err(MergeError::malformed(
                    self.type_oid,
                    format!("expected {} bytes", self.width()),
                ))
            }
        };
        self.value = Some(match (self.value, self.op) {
            (None, _) => v,
            (Some(cur), BitOp::And) => cur & v,
            (Some(cur), BitOp::Or) => cur | v,
            (Some(cur), BitOp::Xor) => cur ^ v,
        });
        Ok(())
    }

    /// The value (`None` = NULL).
    pub(crate) fn value(&self) -> Option<i64> {
        self.value
    }

    /// The value encoded for the client (`format` 1 = binary, in the input's width).
    pub(crate) fn finish(&self, format: i16) -> Option<Bytes> {
        let v = self.value?;
        Some(if format == 1 {
            match self.width() {
                2 => Bytes::copy_from_slice(&(v as i16).to_be_bytes()),
                4 => Bytes::copy_from_slice(&(v as i32).to_be_bytes()),
                _ => Bytes::copy_from_slice(&v.to_be_bytes()),
            }
        } else {
            Bytes::from(v.to_string())
        })
    }
}
