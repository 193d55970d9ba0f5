//! Policy map keys: what a rule's `ports` become as LPM prefixes over
//! (protocol, destination port), and keys cut to a prefix length exactly as
//! the kernel's LPM trie compares them.
use weir_common::policy::{DIR_EGRESS, DIR_INGRESS, PolicyKey};

use super::{
    evaluate::Direction,
    types::{PolicyPort, PortRef},
};
use crate::model::service::Protocol;

/// A rule entry of the policy map: (prefix length in bits, key).
pub type RuleKey = (u32, PolicyKey);

pub const fn dir_code(dir: Direction) -> u8 {
    match dir {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

/// What one entry of a rule's `ports` allows, before peers are known.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// Every protocol and port (a rule with no `ports`).
    AnyProto,
    /// The ports of `proto` whose first `bits` bits are those of `port`
    /// (`bits` 0: every port of the protocol, 16: exactly `port`).
    Prefix { proto: Protocol, port: u16, bits: u8 },
    /// A container port name: resolved on the destination pod.
    Named { proto: Protocol, name: String },
}

impl PortMatch {
    /// What a rule's `ports` allow, as the evaluator reads them: empty is
    /// every port; a range is split into the fewest prefixes covering it.
    pub fn of_rule(ports: &[PolicyPort]) -> Vec<PortMatch> {
        if ports.is_empty() {
            return vec![PortMatch::AnyProto];
        }
        let mut out = Vec::new();
        for p in ports {
            let proto = p.protocol;
            match (&p.port, p.end_port) {
                (None, _) => out.push(PortMatch::Prefix { proto, port: 0, bits: 0 }),
                (Some(PortRef::Number(start)), Some(end)) => {
                    out.extend(port_prefixes(*start, end).into_iter().map(|(port, bits)| PortMatch::Prefix {
                        proto,
                        port,
                        bits,
                    }))
                }
                (Some(PortRef::Number(port)), None) => out.push(PortMatch::Prefix { proto, port: *port, bits: 16 }),
                // endPort with a name is invalid upstream; the evaluator
                // ignores it, and so does this.
                (Some(PortRef::Name(name)), _) => out.push(PortMatch::Named { proto, name: name.clone() }),
            }
        }
        out
    }
}

/// The fewest (port, prefix bits) covering `lo..=hi` exactly (none when
/// `hi < lo`): from `lo`, each step takes the largest aligned block that
/// still ends within the range.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        let mut size: u32 = if lo == 0 { 1 << 16 } else { 1 << lo.trailing_zeros() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

/// A policy entry for an exact port, a port prefix or the whole protocol.
pub fn port_entry(ifindex: u32, identity: u32, dir: Direction, proto: Protocol, port: u16, bits: u8) -> RuleKey {
    let len = PolicyKey::PREFIX_ANY_PORT + u32::from(bits.min(16));
    let key = PolicyKey { ifindex, identity, dir: dir_code(dir), proto: proto.number(), port: port.to_be() };
    (len, masked(key, len))
}

/// A policy entry for every protocol and port.
pub fn any_proto_entry(ifindex: u32, identity: u32, dir: Direction) -> RuleKey {
    let len = PolicyKey::PREFIX_ANY_PROTO;
    (len, PolicyKey { ifindex, identity, dir: dir_code(dir), proto: 0, port: 0 })
}

/// The key with every bit past `len` cleared, compared as the kernel does:
/// the key's bytes in memory order, each from its high bit.
pub fn masked(key: PolicyKey, len: u32) -> PolicyKey {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&key.ifindex.to_ne_bytes());
    bytes[4..8].copy_from_slice(&key.identity.to_ne_bytes());
    bytes[8] = key.dir;
    bytes[9] = key.proto;
    // Already network byte order: its memory bytes are the port's, high first.
    bytes[10..12].copy_from_slice(&key.port.to_ne_bytes());
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len.min(96)) };
    let bytes = (u128::from_be_bytes(bytes) & mask).to_be_bytes();
    PolicyKey {
        ifindex: u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        identity: u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        dir: bytes[8],
        proto: bytes[9],
        port: u16::from_ne_bytes([bytes[10], bytes[11]]),
    }
}
