//! What the datapath does with the policy maps, on a [`DesiredPolicy`]:
//! the same LPM lookups in the same order. For tests (held to the
//! evaluator) and for `inspect policy` (answered from the maps).
use std::net::Ipv4Addr;

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

impl DesiredPolicy {
    /// The ipcache lookup: the longest prefix containing `addr`, `world`
    /// on a miss.
    pub fn identity_of(&self, addr: Ipv4Addr) -> u32 {
        (0..=32).rev().find_map(|len| self.ipcache.get(&prefix_of(addr, len)).copied()).unwrap_or(IDENTITY_WORLD)
    }

    /// The policy map lookup for one identity: the slot of the longest
    /// matching entry. `port` in host byte order. Entries never cut into
    /// the endpoint, identity or direction, so only prefixes from
    /// `PREFIX_ANY_PROTO` are tried.
    pub fn lookup(&self, ifindex: u32, identity: u32, dir: Direction, proto: u8, port: u16) -> Option<u32> {
        let key = PolicyKey { ifindex, identity, dir: dir_code(dir), proto, port: port.to_be() };
        (PolicyKey::PREFIX_ANY_PROTO..=PolicyKey::PREFIX_FULL)
            .rev()
            .find_map(|len| self.rules.get(&(len, masked(key, len))).copied())
    }
}

/// A new flow at endpoint `ifindex` with `peer` (ingress: its source;
/// egress: its destination after Service translation) to destination
/// `port`.
pub fn simulate(
    desired: &DesiredPolicy,
    ifindex: u32,
    dir: Direction,
    peer: Ipv4Addr,
    proto: Protocol,
    port: u16,
) -> Simulated {
    let flags = desired.endpoint_flags.get(&ifindex).copied().unwrap_or(0);
    let identity = desired.identity_of(peer);
    if flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
        return Simulated { enforced: true, pending: true, allowed: false, identity, slot: None };
    }
    let enforced_bit = match dir {
        Direction::Ingress => EndpointInfo::FLAG_INGRESS_ENFORCED,
        Direction::Egress => EndpointInfo::FLAG_EGRESS_ENFORCED,
    };
    if flags & enforced_bit == 0 {
        return Simulated { enforced: false, pending: false, allowed: true, identity, slot: None };
    }
    let slot = desired
        .lookup(ifindex, identity, dir, proto.number(), port)
        .or_else(|| desired.lookup(ifindex, IDENTITY_ANY, dir, proto.number(), port));
    Simulated { enforced: true, pending: false, allowed: slot.is_some(), identity, slot }
}
