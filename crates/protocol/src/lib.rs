//! PostgreSQL wire protocol for shardgate.
//!
//! Only what a proxy needs: splitting a byte stream into messages without
//! copying, validated views of the few message bodies routing looks at, builders
//! for the messages the proxy writes itself, and both sides of password
//! authentication (SCRAM-SHA-256, md5, cleartext).
//!
//! Every decoder here checks lengths before it reads, so malformed input becomes
//! a [`ProtocolError`], never a panic or a read past the current message.

pub mod auth;
pub mod backend;
pub mod batch;
pub mod error;
pub mod frame;
pub mod frontend;
pub mod startup;

pub use error::{PgError, ProtocolError, Severity, SqlState};
pub use frame::{consume_front, Header, MessageReader};
