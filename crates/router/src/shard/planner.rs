//! Planning text ([`plan_text`]: dispatch, parse, fallback, panic guard) and
//! the caching [`ShardPlanner`].

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::cache::GenerationalCache;
use crate::lexer::{split_statements, Lexer, Token, TokenKind};

use super::fallback::{self, Quick};
use super::normalize::normalize;
use super::{analyze, insert, ShardPlan, TableLookup};

/// Statements longer than this are planned without the cache.
pub const MAX_CACHED_SQL: usize = 8 * 1024;

/// Plans `sql`; `base`: placeholders above it are normalised literals.
/// Returns the plan and whether sqlparser understood the text (false: the
/// lexer fallback decided, or the analysis panicked).
pub(super) fn plan_text(
    sql: &str,
    tables: &dyn TableLookup,
    base: Option<usize>,
) -> (ShardPlan, bool) {
    catch_unwind(AssertUnwindSafe(|| plan_text_inner(sql, tables, base))).unwrap_or_else(|_| {
        (
            ShardPlan::Unsupported {
                construct: "a statement the router failed to analyse".into(),
            },
            false,
        )
    })
}

fn plan_text_inner(sql: &str, tables: &dyn TableLookup, base: Option<usize>) -> (ShardPlan, bool) {
    let stmts = split_statements(sql);
    if stmts.len() > 1 {
        let mut plans = Vec::with_capacity(stmts.len());
        let mut understood = true;
        for s in &stmts {
            let (p, ok) = plan_text_inner(s, tables, base);
            understood &= ok;
            plans.push(p);
        }
        let same = plans.windows(2).all(|w| w[0] == w[1]);
        if same && !matches!(plans[0], ShardPlan::Insert(_)) {
            return (plans.swap_remove(0), understood);
        }
        return (
            ShardPlan::Unsupported {
                construct: "several statements with different routes in one query string".into(),
            },
            understood,
        );
    }
    let long = sql.len() > crate::classify::MAX_PARSE_BYTES;
    let toks: Vec<Token<'_>> = if long {
        crate::lexer::lean_tokens(sql)
            .into_iter()
            .filter(|t| t.kind != TokenKind::Semicolon)
            .collect()
    } else {
        Lexer::new(sql)
            .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
            .collect()
    };
    if let Some(p) = fallback::dispatch(&toks, sql, tables) {
        return (p, true);
    }
    if long || crate::classify::too_complex_to_parse(&toks) {
        return (fallback::fallback(&toks, tables), false);
    }
    let parsed = parse_one(sql).or_else(|| {
        let rewritten = blank_unsupported_locks(&toks, sql)?;
        parse_one(&rewritten)
    });
    match parsed {
        Some(stmt) => match analyze::plan_statement(&stmt, sql, tables, base) {
            Some(p) => (p, true),
            None => (fallback::fallback(&toks, tables), false),
        },
        None => (fallback::fallback(&toks, tables), false),
    }
}

fn parse_one(sql: &str) -> Option<Statement> {
    let mut v = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if v.len() == 1 {
        v.pop()
    } else {
        None
    }
}

