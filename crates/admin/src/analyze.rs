//! Lexical questions about a statement, answered from its tokens: which
//! admin tables it mentions, how many `$n` parameters it uses, and what type
//! each parameter probably has.

use shardgate_router::lexer::{Lexer, Token, TokenKind};

use crate::error::AdminError;
use crate::table::Table;
use crate::translate::{cast_type, is_cast_at};
use crate::value::ColType;

/// Highest parameter number Postgres allows.
const MAX_PARAMS: usize = 65_535;

/// Comparison operators after which (or before which) a `$n` takes the type
/// of the column on the other side.
const COMPARISONS: &[&str] = &["=", "<>", "!=", "<", "<=", ">", ">="];

fn tokens(sql: &str) -> Vec<Token<'_>> {
    Lexer::new(sql)
        .filter(|t| t.kind != TokenKind::BlockComment)
        .collect()
}

/// An identifier as SQLite compares it: quotes removed, `""` unescaped.
fn ident(t: &Token<'_>) -> Option<String> {
    match t.kind {
        TokenKind::Word => Some(t.text.to_string()),
        TokenKind::QuotedIdent => {
            let inner = t.text.strip_prefix('"')?.strip_suffix('"')?;
            Some(inner.replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// The names in `known` that `sql` mentions as a word or quoted identifier
/// (ASCII case-insensitive), in the order of `known`.
pub(crate) fn referenced_tables(sql: &str, known: &[&str]) -> Vec<String> {
    let words: Vec<String> = Lexer::new(sql).filter_map(|t| ident(&t)).collect();
    known
        .iter()
        .filter(|k| words.iter().any(|w| w.eq_ignore_ascii_case(k)))
        .map(|k| k.to_string())
        .collect()
}

/// The number of a `$n` token; `$0` and numbers above 65535 do not exist.
fn param_number(t: &Token<'_>) -> Result<usize, AdminError> {
    t.text
        .get(1..)
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|n| (1..=MAX_PARAMS).contains(n))
        .ok_or_else(|| AdminError::UndefinedParam(t.text.to_string()))
}

/// The highest `$n` in `sql` (0 when there is none).
pub(crate) fn param_count(sql: &str) -> Result<usize, AdminError> {
    tokens(sql)
        .iter()
        .filter(|t| t.kind == TokenKind::Param)
        .try_fold(0, |max, t| Ok(max.max(param_number(t)?)))
}

/// A probable type for each `$1..$n` of `sql` (see [`guess_one`]), Text
/// where nothing tells.
pub(crate) fn param_types(sql: &str, tables: &[&Table]) -> Result<Vec<ColType>, AdminError> {
    let toks = tokens(sql);
    let mut types: Vec<Option<ColType>> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.kind != TokenKind::Param {
            continue;
        }
        let n = param_number(t)?;
        if types.len() < n {
            types.resize(n, None);
        }
        if types[n - 1].is_none() {
            types[n - 1] = guess_one(&toks, i, tables);
        }
    }
    Ok(types
        .into_iter()
        .map(|t| t.unwrap_or(ColType::Text))
        .collect())
}

/// The type of the parameter at `toks[i]` from its surroundings:
/// `$n::type`; `col <op> $n` or `$n <op> col`; `col [NOT] IN (..., $n, ...)`;
/// `col [NOT] BETWEEN $a AND $b`; `LIMIT $n` / `OFFSET $n`.
fn guess_one(toks: &[Token<'_>], i: usize, tables: &[&Table]) -> Option<ColType> {
    if is_cast_at(toks, i + 1) {
        if let Some(ty) = toks.get(i + 3).and_then(|t| cast_type(t.text)) {
            return Some(ty);
        }
    }
    let before = |k: usize| i.checked_sub(k).and_then(|j| toks.get(j));
    let is_cmp = |t: &Token<'_>| COMPARISONS.iter().any(|op| t.is_punct(op));
    if before(1).is_some_and(|t| t.is_keyword("limit") || t.is_keyword("offset")) {
        return Some(ColType::Int8);
    }
    if before(1).is_some_and(is_cmp) {
        if let Some(ty) = i
            .checked_sub(2)
            .and_then(|end| column_ending_at(toks, end, tables))
        {
            return Some(ty);
        }
    }
    if toks.get(i + 1).is_some_and(is_cmp) {
        if let Some(ty) = column_starting_at(toks, i + 2, tables) {
            return Some(ty);
        }
    }
    // IN list: walk back over literals, parameters and commas to `IN (`.
    let mut j = i;
    while j > 0
        && (toks[j - 1].is_punct(",")
            || matches!(
                toks[j - 1].kind,
                TokenKind::Param | TokenKind::Number | TokenKind::String
            ))
    {
        j -= 1;
    }
    if j >= 3 && toks[j - 1].is_punct("(") && toks[j - 2].is_keyword("in") {
        return column_before_keyword(toks, j - 2, tables);
    }
    // BETWEEN $a AND $b.
    if before(1).is_some_and(|t| t.is_keyword("between")) {
        return column_before_keyword(toks, i - 1, tables);
    }
    if before(1).is_some_and(|t| t.is_keyword("and"))
        && before(3).is_some_and(|t| t.is_keyword("between"))
    {
        return column_before_keyword(toks, i - 3, tables);
    }
    None
}

/// The column right before the keyword at `toks[k]`, skipping a `NOT`.
fn column_before_keyword(toks: &[Token<'_>], k: usize, tables: &[&Table]) -> Option<ColType> {
    let mut end = k.checked_sub(1)?;
    if toks[end].is_keyword("not") {
        end = end.checked_sub(1)?;
    }
    column_ending_at(toks, end, tables)
}

/// The type of the (possibly `qualifier.`) column whose name is `toks[end]`.
fn column_ending_at(toks: &[Token<'_>], end: usize, tables: &[&Table]) -> Option<ColType> {
    let name = ident(toks.get(end)?)?;
    let qualifier = match end.checked_sub(2) {
        Some(q) if toks[end - 1].is_punct(".") => ident(&toks[q]),
        _ => None,
    };
    lookup(qualifier.as_deref(), &name, tables)
}

/// The type of the (possibly `qualifier.`) column starting at `toks[start]`.
fn column_starting_at(toks: &[Token<'_>], start: usize, tables: &[&Table]) -> Option<ColType> {
    let first = ident(toks.get(start)?)?;
    match (toks.get(start + 1), toks.get(start + 2)) {
        (Some(dot), Some(col)) if dot.is_punct(".") => lookup(Some(&first), &ident(col)?, tables),
        _ => lookup(None, &first, tables),
    }
}

/// The type of column `name`, from the table called `qualifier` if there is
/// one, else from the first table that has such a column.
fn lookup(qualifier: Option<&str>, name: &str, tables: &[&Table]) -> Option<ColType> {
    let named = qualifier.and_then(|q| tables.iter().find(|t| t.name.eq_ignore_ascii_case(q)));
    if let Some(col) = named.and_then(|t| t.column(name)) {
        return Some(col.ty);
    }
    tables.iter().find_map(|t| t.column(name)).map(|c| c.ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns;

    fn nodes() -> Table {
        Table {
            name: "nodes",
            columns: columns![node: Text, port: Int4, healthy: Bool, since: Timestamptz],
            rows: vec![],
        }
    }

    fn shards() -> Table {
        Table {
            name: "shards",
            columns: columns![shard: Int8, node: Text, weight: Float8],
            rows: vec![],
        }
    }

    fn guess(sql: &str) -> Vec<ColType> {
        param_types(sql, &[&nodes(), &shards()]).unwrap()
    }

    #[test]
    fn referenced() {
        let known = ["nodes", "shards", "pools"];
        assert_eq!(
            referenced_tables(
                "SELECT * FROM shardgate.NODES JOIN \"shards\" USING (node)",
                &known
            ),
            ["nodes", "shards"]
        );
        assert_eq!(
            referenced_tables("SELECT 'pools' /* shards */ FROM x", &known),
            Vec::<String>::new()
        );
    }

    #[test]
    fn counts_params() {
        assert_eq!(param_count("SELECT 1").unwrap(), 0);
        assert_eq!(param_count("SELECT $2, '$5', $1").unwrap(), 2);
        assert_eq!(param_count("SELECT $0").unwrap_err().sqlstate(), "42P02");
        assert_eq!(
            param_count("SELECT $99999999999999999999999")
                .unwrap_err()
                .sqlstate(),
            "42P02"
        );
    }

    #[test]
    fn guesses_from_comparisons() {
        use ColType::*;
        assert_eq!(guess("SELECT * FROM shards WHERE shard = $1"), [Int8]);
        assert_eq!(
            guess("SELECT * FROM nodes n WHERE $1 <= n.port AND n.\"healthy\" = $2"),
            [Int4, Bool]
        );
        assert_eq!(guess("SELECT * FROM nodes WHERE since > $1"), [Timestamptz]);
        assert_eq!(guess("SELECT * FROM shards s WHERE s.weight<>$1"), [Float8]);
        assert_eq!(guess("SELECT * FROM nodes WHERE shards.node = $1"), [Text]);
        assert_eq!(guess("SELECT $1, $3"), [Text, Text, Text]);
        assert_eq!(guess("SELECT * FROM nodes WHERE nope = $1"), [Text]);
        assert_eq!(guess("SELECT $1 + port FROM nodes"), [Text]);
    }

    #[test]
    fn guesses_from_in_between_limit_and_casts() {
        use ColType::*;
        assert_eq!(
            guess("SELECT * FROM shards WHERE shard IN (1, $2, $1)"),
            [Int8, Int8]
        );
        assert_eq!(guess("SELECT * FROM nodes WHERE port NOT IN ($1)"), [Int4]);
        assert_eq!(
            guess("SELECT * FROM shards WHERE weight BETWEEN $1 AND $2"),
            [Float8, Float8]
        );
        assert_eq!(
            guess("SELECT * FROM nodes LIMIT $1 OFFSET $2"),
            [Int8, Int8]
        );
        assert_eq!(
            guess("SELECT $1::int8, $2::timestamptz"),
            [Int8, Timestamptz]
        );
        assert_eq!(guess("SELECT * FROM nodes WHERE node = $1::bool"), [Bool]);
    }
}
