//! Delivery of a pod's IPv4 packet straight into another pod on the same
//! node: `bpf_redirect_peer` from the sender's host veth (tc ingress) into
//! the receiver's namespace, past the host's IP input, netfilter, forward
//! path and the receiver's veth, whose egress program (`to_pod`) therefore
//! runs here, for the receiver: its pending state, its ingress policy, the
//! flow log and drop counters at its interface.
//!
//! Only packets of flows weir owns take this path, because the host's
//! netfilter never sees them: a reply of a flow that netfilter translated
//! (a portmap hostPort DNAT from one local pod to another, say) must pass
//! the host to get its translation undone. So: packets of Service flows to
//! local backends and their replies (weir's conntrack holds both
//! directions), and TCP connections between local pods that weir saw open
//! (a SYN from one pod to the other's address; recorded in
//! `WEIR_LOCAL_FLOWS`). Anything else, or anything the kernel must handle
//! itself (IP options, fragments, a TTL about to expire, a neighbour not yet
//! resolved, a destination that is no weir pod), goes the kernel's way.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_peer},
    macros::map,
    maps::LruHashMap,
    programs::TcContext,
};
use weir_common::{
    DropReason, EndpointInfo,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS},
    lb::{CtKey, MAX_LOCAL_FLOWS, PROTO_TCP},
    policy::DIR_INGRESS,
};

use crate::{
    counters, endpoint, flow, nat, node,
    packet::{self, Flow, IP_OFF, IP_TTL_OFF, TCP_ACK, TCP_SYN},
    policy,
};

/// TCP connections between two pods of this node that weir saw open, keyed
/// by their tuple in a canonical order (the lower address and port first),
/// so both directions find the one entry. An evicted entry only sends the
/// rest of its connection the kernel's way.
#[map]
static WEIR_LOCAL_FLOWS: LruHashMap<CtKey, u32> = LruHashMap::pinned(MAX_LOCAL_FLOWS, 0);

const AF_INET: u8 = 2;

/// Why a pod's packet may go straight to its destination, and the address
/// and port it needs for that (network order). A plain struct, every field
/// always written: an enum whose variants carry different payloads left
/// registers unwritten on some paths, which LLVM then read and the verifier
/// refused.
#[derive(Clone, Copy)]
pub struct Kind {
    how: u8,
    addr: u32,
    port: u16,
}

// Why (`Kind::how`), for IPv6 too (`local6`).
/// It may not.
pub(crate) const NO: u8 = 0;
/// A Service flow's packet, DNATed to the local backend `addr:port`.
pub(crate) const SERVICE: u8 = 1;
/// A reply to a local pod client of a Service flow, still to be reversed
/// to come from the frontend `addr:port`.
pub(crate) const SERVICE_REPLY: u8 = 2;
/// A pure TCP SYN: a connection opens (recorded if its destination is a
/// local pod).
pub(crate) const OPEN: u8 = 3;
/// A packet of a recorded connection between local pods.
pub(crate) const RECORDED: u8 = 4;

impl Kind {
    pub const NO: Kind = Kind { how: NO, addr: 0, port: 0 };

    /// Whether the packet may go straight to its destination, if that is a
    /// local pod.
    pub const fn may(&self) -> bool {
        self.how != NO
    }

    pub const fn service(backend_addr: u32, backend_port: u16) -> Kind {
        Kind { how: SERVICE, addr: backend_addr, port: backend_port }
    }

    pub const fn service_reply(frontend_addr: u32, frontend_port: u16) -> Kind {
        Kind { how: SERVICE_REPLY, addr: frontend_addr, port: frontend_port }
    }
}

/// The pod a packet goes to: its host veth and the MAC addresses of the hop
/// (the host veth's own, the pod's), as the kernel would route it.
pub(crate) struct Peer {
    pub ifindex: u32,
    pub ep: EndpointInfo,
    pub macs: [u8; 12],
}

