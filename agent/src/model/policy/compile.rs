//! NetworkPolicies -> the desired contents of the datapath's policy maps.
//!
//! The datapath, for a new flow at a local endpoint in one direction,
//! skips the check unless the endpoint's flags say that direction is
//! enforced; otherwise it looks the peer's address up in the ipcache (miss:
//! `world`) and then (endpoint, identity, direction, protocol, destination
//! port) in the policy LPM map, then the same with `IDENTITY_ANY`: a hit
//! allows (and names the policy slot), a miss denies. [`simulate`] does
//! exactly that on a [`DesiredPolicy`], and the tests hold it to the
//! evaluator's answer.
//!
//! A compile reuses what the previous one worked out wherever its inputs
//! are unchanged (the peers of a policy's rules, the entries of an
//! endpoint), so that one label or policy change costs what it touches
//! rather than every rule against every identity for every endpoint. The
//! result is exactly that of a compile from scratch (tested).
//!
//! [`simulate`]: super::simulate::simulate
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnetwork::IpNetwork;
use weir_common::{
    EndpointInfo,
    policy::{IDENTITY_ANY, IDENTITY_FIRST_DYNAMIC, IDENTITY_WORLD, MAX_POLICY_SLOTS, POLICY_SLOT_OWN_NODE},
};

use super::{
    evaluate::Direction,
    identity::{Blocks, IdentityKey, Subject, host_prefix, prefix_of},
    keys::{PortMatch, RuleKey, any_proto_entry, port_entry},
    numbering::Numbering,
    types::{NamedPort, NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyRule},
};

/// A pod interface on this node, as the endpoint map has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The host-side veth.
    pub ifindex: u32,
    /// Authoritative for the pod's addresses: the Pod's status may lag.
    /// Unspecified: the pod has no IPv4 address (an IPv6-only node).
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    /// `namespace/name` of the pod (weir-cni knows it from CNI_ARGS);
    /// `None`: not a Kubernetes pod.
    pub pod: Option<String>,
    /// The endpoint currently has `FLAG_POLICY_PENDING`. Only decides for
    /// an endpoint with no pod (kept); a pod's endpoint is pending exactly
    /// while its Pod object is unknown.
    pub pending: bool,
}

impl LocalEndpoint {
    /// The endpoint's addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = (!self.ip.is_unspecified()).then_some(IpAddr::V4(self.ip));
        v4.into_iter().chain(self.ip6.map(IpAddr::V6))
    }
}

/// The cluster as far as policy goes, keyed by `namespace/name` (pods,
/// policies) or name (namespaces).
#[derive(Clone, Copy, Debug)]
pub struct CompileInput<'a> {
    pub pods: &'a BTreeMap<String, PodInfo>,
    pub namespaces: &'a BTreeMap<String, NamespaceInfo>,
    pub policies: &'a BTreeMap<String, NetworkPolicyInfo>,
    /// This node's own addresses (both families).
    pub host_addrs: &'a [IpAddr],
    pub endpoints: &'a [LocalEndpoint],
}

/// What the policy maps should hold. Two are equal when they hold the
/// same; `ipcache_delta` (how the compiler got there) is not compared.
#[derive(Clone, Debug, Default)]
pub struct DesiredPolicy {
    /// Address prefix -> identity; shared with the compiler, which updates
    /// it in place after pod changes (whoever still holds the previous
    /// compile's makes it copy the whole map).
    pub ipcache: Arc<BTreeMap<IpNetwork, u32>>,
    /// (prefix length, key) -> the slot of the policy that allows it (the
    /// lowest when several do; `POLICY_SLOT_OWN_NODE` for the node's own
    /// access). Keys have every bit past the prefix length cleared.
    pub rules: BTreeMap<RuleKey, u32>,
    /// Endpoint ifindex -> its `EndpointInfo::FLAGS_POLICY` bits (the other
    /// bits are weir-cni's).
    pub endpoint_flags: BTreeMap<u32, u32>,
    /// Identity -> what it is, for operators (every identity the ipcache
    /// uses).
    pub identities: BTreeMap<u32, String>,
    /// Which ipcache this is, and what changed since an earlier one: at
    /// 150,000 pods comparing the whole map with the written one was a
    /// large part of each pass.
    pub ipcache_delta: IpcacheDelta,
}

