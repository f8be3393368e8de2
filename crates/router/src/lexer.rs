//! A small SQL lexer: enough of PostgreSQL's lexical rules (comments, quoted
//! identifiers, standard and escape strings, dollar quoting) to find statement
//! boundaries, keywords, hint comments and literals without a full parse.

/// Kinds of tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Unquoted identifier or keyword.
    Word,
    /// `"quoted identifier"`.
    QuotedIdent,
    /// String literal in any form (`'..'`, `E'..'`, `$$..$$`, `B'..'`, `X'..'`, `U&'..'`).
    String,
    /// Numeric literal.
    Number,
    /// `$n` parameter placeholder.
    Param,
    /// `/* ... */` comment (kept so hints can be read).
    BlockComment,
    /// `;`.
    Semicolon,
    /// Any other operator or punctuation character run.
    Punct,
}

/// One token with its text (a slice of the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// Kind of token.
    pub kind: TokenKind,
    /// Exact source text.
    pub text: &'a str,
    /// Byte offset in the input.
    pub offset: usize,
}

impl<'a> Token<'a> {
    /// The text between the quotes of a `'...'` string or a `"..."`
    /// identifier, escapes (doubled quotes) left as they are; an
    /// unterminated one (which runs to the end of the input) gives all after
    /// its opening quote. `None` for other tokens (`E'...'`, `$$...$$`).
    pub fn quoted_body(&self) -> Option<&'a str> {
        let q = match self.kind {
            TokenKind::String => '\'',
            TokenKind::QuotedIdent => '"',
            _ => return None,
        };
        let body = self.text.strip_prefix(q)?;
        Some(body.strip_suffix(q).unwrap_or(body))
    }
}

impl Token<'_> {
    /// Whether this is the keyword `kw` (ASCII case-insensitive).
    #[inline]
    pub fn is_keyword(&self, kw: &str) -> bool {
        self.kind == TokenKind::Word && self.text.eq_ignore_ascii_case(kw)
    }

    /// Whether this is the punctuation `p`.
    #[inline]
    pub fn is_punct(&self, p: &str) -> bool {
        self.kind == TokenKind::Punct && self.text == p
    }
}

/// Iterator over the tokens of a SQL string; skips whitespace and `--` comments.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer over `src`.
    pub fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    fn skip_space_and_line_comments(&mut self) {
        let b = self.bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if b[self.pos..].starts_with(b"--") {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else {
                return;
            }
        }
    }

    /// End of a quoted run starting at `start` (which holds the quote `q`);
    /// a doubled quote is an escaped quote; `backslash` enables `\` escapes.
    fn quoted_end(&self, start: usize, q: u8, backslash: bool) -> usize {
        let b = self.bytes();
        let mut i = start + 1;
        while i < b.len() {
            if backslash && b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == q {
                if i + 1 < b.len() && b[i + 1] == q {
                    i += 2;
                    continue;
                }
                return i + 1;
            }
            i += 1;
        }
        b.len()
    }

    fn block_comment_end(&self, start: usize) -> usize {
        let b = self.bytes();
        let mut depth = 0usize;
        let mut i = start;
        while i + 1 < b.len() {
            if b[i] == b'/' && b[i + 1] == b'*' {
                depth += 1;
                i += 2;
            } else if b[i] == b'*' && b[i + 1] == b'/' {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            } else {
                i += 1;
            }
        }
        b.len()
    }

    /// If a dollar-quote tag (`$tag$`) starts at `start`, the end of the quoted string.
    fn dollar_quote_end(&self, start: usize) -> Option<usize> {
        let b = self.bytes();
        let mut i = start + 1;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'$' || (i > start + 1 && b[start + 1].is_ascii_digit()) {
            return None;
        }
        let tag = &b[start..=i];
        let body = i + 1;
        let end = b[body..]
            .windows(tag.len())
            .position(|w| w == tag)
            .map(|p| body + p + tag.len())
            .unwrap_or(b.len());
        Some(end)
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

const OPERATOR_CHARS: &[u8] = b"+-*/<>=~!@#%^&|`?";

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_space_and_line_comments();
        let b = self.bytes();
        let start = self.pos;
        if start >= b.len() {
            return None;
        }
        let c = b[start];
        let next = b.get(start + 1).copied();
        let (kind, end) = match c {
            b'\'' => (TokenKind::String, self.quoted_end(start, b'\'', false)),
            b'"' => (TokenKind::QuotedIdent, self.quoted_end(start, b'"', false)),
            b';' => (TokenKind::Semicolon, start + 1),
            b'/' if next == Some(b'*') => (TokenKind::BlockComment, self.block_comment_end(start)),
            b'$' if next.is_some_and(|n| n.is_ascii_digit()) => {
                let mut i = start + 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                (TokenKind::Param, i)
            }
            b'$' => match self.dollar_quote_end(start) {
                Some(end) => (TokenKind::String, end),
                None => (TokenKind::Punct, start + 1),
            },
            b'e' | b'E' if next == Some(b'\'') => {
                (TokenKind::String, self.quoted_end(start + 1, b'\'', true))
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == Some(b'\'') => {
                (TokenKind::String, self.quoted_end(start + 1, b'\'', false))
            }
            b'u' | b'U' if next == Some(b'&') && b.get(start + 2) == Some(&b'\'') => {
                (TokenKind::String, self.quoted_end(start + 2, b'\'', false))
            }
            c if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let mut i = start;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    // exponent sign: 1e-5
                    i += 1;
                    if i < b.len()
                        && (b[i] == b'-' || b[i] == b'+')
                        && matches!(b[i - 1], b'e' | b'E')
                        && !b[start..i].starts_with(b"0x")
                    {
                        i += 1;
                    }
                }
                (TokenKind::Number, i)
            }
            c if is_ident_start(c) => {
                let mut i = start + 1;
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                (TokenKind::Word, i)
            }
            c if OPERATOR_CHARS.contains(&c) => {
                let mut i = start + 1;
                while i < b.len()
                    && OPERATOR_CHARS.contains(&b[i])
                    && !b[i..].starts_with(b"--")
                    && !b[i..].starts_with(b"/*")
                {
                    i += 1;
                }
                (TokenKind::Punct, i)
            }
            _ => {
                // Single punctuation character (parentheses, comma, dot, colon, ...);
                // step over a whole UTF-8 sequence so slices stay on char boundaries.
                let len = self.src[start..].chars().next().map_or(1, char::len_utf8);
                (TokenKind::Punct, start + len)
            }
        };
        let end = end.min(b.len());
        // Never split a UTF-8 sequence, even for unterminated constructs.
        let end = (end..=b.len())
            .find(|&e| self.src.is_char_boundary(e))
            .unwrap_or(b.len());
        self.pos = end;
        Some(Token {
            kind,
            text: &self.src[start..end],
            offset: start,
        })
    }
}

