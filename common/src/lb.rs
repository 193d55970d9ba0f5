//! Service load-balancing maps (Cilium's slot layout):
//! - `WEIR_SVC`: (VIP, port, protocol, scope, slot) -> slot 0 holds the
//!   backend count and the Service's settings, slots 1..=count hold backend
//!   IDs. Lookup cost does not depend on the number of Services or backends.
//! - `WEIR_BACKENDS`: backend ID -> address and port.
//! - `WEIR_REVNAT`: reverse-NAT ID -> the frontend to put back on replies.
//! - `WEIR_CT`: connection tracking, so a flow keeps its backend and replies
//!   can be reverse-translated.
//! - `WEIR_AFFINITY`: (client, rev-NAT ID) -> backend for sessionAffinity.
//!
//! Addresses are in network byte order, ports in network byte order, as they
//! sit in packets.
//!
//! IPv6 has its own maps with the same layout (`WEIR_SVC6`, `WEIR_BACKENDS6`,
//! `WEIR_REVNAT6`, `WEIR_AFFINITY6`, `WEIR_SRC_RANGE6`, `WEIR_SOCK_REV6`),
//! as Cilium keeps `lb4_*` and `lb6_*` apart: the IPv4 maps keep their layout
//! on nodes that upgrade, and an IPv4 lookup never pays for 16-byte keys.
//! Backend IDs and rev-NAT IDs come from one ID space for both families, so
//! an ID names one backend (one frontend) whichever map holds it.

// Map capacities (`max_entries`): the kernel crate's `#[map]` definitions
// and the agent read them from here.

/// `WEIR_SVC`: frontend slots (slot 0 and one per backend, of every scope).
pub const MAX_SVC_ENTRIES: u32 = 262_144;
/// `WEIR_BACKENDS`: backends of every Service.
pub const MAX_BACKENDS: u32 = 262_144;
/// `WEIR_REVNAT`: one per frontend (address, port); every `u16` ID.
pub const MAX_REVNAT_ENTRIES: u32 = 65_536;
/// `WEIR_AFFINITY` (LRU): sessionAffinity clients.
pub const MAX_AFFINITY_ENTRIES: u32 = 65_536;
/// `WEIR_SRC_RANGE` (LPM, allocated as used): loadBalancerSourceRanges.
pub const MAX_SRC_RANGE_ENTRIES: u32 = 65_536;
/// `WEIR_CT` (LRU): two entries per translated flow.
pub const MAX_CT_ENTRIES: u32 = 262_144;
/// `WEIR_LOCAL_FLOWS`: TCP connections between pods of one node that go
/// straight from veth to veth (an evicted one goes the kernel's way).
pub const MAX_LOCAL_FLOWS: u32 = 131_072;
/// `WEIR_SOCK_REV` (LRU): one per socket translated at connect time.
pub const MAX_SOCK_REV_ENTRIES: u32 = 262_144;
/// `WEIR_NODE`: an array of one `NodeConfig`.
pub const NODE_CONFIG_ENTRIES: u32 = 1;
/// `WEIR_FRAGS` (LRU, kernel side only, not pinned): the ports of
/// fragmented datagrams in flight.
pub const MAX_FRAG_ENTRIES: u32 = 8192;

/// IP protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Which clients a frontend applies to: `externalTrafficPolicy: Local`
/// frontends have a second, internal set of slots with every endpoint, used
/// for traffic from pods on the node (kube-proxy does the same).
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl ServiceKey {
    pub const fn new(addr: u32, port: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self { addr, port, slot, proto, scope, _pad: [0; 2] }
    }
    pub const fn with_slot(mut self, slot: u16) -> Self {
        self.slot = slot;
        self
    }
}

/// Slot 0: `count` backends, settings in `flags`. Slot n: `backend_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub count: u16,
    pub rev_nat_id: u16,
    pub flags: u16,
    pub _pad: u16,
    /// sessionAffinity timeout in seconds (0: no affinity).
    pub affinity_timeout: u32,
}

impl ServiceValue {
    /// `loadBalancerSourceRanges` apply: the client must match one of the
    /// ranges in `WEIR_SRC_RANGES` for this rev-NAT ID.
    pub const FLAG_SOURCE_RANGES: u16 = 1 << 0;
    /// NodePort frontend (the address is a node address).
    pub const FLAG_NODEPORT: u16 = 1 << 1;
    /// External traffic policy Local: keep the client source address.
    pub const FLAG_LOCAL_ONLY: u16 = 1 << 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

impl Backend {
    /// Terminating but serving: used only when no ready backend exists,
    /// which the agent resolves before writing slots; kept for inspection.
    pub const FLAG_TERMINATING: u8 = 1 << 0;
    /// The backend runs on this node.
    pub const FLAG_LOCAL: u8 = 1 << 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A connection as seen in one direction (client -> frontend for the
/// original direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 2],
}

pub const CT_DIR_ORIGINAL: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;

impl CtKey {
    /// `saddr:sport -> daddr:dport` in the original direction (client to
    /// frontend).
    pub const fn original(saddr: u32, sport: u16, daddr: u32, dport: u16, proto: u8) -> Self {
        Self { saddr, daddr, sport, dport, proto, dir: CT_DIR_ORIGINAL, _pad: [0; 2] }
    }

