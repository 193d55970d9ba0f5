//! The per-packet Service path for IPv6 pod clients (tc on the pod's host
//! veth): a new flow to an IPv6 frontend gets a backend and is DNATed to
//! it, later packets keep it through `WEIR_CT6`, and replies get the
//! frontend back as they enter the client's veth (after the node's
//! netfilter saw them untranslated, as for IPv4). A frontend without a
//! usable backend answers ICMPv6 port unreachable (`reject6`).
//!
//! IPv6 has no header checksum: only the transport checksum changes, and
//! it covers the addresses through the pseudo-header (updated by the
//! address's whole difference, with `BPF_F_PSEUDO_HDR`). A UDP checksum is mandatory over IPv6:
//! a result of 0 is written as 0xffff (`BPF_F_MARK_MANGLED_0`). SCTP is
//! translated as over IPv4: its CRC32c covers no pseudo-header, so only a
//! changed port updates it (`sctp`).
//!
//! These run in programs of their own (`weir_from_pod6`, `weir_to_pod6`,
//! see `pod6`), tail-called from the pod programs once an IPv6 packet
//! passed their checks: the IPv6 keys do not fit in the stack the checks
//! leave.
//!
//! A pod that is its own backend is hairpinned: its source becomes the
//! node's IPv6 pod gateway (`WEIR_NODE6`) and the packet goes back out of
//! its veth; its reply to the gateway is turned back into one from the
//! frontend the same way.
//!
//! A packet of no Service flow may be a local backend's reply to a client
//! that came in through the uplink: `netdev6::reply_of_local` gives it its
//! frontend back. The uplink's own path is `netdev6`, which shares this
//! conntrack and these rewrites.
//!
//! TCP, UDP and SCTP are found behind hop-by-hop, destination options, a
//! routing header with no segments left and a fragment header, up to four
//! (`parse6`, both paths' parser): every rewrite is at the transport
//! header's own offset, and a later fragment, which has none, gets its
//! addresses rewritten by the ports its first fragment recorded. Left
//! untranslated: a routing header with segments left, the authentication
//! header, more than four headers. Without a backend, such a packet is
//! dropped unanswered (the ICMPv6 error's quote would end before the
//! ports).
use core::ptr::write_volatile;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::TcContext,
};
use weir_common::{
    DropReason,
    flow::FLOW_DIR_EGRESS,
    lb::{
        Backend, Backend6, CT_DIR_REPLY, CtEntry, CtKey6, Ip6, MAX_CT_ENTRIES, NodeConfig6, PROTO_SCTP, PROTO_TCP,
        RevNat6, ServiceKey6, ServiceValue,
    },
    pin::{TAIL_EGRESS6, TAIL_FROM_POD6, TAIL_TO_POD6},
};

use super::{reject6, v6};
use crate::{
    conntrack,
    counters::TC_OK,
    packet::{self, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    sctp,
};

pub(crate) use super::parse6::parse;
pub use super::parse6::{Flow6, IP6_OFF, L4_OFF};

const SRC_OFF: usize = IP6_OFF + 8;
const DST_OFF: usize = IP6_OFF + 24;

#[map]
static WEIR_CT6: LruHashMap<CtKey6, CtEntry> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);
/// The node's IPv6 pod gateway (`NodeConfig6`), written by the agent.
#[map]
static WEIR_NODE6: Array<NodeConfig6> = Array::pinned(1, 0);
/// Scratch space for `observe_client`'s reply key (per CPU, one packet's
/// run at a time).
#[map]
static WEIR_REPLY_KEY6: PerCpuArray<CtKey6> = PerCpuArray::with_max_entries(1, 0);
/// `weir_from_pod6` and `weir_to_pod6`, filled by the agent.
#[map]
static WEIR_TAIL6: ProgramArray = ProgramArray::pinned(3, 0);

