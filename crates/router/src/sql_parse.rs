//! The one way this crate hands SQL text to sqlparser.
//!
//! sqlparser's tokenizer reads an operator run greedily: `x>-1` becomes the
//! custom operator `>-` applied to `1`. PostgreSQL's lexer trims trailing
//! `+`/`-` from a multi-character operator unless the operator holds one of
//! ``~!@#%^&|`?``, so the server reads `x > -1`. Every parse here first
//! spaces such runs the way PostgreSQL splits them, so the statement the
//! proxy analyses is the statement the server runs, whichever way it was
//! written.

use std::borrow::Cow;

use sqlparser::ast::{Expr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

use crate::lexer::{Lexer, TokenKind};

/// The statements of `sql`, parsed with PostgreSQL's operator splitting.
pub fn parse_statements(sql: &str) -> Result<Vec<Statement>, ParserError> {
    Parser::parse_sql(&PostgreSqlDialect {}, &postgres_operator_spacing(sql))
}

/// The one expression `text` is, all of it, parsed with PostgreSQL's
/// operator splitting.
pub fn parse_expr(text: &str) -> Result<Expr, ParserError> {
    let spaced = postgres_operator_spacing(text);
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(&spaced)?;
    let expr = parser.parse_expr()?;
    match parser.peek_token().token {
        Token::EOF => Ok(expr),
        other => Err(ParserError::ParserError(format!(
            "unexpected {other} after the expression"
        ))),
    }
}

/// `sql` with a space between the operators PostgreSQL's lexer reads in one
/// operator run (`>-1` becomes `> -1`; `#-` and `<->` stay whole);
/// borrowed when nothing needs one.
pub fn postgres_operator_spacing(sql: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for t in Lexer::new(sql).filter(|t| t.kind == TokenKind::Punct && t.text.len() > 1) {
        let first = postgres_operator_len(t.text);
        if first == t.text.len() {
            continue;
        }
        let out = out.get_or_insert_with(|| String::with_capacity(sql.len() + 8));
        out.push_str(&sql[copied..t.offset]);
        let mut rest = t.text;
        let mut n = first;
        loop {
            out.push_str(&rest[..n]);
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            out.push(' ');
            n = postgres_operator_len(rest);
        }
        copied = t.offset + t.text.len();
    }
    match out {
        None => Cow::Borrowed(sql),
        Some(mut out) => {
            out.push_str(&sql[copied..]);
            Cow::Owned(out)
        }
    }
}

/// The length of the operator PostgreSQL's lexer reads at the start of an
/// operator run (`scan.l`: trailing `+`/`-` are dropped from a longer
/// operator holding none of ``~!@#%^&|`?``).
fn postgres_operator_len(run: &str) -> usize {
    let b = run.as_bytes();
    let sign = |c: &u8| matches!(c, b'+' | b'-');
    let mut n = b.len();
    if n > 1 && sign(&b[n - 1]) && !b[..n - 1].iter().any(|c| b"~!@#%^&|`?".contains(c)) {
        while n > 1 && sign(&b[n - 1]) {
            n -= 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_signs_are_split_as_postgres_splits_them() {
        for (written, spaced) in [
            ("x>-1", "x> -1"),
            ("x=-1", "x= -1"),
            ("x>=-1", "x>= -1"),
            ("x<>-1", "x<> -1"),
            ("x<-+1", "x< - +1"),
            ("a*-b", "a* -b"),
            ("id / 10>>>>-000", "id / 10>>>> -000"),
        ] {
            assert_eq!(postgres_operator_spacing(written), spaced, "{written}");
        }
    }

    #[test]
    fn operators_postgres_keeps_whole_are_untouched() {
        for text in [
            "x = -1",
            "j #- '{a}'",
            "p <-> q",
            "r -|- s",
            "a ?- b",
            "a @- b",
            "'>-' || x",
            "x > 1 -- >-1",
            "x /* >-1 */ > 1",
        ] {
            assert!(
                matches!(postgres_operator_spacing(text), Cow::Borrowed(_)),
                "{text}"
            );
        }
    }

    #[test]
    fn a_split_operator_parses_as_the_server_reads_it() {
        let split = parse_expr("x>-1").unwrap();
        assert_eq!(split, parse_expr("x > -1").unwrap());
        assert_eq!(split.to_string(), "x > -1");
    }

    #[test]
    fn an_expression_must_be_all_of_the_text() {
        assert!(parse_expr("1 + 2").is_ok());
        assert!(parse_expr("1 + 2 )").is_err());
    }
}
