//! Flow events: what the datapath tells the agent about flows it starts,
//! drops or translates, through the `WEIR_FLOWS` ring buffer (issue #13).
//! One event per new flow or drop, never one per packet; a per-CPU rate
//! limit (`FlowRate`) keeps a flood from starving the ring, and what it
//! holds back is counted in `WEIR_FLOW_LOST`.

/// What happened to the flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowVerdict {
    /// A new flow passed (first packet; `policy_slot` says which policy
    /// allowed it, 0: the endpoint enforces no policy in that direction).
    Allowed = 1,
    /// The packet was dropped; `reason` is a `DropReason`.
    Dropped = 2,
    /// A new flow to a Service frontend was sent to a backend
    /// (`xlate_addr`:`xlate_port`).
    Translated = 3,
}

impl FlowVerdict {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allowed),
            2 => Some(Self::Dropped),
            3 => Some(Self::Translated),
            _ => None,
        }
    }
}

/// Which way the packet was going, seen from the pod (or node) endpoint.
pub const FLOW_DIR_UNKNOWN: u8 = 0;
/// Into the endpoint (tc egress of its host veth; NodePort traffic entering the uplink).
pub const FLOW_DIR_INGRESS: u8 = 1;
/// Out of the endpoint (tc ingress of its host veth).
pub const FLOW_DIR_EGRESS: u8 = 2;

/// One ring buffer record. Addresses are network order bytes as on the
/// wire, 16 bytes each: an IPv4 address (`family` 4) in the first four.
/// Ports host order (0 for protocols without ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the event was made.
    pub timestamp_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number (IPv6: the transport header's, past any
    /// extension headers).
    pub protocol: u8,
    /// `FlowVerdict`.
    pub verdict: u8,
    /// `DropReason` for `Dropped`, 0 otherwise.
    pub reason: u8,
    /// `FLOW_DIR_*`.
    pub direction: u8,
    /// The interface the program runs on (a pod's host veth, the uplink).
    pub ifindex: u32,
    /// The policy slot that allowed the flow (0: none enforced).
    pub policy_slot: u32,
    /// For `Translated`: the backend chosen (of the flow's family).
    pub xlate_addr: [u8; 16],
    pub xlate_port: u16,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    pub _pad: [u8; 5],
}

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

impl FlowEvent {
    /// An IPv4 address in an event's 16 bytes.
    pub const fn v4(addr: [u8; 4]) -> [u8; 16] {
        [addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }
}

#[cfg(feature = "user")]
impl FlowEvent {
    fn addr(&self, bytes: [u8; 16]) -> core::net::IpAddr {
        if self.family == FAMILY_IPV6 {
            core::net::Ipv6Addr::from(bytes).into()
        } else {
            core::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
        }
    }
    pub fn source(&self) -> core::net::IpAddr {
        self.addr(self.saddr)
    }
    pub fn destination(&self) -> core::net::IpAddr {
        self.addr(self.daddr)
    }
    pub fn backend(&self) -> core::net::IpAddr {
        self.addr(self.xlate_addr)
    }
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 80);

/// Per-CPU token bucket of the flow events (`WEIR_FLOW_RATE`, one entry):
/// refilled at `rate_per_sec`, at most `burst` tokens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRate {
    /// Nanoseconds per token (1e9 / events per second per CPU); 0: events off.
    pub ns_per_token: u64,
    /// Most tokens the bucket holds.
    pub burst: u64,
    /// Tokens available at `last_ns`, in nanoseconds of credit
    /// (tokens * ns_per_token), so refill needs no division.
    pub credit_ns: u64,
    pub last_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FlowRate>() == 32);

/// Ring buffer size: a power of two pages; 256 KiB holds 2,900 events
/// (80 bytes and the ring's 8-byte header each), a quarter second of a
/// flood at the default rate on two CPUs; the agent drains it every 100 ms,
/// and at once when it is a quarter full.
pub const FLOWS_RING_BYTES: u32 = 256 * 1024;
/// Default events per second per CPU, and burst.
pub const FLOW_RATE_DEFAULT_PER_SEC: u64 = 5_000;
pub const FLOW_RATE_DEFAULT_BURST: u64 = 1_000;
