//! Session state a client sets (startup parameters and `SET`), tracked so it
//! can be replayed on whichever server connection serves the client next.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use shardgate_router::lexer::{first_keyword, split_statements};
use shardgate_router::SessionCommand;

/// Fingerprint of a server connection that has only server defaults.
pub const FRESH: u64 = 0;
/// Fingerprint of a server connection whose state is unknown.
pub const DIRTY: u64 = u64::MAX;

/// Quotes a string as an SQL literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes a parameter name unless it is a plain (possibly dotted) identifier.
fn quote_name(name: &str) -> String {
    let plain = name
        .split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Effects of statements on session state, pending until their transaction ends.
pub type Changes = Vec<SessionCommand>;

/// What the client wants the server session to look like.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// Parameters from the startup packet: the values `RESET` returns to.
    baseline: BTreeMap<String, String>,
    /// Current parameters: name → statement that applies it.
    params: BTreeMap<String, String>,
    fingerprint: u64,
    /// Changes of the current transaction, applied when it commits.
    tx_changes: Changes,
    /// Changes of the current query cycle (up to the next ReadyForQuery).
    cycle_changes: Changes,
    cycle_error: bool,
    cycle_rolled_back: bool,
    /// A statement changed state in a way that is not tracked.
    untracked: bool,
}

impl SessionState {
    /// State from the startup parameters (`options` already expanded).
    pub fn from_startup(params: &[(String, String)]) -> SessionState {
        let mut s = SessionState::default();
        for (name, value) in params {
            let name = name.to_ascii_lowercase();
            let stmt = format!("SET {} TO {}", quote_name(&name), quote_literal(value));
            s.baseline.insert(name, stmt);
        }
        s.params = s.baseline.clone();
        s.refresh_fingerprint();
        s
    }