impl PartialEq for DesiredPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.ipcache == other.ipcache
            && self.rules == other.rules
            && self.endpoint_flags == other.endpoint_flags
            && self.identities == other.identities
    }
}

impl Eq for DesiredPolicy {}

/// The ipcache's version (the compiler counts every compile's) and, after
/// an update for changed pods, the prefixes whose entry differs from the
/// version before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpcacheDelta {
    pub version: u64,
    /// (the previous version, the prefixes that changed since), or None
    /// when anything may have changed (a compile from scratch).
    pub since: Option<(u64, Vec<IpNetwork>)>,
}

/// Compiles policies, keeping identity numbers and policy slots stable
/// from one compile to the next.
#[derive(Clone, Debug)]
pub struct PolicyCompiler {
    identities: Numbering<IdentityKey>,
    slots: Numbering<String>,
    /// The last compile's work, reused where its inputs are unchanged.
    cache: Cache,
    /// The last compile's `IpcacheDelta::version`.
    ipcache_version: u64,
}

impl Default for PolicyCompiler {
    fn default() -> Self {
        Self::new()
    }
}

/// What the last compile worked out, with what it depended on.
#[derive(Clone, Debug, Default)]
struct Cache {
    /// The identities in use: number -> key.
    identities: BTreeMap<u32, IdentityKey>,
    /// By pod key: every pod in the ipcache, with its identity.
    pods: HashMap<Arc<str>, u32>,
    /// The namespaces the peers were resolved against.
    namespaces: BTreeMap<String, NamespaceInfo>,
    /// Every policy of the last compile with its key in the input, in
    /// the input's order.
    policies: Vec<(String, ResolvedPolicy)>,
    /// By ifindex: every endpoint of the last compile with a known pod.
    endpoints: HashMap<u32, EndpointEntries>,
    /// What the ipcache was derived from, for updates after pod changes.
    ipcache: ipcache::IpcacheState,
    /// The last `ResolvedPolicy::version` handed out.
    version: u64,
}

impl PolicyCompiler {
    /// The pod's number from the last compile, if `pod` in `block` still
    /// has it: asked of the numbering (the cache holds the number only; a
    /// copy of every pod and its key cost 1.2 KB per pod of the cluster).
    fn known_identity(&self, known: Option<u32>, pod: &PodInfo, block: Option<IpNetwork>) -> Option<u32> {
        let id = known?;
        self.identities.key(id).is_some_and(|k| k.block == block && k.is_of(pod)).then_some(id)
    }
}

/// A policy with the peers of its rules resolved to identities.
#[derive(Clone, Debug)]
struct ResolvedPolicy {
    policy: NetworkPolicyInfo,
    ingress: Vec<ResolvedRule>,
    egress: Vec<ResolvedRule>,
    /// New (never handed out before) whenever the entries the policy gives
    /// may have changed, so that an endpoint knows when to recompute.
    version: u64,
}

/// A rule with its peers resolved to identities (`None`: every peer).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ResolvedRule {
    /// Sorted.
    peers: Option<Vec<u32>>,
    ports: Vec<PortMatch>,
}

/// The policy entries of one endpoint, and what they were computed from.
#[derive(Clone, Debug)]
struct EndpointEntries {
    inputs: EndpointInputs,
    /// Sorted by key.
    entries: Vec<(RuleKey, u32)>,
}

/// Everything an endpoint's entries depend on besides its ifindex.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EndpointInputs {
    /// Per direction (ingress, egress): the slot and version of every
    /// policy selecting the pod.
    policies: [Vec<(u32, u64)>; 2],
    /// The pod's own, for named ports in ingress rules.
    named_ports: Arc<Vec<NamedPort>>,
    /// This node's identities.
    hosts: Vec<u32>,
}

const DIRECTIONS: [(Direction, u32); 2] = [
    (Direction::Ingress, EndpointInfo::FLAG_INGRESS_ENFORCED),
    (Direction::Egress, EndpointInfo::FLAG_EGRESS_ENFORCED),
];

