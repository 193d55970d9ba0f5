//! IPv6 at a pod's host veth: the source check and NetworkPolicy, as for
//! IPv4 (IPv6 Service translation is the socket hooks' and `lb::tc6`'s,
//! whose parser, `lb::parse6`, walks the same headers). Neighbour discovery always passes: without it the pod
//! cannot even reach its gateway. So does whatever is addressed within the
//! link (link-local unicast, link- and interface-local multicast): the
//! host never forwards it, so it cannot carry traffic between pods, and
//! every pod's kernel sends some (MLD reports, router solicitations). So
//! does an ICMPv6 Packet Too Big: IPv6 routers never fragment, so a path
//! MTU is found only from these, and one dropped stalls a connection.
use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};
use network_types::eth::EthHdr;
use weir_common::{
    DropReason, EndpointInfo,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS},
    lb::{MAX_FRAG_ENTRIES, PROTO_SCTP, PROTO_TCP, PROTO_UDP},
    policy::{DIR_EGRESS, DIR_INGRESS},
};

use crate::{
    counters::{self, TC_OK},
    endpoint,
    packet::{self, Flow, TcpStart},
    policy,
};

const ETH_P_IPV6: u16 = 0x86DD_u16.to_be();
const IP6_OFF: usize = EthHdr::LEN;
const IP6_HDR_LEN: usize = 40;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 router solicitation ..= redirect (RFC 4861).
const NDP_TYPES: core::ops::RangeInclusive<u8> = 133..=137;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Extension headers walked to find the transport header (RFC 8200): at
/// most this many (a packet with more is judged on the header it stops at).
const MAX_EXT_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// The Ethernet and fixed IPv6 headers, read with one helper call.
#[repr(C)]
struct Headers {
    eth: EthHdr,
    ver_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// An IPv6 packet's addresses, and ports for TCP, UDP and SCTP (a later
/// fragment has the ports of its datagram's first fragment, when this hook
/// saw it). Ports in network byte order.
#[derive(Clone, Copy)]
pub struct Flow6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// The transport protocol (the header after any extension headers).
    pub proto: u8,
    pub tcp_flags: u8,
    /// The ICMPv6 type, for ICMPv6.
    pub icmp_type: u8,
}

impl Flow6 {
    /// No IPv6 packet read (an `Option` would copy its undefined payload
    /// around, which the verifier refuses to read).
    pub const NONE: Flow6 =
        Flow6 { saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, proto: 0, tcp_flags: 0, icmp_type: 0 };

    #[inline(always)]
    pub fn is_none(&self) -> bool {
        self.saddr == [0; 16] && self.daddr == [0; 16]
    }
}

/// A fragmented datagram: (source, destination, fragment ID, protocol).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragKey {
    saddr: [u8; 16],
    daddr: [u8; 16],
    id: u32,
    proto: u8,
    _pad: [u8; 3],
}

/// The ports of fragmented IPv6 datagrams, from their first fragment, for
/// the ones that follow (as `packet::WEIR_FRAGS` for IPv4): a policy
/// judging a later fragment by protocol alone would drop it, or pass it
/// where the first was denied. Not pinned.
#[map]
static WEIR_FRAGS6: LruHashMap<FragKey, [u16; 2]> = LruHashMap::with_max_entries(MAX_FRAG_ENTRIES, 0);

/// The key of a fragmented datagram whose addresses are held as words
/// (`lb::tc6`'s), as `parse` keys it.
#[inline(always)]
pub fn frag_key(saddr: &[u32; 4], daddr: &[u32; 4], id: u32, proto: u8) -> FragKey {
    // Safety: plain data, the same 16 bytes either way.
    let (saddr, daddr) = unsafe {
        (core::mem::transmute::<[u32; 4], [u8; 16]>(*saddr), core::mem::transmute::<[u32; 4], [u8; 16]>(*daddr))
    };
    FragKey { saddr, daddr, id, proto, _pad: [0; 3] }
}

/// The ports a fragmented datagram's first fragment recorded (see
/// `WEIR_FRAGS6`), for one of its later fragments.
#[inline(always)]
pub fn frag_ports(key: &FragKey) -> Option<[u16; 2]> {
    // Safety: copied out at once.
    unsafe { WEIR_FRAGS6.get(key) }.copied()
}

