//! A bounded, thread-safe map from statement text to a decision, shared by
//! the classifier, the shard planner and the merge planner.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Average key size the byte budget allows per entry.
const BYTES_PER_ENTRY: usize = 1024;

/// A bounded map in two generations: lookups check the current generation,
/// then the previous one (moving a hit back into the current); when the
/// current generation is full (entries or key bytes) it becomes the previous
/// one and the old previous one is dropped. Recently used entries survive,
/// the total stays within the capacity, and every operation is O(1).
/// Entries may be tagged with a version (e.g. of the shard map): a lookup
/// with another version empties the cache first.
#[derive(Debug)]
pub struct GenerationalCache<V> {
    capacity: usize,
    generation_limit: usize,
    /// Bytes of keys per generation before it is rotated (bounds memory even
    /// when statements are long).
    generation_bytes: usize,
    inner: Mutex<Generations<V>>,
}

#[derive(Debug)]
struct Generations<V> {
    version: Option<u64>,
    current: HashMap<Box<str>, V>,
    current_bytes: usize,
    previous: HashMap<Box<str>, V>,
}

impl<V: Clone> GenerationalCache<V> {
    /// A cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let generation_limit = (capacity / 2).max(1);
        GenerationalCache {
            capacity,
            generation_limit,
            generation_bytes: generation_limit.saturating_mul(BYTES_PER_ENTRY),
            inner: Mutex::new(Generations {
                version: None,
                current: HashMap::new(),
                current_bytes: 0,
                previous: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Generations<V>> {
        // Nothing panics while the lock is held, but never propagate poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.current.clear();
        g.previous.clear();
        g.current_bytes = 0;
    }

    /// The entry for `key` cached under `version`.
    pub fn get(&self, key: &str, version: u64) -> Option<V> {
        let mut g = self.lock();
        g.check_version(version);
        if let Some(v) = g.current.get(key) {
            return Some(v.clone());
        }
        let (k, v) = g.previous.remove_entry(key)?;
        self.put(&mut g, k, v.clone());
        Some(v)
    }

    /// Caches `value` for `key` under `version`.
    pub fn insert(&self, key: &str, value: V, version: u64) {
        let mut g = self.lock();
        g.check_version(version);
        if !g.current.contains_key(key) {
            self.put(&mut g, key.into(), value);
        }
    }

    fn put(&self, g: &mut Generations<V>, key: Box<str>, value: V) {
        if g.current.len() >= self.generation_limit || g.current_bytes >= self.generation_bytes {
            g.previous = std::mem::take(&mut g.current);
            g.current_bytes = 0;
            if g.previous.len() >= self.capacity {
                g.previous.clear();
            }
        }
        g.current_bytes += key.len();
        g.current.insert(key, value);
    }
}

impl<V> Generations<V> {
    fn check_version(&mut self, version: u64) {
        if self.version != Some(version) {
            self.current.clear();
            self.previous.clear();
            self.current_bytes = 0;
            self.version = Some(version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GenerationalCache;

    #[test]
    fn keeps_recent_entries_within_capacity() {
        let c = GenerationalCache::new(4);
        for i in 0..100 {
            c.insert(&format!("k{i}"), i, 0);
            assert!(c.len() <= 4);
        }
        assert_eq!(c.get("k99", 0), Some(99));
        assert_eq!(c.get("k0", 0), None);
    }

    #[test]
    fn a_new_version_empties_the_cache() {
        let c = GenerationalCache::new(8);
        c.insert("a", 1, 1);
        assert_eq!(c.get("a", 1), Some(1));
        assert_eq!(c.get("a", 2), None);
        assert!(c.is_empty());
    }
}
