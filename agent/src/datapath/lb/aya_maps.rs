//! `LbMaps` over the real pinned maps.
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, LpmTrie, lpm_trie::Key};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use weir_common::{
    lb::{
        Backend, Backend6, NodeConfig, NodeConfig6, RevNat, RevNat6, ServiceKey, ServiceKey6, ServiceValue,
        SourceRangeKey, SourceRangeKey6, Uplink6, ip6_from_octets, ip6_octets,
    },
    pin,
};

use crate::datapath::{
    Datapath, MapError,
    lb::maps::{BackendEntry, LbDump, LbMaps, RevNatEntry, SvcKey, pod_gateway},
    object_maps::tolerate_missing,
};
use crate::model::service::Family;

/// LPM key: 32 bits of rev-NAT ID and padding, then the range's prefix.
fn range_key(rev_nat_id: u16, range: Ipv4Network) -> Key<SourceRangeKey> {
    Key::new(
        32 + u32::from(range.prefix()),
        SourceRangeKey { rev_nat_id, _pad: 0, addr: u32::from_ne_bytes(range.network().octets()) },
    )
}

/// As `range_key`, for an IPv6 range.
fn range_key6(rev_nat_id: u16, range: Ipv6Network) -> Key<SourceRangeKey6> {
    Key::new(
        32 + u32::from(range.prefix()),
        SourceRangeKey6 { rev_nat_id, _pad: 0, addr: ip6_from_octets(range.network().octets()) },
    )
}

