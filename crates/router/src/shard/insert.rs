//! Byte spans of an `INSERT ... VALUES` in the original text, found with the
//! lexer (strings, comments and dollar quotes respected), so per-shard
//! statements can be rebuilt without printing the parsed tree.

use std::ops::Range;

use crate::lexer::{closing_paren, Lexer, Token, TokenKind};

/// Spans of an `INSERT ... VALUES` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InsertSpans {
    /// Up to and including `VALUES` and the whitespace after it.
    pub prefix: Range<usize>,
    /// Each `( ... )` row, parentheses included.
    pub rows: Vec<Range<usize>>,
    /// From the first token after the last row to the end (maybe empty).
    pub suffix: Range<usize>,
}

/// Finds the top-level `VALUES` after the top-level `INSERT`, its rows and
/// what follows them. `None` if the text does not have that shape.
pub(super) fn locate(sql: &str) -> Option<InsertSpans> {
    let toks: Vec<Token<'_>> = Lexer::new(sql)
        .filter(|t| t.kind != TokenKind::BlockComment)
        .collect();
    let mut depth = 0usize;
    let mut seen_insert = false;
    let mut values_at = None;
    for (i, t) in toks.iter().enumerate() {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && t.kind == TokenKind::Word {
            if !seen_insert {
                seen_insert = t.is_keyword("insert");
            } else if t.is_keyword("values") {
                values_at = Some(i);
                break;
            }
        }
    }
    let v = values_at?;
    let bytes = sql.as_bytes();
    let mut p = toks[v].offset + toks[v].text.len();
    while p < bytes.len() && bytes[p].is_ascii_whitespace() {
        p += 1;
    }
    let mut rows = Vec::new();
    let mut i = v + 1;
    loop {
        let j = closing_paren(&toks, i)?;
        rows.push(toks[i].offset..toks[j].offset + 1);
        i = j + 1;
        if toks.get(i).is_some_and(|t| t.is_punct(",")) {
            i += 1;
        } else {
            break;
        }
    }
    let suffix = match toks.get(i) {
        Some(t) => t.offset..sql.len(),
        None => sql.len()..sql.len(),
    };
    Some(InsertSpans {
        prefix: 0..p,
        rows,
        suffix,
    })
}

/// `sql` with its `$n` placeholders renumbered `$1`, `$2`, ... in order of
/// first appearance, and for each new number the old one (0-based): one
/// shard's part of a multi-row INSERT gets only its rows' parameters.
/// `None` when a placeholder is not a valid number.
pub fn renumber_params(sql: &str) -> Option<(String, Vec<usize>)> {
    let mut out = String::with_capacity(sql.len());
    let mut old: Vec<usize> = Vec::new();
    let mut last = 0;
    for t in Lexer::new(sql).filter(|t| t.kind == TokenKind::Param) {
        let n: usize = t.text.get(1..)?.parse().ok()?;
        let index = n.checked_sub(1)?;
        let new = match old.iter().position(|&o| o == index) {
            Some(p) => p + 1,
            None => {
                old.push(index);
                old.len()
            }
        };
        out.push_str(&sql[last..t.offset]);
        out.push('$');
        out.push_str(&new.to_string());
        last = t.offset + t.text.len();
    }
    out.push_str(&sql[last..]);
    Some((out, old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        let sql = "/* c */ INSERT INTO t (a, b) VALUES\n  (1, 'x)'), ( (2), $$)$$ ) ON CONFLICT DO NOTHING;";
        let s = locate(sql).unwrap();
        assert_eq!(
            &sql[s.prefix.clone()],
            "/* c */ INSERT INTO t (a, b) VALUES\n  "
        );
        let rows: Vec<&str> = s.rows.iter().map(|r| &sql[r.clone()]).collect();
        assert_eq!(rows, ["(1, 'x)')", "( (2), $$)$$ )"]);
        assert_eq!(&sql[s.suffix], "ON CONFLICT DO NOTHING;");
        assert!(locate("INSERT INTO t SELECT 1").is_none());
        assert!(locate("INSERT INTO t VALUES (1").is_none());
        let s = locate("insert into t values(1)").unwrap();
        assert_eq!(s.suffix, 23..23);
    }

    #[test]
    fn parameters_are_renumbered_per_part() {
        let (sql, old) = super::renumber_params(
            "INSERT INTO t VALUES ($3, $4, '$9'), ($3, now()) RETURNING $10",
        )
        .unwrap();
        assert_eq!(
            sql,
            "INSERT INTO t VALUES ($1, $2, '$9'), ($1, now()) RETURNING $3"
        );
        assert_eq!(old, [2, 3, 9]);
        assert_eq!(
            super::renumber_params("SELECT 1").unwrap(),
            ("SELECT 1".into(), vec![])
        );
        assert!(super::renumber_params("SELECT $0").is_none());
    }
}
