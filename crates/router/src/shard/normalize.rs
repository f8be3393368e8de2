//! Literal normalisation for plan caching: every numeric and string literal
//! becomes a placeholder `$n` numbered above the highest `$n` of the text,
//! so `... WHERE aid = 123` and `... WHERE aid = 456` share one text (and one
//! cached plan), and the literal values are returned apart.
//!
//! The normalised text keeps the tokens of the original, drops comments and
//! collapses whitespace (one space where the original had whitespace or a
//! comment, none where tokens touched), so it parses like the original
//! wherever a placeholder may stand for a literal.
//!
//! A unary minus before a number is folded into the literal (`aid = -5`
//! gives the literal `-5`) when it follows an operator, `(`, `,`, nothing, or
//! a keyword after which a value starts (`AND`, `THEN`, `BETWEEN`, ...). An
//! operator the lexer read together with the minus (`=-5`) is split the way
//! PostgreSQL does (an operator made only of `+-*/<>=` cannot end in `-`).

use std::ops::Range;

use crate::classify::{closed, plain_number};
use crate::hints::mentions_shardgate;
use crate::lexer::{Lexer, Token, TokenKind};

/// Keywords after which a `-` is a sign, not a subtraction.
const VALUE_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "between",
    "then",
    "else",
    "when",
    "case",
    "select",
    "where",
    "having",
    "on",
    "by",
    "limit",
    "offset",
    "returning",
    "like",
    "ilike",
    "distinct",
    "all",
    "any",
    "some",
    "values",
    "in",
    "is",
    "return",
    "set",
    "using",
    "escape",
];

/// Result of [`normalize`].
pub(crate) struct Normalized {
    /// Highest `$n` of the original text (placeholder `$k` with `k > base`
    /// stands for literal `k - base - 1`).
    pub base: usize,
    /// The text has a statement after a semicolon.
    pub multi: bool,
}

/// Where [`normalize`] reports the literals it replaces, in text order.
#[derive(Debug, Default)]
pub(crate) struct LiteralSink<'a> {
    /// Decoded values (numbers as written with a folded sign, strings
    /// unquoted and unescaped), when wanted.
    pub values: Option<&'a mut Vec<String>>,
    /// Byte ranges of the literals in the original text (a folded sign
    /// included), when wanted.
    pub spans: Option<&'a mut Vec<Range<usize>>>,
    count: usize,
}

impl<'a> LiteralSink<'a> {
    /// A sink filling `values` and `spans` (each when given).
    pub(crate) fn new(
        values: Option<&'a mut Vec<String>>,
        spans: Option<&'a mut Vec<Range<usize>>>,
    ) -> LiteralSink<'a> {
        LiteralSink {
            values,
            spans,
            count: 0,
        }
    }

    fn push(
        &mut self,
        out: &mut String,
        base: usize,
        span: Range<usize>,
        value: impl FnOnce() -> String,
    ) -> Option<()> {
        let n = base.checked_add(self.count)?.checked_add(1)?;
        // `WHERE'x'` must not become the identifier `WHERE$1`.
        if out.chars().next_back().is_some_and(word_char) {
            out.push(' ');
        }
        out.push('$');
        crate::analysis::push_number(out, n);
        self.count += 1;
        if let Some(v) = self.values.as_deref_mut() {
            v.push(value());
        }
        if let Some(s) = self.spans.as_deref_mut() {
            s.push(span);
        }
        Some(())
    }
}

/// Writes the normalised text of `sql` into `out` and reports its literals
/// to `literals`. Numbers the parser would not read as one literal (`1P0`,
/// `1into`) and strings left open at the end of the text stay as written,
/// as do block comments holding hints (`/* shardgate: ... */`) or left
/// open, so texts
/// sharing a normalised form share their route and hints. `None` if
/// parameter numbers overflow, or where the normalised text would not say
/// what sqlparser reads in the exact one ([`unlike_sqlparser`]).
pub(crate) fn normalize(
    sql: &str,
    out: &mut String,
    literals: &mut LiteralSink<'_>,
) -> Option<Normalized> {
    // One pass numbering literals from `$1`; a text with parameters too is
    // written again with the literals numbered above them.
    let first = normalize_pass(sql, out, literals, 0)?;
    if first.base == 0 || literals.count == 0 {
        return Some(first);
    }
    normalize_pass(sql, out, literals, first.base)
}

