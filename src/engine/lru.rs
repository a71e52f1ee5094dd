//! A map with a fixed capacity that forgets its least recently written entry to make room. The
//! daemon's "seen lately" memories use it: a flood of fresh keys pushes old ones out, but the map
//! keeps recording, so duplicate suppression and rate limits keep working under any flood.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

#[derive(Clone, Debug)]
pub struct LruMap<K, V> {
    capacity: usize,
    /// Each key's value and the stamp of its last write.
    entries: HashMap<K, (u64, V)>,
    /// Stamps in write order: the first is the entry to evict.
    order: BTreeMap<u64, K>,
    next_stamp: u64,
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    /// A map of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> LruMap<K, V> {
        LruMap {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// Writes `value` under `key`, which becomes the most recent entry; evicts the least recent
    /// one if the map was full.
    pub fn insert(&mut self, key: K, value: V) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some((old, _)) = self.entries.insert(key.clone(), (stamp, value)) {
            self.order.remove(&old);
        }
        self.order.insert(stamp, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (stamp, v) = self.entries.remove(key)?;
        self.order.remove(&stamp);
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recording_under_a_flood_and_evicts_the_oldest() {
        let mut m = LruMap::new(3);
        for k in 0..1000u32 {
            m.insert(k, k * 10);
            assert!(m.len() <= 3);
            assert_eq!(
                m.get(&k),
                Some(&(k * 10)),
                "the newest entry is always kept"
            );
        }
        assert_eq!(m.get(&996), None);
        assert_eq!(m.get(&997), Some(&9970));
    }

    #[test]
    fn a_rewritten_key_becomes_the_most_recent() {
        let mut m = LruMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        m.insert("a", 3); // "b" is now the oldest
        m.insert("c", 4);
        assert_eq!(m.get(&"a"), Some(&3));
        assert_eq!(m.get(&"b"), None);
        assert_eq!(m.get(&"c"), Some(&4));
        assert_eq!(m.remove(&"a"), Some(3));
        assert_eq!(m.len(), 1);
        m.insert("d", 5);
        m.insert("e", 6);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&"c"), None);
    }
}
