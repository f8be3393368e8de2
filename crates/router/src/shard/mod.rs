//! Shard-key analysis: which rows of which sharded table a statement touches
//! (docs/ARCHITECTURE.md §8, "Finding the key").
//!
//! The router does not know shard numbers. [`plan`] reports the key values a
//! statement is restricted to ([`KeyFilter`]), and the caller maps them to
//! shards with its shard map. Tables are described by the caller through
//! [`TableLookup`]; a table it knows neither as sharded nor as reference is
//! *unsharded* (lives on the default shard; its schema exists on every shard,
//! because DDL is broadcast).
//!
//! # How a statement is planned
//!
//! 1. The first keyword decides statements that need no table analysis:
//!    DDL and maintenance (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `VACUUM`,
//!    `ANALYZE`, `CLUSTER`, `REINDEX`, `COMMENT`, `GRANT`, `REVOKE`,
//!    `REFRESH`, `CHECKPOINT`, ...) are [`ShardPlan::Broadcast`]; transaction
//!    and session statements (`BEGIN`, `COMMIT`, `SET`, `SHOW`, `DISCARD`,
//!    `LISTEN`, `PREPARE TRANSACTION`, `FETCH`, ...) are
//!    [`ShardPlan::NoTable`]. `COPY` is read with [`crate::copy::parse_copy`],
//!    `LOCK` and `TABLE name` with the lexer; `DO` and `CALL` run on the
//!    default shard ([`ShardPlan::Unsharded`]: their bodies are opaque).
//! 2. Everything else is parsed with sqlparser (PostgreSQL dialect). Every
//!    table reference becomes an *instance* (a table referenced twice gives
//!    two instances, a CTE referenced twice is analysed twice). Filters on
//!    the key column (`=`, `IN (...)`, `= ANY(ARRAY[...])`, casts on either
//!    side, and for range-sharded tables `<`, `<=`, `>`, `>=`, `BETWEEN`) are
//!    taken from the top-level `AND` chains of `WHERE` and `JOIN ... ON`;
//!    anything under `OR`, `NOT`, `CASE`, ... gives no filter.
//! 3. Sharded instances joined by equality of their key columns (in
//!    `WHERE`/`ON`, `USING`, `NATURAL`, correlated subqueries, `k IN
//!    (SELECT k ...)`, through derived tables and CTEs that pass the key
//!    column through) are *co-located*: they form one group. More than one
//!    group → [`ShardPlan::Unsupported`]. A filter on one member applies to
//!    the group when every other member's rows are only used together with
//!    rows of that member (inner joins, `WHERE`, `EXISTS`/`IN`; not the
//!    preserved side of an outer join, not `NOT EXISTS` or a scalar
//!    subquery), see [`ShardPlan::Keyed`].
//! 4. A statement that may span several shards (no single key value) while a
//!    subquery, derived table or CTE over a sharded table combines rows
//!    (`LIMIT`, aggregates, `GROUP BY` not on the key, `DISTINCT`, window
//!    functions, `UNION`/`INTERSECT`/`EXCEPT`) and is not correlated to the
//!    outer query on the key cannot be answered by merging per-shard
//!    results: [`ShardPlan::Unsupported`]. Such operators at the top level
//!    are the merge layer's business and are not reported.
//! 5. What sqlparser rejects is retried with `FOR NO KEY UPDATE` / `FOR KEY
//!    SHARE` blanked to `FOR UPDATE` / `FOR SHARE` (same byte offsets), then
//!    decided by the lexer: a sharded table named after
//!    `FROM`/`JOIN`/`UPDATE`/`INTO`/`USING` → [`ShardPlan::NoKey`] (an
//!    `INSERT INTO` a sharded table → [`ShardPlan::Unsupported`], since
//!    running it on every shard would duplicate rows); a reference table
//!    after `INTO`/`UPDATE`/`DELETE FROM` → [`ShardPlan::ReferenceWrite`];
//!    otherwise [`ShardPlan::Unsharded`].
//!
//! [`crate::Analyzer`] caches plans by literal-normalised text.
//!
//! Planning never panics: the parser and the analysis run under
//! `catch_unwind`, deep or huge statements skip the parser, and any surprise
//! ends in the lexer fallback or [`ShardPlan::Unsupported`].

