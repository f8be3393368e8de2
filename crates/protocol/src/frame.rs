//! Splitting a byte stream into messages, and reading fields out of one.

use bytes::{Buf, BytesMut};

use crate::ProtocolError;

/// A remainder up to this size is moved to the front of its buffer instead of
/// leaving the buffer's start behind it.
const REWIND_LIMIT: usize = 4096;

/// Drops the first `n` bytes of a read buffer, keeping the next read at the
/// start of its allocation.
///
/// `BytesMut::advance` moves the buffer's start forward, so a connection
/// that reads a short message at a time would sweep its whole allocation
/// (16 KiB) through the CPU caches; with dozens of connections that is
/// several hundred KiB of cache evicted from the proxy and the servers that
/// share the machine. Clearing a fully consumed buffer, or moving a small
/// remainder to the front, keeps each connection on its first cache lines.
#[inline]
pub fn consume_front(buf: &mut BytesMut, n: usize) {
    let rest = buf.len() - n;
    if rest == 0 {
        buf.clear();
    } else if rest <= REWIND_LIMIT {
        buf.copy_within(n.., 0);
        buf.truncate(rest);
    } else {
        buf.advance(n);
    }
}

/// The five-byte header of a tagged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Length of the whole message including the type byte.
    pub total: usize,
}

impl Header {
    /// Reads the header at the start of `buf`, if all five bytes are there.
    ///
    /// Rejects a length field below 4 and a message longer than `max` bytes.
    #[inline]
    pub fn peek(buf: &[u8], max: usize) -> Result<Option<Header>, ProtocolError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(ProtocolError::BadLength(len as i64));
        }
        let len = len as usize;
        if len > max {
            return Err(ProtocolError::TooLarge { len, max });
        }
        Ok(Some(Header {
            tag: buf[0],
            total: len + 1,
        }))
    }

    /// Reads the header at the start of `buf` when the whole message is there.
    #[inline]
    pub fn complete(buf: &[u8], max: usize) -> Result<Option<Header>, ProtocolError> {
        match Header::peek(buf, max)? {
            Some(h) if buf.len() >= h.total => Ok(Some(h)),
            _ => Ok(None),
        }
    }
}

/// Reads typed fields from one message body, checking bounds on every read.
#[derive(Debug, Clone)]
pub struct MessageReader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> MessageReader<'a> {
    /// A reader over `body`; `what` names the message in errors.
    pub fn new(body: &'a [u8], what: &'static str) -> Self {
        MessageReader {
            buf: body,
            pos: 0,
            what,
        }
    }

    fn malformed(&self, why: &'static str) -> ProtocolError {
        ProtocolError::Malformed(self.what, why)
    }

    /// A NUL-terminated string, without its NUL.
    pub fn cstr(&mut self) -> Result<&'a [u8], ProtocolError> {
        let rest = &self.buf[self.pos..];
        let end =
            memchr::memchr(0, rest).ok_or_else(|| self.malformed("string is not terminated"))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// A NUL-terminated UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, ProtocolError> {
        let what = self.what;
        std::str::from_utf8(self.cstr()?).map_err(|_| ProtocolError::InvalidUtf8(what))
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.bytes(1)?[0])
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() - self.pos < n {
            return Err(self.malformed("field runs past the end of the message"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// A non-negative count stored as i16.
    pub fn count16(&mut self) -> Result<usize, ProtocolError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.malformed("negative count"));
        }
        Ok(n as usize)
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes after the last field"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_front_keeps_reads_at_the_start_of_the_buffer() {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"hello world");
        let start = buf.as_ptr();
        consume_front(&mut buf, 6);
        assert_eq!(&buf[..], b"world");
        assert_eq!(buf.as_ptr(), start, "a small remainder moves to the front");
        consume_front(&mut buf, 5);
        assert!(buf.is_empty());
        buf.extend_from_slice(b"next");
        assert_eq!(
            buf.as_ptr(),
            start,
            "an emptied buffer is reused from its start"
        );
        let mut big = BytesMut::from(&vec![7u8; REWIND_LIMIT + 10][..]);
        consume_front(&mut big, 5);
        assert_eq!(big.len(), REWIND_LIMIT + 5);
    }

    #[test]
    fn header_needs_five_bytes_and_sane_length() {
        assert_eq!(Header::peek(b"Q\0\0", 100), Ok(None));
        assert_eq!(
            Header::peek(b"Q\0\0\0\x03", 100),
            Err(ProtocolError::BadLength(3))
        );
        assert!(matches!(
            Header::peek(b"Q\0\0\x10\0", 100),
            Err(ProtocolError::TooLarge { .. })
        ));
        let h = Header::peek(b"Q\0\0\0\x05x", 100).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                tag: b'Q',
                total: 6
            }
        );
        assert_eq!(Header::complete(b"Q\0\0\0\x06x", 100), Ok(None));
    }

    #[test]
    fn reader_checks_bounds() {
        let mut r = MessageReader::new(b"ab\0\x00\x01", "Test");
        assert_eq!(r.cstr().unwrap(), b"ab");
        assert!(r.i32().is_err());
        assert_eq!(r.i16().unwrap(), 1);
        r.finish().unwrap();
        let mut r = MessageReader::new(b"abc", "Test");
        assert!(r.cstr().is_err());
    }
}
