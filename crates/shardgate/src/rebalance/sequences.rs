//! Sequences of moved rows (docs/ARCHITECTURE.md §10): a target that takes
//! rows numbered by a source's sequence (a `serial` or identity column)
//! must not hand out those numbers again. At the cutover, with the moving
//! keys held, each target's sequence of a moving table is advanced past
//! the highest value any source's sequence gave, keeping its own series
//! (`start + n * increment`, so interleaved sequences stay interleaved).

use super::db::Conn;
use super::RebalanceError;
use shardgate_shardmap::TableName;

/// One sequence's state on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SeqState {
    /// The last value handed out (`None`: none yet).
    pub last: Option<i64>,
    /// Its first value.
    pub start: i64,
    /// Its step.
    pub increment: i64,
}

/// The sequences owned by columns of `table` on `conn` (as regclass text).
pub(super) async fn owned(conn: &Conn, table: &TableName) -> Result<Vec<String>, RebalanceError> {
    let rows = conn
        .client
        .query(
            "SELECT pg_get_serial_sequence($1, a.attname) FROM pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             AND pg_get_serial_sequence($1, a.attname) IS NOT NULL",
            &[&table.to_string()],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The state of sequence `seq` on `conn`.
pub(super) async fn state(conn: &Conn, seq: &str) -> Result<SeqState, RebalanceError> {
    let row = conn
        .client
        .query_one(
            "SELECT s.last_value, s.start_value, s.increment_by FROM pg_sequences s \
             JOIN pg_class c ON c.relname = s.sequencename \
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname \
             WHERE c.oid = $1::text::regclass",
            &[&seq],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(SeqState {
        last: row.get(0),
        start: row.get(1),
        increment: row.get(2),
    })
}

/// The value to `setval` a target's sequence to so that its next value
/// follows `highest` (the most any source gave) within its own series;
/// `None` when it is past it already (or counts down).
pub(super) fn advance_to(target: SeqState, highest: i64) -> Option<i64> {
    if target.increment <= 0 || target.last.is_some_and(|l| l >= highest) {
        return None;
    }
    let inc = target.increment;
    let steps = (highest - target.start).max(0).div_euclid(inc)
        + i64::from((highest - target.start).max(0).rem_euclid(inc) != 0);
    let value = target.start.checked_add(steps.checked_mul(inc)?)?;
    (target.last.is_none_or(|l| value > l)).then_some(value)
}

/// Sets `seq` on `conn` to `value` (the next value follows it).
async fn set(conn: &Conn, seq: &str, value: i64) -> Result<(), RebalanceError> {
    conn.client
        .execute("SELECT setval($1::text::regclass, $2)", &[&seq, &value])
        .await
        .map_err(|e| conn.err(e))?;
    Ok(())
}

/// Rows of one table that moved: from which shards to which.
pub(super) struct Moved<'a> {
    /// The table.
    pub table: &'a TableName,
    /// Shards that gave rows.
    pub sources: Vec<usize>,
    /// Shards that took rows.
    pub targets: Vec<usize>,
}

/// Advances the targets' sequences of each moved table past what its
/// sources' gave (`conns`: a connection per shard).
pub(super) async fn advance(
    conns: &std::collections::HashMap<usize, &Conn>,
    moved: &[Moved<'_>],
) -> Result<(), RebalanceError> {
    for m in moved {
        let (Some(first), false) = (m.sources.first(), m.targets.is_empty()) else {
            continue;
        };
        for seq in owned(conns[first], m.table).await? {
            let mut highest: Option<i64> = None;
            for s in &m.sources {
                highest = highest.max(state(conns[s], &seq).await?.last);
            }
            let Some(highest) = highest else {
                continue;
            };
            for t in &m.targets {
                let conn = conns[t];
                if let Some(value) = advance_to(state(conn, &seq).await?, highest) {
                    set(conn, &seq, value).await?;
                    tracing::info!(node = %conn.node, sequence = %seq, value, "sequence advanced past the values of the rows it took");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(last: Option<i64>, start: i64, increment: i64) -> SeqState {
        SeqState {
            last,
            start,
            increment,
        }
    }

    #[test]
    fn a_target_moves_past_what_its_sources_gave_within_its_series() {
        // A fresh sequence jumps to the highest value given elsewhere.
        assert_eq!(advance_to(seq(None, 1, 1), 500), Some(500));
        assert_eq!(advance_to(seq(Some(20), 1, 1), 500), Some(500));
        // Already past it: left alone.
        assert_eq!(advance_to(seq(Some(900), 1, 1), 500), None);
        assert_eq!(advance_to(seq(Some(500), 1, 1), 500), None);
        // Interleaved (start 2, step 3: 2, 5, 8, ...): the first of its own
        // values at or above 500.
        assert_eq!(advance_to(seq(Some(11), 2, 3), 500), Some(500));
        assert_eq!(advance_to(seq(Some(11), 3, 3), 500), Some(501));
        // Counting down: left alone.
        assert_eq!(advance_to(seq(Some(-5), -1, -1), 500), None);
        // Overflow: left alone rather than wrapped.
        assert_eq!(advance_to(seq(None, 10, i64::MAX), i64::MAX - 1), None);
    }
}
