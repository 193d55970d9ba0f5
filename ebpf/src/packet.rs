//! Header parsing shared by the programs. Loads go through
//! bpf_skb_load_bytes, so no packet-pointer bounds dance is needed.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_redirect_neigh},
    macros::map,
    maps::LruHashMap,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use weir_common::{
    DropReason,
    lb::{MAX_FRAG_ENTRIES, PROTO_SCTP, PROTO_TCP, PROTO_UDP},
};

pub const ETH_P_IP: u16 = 0x0800_u16.to_be();
pub const IP_OFF: usize = EthHdr::LEN;
pub const IP_TTL_OFF: usize = IP_OFF + 8;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SRC_OFF: usize = IP_OFF + 12;
pub const IP_DST_OFF: usize = IP_OFF + 16;
/// IPv4 flags and fragment offset (host order): more fragments follow;
/// the offset of this fragment in 8-byte units.
const MORE_FRAGMENTS: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A fragmented datagram as one hook sees it: (source, destination, IP ID,
/// protocol), the fields that tie its fragments together.
#[repr(C)]
#[derive(Clone, Copy)]
struct FragKey {
    saddr: u32,
    daddr: u32,
    id: u16,
    proto: u8,
    _pad: u8,
}

/// The ports of fragmented datagrams, recorded from their first fragment
/// (the only one with a transport header) for the fragments that follow:
/// these must be translated like the first, or the receiver cannot put the
/// datagram together again (a large UDP request to a Service, or its
/// reply). Entries live until the LRU needs the room: every hook that sees
/// a first fragment rewrites its entry, and a datagram's fragments pass in
/// a moment. Not pinned: a restart loses only datagrams in flight.
#[map]
static WEIR_FRAGS: LruHashMap<FragKey, [u16; 2]> = LruHashMap::with_max_entries(MAX_FRAG_ENTRIES, 0);

/// An IPv4 packet's addresses, and ports for TCP, UDP and SCTP (a later
/// fragment has the ports of its datagram's first fragment, when this hook
/// saw it, but no transport header). Addresses and ports in network byte
/// order.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 0 when the packet has no transport header to translate (a later
    /// fragment, or a protocol without ports).
    pub l4_off: usize,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// The IP header checksum as it was read (as stored: network order).
    pub ip_csum: u16,
    pub ttl: u8,
    /// A fragment of a larger datagram (first or later).
    pub fragment: bool,
}

impl Flow {
    /// No packet read yet: what a drop before parsing reports.
    pub const NONE: Flow = Flow {
        saddr: 0,
        daddr: 0,
        sport: 0,
        dport: 0,
        proto: 0,
        l4_off: 0,
        tcp_flags: 0,
        ip_csum: 0,
        ttl: 0,
        fragment: false,
    };
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

impl Flow {
    /// Whether the ports are known: from the transport header, or for a
    /// later fragment from its first one (port 0 is no port: nothing listens
    /// there).
    pub fn has_ports(&self) -> bool {
        self.l4_off != 0 || self.sport != 0 || self.dport != 0
    }

