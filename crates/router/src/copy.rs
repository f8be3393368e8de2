//! `COPY` statements and the rows of a `COPY ... FROM STDIN` stream
//! (docs/ARCHITECTURE.md §8 "Finding the key", §9).
//!
//! - [`parse_copy`] reads a `COPY` statement with the lexer, in the option
//!   syntax of PostgreSQL 9.0+ (`WITH (FORMAT csv, HEADER, FREEZE ON)`,
//!   also without `WITH`), the older one (`WITH CSV HEADER`, `BINARY`,
//!   `DELIMITER AS ','`, `NULL AS ''`, `CSV QUOTE '"'`), and psql's
//!   `\copy` meta-command text. sqlparser cannot parse what `pgbench -i`
//!   sends (`copy pgbench_accounts from stdin with (freeze on)`).
//! - [`CopySplitter`] cuts the payloads of CopyData messages into rows (a
//!   row may span messages, a message may hold many rows) and decodes one
//!   field of each row, the shard key, so the caller can send every row to
//!   its shard unchanged.
//!
//! Rows come back as byte ranges into the splitter's buffer
//! ([`CopySplitter::row_bytes`]), valid until the next call that feeds data:
//! one copy of each message, no allocation per row (except the decoded key).

use std::borrow::Cow;
use std::ops::Range;

use crate::lexer::{Lexer, Token, TokenKind};

/// Data format of a `COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyFormat {
    /// PostgreSQL's text format (tab-separated, backslash escapes, `\N`).
    Text,
    /// Comma-separated values.
    Csv,
    /// PostgreSQL's binary format.
    Binary,
}

/// A parsed `COPY` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStatement {
    /// `(schema, name)`, lower-cased unless quoted; `(None, "")` for
    /// `COPY (query) TO`.
    pub table: (Option<String>, String),
    /// The column list, if any (lower-cased unless quoted).
    pub columns: Option<Vec<String>>,
    /// `COPY ... FROM STDIN` (psql's `\copy ... from` also streams through
    /// STDIN).
    pub from_stdin: bool,
    /// `COPY ... TO STDOUT` (and psql's `\copy ... to`).
    pub to_stdout: bool,
    /// `COPY ... TO` (`false`: `COPY ... FROM`), whatever the source or target.
    pub to: bool,
    /// `COPY (SELECT ...) TO`.
    pub query: bool,
    /// The text of the query of `COPY (query) TO`, without its parentheses.
    pub inner_query: Option<String>,
    /// Data format.
    pub format: CopyFormat,
    /// Field delimiter (default tab for text, comma for CSV).
    pub delimiter: u8,
    /// CSV quote character (default `"`).
    pub quote: u8,
    /// CSV escape character (default: the quote).
    pub escape: u8,
    /// The string that stands for NULL (default `\N` for text, empty for CSV).
    pub null: String,
    /// The first line is a header (text and CSV).
    pub header: bool,
}

fn word_at<'a>(toks: &[Token<'a>], i: usize) -> Option<&'a str> {
    toks.get(i)
        .filter(|t| t.kind == TokenKind::Word)
        .map(|t| t.text)
}

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

/// The value of a string token, or a bare word/number as written.
fn string_value(t: &Token<'_>) -> Option<String> {
    match t.kind {
        TokenKind::String => Some(crate::shard::decode_string(t.text)),
        TokenKind::Word | TokenKind::Number => Some(t.text.to_owned()),
        _ => None,
    }
}

fn single_byte(t: &Token<'_>) -> Option<u8> {
    let v = string_value(t)?;
    match v.as_bytes() {
        [b] if b.is_ascii() => Some(*b),
        _ => None,
    }
}

