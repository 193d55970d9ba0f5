//! Keeping the NetworkPolicy maps equal to the cluster's Pods, Namespaces
//! and NetworkPolicies, and answering weir-cni's hand-off for new pods.
//!
//! Local endpoints come from the endpoint map weir-cni writes; each is bound
//! to its Pod either by the hand-off (namespace/name, before the Pod's
//! status has an IP) or by the Pod's IP. Nothing is computed before all
//! three kinds are listed: a policy not listed yet would leave its pods
//! open, so until then new pods simply stay pending.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use tracing::{error, info, warn};
use weir_common::EndpointInfo;

use crate::{
    datapath::{
        policy_maps::PolicyMaps,
        policy_programmer::{ApplyStats, PolicyProgrammer, PolicyTarget},
    },
    model::{
        ClusterIndex,
        policy::compile::{CompileInput, DesiredPolicy, LocalEndpoint, PolicyCompiler},
    },
    node::policy_socket::{HOLD, Handoff, HandoffAnswer},
};

/// Names behind the numbers in the maps, for `weir-agent inspect policy`
/// (a separate process): `<run dir>/policy-names.json`.
pub const NAMES_FILE: &str = "policy-names.json";

struct Waiter {
    ifindex: u32,
    pod: String,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<HandoffAnswer>,
}

pub struct PolicySync {
    compiler: PolicyCompiler,
    programmer: PolicyProgrammer,
    /// ifindex -> (IP, pod key), as weir-cni announced them.
    bindings: BTreeMap<u32, (Ipv4Addr, String)>,
    waiters: Vec<Waiter>,
    node_name: String,
    names_path: PathBuf,
    dirty: bool,
    /// The last compiled state (for status and names).
    last: Option<DesiredPolicy>,
    last_stats: ApplyStats,
    /// What the names file was last written from.
    names_written: Option<Names>,
    endpoint_pods: BTreeMap<u32, String>,
    /// The endpoints the per-pod counters were last pruned against.
    stats_endpoints: Option<Vec<u32>>,
}

