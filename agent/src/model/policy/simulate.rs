//! What the datapath does with the policy maps: the same LPM lookups in the
//! same order, on any [`PolicyMaps`]. One copy in user space: the tests
//! feed it a [`DesiredPolicy`] (held to the evaluator), `inspect verdict`
//! feeds it the pinned maps.
use std::net::IpAddr;

use weir_common::{
    EndpointInfo,
    policy::{IDENTITY_ANY, IDENTITY_WORLD, PolicyKey},
};

use super::{
    compile::DesiredPolicy,
    evaluate::Direction,
    identity::prefix_of,
    keys::{dir_code, masked},
};
use crate::model::service::Protocol;

/// Where the policy maps are read from: the three lookups the datapath
/// makes, each as the kernel's map answers it.
pub trait PolicyMaps {
    /// The endpoint's flags (0: no such endpoint).
    fn endpoint_flags(&self, ifindex: u32) -> u32;
    /// The ipcache of `addr`'s family: the identity of the longest prefix
    /// containing `addr`.
    fn ipcache(&self, addr: IpAddr) -> Option<u32>;
    /// The policy map: the slot of the longest entry matching the full
    /// `key` (port in network byte order).
    fn policy(&self, key: PolicyKey) -> Option<u32>;
}

/// The datapath's answer for a new flow at one endpoint in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Simulated {
    /// The direction is checked (or the endpoint is pending).
    pub enforced: bool,
    /// Policy pending: everything is dropped.
    pub pending: bool,
    pub allowed: bool,
    /// The peer's identity (looked up even when not enforced).
    pub identity: u32,
    /// The slot of the entry that allowed it, when one did.
    pub slot: Option<u32>,
}

impl PolicyMaps for DesiredPolicy {
    fn endpoint_flags(&self, ifindex: u32) -> u32 {
        self.endpoint_flags.get(&ifindex).copied().unwrap_or(0)
    }

    fn ipcache(&self, addr: IpAddr) -> Option<u32> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (0..=bits).rev().find_map(|len| self.ipcache.get(&prefix_of(addr, len)).copied())
    }

    /// Entries never cut into the endpoint, identity or direction, so only
    /// prefixes from `PREFIX_ANY_PROTO` are tried.
    fn policy(&self, key: PolicyKey) -> Option<u32> {
        (PolicyKey::PREFIX_ANY_PROTO..=PolicyKey::PREFIX_FULL)
            .rev()
            .find_map(|len| self.rules.get(&(len, masked(key, len))).copied())
    }
}

impl DesiredPolicy {
    /// The ipcache lookup: the longest prefix containing `addr`, `world`
    /// on a miss.
    pub fn identity_of(&self, addr: impl Into<IpAddr>) -> u32 {
        identity_of(self, addr.into())
    }
}

/// The ipcache lookup: `world` on a miss.
pub fn identity_of<M: PolicyMaps + ?Sized>(maps: &M, addr: IpAddr) -> u32 {
    maps.ipcache(addr).unwrap_or(IDENTITY_WORLD)
}

/// The policy map lookup for one identity. `port` in host byte order.
pub fn lookup<M: PolicyMaps + ?Sized>(
    maps: &M,
    ifindex: u32,
    identity: u32,
    dir: Direction,
    proto: u8,
    port: u16,
) -> Option<u32> {
    maps.policy(PolicyKey { ifindex, identity, dir: dir_code(dir), proto, port: port.to_be() })
}

/// A new flow at endpoint `ifindex` with `peer` (ingress: its source;
/// egress: its destination after Service translation) to destination
/// `port`.
pub fn simulate<M: PolicyMaps + ?Sized>(
    maps: &M,
    ifindex: u32,
    dir: Direction,
    peer: impl Into<IpAddr>,
    proto: Protocol,
    port: u16,
) -> Simulated {
    let flags = maps.endpoint_flags(ifindex);
    let identity = identity_of(maps, peer.into());
    if flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
        return Simulated { enforced: true, pending: true, allowed: false, identity, slot: None };
    }
    if flags & enforced_flag(dir) == 0 {
        return Simulated { enforced: false, pending: false, allowed: true, identity, slot: None };
    }
    let slot = lookup(maps, ifindex, identity, dir, proto.number(), port)
        .or_else(|| lookup(maps, ifindex, IDENTITY_ANY, dir, proto.number(), port));
    Simulated { enforced: true, pending: false, allowed: slot.is_some(), identity, slot }
}

/// The endpoint flag that says `dir` is checked.
pub const fn enforced_flag(dir: Direction) -> u32 {
    match dir {
        Direction::Ingress => EndpointInfo::FLAG_INGRESS_ENFORCED,
        Direction::Egress => EndpointInfo::FLAG_EGRESS_ENFORCED,
    }
}
