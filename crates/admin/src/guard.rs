//! Keeps user SQL read-only and bounded: an authorizer that allows only
//! reads while a user statement is prepared or run, and a progress handler
//! that interrupts it after a fixed number of VM steps. The engine's own
//! writes (loading tables) happen outside "user mode" and are not limited.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

/// VM steps a user statement may take before it is interrupted.
pub(crate) const MAX_STEPS: u64 = 10_000_000;

/// VM steps between two progress handler calls.
const STEPS_PER_TICK: u64 = 1_000;

/// Shared state of the hooks.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    user: AtomicBool,
    ticks: AtomicU64,
}

impl Guard {
    /// A guard with its hooks installed on `conn`.
    pub(crate) fn install(conn: &Connection) -> Arc<Guard> {
        let guard = Arc::new(Guard::default());
        let g = Arc::clone(&guard);
        conn.progress_handler(STEPS_PER_TICK as i32, Some(move || g.tick()));
        let g = Arc::clone(&guard);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| g.authorize(&ctx)));
        guard
    }

    /// Enters user mode with a fresh step budget until the returned value
    /// is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> UserMode {
        self.ticks.store(0, Ordering::Relaxed);
        self.user.store(true, Ordering::Relaxed);
        UserMode(Arc::clone(self))
    }

    /// Progress handler: `true` interrupts the running statement.
    fn tick(&self) -> bool {
        self.user.load(Ordering::Relaxed)
            && self.ticks.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_STEPS / STEPS_PER_TICK
    }

    /// Authorizer: in user mode only reads, function calls (but not
    /// `load_extension`) and recursive CTEs are allowed.
    fn authorize(&self, ctx: &AuthContext<'_>) -> Authorization {
        if !self.user.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        match ctx.action {
            AuthAction::Select | AuthAction::Read { .. } | AuthAction::Recursive => {
                Authorization::Allow
            }
            AuthAction::Function { function_name }
                if !function_name.eq_ignore_ascii_case("load_extension") =>
            {
                Authorization::Allow
            }
            _ => Authorization::Deny,
        }
    }
}

/// User mode; leaving it (drop) lifts the read-only rule and the budget.
#[derive(Debug)]
pub(crate) struct UserMode(Arc<Guard>);

impl Drop for UserMode {
    fn drop(&mut self) {
        self.0.user.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mode_denies_writes_and_limits_steps() {
        let conn = Connection::open_in_memory().unwrap();
        let guard = Guard::install(&conn);
        conn.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1)")
            .unwrap();
        {
            let _user = guard.enter();
            assert!(conn.prepare("SELECT a FROM t").is_ok());
            assert!(conn.prepare("DELETE FROM t").is_err());
            assert!(conn.prepare("ATTACH ':memory:' AS x").is_err());
            assert!(conn.prepare("PRAGMA writable_schema = 1").is_err());
            let runaway = conn.query_row(
                "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) \
                 SELECT count(*) FROM r",
                [],
                |r| r.get::<_, i64>(0),
            );
            assert!(runaway.is_err());
        }
        // Outside user mode the engine may write again, unlimited.
        conn.execute_batch("DELETE FROM t").unwrap();
        let n: i64 = conn
            .query_row(
                "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 2000000) \
                 SELECT count(*) FROM r",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2_000_000);
    }
}