    /// Fingerprint of the wanted state; equal fingerprints need no replay.
    #[inline]
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn refresh_fingerprint(&mut self) {
        if self.params.is_empty() {
            self.fingerprint = FRESH;
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.params.hash(&mut h);
        self.fingerprint = match h.finish() {
            FRESH | DIRTY => 1,
            f => f,
        };
    }

    /// SQL that turns a server session with fingerprint `from` into this
    /// state: `DISCARD ALL` for a session in an unknown state, which must be
    /// sent as a query of its own (it cannot run in the implicit transaction
    /// of a multi-statement query), then the rest.
    ///
    /// A session in an unknown state (`DIRTY`: another client ran something
    /// the proxy cannot replay, such as SQL `PREPARE`, `LISTEN` or
    /// `set_config`) is cleaned with `DISCARD ALL`, which also drops the
    /// proxy's own prepared statements there (the caller forgets them). A
    /// session in another client's known state gets `RESET SESSION
    /// AUTHORIZATION` first: `RESET ALL` leaves `SET ROLE` and `SET SESSION
    /// AUTHORIZATION` in place.
    pub fn replay(&self, from: u64) -> (Option<&'static str>, String) {
        let discard = (from == DIRTY).then_some("DISCARD ALL");
        let mut sql = String::new();
        if from != FRESH && from != DIRTY {
            sql.push_str("RESET SESSION AUTHORIZATION;RESET ALL;");
        }
        // SET SESSION AUTHORIZATION resets the role: it goes first.
        let (auth, rest): (Vec<_>, Vec<_>) = self
            .params
            .iter()
            .partition(|(name, _)| *name == "session_authorization");
        for (_, stmt) in auth.into_iter().chain(rest) {
            sql.push_str(stmt);
            sql.push(';');
        }
        (discard, sql)
    }

    /// A statement left server session state the proxy cannot replay or
    /// clean up selectively (see `leaves_session_state`): the connection is
    /// cleaned before anyone else uses it.
    pub fn note_untracked(&mut self) {
        self.untracked = true;
    }

    /// The statements that put back the client's startup values of the
    /// parameters `RESET` statements in `sql` return to the server's
    /// defaults (Postgres resets to the value the session started with;
    /// on a pooled connection that value came from a `SET`). `None` when
    /// `sql` resets no startup parameter.
    pub fn restore_after_reset(&self, sql: &str) -> Option<String> {
        if self.baseline.is_empty() {
            return None;
        }
        let mut restore = String::new();
        for stmt in split_statements(sql) {
            if is_set_or_reset(stmt) {
                if let Some(cmd) = SessionCommand::parse(stmt) {
                    self.restore_for(&cmd, &mut restore);
                }
            }
        }
        (!restore.is_empty()).then_some(restore)
    }

    /// Appends to `restore` the startup-value statements that `cmd` (a
    /// `RESET`, `RESET ALL` or `SET ... TO DEFAULT`) makes necessary.
    fn restore_for(&self, cmd: &SessionCommand, restore: &mut String) {
        let mut add = |name: &str| {
            if let Some(stmt) = self.baseline.get(name) {
                if !restore.contains(stmt.as_str()) {
                    restore.push_str(stmt);
                    restore.push(';');
                }
            }
        };
        match cmd {
            SessionCommand::Reset { name } => add(name),
            SessionCommand::Set { name, value, .. } if value.is_default() => add(name),
            SessionCommand::ResetAll => self.baseline.keys().for_each(|n| add(n)),
            _ => {}
        }
    }

    /// Scans a simple query for statements that change session state and
    /// records them as pending in the current cycle. The session calls it only
    /// for query strings in which `quick_scan` found the word `set`.
    pub fn note_query(&mut self, sql: &str) {
        if let Some(single) = single_statement(sql) {
            // One statement, with or without its semicolon (the hot path:
            // pgbench's `UPDATE ... SET ...;`): no splitting.
            self.note_statement(single);
            return;
        }
        for stmt in split_statements(sql) {
            self.note_statement(stmt);
        }
    }

    /// Whether [`SessionState::note_query`] could record anything for
    /// `sql`: false for one statement that is not SET or RESET (an `UPDATE
    /// ... SET`, say); true when in doubt.
    pub fn may_change_state(sql: &str) -> bool {
        single_statement(sql).is_none_or(is_set_or_reset)
    }

    /// Records one statement (from Query or an executed Parse) as pending.
    pub fn note_statement(&mut self, stmt: &str) {
        // Only SET and RESET change session state; anything else costs one token.
        if !is_set_or_reset(stmt) {
            return;
        }
        match SessionCommand::parse(stmt) {
            Some(
                cmd @ (SessionCommand::Set { .. }
                | SessionCommand::Reset { .. }
                | SessionCommand::ResetAll),
            ) => self.cycle_changes.push(cmd),
            // SET LOCAL ends with the transaction.
            Some(_) => {}
            None => {
                // SET TRANSACTION and SET CONSTRAINTS end with the transaction
                // too; any other SET is state shardgate cannot replay.
                let lower = stmt.to_ascii_lowercase();
                if !lower.contains("transaction") && !lower.contains("constraints") {
                    self.untracked = true;
                }
            }
        }
    }

    /// An ErrorResponse arrived in the current cycle.
    pub fn note_error(&mut self) {
        self.cycle_error = true;
    }

    /// A CommandComplete arrived; `ROLLBACK` means the transaction was undone.
    pub fn note_command_tag(&mut self, tag: &[u8]) {
        if tag.starts_with(b"ROLLBACK") {
            self.cycle_rolled_back = true;
        } else if tag.starts_with(b"COMMIT") {
            self.cycle_rolled_back = false;
        }
    }

    /// ReadyForQuery ended a cycle with transaction status `status`.
    ///
    /// Returns whether the tracked state changed (the server connection then
    /// has exactly this state) and whether its state is now unknown.
    pub fn end_cycle(&mut self, status: u8) -> CycleOutcome {
        let cycle = std::mem::take(&mut self.cycle_changes);
        if !self.cycle_error {
            self.tx_changes.extend(cycle);
        }
        self.cycle_error = false;
        let mut outcome = CycleOutcome::default();
        if status == b'I' {
            let changes = std::mem::take(&mut self.tx_changes);
            if !self.cycle_rolled_back && !changes.is_empty() {
                let mut restore = String::new();
                for c in changes {
                    if matches!(c, SessionCommand::ResetAll) {
                        outcome.server_reset = true;
                    }
                    self.restore_for(&c, &mut restore);
                    self.apply(c);
                }
                outcome.restore = (!restore.is_empty()).then_some(restore);
                self.refresh_fingerprint();
                outcome.changed = true;
            }
            self.cycle_rolled_back = false;
            outcome.untracked = std::mem::take(&mut self.untracked);
        }
        outcome
    }

    fn apply(&mut self, cmd: SessionCommand) {
        match cmd {
            SessionCommand::Set {
                name,
                value,
                statement,
            } => {
                if value.is_default() {
                    self.reset(&name);
                } else {
                    self.params.insert(name, statement);
                }
            }
            SessionCommand::Reset { name } => self.reset(&name),
            SessionCommand::ResetAll => self.params = self.baseline.clone(),
            _ => {}
        }
    }

    fn reset(&mut self, name: &str) {
        match self.baseline.get(name) {
            Some(stmt) => {
                self.params.insert(name.to_owned(), stmt.clone());
            }
            None => {
                self.params.remove(name);
            }
        }
    }

    /// Back to the startup state (`DISCARD ALL`).
    pub fn discard_all(&mut self) {
        self.params = self.baseline.clone();
        self.tx_changes.clear();
        self.cycle_changes.clear();
        self.refresh_fingerprint();
    }
}

/// What ending a query cycle did to the tracked state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleOutcome {
    /// The tracked state changed.
    pub changed: bool,
    /// A statement changed state in a way shardgate cannot replay.
    pub untracked: bool,
    /// `RESET ALL` ran on the server: it dropped the replayed startup values.
    pub server_reset: bool,
    /// Statements that give back the startup values the cycle's `RESET`s
    /// took from the server session (run hidden before the next cycle).
    pub restore: Option<String>,
}

/// `sql` without a trailing semicolon when it holds one statement only (no
/// other `;`, so no splitting is needed).
fn single_statement(sql: &str) -> Option<&str> {
    let trimmed = sql.trim_end();
    let single = trimmed.strip_suffix(';').unwrap_or(trimmed);
    (!single.contains(';')).then_some(single)
}

