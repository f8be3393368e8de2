//! Which proxy-named prepared statements exist on one server connection.

use std::collections::HashMap;

/// A bounded LRU set of statement ids prepared on one server connection.
///
/// When full, inserting evicts the least recently used id; the caller closes
/// the evicted statement on the server.
#[derive(Debug)]
pub struct PreparedSet {
    capacity: usize,
    tick: u64,
    last_use: HashMap<u64, u64>,
}

impl PreparedSet {
    /// An empty set holding at most `capacity` statements (at least 1).
    pub fn new(capacity: usize) -> Self {
        PreparedSet {
            capacity: capacity.max(1),
            tick: 0,
            last_use: HashMap::new(),
        }
    }

    /// Whether `id` is prepared; marks it as recently used.
    #[inline]
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.last_use.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared; returns the id evicted to make room, if any.
    pub fn insert(&mut self, id: u64) -> Option<u64> {
        self.tick += 1;
        let mut evicted = None;
        if !self.last_use.contains_key(&id) && self.last_use.len() >= self.capacity {
            if let Some((&old, _)) = self.last_use.iter().min_by_key(|(_, &t)| t) {
                self.last_use.remove(&old);
                evicted = Some(old);
            }
        }
        self.last_use.insert(id, self.tick);
        evicted
    }

    /// Forgets `id` (it failed to prepare, or was closed).
    pub fn remove(&mut self, id: u64) {
        self.last_use.remove(&id);
    }

    /// Forgets everything (after DISCARD ALL or DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.last_use.clear();
    }

    /// Number of statements prepared.
    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    /// Whether none are prepared.
    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut s = PreparedSet::new(2);
        assert_eq!(s.insert(1), None);
        assert_eq!(s.insert(2), None);
        assert!(s.touch(1));
        assert_eq!(s.insert(3), Some(2));
        assert!(s.touch(1) && s.touch(3) && !s.touch(2));
    }
}
