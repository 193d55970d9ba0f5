//! The agent's view of the cluster, updated per kind by applied, deleted and
//! relisted objects (a relist replaces everything of that kind, so objects
//! deleted while a watch was down disappear too). Every change reports what
//! it changed, so the agent recomputes only that.
use std::collections::BTreeMap;

use super::{
    NodeInfo,
    policy::types::{NamespaceInfo, NetworkPolicyInfo, PodInfo},
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
/// `namespace/name`.
impl Keyed for PodInfo {
    fn key(&self) -> &str {
        &self.key
    }
}
impl Keyed for NamespaceInfo {
    fn key(&self) -> &str {
        &self.name
    }
}
/// `namespace/name`.
impl Keyed for NetworkPolicyInfo {
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

/// A change as it came from a source.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<T> {
    Applied(T),
    /// Deleted, by key (`namespace/name` for namespaced kinds).
    Deleted(String),
    /// A complete list (initial list or relist): replaces everything of the
    /// kind, and marks the kind as synced.
    Relisted(Vec<T>),
    /// A complete list in which the objects named in `keep` could not be
    /// read: those keep the version the index has (if any), the rest is as
    /// `Relisted`.
    RelistedKeeping {
        objects: Vec<T>,
        keep: Vec<String>,
    },
}

impl<T: Keyed> KindIndex<T> {
    /// Applies a change; returns (old, new) for every object that changed.
    pub fn change(&mut self, change: Change<T>) -> Vec<(Option<T>, Option<T>)> {
        match change {
            Change::Applied(obj) => {
                if self.objects.get(obj.key()) == Some(&obj) {
                    return vec![];
                }
                let old = self.objects.insert(obj.key().to_string(), obj.clone());
                vec![(old, Some(obj))]
            }
            Change::Deleted(key) => self.objects.remove(&key).map(|old| vec![(Some(old), None)]).unwrap_or_default(),
            Change::Relisted(objects) => self.relist(objects, &[]),
            Change::RelistedKeeping { objects, keep } => self.relist(objects, &keep),
        }
    }

    fn relist(&mut self, list: Vec<T>, keep: &[String]) -> Vec<(Option<T>, Option<T>)> {
        let mut fresh: BTreeMap<String, T> = list.into_iter().map(|o| (o.key().to_string(), o)).collect();
        let mut out = Vec::new();
        for (k, old) in std::mem::take(&mut self.objects) {
            match fresh.remove(&k) {
                None if keep.contains(&k) => {
                    self.objects.insert(k, old);
                }
                Some(new) if new == old => {
                    self.objects.insert(k, new);
                }
                Some(new) => {
                    self.objects.insert(k, new.clone());
                    out.push((Some(old), Some(new)));
                }
                None => out.push((Some(old), None)),
            }
        }
        for (k, new) in fresh {
            self.objects.insert(k, new.clone());
            out.push((None, Some(new)));
        }
        self.synced = true;
        out
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.objects.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every object by key (what the policy compiler takes).
    pub fn map(&self) -> &BTreeMap<String, T> {
        &self.objects
    }

    pub fn synced(&self) -> bool {
        self.synced
    }
}

#[derive(Debug, Default)]
pub struct ClusterIndex {
    pub nodes: KindIndex<NodeInfo>,
    pub services: KindIndex<ServiceInfo>,
    slices: KindIndex<EndpointSliceInfo>,
    /// Service -> keys of its EndpointSlices.
    slices_by_service: BTreeMap<ObjectKey, std::collections::BTreeSet<String>>,
    /// Every Pod of the cluster, not only this node's: policy peers are
    /// matched by labels wherever the peer runs.
    pub pods: KindIndex<PodInfo>,
    pub namespaces: KindIndex<NamespaceInfo>,
    pub policies: KindIndex<NetworkPolicyInfo>,
}

impl ClusterIndex {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    /// Applies a Services change; returns the keys of Services that changed.
    pub fn change_services(&mut self, change: Change<ServiceInfo>) -> Vec<ObjectKey> {
        self.services.change(change).into_iter().filter_map(|(old, new)| new.or(old).map(|s| s.key)).collect()
    }

    /// Applies an EndpointSlices change; returns the Services whose
    /// endpoints changed.
    pub fn change_slices(&mut self, change: Change<EndpointSliceInfo>) -> Vec<ObjectKey> {
        let mut affected = Vec::new();
        for (old, new) in self.slices.change(change) {
            if let Some(old) = old {
                if let Some(set) = self.slices_by_service.get_mut(&old.service) {
                    set.remove(&old.key);
                    if set.is_empty() {
                        self.slices_by_service.remove(&old.service);
                    }
                }
                affected.push(old.service);
            }
            if let Some(new) = new {
                self.slices_by_service.entry(new.service.clone()).or_default().insert(new.key.clone());
                affected.push(new.service);
            }
        }
        affected
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    pub fn slice(&self, key: &str) -> Option<&EndpointSliceInfo> {
        self.slices.get(key)
    }

    /// The EndpointSlices of one Service.
    pub fn slices_of(&self, service: &str) -> Vec<&EndpointSliceInfo> {
        self.slices_by_service.get(service).into_iter().flatten().filter_map(|k| self.slices.get(k)).collect()
    }

    /// Services can be pruned from the datapath only once both Services and
    /// their EndpointSlices have been listed.
    pub fn services_synced(&self) -> bool {
        self.services.synced() && self.slices.synced()
    }

    /// Policy state can be computed (and stale entries pruned) only once
    /// Pods, Namespaces and NetworkPolicies have all been listed: before
    /// that, a pod's policies or a peer's labels may merely be missing.
    pub fn policy_synced(&self) -> bool {
        self.pods.synced() && self.namespaces.synced() && self.policies.synced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::build::node;

    #[test]
    fn relist_marks_synced_even_when_empty() {
        let mut idx: KindIndex<NodeInfo> = KindIndex::default();
        assert!(!idx.synced());
        assert!(idx.change(Change::Relisted(vec![])).is_empty());
        assert!(idx.synced());
    }

    #[test]
    fn services_sync_needs_both_kinds() {
        let mut idx = ClusterIndex::default();
        idx.change_services(Change::Relisted(vec![]));
        assert!(!idx.services_synced());
        idx.change_slices(Change::Relisted(vec![]));
        assert!(idx.services_synced());
    }

    #[test]
    fn change_reports_old_and_new_and_relist_diffs() {
        let mut idx = KindIndex::default();
        assert_eq!(idx.change(Change::Applied(node("a"))).len(), 1);
        assert!(idx.change(Change::Applied(node("a"))).is_empty());
        idx.change(Change::Applied(node("b")));
        let diff = idx.change(Change::Relisted(vec![node("b").with_pod_cidr("10.244.2.0/24"), node("c")]));
        let summary: Vec<_> = diff
            .iter()
            .map(|(o, n)| (o.as_ref().map(|x| x.name.as_str()), n.as_ref().map(|x| x.name.as_str())))
            .collect();
        assert_eq!(summary, [(Some("a"), None), (Some("b"), Some("b")), (None, Some("c"))]);
        assert!(idx.change(Change::Deleted("zzz".into())).is_empty());
    }

    #[test]
    fn a_relist_keeps_the_last_version_of_objects_it_could_not_read() {
        let mut idx = KindIndex::default();
        idx.change(Change::Applied(node("a").with_pod_cidr("10.244.1.0/24")));
        idx.change(Change::Applied(node("b")));
        // "a" was in the list but unreadable; "z" too, and never known.
        let diff = idx.change(Change::RelistedKeeping { objects: vec![node("c")], keep: vec!["a".into(), "z".into()] });
        let summary: Vec<_> = diff
            .iter()
            .map(|(o, n)| (o.as_ref().map(|x| x.name.as_str()), n.as_ref().map(|x| x.name.as_str())))
            .collect();
        assert_eq!(summary, [(Some("b"), None), (None, Some("c"))]);
        assert_eq!(idx.get("a").and_then(|n| n.pod_cidr).map(|c| c.to_string()).as_deref(), Some("10.244.1.0/24"));
        assert!(idx.get("z").is_none() && idx.synced());
    }

    #[test]
    fn policy_kinds_are_keyed_and_sync_needs_all_three() {
        use crate::model::policy::{
            selector::LabelSelector,
            types::{NamespaceInfo, NetworkPolicyInfo, PodInfo},
        };
        let pod = PodInfo {
            key: "x/a".into(),
            namespace: "x".into(),
            labels: Default::default(),
            ip: None,
            ip6: None,
            node: None,
            named_ports: vec![].into(),
        };
        let ns = NamespaceInfo { name: "x".into(), labels: Default::default() };
        let np = NetworkPolicyInfo {
            key: "x/deny".into(),
            namespace: "x".into(),
            pod_selector: LabelSelector::default(),
            ingress_enabled: true,
            egress_enabled: false,
            ingress: vec![],
            egress: vec![],
        };
        let mut idx = ClusterIndex::default();
        idx.pods.change(Change::Relisted(vec![pod]));
        idx.namespaces.change(Change::Relisted(vec![ns]));
        assert!(!idx.policy_synced());
        idx.policies.change(Change::Applied(np));
        assert!(!idx.policy_synced(), "an applied object is not a list");
        idx.policies.change(Change::Relisted(vec![]));
        assert!(idx.policy_synced());
        assert!(idx.pods.map().contains_key("x/a"));
        assert!(idx.namespaces.map().contains_key("x"));
        assert!(idx.policies.is_empty());
        idx.pods.change(Change::Deleted("x/a".into()));
        assert!(idx.pods.map().is_empty());
    }

    #[test]
    fn slices_are_found_by_service_and_moves_affect_both() {
        use crate::model::service::build::slice;
        let mut idx = ClusterIndex::default();
        assert_eq!(idx.change_slices(Change::Applied(slice("ns/s1", "ns/a"))), ["ns/a"]);
        idx.change_slices(Change::Applied(slice("ns/s2", "ns/a")));
        assert_eq!(idx.slices_of("ns/a").len(), 2);
        // Relabelled to another Service: both are affected.
        assert_eq!(idx.change_slices(Change::Applied(slice("ns/s2", "ns/b"))), ["ns/a", "ns/b"]);
        assert_eq!(idx.slices_of("ns/a").len(), 1);
        assert_eq!(idx.change_slices(Change::Deleted("ns/s1".into())), ["ns/a"]);
        assert!(idx.slices_of("ns/a").is_empty());
    }
}
