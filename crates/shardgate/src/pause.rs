//! `PAUSE` / `RESUME`: new transactions on a paused shard wait; running
//! ones finish.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Which shards are paused.
pub struct PauseGate {
    /// How many shards are paused: the hot path reads only this.
    paused_count: AtomicUsize,
    shards: Vec<AtomicBool>,
    resumed: Notify,
}

impl PauseGate {
    /// `shards` shards, none paused.
    pub fn new(shards: usize) -> PauseGate {
        PauseGate {
            paused_count: AtomicUsize::new(0),
            shards: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            resumed: Notify::new(),
        }
    }

    /// Whether any shard is paused (one relaxed load).
    #[inline]
    pub fn any(&self) -> bool {
        self.paused_count.load(Ordering::Relaxed) != 0
    }

    /// Whether `shard` is paused.
    pub fn is_paused(&self, shard: usize) -> bool {
        self.shards
            .get(shard)
            .is_some_and(|p| p.load(Ordering::Acquire))
    }

    /// Pauses `shard`; false if it was paused already.
    pub fn pause(&self, shard: usize) -> bool {
        let Some(p) = self.shards.get(shard) else {
            return false;
        };
        let was = p.swap(true, Ordering::AcqRel);
        if !was {
            self.paused_count.fetch_add(1, Ordering::AcqRel);
        }
        !was
    }

    /// Resumes `shard`; false if it was not paused.
    pub fn resume(&self, shard: usize) -> bool {
        let Some(p) = self.shards.get(shard) else {
            return false;
        };
        let was = p.swap(false, Ordering::AcqRel);
        if was {
            self.paused_count.fetch_sub(1, Ordering::AcqRel);
            self.resumed.notify_waiters();
        }
        was
    }

    /// Waits while `shard` is paused.
    pub async fn wait_open(&self, shard: usize) {
        loop {
            let resumed = self.resumed.notified();
            if !self.is_paused(shard) {
                return;
            }
            resumed.await;
        }
    }

    /// The paused shards.
    pub fn paused(&self) -> Vec<usize> {
        (0..self.shards.len())
            .filter(|&s| self.is_paused(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_pass_when_their_shard_resumes() {
        let gate = Arc::new(PauseGate::new(2));
        assert!(!gate.any());
        assert!(gate.pause(1) && !gate.pause(1));
        assert!(gate.any() && gate.is_paused(1) && !gate.is_paused(0));
        gate.wait_open(0).await;
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.wait_open(1).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert!(gate.resume(1) && !gate.resume(1));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("resumed")
            .unwrap();
        assert!(!gate.any() && gate.paused().is_empty());
        assert!(!gate.pause(7), "no such shard");
    }
}
