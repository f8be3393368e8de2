//! Statement analysis for shardgate: everything that decides where a statement
//! goes, as pure functions of the SQL text and session state (no sockets).
//!
//! - [`Analyzer`] analyses each statement once (one parse) and caches the
//!   result by literal-normalised text: its route, shard plan and merge plan.
//! - [`Classifier`] decides whether a query string may run on a replica
//!   ([`Route`]).
//! - [`parse_hints`] reads `/* shardgate: ... */` hint comments ([`Hints`]).
//! - [`Consistency`] and [`parse_max_lag_ms`] parse consistency settings.
//! - [`SessionCommand`] recognises statements that change session state.
//! - [`shard::plan`] tells which shard-key values a statement is restricted
//!   to ([`ShardPlan`]).
//! - [`copy::parse_copy`] reads `COPY` statements and [`CopySplitter`] cuts
//!   `COPY FROM STDIN` data into rows with their shard key.
//! - [`lexer`] is the PostgreSQL-aware tokenizer underneath.

#![warn(missing_docs)]

pub mod analysis;
pub mod cache;
pub mod classify;
pub mod consistency;
pub mod copy;
pub mod gather;
pub mod hints;
pub mod lexer;
pub mod materialize;
pub mod merge_plan;
pub mod scan;
pub mod session_cmd;
pub mod shard;
pub mod sql_parse;

pub use analysis::{Analysis, Analyzed, Analyzer, MergeResult, Planned, MAX_CACHED_SQL};
pub use classify::{
    Classification, Classifier, Route, BUILTIN_WRITE_FUNCTIONS, MAX_PARSE_OPERATORS,
};
pub use consistency::{parse_max_lag_ms, Consistency, ParseConsistencyError, ParseLagError};
pub use copy::{
    parse_copy, CopyError, CopyFormat, CopyOutJoin, CopyRow, CopyRowsOut, CopySplitter,
    CopyStatement, FieldValue,
};
pub use hints::{parse_hints, HintError, Hints};
pub use lexer::{Lexer, Token, TokenKind};
pub use scan::{quick_scan, QuickScan};
pub use session_cmd::{
    fetch_count, leaves_session_state, quote_ident, savepoint_statement, CursorStatement, Declare,
    FetchCount, ListenCommand, SavepointCommand, SessionCommand, SetValue,
};
pub use shard::{
    plan as plan_shards, InsertPlan, InsertRow, KeyFilter, ShardPlan, ShardedTable, TableLookup,
    ValueSource,
};
