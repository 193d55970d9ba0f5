//! `LbMaps` over the real pinned maps.
use std::net::Ipv4Addr;

use aya::maps::{Array, LpmTrie, lpm_trie::Key};
use ipnetwork::Ipv4Network;
use weir_common::{
    lb::{Backend, NodeConfig, RevNat, ServiceKey, ServiceValue, SourceRangeKey},
    pin,
};

use crate::datapath::{
    Datapath, MapError,
    lb::maps::{LbDump, LbMaps},
    object_maps::tolerate_missing,
};

/// LPM key: 32 bits of rev-NAT ID and padding, then the range's prefix.
fn range_key(rev_nat_id: u16, range: Ipv4Network) -> Key<SourceRangeKey> {
    Key::new(
        32 + u32::from(range.prefix()),
        SourceRangeKey { rev_nat_id, _pad: 0, addr: u32::from_ne_bytes(range.network().octets()) },
    )
}

impl LbMaps for Datapath {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapError> {
        self.hash_insert(pin::MAP_SVC, key, value)
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.hash_delete::<ServiceKey, ServiceValue>(pin::MAP_SVC, key)
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapError> {
        self.hash_insert(pin::MAP_BACKENDS, id, backend)
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        self.hash_delete::<u32, Backend>(pin::MAP_BACKENDS, id)
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), MapError> {
        self.hash_insert(pin::MAP_REVNAT, id, rev_nat)
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), MapError> {
        self.hash_delete::<u16, RevNat>(pin::MAP_REVNAT, id)
    }
    fn set_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        let name = pin::MAP_SRC_RANGES;
        let mut trie: LpmTrie<_, SourceRangeKey, u8> = self.map_as_mut(name)?;
        trie.insert(&range_key(rev_nat_id, range), 1, 0).map_err(MapError::aya("insert", name))
    }
    fn delete_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        let name = pin::MAP_SRC_RANGES;
        let mut trie: LpmTrie<_, SourceRangeKey, u8> = self.map_as_mut(name)?;
        tolerate_missing(trie.remove(&range_key(rev_nat_id, range))).map_err(MapError::aya("delete", name))
    }
    fn set_node_addrs(&mut self, node: Ipv4Addr, gateway: Ipv4Addr, uplink_ifindex: u32) -> Result<(), MapError> {
        let name = pin::MAP_NODE;
        let mut arr: Array<_, NodeConfig> = self.map_as_mut(name)?;
        let cfg = NodeConfig {
            node_addr: u32::from_ne_bytes(node.octets()),
            gateway_addr: u32::from_ne_bytes(gateway.octets()),
            uplink_ifindex,
            _pad: 0,
        };
        arr.set(0, cfg, 0).map_err(MapError::aya("set", name))
    }
    fn dump(&self) -> Result<LbDump, MapError> {
        let mut d = LbDump::default();
        let name = pin::MAP_SRC_RANGES;
        let trie: LpmTrie<_, SourceRangeKey, u8> = self.map_as(name)?;
        for key in trie.keys() {
            let key = key.map_err(MapError::aya("dump", name))?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32).min(32) as u8;
            if let Ok(net) = Ipv4Network::new(Ipv4Addr::from(data.addr.to_ne_bytes()), prefix) {
                d.source_ranges.entry(data.rev_nat_id).or_default().insert(net);
            }
        }
        d.services = self.hash_dump(pin::MAP_SVC)?;
        d.backends = self.hash_dump(pin::MAP_BACKENDS)?;
        d.rev_nats = self.hash_dump(pin::MAP_REVNAT)?;
        Ok(d)
    }
}