/// Whether a statement starts with SET or RESET (the only ones that change
/// session state).
fn is_set_or_reset(stmt: &str) -> bool {
    first_keyword(stmt)
        .is_some_and(|k| k.eq_ignore_ascii_case("set") || k.eq_ignore_ascii_case("reset"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> SessionState {
        SessionState::from_startup(&[("application_name".into(), "psql".into())])
    }

    #[test]
    fn autocommit_set_applies_and_changes_fingerprint() {
        let mut s = startup();
        let before = s.fingerprint();
        s.note_query("SET search_path TO a, b");
        assert!(s.end_cycle(b'I').changed);
        assert_ne!(s.fingerprint(), before);
        let (discard, sql) = s.replay(7);
        assert_eq!(discard, None);
        assert!(sql.contains("SET search_path TO a, b;"));
        assert!(sql.starts_with("RESET SESSION AUTHORIZATION;RESET ALL;"));
        let (discard, sql) = s.replay(DIRTY);
        assert_eq!(discard, Some("DISCARD ALL"));
        assert!(sql.starts_with("SET "), "{sql}");
        assert!(!s.replay(FRESH).1.contains("RESET ALL"));
    }

    #[test]
    fn only_set_and_reset_may_change_state() {
        for sql in [
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7;",
            "  select 1 -- set",
        ] {
            assert!(!SessionState::may_change_state(sql), "{sql}");
        }
        for sql in [
            "SET search_path TO a",
            "reset all;",
            "UPDATE t SET a = 1; SET x = 1",
            "/* c */ SET x = 1",
        ] {
            assert!(SessionState::may_change_state(sql), "{sql}");
        }
    }

    #[test]
    fn rolled_back_or_failed_sets_do_not_apply() {
        let mut s = startup();
        let f = s.fingerprint();
        s.note_query("BEGIN; SET search_path TO x");
        s.end_cycle(b'T');
        s.note_command_tag(b"ROLLBACK");
        s.end_cycle(b'I');
        assert_eq!(s.fingerprint(), f);
        s.note_query("SET search_path TO y; SELECT 1/0");
        s.note_error();
        s.end_cycle(b'I');
        assert_eq!(s.fingerprint(), f);
    }

    #[test]
    fn committed_transaction_applies_and_reset_returns_to_baseline() {
        let mut s = startup();
        let f = s.fingerprint();
        s.note_query("BEGIN");
        s.end_cycle(b'T');
        s.note_query("SET application_name = 'x'");
        s.end_cycle(b'T');
        s.note_command_tag(b"COMMIT");
        s.end_cycle(b'I');
        assert_ne!(s.fingerprint(), f);
        s.note_query("RESET application_name");
        s.end_cycle(b'I');
        assert_eq!(s.fingerprint(), f);
    }

    #[test]
    fn statements_ending_in_a_semicolon_are_tracked_alike() {
        let mut s = startup();
        s.note_query("SET search_path TO a;  \n");
        s.note_query("UPDATE t SET x = 1 WHERE id = 2;");
        s.note_query("SET application_name = 'a;b';");
        assert!(s.end_cycle(b'I').changed);
        let replay = s.replay(7).1;
        assert!(replay.contains("SET search_path TO a;"), "{replay}");
        assert!(replay.contains("SET application_name = 'a;b';"), "{replay}");
        assert!(!replay.contains("UPDATE"), "{replay}");
    }

    #[test]
    fn session_authorization_is_replayed_before_the_role() {
        let mut s = startup();
        s.note_query("SET SESSION AUTHORIZATION bob");
        s.note_query("SET ROLE carol");
        s.end_cycle(b'I');
        let replay = s.replay(7).1;
        let auth = replay.find("SESSION AUTHORIZATION bob").unwrap();
        let role = replay.find("ROLE carol").unwrap();
        assert!(auth < role, "{replay}");
    }

    #[test]
    fn resets_of_startup_parameters_restore_the_startup_value() {
        let s = SessionState::from_startup(&[
            ("DateStyle".into(), "ISO, DMY".into()),
            ("application_name".into(), "app".into()),
        ]);
        assert_eq!(
            s.restore_after_reset("RESET datestyle").as_deref(),
            Some("SET datestyle TO 'ISO, DMY';")
        );
        assert_eq!(
            s.restore_after_reset("SET application_name TO DEFAULT")
                .as_deref(),
            Some("SET application_name TO 'app';")
        );
        let all = s.restore_after_reset("RESET ALL").unwrap();
        assert!(
            all.contains("datestyle") && all.contains("application_name"),
            "{all}"
        );
        assert_eq!(s.restore_after_reset("RESET search_path"), None);
        assert_eq!(s.restore_after_reset("SET datestyle TO 'ISO'"), None);
        assert_eq!(
            SessionState::from_startup(&[]).restore_after_reset("RESET ALL"),
            None
        );
    }

    #[test]
    fn empty_state_is_fresh() {
        let s = SessionState::from_startup(&[]);
        assert_eq!(s.fingerprint(), FRESH);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