    /// `saddr:sport -> daddr:dport` in the reply direction (backend to
    /// client, or to the address the client's source became).
    pub const fn reply(saddr: u32, sport: u16, daddr: u32, dport: u16, proto: u8) -> Self {
        Self { saddr, daddr, sport, dport, proto, dir: CT_DIR_REPLY, _pad: [0; 2] }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub flags: u16,
    /// bpf_ktime_get_ns() / 1e9 when the flow was created.
    pub created: u32,
    /// With `FLAG_SNAT`: in the original direction, the address and port the
    /// client's source was rewritten to; in the reply direction, the
    /// client's own address and port to put back.
    pub nat_addr: u32,
    pub nat_port: u16,
    pub _pad: [u8; 6],
}

impl CtEntry {
    /// The flow entered through the node's uplink and its backend is on
    /// another node: the source was rewritten to a node address, so replies
    /// come back here.
    pub const FLAG_SNAT: u16 = 1 << 0;
    /// A pod reaching itself through a Service: the source was rewritten to
    /// the node's pod gateway address (a pod drops packets that claim its
    /// own address as source).
    pub const FLAG_HAIRPIN: u16 = 1 << 1;
    /// The client is a pod on this node: its replies are reverse-translated
    /// as they enter the client's veth (tc egress), after the node's
    /// netfilter has seen them untranslated, so netfilter's own conntrack
    /// sees both directions of one flow instead of two half-flows.
    pub const FLAG_POD_CLIENT: u16 = 1 << 2;
    /// The client sent FIN: the flow ends `CLOSE_GRACE_SECS` after
    /// `created`, which the FIN and every later reply reset (a half-closed
    /// flow lives while the server still sends).
    pub const FLAG_CLOSING: u16 = 1 << 3;
    /// The client sent RST: the flow is over.
    pub const FLAG_RESET: u16 = 1 << 4;

    /// How long a closing flow keeps its translation (the last ACKs and
    /// retransmitted FINs).
    pub const CLOSE_GRACE_SECS: u32 = 10;

    /// Whether the flow is over at `now` (seconds): its entries may be
    /// dropped and its tuple reused for another connection.
    pub const fn is_over(&self, now: u32) -> bool {
        self.flags & Self::FLAG_RESET != 0
            || (self.flags & Self::FLAG_CLOSING != 0 && now.wrapping_sub(self.created) > Self::CLOSE_GRACE_SECS)
    }
}

/// `loadBalancerSourceRanges`: LPM key of (rev-NAT ID, client address);
/// `prefixlen` counts the 32 bits of the ID and padding plus the range's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRangeKey {
    pub rev_nat_id: u16,
    pub _pad: u16,
    pub addr: u32,
}

/// The uplink program's view of its node (an array of one, written by the
/// agent): the address used to SNAT flows sent to remote backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    pub node_addr: u32,
    /// The first address of the node's pod CIDR (every pod's gateway), the
    /// source of hairpinned flows.
    pub gateway_addr: u32,
    /// The uplink's ifindex: packets whose source became a node address are
    /// handed to it directly (the routing input check would drop them as
    /// martians: their source is local).
    pub uplink_ifindex: u32,
    /// The pod CIDR's netmask (network order): a destination outside it is
    /// no pod of this node. 0 from an agent that did not write it: any
    /// destination may be.
    pub pod_mask: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: u32,
    pub rev_nat_id: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub last_seen: u32,
}

/// Socket-level translation memory: (socket cookie, backend) -> frontend,
/// so recvmsg and getpeername show the application the Service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<RevNat>() == 8);
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 24);
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 8);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 8);

/// An IPv6 address as four 32-bit words, each holding 4 bytes of the address
/// in network order (what `bpf_sock_addr.user_ip6[]` holds and what a
/// program reads from a packet 4 bytes at a time).
pub type Ip6 = [u32; 4];

/// The words of an IPv6 address given as its 16 bytes.
pub const fn ip6_from_octets(o: [u8; 16]) -> Ip6 {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The 16 bytes of an IPv6 address given as words.
pub const fn ip6_octets(w: Ip6) -> [u8; 16] {
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

/// `WEIR_SVC6`: `ServiceKey` for an IPv6 frontend; the value is a
/// `ServiceValue`, slots as for IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub addr: Ip6,
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl ServiceKey6 {
    pub const fn new(addr: Ip6, port: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self { addr, port, slot, proto, scope, _pad: [0; 2] }
    }
    pub const fn with_slot(mut self, slot: u16) -> Self {
        self.slot = slot;
        self
    }
}

/// `WEIR_BACKENDS6`: backend ID -> IPv6 backend (flags as `Backend`'s).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend6 {
    pub addr: Ip6,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// `WEIR_REVNAT6`: rev-NAT ID -> the IPv6 frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat6 {
    pub addr: Ip6,
    pub port: u16,
    pub _pad: u16,
}

/// `WEIR_SRC_RANGE6`: LPM key of (rev-NAT ID, client IPv6 address);
/// `prefixlen` counts the 32 bits of the ID and padding plus the range's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRangeKey6 {
    pub rev_nat_id: u16,
    pub _pad: u16,
    pub addr: Ip6,
}

