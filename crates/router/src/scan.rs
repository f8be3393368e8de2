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
}

const SHARDGATE: &[u8] = b"shardgate";

/// Scans `sql` once, case-insensitively.
pub fn quick_scan(sql: &str) -> QuickScan {
    let b = sql.as_bytes();
    let mut out = QuickScan::default();
    let first = b.iter().copied().find(|c| !c.is_ascii_whitespace());
    out.discard_or_deallocate = matches!(first, Some(b'd' | b'D' | b'/' | b'-' | b'('));
    // Both words start with 's': jump between the candidates.
    for i in memchr::memchr2_iter(b's', b'S', b) {
        let rest = &b[i..];
        if !out.set && rest.len() >= 3 && rest[1] | 0x20 == b'e' && rest[2] | 0x20 == b't' {
            out.set = true;
        }
        if !out.shardgate
            && rest.len() >= SHARDGATE.len()
            && rest[..SHARDGATE.len()].eq_ignore_ascii_case(SHARDGATE)
        {
            out.shardgate = true;
        }
        if out.set && out.shardgate {
            break;
        }
    }
    out
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
    }
}
