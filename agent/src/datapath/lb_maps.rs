//! Access to the load-balancer maps behind a trait, so the programmer can be
//! tested against a fake (and a faulty fake) as Cilium tests its LBMaps.
use std::collections::BTreeMap;

use weir_common::lb::{Backend, RevNat, ServiceKey, ServiceValue};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} on map {map}: {reason}")]
pub struct LbMapError {
    pub op: &'static str,
    pub map: &'static str,
    pub reason: String,
}

/// What the maps hold, for restoring IDs after an agent restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbDump {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub rev_nats: BTreeMap<u16, RevNat>,
}

pub trait LbMaps {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), LbMapError>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), LbMapError>;
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), LbMapError>;
    fn delete_backend(&mut self, id: u32) -> Result<(), LbMapError>;
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), LbMapError>;
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), LbMapError>;
    fn dump(&self) -> Result<LbDump, LbMapError>;
}

/// In-memory maps: the reference the programmer is tested against.
#[cfg(test)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeLbMaps {
    pub maps: LbDump,
    /// Number of writes and deletes, to check that unrelated changes touch
    /// nothing.
    pub ops: usize,
}

#[cfg(test)]
impl LbMaps for FakeLbMaps {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), LbMapError> {
        self.ops += 1;
        self.maps.services.insert(key, value);
        Ok(())
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), LbMapError> {
        self.ops += 1;
        self.maps.services.remove(&key);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), LbMapError> {
        self.ops += 1;
        self.maps.backends.insert(id, backend);
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), LbMapError> {
        self.ops += 1;
        self.maps.backends.remove(&id);
        Ok(())
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), LbMapError> {
        self.ops += 1;
        self.maps.rev_nats.insert(id, rev_nat);
        Ok(())
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), LbMapError> {
        self.ops += 1;
        self.maps.rev_nats.remove(&id);
        Ok(())
    }
    fn dump(&self) -> Result<LbDump, LbMapError> {
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
    fn gate(&mut self, op: &'static str) -> Result<(), LbMapError> {
        self.attempts += 1;
        match self.fail_from {
            Some(n) if self.attempts >= n => Err(LbMapError { op, map: "fake", reason: "injected fault".into() }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
impl LbMaps for FaultyLbMaps {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), LbMapError> {
        self.gate("set_service")?;
        self.inner.set_service(key, value)
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), LbMapError> {
        self.gate("delete_service")?;
        self.inner.delete_service(key)
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), LbMapError> {
        self.gate("set_backend")?;
        self.inner.set_backend(id, backend)
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), LbMapError> {
        self.gate("delete_backend")?;
        self.inner.delete_backend(id)
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), LbMapError> {
        self.gate("set_rev_nat")?;
        self.inner.set_rev_nat(id, rev_nat)
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), LbMapError> {
        self.gate("delete_rev_nat")?;
        self.inner.delete_rev_nat(id)
    }
    fn dump(&self) -> Result<LbDump, LbMapError> {
        self.inner.dump()
    }
}