impl PolicyCompiler {
    pub fn new() -> Self {
        Self {
            identities: Numbering::new(IDENTITY_FIRST_DYNAMIC, u32::MAX),
            // Slots past the counters' capacity still enforce; only their
            // hits go uncounted.
            slots: Numbering::new(POLICY_SLOT_OWN_NODE + 1, MAX_POLICY_SLOTS),
            cache: Cache::default(),
            ipcache_version: 0,
        }
    }

    /// The policy (`namespace/name`) a slot belongs to.
    pub fn policy_of_slot(&self, slot: u32) -> Option<&str> {
        self.slots.key(slot).map(String::as_str)
    }

    /// Every slot with its policy, by slot.
    pub fn slots(&self) -> impl Iterator<Item = (u32, &str)> {
        self.slots.iter().map(|(slot, policy)| (slot, policy.as_str()))
    }

    pub fn slot_of(&self, policy: &str) -> Option<u32> {
        self.slots.get(&policy.to_string())
    }

    /// What an identity stands for.
    pub fn identity_key(&self, identity: u32) -> Option<&IdentityKey> {
        self.identities.key(identity)
    }

    pub fn compile(&mut self, input: &CompileInput<'_>) -> DesiredPolicy {
        self.compile_after(input, None)
    }

    /// `compile`, told which pods changed (by key) since the previous
    /// compile: the ipcache is then updated for those pods' addresses only
    /// (see `ipcache`), unless this node's addresses or the policies'
    /// ipBlock prefixes changed too. `None`: not known, every pod is
    /// looked at.
    pub fn compile_after(
        &mut self,
        input: &CompileInput<'_>,
        changed_pods: Option<&BTreeSet<String>>,
    ) -> DesiredPolicy {
        // Policies rarely come or go: nothing to number then.
        if !input.policies.values().map(|p| &p.key).eq(self.slots.keys()) {
            let live_slots: BTreeSet<u32> = input.policies.values().map(|p| self.slots.assign(&p.key)).collect();
            self.slots.retain(&live_slots);
        }
        let endpoints = unique_endpoints(input.endpoints);
        let mut out = DesiredPolicy::default();
        let blocks = Blocks::of(input.policies.values());
        match changed_pods.filter(|_| self.cache.ipcache.usable(&blocks, input.host_addrs)) {
            Some(changed) => {
                let (changed_ids, changed_nets) =
                    self.update_ipcache(input.pods, &endpoints, changed, &mut out.ipcache, &mut out.identities);
                self.cache.refresh_policies(input, &changed_ids);
                out.ipcache_delta.since = Some((self.ipcache_version, changed_nets));
            }
            None => {
                let identities = self.number_identities(input, &endpoints, &blocks, &mut out);
                self.cache.ipcache = ipcache::IpcacheState::rebuild(
                    input.pods,
                    input.host_addrs,
                    &endpoints,
                    &blocks,
                    &out.ipcache,
                    &out.identities,
                );
                self.cache.resolve_policies(input, identities);
            }
        }
        self.ipcache_version += 1;
        out.ipcache_delta.version = self.ipcache_version;
        self.endpoint_entries(input, &endpoints, &mut out);
        out
    }

    /// The ipcache and the identities it uses (returned), numbered.
    fn number_identities(
        &mut self,
        input: &CompileInput<'_>,
        endpoints: &[LocalEndpoint],
        blocks: &Blocks,
        out: &mut DesiredPolicy,
    ) -> BTreeMap<u32, IdentityKey> {
        let mut identities: BTreeMap<u32, IdentityKey> = BTreeMap::new();
        let mut ipcache = Vec::new();
        let mut previous = std::mem::replace(&mut self.cache.pods, HashMap::with_capacity(input.pods.len()));
        for (net, holder) in ipcache_holders(input, endpoints, blocks) {
            let id = match holder {
                Holder::Pod { pod, block } => {
                    // Most pods are as they were: their number is known
                    // without building and looking up their key.
                    let known = previous.remove_entry(&pod.key);
                    let (name, id) = match self.known_identity(known.as_ref().map(|(_, id)| *id), pod, block) {
                        Some(id) => (known.expect("known").0, id),
                        None => (pod.key.clone(), self.identities.assign(&IdentityKey::pod(pod, block))),
                    };
                    if let std::collections::btree_map::Entry::Vacant(e) = identities.entry(id) {
                        e.insert(self.identities.key(id).expect("numbered above").clone());
                    }
                    self.cache.pods.insert(name, id);
                    id
                }
                Holder::Other(key) => {
                    let id =
                        if key == IdentityKey::address(None) { IDENTITY_WORLD } else { self.identities.assign(&key) };
                    identities.insert(id, key);
                    id
                }
            };
            ipcache.push((net, id));
        }
        out.ipcache = Arc::new(ipcache.into_iter().collect());
        self.identities.retain(&identities.keys().copied().collect());
        out.identities = identities.iter().map(|(id, key)| (*id, key.describe())).collect();
        identities
    }

