//! Pure merge logic for cross-shard SELECTs (no I/O).
//!
//! Shards return partial values in PostgreSQL binary format. This crate decodes sort and
//! group keys and compares them the way PostgreSQL does ([`Key`], [`decode_key`]), does
//! exact decimal arithmetic ([`Numeric`]), combines aggregate partials ([`AggState`]) and
//! encodes final values byte-for-byte as PostgreSQL 15 would, in text and binary format
//! ([`Numeric::to_text`], [`Numeric::to_binary`], [`float8_text`], [`float4_text`]).
//!
//! Text-like values (`text`, `varchar`, `name`, `"char"`, `bytea`, `uuid`, `bpchar`) are
//! compared bytewise, which is PostgreSQL's order under the `C` collation: the shards must
//! use `C` collation for cross-shard ORDER BY / min / max on text to match.

#![warn(missing_docs)]

mod agg;
mod bits;
mod error;
pub mod expr;
mod float;
mod gather;
mod key;
mod numeric;
pub mod ops;
mod ordered_set;
pub mod plan;
mod regression;
pub mod row;
pub mod tree;
mod variance;

pub use agg::{AggKind, AggState};
pub use bits::BitOp;
pub use error::MergeError;
pub use float::{float4_text, float8_text};
pub use key::{decode_key, key_supported, Key};
pub use numeric::{Numeric, Rounding};
pub use ordered_set::OrderedSet;
pub use regression::{Regression, REGRESSION_PARTIALS};
pub use variance::{statistic_output_oid, Statistic};

/// PostgreSQL type OIDs this crate knows about.
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `"char"` (single byte)
    pub const CHAR: u32 = 18;
    /// `name`
    pub const NAME: u32 = 19;
    /// `int8` / `bigint`
    pub const INT8: u32 = 20;
    /// `int2` / `smallint`
    pub const INT2: u32 = 21;
    /// `int4` / `integer`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `oid`
    pub const OID: u32 = 26;
    /// `json`
    pub const JSON: u32 = 114;
    /// `float4` / `real`
    pub const FLOAT4: u32 = 700;
    /// `float8` / `double precision`
    pub const FLOAT8: u32 = 701;
    /// `bpchar` / `char(n)`
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `time`
    pub const TIME: u32 = 1083;
    /// `timestamp`
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
}

#[cfg(test)]
mod gather_tests;
#[cfg(test)]
mod ordered_set_tests;
#[cfg(test)]
mod regression_tests;
#[cfg(test)]
mod tests;