/// Whether text between tokens (whitespace and comments) or an operator
/// reads differently for the lexer, which drops it, and for sqlparser
/// (fuzzing found both): a control character other than tab and line ends
/// (`\x0b`, `\x0c`, NUL), or a `--` comment with a lone `\r`, which ends
/// the comment for Postgres and the lexer and not for sqlparser (only at
/// `\n`). Such a text is analysed as written.
pub(crate) fn unlike_sqlparser(between: &str) -> bool {
    let b = between.as_bytes();
    let mut lone_cr = false;
    for (i, c) in b.iter().enumerate() {
        match c {
            b'\t' | b'\n' => {}
            b'\r' => lone_cr |= b.get(i + 1) != Some(&b'\n'),
            0..=0x1f | 0x7f => return true,
            _ => {}
        }
    }
    lone_cr && between.contains("--")
}

/// Whether a comment's text (after `/*` or `--`) is what sqlparser reads as
/// an optimizer hint (pg_hint_plan's `/*+ ... */`): ASCII letters and digits,
/// then `+`. sqlparser keeps such a comment in the statement it parses.
fn optimizer_hint(body: &str) -> bool {
    body.split_once('+')
        .is_some_and(|(before, _)| before.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// Whether text between tokens holds a `--` comment that is an optimizer
/// hint ([`optimizer_hint`]).
fn holds_line_hint(between: &str) -> bool {
    between
        .match_indices("--")
        .any(|(i, _)| optimizer_hint(between[i + 2..].lines().next().unwrap_or("")))
}

/// [`normalize`] numbering literals above `base`; returns the text's
/// highest parameter number (which the numbering needs to be above).
fn normalize_pass(
    sql: &str,
    out: &mut String,
    literals: &mut LiteralSink<'_>,
    base: usize,
) -> Option<Normalized> {
    out.clear();
    if let Some(v) = literals.values.as_deref_mut() {
        v.clear();
    }
    if let Some(s) = literals.spans.as_deref_mut() {
        s.clear();
    }
    literals.count = 0;
    let mut max_param = 0usize;
    let mut multi = false;
    let mut after_semicolon = false;
    let mut lx = Lexer::new(sql);
    // The last token read was a literal (written as a placeholder).
    let mut after_literal = false;
    // The last token read was an operator.
    let mut after_punct = false;
    let mut prev_end = 0usize;
    // Whether a `-` here would be a sign.
    // (a word's answer is looked up only when a `-` follows it).
    let mut sign_ok = Sign::Yes;
    while let Some(t) = lx.next() {
        match t.kind {
            TokenKind::Param => max_param = max_param.max(t.text[1..].parse::<usize>().ok()?),
            TokenKind::Semicolon => after_semicolon = true,
            TokenKind::BlockComment => {}
            _ if after_semicolon => multi = true,
            _ => {}
        }
        let end = t.offset + t.text.len();
        if t.offset > prev_end {
            let between = &sql[prev_end..t.offset];
            // A comment right after an operator (`@--`): sqlparser may read
            // the operator on into it.
            let glued = after_punct && (between.starts_with("--") || between.starts_with("/*"));
            if glued || unlike_sqlparser(between) || holds_line_hint(between) {
                return None;
            }
        }
        after_punct = t.kind == TokenKind::Punct;
        // `'x'AS` must not become `$1AS`, nor `'x'1` the parameter `$11`.
        let gap =
            t.offset > prev_end || (after_literal && t.text.chars().next().is_some_and(word_char));
        after_literal = matches!(t.kind, TokenKind::Number | TokenKind::String);
        let sep = |out: &mut String| {
            if gap && !out.is_empty() {
                out.push(' ');
            }
        };
        match t.kind {
            // sqlparser keeps an optimizer hint (`/*+ SeqScan(t) */`) in
            // the statement, so it must not be dropped here.
            TokenKind::BlockComment if optimizer_hint(&t.text[2..]) => return None,
            TokenKind::BlockComment => {
                // Hints stay, and so does a comment left open (no statement).
                if mentions_shardgate(t.text) || !t.text.ends_with("*/") {
                    sep(out);
                    out.push_str(t.text);
                    prev_end = end;
                }
                continue;
            }
            // A literal after a `.` (`c..20`, `c . 20`, no statement) stays
            // as written: `c.$1` would parse as a qualified name.
            TokenKind::Number | TokenKind::String if out.ends_with('.') => {
                sep(out);
                out.push_str(t.text);
                sign_ok = Sign::No;
            }
            // `100000.` then `.`, or `1 . x`: sqlparser reads no number there.
            TokenKind::Number
                if plain_number(t.text) && !sql[end..].trim_start().starts_with('.') =>
            {
                sep(out);
                literals.push(out, base, t.offset..end, || t.text.to_owned())?;
                sign_ok = Sign::No;
            }
            TokenKind::String if end < sql.len() || closed(t.text) => {
                sep(out);
                literals.push(out, base, t.offset..end, || decode_string(t.text))?;
                sign_ok = Sign::No;
            }
            // An operator run holding `--` or `/*`: sqlparser starts a
            // comment there.
            TokenKind::Punct
                if unlike_sqlparser(t.text) || t.text.contains("--") || t.text.contains("/*") =>
            {
                return None
            }
            TokenKind::Punct => {
                let (op, minus) = split_trailing_minus(t.text);
                if minus && sign_ok_after(op, sign_ok.resolve()) && !out.ends_with('.') {
                    if let Some(num) = next_number(&mut lx) {
                        sep(out);
                        out.push_str(op);
                        if !op.is_empty() && num.offset > end {
                            out.push(' ');
                        }
                        let sign = t.offset + op.len();
                        let num_end = num.offset + num.text.len();
                        literals.push(out, base, sign..num_end, || format!("-{}", num.text))?;
                        prev_end = num_end;
                        sign_ok = Sign::No;
                        after_literal = true;
                        continue;
                    }
                }
                sep(out);
                out.push_str(t.text);
                sign_ok = if matches!(t.text, ")" | "]") {
                    Sign::No
                } else {
                    Sign::Yes
                };
            }
            TokenKind::Word => {
                sep(out);
                out.push_str(t.text);
                sign_ok = Sign::AfterWord(t.text);
            }
            _ => {
                sep(out);
                out.push_str(t.text);
                sign_ok = if t.kind == TokenKind::Semicolon {
                    Sign::Yes
                } else {
                    Sign::No
                };
            }
        }
        prev_end = end;
    }
    if unlike_sqlparser(&sql[prev_end..]) {
        return None;
    }
    Some(Normalized {
        base: max_param,
        multi,
    })
}

/// A character that continues an identifier, keyword, number or
/// parameter: a placeholder must not touch one.
fn word_char(c: char) -> bool {
    // Every non-ASCII character continues an identifier, as in Postgres.
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// Whether a `-` at this point would be a sign.
#[derive(Clone, Copy)]
enum Sign<'a> {
    Yes,
    No,
    /// After this word: a sign if it is one of [`VALUE_KEYWORDS`].
    AfterWord(&'a str),
}

impl Sign<'_> {
    fn resolve(self) -> bool {
        match self {
            Sign::Yes => true,
            Sign::No => false,
            Sign::AfterWord(w) => VALUE_KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)),
        }
    }
}

