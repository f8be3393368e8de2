//! One analysis per statement (docs/ARCHITECTURE.md §7): a single lex and
//! parse of the statement's literal-normalised text gives its route
//! ([`Classification`]), its shard plan ([`ShardPlan`]) and, for a query
//! over sharded tables, the parsed tree its merge plan is made from. The
//! result is cached once, by normalised text and shard-map version, so
//! `... WHERE id = 1` and `... WHERE id = 2` share one entry.
//!
//! A merge plan holds the statement's literal values (`LIMIT 10`, the
//! constants of expressions the proxy evaluates, the text the shards run),
//! so it is cached by exact text; a miss binds the literals of that text
//! into a copy of the cached tree instead of parsing again.
//!
//! Texts whose normalised form does not parse where a literal stood
//! (`DATE '2024-01-01'`, `varchar(10)`), `COPY`/`LOCK`/`TABLE`, and query
//! strings of several statements are analysed from their exact text and
//! cached under it; texts over [`MAX_CACHED_SQL`] are analysed uncached.

use std::cell::RefCell;
use std::fmt;
use std::ops::{ControlFlow, Range};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock};

use sqlparser::ast::{visit_expressions_mut, Expr, Statement, Value};

use crate::cache::GenerationalCache;
use crate::classify::{fallback_route, statement_route, Classification, Classifier, Route};
use crate::lexer::split_statements;
use crate::merge_plan::{plan_merge, plan_merge_parsed, MergePlan, Unmergeable};
use crate::shard::{
    combine_plans, needs_parse, normalize, parse_statement, plan_parsed, planned_by_lexer,
    statement_tokens, unlike_sqlparser, with_spans, LiteralSink, ShardPlan, TableLookup,
};

/// Texts longer than this are analysed without the cache (their keys would
/// be large and they are unlikely to repeat).
pub const MAX_CACHED_SQL: usize = 8 * 1024;

/// Merge plans cached at most.
const MERGE_CACHE_CAPACITY: usize = 4096;

/// The cache's version when no tables are given (a proxy without sharding).
const NO_TABLES: u64 = u64::MAX;

/// What one analysis of a statement found.
#[derive(Debug)]
pub struct Analysis {
    /// Where it may run.
    pub classification: Classification,
    /// Its shard plan (`None` when analysed without tables). Made from the
    /// normalised text, its literal values are
    /// [`crate::ValueSource::LiteralIndex`]es.
    shard: Option<Arc<ShardPlan>>,
    /// The parsed statement, kept for a query over tables (its merge plan).
    tree: Option<Arc<Statement>>,
    /// `Some(base)`: analysed from the normalised text, where a placeholder
    /// `$k` with `k > base` stands for literal `k - base - 1`; `None`: from
    /// the exact text.
    base: Option<usize>,
}

/// The analysis of one text and that text's literal values.
#[derive(Debug, Clone)]
pub struct Analyzed {
    /// The shared analysis.
    pub analysis: Arc<Analysis>,
    /// Literal values in lexer order (strings unquoted and unescaped,
    /// numbers with a folded sign), when asked for.
    pub literals: Vec<String>,
}

/// A statement's shard plan, its literal values and its route
/// ([`Analyzer::plan_and_classify`]).
#[derive(Debug, Clone)]
pub struct Planned {
    /// The shard plan; values from literals index into `literals`.
    pub plan: Arc<ShardPlan>,
    /// Literal values in lexer order.
    pub literals: Vec<String>,
    /// How the statement routes.
    pub classification: Classification,
}

/// A merge plan, or why the statement cannot be merged (both are cached).
pub type MergeResult = Result<Arc<MergePlan>, Unmergeable>;

/// Analyses statements once and caches the result (see the module
/// documentation). Shareable between threads.
pub struct Analyzer {
    classifier: Classifier,
    cache: Option<GenerationalCache<Arc<Analysis>>>,
    merges: Option<GenerationalCache<MergeResult>>,
}

impl fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analyzer")
            .field("classifier", &self.classifier)
            .field("cache_len", &self.cache_len())
            .finish()
    }
}

impl Default for Analyzer {
    /// The default classifier and a cache of 10,000 analyses.
    fn default() -> Self {
        Analyzer::new(Classifier::default(), 10_000)
    }
}

