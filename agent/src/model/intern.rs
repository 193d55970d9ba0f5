//! Values many objects hold alike, kept once. A workload's pods carry the
//! same labels and container ports: at 150,000 pods a copy per pod was most
//! of the agent's memory (about 0.9 KB each for four labels and two ports),
//! against some 10,000 distinct sets.
use std::{
    collections::HashSet,
    hash::Hash,
    sync::{Arc, Mutex},
};

/// A set of shared values; `intern` hands out the one already held when an
/// equal value is. Values no object holds any more are dropped as the set
/// grows: whenever it has doubled since it was last swept, so the sweeps
/// cost O(1) per interned value.
pub struct Interner<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    values: HashSet<Arc<T>>,
    /// The size after the last sweep.
    swept: usize,
}

/// Below this the set is not swept: a small set costs nothing to keep.
const SWEEP_FLOOR: usize = 1024;

impl<T: Hash + Eq> Interner<T> {
    pub fn new() -> Self {
        Self { inner: Mutex::new(Inner { values: HashSet::new(), swept: 0 }) }
    }

    pub fn intern(&self, value: T) -> Arc<T> {
        let mut inner = self.lock();
        match inner.values.get(&value) {
            Some(shared) => shared.clone(),
            None => inner.insert(value),
        }
    }

    /// As `intern`, cloning `value` only when no equal one is held (the
    /// common case, a pod of a known workload, allocates nothing).
    pub fn intern_ref(&self, value: &T) -> Arc<T>
    where
        T: Clone,
    {
        let mut inner = self.lock();
        match inner.values.get(value) {
            Some(shared) => shared.clone(),
            None => inner.insert(value.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while the lock was held left the set itself sound.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Distinct values held (some perhaps by nothing else until the next
    /// sweep).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().values.len()
    }
}

impl<T: Hash + Eq> Inner<T> {
    fn insert(&mut self, value: T) -> Arc<T> {
        if self.values.len() >= (self.swept * 2).max(SWEEP_FLOOR) {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.swept = self.values.len();
        }
        let shared = Arc::new(value);
        self.values.insert(shared.clone());
        shared
    }
}

impl<T: Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_one_allocation() {
        let interner = Interner::new();
        let a = interner.intern(vec!["app".to_string()]);
        let b = interner.intern_ref(&vec!["app".to_string()]);
        let c = interner.intern(vec!["db".to_string()]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(interner.held(), 2);
    }

    #[test]
    fn values_nothing_holds_are_swept_as_the_set_grows() {
        let interner = Interner::new();
        let kept = interner.intern(u64::MAX);
        // Dropped at once: only the interner holds them.
        for i in 0..(SWEEP_FLOOR as u64 * 4) {
            interner.intern(i);
        }
        assert!(interner.held() <= SWEEP_FLOOR + 1, "{} values held", interner.held());
        // What something still holds survives every sweep, and is shared.
        assert!(Arc::ptr_eq(&kept, &interner.intern(u64::MAX)));
    }
}
