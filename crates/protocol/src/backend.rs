//! Backend (server to client) messages: builders and the few decoders the proxy needs.

use bytes::{BufMut, BytesMut};

use crate::frame::MessageReader;
use crate::ProtocolError;

/// Backend message type bytes.
pub mod tag {
    /// Authentication request.
    pub const AUTHENTICATION: u8 = b'R';
    /// Cancellation key.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// Runtime parameter report.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// Ready for a new query; body is the transaction status.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// Error.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// Notice.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// LISTEN/NOTIFY notification.
    pub const NOTIFICATION: u8 = b'A';
    /// Command completed.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// Row description.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// A row.
    pub const DATA_ROW: u8 = b'D';
    /// Empty query string.
    pub const EMPTY_QUERY: u8 = b'I';
    /// Parse done.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// Bind done.
    pub const BIND_COMPLETE: u8 = b'2';
    /// Close done.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// Parameter types of a statement.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// The statement returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// Execute hit its row limit.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// COPY FROM STDIN starts.
    pub const COPY_IN: u8 = b'G';
    /// COPY TO STDOUT starts.
    pub const COPY_OUT: u8 = b'H';
    /// Replication copy.
    pub const COPY_BOTH: u8 = b'W';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY done.
    pub const COPY_DONE: u8 = b'c';
    /// Fast-path function result.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    /// Protocol version negotiation.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Overwrites the length field of the message that starts at `start`.
pub fn patch_len(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Appends ReadyForQuery with status `I`, `T` or `E`.
pub fn ready_for_query(status: u8, out: &mut BytesMut) {
    out.put_u8(tag::READY_FOR_QUERY);
    out.put_i32(5);
    out.put_u8(status);
}

/// Appends a message with an empty body (ParseComplete, BindComplete, ...).
pub fn empty(tag_byte: u8, out: &mut BytesMut) {
    out.put_u8(tag_byte);
    out.put_i32(4);
}

/// Appends AuthenticationOk or another authentication request with `code` and `data`.
pub fn authentication(code: i32, data: &[u8], out: &mut BytesMut) {
    out.put_u8(tag::AUTHENTICATION);
    out.put_i32(8 + data.len() as i32);
    out.put_i32(code);
    out.extend_from_slice(data);
}

/// Authentication request codes.
pub mod auth_code {
    /// Authenticated.
    pub const OK: i32 = 0;
    /// Send the password in clear text.
    pub const CLEARTEXT: i32 = 3;
    /// Send an md5 hash with this salt.
    pub const MD5: i32 = 5;
    /// SASL: list of mechanisms.
    pub const SASL: i32 = 10;
    /// SASL: server challenge.
    pub const SASL_CONTINUE: i32 = 11;
    /// SASL: server final message.
    pub const SASL_FINAL: i32 = 12;
}

/// Appends ParameterStatus.
pub fn parameter_status(name: &str, value: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::PARAMETER_STATUS);
    out.put_i32(0);
    crate::frontend::put_cstr(out, name.as_bytes());
    crate::frontend::put_cstr(out, value.as_bytes());
    patch_len(out, start);
}

/// Appends BackendKeyData.
pub fn backend_key_data(pid: i32, secret: i32, out: &mut BytesMut) {
    out.put_u8(tag::BACKEND_KEY_DATA);
    out.put_i32(12);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// Appends CommandComplete with `command_tag` (e.g. `SELECT 1`).
pub fn command_complete(command_tag: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::COMMAND_COMPLETE);
    out.put_i32(0);
    crate::frontend::put_cstr(out, command_tag.as_bytes());
    patch_len(out, start);
}

/// Appends a RowDescription of text columns with the given names and type OIDs.
pub fn row_description(columns: &[(&str, u32)], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::ROW_DESCRIPTION);
    out.put_i32(0);
    out.put_i16(columns.len() as i16);
    for (name, oid) in columns {
        crate::frontend::put_cstr(out, name.as_bytes());
        out.put_u32(0); // table oid
        out.put_i16(0); // column number
        out.put_u32(*oid);
        out.put_i16(-1); // type size
        out.put_i32(-1); // type modifier
        out.put_i16(0); // text format
    }
    patch_len(out, start);
}

/// Appends a DataRow of text values (`None` is NULL).
pub fn data_row<S: AsRef<str>>(values: &[Option<S>], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::DATA_ROW);
    out.put_i32(0);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(s) => {
                out.put_i32(s.as_ref().len() as i32);
                out.extend_from_slice(s.as_ref().as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    patch_len(out, start);
}

/// Appends NoticeResponse with severity NOTICE.
pub fn notice(code: &str, message: &str, out: &mut BytesMut) {
    notice_with("NOTICE", code, message, out);
}

/// Appends NoticeResponse with severity WARNING.
pub fn warning(code: &str, message: &str, out: &mut BytesMut) {
    notice_with("WARNING", code, message, out);
}

fn notice_with(severity: &str, code: &str, message: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::NOTICE_RESPONSE);
    out.put_i32(0);
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(t);
        crate::frontend::put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    patch_len(out, start);
}

/// Fields of an ErrorResponse or NoticeResponse the proxy cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Non-localized severity (`V`), or `S` when absent.
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// The server routine that raised it (`R`), empty when absent.
    pub routine: String,
}

impl ErrorFields {
    /// Decodes the body of an ErrorResponse or NoticeResponse.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = MessageReader::new(body, "ErrorResponse");
        let mut out = ErrorFields::default();
        loop {
            let t = r.u8()?;
            if t == 0 {
                break;
            }
            let v = String::from_utf8_lossy(r.cstr()?).into_owned();
            match t {
                b'V' => out.severity = v,
                b'S' if out.severity.is_empty() => out.severity = v,
                b'C' => out.code = v,
                b'M' => out.message = v,
                b'R' => out.routine = v,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Whether the session ended (FATAL or PANIC).
    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }

    /// Whether a prepared statement's saved plan no longer fits its tables
    /// ("cached plan must not change result type", after DDL): the named
    /// statement fails on every run until it is prepared again.
    pub fn is_stale_cached_plan(&self) -> bool {
        self.code == "0A000" && self.routine == "RevalidateCachedQuery"
    }
}

/// Decodes ParameterStatus into (name, value).
pub fn decode_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = MessageReader::new(body, "ParameterStatus");
    let name = r.str()?;
    let value = r.str()?;
    Ok((name, value))
}

/// Decodes the command tag of CommandComplete.
pub fn decode_command_complete(body: &[u8]) -> Result<&str, ProtocolError> {
    MessageReader::new(body, "CommandComplete").str()
}

/// Decodes BackendKeyData into (process id, secret key).
pub fn decode_backend_key_data(body: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut r = MessageReader::new(body, "BackendKeyData");
    Ok((r.i32()?, r.i32()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PgError;

    #[test]
    fn error_roundtrip() {
        let mut out = BytesMut::new();
        PgError::error("57014", "canceled").encode(&mut out);
        let f = ErrorFields::decode(&out[5..]).unwrap();
        assert_eq!(f.code, "57014");
        assert_eq!(f.message, "canceled");
        assert_eq!(f.severity, "ERROR");
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, out.len());
    }
}
