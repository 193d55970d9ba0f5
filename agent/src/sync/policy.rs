//! Keeping the NetworkPolicy maps equal to the cluster's Pods, Namespaces
//! and NetworkPolicies; weir-cni's requests for new pods are held in
//! `handoff` and answered once a pass has written their entries.
//!
//! Local endpoints come from the endpoint map weir-cni writes; each is bound
//! to its Pod either by the hand-off (namespace/name, before the Pod's
//! status has an IP) or by the Pod's IP. Nothing is computed before all
//! three kinds are listed: a policy not listed yet would leave its pods
//! open, so until then new pods simply stay pending.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use tracing::{error, info, warn};
use weir_common::EndpointInfo;

use crate::{
    datapath::{
        policy::maps::PolicyMaps,
        policy::programmer::{ApplyStats, PolicyProgrammer, PolicyTarget},
    },
    model::{
        ClusterIndex,
        policy::compile::{CompileInput, DesiredPolicy, LocalEndpoint, PolicyCompiler},
    },
    node::policy_socket::Handoff,
};

use super::{
    handoff::Handoffs,
    names::{Names, NamesFile},
};

/// This node's pods by their status addresses (pods bind to endpoints by
/// address when no hand-off named them), kept up to date from the pods
/// that changed instead of a walk over every pod of the cluster per pass.
#[derive(Debug, Default)]
struct LocalPods {
    /// None: rebuild from the index.
    by_ip: Option<BTreeMap<IpAddr, BTreeSet<String>>>,
    ips_of: BTreeMap<String, Vec<IpAddr>>,
}

impl LocalPods {
    fn update(&mut self, index: &ClusterIndex, node: &str, changed: Option<&BTreeSet<String>>) {
        let keys: Vec<&str> = match (changed, self.by_ip.is_some()) {
            (Some(changed), true) => changed.iter().map(String::as_str).collect(),
            _ => {
                *self = Self { by_ip: Some(BTreeMap::new()), ips_of: BTreeMap::new() };
                index.pods.iter().map(|p| &*p.key).collect()
            }
        };
        let by_ip = self.by_ip.get_or_insert_default();
        for key in keys {
            for ip in self.ips_of.remove(key).unwrap_or_default() {
                if let Some(set) = by_ip.get_mut(&ip) {
                    set.remove(key);
                    if set.is_empty() {
                        by_ip.remove(&ip);
                    }
                }
            }
            if let Some(pod) = index.pods.get(key)
                && pod.node.as_deref() == Some(node)
            {
                let ips: Vec<IpAddr> = pod.addrs().collect();
                for ip in &ips {
                    by_ip.entry(*ip).or_default().insert(key.to_string());
                }
                if !ips.is_empty() {
                    self.ips_of.insert(key.to_string(), ips);
                }
            }
        }
    }

    /// The pod at `ip` (two claiming it: the last by key).
    fn at(&self, ip: IpAddr) -> Option<&str> {
        self.by_ip.as_ref()?.get(&ip)?.last().map(String::as_str)
    }
}

/// The names file is rewritten at most this often.
const NAMES_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Beyond this many changed pods a compile looks at every pod (a relist).
const CHANGED_PODS_MAX: usize = 10_000;

pub struct PolicySync {
    compiler: PolicyCompiler,
    programmer: PolicyProgrammer,
    handoffs: Handoffs,
    node_name: String,
    names: NamesFile,
    dirty: bool,
    /// The last compiled state (for status and names).
    last: Option<DesiredPolicy>,
    last_stats: ApplyStats,
    endpoint_pods: BTreeMap<u32, String>,
    /// Pods changed (by key) since the last compile; None: not known (at
    /// start, or more than `CHANGED_PODS_MAX`), so the next compile looks
    /// at every pod.
    changed_pods: Option<BTreeSet<String>>,
    /// This node's pods by status address.
    local_pods: LocalPods,
    /// When the names file was last written, and when a newer one is due.
    names_written: Option<Instant>,
    names_due: Option<Instant>,
    /// The endpoints the per-pod counters were last pruned against.
    stats_endpoints: Option<Vec<u32>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PolicyGauges {
    pub policies: usize,
    pub identities: usize,
    pub rules: usize,
    pub enforced_endpoints: usize,
    pub pending_endpoints: usize,
}

impl PolicySync {
    pub fn new(programmer: PolicyProgrammer, node_name: String, run_dir: &std::path::Path) -> Self {
        Self {
            compiler: PolicyCompiler::new(),
            programmer,
            handoffs: {
                let mut h = Handoffs::default();
                h.restore(super::names::read_endpoints(run_dir));
                h
            },
            node_name,
            names: NamesFile::new(run_dir),
            dirty: true,
            last: None,
            last_stats: ApplyStats::default(),
            endpoint_pods: BTreeMap::new(),
            changed_pods: None,
            local_pods: LocalPods::default(),
            names_written: None,
            names_due: None,
            stats_endpoints: None,
        }
    }

