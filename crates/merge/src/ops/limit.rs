//! `OFFSET` and `LIMIT` over the final rows (the LIMIT also stands for an
//! Execute's row limit when that is smaller).

/// What to do with the next final row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Skipped for OFFSET.
    Skip,
    /// Sent to the client.
    Send,
    /// The limit was reached: nothing more goes out.
    Full,
}

/// Counts rows against OFFSET and LIMIT.
#[derive(Debug, Default, Clone)]
pub struct LimitOffset {
    limit: Option<u64>,
    offset: u64,
    skipped: u64,
    sent: u64,
}

impl LimitOffset {
    /// Skips `offset` rows, then sends at most `limit`.
    pub fn new(limit: Option<u64>, offset: u64) -> LimitOffset {
        LimitOffset {
            limit,
            offset,
            skipped: 0,
            sent: 0,
        }
    }

    /// Decides the next row's fate and counts it.
    pub fn admit(&mut self) -> Admit {
        if self.full() {
            return Admit::Full;
        }
        if self.skipped < self.offset {
            self.skipped += 1;
            return Admit::Skip;
        }
        self.sent += 1;
        Admit::Send
    }

    /// No more rows go out.
    pub fn full(&self) -> bool {
        self.limit.is_some_and(|l| self.sent >= l)
    }

    /// Rows sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The rows an ordered source must keep to fill the result: `limit +
    /// offset` (`None`: all).
    pub fn needed(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_add(self.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_rows_are_skipped_then_limit_rows_sent() {
        let mut l = LimitOffset::new(Some(2), 1);
        let got: Vec<Admit> = (0..5).map(|_| l.admit()).collect();
        assert_eq!(
            got,
            vec![
                Admit::Skip,
                Admit::Send,
                Admit::Send,
                Admit::Full,
                Admit::Full
            ]
        );
        assert_eq!(l.sent(), 2);
        assert_eq!(l.needed(), Some(3));
    }

    #[test]
    fn no_limit_sends_everything_and_limit_zero_nothing() {
        let mut all = LimitOffset::new(None, 0);
        assert!((0..100).all(|_| all.admit() == Admit::Send));
        assert_eq!(all.needed(), None);
        let mut none = LimitOffset::new(Some(0), 0);
        assert!(none.full());
        assert_eq!(none.admit(), Admit::Full);
    }
}
