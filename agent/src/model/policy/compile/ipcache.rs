//! The ipcache after pod changes, worked out for the addresses they touch.
//!
//! A compile from the whole input walks every pod of the cluster to number
//! identities and build the ipcache: at 150,000 pods that was half a second
//! per pass, so one label change took that long to reach the maps. What an
//! address holds depends only on the pods that claim it (their status
//! address), the local endpoints at it, this node's addresses and the
//! ipBlock prefixes; with the last two unchanged, a compile that knows which
//! pods changed since the previous one redoes only their old and new
//! addresses (and every address of a local endpoint that came, went or
//! moved). The result is exactly the full compile's, numbering included:
//! new numbers are handed out in address order, as the full walk does
//! (tested against it in `agreement`).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use super::{LocalEndpoint, PolicyCompiler};
use crate::model::{
    by_family::ByFamily,
    policy::{
        identity::{Blocks, IdentityKey, host_prefix},
        types::PodInfo,
    },
};
use ipnetwork::IpNetwork;

/// What the last compile's ipcache was derived from.
#[derive(Clone, Debug, Default)]
pub(super) struct IpcacheState {
    /// Set by a full compile; the state below describes its input.
    valid: bool,
    blocks: Blocks,
    hosts: Vec<IpAddr>,
    endpoints: Vec<LocalEndpoint>,
    /// Pods not bound to a local endpoint and their status addresses.
    claims: Claims,
    ipcache: Arc<BTreeMap<IpNetwork, u32>>,
    /// Identity -> how many ipcache entries hold it.
    users: HashMap<u32, u32>,
    /// Identity -> what it is (`DesiredPolicy::identities`).
    described: BTreeMap<u32, String>,
}

/// The status addresses a pod claims, an address per family.
#[derive(Clone, Copy, Debug, Default)]
struct Claim {
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

impl Claim {
    fn of(pod: &PodInfo) -> Self {
        Self { v4: pod.ip, v6: pod.ip6 }
    }

    fn addrs(self) -> impl Iterator<Item = IpAddr> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }

