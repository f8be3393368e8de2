//! A cache hit allocates nothing: counted with a global allocator wrapper.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shardgate_router::{Analyzer, Classifier, Route};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Classification through the analyzer's cache, as a proxy without sharding asks.
struct Classified<'a>(&'a Analyzer);

impl Classified<'_> {
    fn classify(&self, sql: &str) -> shardgate_router::Classification {
        self.0.classify(sql, None)
    }
}

#[test]
fn cache_hits_do_not_allocate() {
    let analyzer = Analyzer::new(Classifier::new(&["audit".to_owned()]), 100);
    let c = Classified(&analyzer);
    let hinted = "/* shardgate: sharding_key='k1' */ SELECT * FROM t WHERE id = 5";
    // Fill the cache (and the thread's key buffer).
    assert_eq!(
        c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
            .route,
        Route::Read
    );
    assert_eq!(
        c.classify("UPDATE t SET a = 1; SELECT 2").route,
        Route::Write
    );
    assert_eq!(c.classify(hinted).route, Route::Read);
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
        "UPDATE t SET a = 99; SELECT 3",
        "/* shardgate: sharding_key='k1' */ SELECT * FROM t WHERE id = 77",
    ] {
        let before = allocations();
        let got = c.classify(sql);
        let after = allocations();
        assert_eq!(after - before, 0, "{sql}: {} allocations", after - before);
        drop(got);
    }
    // The counter works: a miss allocates.
    let before = allocations();
    drop(c.classify("SELECT something_new FROM t"));
    assert!(allocations() > before);
    assert_eq!(
        c.classify(hinted).hints().unwrap().sharding_key.as_deref(),
        Some("k1")
    );
}