mod analyze;
mod fallback;
mod insert;
pub mod insert_select;
mod normalize;
mod planner;

#[cfg(test)]
mod tests;

use std::ops::Range;

pub(crate) use analyze::{ident_name, object_name, AGGREGATES};
pub use insert::renumber_params;
pub(crate) use normalize::{decode_string, normalize, unlike_sqlparser, LiteralSink};
pub(crate) use planner::{
    combine as combine_plans, needs_parse, parse_statement, plan_parsed, planned_by_lexer,
    statement_tokens, with_spans,
};

/// How the caller shards a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardedTable {
    /// The key column, lower case.
    pub column: String,
    /// Range-sharded: range predicates (`<`, `BETWEEN`, ...) on the key are
    /// useful and reported as [`KeyFilter::Range`].
    pub ranged: bool,
}

/// The caller's table configuration.
pub trait TableLookup {
    /// The sharding of table `name` (in `schema` when the reference is
    /// qualified), or `None` if it is not sharded. Names arrive lower-cased
    /// unless they were quoted in the statement.
    fn sharded(&self, schema: Option<&str>, name: &str) -> Option<ShardedTable>;

    /// Whether `name` (in `schema`) is a reference table (a full copy on
    /// every shard).
    fn is_reference(&self, schema: Option<&str>, name: &str) -> bool;

    /// A number that changes whenever the answers of this lookup change.
    /// [`crate::Analyzer`] empties its cache when it sees a new value; a
    /// lookup that keeps the default (0) must have the caller call
    /// [`crate::Analyzer::clear`] after a configuration change.
    fn version(&self) -> u64 {
        0
    }

    /// Whether sharded tables `a` and `b` (each `(schema, name)`) place
    /// equal key values on the same shard (same key type, same placement
    /// function), so rows of one can be written next to rows of the other
    /// shard by shard. The default knows of no such pair.
    fn co_located(&self, a: (Option<&str>, &str), b: (Option<&str>, &str)) -> bool {
        let _ = (a, b);
        false
    }
}

/// Where a key value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueSource {
    /// A literal, unquoted: `42`, `-5`, `abc` (from `'abc'`), or the text of
    /// a cast or typed literal (`'42'::bigint` and `bigint '42'` give `42`).
    Literal(String),
    /// A `$n` parameter (1-based), possibly cast (`$1::int8`).
    Param(usize),
    /// The i-th literal (0-based, in lexer order) of the text given to
    /// [`crate::Analyzer::plan`], which returns the literal texts with
    /// the plan; never produced by [`plan`].
    LiteralIndex(usize),
    /// The literal `NULL` (no shard holds a NULL key).
    Null,
    /// Anything else: an expression, `DEFAULT`, a function call.
    Other,
}

impl ValueSource {
    /// Replaces [`ValueSource::LiteralIndex`] by the literal it names
    /// ([`ValueSource::Other`] if the index is out of range).
    pub fn resolve(&self, literals: &[String]) -> ValueSource {
        match self {
            ValueSource::LiteralIndex(i) => literals
                .get(*i)
                .map_or(ValueSource::Other, |l| ValueSource::Literal(l.clone())),
            other => other.clone(),
        }
    }
}

/// The key values a statement is restricted to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyFilter {
    /// `key = v`, or `key IN (v1, v2, ...)`: the rows have one of these keys.
    Eq(Vec<ValueSource>),
    /// `<`, `<=`, `>`, `>=`, `BETWEEN` (only for tables with
    /// [`ShardedTable::ranged`]); each bound with whether it is inclusive.
    Range {
        /// Lower bound and whether it is inclusive.
        lower: Option<(ValueSource, bool)>,
        /// Upper bound and whether it is inclusive.
        upper: Option<(ValueSource, bool)>,
    },
}

impl KeyFilter {
    /// The same filter with [`ValueSource::LiteralIndex`] values resolved.
    pub fn resolve(&self, literals: &[String]) -> KeyFilter {
        match self {
            KeyFilter::Eq(v) => KeyFilter::Eq(v.iter().map(|s| s.resolve(literals)).collect()),
            KeyFilter::Range { lower, upper } => KeyFilter::Range {
                lower: lower.as_ref().map(|(s, i)| (s.resolve(literals), *i)),
                upper: upper.as_ref().map(|(s, i)| (s.resolve(literals), *i)),
            },
        }
    }
}