/// The names behind the numbers in the maps: slot -> policy, identity ->
/// what it is, endpoint -> pod.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    slots: BTreeMap<u32, String>,
    identities: BTreeMap<u32, String>,
    endpoints: BTreeMap<u32, String>,
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
            bindings: BTreeMap::new(),
            waiters: Vec::new(),
            node_name,
            names_path: run_dir.join(NAMES_FILE),
            dirty: true,
            last: None,
            last_stats: ApplyStats::default(),
            names_written: None,
            endpoint_pods: BTreeMap::new(),
            stats_endpoints: None,
        }
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn needs_work(&self, index: &ClusterIndex) -> bool {
        (self.dirty || !self.waiters.is_empty()) && index.policy_synced()
    }

    /// weir-cni announces a new pod; the answer goes out once the pod's
    /// policy is in place (or the hold time runs out).
    pub fn handoff(&mut self, h: Handoff) {
        let r = h.request;
        info!(pod = %r.pod_key(), ifindex = r.ifindex, ip = %r.ip, "new pod announced by weir-cni");
        self.bindings.insert(r.ifindex, (r.ip, r.pod_key()));
        self.waiters.push(Waiter { ifindex: r.ifindex, pod: r.pod_key(), deadline: Instant::now() + HOLD, reply: h.reply });
        self.dirty = true;
    }

    /// The earliest hold deadline, so the main loop wakes up for it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
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
            self.expire_waiters();
            return;
        }
        self.dirty = false;
        let endpoints = match maps.local_endpoints() {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, "cannot read the endpoint map; policy not updated");
                self.dirty = true;
                return;
            }
        };
        // Announcements for interfaces that are gone, or now hold another
        // pod, no longer count.
        self.bindings.retain(|ifindex, (ip, _)| endpoints.get(ifindex).is_some_and(|ep| ep.ipv4_octets() == ip.octets()));
        let by_ip: BTreeMap<Ipv4Addr, &str> = index
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(self.node_name.as_str()))
            .filter_map(|p| Some((p.ip?, p.key.as_str())))
            .collect();
        let local: Vec<LocalEndpoint> = endpoints
            .iter()
            .map(|(ifindex, ep)| {
                let ip = Ipv4Addr::from(ep.ipv4_octets());
                let pod = match self.bindings.get(ifindex) {
                    Some((_, key)) => Some(key.clone()),
                    None => by_ip.get(&ip).map(|k| k.to_string()),
                };
                LocalEndpoint { ifindex: *ifindex, ip, pod, pending: ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 }
            })
            .collect();
        self.endpoint_pods = local.iter().filter_map(|e| Some((e.ifindex, e.pod.clone()?))).collect();
        let host_addrs = host_addrs();
        let desired = self.compiler.compile(&CompileInput {
            pods: index.pods.map(),
            namespaces: index.namespaces.map(),
            policies: index.policies.map(),
            host_addrs: &host_addrs,
            endpoints: &local,
        });
        let target = PolicyTarget { rules: &desired.rules, ipcache: &desired.ipcache, endpoint_flags: &desired.endpoint_flags };
        match self.programmer.apply(maps, &target, &endpoints) {
            Ok(stats) => {
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
                self.answer_waiters(&desired, index);
                self.prune_stats(maps, &endpoints);
            }
            Err(e) => {
                error!(error = %e, "policy maps only partly updated; retrying");
                self.dirty = true;
            }
        }
        self.last = Some(desired);
        self.expire_waiters();
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

    fn answer_waiters(&mut self, desired: &DesiredPolicy, index: &ClusterIndex) {
        let mut keep = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            let pending = desired.endpoint_flags.get(&w.ifindex).is_none_or(|f| f & EndpointInfo::FLAG_POLICY_PENDING != 0);
            if !pending {
                let _ = w.reply.send(HandoffAnswer::Ready);
            } else if index.pods.get(&w.pod).is_none() {
                keep.push(w);
            } else {
                // Known pod but still pending: its endpoint entry is gone.
                let _ = w.reply.send(HandoffAnswer::Pending(format!("no endpoint entry for ifindex {}", w.ifindex)));
            }
        }
        self.waiters = keep;
    }

    /// Answers the hand-offs held past their deadline: the pod starts
    /// isolated and is opened once its policy is in place.
    fn expire_waiters(&mut self) {
        let now = Instant::now();
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters).into_iter().partition(|w| w.deadline <= now);
        self.waiters = keep;
        for w in done {
            warn!(pod = %w.pod, "pod starts isolated: its policy is not known yet");
            let _ = w.reply.send(HandoffAnswer::Pending(format!(
                "no policy for Pod {} within {HOLD:?} (the Pod, or the first lists of Pods, Namespaces and \
                 NetworkPolicies, not seen yet); it stays isolated until then",
                w.pod
            )));
        }
    }

    /// Expires held hand-offs without recomputing (timer tick).
    pub fn tick(&mut self) {
        self.expire_waiters();
    }

    /// Writes the names file if the names changed (a label or policy
    /// change rarely renames anything, and the file is not small).
    fn write_names(&mut self, desired: &DesiredPolicy) {
        // The compiler has a slot for every policy and for nothing else.
        let unchanged = self.names_written.as_ref().is_some_and(|w| {
            w.identities == desired.identities
                && w.endpoints == self.endpoint_pods
                && w.slots.iter().map(|(slot, policy)| (*slot, policy.as_str())).eq(self.compiler.slots())
        });
        if unchanged {
            return;
        }
        let names = Names {
            slots: self.compiler.slots().map(|(slot, policy)| (slot, policy.to_string())).collect(),
            identities: desired.identities.clone(),
            endpoints: self.endpoint_pods.clone(),
        };
        let text_keys = |m: &BTreeMap<u32, String>| m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>();
        let doc = serde_json::json!({
            "slots": text_keys(&names.slots),
            "identities": text_keys(&names.identities),
            "endpoints": text_keys(&names.endpoints),
        })
        .to_string();
        if let Err(e) = replace_unsynced(&self.names_path, doc.as_bytes()) {
            warn!(error = %e, path = %self.names_path.display(), "policy names not written (inspect shows numbers only)");
        } else {
            self.names_written = Some(names);
        }
    }
}

/// Replaces a file whole (readers see the old or the new contents), without
/// waiting for the disk: for the names file, which describes the pinned
/// maps (gone after a reboot too) and is written afresh by a starting
/// agent, a sync would only hold up every pass that changes a name.
fn replace_unsynced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Every IPv4 address of the node's own namespace: traffic from these is
/// the pod's own node (kubelet probes), which always reaches it.
fn host_addrs() -> Vec<Ipv4Addr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            let mut out: Vec<Ipv4Addr> = addrs
                .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip())))
                .collect();
            out.sort();
            out.dedup();
            out
        }
        Err(e) => {
            warn!(error = %e, "cannot list the node's addresses");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        datapath::policy_maps::FakePolicyMaps,
        model::{
            index::Change,
            policy::{
                selector::{LabelSelector, Labels},
                types::{NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer, PolicyRule},
            },
        },
    };

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(key: &str, ip: [u8; 4], node: &str, kv: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            key: key.into(),
            namespace: key.split_once('/').unwrap().0.into(),
            labels: labels(kv),
            ip: Some(Ipv4Addr::from(ip)),
            node: Some(node.into()),
            named_ports: vec![],
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
                EndpointInfo::new([10, 244, 1, last], EndpointInfo::FLAG_VERIFY_SOURCE | EndpointInfo::FLAG_POLICY_PENDING),
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
            assert_eq!(maps.endpoints[&ifindex].flags & EndpointInfo::FLAGS_POLICY, EndpointInfo::FLAG_INGRESS_ENFORCED);
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
