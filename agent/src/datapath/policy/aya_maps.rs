//! `PolicyMaps` over the real pinned maps.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, LpmTrie, MapData, PerCpuHashMap, lpm_trie::Key};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use weir_common::{
    EndpointInfo, EndpointKey, pin,
    policy::{EndpointPolicyStats, Ipcache6Key, IpcacheEntry, IpcacheKey, PolicyEntry, PolicyKey},
};

use crate::datapath::{
    Datapath, MapError,
    object_maps::tolerate_missing,
    policy::maps::{PolicyDump, PolicyMaps, RuleKey},
};

/// bpf(2) update flag: only replace an existing entry.
const BPF_EXIST: u64 = 2;

fn ipcache_key(net: Ipv4Network) -> Key<IpcacheKey> {
    Key::new(u32::from(net.prefix()), IpcacheKey { addr: u32::from_ne_bytes(net.network().octets()) })
}

fn ipcache6_key(net: Ipv6Network) -> Key<Ipcache6Key> {
    Key::new(u32::from(net.prefix()), Ipcache6Key { addr: net.network().octets() })
}

fn ipcache_name(net: IpNetwork) -> &'static str {
    if net.is_ipv4() { pin::MAP_IPCACHE } else { pin::MAP_IPCACHE6 }
}

impl Datapath {
    fn rules_mut(&mut self) -> Result<LpmTrie<&mut MapData, PolicyKey, PolicyEntry>, MapError> {
        self.map_as_mut(pin::MAP_POLICY)
    }
    fn ipcache_mut(&mut self) -> Result<LpmTrie<&mut MapData, IpcacheKey, IpcacheEntry>, MapError> {
        self.map_as_mut(pin::MAP_IPCACHE)
    }
    fn ipcache6_mut(&mut self) -> Result<LpmTrie<&mut MapData, Ipcache6Key, IpcacheEntry>, MapError> {
        self.map_as_mut(pin::MAP_IPCACHE6)
    }
}

impl PolicyMaps for Datapath {
    fn set_rule(&mut self, key: RuleKey, slot: u32) -> Result<(), MapError> {
        self.rules_mut()?
            .insert(&Key::new(key.0, key.1), PolicyEntry { policy_slot: slot }, 0)
            .map_err(MapError::aya("insert", pin::MAP_POLICY))
    }
    fn delete_rule(&mut self, key: RuleKey) -> Result<(), MapError> {
        tolerate_missing(self.rules_mut()?.remove(&Key::new(key.0, key.1)))
            .map_err(MapError::aya("delete", pin::MAP_POLICY))
    }
    fn set_identity(&mut self, net: IpNetwork, identity: u32) -> Result<(), MapError> {
        let entry = IpcacheEntry { identity };
        match net {
            IpNetwork::V4(net) => self.ipcache_mut()?.insert(&ipcache_key(net), entry, 0),
            IpNetwork::V6(net) => self.ipcache6_mut()?.insert(&ipcache6_key(net), entry, 0),
        }
        .map_err(MapError::aya("insert", ipcache_name(net)))
    }
    fn delete_identity(&mut self, net: IpNetwork) -> Result<(), MapError> {
        tolerate_missing(match net {
            IpNetwork::V4(net) => self.ipcache_mut()?.remove(&ipcache_key(net)),
            IpNetwork::V6(net) => self.ipcache6_mut()?.remove(&ipcache6_key(net)),
        })
        .map_err(MapError::aya("delete", ipcache_name(net)))
    }
    fn local_endpoints(&self) -> Result<BTreeMap<u32, EndpointInfo>, MapError> {
        let eps: Vec<(EndpointKey, EndpointInfo)> = self.hash_dump(pin::MAP_ENDPOINTS)?;
        Ok(eps.into_iter().map(|(k, v)| (k.ifindex, v)).collect())
    }
    fn local_endpoints6(&self) -> Result<BTreeMap<u32, Ipv6Addr>, MapError> {
        let eps: Vec<(EndpointKey, [u8; 16])> = self.hash_dump(pin::MAP_ENDPOINTS6)?;
        Ok(eps.into_iter().map(|(k, v)| (k.ifindex, Ipv6Addr::from(v))).collect())
    }
    fn set_endpoint_policy_flags(&mut self, ifindex: u32, ip: Ipv4Addr, flags: u32) -> Result<bool, MapError> {
        let name = pin::MAP_ENDPOINTS;
        let mut eps: HashMap<_, EndpointKey, EndpointInfo> = self.map_as_mut(name)?;
        let key = EndpointKey { ifindex };
        let current = match eps.get(&key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(MapError::aya("lookup", name)(e)),
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
            Err(e) => Err(MapError::aya("update", name)(e)),
        }
    }
    fn prune_endpoint_stats(&mut self, keep: &BTreeMap<u32, EndpointInfo>) -> Result<usize, MapError> {
        let name = pin::MAP_EP_POLICY_STATS;
        let mut stats: PerCpuHashMap<_, EndpointKey, EndpointPolicyStats> = self.map_as_mut(name)?;
        let gone: Vec<EndpointKey> =
            stats.keys().filter_map(Result::ok).filter(|k| !keep.contains_key(&k.ifindex)).collect();
        for key in &gone {
            tolerate_missing(stats.remove(key)).map_err(MapError::aya("delete", name))?;
        }
        Ok(gone.len())
    }
    fn dump_policy(&self) -> Result<PolicyDump, MapError> {
        let mut d = PolicyDump::default();
        let name = pin::MAP_POLICY;
        let rules: LpmTrie<_, PolicyKey, PolicyEntry> = self.map_as(name)?;
        for kv in rules.iter() {
            let (k, v) = kv.map_err(MapError::aya("dump", name))?;
            d.rules.insert((k.prefix_len(), k.data()), v.policy_slot);
        }
        let name = pin::MAP_IPCACHE;
        let ipcache: LpmTrie<_, IpcacheKey, IpcacheEntry> = self.map_as(name)?;
        for kv in ipcache.iter() {
            let (k, v) = kv.map_err(MapError::aya("dump", name))?;
            let prefix = k.prefix_len().min(32) as u8;
            if let Ok(net) = Ipv4Network::new(Ipv4Addr::from(k.data().addr.to_ne_bytes()), prefix) {
                d.ipcache.insert(net.into(), v.identity);
            }
        }
        let name = pin::MAP_IPCACHE6;
        let ipcache: LpmTrie<_, Ipcache6Key, IpcacheEntry> = self.map_as(name)?;
        for kv in ipcache.iter() {
            let (k, v) = kv.map_err(MapError::aya("dump", name))?;
            let prefix = k.prefix_len().min(128) as u8;
            if let Ok(net) = Ipv6Network::new(Ipv6Addr::from(k.data().addr), prefix) {
                d.ipcache.insert(net.into(), v.identity);
            }
        }
        Ok(d)
    }
}
