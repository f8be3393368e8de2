//! Where a client's extended-protocol batch ends in a read buffer.
//!
//! A client expects no answer to Parse, Bind, Describe, Execute or Close
//! until it sends Sync or Flush (a server keeps those answers buffered until
//! then), so a proxy that routes a batch may wait for the batch's end before
//! it decides anything, and then sees the whole batch however its messages
//! fell into TCP reads.

use crate::frontend::tag;
use crate::{Header, ProtocolError};

/// How far a batch at the start of a buffer reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// The batch ends after this many bytes: its last message is a Sync, a
    /// Flush, or a message outside the extended protocol (a Query, COPY
    /// data, Terminate), which ends it too.
    Complete(usize),
    /// Only this many bytes are whole messages of the batch; the rest has
    /// not arrived. Scanning may resume there.
    Incomplete(usize),
}

/// Whether `t` is a message that continues an extended-protocol batch
/// (Parse, Bind, Describe, Execute, Close).
#[inline]
pub fn continues_batch(t: u8) -> bool {
    matches!(
        t,
        tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE
    )
}

/// Finds the end of the batch that starts at the beginning of `buf`; the
/// first `scanned` bytes are known to be whole messages that continue it
/// (from an earlier [`BatchEnd::Incomplete`]). Messages over `max` bytes are
/// an error, as everywhere.
pub fn batch_end(buf: &[u8], scanned: usize, max: usize) -> Result<BatchEnd, ProtocolError> {
    let mut at = scanned;
    while let Some(h) = Header::complete(&buf[at..], max)? {
        at += h.total;
        if !continues_batch(h.tag) {
            return Ok(BatchEnd::Complete(at));
        }
    }
    Ok(BatchEnd::Incomplete(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn batch() -> (Vec<u8>, usize) {
        let mut b = msg(tag::PARSE, b"\0SELECT 1\0\0\0");
        b.extend(msg(tag::BIND, b"\0\0\0\0\0\0\0\0"));
        b.extend(msg(tag::EXECUTE, b"\0\0\0\0\0"));
        let end = b.len() + 5;
        b.extend(msg(tag::SYNC, b""));
        b.extend(msg(tag::PARSE, b"\0SELECT 2\0\0\0"));
        (b, end)
    }

    #[test]
    fn a_batch_ends_at_its_sync_however_it_is_split() {
        let (whole, end) = batch();
        for cut in 0..whole.len() {
            let got = batch_end(&whole[..cut], 0, 1 << 20).unwrap();
            if cut >= end {
                assert_eq!(got, BatchEnd::Complete(end), "cut at {cut}");
            } else {
                let BatchEnd::Incomplete(n) = got else {
                    panic!("complete at {cut}")
                };
                assert!(n <= cut);
                // Resuming where the scan stopped gives the same answer.
                assert_eq!(
                    batch_end(&whole, n, 1 << 20).unwrap(),
                    BatchEnd::Complete(end)
                );
            }
        }
    }

    #[test]
    fn flush_and_messages_outside_the_batch_end_it() {
        for t in [tag::FLUSH, tag::QUERY, tag::COPY_DATA, tag::TERMINATE] {
            let mut b = msg(tag::BIND, b"\0\0\0\0\0\0\0\0");
            let end = b.len() + 5;
            b.extend(msg(t, b""));
            assert_eq!(batch_end(&b, 0, 1 << 20).unwrap(), BatchEnd::Complete(end));
        }
    }

    #[test]
    fn an_oversized_message_is_an_error() {
        let b = msg(tag::PARSE, &[0u8; 100]);
        assert!(batch_end(&b, 0, 50).is_err());
    }
}
