//! `local` for IPv6: a pod's IPv6 packet of a flow weir owns goes straight
//! into another pod of this node (`bpf_redirect_peer`), past the host and
//! the receiver's veth, whose `weir_to_pod6` work therefore runs here: its
//! pending state, its ingress policy, the flow log and drop counters at its
//! interface, and a Service reply's reversal.
//!
//! The same flows as for IPv4, for the same reason (the host's netfilter
//! never sees them): Service flows to local backends and their replies to
//! pod clients, and TCP connections between local pods that weir saw open
//! (`WEIR_LOCAL_FLOWS6`). It runs last in the chain of IPv6 programs a
//! leaving packet takes (`pod6`: after the translation, and the egress
//! policy if the pod has any), from what `lb::tc6` left in the per-CPU
//! stash: the packet as sent, what became of it, its backend. Anything the
//! kernel must handle itself (extension headers, fragments among them, a
//! hop limit about to expire, a neighbour not yet resolved, a destination
//! that is no weir pod) goes the kernel's way, as does direct UDP.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_peer},
    macros::map,
    maps::{LruHashMap, ProgramArray},
    programs::TcContext,
};
use weir_common::{
    DropReason, EndpointInfo,
    flow::FLOW_DIR_INGRESS,
    lb::{CtEntry, CtKey6, Ip6, MAX_LOCAL_FLOWS, PROTO_TCP},
    pin::DELIVER6_SLOT,
};

use crate::{
    conntrack, counters,
    ipv6::Flow6,
    lb::{parse6, tc6, v6},
    local::{self, NO, OPEN, Peer, RECORDED, SERVICE, SERVICE_REPLY},
    packet::{self, TCP_ACK, TCP_SYN},
    pod6::{self, Stash},
};

/// TCP connections between two pods of this node that weir saw open, as
/// `local::WEIR_LOCAL_FLOWS` for IPv4.
#[map]
static WEIR_LOCAL_FLOWS6: LruHashMap<CtKey6, u32> = LruHashMap::pinned(MAX_LOCAL_FLOWS, 0);

/// `weir_deliver6`, filled by the agent.
#[map]
static WEIR_DELIVER6: ProgramArray = ProgramArray::pinned(1, 0);

/// On to `weir_deliver6`. Returns only if its slot is empty.
#[inline(always)]
pub fn tail_deliver(ctx: &TcContext) {
    // Safety: a tail call with the program's own context.
    let _ = unsafe { WEIR_DELIVER6.tail_call(ctx, DELIVER6_SLOT) };
}

const AF_INET6: u8 = 10;
const NEXT_HEADER_OFF: usize = parse6::IP6_OFF + 6;
const HOP_LIMIT_OFF: usize = parse6::IP6_OFF + 7;

/// Why a packet may go straight on, as `local::Kind` (a plain struct, every
/// field written).
#[derive(Clone, Copy)]
struct Kind {
    how: u8,
    addr: Ip6,
    port: u16,
}

/// `deliver`'s answer when the packet goes the kernel's way (no tc action
/// is this), and when it was dropped at its destination (counted and
/// reported there).
pub const KERNEL: i32 = i32::MAX;
pub const DROPPED: i32 = i32::MAX - 1;

/// Sends the packet `pod6` judged with tc verdict `action` straight into
/// its destination pod, if it may: the tc action then, `DROPPED` if its
/// destination refused it, else `KERNEL`.
// Its own frame, called once the translation's and policy's frames are
// gone; a plain integer back (as `local::try_deliver`).
#[inline(never)]
pub fn deliver(ctx: &TcContext, action: i32) -> i32 {
    if action != counters::TC_OK {
        return KERNEL;
    }
    let Some(st) = pod6::stashed() else { return KERNEL };
    let mut kind = Kind { how: NO, addr: [0; 4], port: 0 };
    kind_of(st, &mut kind);
    if kind.how == NO {
        return KERNEL;
    }
    try_send(ctx, &st.sent, &kind)
}

// Frames of their own, one after the other: inlined, the lookups' keys and
// the FIB lookup's state came to more stack than a program has left after
// the pod's IPv6 programs' first frames.
#[inline(never)]
fn kind_of(st: &Stash, kind: &mut Kind) {
    *kind = kind_from(st);
}

