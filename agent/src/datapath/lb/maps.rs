//! Access to the load-balancer maps behind a trait, so the programmer can be
//! tested against a fake (failing writes on demand) as Cilium tests its LBMaps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network};
use weir_common::lb::{Backend, Backend6, RevNat, RevNat6, ServiceKey, ServiceKey6, ServiceValue};

use crate::model::service::Family;

use crate::datapath::MapError;
#[cfg(test)]
use crate::datapath::fault::Faults;
#[cfg(test)]
use weir_common::pin;

/// A key of either family's Service map (`WEIR_SVC`, `WEIR_SVC6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SvcKey {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl SvcKey {
    pub const fn with_slot(self, slot: u16) -> Self {
        match self {
            SvcKey::V4(k) => SvcKey::V4(k.with_slot(slot)),
            SvcKey::V6(k) => SvcKey::V6(k.with_slot(slot)),
        }
    }
    pub const fn slot(&self) -> u16 {
        match self {
            SvcKey::V4(k) => k.slot,
            SvcKey::V6(k) => k.slot,
        }
    }
}

/// A backend of either family (`WEIR_BACKENDS`, `WEIR_BACKENDS6`); IDs
/// from one space, so an ID is in one of the maps only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendEntry {
    V4(Backend),
    V6(Backend6),
}

impl BackendEntry {
    pub const fn family(&self) -> Family {
        match self {
            BackendEntry::V4(_) => Family::Ipv4,
            BackendEntry::V6(_) => Family::Ipv6,
        }
    }
}

/// A frontend to put back on replies, of either family (`WEIR_REVNAT`,
/// `WEIR_REVNAT6`); IDs from one space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevNatEntry {
    V4(RevNat),
    V6(RevNat6),
}

/// What the maps hold, for restoring IDs after an agent restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbDump {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub rev_nats: BTreeMap<u16, RevNat>,
    pub services6: BTreeMap<ServiceKey6, ServiceValue>,
    pub backends6: BTreeMap<u32, Backend6>,
    pub rev_nats6: BTreeMap<u16, RevNat6>,
    /// loadBalancerSourceRanges per reverse-NAT ID (a rev-NAT ID is of one
    /// family, so are its ranges).
    pub source_ranges: BTreeMap<u16, BTreeSet<IpNetwork>>,
}

pub trait LbMaps {
    fn set_service(&mut self, key: SvcKey, value: ServiceValue) -> Result<(), MapError>;
    fn delete_service(&mut self, key: SvcKey) -> Result<(), MapError>;
    fn set_backend(&mut self, id: u32, backend: BackendEntry) -> Result<(), MapError>;
    fn delete_backend(&mut self, id: u32, family: Family) -> Result<(), MapError>;
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNatEntry) -> Result<(), MapError>;
    fn delete_rev_nat(&mut self, id: u16, family: Family) -> Result<(), MapError>;
    /// Into the map of the range's family.
    fn set_source_range(&mut self, rev_nat_id: u16, range: IpNetwork) -> Result<(), MapError>;
    fn delete_source_range(&mut self, rev_nat_id: u16, range: IpNetwork) -> Result<(), MapError>;
    /// The address the uplink program SNATs remote-backend flows to, and the
    /// pod gateway address hairpinned flows are SNATed to.
    /// The node's address, its pod CIDR (the first address is every pod's
    /// gateway) and its uplink.
    fn set_node_addrs(&mut self, node: Ipv4Addr, pod_cidr: Ipv4Network, uplink_ifindex: u32) -> Result<(), MapError>;
    /// The node's IPv6 pod gateway (the first address of its IPv6 pod
    /// CIDR): the source of hairpinned IPv6 flows.
    fn set_node_gateway6(&mut self, gateway: Ipv6Addr) -> Result<(), MapError>;
    /// The node's IPv6 address (the source of IPv6 flows SNATed to remote
    /// backends, and the NodePort address whose replies go straight out)
    /// and the uplink holding it.
    fn set_uplink6(&mut self, node: Ipv6Addr, uplink_ifindex: u32) -> Result<(), MapError>;
    fn dump(&self) -> Result<LbDump, MapError>;
}

/// Every pod's gateway: the first address of the pod CIDR.
pub fn pod_gateway(pod_cidr: Ipv4Network) -> Ipv4Addr {
    pod_cidr.nth(1).unwrap_or(pod_cidr.network())
}

/// In-memory maps: the reference the programmer is tested against, with
/// writes failing as `faults` says, for error paths.
#[cfg(test)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeLbMaps {
    pub maps: LbDump,
    /// Number of writes and deletes that went through, to check that
    /// unrelated changes touch nothing.
    pub ops: usize,
    pub node_addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    pub gateway6: Option<Ipv6Addr>,
    pub uplink6: Option<(Ipv6Addr, u32)>,
    pub faults: Faults,
}