/// Where a statement's rows live.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ShardPlan {
    /// No sharded or reference table: runs on the default shard.
    Unsharded,
    /// Reads only reference tables (and unsharded ones): any one shard.
    ReferenceRead,
    /// Writes a reference table: every shard.
    ReferenceWrite,
    /// DDL or maintenance (`CREATE`/`ALTER`/`DROP`, `TRUNCATE`, `VACUUM`,
    /// `ANALYZE`, `COMMENT`, `GRANT`, ..., also `SELECT ... INTO`): every shard.
    Broadcast,
    /// Rows of sharded `table` restricted by `filter` (joined co-located
    /// tables share it).
    Keyed {
        /// The table with the filter: `(schema, name)` as written (names
        /// lower-cased unless quoted).
        table: (Option<String>, String),
        /// The key values.
        filter: KeyFilter,
    },
    /// `INSERT` into a sharded table.
    Insert(InsertPlan),
    /// A sharded table is read or written without a usable key filter
    /// (needs every shard).
    NoKey {
        /// The table, as written (`schema.name` when qualified).
        table: String,
    },
    /// Cannot be answered exactly across shards; `construct` names it.
    Unsupported {
        /// What cannot be done, e.g. "join of pgbench_accounts and
        /// pgbench_tellers not on their shard keys".
        construct: String,
    },
    /// Transaction control or session statements (`BEGIN`, `COMMIT`, `SET`,
    /// `SHOW`, ...): no table.
    NoTable,
}

impl ShardPlan {
    /// The same plan with [`ValueSource::LiteralIndex`] values replaced by the
    /// literals they name (see [`crate::Analyzer::plan`]).
    pub fn resolve_literals(&self, literals: &[String]) -> ShardPlan {
        match self {
            ShardPlan::Keyed { table, filter } => ShardPlan::Keyed {
                table: table.clone(),
                filter: filter.resolve(literals),
            },
            ShardPlan::Insert(p) => {
                let mut p = p.clone();
                for row in &mut p.rows {
                    for v in &mut row.values {
                        *v = v.resolve(literals);
                    }
                }
                ShardPlan::Insert(p)
            }
            other => other.clone(),
        }
    }
}

/// An `INSERT` into a sharded table: the source of every value per `VALUES`
/// row, and byte spans of the original text to rebuild per-shard statements
/// as `text[prefix] + rows joined by ", " + " " + text[suffix]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InsertPlan {
    /// Target `(schema, name)`.
    pub table: (Option<String>, String),
    /// The column list, lower-cased unless quoted; `None` without one (the
    /// caller fetches the table's column order).
    pub columns: Option<Vec<String>>,
    /// One per `VALUES` row; empty for `INSERT ... SELECT` and
    /// `DEFAULT VALUES`.
    pub rows: Vec<InsertRow>,
    /// Byte span of the text up to and including the `VALUES` keyword and
    /// the whitespace after it (for `INSERT ... SELECT` / `DEFAULT VALUES`:
    /// the whole text).
    pub prefix: Range<usize>,
    /// Byte span of everything after the last row, from its first token
    /// (`ON CONFLICT ...`, `RETURNING ...`, a trailing `;`); possibly empty.
    pub suffix: Range<usize>,
    /// `INSERT ... SELECT` (or another non-`VALUES` source): no rows to split.
    pub from_select: bool,
    /// The statement has a `RETURNING` clause.
    pub returning: bool,
}

/// One `VALUES` row of an [`InsertPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InsertRow {
    /// Byte span of `(...)`, parentheses included.
    pub span: Range<usize>,
    /// Where each value comes from, in column order.
    pub values: Vec<ValueSource>,
}

/// Plans one statement (the caller splits query strings; a trailing `;` is
/// fine, and a string with several statements gets the plan they share or
/// [`ShardPlan::Unsupported`]). Never panics.
pub fn plan(sql: &str, tables: &dyn TableLookup) -> ShardPlan {
    planner::plan_text(sql, tables, None).0
}
