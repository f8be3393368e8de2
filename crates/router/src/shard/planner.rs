//! Planning text ([`plan_text`]: dispatch, parse, fallback, panic guard), in
//! pieces [`crate::Analyzer`] shares with classification.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use sqlparser::ast::Statement;

use crate::lexer::{split_statements, Lexer, Token, TokenKind};

use super::fallback::{self, Quick};
use super::{analyze, insert, ShardPlan, TableLookup};

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
        return (combine(plans), understood);
    }
    let toks = statement_tokens(sql);
    let parsed = if needs_parse(&toks) {
        parse_statement(sql, &toks)
    } else {
        None
    };
    plan_parsed(parsed.as_ref(), &toks, sql, tables, base)
}

/// The plan of a query string from the plans of its statements: theirs
/// when they all have the same one (and it is not an INSERT's), else
/// [`ShardPlan::Unsupported`].
pub(crate) fn combine(mut plans: Vec<ShardPlan>) -> ShardPlan {
    let same = plans.windows(2).all(|w| w[0] == w[1]);
    match plans.len() {
        0 => ShardPlan::NoTable,
        1 => plans.swap_remove(0),
        _ if same && !matches!(plans[0], ShardPlan::Insert(_)) => plans.swap_remove(0),
        _ => ShardPlan::Unsupported {
            construct: "several statements with different routes in one query string".into(),
        },
    }
}

/// The tokens of one statement as planning reads them: comments and
/// semicolons left out (the lean tokens of a text too long to parse).
pub(crate) fn statement_tokens(sql: &str) -> Vec<Token<'_>> {
    if sql.len() > crate::classify::MAX_PARSE_BYTES {
        crate::lexer::lean_tokens(sql)
            .into_iter()
            .filter(|t| t.kind != TokenKind::Semicolon)
            .collect()
    } else {
        Lexer::new(sql)
            .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
            .collect()
    }
}

/// Whether the plan of a statement is read from its text by the lexer
/// (`COPY`, `LOCK`, `TABLE`).
pub(crate) fn planned_by_lexer(toks: &[Token<'_>]) -> bool {
    let (first, second) = fallback::first_two(toks);
    matches!(fallback::quick(first, second), Quick::Lexer)
}

/// Whether planning needs the statement parsed (its first keywords do not
/// decide it).
pub(crate) fn needs_parse(toks: &[Token<'_>]) -> bool {
    let (first, second) = fallback::first_two(toks);
    matches!(fallback::quick(first, second), Quick::Parse)
}

/// `sql` parsed as one statement (retried with `FOR NO KEY UPDATE` / `FOR
/// KEY SHARE` blanked); `None` when it is too long, too complex or does not
/// parse. Never panics.
pub(crate) fn parse_statement(sql: &str, toks: &[Token<'_>]) -> Option<Statement> {
    if sql.len() > crate::classify::MAX_PARSE_BYTES || crate::classify::too_complex_to_parse(toks) {
        return None;
    }
    catch_unwind(AssertUnwindSafe(|| {
        parse_one(sql).or_else(|| {
            let rewritten = blank_unsupported_locks(toks, sql)?;
            parse_one(&rewritten)
        })
    }))
    .ok()
    .flatten()
}

/// Plans one statement from its tokens and, when [`needs_parse`], its
/// parsed form. Returns the plan and whether sqlparser understood the text
/// (false: the lexer fallback decided).
pub(crate) fn plan_parsed(
    parsed: Option<&Statement>,
    toks: &[Token<'_>],
    sql: &str,
    tables: &dyn TableLookup,
    base: Option<usize>,
) -> (ShardPlan, bool) {
    if let Some(p) = fallback::dispatch(toks, sql, tables) {
        return (p, true);
    }
    match parsed.map(|stmt| analyze::plan_statement(stmt, sql, tables, base)) {
        Some(Some(p)) => (p, true),
        _ => (fallback::fallback(toks, tables), false),
    }
}

fn parse_one(sql: &str) -> Option<Statement> {
    let mut v = crate::sql_parse::parse_statements(sql).ok()?;
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

/// An insert plan from the cache with its spans recomputed for `sql`.
pub(crate) fn with_spans(p: Arc<ShardPlan>, sql: &str, tables: &dyn TableLookup) -> Arc<ShardPlan> {
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
