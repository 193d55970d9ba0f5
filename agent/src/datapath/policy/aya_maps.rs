//! `PolicyMaps` over the real pinned maps.
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{HashMap, LpmTrie, MapData, PerCpuHashMap, lpm_trie::Key};
use ipnetwork::Ipv4Network;
use weir_common::{
    EndpointInfo, EndpointKey, pin,
    policy::{EndpointPolicyStats, IpcacheEntry, IpcacheKey, PolicyEntry, PolicyKey},
};

use crate::datapath::{
    Datapath, MapError,
    policy::maps::{PolicyDump, PolicyMaps, RuleKey},
};

/// bpf(2) update flag: only replace an existing entry.
const BPF_EXIST: u64 = 2;

fn err(op: &'static str, map: &'static str) -> impl Fn(aya::maps::MapError) -> MapError {
    move |e| MapError { op, map, reason: e.to_string() }
}

fn missing(map: &'static str) -> MapError {
    MapError { op: "open", map, reason: "not in the eBPF object".into() }
}

/// Deleting what is already gone is not an error (deletes are retried).
fn tolerate_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

fn ipcache_key(net: Ipv4Network) -> Key<IpcacheKey> {
    Key::new(u32::from(net.prefix()), IpcacheKey { addr: u32::from_ne_bytes(net.network().octets()) })
}

impl Datapath {
    fn rules_mut(&mut self) -> Result<LpmTrie<&mut MapData, PolicyKey, PolicyEntry>, MapError> {
        let name = pin::MAP_POLICY;
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| missing(name))?;
        LpmTrie::try_from(map).map_err(err("open", name))
    }
    fn ipcache_mut(&mut self) -> Result<LpmTrie<&mut MapData, IpcacheKey, IpcacheEntry>, MapError> {
        let name = pin::MAP_IPCACHE;
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| missing(name))?;
        LpmTrie::try_from(map).map_err(err("open", name))
    }
    fn endpoints_mut(&mut self) -> Result<HashMap<&mut MapData, EndpointKey, EndpointInfo>, MapError> {
        let name = pin::MAP_ENDPOINTS;
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| missing(name))?;
        HashMap::try_from(map).map_err(err("open", name))
    }
}

impl PolicyMaps for Datapath {
    fn set_rule(&mut self, key: RuleKey, slot: u32) -> Result<(), MapError> {
        self.rules_mut()?
            .insert(&Key::new(key.0, key.1), PolicyEntry { policy_slot: slot }, 0)
            .map_err(err("insert", pin::MAP_POLICY))
    }
    fn delete_rule(&mut self, key: RuleKey) -> Result<(), MapError> {
        tolerate_missing(self.rules_mut()?.remove(&Key::new(key.0, key.1))).map_err(err("delete", pin::MAP_POLICY))
    }
    fn set_identity(&mut self, net: Ipv4Network, identity: u32) -> Result<(), MapError> {
        self.ipcache_mut()?
            .insert(&ipcache_key(net), IpcacheEntry { identity }, 0)
            .map_err(err("insert", pin::MAP_IPCACHE))
    }
    fn delete_identity(&mut self, net: Ipv4Network) -> Result<(), MapError> {
        tolerate_missing(self.ipcache_mut()?.remove(&ipcache_key(net))).map_err(err("delete", pin::MAP_IPCACHE))
    }
    fn local_endpoints(&self) -> Result<BTreeMap<u32, EndpointInfo>, MapError> {
        let name = pin::MAP_ENDPOINTS;
        let map = self.ebpf().map(name).ok_or_else(|| missing(name))?;
        let eps: HashMap<_, EndpointKey, EndpointInfo> = HashMap::try_from(map).map_err(err("open", name))?;
        eps.iter().map(|kv| kv.map(|(k, v)| (k.ifindex, v)).map_err(err("dump", name))).collect()
    }
    fn set_endpoint_policy_flags(&mut self, ifindex: u32, ip: Ipv4Addr, flags: u32) -> Result<bool, MapError> {
        let name = pin::MAP_ENDPOINTS;
        let mut eps = self.endpoints_mut()?;
        let key = EndpointKey { ifindex };
        let current = match eps.get(&key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(err("lookup", name)(e)),
        };
        if current.ipv4_octets() != ip.octets() {
            return Ok(false);
        }
        let updated = EndpointInfo {
            flags: (current.flags & !EndpointInfo::FLAGS_POLICY) | (flags & EndpointInfo::FLAGS_POLICY),
            ..current
        };
        // BPF_EXIST: if weir-cni deleted the pod meanwhile, the entry stays
        // gone. (Interface indexes grow; one is not reused within the
        // microseconds between the lookup and this update.)
        match eps.insert(key, updated, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(err("update", name)(e)),
        }
    }
    fn prune_endpoint_stats(&mut self, keep: &BTreeMap<u32, EndpointInfo>) -> Result<usize, MapError> {
        let name = pin::MAP_EP_POLICY_STATS;
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| missing(name))?;
        let mut stats: PerCpuHashMap<_, EndpointKey, EndpointPolicyStats> =
            PerCpuHashMap::try_from(map).map_err(err("open", name))?;
        let gone: Vec<EndpointKey> =
            stats.keys().filter_map(Result::ok).filter(|k| !keep.contains_key(&k.ifindex)).collect();
        for key in &gone {
            tolerate_missing(stats.remove(key)).map_err(err("delete", name))?;
        }
        Ok(gone.len())
    }
    fn dump_policy(&self) -> Result<PolicyDump, MapError> {
        let mut d = PolicyDump::default();
        let name = pin::MAP_POLICY;
        let map = self.ebpf().map(name).ok_or_else(|| missing(name))?;
        let rules: LpmTrie<_, PolicyKey, PolicyEntry> = LpmTrie::try_from(map).map_err(err("open", name))?;
        for kv in rules.iter() {
            let (k, v) = kv.map_err(err("dump", name))?;
            d.rules.insert((k.prefix_len(), k.data()), v.policy_slot);
        }
        let name = pin::MAP_IPCACHE;
        let map = self.ebpf().map(name).ok_or_else(|| missing(name))?;
        let ipcache: LpmTrie<_, IpcacheKey, IpcacheEntry> = LpmTrie::try_from(map).map_err(err("open", name))?;
        for kv in ipcache.iter() {
            let (k, v) = kv.map_err(err("dump", name))?;
            let prefix = k.prefix_len().min(32) as u8;
            if let Ok(net) = Ipv4Network::new(Ipv4Addr::from(k.data().addr.to_ne_bytes()), prefix) {
                d.ipcache.insert(net, v.identity);
            }
        }
        Ok(d)
    }
}