#[inline(never)]
fn try_send(ctx: &TcContext, sent: &Flow6, kind: &Kind) -> i32 {
    match send(ctx, sent, kind) {
        Ok(action) => action,
        Err(reason) => {
            counters::dropped(ctx, reason, sent, weir_common::flow::FLOW_DIR_EGRESS);
            DROPPED
        }
    }
}

/// What may go straight on, from what `lb::tc6` left in the stash.
#[inline(always)]
fn kind_from(st: &Stash) -> Kind {
    let none = Kind { how: NO, addr: [0; 4], port: 0 };
    // Read by `lb::tc6`: TCP or UDP right after the fixed header.
    if !st.sent_valid {
        return none;
    }
    let sent = &st.sent;
    match st.outcome {
        tc6::TRANSLATED if st.backend_local => Kind { how: SERVICE, addr: ip6(&st.backend), port: st.backend_port },
        tc6::NOT_SERVICE => {
            if sent.proto == PROTO_TCP {
                if sent.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                    return Kind { how: OPEN, ..none };
                }
                // Safety: copied out at once.
                if unsafe { WEIR_LOCAL_FLOWS6.get(&key(sent)) }.is_some() {
                    return Kind { how: RECORDED, ..none };
                }
            }
            if !st.reply_found {
                return none;
            }
            pod_client_reply(sent, &st.reply)
        }
        _ => none,
    }
}

/// A reply of a live Service flow to a pod client, `ct` its reply entry
/// (`lb::tc6` found it): it gets its frontend back as its source (as
/// `lb::tc6::to_pod` does at the client's veth).
#[inline(always)]
fn pod_client_reply(sent: &Flow6, ct: &CtEntry) -> Kind {
    let none = Kind { how: NO, addr: [0; 4], port: 0 };
    let daddr = ip6(&sent.daddr);
    if ct.flags & (CtEntry::FLAG_HAIRPIN | CtEntry::FLAG_SNAT) != 0 {
        return none;
    }
    let Some(rn) = v6::rev_nat(ct.rev_nat_id) else { return none };
    // Only while the flow lives (its original entry), as at the client's
    // veth; a half-closed flow's grace counts from its last reply.
    if tc6::lives_past(&ct) {
        return Kind { how: SERVICE_REPLY, addr: rn.addr, port: rn.port };
    }
    let original = CtKey6::original(daddr, sent.dport, rn.addr, rn.port, sent.proto);
    let now = conntrack::now_secs();
    match tc6::lookup(&original) {
        Some(o) if !o.is_over(now) => {
            if o.flags & CtEntry::FLAG_CLOSING != 0 && o.created != now {
                tc6::refresh(&original, now);
            }
            Kind { how: SERVICE_REPLY, addr: rn.addr, port: rn.port }
        }
        _ => none,
    }
}

/// `deliver`'s work once the packet may go: `KERNEL` if its destination is
/// no pod of this node (or the kernel must see it), else the tc action.
#[inline(always)]
fn send(ctx: &TcContext, sent: &Flow6, kind: &Kind) -> Result<i32, DropReason> {
    // Extension headers (fragments among them) go the kernel's way, as IP
    // options and fragments do for IPv4: the transport header must follow
    // the fixed one.
    let Ok([next_header, hop_limit]) = ctx.load::<[u8; 2]>(NEXT_HEADER_OFF) else { return Ok(KERNEL) };
    if next_header != sent.proto || hop_limit <= 1 {
        return Ok(KERNEL);
    }
    let mut arriving = *sent;
    match kind.how {
        SERVICE => (arriving.daddr, arriving.dport) = (bytes(&kind.addr), kind.port),
        SERVICE_REPLY => (arriving.saddr, arriving.sport) = (bytes(&kind.addr), kind.port),
        _ => {}
    }
    let mut peer = Peer { ifindex: 0, ep: EndpointInfo::new([0; 4], 0), macs: [0; 12] };
    if !find_peer(ctx, &arriving, &mut peer) {
        return Ok(KERNEL);
    }
    if !at_peer(&peer, &arriving, kind.how == SERVICE_REPLY) {
        return Ok(DROPPED);
    }
    if kind.how == SERVICE_REPLY {
        reverse(ctx, sent, kind)?;
    }
    if kind.how == OPEN {
        // An LRU map evicts instead of failing; a lost entry costs only the
        // shortcut.
        let _ = WEIR_LOCAL_FLOWS6.insert(&key(sent), &0, 0);
    }
    hop(ctx, hop_limit, &peer.macs)?;
    // Safety: plain helper call.
    Ok(unsafe { bpf_redirect_peer(peer.ifindex, 0) } as i32)
}

