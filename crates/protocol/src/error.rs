//! Errors: malformed protocol input, and Postgres ErrorResponse values.

use bytes::{BufMut, BytesMut};

/// A violation of the wire protocol by the peer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field smaller than the length field itself.
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// A length field above the configured maximum.
    #[error("message of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A message type byte the protocol does not define at this point.
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
    /// A message body that ends before its fields do.
    #[error("malformed {0} message: {1}")]
    Malformed(&'static str, &'static str),
    /// A startup packet the proxy does not understand.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    UnsupportedProtocol(u16, u16),
    /// The connection ended in the middle of a message.
    #[error("incomplete message from client")]
    Incomplete,
    /// A string that is not valid UTF-8 where text is required.
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
}

impl ProtocolError {
    /// The ErrorResponse a client gets for this violation (SQLSTATE 08P01).
    pub fn to_pg_error(&self) -> PgError {
        PgError::fatal("08P01", self.to_string())
    }
}

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// The code for `s`, or `XX000` (internal error) if `s` is not five ASCII
    /// letters and digits.
    pub fn new(s: &str) -> SqlState {
        match <[u8; 5]>::try_from(s.as_bytes()) {
            Ok(b) if b.iter().all(u8::is_ascii_alphanumeric) => SqlState(b),
            _ => SqlState(*b"XX000"),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII by construction")
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for SqlState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error the proxy reports to a client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// SQLSTATE.
    pub code: SqlState,
    /// Primary message.
    pub message: String,
    /// Optional detail line.
    pub detail: Option<String>,
    /// Optional hint telling the user what to do.
    pub hint: Option<String>,
}

impl PgError {
    /// An ERROR with the given SQLSTATE and message.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            code: SqlState::new(code),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A FATAL error: the connection closes after it.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            ..PgError::error(code, message)
        }
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a detail line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Appends this error as an ErrorResponse message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(b'E');
        out.put_i32(0);
        let sev = self.severity.as_str();
        put_field(out, b'S', sev);
        put_field(out, b'V', sev);
        put_field(out, b'C', self.code.as_str());
        put_field(out, b'M', &self.message);
        if let Some(detail) = &self.detail {
            put_field(out, b'D', detail);
        }
        if let Some(hint) = &self.hint {
            put_field(out, b'H', hint);
        }
        out.put_u8(0);
        crate::backend::patch_len(out, start);
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for PgError {}

fn put_field(out: &mut BytesMut, tag: u8, value: &str) {
    out.put_u8(tag);
    // A NUL inside a field would end it early; Postgres never sends one either.
    out.extend(value.bytes().map(|b| if b == 0 { b'?' } else { b }));
    out.put_u8(0);
}