    fn is_empty(self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

/// Which pods claim which addresses, both ways, each family apart (most
/// clusters have one).
#[derive(Clone, Debug, Default)]
struct Claims {
    by_addr: ByFamily<Claimants>,
    v4: HashMap<Arc<str>, Ipv4Addr>,
    v6: HashMap<Arc<str>, Ipv6Addr>,
}

impl Claims {
    fn with_capacity(pods: usize) -> Self {
        Self { by_addr: ByFamily::with_capacity(pods), v4: HashMap::with_capacity(pods), v6: HashMap::new() }
    }

    fn record(&mut self, key: &Arc<str>, claim: Claim) {
        for ip in claim.addrs() {
            self.by_addr.get_or_default(ip).insert(key);
        }
        if let Some(a) = claim.v4 {
            self.v4.insert(key.clone(), a);
        }
        if let Some(a) = claim.v6 {
            self.v6.insert(key.clone(), a);
        }
    }

    /// Forgets what `key` claimed; returns it.
    fn drop(&mut self, key: &str) -> Claim {
        let claim = Claim { v4: self.v4.remove(key), v6: self.v6.remove(key) };
        for ip in claim.addrs() {
            if let Some(set) = self.by_addr.get_mut(&ip) {
                set.remove(key);
                if set.0.is_empty() {
                    self.by_addr.remove(&ip);
                }
            }
        }
        claim
    }

    /// The pods claiming `ip`, in key order.
    fn at(&self, ip: &IpAddr) -> &[Arc<str>] {
        self.by_addr.get(ip).map_or(&[], |c| &c.0)
    }
}

/// The pods claiming one address, in key order (the first one known
/// holds it). Almost always one: a set per address cost a tree node each.
#[derive(Clone, Debug, Default)]
struct Claimants(Vec<Arc<str>>);

impl Claimants {
    fn insert(&mut self, key: &Arc<str>) {
        if let Err(at) = self.0.binary_search(key) {
            self.0.insert(at, key.clone());
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(at) = self.0.binary_search_by(|k| (**k).cmp(key)) {
            self.0.remove(at);
        }
    }
}

/// The pods bound to local endpoints (their status address is not trusted
/// over the endpoint's).
fn bound(endpoints: &[LocalEndpoint]) -> BTreeSet<&str> {
    endpoints.iter().filter_map(|e| e.pod.as_deref()).collect()
}

impl IpcacheState {
    /// After a full compile: its input and output, for the next update.
    pub(super) fn rebuild(
        input_pods: &BTreeMap<String, PodInfo>,
        hosts: &[IpAddr],
        endpoints: &[LocalEndpoint],
        blocks: &Blocks,
        ipcache: &Arc<BTreeMap<IpNetwork, u32>>,
        described: &BTreeMap<u32, String>,
    ) -> Self {
        let local = bound(endpoints);
        let mut users: HashMap<u32, u32> = HashMap::new();
        for id in ipcache.values() {
            *users.entry(*id).or_default() += 1;
        }
        let mut state = Self {
            valid: true,
            blocks: blocks.clone(),
            hosts: hosts.to_vec(),
            endpoints: endpoints.to_vec(),
            claims: Claims::with_capacity(input_pods.len()),
            ipcache: ipcache.clone(),
            users,
            described: described.clone(),
        };
        for pod in input_pods.values() {
            let claim = Claim::of(pod);
            if !claim.is_empty() && !local.contains(&*pod.key) {
                state.claims.record(&pod.key, claim);
            }
        }
        state
    }

    /// Whether an update from this state gives what a full compile would.
    pub(super) fn usable(&self, blocks: &Blocks, hosts: &[IpAddr]) -> bool {
        self.valid && self.blocks == *blocks && self.hosts == hosts
    }
}

impl PolicyCompiler {
    /// The ipcache and identities after `changed` pods (and any change of
    /// the local endpoints) on top of the last compile; requires
    /// `IpcacheState::usable`. Returns the identities that appeared or
    /// went (their number now stands for something else), and the
    /// prefixes whose entry changed.
    pub(super) fn update_ipcache(
        &mut self,
        pods: &BTreeMap<String, PodInfo>,
        endpoints: &[LocalEndpoint],
        changed: &BTreeSet<String>,
        ipcache: &mut Arc<BTreeMap<IpNetwork, u32>>,
        described: &mut BTreeMap<u32, String>,
    ) -> (BTreeSet<u32>, Vec<IpNetwork>) {
        let mut state = std::mem::take(&mut self.cache.ipcache);
        let new_bound = bound(endpoints);
        let mut affected: BTreeSet<IpAddr> = BTreeSet::new();
        let mut keys: BTreeSet<&str> = changed.iter().map(String::as_str).collect();
        if state.endpoints != endpoints {
            // Few: every address of every local endpoint, before and after.
            affected.extend(state.endpoints.iter().chain(endpoints).flat_map(LocalEndpoint::addrs));
            // Pods bound or unbound: their status address counts or not.
            let old_bound = bound(&state.endpoints);
            keys.extend(old_bound.symmetric_difference(&new_bound).copied());
        }
        for key in &keys {
            affected.extend(state.claims.drop(key).addrs());
            match pods.get(*key) {
                Some(pod) => {
                    let claim = Claim::of(pod);
                    if !claim.is_empty() && !new_bound.contains(key) {
                        state.claims.record(&pod.key, claim);
                    }
                    affected.extend(claim.addrs());
                }
                None => {
                    self.cache.pods.remove(*key);
                }
            }
            // A local pod holds its endpoints' addresses (before and after).
            affected.extend(
                state
                    .endpoints
                    .iter()
                    .chain(endpoints)
                    .filter(|e| e.pod.as_deref() == Some(*key))
                    .flat_map(LocalEndpoint::addrs),
            );
        }

        let blocks = state.blocks.clone();
        let (mut appeared, mut vanished) = (BTreeSet::new(), BTreeSet::new());
        let mut changed_nets = Vec::new();
        for addr in affected {
            if state.hosts.contains(&addr) {
                // This node's address: the host identity, whoever claims it.
                continue;
            }
            let net = host_prefix(addr);
            let holder = endpoints
                .iter()
                .filter(|e| e.addrs().any(|a| a == addr))
                .find_map(|e| e.pod.as_ref().and_then(|k| pods.get(k)))
                .or_else(|| state.claims.at(&addr).iter().find_map(|k| pods.get(&**k)));
            let new_id = match holder {
                Some(pod) => Some(self.pod_identity(pod, blocks.of_addr(addr))),
                // A /32 (/128) ipBlock prefix holds the address when no pod
                // does.
                None if blocks.iter().any(|b| b == net) => {
                    Some(self.identities.assign(&IdentityKey::address(Some(net))))
                }
                None => None,
            };
            let old_id = state.ipcache.get(&net).copied();
            if old_id == new_id {
                continue;
            }
            changed_nets.push(net);
            match new_id {
                Some(id) => {
                    Arc::make_mut(&mut state.ipcache).insert(net, id);
                    let n = state.users.entry(id).or_default();
                    *n += 1;
                    if *n == 1 {
                        appeared.insert(id);
                    }
                }
                None => {
                    Arc::make_mut(&mut state.ipcache).remove(&net);
                }
            }
            if let Some(id) = old_id
                && let Some(n) = state.users.get_mut(&id)
            {
                *n -= 1;
                if *n == 0 {
                    state.users.remove(&id);
                    vanished.insert(id);
                }
            }
        }

        let mut changed_ids = BTreeSet::new();
        for id in vanished {
            if state.users.contains_key(&id) {
                continue; // went from one address to another
            }
            self.identities.release(id);
            self.cache.identities.remove(&id);
            state.described.remove(&id);
            changed_ids.insert(id);
        }
        for id in appeared {
            if self.cache.identities.contains_key(&id) || !state.users.contains_key(&id) {
                continue;
            }
            let key = self.identities.key(id).expect("an identity in the ipcache has a number").clone();
            state.described.insert(id, key.describe());
            self.cache.identities.insert(id, key);
            changed_ids.insert(id);
        }
        state.endpoints = endpoints.to_vec();
        *ipcache = state.ipcache.clone();
        described.clone_from(&state.described);
        self.cache.ipcache = state;
        (changed_ids, changed_nets)
    }

    /// A pod's identity at an address in `block`: the last compile's when
    /// the pod is as it was and its number still stands for it.
    fn pod_identity(&mut self, pod: &PodInfo, block: Option<IpNetwork>) -> u32 {
        if let Some(id) = self.known_identity(self.cache.pods.get(&pod.key).copied(), pod, block) {
            return id;
        }
        let id = self.identities.assign(&IdentityKey::pod(pod, block));
        self.cache.pods.insert(pod.key.clone(), id);
        id
    }
}
