//! Lexer-only decisions: statements decided by their first keyword, and
//! statements sqlparser rejects.

use crate::copy::parse_copy;
use crate::lexer::{Token, TokenKind};

use super::analyze::{display_name, table_access_plan};
use super::{planner, ShardPlan, TableLookup};

/// First keywords of DDL and maintenance: [`ShardPlan::Broadcast`].
pub(super) const BROADCAST_KEYWORDS: &[&str] = &[
    "create",
    "alter",
    "drop",
    "truncate",
    "vacuum",
    "analyze",
    "analyse",
    "cluster",
    "reindex",
    "comment",
    "grant",
    "revoke",
    "refresh",
    "security",
    "import",
    "reassign",
    "checkpoint",
];

/// First keywords of transaction and session statements:
/// [`ShardPlan::NoTable`] (`PREPARE` only with `TRANSACTION`).
pub(super) const NO_TABLE_KEYWORDS: &[&str] = &[
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "set",
    "reset",
    "discard",
    "show",
    "deallocate",
    "listen",
    "unlisten",
    "notify",
    "fetch",
    "move",
    "close",
    "load",
];

/// What the first keywords say about a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quick {
    /// DDL / maintenance.
    Broadcast,
    /// Transaction / session.
    NoTable,
    /// `DO`, `CALL`: the default shard.
    Unsharded,
    /// `COPY`, `LOCK`, `TABLE`: decided by the lexer from the text.
    Lexer,
    /// Needs the parser.
    Parse,
}

/// Classifies by the first keyword (`first`, after comments and opening
/// parentheses) and the one after it.
pub(super) fn quick(first: Option<&Token<'_>>, second: Option<&Token<'_>>) -> Quick {
    let Some(first) = first else {
        return Quick::NoTable;
    };
    if first.is_punct("\\") && second.is_some_and(|t| t.is_keyword("copy")) {
        return Quick::Lexer;
    }
    if first.kind != TokenKind::Word {
        return Quick::Parse;
    }
    let kw = |k: &str| first.is_keyword(k);
    if BROADCAST_KEYWORDS.iter().any(|k| kw(k)) {
        Quick::Broadcast
    } else if NO_TABLE_KEYWORDS.iter().any(|k| kw(k))
        || (kw("prepare") && second.is_some_and(|t| t.is_keyword("transaction")))
    {
        Quick::NoTable
    } else if kw("do") || kw("call") {
        Quick::Unsharded
    } else if kw("copy") || kw("lock") || kw("table") {
        Quick::Lexer
    } else {
        Quick::Parse
    }
}

/// The statement's tokens without comments and semicolons.
pub(super) fn first_two<'t, 'a>(
    toks: &'t [Token<'a>],
) -> (Option<&'t Token<'a>>, Option<&'t Token<'a>>) {
    let start = toks
        .iter()
        .position(|t| !t.is_punct("("))
        .unwrap_or(toks.len());
    (toks.get(start), toks.get(start + 1))
}

