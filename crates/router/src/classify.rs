//! Deciding where a statement may run: on a replica (reads), on the primary
//! (writes and anything not understood), or whether it starts or ends a
//! transaction or only changes session state (docs/ARCHITECTURE.md §7).
//!
//! How a statement is decided:
//! 1. The query string is split into statements with the [lexer](crate::lexer)
//!    (top-level semicolons; strings, comments and dollar quotes respected).
//! 2. Each statement's tokens are scanned for calls of writing functions
//!    (`nextval(`, `pg_catalog.pg_advisory_lock(`, configured names, ...) and
//!    for locking clauses (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`,
//!    `FOR KEY SHARE`); either makes it a [`Route::Write`]. This works whether
//!    or not sqlparser understands the statement.
//! 3. Statements whose first keyword always writes (`INSERT`, `CREATE`,
//!    `VACUUM`, `DO`, ...) are writes without parsing.
//! 4. Everything else is parsed with sqlparser's PostgreSQL dialect and
//!    decided from its structure (writing CTEs, `SELECT INTO`, `COPY ... TO`
//!    versus `FROM`, `EXPLAIN` of a read, transaction modes, ...).
//! 5. What sqlparser rejects goes to the primary, except forms the lexer
//!    recognises: `BEGIN`/`START TRANSACTION` with modes, `COMMIT`/`ROLLBACK`
//!    variants, `PREPARE TRANSACTION`, `SET`/`RESET`/`DISCARD`, `SHOW` and
//!    `TABLE name`.
//!
//! The parsed tree is only looked at, never printed: the proxy forwards the
//! client's original text (docs/ARCHITECTURE.md §10).

use std::collections::HashSet;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use sqlparser::ast::{
    CopySource, Query, SetExpr, Statement, TransactionAccessMode, TransactionMode,
};

use crate::hints::{mentions_shardgate, parse_hints, HintError, Hints};
use crate::lexer::{split_statements, Lexer, Token, TokenKind};

/// Where a statement (or a query string of several statements) may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// May run on a replica (reads).
    Read,
    /// Must run on the primary: writes, DDL, locking reads, write functions,
    /// `COPY FROM`, anything that does not parse, ...
    Write,
    /// Starts an explicit transaction; `read_only` for `BEGIN READ ONLY` /
    /// `START TRANSACTION READ ONLY` (with any other modes, e.g.
    /// `BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY, DEFERRABLE`).
    Begin {
        /// The transaction was declared `READ ONLY` (and nothing after the
        /// `BEGIN` in the same query string writes).
        read_only: bool,
    },
    /// Ends a transaction or handles savepoints or prepared transactions:
    /// `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `SAVEPOINT`, `RELEASE`,
    /// `ROLLBACK TO`, `PREPARE TRANSACTION`, `COMMIT PREPARED`,
    /// `ROLLBACK PREPARED`.
    TransactionControl,
    /// Only changes session state: `SET` (including `SET LOCAL`,
    /// `SET TRANSACTION`, `SET CONSTRAINTS`), `RESET`, `DISCARD`. (`SHOW` is a
    /// [`Route::Read`].)
    Session,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Read => "read",
            Route::Write => "write",
            Route::Begin { read_only: true } => "begin read only",
            Route::Begin { read_only: false } => "begin",
            Route::TransactionControl => "transaction control",
            Route::Session => "session",
        })
    }
}

/// The decision for one query string. Cheap to clone (no heap data except a
/// shared pointer to hints, present only when the text has hint comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Where the query string may run.
    pub route: Route,
    /// Number of statements in the string (empty ones, like `;;`, not counted).
    pub statements: usize,
    /// At least one statement changes session state (`SET`, `RESET`,
    /// `DISCARD`), so a transaction pooler should look at it.
    pub changes_session: bool,
    /// sqlparser rejected at least one statement and the lexer fallback
    /// decided it (see the module documentation); useful for metrics and logs.
    pub fallback: bool,
    /// Hint comments: `None` when the text has none.
    hints: Option<Arc<Result<Hints, HintError>>>,
}