fn bool_word(t: Option<&Token<'_>>) -> Option<bool> {
    let t = t?;
    let v = string_value(t)?.to_ascii_lowercase();
    match v.as_str() {
        "true" | "on" | "1" | "match" | "yes" => Some(true),
        "false" | "off" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Settings collected while reading options.
#[derive(Default)]
struct Opts {
    format: Option<CopyFormat>,
    delimiter: Option<u8>,
    quote: Option<u8>,
    escape: Option<u8>,
    null: Option<String>,
    header: bool,
}

/// Reads a `COPY` statement (one statement; a trailing `;` is fine).
/// `None` if it is not a `COPY` or uses options this reader does not know
/// (or invalid ones: a delimiter of several bytes, ...).
pub fn parse_copy(sql: &str) -> Option<CopyStatement> {
    let toks: Vec<Token<'_>> = Lexer::new(sql)
        .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
        .collect();
    let mut i = 0;
    let psql = toks.first().is_some_and(|t| t.is_punct("\\"));
    if psql {
        i += 1;
    }
    if !toks.get(i)?.is_keyword("copy") {
        return None;
    }
    i += 1;
    let mut opts = Opts::default();
    let mut table = (None, String::new());
    let mut columns = None;
    let mut query = false;
    let mut inner_query = None;
    if toks.get(i)?.is_punct("(") {
        query = true;
        let open = toks[i].offset + 1;
        let close = crate::lexer::closing_paren(&toks, i)?;
        inner_query = sql
            .get(open..toks[close].offset)
            .map(|q| q.trim().to_owned());
        i = close + 1;
    } else {
        if toks.get(i)?.is_keyword("binary") {
            opts.format = Some(CopyFormat::Binary);
            i += 1;
        }
        let mut parts = vec![ident(toks.get(i)?)?];
        i += 1;
        while toks.get(i).is_some_and(|t| t.is_punct(".")) {
            parts.push(ident(toks.get(i + 1)?)?);
            i += 2;
        }
        let name = parts.pop()?;
        table = (parts.pop(), name);
        if toks.get(i).is_some_and(|t| t.is_punct("(")) {
            i += 1;
            let mut cols = Vec::new();
            loop {
                cols.push(ident(toks.get(i)?)?);
                i += 1;
                let t = toks.get(i)?;
                i += 1;
                if t.is_punct(")") {
                    break;
                }
                if !t.is_punct(",") {
                    return None;
                }
            }
            columns = Some(cols);
        }
    }
    let to = match word_at(&toks, i)?.to_ascii_lowercase().as_str() {
        "to" => true,
        "from" => false,
        _ => return None,
    };
    i += 1;
    // Source or target.
    let target = toks.get(i)?;
    let (mut from_stdin, mut to_stdout) = (false, false);
    if psql {
        from_stdin = !to;
        to_stdout = to;
        if target.is_keyword("program") {
            i += 2;
        } else if target.kind == TokenKind::String {
            i += 1;
        } else {
            // An unquoted file name: everything up to the next whitespace.
            let rest = &sql[target.offset..];
            let end = target.offset + rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            while toks.get(i).is_some_and(|t| t.offset < end) {
                i += 1;
            }
        }
    } else if target.is_keyword("stdin") {
        from_stdin = !to;
        i += 1;
    } else if target.is_keyword("stdout") {
        to_stdout = to;
        i += 1;
    } else if target.is_keyword("program") {
        toks.get(i + 1).filter(|t| t.kind == TokenKind::String)?;
        i += 2;
    } else if target.kind == TokenKind::String {
        i += 1;
    } else {
        return None;
    }
    if toks.get(i).is_some_and(|t| t.is_keyword("with")) {
        i += 1;
    }
    if toks.get(i).is_some_and(|t| t.is_punct("(")) {
        i = new_options(&toks, i + 1, &mut opts)?;
    } else {
        i = old_options(&toks, i, &mut opts)?;
    }
    // `WHERE` (COPY FROM) may follow; nothing else may.
    if toks.get(i).is_some_and(|t| !t.is_keyword("where")) {
        return None;
    }
    let format = opts.format.unwrap_or(CopyFormat::Text);
    let quote = opts.quote.unwrap_or(b'"');
    Some(CopyStatement {
        table,
        columns,
        from_stdin,
        to_stdout,
        to,
        query,
        inner_query,
        format,
        delimiter: opts.delimiter.unwrap_or(if format == CopyFormat::Csv {
            b','
        } else {
            b'\t'
        }),
        quote,
        escape: opts.escape.unwrap_or(quote),
        null: opts.null.unwrap_or_else(|| {
            if format == CopyFormat::Csv {
                String::new()
            } else {
                "\\N".into()
            }
        }),
        header: opts.header,
    })
}

/// `( name [value] [, ...] )` starting after the `(`; returns the index
/// after the `)`.
fn new_options(toks: &[Token<'_>], mut i: usize, opts: &mut Opts) -> Option<usize> {
    loop {
        let name = ident(toks.get(i)?)?;
        i += 1;
        // The value: tokens up to a top-level `,` or `)`.
        let start = i;
        let mut depth = 0usize;
        loop {
            let t = toks.get(i)?;
            if depth == 0 && (t.is_punct(",") || t.is_punct(")")) {
                break;
            }
            if t.is_punct("(") {
                depth += 1;
            } else if t.is_punct(")") {
                depth -= 1;
            }
            i += 1;
        }
        let value = &toks[start..i];
        let one = || match value {
            [v] => Some(v),
            _ => None,
        };
        match name.as_str() {
            "format" => {
                opts.format = Some(match string_value(one()?)?.to_ascii_lowercase().as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    _ => return None,
                })
            }
            "delimiter" => opts.delimiter = Some(single_byte(one()?)?),
            "quote" => opts.quote = Some(single_byte(one()?)?),
            "escape" => opts.escape = Some(single_byte(one()?)?),
            "null" => opts.null = Some(string_value(one()?)?),
            "header" => {
                opts.header = if value.is_empty() {
                    true
                } else {
                    bool_word(one())?
                }
            }
            // Options that do not change how rows are split.
            "freeze" | "force_quote" | "force_not_null" | "force_null" | "encoding" | "default"
            | "on_error" | "log_verbosity" | "reject_limit" | "oids" => {}
            _ => return None,
        }
        let t = toks.get(i)?;
        i += 1;
        if t.is_punct(")") {
            return Some(i);
        }
    }
}

/// Pre-9.0 options (`BINARY`, `OIDS`, `DELIMITER [AS] 'x'`, `NULL [AS] 'x'`,
/// `CSV`, `HEADER`, `QUOTE [AS] 'x'`, `ESCAPE [AS] 'x'`, `FORCE QUOTE ...`,
/// `FORCE NOT NULL ...`, `USING DELIMITERS 'x'`); returns the index after them.
fn old_options(toks: &[Token<'_>], mut i: usize, opts: &mut Opts) -> Option<usize> {
    let skip_as = |i: usize| {
        if toks.get(i).is_some_and(|t| t.is_keyword("as")) {
            i + 1
        } else {
            i
        }
    };
    while let Some(w) = word_at(toks, i) {
        let w = w.to_ascii_lowercase();
        i += 1;
        match w.as_str() {
            "binary" => opts.format = Some(CopyFormat::Binary),
            "csv" => opts.format = Some(CopyFormat::Csv),
            "header" => opts.header = true,
            "oids" | "freeze" | "with" => {}
            "delimiter" | "delimiters" => {
                i = skip_as(i);
                opts.delimiter = Some(single_byte(toks.get(i)?)?);
                i += 1;
            }
            "using" => {
                if !toks.get(i)?.is_keyword("delimiters") {
                    return None;
                }
                i += 1;
                opts.delimiter = Some(single_byte(toks.get(i)?)?);
                i += 1;
            }
            "null" => {
                i = skip_as(i);
                opts.null = Some(string_value(toks.get(i)?)?);
                i += 1;
            }
            "quote" => {
                i = skip_as(i);
                opts.quote = Some(single_byte(toks.get(i)?)?);
                i += 1;
            }
            "escape" => {
                i = skip_as(i);
                opts.escape = Some(single_byte(toks.get(i)?)?);
                i += 1;
            }
            "encoding" => i += 1,
            "force" => {
                if toks.get(i)?.is_keyword("quote") {
                    i += 1;
                } else if toks.get(i)?.is_keyword("not") && toks.get(i + 1)?.is_keyword("null") {
                    i += 2;
                } else if toks.get(i)?.is_keyword("null") {
                    i += 1;
                } else {
                    return None;
                }
                if toks.get(i).is_some_and(|t| t.is_punct("*")) {
                    i += 1;
                } else {
                    loop {
                        ident(toks.get(i)?)?;
                        i += 1;
                        if toks.get(i).is_some_and(|t| t.is_punct(",")) {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            "where" => return Some(i - 1),
            _ => return None,
        }
    }
    Some(i)
}

/// A decoded field value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldValue {
    /// Text or CSV field with escapes and quoting resolved.
    Text(String),
    /// The raw bytes of a binary-format field.
    Binary(Vec<u8>),
    /// SQL NULL.
    Null,
}

/// One row of a COPY stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRow {
    /// The row's bytes exactly as received (terminator included) as a range
    /// of the splitter's buffer: read them with [`CopySplitter::row_bytes`]
    /// before feeding more data.
    pub bytes: Range<usize>,
    /// The key field; `None` for a splitter made without a key
    /// ([`CopySplitter::unkeyed`]).
    pub key: Option<FieldValue>,
}

/// Malformed COPY data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// A row has fewer fields than the key's position.
    #[error("row {row} has {fields} fields, the key is field {key_field}")]
    MissingKey {
        /// Data row number (1-based, header not counted).
        row: u64,
        /// Fields in the row.
        fields: usize,
        /// The key's position, 1-based.
        key_field: usize,
    },
    /// The key field does not decode to UTF-8 text.
    #[error("row {row}: the key field is not valid UTF-8")]
    InvalidUtf8 {
        /// Data row number (1-based).
        row: u64,
    },
    /// The data ends inside a quoted CSV field.
    #[error("COPY data ends inside a quoted CSV field in row {row}")]
    UnterminatedQuote {
        /// Data row number (1-based).
        row: u64,
    },
    /// The binary header is wrong.
    #[error("invalid binary COPY header: {reason}")]
    BinaryHeader {
        /// What is wrong.
        reason: String,
    },
    /// A binary tuple is malformed.
    #[error("row {row}: {reason}")]
    BinaryTuple {
        /// Data row number (1-based).
        row: u64,
        /// What is wrong.
        reason: String,
    },
    /// The data ends in the middle of a binary row or header.
    #[error("COPY data ends inside {what}")]
    Truncated {
        /// What was cut ("row 3", "the binary header").
        what: String,
    },
}

/// The 11-byte signature of binary COPY data.
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// The binary trailer: a field count of -1.
pub const BINARY_TRAILER: [u8; 2] = [0xff, 0xff];

/// Splits a `COPY FROM STDIN` data stream into rows and extracts one field.
#[derive(Debug, Clone)]
pub struct CopySplitter {
    format: CopyFormat,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: Vec<u8>,
    key_field: Option<usize>,
    /// Data received and not yet dropped; rows returned by the last call
    /// are ranges of it.
    buf: Vec<u8>,
    /// Start of the first byte not returned as a row (or header).
    row_start: usize,
    /// Where scanning for the end of the current row resumes.
    scan: usize,
    /// CSV: scanning is inside quotes at `scan`.
    in_quotes: bool,
    /// Text/CSV: the first line is a header still to be skipped.
    header_pending: bool,
    /// Text/CSV header line, or the binary header, once seen.
    header_bytes: Option<Vec<u8>>,
    /// Data rows returned so far.
    rows: u64,
    /// End marker (`\.` line or binary trailer) seen: later data is ignored.
    ended: bool,
    trailer_seen: bool,
}

impl CopySplitter {
    /// A splitter for data in `format` with the given options (as in
    /// [`CopyStatement`]) that decodes field `key_field` (0-based) of
    /// every row.
    pub fn new(
        format: CopyFormat,
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: &str,
        header: bool,
        key_field: usize,
    ) -> Self {
        let mut s = Self::unkeyed(format, delimiter, quote, escape, null, header);
        s.key_field = Some(key_field);
        s
    }

    /// A splitter that only cuts rows (keys are `None`): for reference tables.
    pub fn unkeyed(
        format: CopyFormat,
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: &str,
        header: bool,
    ) -> Self {
        CopySplitter {
            format,
            delimiter,
            quote,
            escape,
            null: null.as_bytes().to_vec(),
            key_field: None,
            buf: Vec::new(),
            row_start: 0,
            scan: 0,
            in_quotes: false,
            header_pending: header && format != CopyFormat::Binary,
            header_bytes: None,
            rows: 0,
            ended: false,
            trailer_seen: false,
        }
    }

    /// A splitter with the options of a parsed statement.
    pub fn for_statement(stmt: &CopyStatement, key_field: Option<usize>) -> Self {
        let mut s = Self::unkeyed(
            stmt.format,
            stmt.delimiter,
            stmt.quote,
            stmt.escape,
            &stmt.null,
            stmt.header,
        );
        s.key_field = key_field;
        s
    }

    /// The bytes of a row returned by the last [`feed`](Self::feed) or
    /// [`finish`](Self::finish) (empty for a stale row).
    pub fn row_bytes(&self, row: &CopyRow) -> &[u8] {
        self.buf.get(row.bytes.clone()).unwrap_or_default()
    }

    /// What each shard must receive before its first row: the binary header
    /// (signature, flags, extension; 19 bytes without extension) or, when
    /// the statement says `HEADER`, the header line as received. `None`
    /// until it has been seen.
    pub fn header_bytes(&self) -> Option<&[u8]> {
        self.header_bytes.as_deref()
    }

    /// The binary trailer to send each shard at the end ([`BINARY_TRAILER`]),
    /// for the binary format.
    pub fn binary_trailer(&self) -> Option<&'static [u8]> {
        (self.format == CopyFormat::Binary).then_some(&BINARY_TRAILER[..])
    }

    /// Whether the end marker (`\.` line, binary trailer) was seen.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether the binary trailer was seen.
    pub fn trailer_seen(&self) -> bool {
        self.trailer_seen
    }

    /// Data rows returned so far.
    pub fn rows_seen(&self) -> u64 {
        self.rows
    }

    /// Feeds the payload of one CopyData message; returns the rows it
    /// completes (ranges into the buffer, see [`row_bytes`](Self::row_bytes)).
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<CopyRow>, CopyError> {
        let mut out = Vec::new();
        self.feed_into(data, &mut out)?;
        Ok(out)
    }

    /// [`feed`](Self::feed) appending to a reusable vector (cleared first).
    pub fn feed_into(&mut self, data: &[u8], out: &mut Vec<CopyRow>) -> Result<(), CopyError> {
        out.clear();
        self.compact();
        if self.ended {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        self.split(out, false)
    }

    /// Call at CopyDone: returns a last text/CSV row without terminator
    /// (PostgreSQL accepts one), and errors if the data ends inside a quoted
    /// CSV field, a binary row or the binary header. A missing binary trailer
    /// is accepted, like PostgreSQL does.
    pub fn finish(&mut self) -> Result<Vec<CopyRow>, CopyError> {
        let mut out = Vec::new();
        self.compact();
        if self.ended {
            return Ok(out);
        }
        self.split(&mut out, true)?;
        Ok(out)
    }

    /// Drops the bytes of rows already returned.
    fn compact(&mut self) {
        if self.row_start > 0 {
            self.buf.drain(..self.row_start);
            self.scan = self.scan.saturating_sub(self.row_start);
            self.row_start = 0;
        }
        if self.ended {
            self.buf.clear();
            self.scan = 0;
        }
    }

    fn split(&mut self, out: &mut Vec<CopyRow>, at_end: bool) -> Result<(), CopyError> {
        match self.format {
            CopyFormat::Binary => self.split_binary(out, at_end),
            _ => self.split_lines(out, at_end),
        }
    }

    // ----- text and CSV ----------------------------------------------------

    fn split_lines(&mut self, out: &mut Vec<CopyRow>, at_end: bool) -> Result<(), CopyError> {
        while !self.ended {
            let (content_end, end) = match self.find_line_end(at_end) {
                Some(e) => e,
                None if at_end && self.row_start < self.buf.len() => {
                    if self.format == CopyFormat::Csv && self.in_quotes {
                        return Err(CopyError::UnterminatedQuote { row: self.rows + 1 });
                    }
                    (self.buf.len(), self.buf.len())
                }
                None => return Ok(()),
            };
            let start = self.row_start;
            self.row_start = end;
            self.scan = end;
            self.in_quotes = false;
            let content = &self.buf[start..content_end];
            if self.header_pending {
                self.header_pending = false;
                self.header_bytes = Some(self.buf[start..end].to_vec());
                continue;
            }
            if content == b"\\." {
                self.ended = true;
                return Ok(());
            }
            let row = self.rows + 1;
            let key = match self.key_field {
                None => None,
                Some(k) => Some(if self.format == CopyFormat::Csv {
                    csv_field(
                        content,
                        k,
                        self.delimiter,
                        self.quote,
                        self.escape,
                        &self.null,
                        row,
                    )?
                } else {
                    text_field(content, k, self.delimiter, &self.null, row)?
                }),
            };
            self.rows = row;
            out.push(CopyRow {
                bytes: start..end,
                key,
            });
        }
        Ok(())
    }

    /// End of the current line: `(end of content, end including the
    /// terminator)`. Resumes at `self.scan`; `None` if the line is not
    /// complete yet.
    fn find_line_end(&mut self, at_end: bool) -> Option<(usize, usize)> {
        let b = &self.buf;
        let csv = self.format == CopyFormat::Csv;
        let mut i = self.scan;
        while i < b.len() {
            let c = b[i];
            if csv && self.in_quotes {
                if c == self.escape && self.escape != self.quote {
                    match b.get(i + 1) {
                        Some(&n) if n == self.quote || n == self.escape => {
                            i += 2;
                            continue;
                        }
                        Some(_) => {}
                        None if at_end => {}
                        None => break,
                    }
                }
                if c == self.quote {
                    self.in_quotes = false;
                }
                i += 1;
                continue;
            }
            match c {
                b'\\' if !csv => {
                    if i + 1 >= b.len() && !at_end {
                        break;
                    }
                    i += 2;
                }
                b'\n' => {
                    self.scan = i;
                    return Some((i, i + 1));
                }
                b'\r' => match b.get(i + 1) {
                    Some(b'\n') => {
                        self.scan = i;
                        return Some((i, i + 2));
                    }
                    Some(_) => {
                        self.scan = i;
                        return Some((i, i + 1));
                    }
                    None if at_end => {
                        self.scan = i;
                        return Some((i, i + 1));
                    }
                    None => break,
                },
                c if csv && c == self.quote => {
                    self.in_quotes = true;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        self.scan = i.min(b.len());
        None
    }

    // ----- binary ------------------------------------------------------------

    fn split_binary(&mut self, out: &mut Vec<CopyRow>, at_end: bool) -> Result<(), CopyError> {
        if self.header_bytes.is_none() {
            let b = &self.buf[self.row_start..];
            if b.is_empty() {
                return Ok(());
            }
            let have = b.len();
            let sig_len = BINARY_SIGNATURE.len().min(have);
            if b[..sig_len] != BINARY_SIGNATURE[..sig_len] {
                return Err(CopyError::BinaryHeader {
                    reason: "the signature is not PGCOPY\\n\\377\\r\\n\\0".into(),
                });
            }
            let Some(flags) = be_i32(b, 11) else {
                return truncated_header(at_end);
            };
            if (flags as u32) >> 16 != 0 {
                return Err(CopyError::BinaryHeader {
                    reason: format!(
                        "unsupported critical flags {flags:#x} (OIDs or a newer format)"
                    ),
                });
            }
            let Some(ext) = be_i32(b, 15) else {
                return truncated_header(at_end);
            };
            let Ok(ext) = usize::try_from(ext) else {
                return Err(CopyError::BinaryHeader {
                    reason: format!("negative header extension length {ext}"),
                });
            };
            let len = 19usize.saturating_add(ext);
            if have < len {
                return truncated_header(at_end);
            }
            self.header_bytes = Some(b[..len].to_vec());
            self.row_start += len;
            self.scan = self.row_start;
        }
        loop {
            let start = self.row_start;
            let b = &self.buf[start..];
            if b.is_empty() {
                return Ok(());
            }
            let row = self.rows + 1;
            let Some(count) = be_i16(b, 0) else {
                return truncated_row(at_end, row);
            };
            if count == -1 {
                self.ended = true;
                self.trailer_seen = true;
                self.row_start = start + 2;
                return Ok(());
            }
            let Ok(count) = usize::try_from(count) else {
                return Err(CopyError::BinaryTuple {
                    row,
                    reason: format!("invalid field count {count}"),
                });
            };
            let mut pos = 2usize;
            let mut key = None;
            for f in 0..count {
                let Some(len) = be_i32(b, pos) else {
                    return truncated_row(at_end, row);
                };
                pos += 4;
                let value = match len {
                    -1 => None,
                    l if l < -1 => {
                        return Err(CopyError::BinaryTuple {
                            row,
                            reason: format!("invalid length {l} of field {}", f + 1),
                        })
                    }
                    l => {
                        let l = l as usize;
                        if b.len() - pos < l {
                            return truncated_row(at_end, row);
                        }
                        pos += l;
                        Some(pos - l..pos)
                    }
                };
                if Some(f) == self.key_field {
                    key = Some(match value {
                        None => FieldValue::Null,
                        Some(r) => FieldValue::Binary(b[r].to_vec()),
                    });
                }
            }
            if let Some(k) = self.key_field {
                if k >= count {
                    return Err(CopyError::MissingKey {
                        row,
                        fields: count,
                        key_field: k + 1,
                    });
                }
            }
            self.rows = row;
            self.row_start = start + pos;
            self.scan = self.row_start;
            out.push(CopyRow {
                bytes: start..start + pos,
                key,
            });
        }
    }
}

fn truncated_header(at_end: bool) -> Result<(), CopyError> {
    if at_end {
        Err(CopyError::Truncated {
            what: "the binary header".into(),
        })
    } else {
        Ok(())
    }
}

fn truncated_row(at_end: bool, row: u64) -> Result<(), CopyError> {
    if at_end {
        Err(CopyError::Truncated {
            what: format!("row {row}"),
        })
    } else {
        Ok(())
    }
}

fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(i16::from_be_bytes([s[0], s[1]]))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn to_text(bytes: Vec<u8>, row: u64) -> Result<FieldValue, CopyError> {
    String::from_utf8(bytes)
        .map(FieldValue::Text)
        .map_err(|_| CopyError::InvalidUtf8 { row })
}

/// Field `k` of a text-format line (no terminator).
fn text_field(
    line: &[u8],
    k: usize,
    delim: u8,
    null: &[u8],
    row: u64,
) -> Result<FieldValue, CopyError> {
    let mut field = 0usize;
    let mut start = 0usize;
    let mut i = 0usize;
    loop {
        let at_end = i >= line.len();
        if at_end || line[i] == delim {
            if field == k {
                let raw = &line[start..i.min(line.len())];
                if raw == null {
                    return Ok(FieldValue::Null);
                }
                return to_text(unescape_text(raw), row);
            }
            if at_end {
                return Err(CopyError::MissingKey {
                    row,
                    fields: field + 1,
                    key_field: k + 1,
                });
            }
            field += 1;
            i += 1;
            start = i;
        } else if line[i] == b'\\' {
            i += 2;
        } else {
            i += 1;
        }
    }
}

/// Text-format backslash escapes.
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 >= raw.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        if let Some(v) = crate::lexer::octal_or_hex_escape(e, raw, &mut i) {
            out.push(v);
            continue;
        }
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            other => out.push(other),
        }
    }
    out
}

/// Field `k` of a CSV line (no terminator).
fn csv_field(
    line: &[u8],
    k: usize,
    delim: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
    row: u64,
) -> Result<FieldValue, CopyError> {
    let mut field = 0usize;
    let mut i = 0usize;
    loop {
        // One field from `i`.
        let start = i;
        let mut quoted = false;
        let mut in_quotes = false;
        let mut value = Vec::new();
        while i < line.len() {
            let c = line[i];
            if in_quotes {
                if c == escape
                    && escape != quote
                    && i + 1 < line.len()
                    && (line[i + 1] == quote || line[i + 1] == escape)
                {
                    value.push(line[i + 1]);
                    i += 2;
                    continue;
                }
                if c == quote {
                    if escape == quote && line.get(i + 1) == Some(&quote) {
                        value.push(quote);
                        i += 2;
                        continue;
                    }
                    in_quotes = false;
                    i += 1;
                    continue;
                }
                value.push(c);
                i += 1;
            } else if c == delim {
                break;
            } else if c == quote {
                quoted = true;
                in_quotes = true;
                i += 1;
            } else {
                value.push(c);
                i += 1;
            }
        }
        if field == k {
            if !quoted && &line[start..i] == null {
                return Ok(FieldValue::Null);
            }
            return to_text(value, row);
        }
        if i >= line.len() {
            return Err(CopyError::MissingKey {
                row,
                fields: field + 1,
                key_field: k + 1,
            });
        }
        field += 1;
        i += 1;
    }
}

/// Joins the `COPY ... TO STDOUT` streams of several shards into the one
/// stream a single server would send: one binary header and one trailer
/// (each shard sends its own), one CSV/text header line. Rows pass as they
/// come from any shard (each CopyData a server sends holds whole rows). The
/// binary header always travels with a row or the trailer, as Postgres
/// sends it (psycopg reads them from one message).
#[derive(Debug, Clone)]
pub struct CopyOutJoin {
    binary: bool,
    header_line: bool,
    /// The header went to the client already (or is held for the next row).
    header_sent: bool,
    /// A binary header waiting for the first row to go out with.
    held_header: Option<Vec<u8>>,
    /// Per shard: its first CopyData (the one with the header) has passed.
    started: Vec<bool>,
}

impl CopyOutJoin {
    /// A join for `shards` streams of `cs`; `None` when they can simply be
    /// concatenated (text or CSV without a header line).
    pub fn new(cs: &CopyStatement, shards: usize) -> Option<CopyOutJoin> {
        let binary = cs.format == CopyFormat::Binary;
        let header_line = cs.header && !binary;
        (binary || header_line).then(|| CopyOutJoin {
            binary,
            header_line,
            header_sent: false,
            held_header: None,
            started: vec![false; shards],
        })
    }

    /// What of shard `shard`'s CopyData payload the client gets, as the
    /// payload of one CopyData (`None`: nothing).
    pub fn pass<'a>(&mut self, shard: usize, payload: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let first = !std::mem::replace(&mut self.started[shard], true);
        if self.header_line {
            if first && std::mem::replace(&mut self.header_sent, true) {
                return None;
            }
            return Some(Cow::Borrowed(payload));
        }
        let mut body = payload;
        if first && payload.starts_with(BINARY_SIGNATURE) && payload.len() >= 19 {
            let ext = u32::from_be_bytes([payload[15], payload[16], payload[17], payload[18]]);
            let header = (19 + ext as usize).min(payload.len());
            if !std::mem::replace(&mut self.header_sent, true) {
                self.held_header = Some(payload[..header].to_vec());
            }
            body = &payload[header..];
        }
        if body.is_empty() || body == BINARY_TRAILER {
            return None;
        }
        Some(match self.held_header.take() {
            Some(mut h) => {
                h.extend_from_slice(body);
                Cow::Owned(h)
            }
            None => Cow::Borrowed(body),
        })
    }

    /// The payload of the CopyData that goes out before the CopyDone: the
    /// one binary trailer (with the header, when no row went out).
    pub fn trailer(&mut self) -> Option<Vec<u8>> {
        if !self.binary {
            return None;
        }
        let mut t = self.held_header.take().unwrap_or_default();
        t.extend_from_slice(&BINARY_TRAILER);
        Some(t)
    }
}

/// Turns the answer to a query (RowDescription, DataRows, CommandComplete)
/// into the answer to `COPY (query) TO STDOUT` in the statement's format:
/// CopyOutResponse, one CopyData per row (COPY text escaping, CSV quoting,
/// or binary tuples, which are DataRow bodies with the header and trailer
/// around them), CopyDone and `COPY n`. Other messages pass unchanged. For
/// a query whose rows the proxy merges from several shards.
#[derive(Debug, Clone)]
pub struct CopyRowsOut {
    format: CopyFormat,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: String,
    header: bool,
    rows: u64,
    /// The binary header is still to be sent, in the first CopyData (with
    /// the first row or the trailer, as Postgres does: psycopg reads the
    /// header and a row from one message).
    binary_header_due: bool,
}

impl CopyRowsOut {
    /// The conversion for `cs`'s format and options.
    pub fn new(cs: &CopyStatement) -> CopyRowsOut {
        CopyRowsOut {
            format: cs.format,
            delimiter: cs.delimiter,
            quote: cs.quote,
            escape: cs.escape,
            null: cs.null.clone(),
            header: cs.header,
            rows: 0,
            binary_header_due: false,
        }
    }

    /// Whether the rows must come from the shards in binary format.
    pub fn binary(&self) -> bool {
        self.format == CopyFormat::Binary
    }

    /// Converts the whole backend messages in `msgs`, appending to `out`.
    pub fn convert(&mut self, msgs: &[u8], out: &mut Vec<u8>) {
        let mut pos = 0;
        while pos + 5 <= msgs.len() {
            let tag = msgs[pos];
            let len =
                i32::from_be_bytes([msgs[pos + 1], msgs[pos + 2], msgs[pos + 3], msgs[pos + 4]]);
            let end = (pos + 1 + len.max(4) as usize).min(msgs.len());
            let body = &msgs[pos + 5..end];
            match tag {
                b'T' => self.described(body, out),
                b'D' => {
                    self.rows += 1;
                    let start = begin_message(b'd', out);
                    self.binary_header(out);
                    self.row(body, out);
                    finish_message(start, out);
                }
                b'C' => {
                    if self.binary() {
                        let start = begin_message(b'd', out);
                        self.binary_header(out);
                        out.extend_from_slice(&BINARY_TRAILER);
                        finish_message(start, out);
                    }
                    out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
                    let start = begin_message(b'C', out);
                    out.extend_from_slice(format!("COPY {}", self.rows).as_bytes());
                    out.push(0);
                    finish_message(start, out);
                }
                _ => out.extend_from_slice(&msgs[pos..end]),
            }
            pos = end;
        }
    }

    /// CopyOutResponse, and the binary header or the header line.
    fn described(&mut self, body: &[u8], out: &mut Vec<u8>) {
        let fields = columns(body);
        let start = begin_message(b'H', out);
        let format = u8::from(self.binary());
        out.push(format);
        out.extend_from_slice(&(fields.len() as i16).to_be_bytes());
        for _ in &fields {
            out.extend_from_slice(&i16::from(format).to_be_bytes());
        }
        finish_message(start, out);
        if self.binary() {
            self.binary_header_due = true;
        } else if self.header {
            let start = begin_message(b'd', out);
            for (i, name) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(self.delimiter);
                }
                self.field(Some(name), out);
            }
            out.push(b'\n');
            finish_message(start, out);
        }
    }

    /// The binary header, if it is still due.
    fn binary_header(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.binary_header_due) {
            out.extend_from_slice(BINARY_SIGNATURE);
            out.extend_from_slice(&[0; 8]);
        }
    }

    /// One row: a DataRow body as a COPY line or binary tuple.
    fn row(&self, body: &[u8], out: &mut Vec<u8>) {
        if self.binary() {
            out.extend_from_slice(body);
            return;
        }
        let mut pos = 2;
        let count = body
            .get(..2)
            .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]));
        for i in 0..count {
            if i > 0 {
                out.push(self.delimiter);
            }
            let Some(len) = body.get(pos..pos + 4) else {
                return;
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            pos += 4;
            if len < 0 {
                self.field(None, out);
                continue;
            }
            let end = (pos + len as usize).min(body.len());
            self.field(Some(&body[pos..end]), out);
            pos = end;
        }
        out.push(b'\n');
    }

    /// One field value (`None`: NULL), escaped or quoted for the format.
    fn field(&self, value: Option<&[u8]>, out: &mut Vec<u8>) {
        let Some(v) = value else {
            out.extend_from_slice(self.null.as_bytes());
            return;
        };
        if self.format == CopyFormat::Csv {
            let needs_quotes = v.is_empty() && self.null.is_empty()
                || v == self.null.as_bytes()
                || v == b"\\."
                || v.iter()
                    .any(|&c| c == self.delimiter || c == self.quote || c == b'\n' || c == b'\r');
            if !needs_quotes {
                out.extend_from_slice(v);
                return;
            }
            out.push(self.quote);
            for &c in v {
                if c == self.quote || c == self.escape {
                    out.push(self.escape);
                }
                out.push(c);
            }
            out.push(self.quote);
            return;
        }
        for &c in v {
            match c {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0x0b => out.extend_from_slice(b"\\v"),
                c if c == self.delimiter => {
                    out.push(b'\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
    }
}

/// The column names of a RowDescription body.
fn columns(body: &[u8]) -> Vec<Vec<u8>> {
    let count = body
        .get(..2)
        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]));
    let mut pos = 2;
    let mut names = Vec::new();
    for _ in 0..count {
        let Some(end) = body[pos.min(body.len())..].iter().position(|&b| b == 0) else {
            break;
        };
        names.push(body[pos..pos + end].to_vec());
        // The name's NUL, then table oid, attribute, type oid, size, modifier, format.
        pos += end + 1 + 4 + 2 + 4 + 2 + 4 + 2;
    }
    names
}