/// Records a first fragment's ports for the fragments that follow.
#[inline(always)]
pub fn record_frag(key: &FragKey, ports: &[u16; 2]) {
    // An LRU map evicts instead of failing; a lost entry costs only this
    // datagram.
    let _ = WEIR_FRAGS6.insert(key, ports, 0);
}

/// `Ok(None)`: not IPv6.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Flow6>, DropReason> {
    let Ok(h) = ctx.load::<Headers>(0) else {
        let ether_type = ctx.load::<EthHdr>(0).map_err(|_| DropReason::Malformed)?.ether_type;
        return if ether_type == ETH_P_IPV6 { Err(DropReason::Malformed) } else { Ok(None) };
    };
    if h.eth.ether_type != ETH_P_IPV6 {
        return Ok(None);
    }
    if h.ver_tc_flow[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let mut flow =
        Flow6 { saddr: h.src, daddr: h.dst, sport: 0, dport: 0, proto: h.next_header, tcp_flags: 0, icmp_type: 0 };
    let mut off = IP6_OFF + IP6_HDR_LEN;
    // (fragment ID, whether this is a later fragment), once one is seen.
    let mut fragment: Option<(u32, bool)> = None;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match flow.proto {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let hdr = ctx.load::<[u8; 2]>(off).map_err(|_| DropReason::Malformed)?;
                flow.proto = hdr[0];
                (usize::from(hdr[1]) + 1) * 8
            }
            NEXTHDR_AUTH => {
                let hdr = ctx.load::<[u8; 2]>(off).map_err(|_| DropReason::Malformed)?;
                flow.proto = hdr[0];
                (usize::from(hdr[1]) + 2) * 4
            }
            NEXTHDR_FRAGMENT => {
                let hdr = ctx.load::<[u8; 8]>(off).map_err(|_| DropReason::Malformed)?;
                flow.proto = hdr[0];
                let offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                fragment = Some((u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]), offset != 0));
                8
            }
            _ => break,
        };
        off += len;
    }
    if !matches!(flow.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP | IPPROTO_ICMPV6) {
        return Ok(Some(flow));
    }
    let key =
        fragment.map(|(id, _)| FragKey { saddr: flow.saddr, daddr: flow.daddr, id, proto: flow.proto, _pad: [0; 3] });
    if let (Some(key), Some((_, true))) = (&key, fragment) {
        // A later fragment: no transport header.
        // Safety: copied out at once.
        if let Some(ports) = unsafe { WEIR_FRAGS6.get(key) }.copied() {
            flow.sport = ports[0];
            flow.dport = ports[1];
        }
        return Ok(Some(flow));
    }
    if flow.proto == IPPROTO_ICMPV6 {
        let icmp = ctx.load::<[u8; 6]>(off).map_err(|_| DropReason::Malformed)?;
        flow.icmp_type = icmp[0];
        // An echo's identifier stands in for the ports (as in netfilter's
        // conntrack): the request's as source, the reply's as destination,
        // so a reply matches its request reversed, and each ping session
        // is a flow of its own, judged by the policy in force when it began.
        let id = u16::from_ne_bytes([icmp[4], icmp[5]]);
        match flow.icmp_type {
            ICMPV6_ECHO_REQUEST => flow.sport = id,
            ICMPV6_ECHO_REPLY => flow.dport = id,
            _ => {}
        }
        return Ok(Some(flow));
    }
    let ports = if flow.proto == PROTO_TCP {
        let tcp = ctx.load::<TcpStart>(off).map_err(|_| DropReason::Malformed)?;
        flow.tcp_flags = tcp.flags;
        tcp.ports
    } else {
        ctx.load::<[u16; 2]>(off).map_err(|_| DropReason::Malformed)?
    };
    flow.sport = ports[0];
    flow.dport = ports[1];
    if let Some(key) = &key {
        // An LRU map evicts instead of failing; a lost entry costs only
        // this datagram.
        let _ = WEIR_FRAGS6.insert(key, &ports, 0);
    }
    Ok(Some(flow))
}

/// Whether the kernel took the frame for IPv6 (`skb->protocol`, from the
/// Ethernet header: a field read, no helper call on every packet).
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    // Safety: reading a plain u32 field of the kernel's __sk_buff.
    unsafe { (*ctx.skb.skb).protocol == u32::from(ETH_P_IPV6) }
}