/// On to `weir_from_pod6`. Returns only if that slot is empty (an agent
/// that has not filled it yet).
#[inline(always)]
pub fn tail_from_pod(ctx: &TcContext) {
    // Safety: a tail call with the program's own context.
    let _ = unsafe { WEIR_TAIL6.tail_call(ctx, TAIL_FROM_POD6) };
}

/// On to `weir_egress6`, as `tail_from_pod`.
#[inline(always)]
pub fn tail_egress(ctx: &TcContext) {
    // Safety: as above.
    let _ = unsafe { WEIR_TAIL6.tail_call(ctx, TAIL_EGRESS6) };
}

/// On to `weir_to_pod6`, as `tail_from_pod`.
#[inline(always)]
pub fn tail_to_pod(ctx: &TcContext) {
    // Safety: as above.
    let _ = unsafe { WEIR_TAIL6.tail_call(ctx, TAIL_TO_POD6) };
}

/// What `from_pod` did with a packet.
pub const NOT_SERVICE: u8 = 0;
/// Translated to a backend (a new flow, a continued one, a hairpin).
pub const TRANSLATED: u8 = 1;
/// A hairpinned reply of the pod to itself, turned back into one from the
/// frontend: a reply, not a new flow.
pub const REPLY: u8 = 2;
/// No backend: answered with ICMPv6 port unreachable (dropped, behind
/// extension headers).
pub const REJECTED: u8 = 3;

#[inline(always)]
pub(crate) fn lookup(key: &CtKey6) -> Option<CtEntry> {
    // Safety: copied out at once.
    unsafe { WEIR_CT6.get(key) }.copied()
}

/// Writes a flow's entry (the uplink path's too: one conntrack for every
/// IPv6 Service flow). An LRU map evicts rather than fails when full; a
/// failed insert only costs the flow its stickiness.
#[inline(always)]
pub(crate) fn insert(key: &CtKey6, entry: &CtEntry) {
    let _ = WEIR_CT6.insert(key, entry, 0);
}

/// Restarts a closing flow's grace period (in place, as `to_pod` does).
#[inline(always)]
pub(crate) fn refresh(key: &CtKey6, now: u32) {
    if let Some(ct) = WEIR_CT6.get_ptr_mut(key) {
        // Safety: as in `observe_client`.
        unsafe { write_volatile(&raw mut (*ct).created, now) };
    }
}

#[inline(always)]
pub(crate) fn remove(key: &CtKey6) {
    let _ = WEIR_CT6.remove(key);
}