    /// Endpoint flags and policy entries, reusing the entries of every
    /// endpoint whose inputs are as they were.
    fn endpoint_entries(&mut self, input: &CompileInput<'_>, endpoints: &[LocalEndpoint], out: &mut DesiredPolicy) {
        let identities = &self.cache.identities;
        let hosts: Vec<u32> =
            identities.iter().filter(|(_, key)| key.subject == Subject::Host).map(|(id, _)| *id).collect();
        // A policy selects pods of its own namespace only.
        let mut by_namespace: BTreeMap<&str, Vec<(&ResolvedPolicy, u32)>> = BTreeMap::new();
        for (_, p) in &self.cache.policies {
            let slot = self.slots.get(&p.policy.key).expect("every policy has a slot");
            by_namespace.entry(p.policy.namespace.as_str()).or_default().push((p, slot));
        }
        let mut previous = std::mem::replace(&mut self.cache.endpoints, HashMap::with_capacity(endpoints.len()));
        for ep in endpoints {
            let pod = match &ep.pod {
                // Not a Kubernetes pod: no policy applies. A pending bit
                // weir-cni set stays (it knows better than a missing name).
                None => {
                    out.endpoint_flags
                        .insert(ep.ifindex, if ep.pending { EndpointInfo::FLAG_POLICY_PENDING } else { 0 });
                    continue;
                }
                Some(key) => match input.pods.get(key) {
                    Some(pod) => pod,
                    // The Pod object has not arrived (or is gone): isolated
                    // until it does, never open.
                    None => {
                        out.endpoint_flags.insert(ep.ifindex, EndpointInfo::FLAG_POLICY_PENDING);
                        continue;
                    }
                },
            };
            let candidates = by_namespace.get(pod.namespace.as_str()).map_or(&[][..], Vec::as_slice);
            let selecting: Vec<(&ResolvedPolicy, u32)> =
                candidates.iter().filter(|(p, _)| p.policy.selects(pod)).copied().collect();
            let selecting = DIRECTIONS
                .map(|(dir, _)| selecting.iter().filter(|(p, _)| enabled(&p.policy, dir)).copied().collect::<Vec<_>>());
            let flags = DIRECTIONS
                .iter()
                .zip(&selecting)
                .filter(|(_, ps)| !ps.is_empty())
                .fold(0, |flags, ((_, flag), _)| flags | flag);
            out.endpoint_flags.insert(ep.ifindex, flags);
            let inputs = EndpointInputs {
                policies: selecting.each_ref().map(|ps| ps.iter().map(|(p, slot)| (*slot, p.version)).collect()),
                named_ports: pod.named_ports.clone(),
                hosts: hosts.clone(),
            };
            let entries = match previous.remove(&ep.ifindex) {
                Some(e) if e.inputs == inputs => e,
                _ => EndpointEntries { entries: entries_of(ep.ifindex, pod, &selecting, &hosts, identities), inputs },
            };
            self.cache.endpoints.insert(ep.ifindex, entries);
        }
        let mut runs: Vec<&[(RuleKey, u32)]> = endpoints
            .iter()
            .filter_map(|ep| self.cache.endpoints.get(&ep.ifindex))
            .map(|e| e.entries.as_slice())
            .collect();
        out.rules = merge_by_prefix_length(&mut runs).into_iter().collect();
    }
}

