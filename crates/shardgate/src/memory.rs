//! Giving memory back after a large statement.
//!
//! A client that sent one large statement (a 9 MB `IN` list, a bulk INSERT)
//! or received one large answer leaves grown buffers and freed heap pages
//! behind: an idle client should cost a few kilobytes, not what its largest
//! statement needed.

use bytes::BytesMut;

/// Buffers larger than this are dropped once empty (the next read or write
/// allocates what it needs).
pub const SHRINK_ABOVE: usize = 64 * 1024;

/// A statement at least this large makes the session return the heap's
/// free pages to the system once it has been handled.
pub const TRIM_AFTER: usize = 1024 * 1024;

/// Replaces `buf` by an empty one if it is empty and holds more than
/// [`SHRINK_ABOVE`] bytes of capacity; returns whether it did.
#[inline]
pub fn shrink_if_idle(buf: &mut BytesMut) -> bool {
    if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
        *buf = BytesMut::new();
        return true;
    }
    false
}

/// Returns the allocator's free memory to the system (glibc keeps freed
/// pages of its heaps otherwise: 215 MB stayed after one 9 MB statement).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // lists; it takes the allocator's locks and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_idle_buffers_shrink() {
        let mut small = BytesMut::with_capacity(1024);
        assert!(!shrink_if_idle(&mut small));
        let mut big = BytesMut::with_capacity(1 << 20);
        big.extend_from_slice(b"x");
        assert!(!shrink_if_idle(&mut big), "not while it holds bytes");
        big.clear();
        assert!(shrink_if_idle(&mut big));
        assert_eq!(big.capacity(), 0);
        give_back();
    }
}