/// `op` without a trailing `-` PostgreSQL would split off, and whether one
/// was there. A lone `-` gives `("", true)`.
fn split_trailing_minus(op: &str) -> (&str, bool) {
    match op.strip_suffix('-') {
        Some("") => ("", true),
        Some(rest) if !rest.bytes().any(|c| b"~!@#%^&|`?".contains(&c)) => (rest, true),
        _ => (op, false),
    }
}

/// Whether a `-` after `op` (the part of the same token before it, maybe
/// empty) is a sign.
fn sign_ok_after(op: &str, before: bool) -> bool {
    if op.is_empty() {
        before
    } else {
        true
    }
}

/// The next non-comment token if it is a number (consumed), else `None`
/// (nothing consumed).
fn next_number<'a>(lx: &mut Lexer<'a>) -> Option<Token<'a>> {
    let mut peek = lx.clone();
    let t = peek.find(|t| t.kind != TokenKind::BlockComment)?;
    if t.kind == TokenKind::Number && plain_number(t.text) {
        *lx = peek;
        Some(t)
    } else {
        None
    }
}

/// The value of a string literal token: quotes removed, doubled quotes
/// undone, `E'...'` escapes decoded, dollar quotes stripped. `B'..'`,
/// `X'..'` and `U&'..'` keep their inner text as written.
pub(crate) fn decode_string(text: &str) -> String {
    if let Some(after) = text.strip_prefix('$') {
        let tag_end = after.find('$').map_or(text.len(), |p| p + 2);
        let tag = &text[..tag_end.min(text.len())];
        let body = &text[tag.len()..];
        return body.strip_suffix(tag).unwrap_or(body).to_owned();
    }
    let (escapes, quoted) = match text.as_bytes().first() {
        Some(b'e' | b'E') => (true, &text[1..]),
        Some(b'b' | b'B' | b'x' | b'X' | b'n' | b'N') => (false, &text[1..]),
        Some(b'u' | b'U') if text[1..].starts_with('&') => (false, &text[2..]),
        _ => (false, text),
    };
    let inner = quoted.strip_prefix('\'').unwrap_or(quoted);
    let inner = if !inner.is_empty() && inner.ends_with('\'') {
        &inner[..inner.len() - 1]
    } else {
        inner
    };
    if !escapes {
        return inner.replace("''", "'");
    }
    decode_escapes(inner)
}