    /// Offset of the transport checksum, for protocols with a pseudo-header
    /// checksum (SCTP's CRC32c covers no addresses, and changed ports
    /// update it in `sctp`). None without a
    /// transport header (a later fragment: the first one carries the
    /// datagram's checksum).
    pub fn l4_csum_off(&self) -> Option<usize> {
        if self.l4_off == 0 {
            return None;
        }
        match self.proto {
            PROTO_TCP => Some(self.l4_off + 16),
            PROTO_UDP => Some(self.l4_off + 6),
            _ => None,
        }
    }
}

/// The skb's interface: on tc ingress the one the packet arrived on, on
/// egress the one it leaves by.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // Safety: reading a plain u32 field of the kernel's __sk_buff.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The Ethernet and IPv4 headers, read with one helper call (every
/// program parses every packet: a call saved here is saved twice per
/// packet between pods).
#[repr(C)]
struct Headers {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

/// The first 14 bytes of a TCP header: ports, sequence and acknowledgement
/// numbers, data offset, flags (one read for ports and flags).
#[repr(C)]
pub struct TcpStart {
    pub ports: [u16; 2],
    _seq_ack: [u8; 8],
    _data_off: u8,
    pub flags: u8,
}

/// `Ok(None)`: not IPv4.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Flow>, DropReason> {
    let (ether_type, ip) = match ctx.load::<Headers>(0) {
        Ok(h) => (h.eth.ether_type, Some(h.ip)),
        // Too short for both: fine for other protocols (ARP is 28 bytes).
        Err(_) => (ctx.load::<EthHdr>(0).map_err(|_| DropReason::Malformed)?.ether_type, None),
    };
    if ether_type != ETH_P_IP {
        return Ok(None);
    }
    let ip = ip.ok_or(DropReason::Malformed)?;
    // A raw socket can send anything; later stages read transport headers at
    // the IHL offset, so refuse headers that lie about it.
    if ip.version() != 4 || ip.ihl() < Ipv4Hdr::LEN as u8 {
        return Err(DropReason::Malformed);
    }
    let mut flow = Flow {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        sport: 0,
        dport: 0,
        proto: ip.proto as u8,
        l4_off: 0,
        tcp_flags: 0,
        ip_csum: u16::from_ne_bytes(ip.check),
        ttl: ip.ttl,
        fragment: false,
    };
    if !matches!(flow.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        return Ok(Some(flow));
    }
    // Only the first fragment (offset 0) carries ports; the others get
    // them from it.
    let frags = u16::from_be_bytes(ip.frags);
    let frag_off = frags & FRAG_OFFSET_MASK;
    let fragmented = frag_off != 0 || frags & MORE_FRAGMENTS != 0;
    flow.fragment = fragmented;
    let key =
        FragKey { saddr: flow.saddr, daddr: flow.daddr, id: u16::from_ne_bytes(ip.id), proto: flow.proto, _pad: 0 };
    if frag_off != 0 {
        // Safety: copied out at once.
        if let Some(ports) = unsafe { WEIR_FRAGS.get(&key) }.copied() {
            flow.sport = ports[0];
            flow.dport = ports[1];
        }
        return Ok(Some(flow));
    }
    let l4_off = IP_OFF + ip.ihl() as usize;
    let ports = if flow.proto == PROTO_TCP {
        let tcp = ctx.load::<TcpStart>(l4_off).map_err(|_| DropReason::Malformed)?;
        flow.tcp_flags = tcp.flags;
        tcp.ports
    } else {
        ctx.load::<[u16; 2]>(l4_off).map_err(|_| DropReason::Malformed)?
    };
    flow.sport = ports[0];
    flow.dport = ports[1];
    flow.l4_off = l4_off;
    if fragmented {
        // An LRU map evicts instead of failing; a lost entry costs only
        // this datagram.
        let _ = WEIR_FRAGS.insert(&key, &ports, 0);
    }
    Ok(Some(flow))
}

/// Sends the packet back out of the interface it arrived on (into the pod
/// behind a host veth), with the MAC addresses swapped as a router would.
#[inline(always)]
pub fn back_out(ctx: &TcContext, ifindex: u32) -> i32 {
    let Ok(eth) = ctx.load::<EthHdr>(0) else { return TC_ACT_SHOT as i32 };
    let swapped = EthHdr { dst_addr: eth.src_addr, src_addr: eth.dst_addr, ether_type: eth.ether_type };
    if ctx.store(0, &swapped, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // Safety: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Sends the packet out of `ifindex` towards its destination, with the
/// next hop and its MAC found by the kernel (FIB and neighbour lookup).
/// For packets whose source is now one of the node's own addresses, which
/// the routing input path would drop as martians.
#[inline(always)]
pub fn out_via(ifindex: u32) -> i32 {
    if ifindex == 0 {
        return TC_ACT_SHOT as i32;
    }
    // Safety: no parameters: the kernel does the lookup itself.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