/// What may go straight to its destination, for a packet that is no
/// Service flow's: a SYN, or a packet of a recorded connection.
#[inline(always)]
pub fn kind_of_direct(flow: &Flow) -> Kind {
    // Not to a pod of this node: spare the lookup (and the SYN's FIB lookup).
    if flow.proto != PROTO_TCP || flow.l4_off == 0 || !node::may_be_local_pod(flow.daddr) {
        return Kind::NO;
    }
    if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return Kind { how: OPEN, ..Kind::NO };
    }
    // Safety: copied out at once.
    let recorded = unsafe { WEIR_LOCAL_FLOWS.get(&key(flow)) }.is_some();
    Kind { how: if recorded { RECORDED } else { NO }, ..Kind::NO }
}

/// What `deliver` did with a packet.
pub enum Delivery {
    /// Nothing: it goes the kernel's way.
    Kernel,
    /// Sent on with this tc action.
    Sent(i32),
    /// Dropped at the destination (counted and reported there).
    Dropped,
}

/// A packet `from_pod` has judged and leaves to `deliver`: as it was read
/// (any translation is in the skb already), and why it may go straight on.
pub struct Next {
    pub flow: Flow,
    pub kind: Kind,
}

impl Next {
    pub const NONE: Next = Next { flow: Flow::NONE, kind: Kind::NO };
}

/// `from_pod`'s answer for a packet it leaves to `deliver` (no tc action).
pub const DELIVER: i32 = i32::MIN;

/// Sends the packet straight into its destination pod, if `kind` allows
/// and the destination is a pod of this node. A drop, at the destination
/// (its policy) or here (a failed rewrite), is counted and reported where
/// it happened.
#[inline(always)]
pub fn deliver(ctx: &TcContext, next: &Next) -> Delivery {
    match try_deliver(ctx, &next.flow, &next.kind) {
        KERNEL => Delivery::Kernel,
        DROPPED => Delivery::Dropped,
        action => Delivery::Sent(action as i32),
    }
}

const KERNEL: i64 = -1;
const DROPPED: i64 = -2;

// A function of its own: inlined into `from_pod`, its state (the FIB
// lookup's 64 bytes among it) outgrew the stack, and the verifier refused
// the register reuse LLVM made of the merged paths. It returns a plain
// integer (a tc action, `KERNEL` or `DROPPED`): an enum with a payload came
// back through a register the early returns never wrote, which the
// verifier refuses to read.
#[inline(never)]
fn try_deliver(ctx: &TcContext, flow: &Flow, kind: &Kind) -> i64 {
    match send(ctx, flow, kind) {
        Ok(Some(action)) => action,
        Ok(None) => KERNEL,
        Err(reason) => {
            counters::dropped(ctx, reason, flow, FLOW_DIR_EGRESS);
            DROPPED
        }
    }
}

/// `deliver`'s work: the tc action (`DROPPED` for a drop at the
/// destination), or None for the kernel's way.
#[inline(always)]
fn send(ctx: &TcContext, flow: &Flow, kind: &Kind) -> Result<Option<i64>, DropReason> {
    // Fragments go the host's way, all of a datagram's alike: with netfilter
    // conntrack the host reassembles them, and would wait for one sent past
    // it.
    if !kind.may() || flow.ttl <= 1 || flow.fragment || flow.l4_off != IP_OFF + 20 {
        return Ok(None);
    }
    let daddr = if kind.how == SERVICE { kind.addr } else { flow.daddr };
    let Some(peer) = peer(ctx, flow, daddr) else { return Ok(None) };
    // The packet as the destination gets it.
    let arriving = match kind.how {
        SERVICE => Flow { daddr: kind.addr, dport: kind.port, ..*flow },
        SERVICE_REPLY => {
            nat::snat(ctx, flow, kind.addr, kind.port)?;
            Flow { saddr: kind.addr, sport: kind.port, ..*flow }
        }
        _ => *flow,
    };
    if let Err(reason) = at_peer(&peer, &arriving, kind.how == SERVICE_REPLY) {
        counters::count(reason);
        flow::dropped(&arriving, reason, FLOW_DIR_INGRESS, peer.ifindex);
        return Ok(Some(DROPPED));
    }
    if kind.how == OPEN {
        // An LRU map evicts instead of failing; a lost entry costs only the
        // shortcut.
        let _ = WEIR_LOCAL_FLOWS.insert(&key(flow), &0, 0);
    }
    hop(ctx, flow, csum_after(flow, kind), &peer.macs)?;
    // Safety: plain helper call.
    Ok(Some(unsafe { bpf_redirect_peer(peer.ifindex, 0) }))
}