/// `FOR NO KEY UPDATE` → `FOR        UPDATE`, `FOR KEY SHARE` → `FOR     SHARE`
/// (sqlparser knows only the strong forms; byte offsets stay the same).
/// `None` when there is nothing to rewrite.
fn blank_unsupported_locks(toks: &[Token<'_>], sql: &str) -> Option<String> {
    let mut out: Option<Vec<u8>> = None;
    for (i, t) in toks.iter().enumerate() {
        if !t.is_keyword("for") {
            continue;
        }
        let kw = |j: usize, k: &str| toks.get(i + j).is_some_and(|t| t.is_keyword(k));
        let blank = if kw(1, "no") && kw(2, "key") && kw(3, "update") {
            &toks[i + 1..i + 3]
        } else if kw(1, "key") && kw(2, "share") {
            &toks[i + 1..i + 2]
        } else {
            continue;
        };
        let buf = out.get_or_insert_with(|| sql.as_bytes().to_vec());
        for b in blank {
            buf[b.offset..b.offset + b.text.len()].fill(b' ');
        }
    }
    // Only ASCII words were blanked, so the text stays UTF-8.
    String::from_utf8(out?).ok()
}

thread_local! {
    /// Reused buffer for normalised texts, so a cache hit allocates only the
    /// literal list.
    static KEY_BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Plans statements with a cache keyed by literal-normalised text (see
/// [`ShardPlanner::plan_cached`]). Shareable between threads.
pub struct ShardPlanner {
    /// Plans by normalised text, tagged with the [`TableLookup::version`]
    /// they were made with.
    cache: Option<GenerationalCache<Arc<ShardPlan>>>,
    cache_capacity: usize,
    no_table: Arc<ShardPlan>,
    broadcast: Arc<ShardPlan>,
    unsharded: Arc<ShardPlan>,
}

impl fmt::Debug for ShardPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardPlanner")
            .field("cache_capacity", &self.cache_capacity)
            .field("cache_len", &self.cache_len())
            .finish()
    }
}

impl Default for ShardPlanner {
    /// A cache of 10,000 plans.
    fn default() -> Self {
        ShardPlanner::new(10_000)
    }
}

impl ShardPlanner {
    /// A planner caching at most `cache_capacity` plans (0 turns the cache off).
    pub fn new(cache_capacity: usize) -> ShardPlanner {
        ShardPlanner {
            cache: (cache_capacity > 0).then(|| GenerationalCache::new(cache_capacity)),
            cache_capacity,
            no_table: Arc::new(ShardPlan::NoTable),
            broadcast: Arc::new(ShardPlan::Broadcast),
            unsharded: Arc::new(ShardPlan::Unsharded),
        }
    }

    /// Drops every cached plan (call after the table configuration changed,
    /// unless [`TableLookup::version`] reports the change).
    pub fn clear(&self) {
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// Number of cached plans.
    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, GenerationalCache::len)
    }

    /// Plans `sql` like [`super::plan`], through the cache. Returns the plan
    /// and the literal values of `sql` in lexer order (strings unquoted and
    /// unescaped, numbers with a folded sign): values that come from literals
    /// are [`super::ValueSource::LiteralIndex`] into that list (use
    /// [`ShardPlan::resolve_literals`] or [`super::ValueSource::resolve`]), so
    /// `... WHERE aid = 123` and `... WHERE aid = 456` share one entry.
    ///
    /// Statements decided by their first keyword (`BEGIN`, `SET`, DDL, ...)
    /// are answered from shared values without the cache; `COPY`, `LOCK`,
    /// `TABLE`, query strings with several statements, texts longer than
    /// [`MAX_CACHED_SQL`] and texts whose normalised form does not parse
    /// (typed literals like `DATE '...'`, `varchar(10)`) are planned from
    /// the original text (the latter cached under the exact text).
    /// [`super::InsertPlan`] spans always refer to `sql`.
    pub fn plan_cached(
        &self,
        sql: &str,
        tables: &dyn TableLookup,
    ) -> (Arc<ShardPlan>, Vec<String>) {
        let Some(cache) = &self.cache else {
            return (Arc::new(super::plan(sql, tables)), Vec::new());
        };
        if sql.len() > MAX_CACHED_SQL {
            return (Arc::new(super::plan(sql, tables)), Vec::new());
        }
        KEY_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => self.plan_with_buf(cache, sql, tables, &mut buf),
            Err(_) => self.plan_with_buf(cache, sql, tables, &mut String::new()),
        })
    }

    fn plan_with_buf(
        &self,
        cache: &GenerationalCache<Arc<ShardPlan>>,
        sql: &str,
        tables: &dyn TableLookup,
        key: &mut String,
    ) -> (Arc<ShardPlan>, Vec<String>) {
        let mut literals = Vec::new();
        let Some(norm) = normalize(sql, key, &mut literals) else {
            return (Arc::new(super::plan(sql, tables)), Vec::new());
        };
        if norm.multi {
            return (Arc::new(super::plan(sql, tables)), Vec::new());
        }
        // The cache key is the normalised text plus the parameter base (the
        // same text means other things when `$2` is a parameter or a literal).
        let text_len = key.len();
        let _ = write!(key, "\u{1}{}", norm.base);
        {
            let mut lx = Lexer::new(&key[..text_len]).filter(|t| t.kind != TokenKind::BlockComment);
            let first = lx.by_ref().find(|t| !t.is_punct("("));
            let second = lx.next();
            match fallback::quick(first.as_ref(), second.as_ref()) {
                Quick::NoTable => return (self.no_table.clone(), literals),
                Quick::Broadcast => return (self.broadcast.clone(), literals),
                Quick::Unsharded => return (self.unsharded.clone(), literals),
                Quick::Lexer => return (Arc::new(super::plan(sql, tables)), Vec::new()),
                Quick::Parse => {}
            }
        }
        let version = tables.version();
        if let Some(p) = cache.get(key, version) {
            return (with_spans(p, sql, tables), literals);
        }
        let (p, understood) = plan_text(&key[..text_len], tables, Some(norm.base));
        if !understood {
            // Plan the original text; cache it under the exact text.
            key.clear();
            key.push('\0');
            key.push_str(sql);
            if let Some(p) = cache.get(key, version) {
                return (p, literals);
            }
            let p = Arc::new(super::plan(sql, tables));
            cache.insert(key, p.clone(), version);
            return (p, literals);
        }
        let p = Arc::new(p);
        cache.insert(key, p.clone(), version);
        (with_spans(p, sql, tables), literals)
    }
}

/// An insert plan from the cache with its spans recomputed for `sql`.
fn with_spans(p: Arc<ShardPlan>, sql: &str, tables: &dyn TableLookup) -> Arc<ShardPlan> {
    let ShardPlan::Insert(ip) = &*p else {
        return p;
    };
    if ip.from_select || ip.rows.is_empty() {
        let mut ip = ip.clone();
        ip.prefix = 0..sql.len();
        ip.suffix = sql.len()..sql.len();
        return Arc::new(ShardPlan::Insert(ip));
    }
    match insert::locate(sql) {
        Some(s) if s.rows.len() == ip.rows.len() => {
            let mut ip = ip.clone();
            ip.prefix = s.prefix;
            ip.suffix = s.suffix;
            for (row, span) in ip.rows.iter_mut().zip(s.rows) {
                row.span = span;
            }
            Arc::new(ShardPlan::Insert(ip))
        }
        _ => Arc::new(super::plan(sql, tables)),
    }
}
