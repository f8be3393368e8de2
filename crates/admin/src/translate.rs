//! The few Postgres-isms rewritten before SQLite sees a statement, token by
//! token (never inside string literals or quoted identifiers): `x::type`
//! casts become `CAST(x AS ...)` and `ILIKE` becomes `LIKE` (SQLite's LIKE
//! ignores ASCII case). Everything else passes through byte for byte.

use shardgate_router::lexer::{split_statements, Lexer, Token, TokenKind};

use crate::error::AdminError;
use crate::value::{format_timestamptz, parse_timestamptz, ColType};

/// The one statement in `sql`, without its trailing `;`.
pub(crate) fn single_statement(sql: &str) -> Result<&str, AdminError> {
    match split_statements(sql).as_slice() {
        [one] => Ok(one),
        [] => Err(AdminError::Syntax("empty query".into())),
        _ => Err(AdminError::Syntax(
            "cannot insert multiple commands into a prepared statement".into(),
        )),
    }
}

/// The Postgres type a `::name` cast converts to, if the admin tables know it.
pub(crate) fn cast_type(name: &str) -> Option<ColType> {
    Some(match name.to_ascii_lowercase().as_str() {
        "int" | "int4" | "integer" | "int2" | "smallint" => ColType::Int4,
        "int8" | "bigint" => ColType::Int8,
        "float8" | "float4" | "float" | "real" | "double" | "numeric" | "decimal" => {
            ColType::Float8
        }
        "text" | "varchar" => ColType::Text,
        "bool" | "boolean" => ColType::Bool,
        "timestamptz" => ColType::Timestamptz,
        _ => return None,
    })
}

/// Whether a `:` `:` pair (a cast) starts at `toks[i]`.
pub(crate) fn is_cast_at(toks: &[Token<'_>], i: usize) -> bool {
    matches!(
        (toks.get(i), toks.get(i + 1)),
        (Some(a), Some(b)) if a.is_punct(":") && b.is_punct(":") && b.offset == a.offset + 1
    )
}

/// What a rewritten piece of the output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token(TokenKind),
    /// A rewritten cast: one operand for a following cast.
    Cast,
}

/// One output piece: the source text before it (spaces, comments) and its text.
#[derive(Debug)]
struct Piece<'a> {
    gap: &'a str,
    text: String,
    kind: Kind,
}

impl Piece<'_> {
    fn is_punct(&self, p: &str) -> bool {
        self.kind == Kind::Token(TokenKind::Punct) && self.text == p
    }

    fn is_name(&self) -> bool {
        matches!(
            self.kind,
            Kind::Token(TokenKind::Word | TokenKind::QuotedIdent)
        )
    }
}

/// Words that may stand right before a parenthesis without being a function.
const NOT_FUNCTIONS: &[&str] = &[
    "select", "where", "and", "or", "not", "in", "on", "as", "when", "then", "else", "by",
    "having", "exists", "from", "join", "values", "like", "is", "between", "case", "distinct",
    "union", "limit", "offset", "any", "all", "using",
];

/// Rewrites the Postgres-isms of one statement for SQLite.
pub(crate) fn translate(stmt: &str) -> Result<String, AdminError> {
    let toks: Vec<Token<'_>> = Lexer::new(stmt).collect();
    let mut out: Vec<Piece<'_>> = Vec::with_capacity(toks.len());
    let mut prev_end = 0;
    let mut i = 0;
    while let Some(t) = toks.get(i) {
        let gap = stmt.get(prev_end..t.offset).unwrap_or("");
        if is_cast_at(&toks, i) {
            let (ty, name, next) = cast_target(&toks, i + 2)?;
            let start = operand_start(&out).ok_or_else(|| {
                AdminError::Unsupported(format!(
                    "cast to {name} with :: needs a name, literal or parenthesised \
                     expression before it; use CAST(... AS {name})"
                ))
            })?;
            let operand: String = out[start..]
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    if k == 0 {
                        p.text.clone()
                    } else {
                        format!("{}{}", p.gap, p.text)
                    }
                })
                .collect();
            let literal = (out.len() == start + 1
                && out[start].kind == Kind::Token(TokenKind::String)
                && out[start].text.starts_with('\''))
            .then(|| unquote(&out[start].text))
            .flatten();
            let lead = out[start].gap;
            out.truncate(start);
            out.push(Piece {
                gap: lead,
                text: render_cast(&operand, literal.as_deref(), ty)?,
                kind: Kind::Cast,
            });
            prev_end = toks
                .get(next - 1)
                .map_or(stmt.len(), |t| t.offset + t.text.len());
            i = next;
            continue;
        }
        let text = if t.is_keyword("ilike") {
            "LIKE".to_string()
        } else {
            t.text.to_string()
        };
        out.push(Piece {
            gap,
            text,
            kind: Kind::Token(t.kind),
        });
        prev_end = t.offset + t.text.len();
        i += 1;
    }
    let mut sql: String = out.iter().map(|p| format!("{}{}", p.gap, p.text)).collect();
    sql.push_str(stmt.get(prev_end..).unwrap_or(""));
    Ok(sql)
}