/// For the IPv4 path, which gets every frame `is_ipv6` does not claim:
/// one whose Ethernet header says IPv6 all the same is not passed on
/// unjudged.
#[inline(always)]
pub fn refuse_unjudged(ctx: &TcContext) -> Result<(), DropReason> {
    let ether_type = ctx.load::<EthHdr>(0).map_err(|_| DropReason::Malformed)?.ether_type;
    if ether_type == ETH_P_IPV6 { Err(DropReason::Malformed) } else { Ok(()) }
}

/// The tc verdict for `result` (pass as counted by the caller), a drop
/// counted and told to the flow log with `seen` (the packet as read, if
/// it was), going `dir`.
#[inline(always)]
pub fn finish(ctx: &TcContext, result: Result<i32, DropReason>, seen: &Flow6, dir: u8) -> i32 {
    if seen.is_none() {
        counters::finish(ctx, result, &Flow::NONE, dir)
    } else {
        counters::finish(ctx, result, seen, dir)
    }
}

/// A pod program's IPv6 packet judged by the policy alone, untranslated
/// (see `pod6` for when), counted and reported. See `screen` for `missing`
/// and `leaving`.
#[inline(always)]
pub fn at_pod(ctx: &TcContext, missing: Option<DropReason>, leaving: bool) -> i32 {
    let ifindex = packet::ifindex(ctx);
    let mut seen = Flow6::NONE;
    let result = judge(ctx, ifindex, missing, leaving, &mut seen);
    let dir = if leaving { FLOW_DIR_EGRESS } else { FLOW_DIR_INGRESS };
    let result = result.map(|()| if leaving { counters::pass(TC_OK) } else { TC_OK });
    finish(ctx, result, &seen, dir)
}

/// `screen`, then the pod's policy on the packet as it is.
#[inline(always)]
fn judge(
    ctx: &TcContext,
    ifindex: u32,
    missing: Option<DropReason>,
    leaving: bool,
    seen: &mut Flow6,
) -> Result<(), DropReason> {
    let Some(ep) = screen(ctx, ifindex, missing, leaving, seen)? else { return Ok(()) };
    let dir = if leaving { DIR_EGRESS } else { DIR_INGRESS };
    if policy::active(&ep) && !policy::tracked(ifindex, seen) {
        return policy::check_new(ifindex, &ep, dir, seen, seen);
    }
    Ok(())
}

/// What is decided of an IPv6 packet at a pod's veth (`ifindex`) before
/// Service translation and policy: `Ok(None)`, it passes as it is (not
/// IPv6, within the link, neighbour discovery, Packet Too Big, a veth with
/// no endpoint entry when `missing` is `None`); `Err`, it is dropped (no
/// entry and `missing` says why; policy pending; a spoofed source);
/// `Ok(Some(ep))`, it goes on for the endpoint `ep`. `leaving`: the packet
/// leaves the pod (tc ingress of its veth), whose source must then be the
/// pod's own IPv6 address, as its IPv4 source is checked. `seen` gets the
/// packet once parsed, for the flow log.
#[inline(always)]
pub fn screen(
    ctx: &TcContext,
    ifindex: u32,
    missing: Option<DropReason>,
    leaving: bool,
    seen: &mut Flow6,
) -> Result<Option<EndpointInfo>, DropReason> {
    let Some(flow) = parse(ctx)? else { return Ok(None) };
    *seen = flow;
    if within_link([flow.daddr[0], flow.daddr[1]]) {
        return Ok(None);
    }
    if flow.proto == IPPROTO_ICMPV6 && (NDP_TYPES.contains(&flow.icmp_type) || flow.icmp_type == ICMPV6_PACKET_TOO_BIG)
    {
        return Ok(None);
    }
    let Some(ep) = endpoint::by_ifindex(ifindex) else {
        return match missing {
            Some(reason) => Err(reason),
            None => Ok(None),
        };
    };
    if ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
        return Err(DropReason::PolicyPending);
    }
    // A pod without an IPv6 address has no IPv6 source of its own beyond
    // the link (the host has no rp_filter for IPv6).
    if leaving && ep.flags & EndpointInfo::FLAG_VERIFY_SOURCE != 0 && endpoint::ipv6_of(ifindex) != Some(flow.saddr) {
        return Err(DropReason::SourceSpoofed);
    }
    Ok(Some(ep))
}

/// Whether a destination (its first two bytes) stays on the link:
/// fe80::/10, or multicast (ff00::/8) of interface- or link-local scope.
#[inline(always)]
fn within_link(dst: [u8; 2]) -> bool {
    (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) || (dst[0] == 0xff && matches!(dst[1] & 0x0f, 1 | 2))
}