/// `WEIR_AFFINITY6`: (IPv6 client, rev-NAT ID) -> `AffinityValue`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey6 {
    pub client: Ip6,
    pub rev_nat_id: u16,
    pub _pad: u16,
}

/// `WEIR_SOCK_REV6`: (socket cookie, IPv6 backend) -> `RevNat6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey6 {
    pub cookie: u64,
    pub addr: Ip6,
    pub port: u16,
    pub _pad: [u8; 6],
}

/// `WEIR_CT6`: an IPv6 connection in one direction (as `CtKey`); the
/// value is a `CtEntry`. Of its NAT fields only `nat_port` is used, by
/// flows SNATed to a remote backend through the uplink: the SNAT port in
/// the original entry, the client's port in the reply entry (the client's
/// address is in `WEIR_SNAT6`, the node's in `WEIR_UPLINK6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    pub saddr: Ip6,
    pub daddr: Ip6,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 2],
}

impl CtKey6 {
    /// `saddr:sport -> daddr:dport` in the original direction.
    pub const fn original(saddr: Ip6, sport: u16, daddr: Ip6, dport: u16, proto: u8) -> Self {
        Self { saddr, daddr, sport, dport, proto, dir: CT_DIR_ORIGINAL, _pad: [0; 2] }
    }

    /// `saddr:sport -> daddr:dport` in the reply direction (backend to
    /// client).
    pub const fn reply(saddr: Ip6, sport: u16, daddr: Ip6, dport: u16, proto: u8) -> Self {
        Self { saddr, daddr, sport, dport, proto, dir: CT_DIR_REPLY, _pad: [0; 2] }
    }
}

/// `WEIR_NODE6` (an array of one, written by the agent): what the IPv6
/// per-packet path needs of its node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig6 {
    /// The first address of the node's IPv6 pod CIDR (every pod's IPv6
    /// gateway): the source of hairpinned IPv6 flows. All zero: not set
    /// (no hairpin).
    pub gateway: Ip6,
}

const _: () = assert!(core::mem::size_of::<NodeConfig6>() == 16);
const _: () = assert!(core::mem::size_of::<CtKey6>() == 40);
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 24);
const _: () = assert!(core::mem::size_of::<Backend6>() == 20);
const _: () = assert!(core::mem::size_of::<RevNat6>() == 20);
const _: () = assert!(core::mem::size_of::<SourceRangeKey6>() == 20);
const _: () = assert!(core::mem::size_of::<AffinityKey6>() == 20);
const _: () = assert!(core::mem::size_of::<SockRevKey6>() == 32);

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for RevNat6 {}
    unsafe impl aya::Pod for SourceRangeKey6 {}
    unsafe impl aya::Pod for AffinityKey6 {}
    unsafe impl aya::Pod for SockRevKey6 {}
    unsafe impl aya::Pod for CtKey6 {}
    unsafe impl aya::Pod for NodeConfig6 {}
    unsafe impl aya::Pod for Uplink6 {}
    unsafe impl aya::Pod for Nat6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip6_words_keep_network_order_in_memory() {
        let o = [0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        let w = ip6_from_octets(o);
        // In memory the words are the address's bytes in order, as the
        // kernel's user_ip6[] and a packet's header hold them.
        assert_eq!(w[0].to_ne_bytes(), [0xfd, 0, 0, 0x10]);
        assert_eq!(ip6_octets(w), o);
    }
}

/// `WEIR_UPLINK6` (an array of one, written by the agent): what the IPv6
/// uplink path needs of its node. Its own map rather than more fields in
/// `NodeConfig6`, so that a node's pinned `WEIR_NODE6` keeps its layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Uplink6 {
    /// The node's IPv6 InternalIP: the source of flows SNATed to a remote
    /// backend, and what tells a NodePort reply (to be sent out of the
    /// uplink) from one of an external or load-balancer IP. All zero: not
    /// set (no SNAT: flows to remote backends are dropped).
    pub node_addr: Ip6,
    /// The interface holding it, which packets whose source became a node
    /// address are handed to.
    pub ifindex: u32,
    pub _pad: u32,
}

/// `WEIR_SNAT6` (LRU, as big as `WEIR_CT6`): for an IPv6 flow SNATed to a
/// remote backend, keyed by its reply-direction `CtKey6`, the client's
/// address and port to put back on replies (`CtEntry::nat_addr` has room
/// for an IPv4 address only, and growing every `WEIR_CT6` entry for the
/// few SNATed flows would cost every pod client's flow too).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Nat6 {
    pub addr: Ip6,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<Uplink6>() == 24);
const _: () = assert!(core::mem::size_of::<Nat6>() == 20);
