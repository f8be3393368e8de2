//! Giving memory back after a large statement.
//!
//! A client that sent one large statement (a 9 MB `IN` list, a bulk INSERT)
//! or received one large answer leaves grown buffers and freed heap pages
//! behind: an idle client should cost a few kilobytes, not what its largest
//! statement needed.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::relay::Expect;

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

/// A session's three buffers (client input, client output, server output)
/// and the expectation queue it lends with a server connection, while it
/// waits for an idle client: given to a per-thread cache, so an idle client
/// holds none of them and an active one gets them back without allocating.
pub struct Buffers<'a> {
    /// Client input.
    pub input: &'a mut BytesMut,
    /// Output to the client.
    pub output: &'a mut BytesMut,
    /// Output to the server.
    pub server: &'a mut BytesMut,
    /// The expectation queue kept for the next server connection.
    pub queue: &'a mut VecDeque<Expect>,
}

/// Capacities of a session's buffers when they are allocated: what one
/// read from the client takes, one ordinary answer, one ordinary statement.
pub const INPUT_CAPACITY: usize = 16 * 1024;
/// See [`INPUT_CAPACITY`].
pub const OUTPUT_CAPACITY: usize = 4096;
/// See [`INPUT_CAPACITY`].
pub const SERVER_CAPACITY: usize = 1024;
/// Expectations the queue holds when it is allocated: a few pipelined
/// messages.
pub const QUEUE_CAPACITY: usize = 8;

/// Buffer sets each worker thread keeps for sessions that become active:
/// about as many as its clients active at once; beyond that they are freed.
const SPARE_SETS: usize = 64;

type Set = (BytesMut, BytesMut, BytesMut, VecDeque<Expect>);

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Set>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buffers<'_> {
    /// Gives the (empty) buffers and queue to this thread's cache, or frees
    /// them, leaving empty ones without capacity. Buffers that grew past
    /// [`SHRINK_ABOVE`] bytes (a queue too) are freed.
    #[inline]
    pub fn park(self) {
        debug_assert!(
            self.input.is_empty()
                && self.output.is_empty()
                && self.server.is_empty()
                && self.queue.is_empty()
        );
        let set = (
            std::mem::take(self.input),
            std::mem::take(self.output),
            std::mem::take(self.server),
            std::mem::take(self.queue),
        );
        let queue_bytes = set.3.capacity() * std::mem::size_of::<Expect>();
        if set.0.capacity() < INPUT_CAPACITY
            || set.0.capacity() > SHRINK_ABOVE
            || set.1.capacity() < OUTPUT_CAPACITY
            || set.1.capacity() > SHRINK_ABOVE
            || set.2.capacity() < SERVER_CAPACITY
            || set.2.capacity() > SHRINK_ABOVE
            || set.3.capacity() < QUEUE_CAPACITY
            || queue_bytes > SHRINK_ABOVE
        {
            return;
        }
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_SETS {
                spare.push(set);
            }
        });
    }

    /// Gives buffers and a queue without capacity a set from this thread's
    /// cache, or new ones.
    #[inline]
    pub fn unpark(self) {
        if self.input.capacity() != 0
            || self.output.capacity() != 0
            || self.server.capacity() != 0
            || self.queue.capacity() != 0
        {
            return;
        }
        let (input, output, server, queue) = SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| {
            (
                BytesMut::with_capacity(INPUT_CAPACITY),
                BytesMut::with_capacity(OUTPUT_CAPACITY),
                BytesMut::with_capacity(SERVER_CAPACITY),
                VecDeque::with_capacity(QUEUE_CAPACITY),
            )
        });
        *self.input = input;
        *self.output = output;
        *self.server = server;
        *self.queue = queue;
    }
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

    /// The parts of one session's set, to lend to [`Buffers`].
    #[derive(Default)]
    struct Parts {
        input: BytesMut,
        output: BytesMut,
        server: BytesMut,
        queue: VecDeque<Expect>,
    }

    impl Parts {
        fn set(&mut self) -> Buffers<'_> {
            Buffers {
                input: &mut self.input,
                output: &mut self.output,
                server: &mut self.server,
                queue: &mut self.queue,
            }
        }

        fn capacities(&self) -> (usize, usize, usize, usize) {
            (
                self.input.capacity(),
                self.output.capacity(),
                self.server.capacity(),
                self.queue.capacity(),
            )
        }
    }

    #[test]
    fn parked_buffers_come_back_without_allocating() {
        let mut p = Parts::default();
        p.set().unpark();
        assert_eq!(p.input.capacity(), INPUT_CAPACITY);
        assert!(p.queue.capacity() >= QUEUE_CAPACITY);
        let at = p.input.as_ptr();
        p.set().park();
        assert_eq!(p.capacities(), (0, 0, 0, 0));
        p.set().unpark();
        assert_eq!(p.input.as_ptr(), at, "the parked set is reused");
        // A grown buffer is not kept.
        p.input.reserve(SHRINK_ABOVE * 2);
        p.set().park();
        p.set().unpark();
        assert_eq!(p.input.capacity(), INPUT_CAPACITY);
    }

    #[test]
    fn parked_queue_comes_back_without_allocating() {
        let mut p = Parts::default();
        p.set().unpark();
        let at = p.queue.as_slices().0.as_ptr();
        p.set().park();
        assert_eq!(p.queue.capacity(), 0, "an idle session holds no queue");
        p.set().unpark();
        assert_eq!(
            p.queue.as_slices().0.as_ptr(),
            at,
            "the parked queue is reused"
        );
        // A queue that grew past SHRINK_ABOVE bytes is not kept.
        p.queue.reserve(SHRINK_ABOVE);
        p.set().park();
        p.set().unpark();
        assert!(p.queue.capacity() < SHRINK_ABOVE);
    }
}