/// A packet leaving a pod: an IPv6 Service flow is translated. `Ok`: what
/// was done (`NOT_SERVICE` ...) and the tc verdict (uncounted).
//
// The work is split into functions that are not inlined, each with its own
// small frame, called one after the other (the stack limit is for the
// deepest chain of frames).
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> Result<(u8, i32), DropReason> {
    let mut flow = Flow6::NONE;
    if !parse(ctx, &mut flow) {
        return Ok((NOT_SERVICE, TC_OK));
    }
    // The packet as sent, for the egress policy judged after (`pod6`).
    crate::pod6::stash_sent(
        &flow.saddr,
        &flow.daddr,
        flow.sport,
        flow.dport,
        flow.proto as u16 | (flow.tcp_flags as u16) << 8,
    );
    if gateway().is_some_and(|gw| gw == flow.daddr) {
        return hairpin_reply(ctx, &flow);
    }
    let Some((key, svc)) = frontend(&flow) else {
        // A local backend answering a client that came in through the
        // uplink (`netdev6`).
        return match crate::netdev6::reply_of_local(ctx, &flow) {
            crate::netdev6::NOT_REPLY => Ok((NOT_SERVICE, TC_OK)),
            action if action == TC_ACT_SHOT as i32 => Err(DropReason::RewriteFailed),
            action => Ok((REPLY, action)),
        };
    };
    let now = conntrack::now_secs();
    if svc.count != 0 {
        match continue_flow(ctx, &flow, now)? {
            CONTINUED => return Ok((TRANSLATED, TC_OK)),
            HAIRPINNED => return Ok((TRANSLATED, packet::back_out(ctx, packet::ifindex(ctx)))),
            _ => {}
        }
    }
    let chosen = if svc.count == 0 { None } else { choose(&key, &svc, &flow, now) };
    let Some((backend_id, b)) = chosen else {
        // Behind extension headers (or a fragment), the error's quote
        // would end before the ports the client's kernel finds its socket
        // by: dropped unanswered, as the uplink does.
        if usize::from(flow.l4_off) != L4_OFF {
            return Ok((REJECTED, TC_ACT_SHOT as i32));
        }
        return Ok((REJECTED, reject6::port_unreachable(ctx, &flow)));
    };
    // A pod that is its own backend: its source becomes the pod gateway (a
    // pod drops packets that claim its own address as source), and the
    // packet goes straight back out of its veth.
    let hairpin = if b.addr == flow.saddr { gateway() } else { None };
    let mut flags = CtEntry::FLAG_POD_CLIENT;
    if flow.tcp_flags & TCP_RST != 0 {
        flags |= CtEntry::FLAG_RESET;
    }
    let reply_to = match &hairpin {
        Some(gw) => {
            flags |= CtEntry::FLAG_HAIRPIN;
            gw
        }
        None => &flow.saddr,
    };
    record(&flow, &b, backend_id, u32::from(svc.rev_nat_id) | u32::from(flags) << 16, reply_to);
    dnat(ctx, &flow, &b.addr, b.port, b.flags & Backend::FLAG_LOCAL != 0)?;
    // A new flow (later packets take `continue_flow` above).
    tell_translated(ctx, &flow, FLOW_DIR_EGRESS, &b);
    if let Some(gw) = hairpin {
        snat(ctx, &flow, &gw, flow.sport)?;
        return Ok((TRANSLATED, packet::back_out(ctx, packet::ifindex(ctx))));
    }
    Ok((TRANSLATED, TC_OK))
}

/// What `continue_flow` did.
const NEW: u8 = 0;
const CONTINUED: u8 = 1;
const HAIRPINNED: u8 = 2;

#[inline(always)]
fn gateway() -> Option<Ip6> {
    WEIR_NODE6.get(0).map(|n| n.gateway).filter(|gw| *gw != [0; 4])
}

#[inline(never)]
fn frontend(flow: &Flow6) -> Option<(ServiceKey6, ServiceValue)> {
    v6::internal_frontend(&flow.daddr, flow.dport, flow.proto)
}

#[inline(never)]
fn choose(key: &ServiceKey6, svc: &ServiceValue, flow: &Flow6, now: u32) -> Option<(u32, Backend6)> {
    v6::choose(key, svc, &flow.saddr, now)
}

/// A live flow keeps its backend while it exists, hairpinned as it was; a
/// SYN on a closing flow's tuple is a new connection (as for IPv4).
#[inline(never)]
fn continue_flow(ctx: &TcContext, flow: &Flow6, now: u32) -> Result<u8, DropReason> {
    let original = CtKey6::original(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto);
    let Some(ct) = lookup(&original) else { return Ok(NEW) };
    if ct.is_over(now) || (ct.flags & CtEntry::FLAG_CLOSING != 0 && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN) {
        return Ok(NEW);
    }
    let Some(b) = v6::backend(ct.backend_id) else { return Ok(NEW) };
    let gw = if ct.flags & CtEntry::FLAG_HAIRPIN != 0 {
        match gateway() {
            Some(gw) => Some(gw),
            None => return Ok(NEW),
        }
    } else {
        None
    };
    // The reply entry: the backend answers the client, or the gateway it
    // was hairpinned from.
    observe_client(&original, &ct, flow, &b);
    dnat(ctx, flow, &b.addr, b.port, b.flags & Backend::FLAG_LOCAL != 0)?;
    if let Some(gw) = gw {
        snat(ctx, flow, &gw, flow.sport)?;
        return Ok(HAIRPINNED);
    }
    Ok(CONTINUED)
}