thread_local! {
    /// Reused buffer for normalised texts, so a cache hit allocates at most
    /// the literal list.
    static KEY_BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Analyzer {
    /// An analyzer deciding routes with `classifier` and caching at most
    /// `cache_capacity` analyses (0 turns the caches off).
    pub fn new(classifier: Classifier, cache_capacity: usize) -> Analyzer {
        Analyzer {
            classifier,
            cache: (cache_capacity > 0).then(|| GenerationalCache::new(cache_capacity)),
            merges: (cache_capacity > 0)
                .then(|| GenerationalCache::new(MERGE_CACHE_CAPACITY.min(cache_capacity))),
        }
    }

    /// The classifier deciding routes.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Number of cached analyses.
    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, GenerationalCache::len)
    }

    /// Drops every cached analysis and merge plan (call after the table
    /// configuration changed, unless [`TableLookup::version`] reports it).
    pub fn clear(&self) {
        if let Some(c) = &self.cache {
            c.clear();
        }
        if let Some(c) = &self.merges {
            c.clear();
        }
    }

    /// How `sql` routes. `tables`: the shard map's tables when the proxy
    /// shards (always pass them then: the cache holds one version).
    pub fn classify(&self, sql: &str, tables: Option<&dyn TableLookup>) -> Classification {
        self.lookup(sql, tables, false).0.classification.clone()
    }

    /// The analysis of `sql` with its literal values.
    pub fn analyze(&self, sql: &str, tables: Option<&dyn TableLookup>) -> Analyzed {
        let (analysis, literals) = self.lookup(sql, tables, true);
        Analyzed { analysis, literals }
    }

    /// The shard plan of `sql` and its literal values: values that come
    /// from literals are [`crate::ValueSource::LiteralIndex`] into that list
    /// (use [`ShardPlan::resolve_literals`]), so `... WHERE aid = 123` and
    /// `... WHERE aid = 456` share one plan. [`crate::InsertPlan`] spans
    /// always refer to `sql`.
    pub fn plan(&self, sql: &str, tables: &dyn TableLookup) -> (Arc<ShardPlan>, Vec<String>) {
        let planned = self.plan_and_classify(sql, tables);
        (planned.plan, planned.literals)
    }

    /// [`Analyzer::plan`] and [`Analyzer::classify`] of `sql` from one
    /// cache lookup (a sharded session needs both for each statement).
    pub fn plan_and_classify(&self, sql: &str, tables: &dyn TableLookup) -> Planned {
        let Analyzed { analysis, literals } = self.analyze(sql, Some(tables));
        let plan = match &analysis.shard {
            Some(p) if analysis.base.is_some() => with_spans(p.clone(), sql, tables),
            Some(p) => p.clone(),
            None => Arc::new(crate::shard::plan(sql, tables)),
        };
        Planned {
            plan,
            literals,
            classification: analysis.classification.clone(),
        }
    }

    /// How the rows of `sql` (a statement the shard plan sends to several
    /// shards) are merged: cached by exact text, made from the cached
    /// tree with this text's literals bound in.
    pub fn merge_plan(&self, sql: &str, tables: &dyn TableLookup) -> MergeResult {
        let Some(merges) = &self.merges else {
            return plan_merge(sql, tables).map(Arc::new);
        };
        let version = tables.version();
        if let Some(hit) = merges.get(sql, version) {
            return hit;
        }
        let plan = self.merge_plan_uncached(sql, tables).map(Arc::new);
        merges.insert(sql, plan.clone(), version);
        plan
    }

    fn merge_plan_uncached(
        &self,
        sql: &str,
        tables: &dyn TableLookup,
    ) -> Result<MergePlan, Unmergeable> {
        let (analysis, _) = self.lookup(sql, Some(tables), false);
        let Some(tree) = &analysis.tree else {
            return plan_merge(sql, tables);
        };
        let statement = match analysis.base {
            None => (**tree).clone(),
            Some(base) => match bind_literals(tree, base, sql) {
                Some(s) => s,
                None => return plan_merge(sql, tables),
            },
        };
        plan_merge_parsed(std::slice::from_ref(&statement), sql, tables, &[])
    }

    fn lookup(
        &self,
        sql: &str,
        tables: Option<&dyn TableLookup>,
        want_literals: bool,
    ) -> (Arc<Analysis>, Vec<String>) {
        let Some(cache) = &self.cache else {
            return (Arc::new(self.analyse_exact(sql, tables)), Vec::new());
        };
        if sql.len() > MAX_CACHED_SQL {
            return (Arc::new(self.analyse_exact(sql, tables)), Vec::new());
        }
        let version = tables.map_or(NO_TABLES, |t| t.version());
        let lookup = |key: &mut String| {
            let mut literals = Vec::new();
            let mut sink = LiteralSink::new(want_literals.then_some(&mut literals), None);
            let Some(norm) = normalize(sql, key, &mut sink) else {
                return (Arc::new(self.analyse_exact(sql, tables)), Vec::new());
            };
            // The same text means other things when `$2` is a parameter or
            // a literal: the key ends with the parameter base.
            let text_len = key.len();
            key.push('\u{1}');
            push_number(key, norm.base);
            if let Some(a) = cache.get(key, version) {
                return (a, literals);
            }
            if norm.multi {
                // The route does not depend on literals; the shard plan of
                // several statements is made from each text (uncached).
                let mut a = self.analyse_exact(sql, tables);
                a.shard = None;
                let a = Arc::new(a);
                cache.insert(key, a.clone(), version);
                return (a, literals);
            }
            let analysis =
                match self.analyse_guarded(&key[..text_len], Some(norm.base), sql, tables) {
                    Some(a) => Arc::new(a),
                    None => {
                        return (
                            self.exact_cached(cache, sql, tables, version, key),
                            literals,
                        )
                    }
                };
            cache.insert(key, analysis.clone(), version);
            (analysis, literals)
        };
        KEY_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => lookup(&mut buf),
            Err(_) => lookup(&mut String::new()),
        })
    }

    /// The analysis of the exact text, cached under it (`\0` first, which
    /// no normalised text starts with).
    fn exact_cached(
        &self,
        cache: &GenerationalCache<Arc<Analysis>>,
        sql: &str,
        tables: Option<&dyn TableLookup>,
        version: u64,
        key: &mut String,
    ) -> Arc<Analysis> {
        key.clear();
        key.push('\0');
        key.push_str(sql);
        if let Some(a) = cache.get(key, version) {
            return a;
        }
        let a = Arc::new(self.analyse_exact(sql, tables));
        cache.insert(key, a.clone(), version);
        a
    }

    /// Analyses the exact text: statement by statement when there are several.
    fn analyse_exact(&self, sql: &str, tables: Option<&dyn TableLookup>) -> Analysis {
        let stmts = split_statements(sql);
        if stmts.len() <= 1 {
            let mut a = self
                .analyse_guarded(sql, None, sql, tables)
                .expect("an exact text is always analysed");
            if has_open_comment(sql) || unlike_sqlparser(sql) {
                // The statement splitter leaves a comment left open at the
                // end out of the statement, and control characters read
                // differently for the lexer and sqlparser: route such text
                // as the classifier does.
                a.classification = self.classifier.classify(sql);
            }
            return a;
        }
        let mut routes = Vec::with_capacity(stmts.len());
        let mut plans = Vec::with_capacity(stmts.len());
        let mut fallback = false;
        for s in &stmts {
            if statement_tokens(s).is_empty() {
                // Only comments (one left open): the classifier's answer
                // for such a statement of a string.
                let (route, fb) = self.classifier.classify_statement(s);
                routes.push(route);
                fallback |= fb;
                plans.push(ShardPlan::NoTable);
                continue;
            }
            let a = self
                .analyse_guarded(s, None, s, tables)
                .expect("an exact text is always analysed");
            routes.push(a.classification.route);
            fallback |= a.classification.fallback;
            plans.extend(a.shard.map(Arc::unwrap_or_clone));
        }
        let classification = if unlike_sqlparser(sql) {
            self.classifier.classify(sql)
        } else {
            Classification::of(sql, &routes, fallback)
        };
        Analysis {
            classification,
            shard: tables.map(|_| Arc::new(combine_plans(plans))),
            tree: None,
            base: None,
        }
    }

    /// [`Analyzer::analyse`] with a guard: a panic gives a write that is
    /// refused across shards.
    fn analyse_guarded(
        &self,
        text: &str,
        base: Option<usize>,
        sql: &str,
        tables: Option<&dyn TableLookup>,
    ) -> Option<Analysis> {
        catch_unwind(AssertUnwindSafe(|| self.analyse(text, base, sql, tables))).unwrap_or_else(
            |_| {
                Some(Analysis {
                    classification: Classification::of(sql, &[Route::Write], true),
                    shard: tables.map(|_| {
                        Arc::new(ShardPlan::Unsupported {
                            construct: "a statement the router failed to analyse".into(),
                        })
                    }),
                    tree: None,
                    base,
                })
            },
        )
    }

    /// Analyses one statement's `text` (normalised with literals above
    /// `base`, or the exact `sql` when `base` is `None`); hints are read
    /// from `sql`. `None` when the normalised text cannot stand for the
    /// statement: it does not parse where a parse is needed, or its plan
    /// is read from the exact text (`COPY`, `LOCK`, `TABLE`).
    fn analyse(
        &self,
        text: &str,
        base: Option<usize>,
        sql: &str,
        tables: Option<&dyn TableLookup>,
    ) -> Option<Analysis> {
        let toks = statement_tokens(text);
        if toks.is_empty() {
            // Nothing but comments (maybe one left open): decided as the
            // classifier decides such a text.
            return Some(Analysis {
                classification: self.classifier.classify(sql),
                shard: tables.map(|_| Arc::new(ShardPlan::NoTable)),
                tree: None,
                base,
            });
        }
        let by_tokens = self.classifier.route_by_tokens(&toks);
        let plan_parses = tables.is_some() && needs_parse(&toks);
        let wants_tree = by_tokens.is_none() || plan_parses;
        let tree = if wants_tree {
            parse_statement(text, &toks)
        } else {
            None
        };
        if base.is_some() && wants_tree && tree.is_none() {
            return None;
        }
        let (route, fallback) = match (by_tokens, &tree) {
            (Some(r), _) => (r, false),
            (None, Some(t)) => (statement_route(t), false),
            (None, None) => (fallback_route(&toks), true),
        };
        let shard = match tables {
            None => None,
            Some(tables) => {
                let (plan, understood) = plan_parsed(tree.as_ref(), &toks, text, tables, base);
                if base.is_some() && (!understood || planned_by_lexer(&toks)) {
                    return None;
                }
                Some(shared(plan))
            }
        };
        let keep_tree = tables.is_some()
            && matches!(tree, Some(Statement::Query(_) | Statement::Explain { .. }));
        Some(Analysis {
            classification: Classification::of(sql, &[route], fallback),
            shard,
            tree: tree.filter(|_| keep_tree).map(Arc::new),
            base,
        })
    }
}

