//! A single cheap pass over a query string that tells the session which of
//! the more expensive checks can be skipped. It matches words anywhere (also
//! inside strings and comments), so it only ever errs towards "look closer".

/// What [`quick_scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuickScan {
    /// `shardgate` appears (hints, shardgate settings).
    pub shardgate: bool,
    /// `set` appears (SET/RESET change session state).
    pub set: bool,
    /// The text may start with DISCARD or DEALLOCATE (or a comment).
    pub discard_or_deallocate: bool,
    /// The text may leave server session state behind that the proxy does
    /// not replay (see [`crate::session_cmd::leaves_session_state`]): it may
    /// start with PREPARE, LISTEN, DECLARE, CREATE or DO (or a comment), or
    /// it mentions `set_config` or an advisory lock.
    pub session_effects: bool,
}

const SHARDGATE: &[u8] = b"shardgate";

/// Scans `sql` once, case-insensitively.
pub fn quick_scan(sql: &str) -> QuickScan {
    let b = sql.as_bytes();
    let mut out = QuickScan::default();
    let first = b.iter().copied().find(|c| !c.is_ascii_whitespace());
    out.discard_or_deallocate = matches!(first, Some(b'd' | b'D' | b'/' | b'-' | b'('));
    out.session_effects = matches!(first, Some(b'/' | b'-' | b'('))
        || first_word_is_one_of(
            b,
            &[
                b"prepare",
                b"listen",
                b"unlisten",
                b"declare",
                b"create",
                b"do",
                b"load",
            ],
        );
    // The words looked for all hold an 's': jump between the candidates.
    for i in memchr::memchr2_iter(b's', b'S', b) {
        let rest = &b[i..];
        if !out.set && rest.len() >= 3 && rest[1] | 0x20 == b'e' && rest[2] | 0x20 == b't' {
            out.set = true;
            if starts_with_ignore_case(rest, b"set_config") {
                out.session_effects = true;
            }
        }
        // "advisory": its 's' is the fifth letter.
        if !out.session_effects && i >= 4 && starts_with_ignore_case(&b[i - 4..], b"advisory") {
            out.session_effects = true;
        }
        if !out.shardgate
            && rest.len() >= SHARDGATE.len()
            && rest[..SHARDGATE.len()].eq_ignore_ascii_case(SHARDGATE)
        {
            out.shardgate = true;
        }
    }
    out
}

/// Whether the first word of `b` is one of `words` (lower case), ignoring case.
fn first_word_is_one_of(b: &[u8], words: &[&[u8]]) -> bool {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let rest = &b[start..];
    let len = rest
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    words.iter().any(|w| rest[..len].eq_ignore_ascii_case(w))
}

fn starts_with_ignore_case(b: &[u8], word: &[u8]) -> bool {
    b.len() >= word.len() && b[..word.len()].eq_ignore_ascii_case(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_words() {
        let s = quick_scan("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        assert_eq!(s, QuickScan::default());
        assert!(quick_scan("reset all").set);
        assert!(quick_scan("/* ShardGate: consistency=strong */ SELECT 1").shardgate);
        assert!(quick_scan("  DISCARD ALL").discard_or_deallocate);
        assert!(!quick_scan("SELECT 1").discard_or_deallocate);
        assert_eq!(quick_scan("se"), QuickScan::default());
        for sql in [
            "PREPARE p AS SELECT 1",
            "listen chan",
            "SELECT set_config('role', 'r', false)",
            "SELECT PG_ADVISORY_LOCK(1)",
            "CREATE TEMP TABLE t (x int)",
            "DO $$ BEGIN END $$",
            "UNLISTEN *",
            "/* c */ PREPARE p AS SELECT 1",
        ] {
            assert!(quick_scan(sql).session_effects, "{sql}");
        }
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "INSERT INTO t VALUES (1)",
            "SELECT 'is' || 'sory'",
            "COMMIT",
            "delete from t",
            "DROP TABLE t",
        ] {
            assert!(!quick_scan(sql).session_effects, "{sql}");
        }
    }
}
