//! The untagged packets a connection starts with: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest.

use crate::frame::MessageReader;
use crate::ProtocolError;

/// Request code of SSLRequest.
pub const SSL_REQUEST: i32 = 80877103;
/// Request code of GSSENCRequest.
pub const GSSENC_REQUEST: i32 = 80877104;
/// Request code of CancelRequest.
pub const CANCEL_REQUEST: i32 = 80877102;
/// Protocol version 3.0.
pub const PROTOCOL_3_0: i32 = 196608;
/// Largest startup packet accepted (Postgres uses 10000).
pub const MAX_STARTUP_PACKET: usize = 10000;

/// A decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// StartupMessage with its parameters in the order given.
    Startup {
        /// Requested minor protocol version (major is always 3).
        minor: u16,
        /// Parameters such as `user`, `database`, `options`.
        params: Vec<(String, String)>,
    },
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running for this key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
}

impl StartupPacket {
    /// Decodes the packet at the start of `buf` and returns it with its length,
    /// or `None` if more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, ProtocolError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 8 {
            return Err(ProtocolError::BadLength(len as i64));
        }
        let len = len as usize;
        if len > MAX_STARTUP_PACKET {
            return Err(ProtocolError::TooLarge {
                len,
                max: MAX_STARTUP_PACKET,
            });
        }
        if buf.len() < len {
            return Ok(None);
        }
        let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let body = &buf[8..len];
        let packet = match code {
            SSL_REQUEST => StartupPacket::SslRequest,
            GSSENC_REQUEST => StartupPacket::GssEncRequest,
            CANCEL_REQUEST => {
                let mut r = MessageReader::new(body, "CancelRequest");
                let pid = r.i32()?;
                let secret = r.i32()?;
                StartupPacket::Cancel { pid, secret }
            }
            _ => {
                let major = (code >> 16) as u16;
                let minor = (code & 0xffff) as u16;
                if major != 3 {
                    return Err(ProtocolError::UnsupportedProtocol(major, minor));
                }
                StartupPacket::Startup {
                    minor,
                    params: decode_params(body)?,
                }
            }
        };
        Ok(Some((packet, len)))
    }
}

fn decode_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut r = MessageReader::new(body, "StartupMessage");
    let mut params = Vec::new();
    loop {
        let key = r.str()?;
        if key.is_empty() {
            break;
        }
        let value = r.str()?;
        params.push((key.to_owned(), value.to_owned()));
    }
    r.finish()?;
    Ok(params)
}

/// Appends a StartupMessage for protocol 3.0 with the given parameters.
pub fn encode_startup(params: &[(&str, &str)], out: &mut bytes::BytesMut) {
    use bytes::BufMut;
    let start = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        crate::frontend::put_cstr(out, k.as_bytes());
        crate::frontend::put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a CancelRequest packet.
pub fn encode_cancel(pid: i32, secret: i32, out: &mut bytes::BytesMut) {
    use bytes::BufMut;
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_roundtrip() {
        let mut out = bytes::BytesMut::new();
        encode_startup(&[("user", "app"), ("database", "db")], &mut out);
        let (p, n) = StartupPacket::decode(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(StartupPacket::decode(b"\x7f\xff\xff\xffGET / HTTP/1.1").is_err());
        assert!(StartupPacket::decode(b"\0\0\0\x10\x00\x09\0\0abcdefgh").is_err());
        let mut out = bytes::BytesMut::new();
        encode_cancel(1, 2, &mut out);
        assert_eq!(
            StartupPacket::decode(&out).unwrap().unwrap().0,
            StartupPacket::Cancel { pid: 1, secret: 2 }
        );
    }
}