/// Appends `n` in decimal (without the formatting machinery: this is on
/// every statement's path).
pub(crate) fn push_number(out: &mut String, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

/// Whether `sql` ends in a block comment that is never closed.
fn has_open_comment(sql: &str) -> bool {
    crate::lexer::Lexer::new(sql)
        .any(|t| t.kind == crate::lexer::TokenKind::BlockComment && !t.text.ends_with("*/"))
}

/// `plan` in an `Arc`; the plans that carry no data are shared by every
/// statement that has them.
fn shared(plan: ShardPlan) -> Arc<ShardPlan> {
    static COMMON: LazyLock<[Arc<ShardPlan>; 3]> = LazyLock::new(|| {
        [
            ShardPlan::NoTable,
            ShardPlan::Broadcast,
            ShardPlan::Unsharded,
        ]
        .map(Arc::new)
    });
    COMMON
        .iter()
        .find(|p| ***p == plan)
        .cloned()
        .unwrap_or_else(|| Arc::new(plan))
}

/// `tree` (parsed from the normalised text of `sql`, literals above `base`)
/// with the literals of `sql` in place of their placeholders, each parsed
/// from its text as the parser reads it in the statement. `None` when a
/// placeholder is missing or a literal does not parse alone.
fn bind_literals(tree: &Statement, base: usize, sql: &str) -> Option<Statement> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    let mut key = String::new();
    let mut sink = LiteralSink::new(None, Some(&mut spans));
    normalize(sql, &mut key, &mut sink)?;
    let mut statement = tree.clone();
    let mut bound = 0usize;
    let mut failed = false;
    let _ = visit_expressions_mut(&mut statement, |e| {
        let Expr::Value(v) = e else {
            return ControlFlow::<()>::Continue(());
        };
        let Value::Placeholder(p) = &v.value else {
            return ControlFlow::Continue(());
        };
        let index = p
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(base + 1));
        if let Some(i) = index {
            match spans.get(i).and_then(|r| literal_expr(sql.get(r.clone())?)) {
                Some(literal) => {
                    *e = literal;
                    bound += 1;
                }
                None => failed = true,
            }
        }
        ControlFlow::Continue(())
    });
    (!failed && bound == spans.len()).then_some(statement)
}

/// The expression of one literal's text (`42`, `-5`, `'x''y'`, `E'\n'`,
/// `$$...$$`, `B'101'`), all of it or `None`.
fn literal_expr(text: &str) -> Option<Expr> {
    crate::sql_parse::parse_expr(text).ok()
}

#[cfg(test)]
mod tests;
