//! The write hold of a rebalancing move (docs/ARCHITECTURE.md §10): while
//! rows move, statements that would write them wait; during the cutover,
//! every statement touching them waits. Sessions consult the gate of their
//! snapshot; the job drives its phase.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use shardgate_shardmap::Transition;
use tokio::sync::Notify;

/// Where a move stands, as sessions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GatePhase {
    /// Rows are being copied: writes to moving keys wait, reads go on (to
    /// the source shard).
    Copying = 0,
    /// The new map is being switched in: every statement touching moving
    /// keys waits.
    CuttingOver = 1,
    /// The new map is in force and the sources still delete the rows they
    /// gave: statements naming their keys go to the new owners; statements
    /// over moving tables that cannot name their keys (which would read the
    /// sources' copies) wait.
    Cleaning = 2,
    /// The move is over (switched or abandoned): waiting statements go on
    /// with the runtime's current snapshot.
    Open = 3,
}

/// What a statement touches, as far as a move is concerned (ordered: a
/// statement touching several kinds counts as the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touch {
    /// Only rows that stay where they are.
    Stays,
    /// Rows that move, named by their keys (or a reference-table write
    /// while reference tables are copied to a new shard).
    Moving,
    /// Rows the statement cannot name on a moving table: no usable key, a
    /// range predicate, DDL.
    Unnamed,
}

/// One move's hold, shared by the snapshot that announces it and the job.
pub struct MoveGate {
    /// The maps before and after.
    pub transition: Transition,
    /// Whether reference tables are being copied to a new shard (their
    /// writes wait for the whole move).
    pub holds_reference_writes: bool,
    /// Mode `block_writes`: writes to moving keys wait during the copy too
    /// (mode `logical` catches them up instead).
    pub holds_writes_while_copying: bool,
    phase: AtomicU8,
    opened: Notify,
    /// Statements waiting at the gate now.
    waiting: AtomicU64,
}

/// Counts a statement as waiting while it lives.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MoveGate {
    /// A gate in phase [`GatePhase::Copying`].
    pub fn new(
        transition: Transition,
        holds_reference_writes: bool,
        holds_writes_while_copying: bool,
    ) -> MoveGate {
        MoveGate {
            transition,
            holds_reference_writes,
            holds_writes_while_copying,
            phase: AtomicU8::new(GatePhase::Copying as u8),
            opened: Notify::new(),
            waiting: AtomicU64::new(0),
        }
    }

    /// The gate of the same move in phase [`GatePhase::Cleaning`], for the
    /// snapshot of the new map.
    pub fn cleaning(&self) -> MoveGate {
        MoveGate {
            transition: self.transition.clone(),
            holds_reference_writes: false,
            holds_writes_while_copying: false,
            phase: AtomicU8::new(GatePhase::Cleaning as u8),
            opened: Notify::new(),
            waiting: AtomicU64::new(0),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> GatePhase {
        match self.phase.load(Ordering::SeqCst) {
            0 => GatePhase::Copying,
            1 => GatePhase::CuttingOver,
            2 => GatePhase::Cleaning,
            _ => GatePhase::Open,
        }
    }

    /// Whether a statement that writes (`write`) and touches `touch` must wait.
    pub fn must_wait(&self, write: bool, touch: Touch) -> bool {
        touch != Touch::Stays
            && match self.phase() {
                GatePhase::Copying => write && self.holds_writes_while_copying,
                GatePhase::CuttingOver => true,
                GatePhase::Cleaning => touch == Touch::Unnamed,
                GatePhase::Open => false,
            }
    }

    /// Whether a transaction that already touched moving keys goes on
    /// without waiting: in mode logical while rows are copied or cut over
    /// (the cutover waits for it, so that its changes reach the last
    /// catch-up, and it may hold row locks the cutover needs).
    pub fn exempts_touching(&self) -> bool {
        !self.holds_writes_while_copying && self.phase() != GatePhase::Cleaning
    }

    /// Enters the cutover: from now on reads of moving keys wait too.
    pub fn cut_over(&self) {
        self.phase
            .store(GatePhase::CuttingOver as u8, Ordering::SeqCst);
    }

    /// Leaves a cutover that could not finish in time: reads of moving
    /// keys go on (to the source) and so do writes in mode logical; waiting
    /// statements look at the gate again.
    pub fn resume_copying(&self) {
        self.phase.store(GatePhase::Copying as u8, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    /// Ends the hold: every waiting statement goes on.
    pub fn open(&self) {
        self.phase.store(GatePhase::Open as u8, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    /// Statements waiting at the gate now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits until the gate leaves its current phase (it opens, or a
    /// cutover gives up); the caller asks [`MoveGate::must_wait`] again.
    pub async fn wait_change(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _counted = Waiting(&self.waiting);
        let at = self.phase();
        loop {
            let notified = self.opened.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.phase() != at {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shardgate_shardmap::{ShardMap, ShardMapConfig};

    use super::*;

    fn gate() -> Arc<MoveGate> {
        let map = |w: Vec<u32>| {
            Arc::new(
                ShardMap::new(
                    ShardMapConfig {
                        weights: w,
                        vnodes: 4,
                        default_shard: 0,
                        tables: vec![],
                        reference_tables: vec![],
                        arcs: Vec::new(),
                    },
                    1,
                )
                .expect("valid"),
            )
        };
        Arc::new(MoveGate::new(
            Transition::new(map(vec![1]), map(vec![1, 1])).expect("transition"),
            true,
            true,
        ))
    }

    #[test]
    fn writes_wait_while_copying_and_everything_during_cutover() {
        let g = gate();
        assert!(g.must_wait(true, Touch::Moving));
        assert!(!g.must_wait(false, Touch::Moving));
        assert!(!g.must_wait(true, Touch::Stays));
        g.cut_over();
        assert!(g.must_wait(false, Touch::Moving));
        assert!(!g.must_wait(false, Touch::Stays));
        let c = g.cleaning();
        assert!(!c.must_wait(true, Touch::Moving));
        assert!(c.must_wait(false, Touch::Unnamed));
        assert!(!c.exempts_touching());
        g.open();
        assert!(!g.must_wait(true, Touch::Moving));
    }

    #[tokio::test]
    async fn waiters_go_on_when_the_gate_opens() {
        let g = gate();
        let w = tokio::spawn({
            let g = g.clone();
            async move { g.wait_change().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!w.is_finished());
        g.open();
        tokio::time::timeout(std::time::Duration::from_secs(10), w)
            .await
            .expect("woken")
            .expect("task");
    }

    #[tokio::test]
    async fn a_cutover_that_gives_up_lets_held_reads_go_on() {
        let g = gate();
        g.cut_over();
        assert!(g.must_wait(false, Touch::Moving));
        let w = tokio::spawn({
            let g = g.clone();
            async move { g.wait_change().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!w.is_finished());
        g.resume_copying();
        tokio::time::timeout(std::time::Duration::from_secs(10), w)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(g.phase(), GatePhase::Copying);
        assert!(!g.must_wait(false, Touch::Moving));
    }
}