/// `local::at_peer`, a drop counted and reported at the destination:
/// whether the packet may go on. Its own frame (the policy's state).
#[inline(never)]
fn at_peer(peer: &Peer, arriving: &Flow6, reversed: bool) -> bool {
    match local::at_peer(peer, arriving, reversed) {
        Ok(()) => true,
        Err(reason) => {
            counters::count(reason);
            crate::flow::dropped(arriving, reason, FLOW_DIR_INGRESS, peer.ifindex);
            false
        }
    }
}

/// A reply to a pod client gets the frontend `kind` names as its source.
#[inline(never)]
fn reverse(ctx: &TcContext, sent: &Flow6, kind: &Kind) -> Result<(), DropReason> {
    let flow = parse6::Flow6 {
        saddr: ip6(&sent.saddr),
        daddr: ip6(&sent.daddr),
        sport: sent.sport,
        dport: sent.dport,
        proto: sent.proto,
        tcp_flags: sent.tcp_flags,
        l4_off: parse6::L4_OFF as u16,
    };
    tc6::rewrite_src(ctx, &flow, &kind.addr, kind.port)
}

/// The destination pod of `flow` (as it arrives) as the kernel's FIB sees
/// it from the packet's ingress interface, as `local::peer` for IPv4, into
/// `peer`: whether there is one. (Into a struct every path writes: an
/// `Option` would carry an undefined payload.)
#[inline(never)]
fn find_peer(ctx: &TcContext, flow: &Flow6, peer: &mut Peer) -> bool {
    let ingress = packet::ifindex(ctx);
    // Safety: all-zero is a valid bpf_fib_lookup (plain integers and arrays).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = flow.proto;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv6_src = ip6(&flow.saddr);
    params.__bindgen_anon_4.ipv6_dst = ip6(&flow.daddr);
    // Safety: `params` is a valid, writable bpf_fib_lookup of that size.
    let rc = unsafe { fib_lookup(ctx.skb.skb.cast(), &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return false;
    }
    match local::found_peer(ingress, &params) {
        Some(found) => {
            *peer = found;
            true
        }
        None => false,
    }
}

/// The router hop: its MAC addresses, and the hop limit one less (IPv6 has
/// no header checksum, and the hop limit is not in the transport
/// checksum's pseudo-header).
#[inline(always)]
fn hop(ctx: &TcContext, hop_limit: u8, macs: &[u8; 12]) -> Result<(), DropReason> {
    let fail = |_| DropReason::RewriteFailed;
    ctx.store(0, macs, 0).map_err(fail)?;
    ctx.store(HOP_LIMIT_OFF, &(hop_limit - 1), 0).map_err(fail)
}

/// A connection's key in `WEIR_LOCAL_FLOWS6`, the same from either end.
#[inline(always)]
fn key(flow: &Flow6) -> CtKey6 {
    let (a, b) = ((flow.saddr, flow.sport), (flow.daddr, flow.dport));
    let ((saddr, sport), (daddr, dport)) = if a <= b { (a, b) } else { (b, a) };
    CtKey6::original(ip6(&saddr), sport, ip6(&daddr), dport, flow.proto)
}

/// The same 16 bytes as the maps' `Ip6`.
#[inline(always)]
fn ip6(bytes: &[u8; 16]) -> Ip6 {
    // Safety: any 16 bytes are four u32s.
    unsafe { core::mem::transmute::<[u8; 16], Ip6>(*bytes) }
}

#[inline(always)]
fn bytes(addr: &Ip6) -> [u8; 16] {
    // Safety: as in `ip6`.
    unsafe { core::mem::transmute::<Ip6, [u8; 16]>(*addr) }
}
