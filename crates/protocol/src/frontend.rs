//! Frontend (client to server) messages: validated views and builders.

use bytes::{BufMut, BytesMut};

use crate::backend::patch_len;
use crate::frame::MessageReader;
use crate::ProtocolError;

/// Frontend message type bytes.
pub mod tag {
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// Extended protocol: Parse.
    pub const PARSE: u8 = b'P';
    /// Extended protocol: Bind.
    pub const BIND: u8 = b'B';
    /// Extended protocol: Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Extended protocol: Execute.
    pub const EXECUTE: u8 = b'E';
    /// Extended protocol: Close.
    pub const CLOSE: u8 = b'C';
    /// Extended protocol: Flush.
    pub const FLUSH: u8 = b'H';
    /// Extended protocol: Sync.
    pub const SYNC: u8 = b'S';
    /// End of session.
    pub const TERMINATE: u8 = b'X';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY done.
    pub const COPY_DONE: u8 = b'c';
    /// COPY failed.
    pub const COPY_FAIL: u8 = b'f';
    /// Fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// Password, SASL initial and SASL response messages.
    pub const PASSWORD: u8 = b'p';
}

/// Whether `t` is a message type a client may send after authentication.
pub fn is_known_tag(t: u8) -> bool {
    matches!(
        t,
        tag::QUERY
            | tag::PARSE
            | tag::BIND
            | tag::DESCRIBE
            | tag::EXECUTE
            | tag::CLOSE
            | tag::FLUSH
            | tag::SYNC
            | tag::TERMINATE
            | tag::COPY_DATA
            | tag::COPY_DONE
            | tag::COPY_FAIL
            | tag::FUNCTION_CALL
    )
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, ProtocolError> {
    std::str::from_utf8(b).map_err(|_| ProtocolError::InvalidUtf8(what))
}

/// A simple Query: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = MessageReader::new(body, "Query");
    let sql = r.cstr()?;
    r.finish()?;
    utf8(sql, "Query")
}

/// A Parse message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// SQL text.
    pub query: &'a str,
    /// Parameter type OIDs as raw big-endian bytes (4 per type).
    pub param_types: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Decodes a Parse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = MessageReader::new(body, "Parse");
        let name = utf8(r.cstr()?, "Parse")?;
        let query = utf8(r.cstr()?, "Parse")?;
        let n = r.count16()?;
        let param_types = r.bytes(n * 4)?;
        r.finish()?;
        Ok(Parse {
            name,
            query,
            param_types,
        })
    }

    /// Number of parameter types given.
    pub fn param_type_count(&self) -> usize {
        self.param_types.len() / 4
    }

    /// Appends a Parse message for `name` with this query and types.
    pub fn encode_as(&self, name: &str, out: &mut BytesMut) {
        encode_parse(name, self.query, self.param_types, out);
    }
}

/// Appends a Parse message built from parts (`param_types` raw, 4 bytes each).
pub fn encode_parse(name: &str, query: &str, param_types: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::PARSE);
    out.put_i32(0);
    put_cstr(out, name.as_bytes());
    put_cstr(out, query.as_bytes());
    out.put_i16((param_types.len() / 4) as i16);
    out.extend_from_slice(param_types);
    patch_len(out, start);
}