/// The tokens of `sql` that say what it does: no comments, no literals
/// (numbers, strings, parameters) and no commas right after a literal. The
/// analysis of a very long statement (`IN (1, 2, ...)` with a million
/// values) looks at these: they stay few whatever the values.
pub fn lean_tokens(sql: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut after_literal = false;
    for t in Lexer::new(sql) {
        let literal = matches!(
            t.kind,
            TokenKind::Number | TokenKind::String | TokenKind::Param
        );
        let skip =
            literal || t.kind == TokenKind::BlockComment || (after_literal && t.is_punct(","));
        after_literal = literal || (after_literal && t.is_punct(","));
        if !skip {
            out.push(t);
        }
    }
    out
}

/// The fingerprint of `sql` for query statistics: its tokens separated by
/// one space, every numeric and string literal replaced by `?`, comments
/// dropped, keywords and unquoted names in lower case; at most `max_len`
/// bytes (cut at a character boundary, `...` appended). Statements that
/// differ only in their literals share a fingerprint, and no literal
/// (no data) reaches the statistics.
pub fn fingerprint(sql: &str, max_len: usize) -> String {
    let mut out = String::with_capacity(sql.len().min(max_len) + 3);
    fingerprint_into(sql, max_len, &mut out);
    out
}

/// [`fingerprint`] written into `out`, which is cleared first and keeps its
/// capacity: a caller that fingerprints every statement allocates nothing.
pub fn fingerprint_into(sql: &str, max_len: usize, out: &mut String) {
    out.clear();
    for t in Lexer::new(sql) {
        let piece = match t.kind {
            TokenKind::Number | TokenKind::String => "?",
            TokenKind::BlockComment => continue,
            _ => t.text,
        };
        if !out.is_empty() && !(t.kind == TokenKind::Semicolon) {
            out.push(' ');
        }
        let start = out.len();
        out.push_str(piece);
        if t.kind == TokenKind::Word {
            out[start..].make_ascii_lowercase();
        }
        if out.len() > max_len {
            let mut cut = max_len;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str("...");
            break;
        }
    }
}

/// Splits a query string into statements at top-level semicolons; empty
/// statements (only whitespace and comments) are dropped. Each item is a slice
/// of the input without its semicolon.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut has_content = false;
    for t in Lexer::new(sql) {
        match t.kind {
            TokenKind::Semicolon => {
                if has_content {
                    out.push(sql[start..t.offset].trim());
                }
                start = t.offset + 1;
                has_content = false;
            }
            TokenKind::BlockComment => {}
            _ => has_content = true,
        }
    }
    if has_content {
        out.push(sql[start..].trim());
    }
    out
}

/// The first keyword of a statement, skipping comments, empty statements
/// (`;`) and opening parentheses.
pub fn first_keyword(sql: &str) -> Option<&str> {
    Lexer::new(sql)
        .find(|t| {
            t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon && !t.is_punct("(")
        })
        .filter(|t| t.kind == TokenKind::Word)
        .map(|t| t.text)
}