/// PostgreSQL `E'...'` escapes.
fn decode_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' && b.get(i + 1) == Some(&b'\'') {
            out.push(b'\'');
            i += 2;
            continue;
        }
        if c != b'\\' || i + 1 >= b.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = b[i + 1];
        i += 2;
        if let Some(v) = crate::lexer::octal_or_hex_escape(e, b, &mut i) {
            out.push(v);
            continue;
        }
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' | b'U' => {
                let len = if e == b'u' { 4 } else { 8 };
                let hex = s
                    .get(i..i + len)
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
                match hex
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                {
                    Some(ch) => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        i += len;
                    }
                    None => out.push(e),
                }
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(sql: &str) -> (String, Vec<String>) {
        let mut out = String::new();
        let mut lits = Vec::new();
        let mut sink = LiteralSink::new(Some(&mut lits), None);
        normalize(sql, &mut out, &mut sink).unwrap();
        (out, lits)
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            norm("SELECT abalance FROM pgbench_accounts WHERE aid = 123;"),
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into(),
                vec!["123".into()]
            )
        );
        assert_eq!(
            norm("select * from t where a = $2 and b = 'x''y' /* c */ and c=-5"),
            (
                "select * from t where a = $2 and b = $3 and c=$4".into(),
                vec!["x'y".into(), "-5".into()]
            )
        );
        assert_eq!(
            norm("SELECT a - 5, (a) -5, x IN (-1, - 2)").1,
            ["5", "5", "-1", "-2"]
        );
        assert_eq!(
            norm("SELECT a::int, E'a\\nb', $q$x$q$").0,
            "SELECT a::int, $1, $2"
        );
        assert_eq!(
            norm("SELECT E'a\\nb\\x41\\101\\u00e9', $q$x$q$").1,
            ["a\nbAAé", "x"]
        );
        assert_eq!(norm("x BETWEEN -1 AND -2").1, ["-1", "-2"]);
    }

    /// Fuzzing found it (fuzz/regressions/planner/): a literal touching a
    /// word became part of an identifier (`orders ORD''''I` gave `ORD$1I`,
    /// a valid alias), so the normalised text parsed where the text did not.
    #[test]
    fn placeholders_never_touch_words_or_digits() {
        assert_eq!(
            norm("SELECT * FROM orders ORD'x'I'y'").0,
            "SELECT * FROM orders ORD $1 I $2"
        );
        assert_eq!(norm("SELECT c.id, k.0000000").0, "SELECT c.id, k $1");
        assert_eq!(norm("SELECT c..20 FROM t").0, "SELECT c..20 FROM t");
        assert_eq!(
            norm("SELECT 'a'AS x, 'b'1, x=-5").0,
            "SELECT $1 AS x, $2 $3, x=$4"
        );
        assert_eq!(
            norm("SELECT a+1, f('x'), $2::int").0,
            "SELECT a+$3, f($4), $2::int"
        );
    }
}
