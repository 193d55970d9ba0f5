//! `LbMaps` over the real pinned maps.
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use ipnetwork::Ipv4Network;
use weir_common::{
    lb::{Backend, NodeConfig, RevNat, ServiceKey, ServiceValue, SourceRangeKey},
    pin,
};

use crate::datapath::{
    Datapath, MapError,
    lb::maps::{LbDump, LbMaps},
};

fn err(op: &'static str, map: &'static str) -> impl Fn(aya::maps::MapError) -> MapError {
    move |e| MapError { op, map, reason: e.to_string() }
}

impl Datapath {
    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, MapError> {
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| MapError {
            op: "open",
            map: name,
            reason: "not in the eBPF object".into(),
        })?;
        HashMap::try_from(map).map_err(err("open", name))
    }

    fn hash_map_ref<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<HashMap<&MapData, K, V>, MapError> {
        let map = self.ebpf().map(name).ok_or_else(|| MapError {
            op: "open",
            map: name,
            reason: "not in the eBPF object".into(),
        })?;
        HashMap::try_from(map).map_err(err("open", name))
    }
}

/// LPM key: 32 bits of rev-NAT ID and padding, then the range's prefix.
fn range_key(rev_nat_id: u16, range: Ipv4Network) -> Key<SourceRangeKey> {
    Key::new(
        32 + u32::from(range.prefix()),
        SourceRangeKey { rev_nat_id, _pad: 0, addr: u32::from_ne_bytes(range.network().octets()) },
    )
}

/// Deleting what is already gone is not an error: deletes are retried after
/// partial failures.
fn tolerate_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

impl LbMaps for Datapath {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapError> {
        self.hash_map(pin::MAP_SVC)?.insert(key, value, 0).map_err(err("insert", pin::MAP_SVC))
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        let mut m: HashMap<_, ServiceKey, ServiceValue> = self.hash_map(pin::MAP_SVC)?;
        tolerate_missing(m.remove(&key)).map_err(err("delete", pin::MAP_SVC))
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapError> {
        self.hash_map(pin::MAP_BACKENDS)?.insert(id, backend, 0).map_err(err("insert", pin::MAP_BACKENDS))
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        let mut m: HashMap<_, u32, Backend> = self.hash_map(pin::MAP_BACKENDS)?;
        tolerate_missing(m.remove(&id)).map_err(err("delete", pin::MAP_BACKENDS))
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), MapError> {
        self.hash_map(pin::MAP_REVNAT)?.insert(id, rev_nat, 0).map_err(err("insert", pin::MAP_REVNAT))
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), MapError> {
        let mut m: HashMap<_, u16, RevNat> = self.hash_map(pin::MAP_REVNAT)?;
        tolerate_missing(m.remove(&id)).map_err(err("delete", pin::MAP_REVNAT))
    }
    fn set_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        let name = pin::MAP_SRC_RANGES;
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| MapError {
            op: "open",
            map: name,
            reason: "missing".into(),
        })?;
        let mut trie: LpmTrie<_, SourceRangeKey, u8> = LpmTrie::try_from(map).map_err(err("open", name))?;
        trie.insert(&range_key(rev_nat_id, range), 1, 0).map_err(err("insert", name))
    }
    fn delete_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        let name = pin::MAP_SRC_RANGES;
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| MapError {
            op: "open",
            map: name,
            reason: "missing".into(),
        })?;
        let mut trie: LpmTrie<_, SourceRangeKey, u8> = LpmTrie::try_from(map).map_err(err("open", name))?;
        tolerate_missing(trie.remove(&range_key(rev_nat_id, range))).map_err(err("delete", name))
    }
    fn set_node_addrs(&mut self, node: Ipv4Addr, gateway: Ipv4Addr, uplink_ifindex: u32) -> Result<(), MapError> {
        let name = pin::MAP_NODE;
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| MapError {
            op: "open",
            map: name,
            reason: "missing".into(),
        })?;
        let mut arr: Array<_, NodeConfig> = Array::try_from(map).map_err(err("open", name))?;
        let cfg = NodeConfig {
            node_addr: u32::from_ne_bytes(node.octets()),
            gateway_addr: u32::from_ne_bytes(gateway.octets()),
            uplink_ifindex,
            _pad: 0,
        };
        arr.set(0, cfg, 0).map_err(err("set", name))
    }
    fn dump(&self) -> Result<LbDump, MapError> {
        let mut d = LbDump::default();
        let name = pin::MAP_SRC_RANGES;
        let map = self.ebpf().map(name).ok_or_else(|| MapError { op: "open", map: name, reason: "missing".into() })?;
        let trie: LpmTrie<_, SourceRangeKey, u8> = LpmTrie::try_from(map).map_err(err("open", name))?;
        for key in trie.keys() {
            let key = key.map_err(err("dump", name))?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32).min(32) as u8;
            if let Ok(net) = Ipv4Network::new(Ipv4Addr::from(data.addr.to_ne_bytes()), prefix) {
                d.source_ranges.entry(data.rev_nat_id).or_default().insert(net);
            }
        }
        let svc: HashMap<_, ServiceKey, ServiceValue> = self.hash_map_ref(pin::MAP_SVC)?;
        for kv in svc.iter() {
            let (k, v) = kv.map_err(err("dump", pin::MAP_SVC))?;
            d.services.insert(k, v);
        }
        let backends: HashMap<_, u32, Backend> = self.hash_map_ref(pin::MAP_BACKENDS)?;
        for kv in backends.iter() {
            let (k, v) = kv.map_err(err("dump", pin::MAP_BACKENDS))?;
            d.backends.insert(k, v);
        }
        let rev: HashMap<_, u16, RevNat> = self.hash_map_ref(pin::MAP_REVNAT)?;
        for kv in rev.iter() {
            let (k, v) = kv.map_err(err("dump", pin::MAP_REVNAT))?;
            d.rev_nats.insert(k, v);
        }
        Ok(d)
    }
}
