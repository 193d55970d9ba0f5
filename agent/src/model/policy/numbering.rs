//! Stable numbers for keys (peer identities, policy slots): a key keeps
//! its number for as long as it is in use, and a released number is handed
//! out again as late as possible.
//!
//! Late reuse matters because the datapath is updated entry by entry, not
//! atomically: if a number released by one compile went straight to a new
//! key, an ipcache or policy entry not yet rewritten would briefly give the
//! new key the old key's rights (or its hit counter the old policy's
//! counts). So numbers come from a cursor that only moves forward and wraps
//! around at the end of the range.
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct Numbering<K> {
    by_key: BTreeMap<K, u32>,
    by_number: BTreeMap<u32, K>,
    /// The range the cursor cycles through: `first..wrap`.
    first: u32,
    wrap: u32,
    /// Where the search for a free number starts.
    next: u32,
}

impl<K: Ord + Clone> Numbering<K> {
    /// Numbers from `first`, cycling below `wrap`. If every number of the
    /// range is in use, numbers at or above `wrap` are handed out rather
    /// than failing (the caller decides what such a number still means).
    pub fn new(first: u32, wrap: u32) -> Self {
        Self { by_key: BTreeMap::new(), by_number: BTreeMap::new(), first, wrap: wrap.max(first), next: first }
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn key(&self, number: u32) -> Option<&K> {
        self.by_number.get(&number)
    }

    /// Every key in use, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.by_key.keys()
    }

    /// Every number in use with its key, by number.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &K)> {
        self.by_number.iter().map(|(n, k)| (*n, k))
    }

    /// The key's number, assigning a free one to a new key.
    pub fn assign(&mut self, key: &K) -> u32 {
        if let Some(n) = self.get(key) {
            return n;
        }
        let n = self.free_number();
        self.by_key.insert(key.clone(), n);
        self.by_number.insert(n, key.clone());
        self.next = n.saturating_add(1);
        n
    }

    /// Releases every number not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<u32>) {
        self.by_number.retain(|n, _| keep.contains(n));
        self.by_key.retain(|_, n| keep.contains(n));
    }

    /// Releases one number (and its key).
    pub fn release(&mut self, number: u32) {
        if let Some(key) = self.by_number.remove(&number) {
            self.by_key.remove(&key);
        }
    }

    fn free_number(&self) -> u32 {
        let free_in = |from: u32, to: u32| (from..to).find(|n| !self.by_number.contains_key(n));
        free_in(self.next.max(self.first), self.wrap)
            .or_else(|| free_in(self.first, self.next.min(self.wrap)))
            .or_else(|| free_in(self.wrap, u32::MAX))
            .expect("fewer than 2^32 keys in use")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_reused_late() {
        let mut n = Numbering::<&str>::new(10, 13);
        assert_eq!([n.assign(&"a"), n.assign(&"b"), n.assign(&"a")], [10, 11, 10]);
        n.retain(&BTreeSet::from([11]));
        assert_eq!(n.get(&"a"), None);
        assert_eq!(n.key(11), Some(&"b"));
        // 10 was released, but the cursor goes on first, then wraps.
        assert_eq!(n.assign(&"c"), 12);
        assert_eq!(n.assign(&"d"), 10);
        // The range is full: beyond it rather than failing.
        assert_eq!(n.assign(&"e"), 13);
        assert_eq!(n.by_key.len(), 4);
    }
}
