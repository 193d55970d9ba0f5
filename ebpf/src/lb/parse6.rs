//! What the IPv6 Service paths (`tc6`, `netdev6`) read of a packet: its
//! addresses, and TCP, UDP or SCTP ports found behind up to four extension
//! headers, as `ipv6::parse` (the policy's parser) finds them: hop-by-hop,
//! destination options, a routing header with no segments left, and a
//! fragment header. Its transport header's offset goes with it, so every
//! rewrite lands where that header really is.
//!
//! Not walked (the packet is then no Service's here, and goes on as it is):
//! a routing header with segments left (the destination is a waypoint, and
//! the transport checksum covers the final one, not the header's), the
//! authentication header (it covers the addresses: a translated packet
//! would fail it), and anything past four headers.
use aya_ebpf::programs::TcContext;
use network_types::eth::EthHdr;
use weir_common::lb::{Ip6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::packet::TcpStart;

pub const IP6_OFF: usize = EthHdr::LEN;
/// Right after the fixed header: where the transport header of a packet
/// without extension headers is.
pub const L4_OFF: usize = IP6_OFF + 40;
const MAX_EXT_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
const FRAG_HDR_LEN: usize = 8;

/// The fixed IPv6 header.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ip6Hdr {
    vtcfl: [u8; 4],
    _payload_len: [u8; 2],
    next_header: u8,
    _hop_limit: u8,
    src: Ip6,
    dst: Ip6,
}

/// An IPv6 TCP, UDP or SCTP packet, addresses and ports in network order.
#[derive(Clone, Copy)]
pub struct Flow6 {
    pub saddr: Ip6,
    pub daddr: Ip6,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// Where the transport header starts (`L4_OFF`, or past extension
    /// headers); 0 for a later fragment, which has none (its ports are its
    /// first fragment's).
    pub l4_off: u16,
}

impl Flow6 {
    /// Nothing read yet.
    pub const NONE: Flow6 =
        Flow6 { saddr: [0; 4], daddr: [0; 4], sport: 0, dport: 0, proto: 0, tcp_flags: 0, l4_off: 0 };
}

/// The packet into `flow`, if it is IPv6 carrying TCP, UDP or SCTP behind
/// at most the extension headers the module names; whether it is. A
/// fragmented datagram's first fragment records its ports for the ones
/// that follow, which get them back (`ipv6::frag_ports`), as the IPv4 path
/// does: every fragment must be translated alike. Into `flow`, fields
/// plain (an `Option` would copy its undefined payload, which the verifier
/// refuses). Its own frame: the walk's state stays off the callers'.
#[inline(never)]
pub(crate) fn parse(ctx: &TcContext, flow: &mut Flow6) -> bool {
    // The frame's type as the kernel took it (`skb->protocol`, a field
    // read), not a helper call for the Ethernet header: each call here is
    // paid on every packet of every IPv6 Service flow, twice.
    if !crate::ipv6::is_ipv6(ctx) {
        return false;
    }
    let Ok(ip) = ctx.load::<Ip6Hdr>(IP6_OFF) else { return false };
    if ip.vtcfl[0] >> 4 != 6 {
        return false;
    }
    (flow.saddr, flow.daddr, flow.tcp_flags) = (ip.src, ip.dst, 0);
    let mut proto = ip.next_header;
    let mut off = L4_OFF;
    let mut fragmented = false;
    let mut frag_id = 0u32;
    for _ in 0..MAX_EXT_HEADERS {
        match proto {
            NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING => {
                // Next header, length in 8-byte units past the first 8;
                // for routing, its type and the segments left.
                let Ok(h) = ctx.load::<[u8; 4]>(off) else { return false };
                if proto == NEXTHDR_ROUTING && h[3] != 0 {
                    return false;
                }
                proto = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let Ok(h) = ctx.load::<[u8; FRAG_HDR_LEN]>(off) else { return false };
                proto = h[0];
                (fragmented, frag_id) = (true, u32::from_ne_bytes([h[4], h[5], h[6], h[7]]));
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    // A later fragment: no transport header.
                    flow.proto = proto;
                    return matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && later_fragment(flow, frag_id);
                }
                off += FRAG_HDR_LEN;
            }
            _ => break,
        }
    }
    if !matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        return false;
    }
    // Ports and, for TCP, flags with one call.
    let ports = if proto == PROTO_TCP {
        let Ok(tcp) = ctx.load::<TcpStart>(off) else { return false };
        flow.tcp_flags = tcp.flags;
        tcp.ports
    } else {
        let Ok(ports) = ctx.load::<[u16; 2]>(off) else { return false };
        ports
    };
    (flow.proto, flow.sport, flow.dport, flow.l4_off) = (proto, ports[0], ports[1], off as u16);
    if fragmented {
        first_fragment(flow, frag_id);
    }
    true
}

/// A later fragment of datagram `id` (`flow`'s addresses and protocol
/// read) gets the ports its first fragment recorded; whether it had some.
/// Its own frame, as the fragment key is 40 bytes.
#[inline(never)]
fn later_fragment(flow: &mut Flow6, id: u32) -> bool {
    let key = crate::ipv6::frag_key(&flow.saddr, &flow.daddr, id, flow.proto);
    let Some(ports) = crate::ipv6::frag_ports(&key) else { return false };
    (flow.sport, flow.dport, flow.l4_off) = (ports[0], ports[1], 0);
    true
}

/// The first fragment of datagram `id`, `flow` read: its ports, for the
/// fragments that follow.
#[inline(never)]
fn first_fragment(flow: &Flow6, id: u32) {
    let key = crate::ipv6::frag_key(&flow.saddr, &flow.daddr, id, flow.proto);
    crate::ipv6::record_frag(&key, &[flow.sport, flow.dport]);
}