#[cfg(test)]
impl FakeLbMaps {
    fn write(&mut self, op: &'static str, map: &'static str) -> Result<(), MapError> {
        self.faults.write(op, map)?;
        self.ops += 1;
        Ok(())
    }
}

/// The pinned map a source range of this family goes to.
#[cfg(test)]
fn ranges_map(range: &IpNetwork) -> &'static str {
    match range {
        IpNetwork::V4(_) => pin::MAP_SRC_RANGES,
        IpNetwork::V6(_) => pin::MAP_SRC_RANGES6,
    }
}

#[cfg(test)]
impl LbMaps for FakeLbMaps {
    fn set_service(&mut self, key: SvcKey, value: ServiceValue) -> Result<(), MapError> {
        match key {
            SvcKey::V4(k) => {
                self.write("insert", pin::MAP_SVC)?;
                self.maps.services.insert(k, value);
            }
            SvcKey::V6(k) => {
                self.write("insert", pin::MAP_SVC6)?;
                self.maps.services6.insert(k, value);
            }
        }
        Ok(())
    }
    fn delete_service(&mut self, key: SvcKey) -> Result<(), MapError> {
        match key {
            SvcKey::V4(k) => {
                self.write("delete", pin::MAP_SVC)?;
                self.maps.services.remove(&k);
            }
            SvcKey::V6(k) => {
                self.write("delete", pin::MAP_SVC6)?;
                self.maps.services6.remove(&k);
            }
        }
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: BackendEntry) -> Result<(), MapError> {
        match backend {
            BackendEntry::V4(b) => {
                self.write("insert", pin::MAP_BACKENDS)?;
                self.maps.backends.insert(id, b);
            }
            BackendEntry::V6(b) => {
                self.write("insert", pin::MAP_BACKENDS6)?;
                self.maps.backends6.insert(id, b);
            }
        }
        Ok(())
    }
    fn delete_backend(&mut self, id: u32, family: Family) -> Result<(), MapError> {
        match family {
            Family::Ipv4 => {
                self.write("delete", pin::MAP_BACKENDS)?;
                self.maps.backends.remove(&id);
            }
            Family::Ipv6 => {
                self.write("delete", pin::MAP_BACKENDS6)?;
                self.maps.backends6.remove(&id);
            }
        }
        Ok(())
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNatEntry) -> Result<(), MapError> {
        match rev_nat {
            RevNatEntry::V4(r) => {
                self.write("insert", pin::MAP_REVNAT)?;
                self.maps.rev_nats.insert(id, r);
            }
            RevNatEntry::V6(r) => {
                self.write("insert", pin::MAP_REVNAT6)?;
                self.maps.rev_nats6.insert(id, r);
            }
        }
        Ok(())
    }
    fn delete_rev_nat(&mut self, id: u16, family: Family) -> Result<(), MapError> {
        match family {
            Family::Ipv4 => {
                self.write("delete", pin::MAP_REVNAT)?;
                self.maps.rev_nats.remove(&id);
            }
            Family::Ipv6 => {
                self.write("delete", pin::MAP_REVNAT6)?;
                self.maps.rev_nats6.remove(&id);
            }
        }
        Ok(())
    }
    fn set_source_range(&mut self, rev_nat_id: u16, range: IpNetwork) -> Result<(), MapError> {
        self.write("insert", ranges_map(&range))?;
        self.maps.source_ranges.entry(rev_nat_id).or_default().insert(range);
        Ok(())
    }
    fn delete_source_range(&mut self, rev_nat_id: u16, range: IpNetwork) -> Result<(), MapError> {
        self.write("delete", ranges_map(&range))?;
        if let Some(set) = self.maps.source_ranges.get_mut(&rev_nat_id) {
            set.remove(&range);
            if set.is_empty() {
                self.maps.source_ranges.remove(&rev_nat_id);
            }
        }
        Ok(())
    }
    fn set_node_addrs(&mut self, node: Ipv4Addr, pod_cidr: Ipv4Network, _uplink_ifindex: u32) -> Result<(), MapError> {
        self.write("set", pin::MAP_NODE)?;
        self.node_addrs = Some((node, pod_gateway(pod_cidr)));
        Ok(())
    }
    fn set_node_gateway6(&mut self, gateway: Ipv6Addr) -> Result<(), MapError> {
        self.write("set", pin::MAP_NODE6)?;
        self.gateway6 = Some(gateway);
        Ok(())
    }
    fn set_uplink6(&mut self, node: Ipv6Addr, uplink_ifindex: u32) -> Result<(), MapError> {
        self.write("set", pin::MAP_UPLINK6)?;
        self.uplink6 = Some((node, uplink_ifindex));
        Ok(())
    }
    fn dump(&self) -> Result<LbDump, MapError> {
        Ok(self.maps.clone())
    }
}