static NO_HINTS: Hints = Hints::EMPTY;

impl Classification {
    /// The decision for `sql` whose statements have `routes`; `fallback`:
    /// the lexer decided at least one of them. Reads the hint comments.
    pub(crate) fn of(sql: &str, routes: &[Route], fallback: bool) -> Classification {
        let hints = if mentions_shardgate(sql) {
            match parse_hints(sql) {
                Ok(h) if h.is_empty() => None,
                r => Some(Arc::new(r)),
            }
        } else {
            None
        };
        Classification {
            route: combine(routes),
            statements: routes.len(),
            changes_session: routes.contains(&Route::Session),
            fallback,
            hints,
        }
    }

    /// The `/* shardgate: ... */` hints of the query string (the same as
    /// [`parse_hints`] on the text, but cached with the decision).
    pub fn hints(&self) -> Result<&Hints, &HintError> {
        match self.hints.as_deref() {
            None => Ok(&NO_HINTS),
            Some(Ok(h)) => Ok(h),
            Some(Err(e)) => Err(e),
        }
    }

    /// Whether the route lets a replica serve it (`Read`, or `Begin` of a
    /// read-only transaction).
    pub fn is_read(&self) -> bool {
        matches!(self.route, Route::Read | Route::Begin { read_only: true })
    }
}

/// Functions that write, take locks, assign a transaction id or change
/// session state, so a `SELECT` calling them must run on the primary.
/// Matched ASCII case-insensitively on the last component of the name
/// (`pg_catalog.nextval(...)` matches `nextval`).
pub const BUILTIN_WRITE_FUNCTIONS: &[&str] = &[
    // Sequences.
    "nextval",
    "setval",
    "currval",
    "lastval",
    // Advisory locks.
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    // Session state, transaction ids, notifications.
    "set_config",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    // Large objects.
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    // Only valid on a primary (they fail during recovery).
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_switch_wal",
    "pg_create_restore_point",
];

/// First keywords of statements that always need the primary, whatever follows
/// (`PREPARE` is handled apart: `PREPARE TRANSACTION` is transaction control).
const WRITE_KEYWORDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "truncate",
    "create",
    "alter",
    "drop",
    "grant",
    "revoke",
    "vacuum",
    "analyze",
    "analyse",
    "cluster",
    "reindex",
    "checkpoint",
    "call",
    "do",
    "listen",
    "unlisten",
    "notify",
    "lock",
    "execute",
    "deallocate",
    "comment",
    "refresh",
    "security",
    "import",
    "reassign",
    "load",
];

/// Decides routes for statements: a pure function of the text and the
/// configured write functions ([`crate::Analyzer`] caches the decisions).
pub struct Classifier {
    write_functions: HashSet<Box<str>>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("write_functions", &self.write_functions.len())
            .finish()
    }
}

impl Default for Classifier {
    /// No extra write functions.
    fn default() -> Self {
        Classifier::new(&[])
    }
}

impl Classifier {
    /// A classifier that also treats `write_functions` (names, ASCII
    /// case-insensitive; a qualified name like `app.f` counts as `f`) as
    /// writing.
    pub fn new(write_functions: &[String]) -> Classifier {
        let write_functions = BUILTIN_WRITE_FUNCTIONS
            .iter()
            .copied()
            .chain(write_functions.iter().map(String::as_str))
            .filter_map(|name| {
                let last = name.rsplit('.').next().unwrap_or(name).trim();
                let last = last.trim_matches('"');
                (!last.is_empty()).then(|| last.to_ascii_lowercase().into_boxed_str())
            })
            .collect();
        Classifier { write_functions }
    }

    /// Classifies a query string (one statement, or several separated by
    /// semicolons as the simple query protocol allows). Never panics.
    pub fn classify(&self, sql: &str) -> Classification {
        let stmts = split_statements(sql);
        let mut routes = Vec::with_capacity(stmts.len());
        let mut fallback = false;
        for stmt in &stmts {
            let (route, fb) = self.classify_statement(stmt);
            routes.push(route);
            fallback |= fb;
        }
        Classification::of(sql, &routes, fallback)
    }