    /// Anything may have changed: the next compile looks at every pod.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
        self.changed_pods = None;
    }

    /// Namespaces or NetworkPolicies changed (pods did not).
    pub fn policies_changed(&mut self) {
        self.dirty = true;
    }

    /// Pods (by key) came, went or changed: the next compile updates the
    /// ipcache for them only.
    pub fn pods_changed(&mut self, keys: impl IntoIterator<Item = String>) {
        self.dirty = true;
        if let Some(set) = &mut self.changed_pods {
            set.extend(keys);
            if set.len() > CHANGED_PODS_MAX {
                self.changed_pods = None;
            }
        }
    }

    pub fn needs_work(&self, index: &ClusterIndex) -> bool {
        (self.dirty || self.handoffs.waiting()) && index.policy_synced()
    }

    /// weir-cni announces a new pod; the answer goes out once the pod's
    /// policy is in place (or the hold time runs out).
    pub fn handoff(&mut self, h: Handoff) {
        self.handoffs.announce(h);
        self.dirty = true;
    }

    /// The earliest hold deadline (or names file write), so the main loop
    /// wakes up for it.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.handoffs.next_deadline(), self.names_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn gauges(&self, index: &ClusterIndex) -> PolicyGauges {
        let Some(d) = &self.last else { return PolicyGauges { policies: index.policies.len(), ..Default::default() } };
        let flags = d.endpoint_flags.values();
        PolicyGauges {
            policies: index.policies.len(),
            identities: d.identities.len(),
            rules: d.rules.len(),
            enforced_endpoints: flags.clone().filter(|f| *f & EndpointInfo::FLAGS_ENFORCED != 0).count(),
            pending_endpoints: flags.filter(|f| *f & EndpointInfo::FLAG_POLICY_PENDING != 0).count(),
        }
    }

    pub fn last_stats(&self) -> ApplyStats {
        self.last_stats
    }

    /// Slot -> policy, and local endpoint -> pod, for labelling counters.
    pub fn names(&self, index: &ClusterIndex) -> (BTreeMap<u32, String>, BTreeMap<u32, String>) {
        let slots = index.policies.map().keys().filter_map(|k| Some((self.compiler.slot_of(k)?, k.clone()))).collect();
        (slots, self.endpoint_pods.clone())
    }

    pub fn reconcile(&mut self, index: &ClusterIndex, maps: &mut impl PolicyMaps) {
        if !index.policy_synced() {
            self.handoffs.expire();
            return;
        }
        self.dirty = false;
        let (endpoints, endpoints6) = match maps.local_endpoints().and_then(|e| Ok((e, maps.local_endpoints6()?))) {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, "cannot read the endpoint maps; policy not updated");
                self.dirty = true;
                return;
            }
        };
        self.handoffs.retain_live(&endpoints);
        self.local_pods.update(index, &self.node_name, self.changed_pods.as_ref());
        let local: Vec<LocalEndpoint> = endpoints
            .iter()
            .map(|(ifindex, ep)| {
                let ip = Ipv4Addr::from(ep.ipv4_octets());
                let ip6 = endpoints6.get(ifindex).copied();
                let at = |ip: IpAddr| self.local_pods.at(ip);
                let pod = self
                    .handoffs
                    .pod_of(*ifindex)
                    .or_else(|| at(ip.into()).filter(|_| !ip.is_unspecified()))
                    .or_else(|| ip6.and_then(|ip6| at(ip6.into())))
                    .map(str::to_string);
                // An IPv6-only pod (no IPv4 in its entry) this agent cannot
                // name: not announced since it started, not in the names a
                // previous agent left, no Pod at its address. A policy may
                // select it: isolated rather than open.
                let unknown_ipv6_only = ip.is_unspecified() && pod.is_none();
                let pending = ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 || unknown_ipv6_only;
                LocalEndpoint { ifindex: *ifindex, ip, ip6, pod, pending }
            })
            .collect();
        self.endpoint_pods = local.iter().filter_map(|e| Some((e.ifindex, e.pod.clone()?))).collect();
        let host_addrs = crate::node::host_addrs::all();
        let input = CompileInput {
            pods: index.pods.map(),
            namespaces: index.namespaces.map(),
            policies: index.policies.map(),
            host_addrs: &host_addrs,
            endpoints: &local,
        };
        let desired = self.compiler.compile_after(&input, self.changed_pods.as_ref());
        self.changed_pods = Some(BTreeSet::new());
        let target = PolicyTarget {
            rules: &desired.rules,
            ipcache: &desired.ipcache,
            endpoint_flags: &desired.endpoint_flags,
            ipcache_delta: &desired.ipcache_delta,
        };
        match self.programmer.apply(maps, &target, &endpoints) {
            Ok(stats) => {
                // First, as weir-cni's ADD waits for it: the maps are written.
                self.handoffs.answer(&desired, index);
                if stats.writes() > 0 {
                    info!(
                        rules_set = stats.rules_set,
                        rules_deleted = stats.rules_deleted,
                        ipcache_set = stats.ipcache_set,
                        ipcache_deleted = stats.ipcache_deleted,
                        endpoints = stats.endpoints_updated,
                        rules = desired.rules.len(),
                        identities = desired.identities.len(),
                        "policy maps updated"
                    );
                }
                self.write_names(&desired);
                self.last_stats = stats;
                self.prune_stats(maps, &endpoints);
            }
            Err(e) => {
                error!(error = %e, "policy maps only partly updated; retrying");
                self.dirty = true;
            }
        }
        // Without the ipcache: the compiler updates its own in place, and a
        // second holder would make it copy every pod's entry per pass.
        self.last = Some(DesiredPolicy { ipcache: Default::default(), ..desired });
        self.handoffs.expire();
    }

    /// Counters of endpoints that are gone would fill the map over time;
    /// dropped whenever the set of endpoints changes.
    fn prune_stats(&mut self, maps: &mut impl PolicyMaps, endpoints: &BTreeMap<u32, EndpointInfo>) {
        let now: Vec<u32> = endpoints.keys().copied().collect();
        if self.stats_endpoints.as_ref() == Some(&now) {
            return;
        }
        match maps.prune_endpoint_stats(endpoints) {
            Ok(_) => self.stats_endpoints = Some(now),
            Err(e) => warn!(error = %e, "cannot prune the counters of deleted pods; retrying later"),
        }
    }

    /// Expires held hand-offs without recomputing, and writes the names
    /// file when it is due (timer tick).
    pub fn tick(&mut self) {
        self.handoffs.expire();
        if self.names_due.is_some_and(|due| Instant::now() >= due)
            && let Some(desired) = self.last.take()
        {
            self.write_names(&desired);
            self.last = Some(desired);
        }
    }

    fn write_names(&mut self, desired: &DesiredPolicy) {
        // The compiler has a slot for every policy and for nothing else.
        if self.names.unchanged(self.compiler.slots(), &desired.identities, &self.endpoint_pods) {
            self.names_due = None;
            return;
        }
        // The file lists every identity of the cluster: under pod churn it
        // changes with nearly every pass. `inspect` may lag a little.
        let now = Instant::now();
        if let Some(last) = self.names_written
            && now < last + NAMES_EVERY
        {
            self.names_due = Some(last + NAMES_EVERY);
            return;
        }
        self.names_due = None;
        self.names_written = Some(now);
        self.names.write(Names {
            slots: self.compiler.slots().map(|(slot, policy)| (slot, policy.to_string())).collect(),
            identities: desired.identities.clone(),
            endpoints: self.endpoint_pods.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        datapath::policy::maps::FakePolicyMaps,
        model::{
            index::Change,
            policy::{
                selector::{LabelSelector, labels},
                types::{NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer, PolicyRule},
            },
        },
    };

    fn pod(key: &str, ip: [u8; 4], node: &str, kv: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            key: key.into(),
            namespace: key.split_once('/').unwrap().0.into(),
            labels: labels(kv).into(),
            ip: Some(Ipv4Addr::from(ip)),
            ip6: None,
            node: Some(node.into()),
            named_ports: vec![].into(),
        }
    }

    /// x/a and x/b on this node; x admits only pods labelled pod=a.
    fn cluster() -> (ClusterIndex, FakePolicyMaps) {
        let mut index = ClusterIndex::default();
        index.namespaces.change(Change::Relisted(vec![
            NamespaceInfo { name: "x".into(), labels: labels(&[("ns", "x")]) },
            NamespaceInfo { name: "y".into(), labels: labels(&[("ns", "y")]) },
        ]));
        index.pods.change(Change::Relisted(vec![
            pod("x/a", [10, 244, 1, 5], "me", &[("pod", "a")]),
            pod("x/b", [10, 244, 1, 6], "me", &[("pod", "b")]),
            pod("y/c", [10, 244, 2, 9], "other", &[("pod", "c")]),
        ]));
        index.policies.change(Change::Relisted(vec![NetworkPolicyInfo {
            key: "x/from-a".into(),
            namespace: "x".into(),
            pod_selector: LabelSelector::default(),
            ingress_enabled: true,
            egress_enabled: false,
            ingress: vec![PolicyRule {
                peers: vec![PolicyPeer::Pods {
                    namespaces: None,
                    pods: Some(LabelSelector { match_labels: labels(&[("pod", "a")]), expressions: vec![] }),
                }],
                ports: vec![],
            }],
            egress: vec![],
        }]));
        let mut maps = FakePolicyMaps::default();
        for (ifindex, last) in [(7, 5), (8, 6)] {
            maps.endpoints.insert(
                ifindex,
                EndpointInfo::new(
                    [10, 244, 1, last],
                    EndpointInfo::FLAG_VERIFY_SOURCE | EndpointInfo::FLAG_POLICY_PENDING,
                ),
            );
        }
        (index, maps)
    }

    #[test]
    fn a_change_writes_only_what_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut index, mut maps) = cluster();
        let mut sync = PolicySync::new(PolicyProgrammer::default(), "me".into(), dir.path());
        sync.reconcile(&index, &mut maps);
        for ifindex in [7, 8] {
            assert_eq!(
                maps.endpoints[&ifindex].flags & EndpointInfo::FLAGS_POLICY,
                EndpointInfo::FLAG_INGRESS_ENFORCED
            );
        }

        // A pod elsewhere that no rule names changes its labels: its own
        // ipcache entry is all that is written.
        maps.log.clear();
        index.pods.change(Change::Applied(pod("y/c", [10, 244, 2, 9], "other", &[("pod", "d")])));
        sync.mark_dirty();
        sync.reconcile(&index, &mut maps);
        assert!(!maps.log.is_empty() && maps.log.iter().all(|l| l.starts_with("ip+ 10.244.2.9/32")), "{:?}", maps.log);

        // y/c becomes a peer (pod=a, but in y: still not admitted by a
        // podSelector-only peer of x): again only its own entry.
        maps.log.clear();
        index.pods.change(Change::Applied(pod("y/c", [10, 244, 2, 9], "other", &[("pod", "a")])));
        sync.mark_dirty();
        sync.reconcile(&index, &mut maps);
        assert!(maps.log.iter().all(|l| l.starts_with("ip+ 10.244.2.9/32")), "{:?}", maps.log);

        // x/b relabelled pod=a: both pods of x now admit it. Entries are
        // added for its identity; neither endpoint's flags are rewritten.
        maps.log.clear();
        index.pods.change(Change::Applied(pod("x/b", [10, 244, 1, 6], "me", &[("pod", "a"), ("v", "2")])));
        sync.mark_dirty();
        sync.reconcile(&index, &mut maps);
        assert!(maps.log.iter().any(|l| l.starts_with("rule+")), "{:?}", maps.log);
        assert!(!maps.log.iter().any(|l| l.starts_with("ep ")), "endpoint flags rewritten: {:?}", maps.log);
        assert!(
            maps.log.iter().filter(|l| l.starts_with("ip")).all(|l| l.contains("10.244.1.6/32")),
            "only x/b's address moves: {:?}",
            maps.log
        );
        // Nothing changed: nothing written.
        maps.log.clear();
        sync.mark_dirty();
        sync.reconcile(&index, &mut maps);
        assert!(maps.log.is_empty(), "{:?}", maps.log);
    }

    #[test]
    fn nothing_is_computed_before_every_kind_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut maps) = cluster();
        let mut index = ClusterIndex::default();
        index.pods.change(Change::Relisted(vec![]));
        index.namespaces.change(Change::Relisted(vec![]));
        let mut sync = PolicySync::new(PolicyProgrammer::default(), "me".into(), dir.path());
        assert!(!sync.needs_work(&index));
        sync.reconcile(&index, &mut maps);
        assert!(maps.log.is_empty(), "{:?}", maps.log);
        assert!(maps.endpoints.values().all(|e| e.flags & EndpointInfo::FLAG_POLICY_PENDING != 0));
    }
}
