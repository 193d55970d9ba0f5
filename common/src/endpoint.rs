//! The local endpoint map: one entry per pod interface on this node, written by
//! `weir-cni` at ADD before the datapath program is attached to the pod's host
//! veth, and removed at DEL.

/// Key: the ifindex of the pod's host-side veth (what `skb->ifindex` is when
/// the pod sends a packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub ifindex: u32,
}

/// Value: what the datapath needs to know about the pod behind that veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Pod IPv4 address, network byte order (as it appears in the packet).
    pub ipv4: u32,
    /// `EndpointInfo::FLAG_*` bits.
    pub flags: u32,
}

impl EndpointInfo {
    /// Drop packets from the pod whose source address is not `ipv4`.
    pub const FLAG_VERIFY_SOURCE: u32 = 1 << 0;
    /// Written by weir-cni at ADD for a Kubernetes pod: nothing but ARP
    /// passes until the agent has put the pod's policy in place and clears
    /// the bit, so a pod a policy selects is never open, not even at start.
    pub const FLAG_POLICY_PENDING: u32 = 1 << 1;
    /// A policy selects the pod for ingress: new flows to it are checked.
    pub const FLAG_INGRESS_ENFORCED: u32 = 1 << 2;
    /// A policy selects the pod for egress: new flows from it are checked.
    pub const FLAG_EGRESS_ENFORCED: u32 = 1 << 3;
    /// Either direction enforced: flows are tracked so replies pass.
    pub const FLAGS_ENFORCED: u32 = Self::FLAG_INGRESS_ENFORCED | Self::FLAG_EGRESS_ENFORCED;
    /// The bits the agent owns (weir-cni owns the rest).
    pub const FLAGS_POLICY: u32 = Self::FLAG_POLICY_PENDING | Self::FLAGS_ENFORCED;

    pub const fn new(ipv4_octets: [u8; 4], flags: u32) -> Self {
        Self { ipv4: u32::from_ne_bytes(ipv4_octets), flags }
    }

    pub const fn ipv4_octets(&self) -> [u8; 4] {
        self.ipv4.to_ne_bytes()
    }
}

const _: () = assert!(core::mem::size_of::<EndpointKey>() == 4);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 8);

#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointInfo {}