/// A new flow's entries: the original direction keeps its backend, the
/// reply direction (backend to `reply_to`, the client or, hairpinned, the
/// gateway) finds the frontend. `rev_and_flags`: the rev-NAT ID in the low
/// half, the entry's flags in the high half (five arguments at most).
#[inline(never)]
fn record(flow: &Flow6, b: &Backend6, backend_id: u32, rev_and_flags: u32, reply_to: &Ip6) {
    let entry = CtEntry {
        backend_id,
        rev_nat_id: rev_and_flags as u16,
        flags: (rev_and_flags >> 16) as u16,
        created: conntrack::now_secs(),
        ..Default::default()
    };
    let original = CtKey6::original(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto);
    let reply = CtKey6::reply(b.addr, b.port, *reply_to, flow.sport, flow.proto);
    // An LRU map evicts rather than fails when full; a failed insert only
    // costs the flow its stickiness.
    let _ = WEIR_CT6.insert(&original, &entry, 0);
    let _ = WEIR_CT6.insert(&reply, &entry, 0);
}

/// The flow log's event of a new flow sent to the backend `b` (as
/// `lb::pod` and `lb::netdev` tell IPv4's), going `dir`. Its own frame:
/// the event is written straight into the ring, and the callers' frames
/// stay as they were.
#[inline(never)]
pub(crate) fn tell_translated(ctx: &TcContext, flow: &Flow6, dir: u8, b: &Backend6) {
    crate::flow::translated6(flow, dir, packet::ifindex(ctx), &b.addr, b.port);
}

/// A pod answering itself through its Service (to the gateway the request
/// came from): the reply goes back out of its veth from the frontend.
#[inline(never)]
fn hairpin_reply(ctx: &TcContext, flow: &Flow6) -> Result<(u8, i32), DropReason> {
    let reply = CtKey6::reply(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto);
    let Some(ct) = lookup(&reply).filter(|ct| ct.flags & CtEntry::FLAG_HAIRPIN != 0) else {
        return Ok((NOT_SERVICE, TC_OK));
    };
    let Some(rn) = v6::rev_nat(ct.rev_nat_id) else { return Ok((NOT_SERVICE, TC_OK)) };
    if !hairpin_lives(flow, &rn) {
        return Ok((NOT_SERVICE, TC_OK));
    }
    // The destination back to the pod, then the source to the frontend.
    dnat(ctx, flow, &flow.saddr, flow.dport, false)?;
    snat(ctx, flow, &rn.addr, rn.port)?;
    Ok((REPLY, packet::back_out(ctx, packet::ifindex(ctx))))
}

/// Whether the hairpinned flow a reply `flow` of the frontend `rn` belongs
/// to lives. Its own frame: the key stays off `hairpin_reply`'s, under
/// which the rewrites run.
#[inline(never)]
fn hairpin_lives(flow: &Flow6, rn: &RevNat6) -> bool {
    let original = CtKey6::original(flow.saddr, flow.dport, rn.addr, rn.port, flow.proto);
    lookup(&original).is_some_and(|o| !o.is_over(conntrack::now_secs()))
}

/// A packet entering a pod: a reply of a flow `from_pod` translated gets
/// the frontend back as its source, while the flow lives. `Ok`: whether it
/// was such a reply.
#[inline(always)]
pub fn to_pod(ctx: &TcContext) -> Result<bool, DropReason> {
    let mut flow = Flow6::NONE;
    if !parse(ctx, &mut flow) {
        return Ok(false);
    }
    let reply = CtKey6::reply(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto);
    let Some(ct) = lookup(&reply) else { return Ok(false) };
    let Some(rn) = v6::rev_nat(ct.rev_nat_id) else { return Ok(false) };
    // A reply entry translates only while its flow's original entry lives:
    // a later connection reusing the tuple is never rewritten.
    if lives_past(&ct) {
        snat(ctx, &flow, &rn.addr, rn.port)?;
        return Ok(true);
    }
    let original = CtKey6::original(flow.daddr, flow.dport, rn.addr, rn.port, flow.proto);
    let now = conntrack::now_secs();
    match lookup(&original) {
        Some(o) if !o.is_over(now) => {
            // A half-closed flow: the grace counts from the last reply.
            if o.flags & CtEntry::FLAG_CLOSING != 0
                && o.created != now
                && let Some(ct) = WEIR_CT6.get_ptr_mut(&original)
            {
                // Safety: as in `observe_client`.
                unsafe { write_volatile(&raw mut (*ct).created, now) };
            }
        }
        _ => return Ok(false),
    }
    snat(ctx, &flow, &rn.addr, rn.port)?;
    Ok(true)
}

