//! The agent's view of the cluster, updated per kind with apply / delete /
//! reset (a reset replaces everything of that kind after a relist, so objects
//! deleted while a watch was down disappear too).
use std::collections::BTreeMap;

use super::{
    NodeInfo,
    service::{EndpointSliceInfo, ObjectKey, ServiceInfo},
};

/// Objects stored by a unique key.
pub trait Keyed: Clone + PartialEq {
    fn key(&self) -> &str;
}

impl Keyed for NodeInfo {
    fn key(&self) -> &str {
        &self.name
    }
}
impl Keyed for ServiceInfo {
    fn key(&self) -> &str {
        &self.key
    }
}
impl Keyed for EndpointSliceInfo {
    fn key(&self) -> &str {
        &self.key
    }
}

/// All objects of one kind, and whether their first full list has arrived.
/// Pruning anything (routes, map entries) before that would delete state
/// that is merely not listed yet.
#[derive(Debug)]
pub struct KindIndex<T> {
    objects: BTreeMap<String, T>,
    synced: bool,
}

impl<T> Default for KindIndex<T> {
    fn default() -> Self {
        Self { objects: BTreeMap::new(), synced: false }
    }
}

impl<T: Keyed> KindIndex<T> {
    /// Returns whether anything changed.
    pub fn apply(&mut self, obj: T) -> bool {
        match self.objects.get(obj.key()) {
            Some(old) if *old == obj => false,
            _ => {
                self.objects.insert(obj.key().to_string(), obj);
                true
            }
        }
    }

    pub fn delete(&mut self, key: &str) -> bool {
        self.objects.remove(key).is_some()
    }

    /// Replace everything with a fresh list and mark the kind as synced.
    pub fn reset(&mut self, objects: impl IntoIterator<Item = T>) -> bool {
        let fresh: BTreeMap<_, _> = objects.into_iter().map(|o| (o.key().to_string(), o)).collect();
        let changed = fresh != self.objects || !self.synced;
        self.objects = fresh;
        self.synced = true;
        changed
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.objects.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.objects.values()
    }

    pub fn synced(&self) -> bool {
        self.synced
    }
}

#[derive(Debug, Default)]
pub struct ClusterIndex {
    pub nodes: KindIndex<NodeInfo>,
    pub services: KindIndex<ServiceInfo>,
    pub slices: KindIndex<EndpointSliceInfo>,
}

impl ClusterIndex {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    /// EndpointSlices grouped by the Service they belong to.
    pub fn slices_by_service(&self) -> BTreeMap<ObjectKey, Vec<&EndpointSliceInfo>> {
        let mut out: BTreeMap<ObjectKey, Vec<&EndpointSliceInfo>> = BTreeMap::new();
        for s in self.slices.iter() {
            out.entry(s.service.clone()).or_default().push(s);
        }
        out
    }

    /// Services can be pruned from the datapath only once both Services and
    /// their EndpointSlices have been listed.
    pub fn services_synced(&self) -> bool {
        self.services.synced() && self.slices.synced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::build::node;

    #[test]
    fn apply_reports_changes_only() {
        let mut idx = KindIndex::default();
        assert!(idx.apply(node("a").with_pod_cidr("10.244.1.0/24")));
        assert!(!idx.apply(node("a").with_pod_cidr("10.244.1.0/24")));
        assert!(idx.apply(node("a").with_pod_cidr("10.244.2.0/24")));
        assert_eq!(idx.get("a").unwrap().pod_cidr.unwrap().to_string(), "10.244.2.0/24");
    }

    #[test]
    fn reset_prunes_objects_missing_from_relist_and_marks_synced() {
        let mut idx = KindIndex::default();
        idx.apply(node("a"));
        idx.apply(node("b"));
        assert!(!idx.synced());
        assert!(idx.reset([node("b")]));
        assert!(idx.get("a").is_none());
        assert!(idx.get("b").is_some());
        assert!(idx.synced());
        // Same list again: nothing changed.
        assert!(!idx.reset([node("b")]));
    }

    #[test]
    fn first_reset_counts_as_change_even_if_empty() {
        let mut idx: KindIndex<NodeInfo> = KindIndex::default();
        assert!(idx.reset([]));
    }

    #[test]
    fn delete_unknown_is_no_change() {
        let mut idx: KindIndex<NodeInfo> = KindIndex::default();
        assert!(!idx.delete("ghost"));
    }

    #[test]
    fn services_sync_needs_both_kinds() {
        let mut idx = ClusterIndex::default();
        idx.services.reset([]);
        assert!(!idx.services_synced());
        idx.slices.reset([]);
        assert!(idx.services_synced());
    }
}