/// Decodes an octal (`\ooo`, up to three digits) or hex (`\xhh`, up to two
/// digits) backslash escape, as `E'...'` strings and COPY text use them:
/// `e` is the character after the backslash and `i` the position after it
/// (advanced past the digits). `None` when `e` starts neither.
pub(crate) fn octal_or_hex_escape(e: u8, raw: &[u8], i: &mut usize) -> Option<u8> {
    match e {
        b'0'..=b'7' => {
            let mut v = u32::from(e - b'0');
            let mut n = 1;
            while n < 3 && *i < raw.len() && (b'0'..=b'7').contains(&raw[*i]) {
                v = v * 8 + u32::from(raw[*i] - b'0');
                *i += 1;
                n += 1;
            }
            Some((v & 0xff) as u8)
        }
        b'x' if *i < raw.len() && raw[*i].is_ascii_hexdigit() => {
            let mut v = 0u32;
            let mut n = 0;
            while n < 2 && *i < raw.len() && raw[*i].is_ascii_hexdigit() {
                v = v * 16 + (raw[*i] as char).to_digit(16).unwrap_or(0);
                *i += 1;
                n += 1;
            }
            Some(v as u8)
        }
        _ => None,
    }
}

/// The index of the `)` closing the `(` at `toks[open]`; `None` if that
/// token is no `(` or it is never closed.
pub fn closing_paren(toks: &[Token<'_>], open: usize) -> Option<usize> {
    if !toks.get(open)?.is_punct("(") {
        return None;
    }
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(open) {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth -= 1;
            if depth == 0 {
                return Some(j);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn closing_parens_are_matched() {
        let toks: Vec<super::Token<'_>> = super::Lexer::new("f((a), ')') (").collect();
        assert_eq!(super::closing_paren(&toks, 1), Some(7));
        assert_eq!(super::closing_paren(&toks, 2), Some(4));
        assert_eq!(super::closing_paren(&toks, 0), None);
        assert_eq!(super::closing_paren(&toks, 8), None);
    }

    use super::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        Lexer::new(sql).map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn strings_comments_and_dollar_quotes() {
        let t = kinds("SELECT 'a;''b', E'x\\'y', $f$ ; $f$, \"q;\" -- c;\n/* a /* b */ ; */ $1;");
        assert_eq!(
            t,
            vec![
                (TokenKind::Word, "SELECT"),
                (TokenKind::String, "'a;''b'"),
                (TokenKind::Punct, ","),
                (TokenKind::String, "E'x\\'y'"),
                (TokenKind::Punct, ","),
                (TokenKind::String, "$f$ ; $f$"),
                (TokenKind::Punct, ","),
                (TokenKind::QuotedIdent, "\"q;\""),
                (TokenKind::BlockComment, "/* a /* b */ ; */"),
                (TokenKind::Param, "$1"),
                (TokenKind::Semicolon, ";"),
            ]
        );
    }

    #[test]
    fn numbers_and_operators() {
        assert_eq!(
            kinds("a>=1.5e-3||-2"),
            vec![
                (TokenKind::Word, "a"),
                (TokenKind::Punct, ">="),
                (TokenKind::Number, "1.5e-3"),
                (TokenKind::Punct, "||-"),
                (TokenKind::Number, "2"),
            ]
        );
    }

    #[test]
    fn splitting() {
        assert_eq!(
            split_statements("SET a = 1; select ';'; ;  -- x\n"),
            vec!["SET a = 1", "select ';'"]
        );
        assert_eq!(split_statements(""), Vec::<&str>::new());
        assert_eq!(first_keyword("/* hi */ (select 1)"), Some("select"));
        assert_eq!(first_keyword("; SET x = 1"), Some("SET"));
    }

    #[test]
    fn unterminated_and_unicode_never_panic() {
        for s in [
            "'abc", "\"abc", "/* abc", "$a$ abc", "é'", "'é", "$", "e'\\", "1e", "ü/*ü",
        ] {
            let _ = kinds(s);
            let _ = split_statements(s);
        }
    }

    #[test]
    fn fingerprints_drop_literals_and_comments() {
        assert_eq!(
            fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", 100),
            "select abalance from pgbench_accounts where aid = ?;"
        );
        assert_eq!(
            fingerprint(
                "select /* x */ 'secret', E'a\\'' , $1 , 1.5e3 -- c\n FROM \"T\"",
                100
            ),
            "select ? , ? , $1 , ? from \"T\""
        );
        assert_eq!(fingerprint("SELECT 1", 100), fingerprint("select   2", 100));
        let long = fingerprint(&format!("select {}", "é".repeat(100)), 11);
        assert!(long.ends_with("...") && long.len() <= 14, "{long}");
    }
}