impl LbMaps for Datapath {
    fn set_service(&mut self, key: SvcKey, value: ServiceValue) -> Result<(), MapError> {
        match key {
            SvcKey::V4(k) => self.hash_insert(pin::MAP_SVC, k, value),
            SvcKey::V6(k) => self.hash_insert(pin::MAP_SVC6, k, value),
        }
    }
    fn delete_service(&mut self, key: SvcKey) -> Result<(), MapError> {
        match key {
            SvcKey::V4(k) => self.hash_delete::<ServiceKey, ServiceValue>(pin::MAP_SVC, k),
            SvcKey::V6(k) => self.hash_delete::<ServiceKey6, ServiceValue>(pin::MAP_SVC6, k),
        }
    }
    fn set_backend(&mut self, id: u32, backend: BackendEntry) -> Result<(), MapError> {
        match backend {
            BackendEntry::V4(b) => self.hash_insert(pin::MAP_BACKENDS, id, b),
            BackendEntry::V6(b) => self.hash_insert(pin::MAP_BACKENDS6, id, b),
        }
    }
    fn delete_backend(&mut self, id: u32, family: Family) -> Result<(), MapError> {
        match family {
            Family::Ipv4 => self.hash_delete::<u32, Backend>(pin::MAP_BACKENDS, id),
            Family::Ipv6 => self.hash_delete::<u32, Backend6>(pin::MAP_BACKENDS6, id),
        }
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNatEntry) -> Result<(), MapError> {
        match rev_nat {
            RevNatEntry::V4(r) => self.hash_insert(pin::MAP_REVNAT, id, r),
            RevNatEntry::V6(r) => self.hash_insert(pin::MAP_REVNAT6, id, r),
        }
    }
    fn delete_rev_nat(&mut self, id: u16, family: Family) -> Result<(), MapError> {
        match family {
            Family::Ipv4 => self.hash_delete::<u16, RevNat>(pin::MAP_REVNAT, id),
            Family::Ipv6 => self.hash_delete::<u16, RevNat6>(pin::MAP_REVNAT6, id),
        }
    }
    fn set_source_range(&mut self, rev_nat_id: u16, range: IpNetwork) -> Result<(), MapError> {
        match range {
            IpNetwork::V4(r) => {
                let name = pin::MAP_SRC_RANGES;
                let mut trie: LpmTrie<_, SourceRangeKey, u8> = self.map_as_mut(name)?;
                trie.insert(&range_key(rev_nat_id, r), 1, 0).map_err(MapError::aya("insert", name))
            }
            IpNetwork::V6(r) => {
                let name = pin::MAP_SRC_RANGES6;
                let mut trie: LpmTrie<_, SourceRangeKey6, u8> = self.map_as_mut(name)?;
                trie.insert(&range_key6(rev_nat_id, r), 1, 0).map_err(MapError::aya("insert", name))
            }
        }
    }
    fn delete_source_range(&mut self, rev_nat_id: u16, range: IpNetwork) -> Result<(), MapError> {
        match range {
            IpNetwork::V4(r) => {
                let name = pin::MAP_SRC_RANGES;
                let mut trie: LpmTrie<_, SourceRangeKey, u8> = self.map_as_mut(name)?;
                tolerate_missing(trie.remove(&range_key(rev_nat_id, r))).map_err(MapError::aya("delete", name))
            }
            IpNetwork::V6(r) => {
                let name = pin::MAP_SRC_RANGES6;
                let mut trie: LpmTrie<_, SourceRangeKey6, u8> = self.map_as_mut(name)?;
                tolerate_missing(trie.remove(&range_key6(rev_nat_id, r))).map_err(MapError::aya("delete", name))
            }
        }
    }
    fn set_node_addrs(&mut self, node: Ipv4Addr, pod_cidr: Ipv4Network, uplink_ifindex: u32) -> Result<(), MapError> {
        let name = pin::MAP_NODE;
        let mut arr: Array<_, NodeConfig> = self.map_as_mut(name)?;
        let cfg = NodeConfig {
            node_addr: u32::from_ne_bytes(node.octets()),
            gateway_addr: u32::from_ne_bytes(pod_gateway(pod_cidr).octets()),
            uplink_ifindex,
            pod_mask: u32::from_ne_bytes(pod_cidr.mask().octets()),
        };
        arr.set(0, cfg, 0).map_err(MapError::aya("set", name))
    }
    fn set_node_gateway6(&mut self, gateway: Ipv6Addr) -> Result<(), MapError> {
        let name = pin::MAP_NODE6;
        let mut arr: Array<_, NodeConfig6> = self.map_as_mut(name)?;
        arr.set(0, NodeConfig6 { gateway: ip6_from_octets(gateway.octets()) }, 0).map_err(MapError::aya("set", name))
    }
    fn set_uplink6(&mut self, node: Ipv6Addr, uplink_ifindex: u32) -> Result<(), MapError> {
        let name = pin::MAP_UPLINK6;
        let mut arr: Array<_, Uplink6> = self.map_as_mut(name)?;
        let cfg = Uplink6 { node_addr: ip6_from_octets(node.octets()), ifindex: uplink_ifindex, _pad: 0 };
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
                d.source_ranges.entry(data.rev_nat_id).or_default().insert(IpNetwork::V4(net));
            }
        }
        let name = pin::MAP_SRC_RANGES6;
        let trie: LpmTrie<_, SourceRangeKey6, u8> = self.map_as(name)?;
        for key in trie.keys() {
            let key = key.map_err(MapError::aya("dump", name))?;
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(32).min(128) as u8;
            if let Ok(net) = Ipv6Network::new(Ipv6Addr::from(ip6_octets(data.addr)), prefix) {
                d.source_ranges.entry(data.rev_nat_id).or_default().insert(IpNetwork::V6(net));
            }
        }
        d.services = self.hash_dump(pin::MAP_SVC)?;
        d.backends = self.hash_dump(pin::MAP_BACKENDS)?;
        d.rev_nats = self.hash_dump(pin::MAP_REVNAT)?;
        d.services6 = self.hash_dump(pin::MAP_SVC6)?;
        d.backends6 = self.hash_dump(pin::MAP_BACKENDS6)?;
        d.rev_nats6 = self.hash_dump(pin::MAP_REVNAT6)?;
        Ok(d)
    }
}
