//! Access to the load-balancer maps behind a trait, so the programmer can be
//! tested against a fake (failing writes on demand) as Cilium tests its LBMaps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use weir_common::lb::{Backend, RevNat, ServiceKey, ServiceValue};

use crate::datapath::MapError;
#[cfg(test)]
use crate::datapath::fault::Faults;
#[cfg(test)]
use weir_common::pin;

/// What the maps hold, for restoring IDs after an agent restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbDump {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub rev_nats: BTreeMap<u16, RevNat>,
    /// loadBalancerSourceRanges per reverse-NAT ID.
    pub source_ranges: BTreeMap<u16, BTreeSet<Ipv4Network>>,
}

pub trait LbMaps {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapError>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError>;
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapError>;
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError>;
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), MapError>;
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), MapError>;
    fn set_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError>;
    fn delete_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError>;
    /// The address the uplink program SNATs remote-backend flows to, and the
    /// pod gateway address hairpinned flows are SNATed to.
    fn set_node_addrs(&mut self, node: Ipv4Addr, gateway: Ipv4Addr, uplink_ifindex: u32) -> Result<(), MapError>;
    fn dump(&self) -> Result<LbDump, MapError>;
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

#[cfg(test)]
impl LbMaps for FakeLbMaps {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapError> {
        self.write("insert", pin::MAP_SVC)?;
        self.maps.services.insert(key, value);
        Ok(())
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.write("delete", pin::MAP_SVC)?;
        self.maps.services.remove(&key);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapError> {
        self.write("insert", pin::MAP_BACKENDS)?;
        self.maps.backends.insert(id, backend);
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        self.write("delete", pin::MAP_BACKENDS)?;
        self.maps.backends.remove(&id);
        Ok(())
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), MapError> {
        self.write("insert", pin::MAP_REVNAT)?;
        self.maps.rev_nats.insert(id, rev_nat);
        Ok(())
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), MapError> {
        self.write("delete", pin::MAP_REVNAT)?;
        self.maps.rev_nats.remove(&id);
        Ok(())
    }
    fn set_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        self.write("insert", pin::MAP_SRC_RANGES)?;
        self.maps.source_ranges.entry(rev_nat_id).or_default().insert(range);
        Ok(())
    }
    fn delete_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        self.write("delete", pin::MAP_SRC_RANGES)?;
        if let Some(set) = self.maps.source_ranges.get_mut(&rev_nat_id) {
            set.remove(&range);
            if set.is_empty() {
                self.maps.source_ranges.remove(&rev_nat_id);
            }
        }
        Ok(())
    }
    fn set_node_addrs(&mut self, node: Ipv4Addr, gateway: Ipv4Addr, _uplink_ifindex: u32) -> Result<(), MapError> {
        self.write("set", pin::MAP_NODE)?;
        self.node_addrs = Some((node, gateway));
        Ok(())
    }
    fn dump(&self) -> Result<LbDump, MapError> {
        Ok(self.maps.clone())
    }
}
