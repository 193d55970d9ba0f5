//! NetworkPolicy maps: the ipcache (address -> identity), the per-endpoint
//! policy (what an endpoint may exchange with which identity on which
//! port), the policy conntrack (so replies of allowed flows pass) and the
//! verdict counters.
//!
//! Both LPM tries are keyed as `aya` LPM keys: a `u32` prefix length in
//! bits, then the data below, matched from its first byte's high bit.

/// Policy keys only: every peer (a rule with no `from`/`to`).
pub const IDENTITY_ANY: u32 = 0;
/// What an address the ipcache has no entry for is (the agent always
/// writes `0.0.0.0/0`, so this is a safety net).
pub const IDENTITY_WORLD: u32 = 1;
/// The first identity the agent hands out.
pub const IDENTITY_FIRST_DYNAMIC: u32 = 256;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Data of an ipcache key: an IPv4 prefix, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheKey {
    pub addr: u32,
}

/// Data of an IPv6 ipcache key (`WEIR_IPCACHE6`): an IPv6 prefix, as in
/// the packet. The value is the same `IpcacheEntry`: identities are shared
/// by both families (a pod's addresses of both are one identity unless
/// ipBlocks set them apart).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipcache6Key {
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpcacheEntry {
    pub identity: u32,
}

/// Data of a policy key. Field order is prefix order: endpoint, peer
/// identity and direction are always matched in full; then the protocol
/// (prefix `PREFIX_ANY_PROTO` leaves it out), then the port's leading bits
/// (`PREFIX_ANY_PORT` + n matches the first n bits of the port, so an
/// `endPort` range is a few prefixes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The endpoint's host-side veth.
    pub ifindex: u32,
    /// The peer's identity, or `IDENTITY_ANY`.
    pub identity: u32,
    /// `DIR_*`.
    pub dir: u8,
    pub proto: u8,
    /// Destination port, network byte order.
    pub port: u16,
}

impl PolicyKey {
    /// Bits of ifindex, identity and direction.
    pub const PREFIX_ANY_PROTO: u32 = 72;
    /// ... and the protocol.
    pub const PREFIX_ANY_PORT: u32 = 80;
    pub const PREFIX_FULL: u32 = 96;
}

/// Which policy allowed it: the slot the agent gave the policy (also the
/// index of its hit counter). Slot 0 is the agent's own rule letting the
/// pod's node reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    pub policy_slot: u32,
}

pub const POLICY_SLOT_OWN_NODE: u32 = 0;
/// Capacity of the per-policy hit counters (slots 1..).
pub const MAX_POLICY_SLOTS: u32 = 16_384;
/// Capacity of the policy LPM trie (allocated as used).
pub const MAX_POLICY_ENTRIES: u32 = 262_144;
/// Capacity of the ipcache LPM trie (pods of the cluster, nodes, ipBlocks).
pub const MAX_IPCACHE_ENTRIES: u32 = 524_288;
/// Capacity of the policy conntrack (LRU): flows allowed at an endpoint.
pub const MAX_POLICY_CT_ENTRIES: u32 = 262_144;
/// Capacity of the IPv6 ipcache (LPM, allocated as used).
pub const MAX_IPCACHE6_ENTRIES: u32 = 524_288;
/// Capacity of the IPv6 policy conntrack (LRU, allocated up front: a
/// quarter of IPv4's, ~6 MiB of kernel memory on every node, IPv4-only
/// ones too).
pub const MAX_POLICY_CT6_ENTRIES: u32 = 65_536;

/// A flow as one endpoint saw it allowed: `ifindex` is the endpoint, the
/// tuple is the packet that created the entry. A packet matching it as is
/// or reversed is part of an allowed flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyCtKey {
    pub ifindex: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// `PolicyCtKey` for IPv6 flows (`WEIR_POLICY_CT6`), same value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyCt6Key {
    pub ifindex: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyCtEntry {
    /// Seconds (monotonic clock) of the last packet, refreshed at most once
    /// a second.
    pub last_seen: u32,
    /// The policy slot that allowed the flow.
    pub policy_slot: u32,
}

impl PolicyCtEntry {
    /// An idle TCP flow is forgotten after this long. A new connection
    /// (SYN without ACK) is always checked against the policy, whatever
    /// the entry says.
    pub const TCP_IDLE_SECS: u32 = 600;
    pub const OTHER_IDLE_SECS: u32 = 60;
}

/// Per-endpoint verdicts on new flows (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicyStats {
    pub ingress_allowed: u64,
    pub ingress_denied: u64,
    pub egress_allowed: u64,
    pub egress_denied: u64,
}

const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 4);
const _: () = assert!(core::mem::size_of::<IpcacheEntry>() == 4);
const _: () = assert!(core::mem::size_of::<Ipcache6Key>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyCt6Key>() == 44);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);
const _: () = assert!(core::mem::size_of::<PolicyEntry>() == 4);
const _: () = assert!(core::mem::size_of::<PolicyCtKey>() == 20);
const _: () = assert!(core::mem::size_of::<PolicyCtEntry>() == 8);
const _: () = assert!(core::mem::size_of::<EndpointPolicyStats>() == 32);

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    unsafe impl aya::Pod for IpcacheKey {}
    unsafe impl aya::Pod for IpcacheEntry {}
    unsafe impl aya::Pod for Ipcache6Key {}
    unsafe impl aya::Pod for PolicyCt6Key {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyEntry {}
    unsafe impl aya::Pod for PolicyCtKey {}
    unsafe impl aya::Pod for PolicyCtEntry {}
    unsafe impl aya::Pod for EndpointPolicyStats {}
}