/// The entries of every endpoint (each endpoint's sorted, endpoints in
/// ifindex order), sorted, so that the map is built without sorting them
/// again: keys order by prefix length first, then endpoint, so this takes
/// each length's entries of every endpoint in turn.
fn merge_by_prefix_length(runs: &mut [&[(RuleKey, u32)]]) -> Vec<(RuleKey, u32)> {
    let mut out = Vec::with_capacity(runs.iter().map(|r| r.len()).sum());
    while let Some(len) = runs.iter().filter_map(|r| r.first()).map(|((len, _), _)| *len).min() {
        for run in runs.iter_mut() {
            let n = run.iter().take_while(|((l, _), _)| *l == len).count();
            out.extend_from_slice(&run[..n]);
            *run = &run[n..];
        }
    }
    out
}

impl Cache {
    /// Takes over the identities now in use and brings every policy's
    /// peers up to date with them, resolving again only what changed.
    fn resolve_policies(&mut self, input: &CompileInput<'_>, identities: BTreeMap<u32, IdentityKey>) {
        let previous = std::mem::replace(&mut self.identities, identities);
        // Identities that appeared, went, or (a number handed out again)
        // stand for something else now.
        let mut changed: BTreeSet<u32> =
            self.identities.iter().filter(|(id, key)| previous.get(id) != Some(key)).map(|(id, _)| *id).collect();
        changed.extend(previous.iter().filter(|(id, key)| self.identities.get(id) != Some(key)).map(|(id, _)| *id));
        self.refresh_policies(input, &changed);
    }

    /// Brings every policy's peers up to date with `self.identities`, of
    /// which `changed` are new or gone since the policies were resolved.
    fn refresh_policies(&mut self, input: &CompileInput<'_>, changed: &BTreeSet<u32>) {
        let mut previous = std::mem::take(&mut self.policies);
        if self.namespaces != *input.namespaces {
            // namespaceSelectors may match other namespaces now.
            self.namespaces = input.namespaces.clone();
            previous.clear();
        }
        self.policies.reserve(input.policies.len());
        // Both in key order: a merge.
        let mut previous = previous.into_iter().peekable();
        for (key, policy) in input.policies {
            while previous.next_if(|(k, _)| k < key).is_some() {}
            let (key, resolved) = match previous.next_if(|(k, _)| k == key) {
                Some((key, mut p)) if p.policy == *policy => {
                    if !changed.is_empty() && p.refresh(changed, &self.identities, &self.namespaces) {
                        self.version += 1;
                        p.version = self.version;
                    }
                    (key, p)
                }
                _ => {
                    self.version += 1;
                    (key.clone(), ResolvedPolicy::new(policy, &self.identities, &self.namespaces, self.version))
                }
            };
            self.policies.push((key, resolved));
        }
    }
}

impl ResolvedPolicy {
    fn new(
        policy: &NetworkPolicyInfo,
        identities: &BTreeMap<u32, IdentityKey>,
        namespaces: &BTreeMap<String, NamespaceInfo>,
        version: u64,
    ) -> Self {
        let resolve = |rules: &[PolicyRule]| -> Vec<ResolvedRule> {
            rules
                .iter()
                .map(|rule| ResolvedRule {
                    peers: (!rule.peers.is_empty()).then(|| {
                        identities
                            .iter()
                            .filter(|(_, key)| matches_rule(key, policy, rule, namespaces))
                            .map(|(id, _)| *id)
                            .collect()
                    }),
                    ports: PortMatch::of_rule(&rule.ports),
                })
                .collect()
        };
        Self { policy: policy.clone(), ingress: resolve(&policy.ingress), egress: resolve(&policy.egress), version }
    }