/// A Bind message, validated: every length inside it was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal name.
    pub portal: &'a str,
    /// Source prepared statement name.
    pub statement: &'a str,
    /// Parameter format codes (raw, 2 bytes each).
    formats: &'a [u8],
    /// Raw parameter area: count and (length, value) pairs.
    params: &'a [u8],
    param_count: usize,
    /// Everything after the statement name (formats, params, result formats).
    tail: &'a [u8],
    /// Result format codes (raw, 2 bytes each).
    results: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Decodes and validates a Bind body.
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = MessageReader::new(body, "Bind");
        let portal = utf8(r.cstr()?, "Bind")?;
        let statement = utf8(r.cstr()?, "Bind")?;
        let tail = r.rest();
        let nf = r.count16()?;
        let formats = r.bytes(nf * 2)?;
        let param_count = r.count16()?;
        let params_start = r.position();
        for _ in 0..param_count {
            let len = r.i32()?;
            if len < -1 {
                return Err(ProtocolError::Malformed(
                    "Bind",
                    "negative parameter length",
                ));
            }
            if len > 0 {
                r.bytes(len as usize)?;
            }
        }
        let params = &body[params_start..r.position()];
        let nr = r.count16()?;
        let results = r.bytes(nr * 2)?;
        r.finish()?;
        if nf > 1 && nf != param_count {
            return Err(ProtocolError::Malformed(
                "Bind",
                "parameter format count does not match parameter count",
            ));
        }
        Ok(Bind {
            portal,
            statement,
            formats,
            params,
            param_count,
            tail,
            results,
        })
    }

    /// A Bind of `statement` that passes only the parameters at `indices`
    /// (0-based, in that order, each with its format code) and asks for the
    /// same result formats: the Bind of one shard's part of a statement
    /// whose parameters were renumbered for it.
    pub fn encode_with_params(&self, statement: &str, indices: &[usize], out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(tag::BIND);
        out.put_i32(0);
        put_cstr(out, self.portal.as_bytes());
        put_cstr(out, statement.as_bytes());
        let nf = self.formats.len() / 2;
        if nf <= 1 {
            out.put_i16(nf as i16);
            out.extend_from_slice(self.formats);
        } else {
            out.put_i16(indices.len() as i16);
            for &i in indices {
                out.put_i16(self.param_format(i));
            }
        }
        out.put_i16(indices.len() as i16);
        for &i in indices {
            match self.param(i) {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.extend_from_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
        out.put_i16((self.results.len() / 2) as i16);
        out.extend_from_slice(self.results);
        patch_len(out, start);
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// Format code of parameter `i` (0 text, 1 binary).
    pub fn param_format(&self, i: usize) -> i16 {
        let n = self.formats.len() / 2;
        let at = match n {
            0 => return 0,
            1 => 0,
            _ => i,
        };
        if at >= n {
            return 0;
        }
        i16::from_be_bytes([self.formats[at * 2], self.formats[at * 2 + 1]])
    }

    /// Value of parameter `i`: `None` for NULL or out of range.
    pub fn param(&self, i: usize) -> Option<&'a [u8]> {
        let mut pos = 0;
        for k in 0..self.param_count {
            let len = i32::from_be_bytes(self.params[pos..pos + 4].try_into().ok()?);
            pos += 4;
            let value = if len < 0 {
                None
            } else {
                let v = &self.params[pos..pos + len as usize];
                pos += len as usize;
                Some(v)
            };
            if k == i {
                return value;
            }
        }
        None
    }

    /// The result format codes as sent (none: all text; one: for all columns).
    pub fn result_formats(&self) -> Vec<i16> {
        self.results
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    /// Appends this Bind for `statement` and the unnamed portal with its
    /// result format codes replaced by `formats`.
    pub fn encode_with_results(&self, statement: &str, formats: &[i16], out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(tag::BIND);
        out.put_i32(0);
        put_cstr(out, b"");
        put_cstr(out, statement.as_bytes());
        let keep = self.tail.len() - 2 - self.results.len();
        out.extend_from_slice(&self.tail[..keep]);
        out.put_i16(formats.len() as i16);
        for f in formats {
            out.put_i16(*f);
        }
        patch_len(out, start);
    }

    /// Appends this Bind with its statement name replaced by `statement`.
    pub fn encode_with_statement(&self, statement: &str, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(tag::BIND);
        out.put_i32(0);
        put_cstr(out, self.portal.as_bytes());
        put_cstr(out, statement.as_bytes());
        out.extend_from_slice(self.tail);
        patch_len(out, start);
    }
}

/// Target of a Describe or Close message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement (`S`).
    Statement,
    /// A portal (`P`).
    Portal,
}

/// A Describe or Close message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeOrClose<'a> {
    /// Statement or portal.
    pub target: Target,
    /// Its name.
    pub name: &'a str,
}

impl<'a> DescribeOrClose<'a> {
    /// Decodes a Describe or Close body.
    pub fn decode(body: &'a [u8], what: &'static str) -> Result<Self, ProtocolError> {
        let mut r = MessageReader::new(body, what);
        let target = match r.u8()? {
            b'S' => Target::Statement,
            b'P' => Target::Portal,
            _ => return Err(ProtocolError::Malformed(what, "target must be 'S' or 'P'")),
        };
        let name = utf8(r.cstr()?, what)?;
        r.finish()?;
        Ok(DescribeOrClose { target, name })
    }

    /// Appends a message of type `msg_tag` for the same target under another name.
    pub fn encode_as(&self, msg_tag: u8, name: &str, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(msg_tag);
        out.put_i32(0);
        out.put_u8(match self.target {
            Target::Statement => b'S',
            Target::Portal => b'P',
        });
        put_cstr(out, name.as_bytes());
        patch_len(out, start);
    }
}

/// An Execute message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute<'a> {
    /// Portal name.
    pub portal: &'a str,
    /// Row limit, 0 for all.
    pub max_rows: i32,
}

