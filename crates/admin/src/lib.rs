//! Read-only SQL over shardgate's admin tables.
//!
//! The proxy describes its state (nodes, shards, pools, ...) as [`Table`]s
//! of typed [`Value`]s. An [`Engine`] loads them into an embedded, in-memory
//! SQLite (schema `shardgate`) and evaluates a client's `SELECT` on them,
//! returning a [`ResultSet`] whose [`ColType`]s and text/binary encodings are
//! exactly what a Postgres wire-protocol server sends (RowDescription OIDs,
//! DataRow bytes). Bind parameters arrive through [`decode_param`], and
//! [`Engine::describe`] answers a Describe before anything runs.
//!
//! Why SQLite: it is a real SQL engine, so joins, aggregates, `GROUP BY`,
//! CTEs, `ORDER BY`/`LIMIT` and the usual functions come for free instead of
//! a hand-written evaluator; ProxySQL serves its admin interface the same
//! way. The few Postgres-isms clients type (`x::int8`, `ILIKE`, `$1`, a
//! trailing `;`) are translated token by token first.
//!
//! Safety: user SQL is untrusted. Only a single statement that SQLite reports
//! read-only *and* that an authorizer lets through (reads, functions and
//! recursive CTEs; no `ATTACH`, `PRAGMA`, DDL, DML or transactions) runs;
//! SQL text is limited to 1 MiB, strings to 16 MiB, results to 64 MiB and
//! each statement to 10 million VM steps (then `57014`). Every failure is an
//! [`AdminError`] carrying its SQLSTATE; nothing panics on any input.
//!
//! Cost, measured on the 2-core build machine (commands and details in
//! `MEASUREMENTS.md`): compiling the bundled SQLite (one 9 MB C file in the
//! `libsqlite3-sys` build script) adds 64-83 s of single-core time to a cold
//! release build (nothing on incremental builds), and a release binary that
//! runs one query is 1.9 MiB larger stripped (2.35 MB vs 0.37 MB) than the
//! same program without the engine.

#![warn(missing_docs)]

mod analyze;
pub mod engine;
pub mod error;
mod float;
mod guard;
mod sqlite;
pub mod table;
mod time;
mod translate;
pub mod value;

pub use engine::{Described, Engine, ResultSet, MAX_RESULT_BYTES, MAX_SQL_LEN};
pub use error::AdminError;
pub use float::{format_float8, parse_float8};
pub use table::{Column, Table};
pub use value::{decode_param, format_timestamptz, parse_timestamptz, ColType, Value};