    fn rules(&self, dir: Direction) -> &[ResolvedRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Resolves the `changed` identities again (every other identity is
    /// still what it was); whether the entries the policy gives may differ.
    fn refresh(
        &mut self,
        changed: &BTreeSet<u32>,
        identities: &BTreeMap<u32, IdentityKey>,
        namespaces: &BTreeMap<String, NamespaceInfo>,
    ) -> bool {
        let policy = &self.policy;
        let mut differs = false;
        let by_direction = [
            (Direction::Ingress, &policy.ingress, &mut self.ingress),
            (Direction::Egress, &policy.egress, &mut self.egress),
        ];
        for (dir, rules, resolved) in by_direction {
            for (rule, r) in rules.iter().zip(resolved.iter_mut()) {
                let Some(peers) = &mut r.peers else {
                    // Every peer: no identity in the entries, except for an
                    // egress named port, resolved per pod identity.
                    differs |= dir == Direction::Egress && r.ports.iter().any(|m| matches!(m, PortMatch::Named { .. }));
                    continue;
                };
                let before = peers.len();
                peers.retain(|id| !changed.contains(id));
                let removed = peers.len() != before;
                let added = changed
                    .iter()
                    .filter(|id| identities.get(id).is_some_and(|key| matches_rule(key, policy, rule, namespaces)));
                peers.extend(added.copied());
                if removed || peers.len() != before {
                    peers.sort_unstable();
                    differs = true;
                }
            }
        }
        differs
    }
}

/// Does any peer of `rule`, in `policy`, match the identity?
fn matches_rule(
    key: &IdentityKey,
    policy: &NetworkPolicyInfo,
    rule: &PolicyRule,
    namespaces: &BTreeMap<String, NamespaceInfo>,
) -> bool {
    rule.peers.iter().any(|peer| key.matches_peer(policy, peer, namespaces))
}

/// The entries of one endpoint (its pod `pod`), given the policies
/// selecting the pod per direction with their slots.
fn entries_of(
    ifindex: u32,
    pod: &PodInfo,
    selecting: &[Vec<(&ResolvedPolicy, u32)>; 2],
    hosts: &[u32],
    identities: &BTreeMap<u32, IdentityKey>,
) -> Vec<(RuleKey, u32)> {
    let mut out = BTreeMap::new();
    let mut rules = Rules { identities, out: &mut out };
    for ((dir, _), policies) in DIRECTIONS.iter().zip(selecting) {
        // Policies often repeat a rule (the same peers and ports): each
        // distinct one is expanded once, with the lowest slot giving it.
        let mut distinct: HashMap<&ResolvedRule, u32> = HashMap::new();
        for (policy, slot) in policies {
            for rule in policy.rules(*dir) {
                distinct.entry(rule).and_modify(|s| *s = (*s).min(*slot)).or_insert(*slot);
            }
        }
        for (rule, slot) in distinct {
            rules.add(ifindex, pod, *dir, rule, slot);
        }
    }
    if !selecting[0].is_empty() {
        // The node's own traffic (kubelet probes) always reaches its pods.
        for id in hosts {
            rules.insert(any_proto_entry(ifindex, *id, Direction::Ingress), POLICY_SLOT_OWN_NODE);
        }
    }
    out.into_iter().collect()
}

fn enabled(p: &NetworkPolicyInfo, dir: Direction) -> bool {
    match dir {
        Direction::Ingress => p.ingress_enabled,
        Direction::Egress => p.egress_enabled,
    }
}

/// One endpoint per ifindex (the first given), in ifindex order, so that
/// every choice below is deterministic.
fn unique_endpoints(endpoints: &[LocalEndpoint]) -> Vec<LocalEndpoint> {
    let mut by_ifindex: BTreeMap<u32, &LocalEndpoint> = BTreeMap::new();
    for ep in endpoints {
        by_ifindex.entry(ep.ifindex).or_insert(ep);
    }
    by_ifindex.into_values().cloned().collect()
}

/// What an ipcache prefix stands for, before it has a number.
enum Holder<'a> {
    /// A pod, in the most specific ipBlock prefix around its address.
    Pod {
        pod: &'a PodInfo,
        block: Option<IpNetwork>,
    },
    Other(IdentityKey),
}

/// The ipcache by holder: every ipBlock prefix, `0.0.0.0/0` and `::/0` as
/// addresses, then pods (this node's first, by endpoint address), then this
/// node's addresses over anything else at the same /32 or /128 (host-network pods
/// have the node's address, and are the node's traffic).
fn ipcache_holders<'a>(
    input: &CompileInput<'a>,
    endpoints: &[LocalEndpoint],
    blocks: &Blocks,
) -> BTreeMap<IpNetwork, Holder<'a>> {
    let mut out = BTreeMap::new();
    // One per family, each in the blocks of its own family only.
    for everything in [prefix_of(Ipv4Addr::UNSPECIFIED, 0), prefix_of(Ipv6Addr::UNSPECIFIED, 0)] {
        out.insert(everything, Holder::Other(IdentityKey::address(blocks.most_specific(everything))));
    }
    for b in blocks.iter() {
        out.insert(b, Holder::Other(IdentityKey::address(Some(b))));
    }
    // Address -> pod. Two pods at one address (a stale status): the local
    // endpoint's pod, else the first by key.
    let mut pods: BTreeMap<IpAddr, &PodInfo> = BTreeMap::new();
    let mut local_pods = BTreeSet::new();
    for ep in endpoints {
        if let Some(pod) = ep.pod.as_ref().and_then(|k| input.pods.get(k)) {
            for ip in ep.addrs() {
                pods.entry(ip).or_insert(pod);
            }
            local_pods.insert(&*pod.key);
        }
    }
    for pod in input.pods.values() {
        // A local pod's status addresses are not trusted over its
        // endpoint's.
        if !local_pods.contains(&*pod.key) {
            for ip in pod.addrs() {
                pods.entry(ip).or_insert(pod);
            }
        }
    }
    for (ip, pod) in pods {
        out.insert(host_prefix(ip), Holder::Pod { pod, block: blocks.of_addr(ip) });
    }
    for ip in input.host_addrs {
        out.insert(host_prefix(*ip), Holder::Other(IdentityKey { subject: Subject::Host, block: blocks.of_addr(*ip) }));
    }
    out
}