/// Starts a message with tag `t` (its length patched by [`finish_message`]).
fn begin_message(t: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.push(t);
    out.extend_from_slice(&[0; 4]);
    start
}

fn finish_message(start: usize, out: &mut [u8]) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(sql: &str) -> CopyStatement {
        parse_copy(sql).unwrap_or_else(|| panic!("no parse: {sql}"))
    }

    #[test]
    fn pgbench_and_psql_forms() {
        let c = copy("copy pgbench_accounts from stdin with (freeze on)");
        assert_eq!(c.table, (None, "pgbench_accounts".into()));
        assert!(c.from_stdin && !c.to_stdout && !c.to && !c.query);
        assert_eq!(
            (c.format, c.delimiter, c.null.as_str(), c.header),
            (CopyFormat::Text, b'\t', "\\N", false)
        );
        // pgbench 15+: binary? no, but other clients do.
        let c = copy("COPY public.\"Accounts\" (aid, \"Bid\") FROM STDIN (FORMAT binary)");
        assert_eq!(c.table, (Some("public".into()), "Accounts".into()));
        assert_eq!(c.columns, Some(vec!["aid".into(), "Bid".into()]));
        assert_eq!(c.format, CopyFormat::Binary);
        // psql: \copy t from 'file.csv' with csv header → COPY t FROM STDIN with csv header
        let c = copy("COPY  t FROM STDIN with csv header");
        assert_eq!(
            (c.format, c.delimiter, c.header, c.null.as_str()),
            (CopyFormat::Csv, b',', true, "")
        );
        let c = copy("\\copy t (a, b) from '/tmp/x.csv' with (format csv, delimiter ';', header)");
        assert!(c.from_stdin);
        assert_eq!(
            (c.format, c.delimiter, c.header),
            (CopyFormat::Csv, b';', true)
        );
        let c = copy("\\copy t from /tmp/data.csv csv header");
        assert!(c.from_stdin && c.header && c.format == CopyFormat::Csv);
        let c = copy("\\copy (select * from t) to 'out.txt'");
        assert!(c.query && c.to_stdout && c.to);
        let c = copy("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv, HEADER true);");
        assert!(c.query && c.to_stdout && c.header);
        // Old syntax.
        let c = copy(
            "COPY t FROM STDIN WITH DELIMITER AS ',' NULL AS '' CSV QUOTE '\"' ESCAPE AS '\\'",
        );
        assert_eq!(
            (c.format, c.delimiter, c.null.as_str(), c.quote, c.escape),
            (CopyFormat::Csv, b',', "", b'"', b'\\')
        );
        let c = copy("COPY BINARY t FROM STDIN");
        assert_eq!(c.format, CopyFormat::Binary);
        let c = copy("copy t to stdout with binary");
        assert!(c.to_stdout && c.format == CopyFormat::Binary);
        let c = copy("COPY t FROM STDIN USING DELIMITERS '|' WITH NULL AS 'nil'");
        assert_eq!((c.delimiter, c.null.as_str()), (b'|', "nil"));
        let c = copy("COPY t FROM STDIN CSV FORCE NOT NULL a, b");
        assert_eq!(c.format, CopyFormat::Csv);
        let c = copy("COPY t FROM STDIN (DELIMITER E'\\t', NULL 'x', QUOTE '''', FORCE_NULL (a)) WHERE a > 1");
        assert_eq!((c.delimiter, c.null.as_str(), c.quote), (b'\t', "x", b'\''));
        let c = copy("COPY t FROM '/data/x' (FORMAT text, HEADER match)");
        assert!(!c.from_stdin && c.header);
        // Not COPY, or not understood.
        for bad in [
            "SELECT 1",
            "COPY",
            "COPY t",
            "COPY t FROM STDIN (DELIMITER ';;')",
            "COPY t FROM STDIN (FORMAT xml)",
            "COPY t FROM STDIN (MYSTERY 1)",
            "COPY t (a, FROM STDIN",
            "COPY t FROM STDIN WITH BANANAS",
        ] {
            assert_eq!(parse_copy(bad), None, "{bad}");
        }
    }

    /// Rows as (bytes, key), or the error; and the header bytes.
    type Split = (
        Result<Vec<(Vec<u8>, Option<FieldValue>)>, CopyError>,
        Option<Vec<u8>>,
    );

    /// Feeds `data` whole and in 1-byte chunks; both must agree. Returns the
    /// rows as (bytes, key) and the header bytes.
    fn split_both(s: &CopySplitter, data: &[u8]) -> Split {
        let run = |chunk: usize| {
            let mut sp = s.clone();
            let mut out = Vec::new();
            let mut collect = |sp: &CopySplitter, rows: Vec<CopyRow>| {
                for r in rows {
                    out.push((sp.row_bytes(&r).to_vec(), r.key));
                }
            };
            for c in data.chunks(chunk.max(1)) {
                match sp.feed(c) {
                    Ok(rows) => collect(&sp, rows),
                    Err(e) => return (Err(e), sp.header_bytes().map(<[u8]>::to_vec)),
                }
            }
            match sp.finish() {
                Ok(rows) => collect(&sp, rows),
                Err(e) => return (Err(e), sp.header_bytes().map(<[u8]>::to_vec)),
            }
            (Ok(out), sp.header_bytes().map(<[u8]>::to_vec))
        };
        let whole = run(data.len());
        let bytewise = run(1);
        let sevens = run(7);
        assert_eq!(whole, bytewise);
        assert_eq!(whole, sevens);
        whole
    }

    fn text(s: &str) -> Option<FieldValue> {
        Some(FieldValue::Text(s.into()))
    }

    #[test]
    fn text_format() {
        let sp = CopySplitter::new(CopyFormat::Text, b'\t', b'"', b'"', "\\N", false, 1);
        let data =
            b"1\tab\\tc\tx\n2\t\\N\ty\r\n3\ta\\\\b\\101\\x41\\n\\.\tz\n\\.\nignored\tafter\n";
        let (rows, _) = split_both(&sp, data);
        let rows = rows.unwrap();
        assert_eq!(
            rows,
            vec![
                (b"1\tab\\tc\tx\n".to_vec(), text("ab\tc")),
                (b"2\t\\N\ty\r\n".to_vec(), Some(FieldValue::Null)),
                (
                    b"3\ta\\\\b\\101\\x41\\n\\.\tz\n".to_vec(),
                    text("a\\bAA\n.")
                ),
            ]
        );
        // An escaped delimiter and an escaped newline stay inside the field.
        let sp0 = CopySplitter::new(CopyFormat::Text, b',', 0, 0, "\\N", false, 0);
        let (rows, _) = split_both(&sp0, b"a\\,b\\\nc,2\nlast,3");
        assert_eq!(
            rows.unwrap(),
            vec![
                (b"a\\,b\\\nc,2\n".to_vec(), text("a,b\nc")),
                (b"last,3".to_vec(), text("last"))
            ]
        );
        // Header line skipped and kept for the shards; CR line ends.
        let sp = CopySplitter::new(CopyFormat::Text, b'\t', 0, 0, "\\N", true, 0);
        let (rows, header) = split_both(&sp, b"aid\tbid\r7\t8\r9\t10\r");
        assert_eq!(header.as_deref(), Some(&b"aid\tbid\r"[..]));
        assert_eq!(
            rows.unwrap(),
            vec![
                (b"7\t8\r".to_vec(), text("7")),
                (b"9\t10\r".to_vec(), text("9"))
            ]
        );
    }

    #[test]
    fn text_errors() {
        let sp = CopySplitter::new(CopyFormat::Text, b'\t', 0, 0, "\\N", false, 2);
        let mut data = Vec::new();
        for i in 0..11 {
            data.extend_from_slice(format!("{i}\ta\tb\n").as_bytes());
        }
        data.extend_from_slice(b"12\tonly\n");
        let (r, _) = split_both(&sp, &data);
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), "row 12 has 2 fields, the key is field 3");
        let sp = CopySplitter::new(CopyFormat::Text, b'\t', 0, 0, "\\N", false, 0);
        let (r, _) = split_both(&sp, b"\\xff\n");
        assert_eq!(r.unwrap_err(), CopyError::InvalidUtf8 { row: 1 });
    }

    #[test]
    fn csv_format() {
        let sp = CopySplitter::new(CopyFormat::Csv, b',', b'"', b'"', "", true, 1);
        let data = b"id,name,note\n1,\"Smith, J\",\"multi\nline \"\"quoted\"\"\"\r\n2,,x\n3,\"\",y\n4,plain,\"a,b\"\n";
        let (rows, header) = split_both(&sp, data);
        assert_eq!(header.as_deref(), Some(&b"id,name,note\n"[..]));
        assert_eq!(
            rows.unwrap(),
            vec![
                (
                    b"1,\"Smith, J\",\"multi\nline \"\"quoted\"\"\"\r\n".to_vec(),
                    text("Smith, J")
                ),
                (b"2,,x\n".to_vec(), Some(FieldValue::Null)),
                (b"3,\"\",y\n".to_vec(), text("")),
                (b"4,plain,\"a,b\"\n".to_vec(), text("plain")),
            ]
        );
        // Custom delimiter, escape and null; key with an escaped quote.
        let sp = CopySplitter::new(CopyFormat::Csv, b';', b'\'', b'\\', "NULL", false, 0);
        let (rows, _) = split_both(&sp, b"'it\\'s; here';1\nNULL;2\n'NULL';3\n\\.\n");
        assert_eq!(
            rows.unwrap(),
            vec![
                (b"'it\\'s; here';1\n".to_vec(), text("it's; here")),
                (b"NULL;2\n".to_vec(), Some(FieldValue::Null)),
                (b"'NULL';3\n".to_vec(), text("NULL")),
            ]
        );
        let sp = CopySplitter::new(CopyFormat::Csv, b',', b'"', b'"', "", false, 0);
        let (r, _) = split_both(&sp, b"1,2\n\"open,3\n");
        assert_eq!(r.unwrap_err(), CopyError::UnterminatedQuote { row: 2 });
    }

    fn binary_data(rows: &[Vec<Option<&[u8]>>], trailer: bool) -> Vec<u8> {
        let mut d = BINARY_SIGNATURE.to_vec();
        d.extend_from_slice(&0i32.to_be_bytes());
        d.extend_from_slice(&0i32.to_be_bytes());
        for r in rows {
            d.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => d.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        d.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        d.extend_from_slice(v);
                    }
                }
            }
        }
        if trailer {
            d.extend_from_slice(&BINARY_TRAILER);
        }
        d
    }

    #[test]
    fn binary_format() {
        let sp = CopySplitter::new(CopyFormat::Binary, 0, 0, 0, "", false, 0);
        let data = binary_data(
            &[
                vec![Some(&42i64.to_be_bytes()[..]), Some(b"x")],
                vec![None, Some(b"")],
                vec![Some(&7i64.to_be_bytes()[..]), None],
            ],
            true,
        );
        let (rows, header) = split_both(&sp, &data);
        let header = header.unwrap();
        assert_eq!(header.len(), 19);
        assert_eq!(&header[..11], BINARY_SIGNATURE);
        let rows = rows.unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].1,
            Some(FieldValue::Binary(42i64.to_be_bytes().to_vec()))
        );
        assert_eq!(rows[1].1, Some(FieldValue::Null));
        // Header + rows + trailer rebuild the stream exactly.
        let mut rebuilt = header.clone();
        for (b, _) in &rows {
            rebuilt.extend_from_slice(b);
        }
        rebuilt.extend_from_slice(sp.binary_trailer().unwrap());
        assert_eq!(rebuilt, data);
        // No trailer is accepted; a cut row is not.
        let no_trailer = binary_data(&[vec![Some(b"a")]], false);
        assert_eq!(split_both(&sp, &no_trailer).0.unwrap().len(), 1);
        let cut = &data[..data.len() - 5];
        assert_eq!(
            split_both(&sp, cut).0.unwrap_err(),
            CopyError::Truncated {
                what: "row 3".into()
            }
        );
        let sp2 = CopySplitter::new(CopyFormat::Binary, 0, 0, 0, "", false, 2);
        assert_eq!(
            split_both(&sp2, &data).0.unwrap_err().to_string(),
            "row 1 has 2 fields, the key is field 3"
        );
        let mut bad = data.clone();
        bad[0] = b'X';
        assert!(matches!(
            split_both(&sp, &bad).0,
            Err(CopyError::BinaryHeader { .. })
        ));
        assert!(matches!(
            split_both(&sp, &data[..10]).0,
            Err(CopyError::Truncated { .. })
        ));
        assert!(matches!(
            split_both(&sp, &data[..12]).0,
            Err(CopyError::Truncated { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"\\\n\r\t,\"'aN.0\xff\x00";
        for round in 0..3000 {
            let len = (next() % 40) as usize;
            let mut data: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if round % 3 == 0 {
                let mut d = BINARY_SIGNATURE.to_vec();
                d.extend_from_slice(&[0; 8]);
                d.extend_from_slice(&data);
                data = d;
            }
            for format in [CopyFormat::Text, CopyFormat::Csv, CopyFormat::Binary] {
                let mut sp = CopySplitter::new(
                    format,
                    b',',
                    b'"',
                    b'\\',
                    "",
                    round % 2 == 0,
                    (next() % 3) as usize,
                );
                for c in data.chunks(1 + (next() % 5) as usize) {
                    if let Ok(rows) = sp.feed(c) {
                        for r in rows {
                            let _ = sp.row_bytes(&r);
                        }
                    }
                }
                let _ = sp.finish();
            }
            let s = String::from_utf8_lossy(&data);
            let _ = parse_copy(&format!("COPY t FROM STDIN {s}"));
            let _ = parse_copy(&s);
        }
    }

    #[test]
    fn copy_out_join_sends_one_header_and_one_trailer() {
        let cs = copy("COPY t TO STDOUT (FORMAT binary)");
        let mut header = BINARY_SIGNATURE.to_vec();
        header.extend_from_slice(&[0; 8]);
        let row = [0u8, 1, 0, 0, 0, 1, 7];
        let first = [header.clone(), row.to_vec()].concat();
        let empty = [header.clone(), BINARY_TRAILER.to_vec()].concat();
        // Shard 0 has no rows, shards 1 and 2 one each: the header waits
        // for the first row and goes out with it.
        let mut join = CopyOutJoin::new(&cs, 3).expect("binary needs a join");
        let mut messages: Vec<Vec<u8>> = Vec::new();
        for (shard, payload) in [
            (0, &empty[..]),
            (1, &first[..]),
            (2, &first[..]),
            (1, &BINARY_TRAILER[..]),
            (2, &BINARY_TRAILER[..]),
        ] {
            if let Some(p) = join.pass(shard, payload) {
                messages.push(p.into_owned());
            }
        }
        messages.push(join.trailer().unwrap());
        assert_eq!(
            messages,
            [first.clone(), row.to_vec(), BINARY_TRAILER.to_vec()]
        );
        // No rows anywhere: header and trailer in one message.
        let mut join = CopyOutJoin::new(&cs, 2).unwrap();
        assert!(join.pass(0, &empty).is_none());
        assert!(join.pass(1, &empty).is_none());
        assert_eq!(join.trailer().unwrap(), empty);
    }

    #[test]
    fn copy_out_join_keeps_one_csv_header_line() {
        assert!(CopyOutJoin::new(&copy("COPY t TO STDOUT (FORMAT csv)"), 2).is_none());
        let mut join = CopyOutJoin::new(&copy("COPY t TO STDOUT (FORMAT csv, HEADER)"), 2).unwrap();
        assert_eq!(
            join.pass(0, b"id,name\n").as_deref(),
            Some(&b"id,name\n"[..])
        );
        assert_eq!(join.pass(1, b"id,name\n"), None);
        assert_eq!(join.pass(1, b"1,a\n").as_deref(), Some(&b"1,a\n"[..]));
        assert_eq!(join.trailer(), None);
    }

    fn message(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn description(names: &[&str]) -> Vec<u8> {
        let mut b = (names.len() as i16).to_be_bytes().to_vec();
        for n in names {
            b.extend_from_slice(n.as_bytes());
            b.push(0);
            b.extend_from_slice(&[0; 18]);
        }
        message(b'T', &b)
    }

    fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
            }
        }
        message(b'D', &b)
    }

    /// The CopyData payloads and the final tags of a converted answer.
    fn converted(sql: &str, rows: &[Vec<Option<&str>>]) -> (Vec<u8>, String, usize) {
        let mut conv = CopyRowsOut::new(&copy(sql));
        let mut msgs = description(&["id", "name"]);
        for r in rows {
            msgs.extend(data_row(r));
        }
        msgs.extend(message(b'C', b"SELECT 2\0"));
        let mut out = Vec::new();
        conv.convert(&msgs, &mut out);
        let (mut data, mut tags, mut pos, mut messages) = (Vec::new(), String::new(), 0, 0);
        while pos < out.len() {
            let len = i32::from_be_bytes(out[pos + 1..pos + 5].try_into().unwrap()) as usize;
            let body = &out[pos + 5..pos + 1 + len];
            match out[pos] {
                b'd' => {
                    data.extend_from_slice(body);
                    messages += 1;
                }
                t => tags.push(t as char),
            }
            if out[pos] == b'C' {
                tags.push_str(std::str::from_utf8(&body[..body.len() - 1]).unwrap());
            }
            pos += 1 + len;
        }
        (data, tags, messages)
    }

    #[test]
    fn merged_rows_become_copy_text_csv_and_binary() {
        let rows = vec![vec![Some("1"), Some("a\tb\\c\nd")], vec![Some("2"), None]];
        let (data, tags, _) = converted("COPY (SELECT 1) TO STDOUT", &rows);
        assert_eq!(data, b"1\ta\\tb\\\\c\\nd\n2\t\\N\n");
        assert_eq!(tags, "HcCCOPY 2");
        let rows = vec![
            vec![Some("1"), Some("x,\"y\"")],
            vec![Some("2"), Some("")],
            vec![Some("3"), None],
        ];
        let (data, _, _) = converted("COPY (SELECT 1) TO STDOUT (FORMAT csv, HEADER)", &rows);
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "id,name\n1,\"x,\"\"y\"\"\"\n2,\"\"\n3,\n"
        );
        let (data, tags, messages) = converted(
            "COPY (SELECT 1) TO STDOUT (FORMAT binary)",
            &[vec![Some("ab")]],
        );
        assert_eq!(
            messages, 2,
            "the header travels with the first row, as Postgres sends it"
        );
        let mut expected = BINARY_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&[0, 1, 0, 0, 0, 2, b'a', b'b']);
        expected.extend_from_slice(&BINARY_TRAILER);
        assert_eq!(data, expected);
        assert_eq!(tags, "HcCCOPY 1");
    }
}