impl<'a> Execute<'a> {
    /// Decodes an Execute body.
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = MessageReader::new(body, "Execute");
        let portal = utf8(r.cstr()?, "Execute")?;
        let max_rows = r.i32()?;
        r.finish()?;
        Ok(Execute { portal, max_rows })
    }
}

/// Checks the body of any frontend message type the proxy forwards without
/// looking inside, so a malformed message is refused rather than passed on.
pub fn validate(tag_byte: u8, body: &[u8]) -> Result<(), ProtocolError> {
    match tag_byte {
        tag::QUERY => parse_query(body).map(|_| ()),
        tag::PARSE => Parse::decode(body).map(|_| ()),
        tag::BIND => Bind::decode(body).map(|_| ()),
        tag::DESCRIBE => DescribeOrClose::decode(body, "Describe").map(|_| ()),
        tag::CLOSE => DescribeOrClose::decode(body, "Close").map(|_| ()),
        tag::EXECUTE => Execute::decode(body).map(|_| ()),
        tag::FLUSH | tag::SYNC | tag::TERMINATE | tag::COPY_DONE => {
            if body.is_empty() {
                Ok(())
            } else {
                Err(ProtocolError::Malformed("Sync/Flush", "unexpected body"))
            }
        }
        tag::COPY_FAIL => MessageReader::new(body, "CopyFail").cstr().map(|_| ()),
        tag::COPY_DATA | tag::FUNCTION_CALL | tag::PASSWORD => Ok(()),
        other => Err(ProtocolError::UnknownType(other)),
    }
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.extend_from_slice(s);
    out.put_u8(0);
}

/// Appends a simple Query message.
pub fn encode_query(sql: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::QUERY);
    out.put_i32(0);
    put_cstr(out, sql.as_bytes());
    patch_len(out, start);
}

/// Appends a message that has no body (Sync, Flush, Terminate, CopyDone).
pub fn encode_empty(tag_byte: u8, out: &mut BytesMut) {
    out.put_u8(tag_byte);
    out.put_i32(4);
}

/// Appends a password-type message (`p`) with the given raw payload.
pub fn encode_password(payload: &[u8], out: &mut BytesMut) {
    out.put_u8(tag::PASSWORD);
    out.put_i32(4 + payload.len() as i32);
    out.extend_from_slice(payload);
}

/// Appends a SASLInitialResponse: mechanism name and initial client data.
pub fn encode_sasl_initial(mechanism: &str, data: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(tag::PASSWORD);
    out.put_i32(0);
    put_cstr(out, mechanism.as_bytes());
    out.put_i32(data.len() as i32);
    out.extend_from_slice(data);
    patch_len(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_body(params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"p\0s1\0");
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn bind_roundtrip_and_params() {
        let body = bind_body(&[Some(b"42"), None, Some(b"")]);
        let b = Bind::decode(&body).unwrap();
        assert_eq!(b.portal, "p");
        assert_eq!(b.statement, "s1");
        assert_eq!(b.param_count(), 3);
        assert_eq!(b.param(0), Some(&b"42"[..]));
        assert_eq!(b.param(1), None);
        assert_eq!(b.param(2), Some(&b""[..]));
        assert_eq!(b.param_format(2), 1);
        let mut out = BytesMut::new();
        b.encode_with_statement("sg_7", &mut out);
        let again = Bind::decode(&out[5..]).unwrap();
        assert_eq!(again.statement, "sg_7");
        assert_eq!(again.param(0), Some(&b"42"[..]));
    }

    #[test]
    fn bind_with_overrunning_length_is_refused() {
        let mut body = bind_body(&[Some(b"42")]);
        // Claim a 1000-byte parameter.
        let at = body.len() - 2 - 2 - 4;
        body[at..at + 4].copy_from_slice(&1000i32.to_be_bytes());
        assert!(Bind::decode(&body).is_err());
    }

    #[test]
    fn query_without_nul_is_refused() {
        assert!(parse_query(b"select 1").is_err());
        assert_eq!(parse_query(b"select 1\0").unwrap(), "select 1");
        assert!(parse_query(b"select 1\0extra").is_err());
    }

    #[test]
    fn parse_roundtrip() {
        let mut out = BytesMut::new();
        encode_parse("a", "select $1", &23u32.to_be_bytes(), &mut out);
        let p = Parse::decode(&out[5..]).unwrap();
        assert_eq!(p.name, "a");
        assert_eq!(p.query, "select $1");
        assert_eq!(p.param_type_count(), 1);
    }
}