/// The policy entries being built.
struct Rules<'a> {
    identities: &'a BTreeMap<u32, IdentityKey>,
    out: &'a mut BTreeMap<RuleKey, u32>,
}

impl Rules<'_> {
    /// Keeps the lowest slot when several rules give the same entry.
    fn insert(&mut self, key: RuleKey, slot: u32) {
        self.out.entry(key).and_modify(|s| *s = (*s).min(slot)).or_insert(slot);
    }

    /// The entries of one rule of a policy (in `slot`) selecting `pod`.
    fn add(&mut self, ifindex: u32, pod: &PodInfo, dir: Direction, rule: &ResolvedRule, slot: u32) {
        let any = [IDENTITY_ANY];
        let peers: &[u32] = rule.peers.as_deref().unwrap_or(&any);
        for m in &rule.ports {
            match m {
                PortMatch::AnyProto => {
                    for id in peers {
                        self.insert(any_proto_entry(ifindex, *id, dir), slot);
                    }
                }
                PortMatch::Prefix { proto, port, bits } => {
                    for id in peers {
                        self.insert(port_entry(ifindex, *id, dir, *proto, *port, *bits), slot);
                    }
                }
                // Ingress: the port is this pod's own.
                PortMatch::Named { proto, name } if dir == Direction::Ingress => {
                    for (_, _, port) in pod.named_ports.iter().filter(|(n, p, _)| n == name && p == proto) {
                        for id in peers {
                            self.insert(port_entry(ifindex, *id, dir, *proto, *port, 16), slot);
                        }
                    }
                }
                // Egress: the destination's, so per peer identity; "every
                // peer" becomes every pod identity (nothing else has named
                // ports).
                PortMatch::Named { proto, name } => {
                    let candidates: Vec<u32> = match &rule.peers {
                        Some(ids) => ids.clone(),
                        None => self.identities.iter().filter(|(_, k)| k.is_pod()).map(|(id, _)| *id).collect(),
                    };
                    for id in candidates {
                        let ports: Vec<u16> =
                            self.identities.get(&id).into_iter().flat_map(|k| k.named_port(name, *proto)).collect();
                        for port in ports {
                            self.insert(port_entry(ifindex, id, dir, *proto, port, 16), slot);
                        }
                    }
                }
            }
        }
    }
}

mod ipcache;

#[cfg(test)]
mod agreement;
#[cfg(test)]
mod tests;
