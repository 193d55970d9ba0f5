//! Access to the NetworkPolicy maps behind a trait, so the programmer's
//! write order can be tested against a fake (failing writes on demand).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;
use weir_common::{EndpointInfo, policy::PolicyKey};

use crate::datapath::MapError;
#[cfg(test)]
use crate::datapath::fault::Faults;
#[cfg(test)]
use weir_common::pin;

/// A policy map entry: (prefix length, key).
pub type RuleKey = (u32, PolicyKey);

/// What the maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDump {
    pub rules: BTreeMap<RuleKey, u32>,
    /// Both ipcaches (IPv4 and IPv6 prefixes).
    pub ipcache: BTreeMap<IpNetwork, u32>,
}

pub trait PolicyMaps {
    fn set_rule(&mut self, key: RuleKey, slot: u32) -> Result<(), MapError>;
    fn delete_rule(&mut self, key: RuleKey) -> Result<(), MapError>;
    /// In the ipcache of `net`'s family.
    fn set_identity(&mut self, net: IpNetwork, identity: u32) -> Result<(), MapError>;
    fn delete_identity(&mut self, net: IpNetwork) -> Result<(), MapError>;
    /// The local endpoints weir-cni wrote: ifindex -> entry.
    fn local_endpoints(&self) -> Result<BTreeMap<u32, EndpointInfo>, MapError>;
    /// Their IPv6 addresses (`WEIR_ENDPOINTS6`): ifindex -> address.
    fn local_endpoints6(&self) -> Result<BTreeMap<u32, Ipv6Addr>, MapError>;
    /// Replaces the policy bits of an existing endpoint entry (never
    /// creates one: a pod deleted meanwhile stays deleted). `Ok(false)` when
    /// the entry is gone or holds another address (the interface index was
    /// reused by a new pod).
    fn set_endpoint_policy_flags(&mut self, ifindex: u32, ip: Ipv4Addr, flags: u32) -> Result<bool, MapError>;
    fn dump_policy(&self) -> Result<PolicyDump, MapError>;
    /// Drops the verdict counters of endpoints that are gone (the kernel
    /// creates them on an endpoint's first verdict; nothing else removes
    /// them). Returns how many went.
    fn prune_endpoint_stats(&mut self, keep: &BTreeMap<u32, EndpointInfo>) -> Result<usize, MapError>;
}

/// In-memory maps: the reference the programmer is tested against, with
/// writes failing as `faults` says, for error paths.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub struct FakePolicyMaps {
    pub maps: PolicyDump,
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub endpoints6: BTreeMap<u32, Ipv6Addr>,
    /// Every write and delete that went through, in order (for order and
    /// "touches nothing else" checks).
    pub log: Vec<String>,
    pub faults: Faults,
}

#[cfg(test)]
impl PolicyMaps for FakePolicyMaps {
    fn set_rule(&mut self, key: RuleKey, slot: u32) -> Result<(), MapError> {
        self.faults.write("insert", pin::MAP_POLICY)?;
        self.log.push(format!("rule+ {}/{:?} {slot}", key.0, key.1));
        self.maps.rules.insert(key, slot);
        Ok(())
    }
    fn delete_rule(&mut self, key: RuleKey) -> Result<(), MapError> {
        self.faults.write("delete", pin::MAP_POLICY)?;
        self.log.push(format!("rule- {}/{:?}", key.0, key.1));
        self.maps.rules.remove(&key);
        Ok(())
    }
    fn set_identity(&mut self, net: IpNetwork, identity: u32) -> Result<(), MapError> {
        self.faults.write("insert", if net.is_ipv4() { pin::MAP_IPCACHE } else { pin::MAP_IPCACHE6 })?;
        self.log.push(format!("ip+ {net} {identity}"));
        self.maps.ipcache.insert(net, identity);
        Ok(())
    }
    fn delete_identity(&mut self, net: IpNetwork) -> Result<(), MapError> {
        self.faults.write("delete", if net.is_ipv4() { pin::MAP_IPCACHE } else { pin::MAP_IPCACHE6 })?;
        self.log.push(format!("ip- {net}"));
        self.maps.ipcache.remove(&net);
        Ok(())
    }
    fn local_endpoints(&self) -> Result<BTreeMap<u32, EndpointInfo>, MapError> {
        Ok(self.endpoints.clone())
    }
    fn local_endpoints6(&self) -> Result<BTreeMap<u32, Ipv6Addr>, MapError> {
        Ok(self.endpoints6.clone())
    }
    fn set_endpoint_policy_flags(&mut self, ifindex: u32, ip: Ipv4Addr, flags: u32) -> Result<bool, MapError> {
        self.faults.write("update", pin::MAP_ENDPOINTS)?;
        self.log.push(format!("ep {ifindex} {flags:#x}"));
        match self.endpoints.get_mut(&ifindex) {
            Some(ep) if ep.ipv4_octets() == ip.octets() => {
                ep.flags = (ep.flags & !EndpointInfo::FLAGS_POLICY) | (flags & EndpointInfo::FLAGS_POLICY);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    fn dump_policy(&self) -> Result<PolicyDump, MapError> {
        Ok(self.maps.clone())
    }
    fn prune_endpoint_stats(&mut self, _keep: &BTreeMap<u32, EndpointInfo>) -> Result<usize, MapError> {
        Ok(0)
    }
}