/// The client's FIN marks the flow closing, its RST ends it (as
/// `conntrack::observe_client` does for IPv4: in place, the time first),
/// in its original entry (`key`) and in its reply entry (from backend `b`
/// to the client, or to the address and port it was translated to: the
/// pod gateway, hairpinned; the node, SNATed): until the reply entry is
/// marked, a reply needs no lookup of the original entry to know its flow
/// lives (`lives_past`).
// The reply key is built in a per-CPU scratch entry, not on this frame:
// the translation's frames leave no stack for it.
#[inline(never)]
pub(crate) fn observe_client(key: &CtKey6, entry: &CtEntry, flow: &Flow6, b: &Backend6) {
    let mark = if flow.tcp_flags & TCP_RST != 0 {
        CtEntry::FLAG_RESET
    } else if flow.tcp_flags & TCP_FIN != 0 {
        CtEntry::FLAG_CLOSING
    } else {
        return;
    };
    let now = conntrack::now_secs();
    mark_entry(key, entry.flags | mark, now);
    let Some(reply) = WEIR_REPLY_KEY6.get_ptr_mut(0) else { return };
    // Safety: this CPU's entry; nothing else runs on it meanwhile.
    let reply = unsafe { &mut *reply };
    // Field by field: a key built whole first takes stack.
    (reply.saddr, reply.sport, reply.proto, reply.dir, reply._pad) = (b.addr, b.port, flow.proto, CT_DIR_REPLY, [0; 2]);
    (reply.daddr, reply.dport) = (flow.saddr, flow.sport);
    if entry.flags & CtEntry::FLAG_HAIRPIN != 0
        && let Some(node) = WEIR_NODE6.get(0)
    {
        reply.daddr = node.gateway;
    } else if entry.flags & CtEntry::FLAG_SNAT != 0 {
        crate::netdev6::snat_client(reply, entry.nat_port);
    }
    mark_entry(reply, entry.flags | mark, now);
}

#[inline(always)]
fn mark_entry(key: &CtKey6, flags: u16, now: u32) {
    if let Some(ct) = WEIR_CT6.get_ptr_mut(key) {
        // Safety: a pointer into the map's value, written field by field:
        // the time first, then the flag that makes it count.
        unsafe {
            write_volatile(&raw mut (*ct).created, now);
            write_volatile(&raw mut (*ct).flags, flags);
        }
    }
}

/// Whether a reply entry `ct`'s flow lives without asking its original
/// entry: nothing marked it ending (`observe_client`).
#[inline(always)]
pub(crate) fn lives_past(ct: &CtEntry) -> bool {
    ct.flags & (CtEntry::FLAG_CLOSING | CtEntry::FLAG_RESET) == 0
}

/// Client -> frontend becomes client -> backend (`local`: a pod of this
/// node).
#[inline(always)]
fn dnat(ctx: &TcContext, flow: &Flow6, addr: &Ip6, port: u16, local: bool) -> Result<(), DropReason> {
    // The destination as the egress policy judges it, and where `local6`
    // may deliver it (`pod6`).
    crate::pod6::stash_translated(addr, port, local);
    rewrite_dst(ctx, flow, addr, port)
}

/// Backend -> client becomes frontend -> client.
#[inline(always)]
fn snat(ctx: &TcContext, flow: &Flow6, addr: &Ip6, port: u16) -> Result<(), DropReason> {
    rewrite_src(ctx, flow, addr, port)
}

