//! Statement analysis for shardgate: everything that decides where a statement
//! goes, as pure functions of the SQL text and session state (no sockets).
//!
//! - [`Classifier`] decides whether a query string may run on a replica
//!   ([`Route`]), with a cache keyed by literal-normalised text.
//! - [`parse_hints`] reads `/* shardgate: ... */` hint comments ([`Hints`]).
//! - [`Consistency`] and [`parse_max_lag_ms`] parse consistency settings.
//! - [`SessionCommand`] recognises statements that change session state.
//! - [`lexer`] is the PostgreSQL-aware tokenizer underneath.

#![warn(missing_docs)]

pub mod classify;
pub mod consistency;
pub mod hints;
pub mod lexer;
pub mod scan;
pub mod session_cmd;

pub use classify::{
    Classification, Classifier, Route, BUILTIN_WRITE_FUNCTIONS, MAX_CACHED_SQL, MAX_PARSE_OPERATORS,
};
pub use consistency::{parse_max_lag_ms, Consistency, ParseConsistencyError, ParseLagError};
pub use hints::{parse_hints, HintError, Hints};
pub use lexer::{Lexer, Token, TokenKind};
pub use scan::{quick_scan, QuickScan};
pub use session_cmd::{SessionCommand, SetValue};