/// The cast type starting at `toks[j]`: its type, its name as written, and
/// the index of the first token after it (a `(n[, m])` modifier included).
fn cast_target(toks: &[Token<'_>], j: usize) -> Result<(ColType, String, usize), AdminError> {
    let Some(word) = toks.get(j).filter(|t| t.kind == TokenKind::Word) else {
        let what = toks.get(j).map_or("nothing", |t| t.text);
        return Err(AdminError::Unsupported(format!(
            "cast to {what} is not supported by the admin tables"
        )));
    };
    let mut next = j + 1;
    let mut name = word.text.to_string();
    if word.is_keyword("double") && toks.get(next).is_some_and(|t| t.is_keyword("precision")) {
        name.push_str(" precision");
        next += 1;
    }
    let unsupported = || {
        AdminError::Unsupported(format!(
            "cast to {name} is not supported by the admin tables"
        ))
    };
    let ty = cast_type(word.text).ok_or_else(unsupported)?;
    if word.is_keyword("double") && !name.ends_with("precision") {
        return Err(unsupported());
    }
    // A type modifier: varchar(10), numeric(10, 2).
    if toks.get(next).is_some_and(|t| t.is_punct("(")) {
        let close = toks[next..]
            .iter()
            .position(|t| t.is_punct(")"))
            .map(|p| next + p)
            .filter(|&c| {
                toks[next + 1..c]
                    .iter()
                    .all(|t| t.kind == TokenKind::Number || t.is_punct(","))
            })
            .ok_or_else(unsupported)?;
        next = close + 1;
    }
    if toks.get(next).is_some_and(|t| t.is_punct("[")) {
        return Err(unsupported());
    }
    Ok((ty, name, next))
}

/// Where the operand of a `::` cast starts in `out`: one name, literal,
/// parameter or earlier cast, a parenthesised expression with the function
/// name before it, each optionally qualified (`a.b`).
fn operand_start(out: &[Piece<'_>]) -> Option<usize> {
    let last = out.len().checked_sub(1)?;
    let p = &out[last];
    if p.kind == Kind::Token(TokenKind::Word)
        && NOT_FUNCTIONS.iter().any(|w| p.text.eq_ignore_ascii_case(w))
    {
        return None;
    }
    let mut start = match p.kind {
        Kind::Token(TokenKind::Punct) if p.text == ")" => {
            let mut depth = 0usize;
            let mut k = last;
            loop {
                if out[k].is_punct(")") {
                    depth += 1;
                } else if out[k].is_punct("(") {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                k = k.checked_sub(1)?;
            }
            let is_function = k > 0
                && out[k].gap.is_empty()
                && out[k - 1].is_name()
                && !NOT_FUNCTIONS
                    .iter()
                    .any(|w| out[k - 1].text.eq_ignore_ascii_case(w));
            k - usize::from(is_function)
        }
        Kind::Token(
            TokenKind::Word
            | TokenKind::QuotedIdent
            | TokenKind::String
            | TokenKind::Number
            | TokenKind::Param,
        )
        | Kind::Cast => last,
        Kind::Token(_) => return None,
    };
    while start >= 2 && out[start - 1].is_punct(".") && out[start - 2].is_name() {
        start -= 2;
    }
    Some(start)
}

/// The content of a `'...'` literal (`''` unescaped), if it is terminated.
fn unquote(lit: &str) -> Option<String> {
    let inner = lit.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// SQLite for `operand::ty`; a string literal cast to bool or timestamptz is
/// converted right here so that it compares with the stored form.
fn render_cast(operand: &str, literal: Option<&str>, ty: ColType) -> Result<String, AdminError> {
    let invalid = |s: &str| AdminError::invalid_input(ty.pg_name(), s);
    Ok(match (ty, literal) {
        (ColType::Bool, Some(s)) => {
            let v = crate::value::decode_param(Some(s.as_bytes()), false, ty)
                .map_err(|_| invalid(s))?;
            if v == crate::Value::Bool(true) {
                "1"
            } else {
                "0"
            }
            .to_string()
        }
        (ColType::Timestamptz, Some(s)) => {
            let t = parse_timestamptz(s).ok_or_else(|| invalid(s))?;
            format!("'{}'", format_timestamptz(t))
        }
        (ColType::Bool, None) => format!("(CAST({operand} AS INTEGER) <> 0)"),
        (ColType::Int4 | ColType::Int8, _) => format!("CAST({operand} AS INTEGER)"),
        (ColType::Float8, _) => format!("CAST({operand} AS REAL)"),
        (ColType::Text | ColType::Timestamptz, _) => format!("CAST({operand} AS TEXT)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(sql: &str) -> String {
        translate(sql).unwrap()
    }

    #[test]
    fn single_statement_strips_semicolon_and_refuses_two() {
        assert_eq!(single_statement("SELECT 1;").unwrap(), "SELECT 1");
        assert_eq!(
            single_statement(" SELECT ';' ; -- bye").unwrap(),
            "SELECT ';'"
        );
        let e = single_statement("SELECT 1; SELECT 2").unwrap_err();
        assert_eq!(e.sqlstate(), "42601");
        assert!(e.to_string().contains("multiple commands"));
        assert_eq!(single_statement(" ; ").unwrap_err().sqlstate(), "42601");
    }

    #[test]
    fn casts() {
        assert_eq!(
            tr("SELECT x::int8 FROM t"),
            "SELECT CAST(x AS INTEGER) FROM t"
        );
        assert_eq!(tr("SELECT n.port::text"), "SELECT CAST(n.port AS TEXT)");
        assert_eq!(
            tr("SELECT count(*)::int, (a + b)::float8 FROM t"),
            "SELECT CAST(count(*) AS INTEGER), CAST((a + b) AS REAL) FROM t"
        );
        assert_eq!(tr("SELECT $1::bigint"), "SELECT CAST($1 AS INTEGER)");
        assert_eq!(
            tr("SELECT 1.5::double precision"),
            "SELECT CAST(1.5 AS REAL)"
        );
        assert_eq!(tr("SELECT 'a'::varchar(3)"), "SELECT CAST('a' AS TEXT)");
        assert_eq!(
            tr("SELECT x::int::text"),
            "SELECT CAST(CAST(x AS INTEGER) AS TEXT)"
        );
        assert_eq!(tr("SELECT -1::int"), "SELECT -CAST(1 AS INTEGER)");
        assert_eq!(tr("SELECT (1)::int"), "SELECT CAST((1) AS INTEGER)");
        assert_eq!(tr("SELECT 't'::bool, 'off'::boolean"), "SELECT 1, 0");
        assert_eq!(tr("SELECT ok::bool"), "SELECT (CAST(ok AS INTEGER) <> 0)");
        assert_eq!(
            tr("WHERE at > '2026-01-02T03:04:05Z'::timestamptz"),
            "WHERE at > '2026-01-02 03:04:05+00'"
        );
    }

    #[test]
    fn leaves_strings_identifiers_and_comments_alone() {
        for sql in [
            "SELECT 'a::int', \"b::int\" FROM t /* c::int ilike */ -- x::int",
            "SELECT 'ilike' FROM t",
            "SELECT a FROM t WHERE b = $1 AND c < 3",
        ] {
            assert_eq!(tr(sql), sql);
        }
    }

    #[test]
    fn ilike() {
        assert_eq!(
            tr("SELECT * FROM t WHERE a ILIKE 'x%' OR b not iLike 'Y'"),
            "SELECT * FROM t WHERE a LIKE 'x%' OR b not LIKE 'Y'"
        );
    }

    #[test]
    fn unsupported_casts() {
        for (sql, needle) in [
            ("SELECT x::regclass", "regclass"),
            ("SELECT x::int[]", "int"),
            ("SELECT ARRAY[1]::int", "int"),
            ("SELECT ::int", "int"),
            ("SELECT x::", "nothing"),
            ("SELECT x::double", "double"),
            ("SELECT x::\"int8\"", "\"int8\""),
        ] {
            let e = translate(sql).unwrap_err();
            assert_eq!(e.sqlstate(), "0A000", "{sql}");
            assert!(e.to_string().contains(needle), "{sql}: {e}");
        }
        assert_eq!(
            translate("SELECT 'x'::bool").unwrap_err().sqlstate(),
            "22P02"
        );
        assert_eq!(
            translate("SELECT 'x'::timestamptz").unwrap_err().sqlstate(),
            "22P02"
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        for sql in [
            "",
            ")::int",
            "((::int",
            "'abc::int",
            "é::int",
            "x::varchar(",
            "$1::",
        ] {
            let _ = translate(sql);
        }
    }
}
