//! Access to the load-balancer maps behind a trait, so the programmer can be
//! tested against a fake (and a faulty fake) as Cilium tests its LBMaps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use weir_common::lb::{Backend, RevNat, ServiceKey, ServiceValue};

use crate::datapath::MapError;

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

/// In-memory maps: the reference the programmer is tested against.
#[cfg(test)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeLbMaps {
    pub maps: LbDump,
    /// Number of writes and deletes, to check that unrelated changes touch
    /// nothing.
    pub ops: usize,
    pub node_addrs: Option<(Ipv4Addr, Ipv4Addr)>,
}

#[cfg(test)]
impl LbMaps for FakeLbMaps {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapError> {
        self.ops += 1;
        self.maps.services.insert(key, value);
        Ok(())
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.ops += 1;
        self.maps.services.remove(&key);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapError> {
        self.ops += 1;
        self.maps.backends.insert(id, backend);
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        self.ops += 1;
        self.maps.backends.remove(&id);
        Ok(())
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), MapError> {
        self.ops += 1;
        self.maps.rev_nats.insert(id, rev_nat);
        Ok(())
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), MapError> {
        self.ops += 1;
        self.maps.rev_nats.remove(&id);
        Ok(())
    }
    fn set_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        self.ops += 1;
        self.maps.source_ranges.entry(rev_nat_id).or_default().insert(range);
        Ok(())
    }
    fn delete_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        self.ops += 1;
        if let Some(set) = self.maps.source_ranges.get_mut(&rev_nat_id) {
            set.remove(&range);
            if set.is_empty() {
                self.maps.source_ranges.remove(&rev_nat_id);
            }
        }
        Ok(())
    }
    fn set_node_addrs(&mut self, node: Ipv4Addr, gateway: Ipv4Addr, _uplink_ifindex: u32) -> Result<(), MapError> {
        self.ops += 1;
        self.node_addrs = Some((node, gateway));
        Ok(())
    }
    fn dump(&self) -> Result<LbDump, MapError> {
        Ok(self.maps.clone())
    }
}

/// A fake whose every operation from the `fail_from`-th on fails (until
/// `fail_from` is cleared), for error paths.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FaultyLbMaps {
    pub inner: FakeLbMaps,
    pub fail_from: Option<usize>,
    pub attempts: usize,
}

#[cfg(test)]
impl FaultyLbMaps {
    fn gate(&mut self, op: &'static str) -> Result<(), MapError> {
        self.attempts += 1;
        match self.fail_from {
            Some(n) if self.attempts >= n => Err(MapError { op, map: "fake", reason: "injected fault".into() }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
impl LbMaps for FaultyLbMaps {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapError> {
        self.gate("set_service")?;
        self.inner.set_service(key, value)
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.gate("delete_service")?;
        self.inner.delete_service(key)
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), MapError> {
        self.gate("set_backend")?;
        self.inner.set_backend(id, backend)
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        self.gate("delete_backend")?;
        self.inner.delete_backend(id)
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), MapError> {
        self.gate("set_rev_nat")?;
        self.inner.set_rev_nat(id, rev_nat)
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), MapError> {
        self.gate("delete_rev_nat")?;
        self.inner.delete_rev_nat(id)
    }
    fn set_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        self.gate("set_source_range")?;
        self.inner.set_source_range(rev_nat_id, range)
    }
    fn delete_source_range(&mut self, rev_nat_id: u16, range: Ipv4Network) -> Result<(), MapError> {
        self.gate("delete_source_range")?;
        self.inner.delete_source_range(rev_nat_id, range)
    }
    fn set_node_addrs(&mut self, node: Ipv4Addr, gateway: Ipv4Addr, uplink_ifindex: u32) -> Result<(), MapError> {
        self.gate("set_node_addrs")?;
        self.inner.set_node_addrs(node, gateway, uplink_ifindex)
    }
    fn dump(&self) -> Result<LbDump, MapError> {
        self.inner.dump()
    }
}