    /// One statement (no semicolon): its route and whether the lexer fallback decided it.
    pub(crate) fn classify_statement(&self, stmt: &str) -> (Route, bool) {
        let long = stmt.len() > MAX_PARSE_BYTES;
        let toks: Vec<Token<'_>> = if long {
            crate::lexer::lean_tokens(stmt)
        } else {
            Lexer::new(stmt)
                .filter(|t| t.kind != TokenKind::BlockComment)
                .collect()
        };
        if let Some(route) = self.route_by_tokens(&toks) {
            return (route, false);
        }
        let parsed = if long || too_complex_to_parse(&toks) {
            None
        } else {
            parse(stmt)
        };
        match parsed {
            Some(parsed) if !parsed.is_empty() => {
                let routes: Vec<Route> = parsed.iter().map(statement_route).collect();
                (combine(&routes), false)
            }
            _ => (fallback_route(&toks), true),
        }
    }

    /// The route of a statement that its tokens (comments left out) decide
    /// without parsing: a call of a writing function, a locking clause,
    /// `PREPARE [TRANSACTION]`, a first keyword that always writes.
    pub(crate) fn route_by_tokens(&self, toks: &[Token<'_>]) -> Option<Route> {
        if self.calls_write_function(toks) || has_locking_clause(toks) {
            return Some(Route::Write);
        }
        let first = toks.iter().find(|t| !t.is_punct("("))?;
        if first.kind != TokenKind::Word {
            return None;
        }
        if first.is_keyword("prepare") {
            return Some(if is_prepare_transaction(toks) {
                Route::TransactionControl
            } else {
                Route::Write
            });
        }
        WRITE_KEYWORDS
            .iter()
            .any(|k| first.is_keyword(k))
            .then_some(Route::Write)
    }

    /// Whether a token sequence calls a writing function: a name (last
    /// component of a dotted name) directly followed by `(`.
    fn calls_write_function(&self, toks: &[Token<'_>]) -> bool {
        toks.windows(2).any(|w| {
            w[1].is_punct("(")
                && match w[0].kind {
                    TokenKind::Word => self.is_write_function(w[0].text),
                    TokenKind::QuotedIdent => {
                        let inner = w[0].text.strip_prefix('"').unwrap_or(w[0].text);
                        let inner = inner.strip_suffix('"').unwrap_or(inner);
                        self.is_write_function(&inner.replace("\"\"", "\""))
                    }
                    _ => false,
                }
        })
    }

    fn is_write_function(&self, name: &str) -> bool {
        let mut buf = [0u8; 64];
        if name.len() <= buf.len() {
            let b = &mut buf[..name.len()];
            b.copy_from_slice(name.as_bytes());
            b.make_ascii_lowercase();
            // ASCII lower-casing keeps UTF-8 valid.
            std::str::from_utf8(b).is_ok_and(|s| self.write_functions.contains(s))
        } else {
            self.write_functions
                .contains(name.to_ascii_lowercase().as_str())
        }
    }
}

/// Whether a string token that runs to the end of the text is closed
/// there: `'...'` and `B'...'`/`X'...'`/`U&'...'` by an odd run of
/// closing quotes (`''` inside is a quote), `$tag$...$tag$` by its tag.
/// `E'...'` with a backslash is taken as open (a backslash may escape
/// the last quote): such a statement is only not shared in the cache.
pub(crate) fn closed(t: &str) -> bool {
    if let Some(rest) = t.strip_prefix('$') {
        return match rest.find('$') {
            Some(i) => {
                let tag = &t[..i + 2];
                t.len() >= 2 * tag.len() && t.ends_with(tag)
            }
            None => false,
        };
    }
    let Some(open) = t.find('\'') else {
        return false;
    };
    let prefix = &t[..open];
    if prefix.eq_ignore_ascii_case("e") && t.contains('\\') {
        return false;
    }
    // After the opening quote: pairs of quotes, then the closing one.
    let body = &t[open + 1..];
    let run = body.len() - body.trim_end_matches('\'').len();
    run % 2 == 1
}

/// Whether a lexer number token is one numeric literal (`42`, `1_000`,
/// `1.5e-3`, `.5`, `0x1F`, `0o17`, `0b101`). The lexer also takes letters
/// that follow digits into the token (`1P0`, `1into`), which the parser
/// reads as a number followed by a word: such a token stays verbatim in the
/// cache key, or `... OFFSET 1P0` (no statement) would share the entry of
/// `... OFFSET 100`, and `SELECT 1into t` (a write) that of `SELECT 5 t`.
pub(crate) fn plain_number(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() > 2 && b[0] == b'0' {
        let digit: Option<fn(&u8) -> bool> = match b[1] {
            b'x' | b'X' => Some(u8::is_ascii_hexdigit),
            b'o' | b'O' => Some(|c| (b'0'..=b'7').contains(c)),
            b'b' | b'B' => Some(|c| matches!(c, b'0' | b'1')),
            _ => None,
        };
        if let Some(digit) = digit {
            return b[2..].iter().all(|c| digit(c) || *c == b'_') && separated(&b[2..], digit);
        }
    }
    if !separated(b, u8::is_ascii_digit) {
        return false;
    }
    let (mantissa, exponent) = match b.iter().position(|c| matches!(c, b'e' | b'E')) {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let digits = |d: &[u8]| d.iter().all(|c| c.is_ascii_digit() || *c == b'_');
    let mantissa_ok = mantissa.iter().any(u8::is_ascii_digit)
        && mantissa.iter().filter(|c| **c == b'.').count() <= 1
        && mantissa
            .iter()
            .all(|c| c.is_ascii_digit() || *c == b'_' || *c == b'.');
    mantissa_ok
        && exponent.is_none_or(|e| {
            let e = e
                .strip_prefix(b"-")
                .or_else(|| e.strip_prefix(b"+"))
                .unwrap_or(e);
            !e.is_empty() && digits(e)
        })
}

/// Whether every `_` in `b` stands between two digits (`1_000`, not `1__0`,
/// `1_` or `1_.5`): sqlparser, as Postgres 16, reads other underscores as
/// not part of the number.
fn separated(b: &[u8], digit: fn(&u8) -> bool) -> bool {
    b.iter()
        .enumerate()
        .all(|(i, c)| *c != b'_' || (i > 0 && digit(&b[i - 1]) && b.get(i + 1).is_some_and(digit)))
}

fn parse(stmt: &str) -> Option<Vec<Statement>> {
    // sqlparser limits its recursion depth; catching a panic guards against
    // parser bugs on odd input (the statement then goes to the fallback).
    catch_unwind(AssertUnwindSafe(|| {
        crate::sql_parse::parse_statements(stmt).ok()
    }))
    .ok()
    .flatten()
}

/// Statements with more operators than this are not given to sqlparser (they
/// take the lexer fallback): it builds chains like `a + b + ...` or
/// `SELECT .. UNION SELECT ..` as left-deep trees, and dropping a tree tens of
/// thousands of levels deep overflows a 2 MiB thread stack.
pub const MAX_PARSE_OPERATORS: usize = 2000;

/// Statements longer than this are not parsed: a parsed tree costs tens of
/// bytes per value (a 9 MB `IN` list of 1.3 million numbers took 800 MB),
/// so they are decided from their words (see [`crate::lexer::lean_tokens`]):
/// a read goes to the primary, a statement over several shards is refused.
pub const MAX_PARSE_BYTES: usize = 256 * 1024;

/// Parentheses nested deeper than this are not parsed: every level costs
/// the parser and each walk over the tree (analysis, clone, drop) stack
/// frames, and 250 levels overflowed a tokio worker's stack. Such a
/// statement is decided by the lexer (and refused across shards).
pub const MAX_PARSE_DEPTH: usize = 64;

/// Whether `toks` is too large or too deeply nested to parse (see
/// [`MAX_PARSE_OPERATORS`] and [`MAX_PARSE_DEPTH`]).
pub fn too_complex_to_parse(toks: &[Token<'_>]) -> bool {
    let mut depth = 0usize;
    for t in toks {
        if t.kind == TokenKind::Punct {
            match t.text {
                "(" | "[" => {
                    depth += 1;
                    if depth > MAX_PARSE_DEPTH {
                        return true;
                    }
                }
                ")" | "]" => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    operator_count(toks) > MAX_PARSE_OPERATORS
}

/// Infix operators and keywords, each of which may add a level to a parsed tree.
pub(crate) fn operator_count(toks: &[Token<'_>]) -> usize {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "not",
        "is",
        "in",
        "like",
        "ilike",
        "similar",
        "between",
        "collate",
        "at",
        "overlaps",
        "union",
        "intersect",
        "except",
    ];
    toks.iter()
        .filter(|t| match t.kind {
            TokenKind::Punct => !matches!(t.text, "(" | ")" | "," | "." | "[" | "]"),
            TokenKind::Word => KEYWORDS.iter().any(|k| t.text.eq_ignore_ascii_case(k)),
            _ => false,
        })
        .count()
}

/// `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE` anywhere
/// (also in subqueries, and where sqlparser cannot parse the statement).
fn has_locking_clause(toks: &[Token<'_>]) -> bool {
    toks.iter().enumerate().any(|(i, t)| {
        if !t.is_keyword("for") {
            return false;
        }
        let kw = |j: usize, k: &str| toks.get(i + j).is_some_and(|t| t.is_keyword(k));
        kw(1, "update")
            || kw(1, "share")
            || (kw(1, "no") && kw(2, "key") && kw(3, "update"))
            || (kw(1, "key") && kw(2, "share"))
    })
}

fn is_prepare_transaction(toks: &[Token<'_>]) -> bool {
    toks.len() >= 2 && toks[0].is_keyword("prepare") && toks[1].is_keyword("transaction")
}

/// Route of one statement parsed by sqlparser.
pub(crate) fn statement_route(stmt: &Statement) -> Route {
    match stmt {
        Statement::Query(q) => read_unless(query_writes(q)),
        // EXPLAIN of a read is a read; anything else (EXPLAIN [ANALYZE] of a
        // write) goes to the primary.
        Statement::Explain { statement, .. } => match statement_route(statement) {
            Route::Read => Route::Read,
            _ => Route::Write,
        },
        Statement::Copy { source, to, .. } => match (to, source) {
            (false, _) => Route::Write,
            (true, CopySource::Table { .. }) => Route::Read,
            (true, CopySource::Query(q)) => read_unless(query_writes(q)),
        },
        Statement::StartTransaction {
            modes,
            statements,
            exception,
            ..
        } if statements.is_empty() && exception.is_none() => Route::Begin {
            read_only: modes.iter().rev().find_map(|m| match m {
                TransactionMode::AccessMode(a) => Some(*a == TransactionAccessMode::ReadOnly),
                TransactionMode::IsolationLevel(_) => None,
            }) == Some(true),
        },
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Route::TransactionControl,
        Statement::Set(_) | Statement::Reset(_) | Statement::Discard { .. } => Route::Session,
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => Route::Read,
        _ => Route::Write,
    }
}

fn read_unless(writes: bool) -> Route {
    if writes {
        Route::Write
    } else {
        Route::Read
    }
}

/// Whether a query writes: locking clause, a data-modifying CTE, a DML body
/// (`WITH ... INSERT`), `SELECT INTO`.
fn query_writes(q: &Query) -> bool {
    !q.locks.is_empty()
        || q.with
            .as_ref()
            .is_some_and(|w| w.cte_tables.iter().any(|c| query_writes(&c.query)))
        || set_expr_writes(&q.body)
}

fn set_expr_writes(e: &SetExpr) -> bool {
    match e {
        SetExpr::Select(s) => s.into.is_some(),
        SetExpr::Query(q) => query_writes(q),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr_writes(left) || set_expr_writes(right)
        }
        SetExpr::Values(_) | SetExpr::Table(_) => false,
        _ => true,
    }
}

/// Route of a statement sqlparser rejected, from its tokens (comments removed).
pub(crate) fn fallback_route(toks: &[Token<'_>]) -> Route {
    let Some(first) = toks.first().filter(|t| t.kind == TokenKind::Word) else {
        // `(TABLE t)` and the like.
        return match toks.iter().find(|t| !t.is_punct("(")) {
            Some(t) if t.is_keyword("table") => Route::Read,
            _ => Route::Write,
        };
    };
    let kw = |k: &str| first.is_keyword(k);
    if kw("begin") || kw("start") {
        begin_modes(toks).unwrap_or(Route::Write)
    } else if kw("commit")
        || kw("end")
        || kw("rollback")
        || kw("abort")
        || kw("savepoint")
        || kw("release")
        || is_prepare_transaction(toks)
    {
        Route::TransactionControl
    } else if kw("set") || kw("reset") || kw("discard") {
        Route::Session
    } else if kw("show") || kw("table") {
        Route::Read
    } else {
        Route::Write
    }
}

/// `BEGIN [WORK | TRANSACTION] [modes]` or `START TRANSACTION [modes]`, modes
/// separated by optional commas; `None` if it is not well formed.
fn begin_modes(toks: &[Token<'_>]) -> Option<Route> {
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_keyword(k));
    let mut i = if kw(0, "start") {
        kw(1, "transaction").then_some(2)?
    } else if kw(1, "work") || kw(1, "transaction") {
        2
    } else {
        1
    };
    let mut read_only = false;
    while i < toks.len() {
        if toks[i].is_punct(",") {
            i += 1;
        } else if kw(i, "isolation") && kw(i + 1, "level") {
            i += 2;
            if kw(i, "serializable") {
                i += 1;
            } else if (kw(i, "repeatable") && kw(i + 1, "read"))
                || (kw(i, "read") && (kw(i + 1, "committed") || kw(i + 1, "uncommitted")))
            {
                i += 2;
            } else {
                return None;
            }
        } else if kw(i, "read") && kw(i + 1, "only") {
            read_only = true;
            i += 2;
        } else if kw(i, "read") && kw(i + 1, "write") {
            read_only = false;
            i += 2;
        } else if kw(i, "deferrable") {
            i += 1;
        } else if kw(i, "not") && kw(i + 1, "deferrable") {
            i += 2;
        } else {
            return None;
        }
    }
    Some(Route::Begin { read_only })
}

/// Route of a query string from the routes of its statements: a leading
/// `BEGIN` decides (read only only if nothing after it writes); otherwise any
/// write makes it a write; reads and session statements make a read (only
/// session statements: session); only transaction control stays transaction
/// control; other mixes (`COMMIT; SELECT 1`) go to the primary.
fn combine(routes: &[Route]) -> Route {
    match routes {
        [] => Route::Read,
        [one] => *one,
        [Route::Begin { read_only }, rest @ ..] => Route::Begin {
            read_only: *read_only
                && rest.iter().all(|r| {
                    matches!(
                        r,
                        Route::Read
                            | Route::Session
                            | Route::TransactionControl
                            | Route::Begin { read_only: true }
                    )
                }),
        },
        _ if routes.contains(&Route::Write) => Route::Write,
        _ if routes
            .iter()
            .all(|r| matches!(r, Route::Read | Route::Session)) =>
        {
            if routes.contains(&Route::Read) {
                Route::Read
            } else {
                Route::Session
            }
        }
        _ if routes.iter().all(|r| *r == Route::TransactionControl) => Route::TransactionControl,
        _ => Route::Write,
    }
}

#[cfg(test)]
mod tests;