/// What `to_pod` does at the destination's veth, for a packet that will not
/// pass there (IPv6's too: `local6`).
#[inline(always)]
pub(crate) fn at_peer<T: policy::Tuple>(peer: &Peer, flow: &T, reversed: bool) -> Result<(), DropReason> {
    if peer.ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
        return Err(DropReason::PolicyPending);
    }
    // A reversed reply belongs to a flow the destination opened, which its
    // egress check saw.
    if reversed {
        return Ok(());
    }
    if policy::active(&peer.ep) && !policy::tracked(peer.ifindex, flow) {
        return policy::check_new(peer.ifindex, &peer.ep, DIR_INGRESS, flow, flow);
    }
    policy::report_unenforced(peer.ifindex, &peer.ep, FLOW_DIR_INGRESS, flow);
    Ok(())
}

/// The destination as the kernel's FIB sees it from the packet's ingress
/// interface: a weir pod's host veth (not the one the packet came from),
/// with a resolved neighbour.
#[inline(always)]
fn peer(ctx: &TcContext, flow: &Flow, daddr: u32) -> Option<Peer> {
    let ingress = packet::ifindex(ctx);
    // Safety: all-zero is a valid bpf_fib_lookup (plain integers and arrays).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = flow.proto;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = flow.saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // tot_len 0: the kernel checks the skb against the egress MTU.
    // Safety: `params` is a valid, writable bpf_fib_lookup of that size.
    let rc = unsafe { fib_lookup(ctx.skb.skb.cast(), &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    found_peer(ingress, &params)
}

/// The weir pod a successful FIB lookup from `ingress` found, if it is one
/// other than the sender's.
#[inline(always)]
pub(crate) fn found_peer(ingress: u32, params: &bpf_fib_lookup) -> Option<Peer> {
    if params.ifindex == ingress {
        return None;
    }
    let ep = endpoint::by_ifindex(params.ifindex)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    Some(Peer { ifindex: params.ifindex, ep, macs })
}

/// What the router hop does to the packet: the hop's MAC addresses, and the
/// TTL one less. `csum` is the IP header checksum the packet has now (as
/// stored); TTL, protocol and the new checksum are one 4-byte store (an L3
/// checksum helper and a store of the TTL would be two calls).
#[inline(always)]
fn hop(ctx: &TcContext, flow: &Flow, csum: u16, macs: &[u8; 12]) -> Result<(), DropReason> {
    let fail = |_| DropReason::RewriteFailed;
    ctx.store(0, macs, 0).map_err(fail)?;
    let ttl = flow.ttl - 1;
    let (old, new) = (u16::from_ne_bytes([flow.ttl, flow.proto]), u16::from_ne_bytes([ttl, flow.proto]));
    let sum = (!csum as u32 & 0xffff) + (!old as u32 & 0xffff) + new as u32;
    let check = !nat::csum_fold(sum);
    let mut word = [ttl, flow.proto, 0, 0];
    word[2..].copy_from_slice(&check.to_ne_bytes());
    ctx.store(IP_TTL_OFF, &word, 0).map_err(fail)
}

/// The IP checksum of a packet `flow` described before it was rewritten
/// (as `kind` rewrites it: one address changed), as `nat` left it.
#[inline(always)]
fn csum_after(flow: &Flow, kind: &Kind) -> u16 {
    let (old, new) = match kind.how {
        SERVICE => (flow.daddr, kind.addr),
        SERVICE_REPLY => (flow.saddr, kind.addr),
        _ => return flow.ip_csum,
    };
    !nat::csum_fold(nat::csum_add4(!flow.ip_csum as u32 & 0xffff, old, new))
}

/// A connection's key in `WEIR_LOCAL_FLOWS`, the same from either end.
#[inline(always)]
fn key(flow: &Flow) -> CtKey {
    let (a, b) = ((flow.saddr, flow.sport), (flow.daddr, flow.dport));
    let ((saddr, sport), (daddr, dport)) = if a <= b { (a, b) } else { (b, a) };
    CtKey::original(saddr, sport, daddr, dport, flow.proto)
}
