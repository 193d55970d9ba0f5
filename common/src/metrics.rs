//! Datapath counters: a per-CPU array indexed by `DropReason`, so that "why was
//! this packet dropped" has an answer without logging per packet.

/// Why the datapath dropped a packet. The discriminant is the index in the
/// `DROPS` per-CPU array; index 0 counts packets that passed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a drop: packets the program let through.
    Passed = 0,
    /// The packet came from a pod veth with no endpoint entry (fail closed).
    UnknownEndpoint = 1,
    /// The pod sent an IPv4 packet with a source address that is not its own.
    SourceSpoofed = 2,
    /// The IPv4 header was truncated or had a bad version or header length.
    Malformed = 3,
    /// The packet went to a Service with no usable backend; the client was
    /// sent ICMP port unreachable.
    NoBackend = 4,
    /// A NAT rewrite or checksum update failed in the kernel.
    RewriteFailed = 5,
    /// The client is outside the Service's loadBalancerSourceRanges.
    SourceRange = 6,
    /// externalTrafficPolicy: Local and no endpoint on this node.
    NoLocalBackend = 7,
    /// No free source port to SNAT a flow to a remote backend.
    SnatExhausted = 8,
    /// The pod's policy was not in place yet (just after its CNI ADD).
    PolicyPending = 9,
    /// A NetworkPolicy isolates the destination pod for ingress and no
    /// rule allows the flow.
    PolicyIngress = 10,
    /// A NetworkPolicy isolates the source pod for egress and no rule
    /// allows the flow.
    PolicyEgress = 11,
    /// Weir before IPv6 NetworkPolicy dropped all IPv6 of a pod a policy
    /// selected. No longer produced (IPv6 is judged by the policy like
    /// IPv4); kept so that the reasons keep their numbers and the pinned
    /// counters their size across an upgrade.
    Ipv6UnderPolicy = 12,
}

impl DropReason {
    /// Number of slots in the counters array.
    pub const COUNT: u32 = 13;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::Passed,
        DropReason::UnknownEndpoint,
        DropReason::SourceSpoofed,
        DropReason::Malformed,
        DropReason::NoBackend,
        DropReason::RewriteFailed,
        DropReason::SourceRange,
        DropReason::NoLocalBackend,
        DropReason::SnatExhausted,
        DropReason::PolicyPending,
        DropReason::PolicyIngress,
        DropReason::PolicyEgress,
        DropReason::Ipv6UnderPolicy,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Passed => "passed",
            DropReason::UnknownEndpoint => "unknown-endpoint",
            DropReason::SourceSpoofed => "source-spoofed",
            DropReason::Malformed => "malformed",
            DropReason::NoBackend => "service-no-backend",
            DropReason::RewriteFailed => "rewrite-failed",
            DropReason::SourceRange => "source-range",
            DropReason::NoLocalBackend => "no-local-backend",
            DropReason::SnatExhausted => "snat-exhausted",
            DropReason::PolicyPending => "policy-pending",
            DropReason::PolicyIngress => "policy-denied-ingress",
            DropReason::PolicyEgress => "policy-denied-egress",
            DropReason::Ipv6UnderPolicy => "ipv6-under-policy",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            DropReason::Passed => "packets the datapath let through",
            DropReason::UnknownEndpoint => "the packet came from a pod interface weir has no endpoint entry for",
            DropReason::SourceSpoofed => "the pod sent a packet whose source IP is not the pod's own address",
            DropReason::Malformed => "the IPv4 header was truncated or had a bad version or header length",
            DropReason::NoBackend => {
                "the Service has no ready (or serving) endpoint; the client got ICMP port unreachable"
            }
            DropReason::RewriteFailed => "rewriting the packet for a Service failed in the kernel",
            DropReason::SourceRange => "the client is outside the Service's loadBalancerSourceRanges",
            DropReason::NoLocalBackend => {
                "externalTrafficPolicy: Local and no ready endpoint on this node (as kube-proxy, dropped)"
            }
            DropReason::SnatExhausted => "no free source port to translate a flow to a backend on another node",
            DropReason::PolicyPending => "the pod had just started and its NetworkPolicy was not in place yet",
            DropReason::PolicyIngress => {
                "a NetworkPolicy isolates the destination pod for ingress and no rule allows this flow"
            }
            DropReason::PolicyEgress => {
                "a NetworkPolicy isolates the source pod for egress and no rule allows this flow"
            }
            DropReason::Ipv6UnderPolicy => {
                "IPv6 of a pod under NetworkPolicy, dropped by a weir older than IPv6 policy (no longer produced)"
            }
        }
    }
}