/// The transport checksum at `csum_off` updated for an address of the
/// pseudo-header changing from `old` to `new`: the difference summed here
/// and applied in one helper call (size 0: `to` is a checksum difference),
/// where a call per 32-bit word took up to four.
#[inline(always)]
fn addr_csum(ctx: &TcContext, csum_off: usize, old: &Ip6, new: &Ip6, mangled: u64) -> Result<(), DropReason> {
    let mut sum: u64 = 0;
    for i in 0..4 {
        sum += u64::from(!old[i]) + u64::from(new[i]);
    }
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let diff = (sum & 0xffff_ffff) + (sum >> 32);
    ctx.l4_csum_replace(csum_off, 0, diff, BPF_F_PSEUDO_HDR as u64 | mangled).map_err(|_| DropReason::RewriteFailed)
}

/// The destination becomes `addr`, `port`, at the flow's own transport
/// offset (past extension headers; a later fragment has no transport
/// header), without the policy stash.
#[inline(always)]
pub(crate) fn rewrite_dst(ctx: &TcContext, flow: &Flow6, addr: &Ip6, port: u16) -> Result<(), DropReason> {
    let offs = u32::from(flow.l4_off) | (DST_OFF as u32) << 16 | u32::from(flow.proto) << 24;
    rewrite(ctx, &flow.daddr, addr, offs, u32::from(flow.dport) | u32::from(port) << 16)
}

/// The source becomes `addr`, `port`, as `rewrite_dst`.
#[inline(always)]
pub(crate) fn rewrite_src(ctx: &TcContext, flow: &Flow6, addr: &Ip6, port: u16) -> Result<(), DropReason> {
    let offs = u32::from(flow.l4_off) | (SRC_OFF as u32) << 16 | u32::from(flow.proto) << 24;
    rewrite(ctx, &flow.saddr, addr, offs, u32::from(flow.sport) | u32::from(port) << 16)
}

/// The address at the destination's or the source's offset from `old` to
/// `new`, its port from the low half of `ports` to the high half, and the
/// transport checksum updated for both (the address through the
/// pseudo-header, `addr_csum`). `offs` packs the transport header's offset
/// (`Flow6::l4_off`, low half), the address's offset and the protocol (one
/// argument: a BPF function takes five at most, and a struct passed by
/// reference would take stack). A later fragment (offset 0) has neither
/// port nor checksum (its datagram's checksum is in the first fragment):
/// only its address changes.
// Not inlined: one small frame shared by every caller.
#[inline(never)]
fn rewrite(ctx: &TcContext, old: &Ip6, new: &Ip6, offs: u32, ports: u32) -> Result<(), DropReason> {
    let fail = |_| DropReason::RewriteFailed;
    let (l4, addr_off, proto) = ((offs & 0xffff) as usize, ((offs >> 16) & 0xff) as usize, (offs >> 24) as u8);
    if l4 == 0 {
        return ctx.store(addr_off, new, 0).map_err(fail);
    }
    let port_off = if addr_off == DST_OFF { l4 + 2 } else { l4 };
    let (old_port, new_port) = (ports as u16, (ports >> 16) as u16);
    if proto != PROTO_SCTP {
        let (csum_off, mangled) = if proto == PROTO_TCP { (l4 + 16, 0) } else { (l4 + 6, BPF_F_MARK_MANGLED_0 as u64) };
        addr_csum(ctx, csum_off, old, new, mangled)?;
        if old_port != new_port {
            ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, mangled | 2).map_err(fail)?;
        }
    } else if old_port != new_port {
        // SCTP's CRC32c covers no pseudo-header: only a port changes it.
        let xor = if addr_off == DST_OFF {
            sctp::port_xor((0, old_port), (0, new_port))
        } else {
            sctp::port_xor((old_port, 0), (new_port, 0))
        };
        sctp::ports_changed(ctx, l4, xor, true)?;
    }
    ctx.store(addr_off, new, 0).map_err(fail)?;
    ctx.store(port_off, &new_port, 0).map_err(fail)
}