/// Plans a statement whose first keyword decides it, or `None` if it needs
/// the parser. `toks` exclude comments and semicolons.
pub(super) fn dispatch(
    toks: &[Token<'_>],
    sql: &str,
    tables: &dyn TableLookup,
) -> Option<ShardPlan> {
    let (first, second) = first_two(toks);
    Some(match quick(first, second) {
        Quick::Broadcast => ShardPlan::Broadcast,
        Quick::NoTable => ShardPlan::NoTable,
        Quick::Unsharded => ShardPlan::Unsharded,
        Quick::Parse => return None,
        Quick::Lexer => {
            let first = first?;
            if first.is_keyword("lock") {
                lock_plan(toks, tables)
            } else if first.is_keyword("table") {
                table_plan(toks, tables)
            } else {
                copy_plan(toks, sql, tables)
            }
        }
    })
}

/// Unquoted identifier (lower-cased) or quoted identifier (unquoted).
fn ident(t: &Token<'_>) -> Option<String> {
    match t.kind {
        TokenKind::Word => Some(t.text.to_ascii_lowercase()),
        TokenKind::QuotedIdent => {
            let inner = t.text.strip_prefix('"').unwrap_or(t.text);
            let inner = inner.strip_suffix('"').unwrap_or(inner);
            Some(inner.replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// A possibly qualified name at `toks[i]`: `((schema, name), next index)`.
fn name_at(toks: &[Token<'_>], mut i: usize) -> Option<((Option<String>, String), usize)> {
    let mut parts = vec![ident(toks.get(i)?)?];
    i += 1;
    while toks.get(i).is_some_and(|t| t.is_punct(".")) {
        parts.push(ident(toks.get(i + 1)?)?);
        i += 2;
    }
    let name = parts.pop()?;
    Some(((parts.pop(), name), i))
}

fn copy_plan(toks: &[Token<'_>], sql: &str, tables: &dyn TableLookup) -> ShardPlan {
    let Some(c) = parse_copy(sql) else {
        return fallback(toks, tables);
    };
    if c.query {
        // Plan the query between the parentheses after COPY.
        let Some(open) = toks.iter().position(|t| t.is_punct("(")) else {
            return fallback(toks, tables);
        };
        let mut depth = 0usize;
        for t in &toks[open..] {
            if t.is_punct("(") {
                depth += 1;
            } else if t.is_punct(")") {
                depth -= 1;
                if depth == 0 {
                    let inner = &sql[toks[open].offset + 1..t.offset];
                    return planner::plan_text(inner, tables, None).0;
                }
            }
        }
        return fallback(toks, tables);
    }
    let (schema, name) = c.table;
    table_access_plan(tables, schema, name, !c.to)
}

/// `LOCK [TABLE] [ONLY] name [*] [, ...] [IN ... MODE] [NOWAIT]`.
fn lock_plan(toks: &[Token<'_>], tables: &dyn TableLookup) -> ShardPlan {
    let mut i = 1;
    if toks.get(i).is_some_and(|t| t.is_keyword("table")) {
        i += 1;
    }
    loop {
        if toks.get(i).is_some_and(|t| t.is_keyword("only")) {
            i += 1;
        }
        let Some(((schema, name), next)) = name_at(toks, i) else {
            break;
        };
        if tables.sharded(schema.as_deref(), &name).is_some()
            || tables.is_reference(schema.as_deref(), &name)
        {
            return ShardPlan::Broadcast;
        }
        i = next;
        if toks.get(i).is_some_and(|t| t.is_punct("*")) {
            i += 1;
        }
        if toks.get(i).is_some_and(|t| t.is_punct(",")) {
            i += 1;
        } else {
            break;
        }
    }
    ShardPlan::Unsharded
}

/// `TABLE [ONLY] name [*]`: the whole table.
fn table_plan(toks: &[Token<'_>], tables: &dyn TableLookup) -> ShardPlan {
    let (first, _) = first_two(toks);
    let Some(start) = first.and_then(|f| toks.iter().position(|t| std::ptr::eq(t, f))) else {
        return fallback(toks, tables);
    };
    let mut i = start + 1;
    if toks.get(i).is_some_and(|t| t.is_keyword("only")) {
        i += 1;
    }
    match name_at(toks, i) {
        Some(((schema, name), _)) => table_access_plan(tables, schema, name, false),
        None => fallback(toks, tables),
    }
}

/// Words after which an alias cannot be a name.
const NOT_ALIAS: &[&str] = &[
    "where",
    "join",
    "inner",
    "left",
    "right",
    "full",
    "cross",
    "natural",
    "on",
    "using",
    "group",
    "order",
    "limit",
    "offset",
    "union",
    "except",
    "intersect",
    "set",
    "values",
    "select",
    "returning",
    "for",
    "window",
    "having",
    "lateral",
    "tablesample",
    "fetch",
    "default",
    "overriding",
    "on",
    "do",
];

/// Decision for a statement sqlparser rejected, from the table names after
/// `FROM`, `JOIN`, `UPDATE`, `INTO` and `USING` (comma lists included).
pub(super) fn fallback(toks: &[Token<'_>], tables: &dyn TableLookup) -> ShardPlan {
    let mut sharded_read: Option<String> = None;
    let mut sharded_write: Option<String> = None;
    let mut sharded_insert: Option<String> = None;
    let mut reference_write: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let prev = i.checked_sub(1).map(|p| &toks[p]);
        let kw = |k: &str| t.is_keyword(k);
        let write = (kw("into"))
            || (kw("update")
                && !prev.is_some_and(|p| {
                    p.is_keyword("for") || p.is_keyword("key") || p.is_keyword("do")
                }))
            || (kw("from") && prev.is_some_and(|p| p.is_keyword("delete")));
        let insert = kw("into") && prev.is_some_and(|p| p.is_keyword("insert"));
        let list = kw("from") || kw("using");
        if !(write || list || kw("join")) {
            i += 1;
            continue;
        }
        if kw("update") && !write {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        loop {
            while toks
                .get(j)
                .is_some_and(|t| t.is_keyword("only") || t.is_keyword("lateral"))
            {
                j += 1;
            }
            let Some(((schema, name), next)) = name_at(toks, j) else {
                break;
            };
            let shown = display_name(&schema, &name);
            if tables.sharded(schema.as_deref(), &name).is_some() {
                let slot = if insert {
                    &mut sharded_insert
                } else if write {
                    &mut sharded_write
                } else {
                    &mut sharded_read
                };
                slot.get_or_insert(shown);
            } else if write && tables.is_reference(schema.as_deref(), &name) {
                reference_write.get_or_insert(shown);
            }
            j = next;
            if !list {
                break;
            }
            // Optional alias, then a comma continues the list.
            if toks.get(j).is_some_and(|t| t.is_punct("*")) {
                j += 1;
            }
            if toks.get(j).is_some_and(|t| t.is_keyword("as")) {
                j += 1;
            }
            if toks
                .get(j)
                .is_some_and(|t| ident(t).is_some() && !NOT_ALIAS.iter().any(|k| t.is_keyword(k)))
            {
                j += 1;
            }
            if toks.get(j).is_some_and(|t| t.is_punct(",")) {
                j += 1;
            } else {
                break;
            }
        }
        i = j.max(i + 1);
    }
    if let Some(t) = sharded_insert {
        return ShardPlan::Unsupported {
            construct: format!(
                "INSERT into sharded table {t} in a statement the router cannot parse"
            ),
        };
    }
    let any_sharded = sharded_write.clone().or(sharded_read);
    match (reference_write, any_sharded) {
        (Some(r), Some(s)) => ShardPlan::Unsupported {
            construct: format!("write to reference table {r} together with sharded table {s}"),
        },
        (None, Some(s)) => ShardPlan::NoKey {
            table: sharded_write.unwrap_or(s),
        },
        (Some(_), None) => ShardPlan::ReferenceWrite,
        (None, None) => ShardPlan::Unsharded,
    }
}
