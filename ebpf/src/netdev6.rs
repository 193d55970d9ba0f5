//! IPv6 Service traffic through the node's uplink, with kube-proxy's
//! semantics and the IPv4 path's shape (`lb::netdev`, `lb::reverse`):
//! - `weir_from_netdev6` (tail-called by `weir_from_netdev` for an IPv6
//!   packet): a NodePort on the node's IPv6 address, an IPv6 externalIP or
//!   load-balancer IP is DNATed to a local backend (the client's address
//!   kept), or SNATed to the node's IPv6 address for a remote one and sent
//!   back out of the uplink; that backend's replies, coming back, are
//!   reversed here too. Source ranges, `externalTrafficPolicy: Local` and
//!   ICMPv6 port unreachable without endpoints as for IPv4.
//! - `weir_to_netdev6` (tail-called by `weir_to_netdev`): replies of a
//!   backend on the node's own stack (a hostNetwork endpoint) leaving by
//!   the uplink get their frontend back.
//! - `reply_of_local`, called by `lb::tc6` on a pod's packet: a local pod
//!   backend's reply to an uplink client gets its frontend back as it
//!   leaves the pod; one from a NodePort goes straight out of the uplink
//!   (its source is now a node address, which routing would refuse).
//!
//! Own programs, not code inlined in the IPv4 ones: the IPv6 keys (40
//! bytes each) beside the IPv4 path's frame would outgrow the 512-byte
//! stack, and the IPv4 path keeps its code as it was, paying one field
//! read for the family. Flows share `WEIR_CT6` with the pod path; a SNATed
//! flow's client (16 bytes, more than `CtEntry` holds) is in `WEIR_SNAT6`.
//! TCP, UDP and SCTP are translated behind the extension headers
//! `lb::parse6` walks, and so are fragments of their datagrams (the later
//! ones by the ports of their first, as the IPv4 path does); what it does
//! not walk goes to the node's stack as it is.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, LruHashMap, ProgramArray},
    programs::TcContext,
};
use weir_common::{
    DropReason,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS},
    lb::{
        Backend, Backend6, CtEntry, CtKey6, Ip6, MAX_CT_ENTRIES, Nat6, RevNat6, SCOPE_EXTERNAL, ServiceKey6,
        ServiceValue, Uplink6, ip6_octets,
    },
    pin::{NETDEV6_FROM, NETDEV6_TO},
};

use crate::{
    conntrack,
    counters::{self, TC_OK},
    flow::EventTuple,
    lb::{
        reject6,
        tc6::{self, Flow6},
        v6,
    },
    packet::{self, TCP_ACK, TCP_SYN},
};

/// `weir_from_netdev6` and `weir_to_netdev6`, filled by the agent.
#[map]
static WEIR_NETDEV6: ProgramArray = ProgramArray::pinned(2, 0);
/// The node's IPv6 address and uplink, written by the agent.
#[map]
static WEIR_UPLINK6: Array<Uplink6> = Array::pinned(1, 0);
/// The client of each SNATed flow, by its reply-direction key.
#[map]
static WEIR_SNAT6: LruHashMap<CtKey6, Nat6> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);

/// Source ports tried for a flow SNATed to a remote backend (as IPv4's
/// `snat_port`).
const SNAT_TRIES: u32 = 8;
const SNAT_PORT_MIN: u32 = 32_768;
const SNAT_PORT_SPAN: u32 = 28_232;

/// On to `weir_from_netdev6`; returns only if the slot is empty (an agent
/// that has not filled it: the packet then goes to the node's stack as it
/// did before this path existed).
#[inline(always)]
pub fn tail_from_netdev(ctx: &TcContext) {
    // Safety: a tail call with the program's own context.
    let _ = unsafe { WEIR_NETDEV6.tail_call(ctx, NETDEV6_FROM) };
}

/// On to `weir_to_netdev6`, as `tail_from_netdev`.
#[inline(always)]
pub fn tail_to_netdev(ctx: &TcContext) {
    // Safety: as above.
    let _ = unsafe { WEIR_NETDEV6.tail_call(ctx, NETDEV6_TO) };
}

/// A SNATed flow's reply goes to the node's address at `port`: `reply`'s
/// destination becomes that.
#[inline(always)]
pub(crate) fn snat_client(reply: &mut CtKey6, port: u16) {
    if let Some(u) = WEIR_UPLINK6.get(0) {
        (reply.daddr, reply.dport) = (u.node_addr, port);
    }
}

/// The node's IPv6 address, once the agent wrote it.
#[inline(always)]
fn node_addr() -> Option<Ip6> {
    let u: &Uplink6 = WEIR_UPLINK6.get(0)?;
    if u.node_addr == [0; 4] { None } else { Some(u.node_addr) }
}

impl EventTuple for Flow6 {
    #[inline(always)]
    unsafe fn write_addresses(&self, family: *mut u8, saddr: *mut [u8; 16], daddr: *mut [u8; 16]) {
        // Safety: as the caller promises.
        unsafe {
            *family = weir_common::flow::FAMILY_IPV6;
            *saddr = ip6_octets(self.saddr);
            *daddr = ip6_octets(self.daddr);
        }
    }
    #[inline(always)]
    fn ports_proto(&self) -> (u16, u16, u8) {
        (self.sport, self.dport, self.proto)
    }
}

/// `weir_from_netdev6`.
#[inline(always)]
pub fn from_netdev(ctx: &TcContext) -> i32 {
    // Not TCP, UDP or SCTP (as `lb::parse6` finds them): the node's stack
    // decides.
    let mut flow = Flow6::NONE;
    if !tc6::parse(ctx, &mut flow) {
        return TC_OK;
    }
    match try_from_netdev(ctx, &flow) {
        Ok(action) => action,
        Err(reason) => {
            counters::dropped(ctx, reason, &flow, FLOW_DIR_INGRESS);
            TC_ACT_SHOT as i32
        }
    }
}

/// What `continue_flow` did.
const NEW: u8 = 0;
/// DNATed to a local backend: on through the node's stack.
const LOCAL: u8 = 1;
/// SNATed to a remote backend: back out of the uplink.
const SNATED: u8 = 2;

#[inline(always)]
fn try_from_netdev(ctx: &TcContext, flow: &Flow6) -> Result<i32, DropReason> {
    if reply_of_remote(ctx, flow)? {
        return Ok(counters::pass(packet::out_via(packet::ifindex(ctx))));
    }
    let Some(svc) = frontend(flow) else { return Ok(TC_OK) };
    if svc.flags & ServiceValue::FLAG_SOURCE_RANGES != 0 && !v6::source_allowed(svc.rev_nat_id, &flow.saddr) {
        return Err(DropReason::SourceRange);
    }
    if svc.count == 0 {
        if svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
            return Err(DropReason::NoLocalBackend);
        }
        counters::dropped(ctx, DropReason::NoBackend, flow, FLOW_DIR_INGRESS);
        // A fragment, or a packet behind extension headers, is dropped
        // unanswered, as IPv4 does a fragment (`reject6`'s quote would end
        // before the ports the client's kernel finds its socket by).
        if usize::from(flow.l4_off) != tc6::L4_OFF {
            return Ok(TC_ACT_SHOT as i32);
        }
        return Ok(reject6::port_unreachable(ctx, flow));
    }
    let now = conntrack::now_secs();
    let done = match continue_flow(ctx, flow, now)? {
        NEW => new_flow(ctx, flow, &svc, now)?,
        done => done,
    };
    Ok(counters::pass(if done == SNATED { packet::out_via(packet::ifindex(ctx)) } else { TC_OK }))
}

/// The frontend's slot 0, external scope (clients through the uplink are
/// external: `externalTrafficPolicy: Local` sends them to local backends
/// only).
#[inline(never)]
fn frontend(flow: &Flow6) -> Option<ServiceValue> {
    v6::service(&ServiceKey6::new(flow.daddr, flow.dport, flow.proto, SCOPE_EXTERNAL, 0))
}

/// A remote backend answering a flow this node SNATed: to the client, from
/// the frontend. Whether it was one.
#[inline(never)]
fn reply_of_remote(ctx: &TcContext, flow: &Flow6) -> Result<bool, DropReason> {
    let reply = CtKey6::reply(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto);
    let Some(ct) = tc6::lookup(&reply) else { return Ok(false) };
    if ct.flags & CtEntry::FLAG_SNAT == 0 {
        return Ok(false);
    }
    // Safety: copied out at once.
    let Some(client) = (unsafe { WEIR_SNAT6.get(&reply) }).copied() else { return Ok(false) };
    let Some(rn) = v6::rev_nat(ct.rev_nat_id) else { return Ok(false) };
    if !lives(&client.addr, client.port, &rn, flow.proto) {
        return Ok(false);
    }
    tc6::rewrite_dst(ctx, flow, &client.addr, client.port)?;
    tc6::rewrite_src(ctx, flow, &rn.addr, rn.port)?;
    Ok(true)
}

/// Whether the flow from `client` to the frontend `rn` lives (its original
/// entry is there, neither reset nor closed past the grace period): only
/// then do its replies translate, so a later connection reusing the tuple
/// is never rewritten. A half-closed flow's grace counts from its last
/// reply.
#[inline(never)]
fn lives(client: &Ip6, client_port: u16, rn: &RevNat6, proto: u8) -> bool {
    let original = CtKey6::original(*client, client_port, rn.addr, rn.port, proto);
    let now = conntrack::now_secs();
    match tc6::lookup(&original) {
        Some(o) if !o.is_over(now) => {
            if o.flags & CtEntry::FLAG_CLOSING != 0 && o.created != now {
                tc6::refresh(&original, now);
            }
            true
        }
        _ => false,
    }
}

/// A live flow keeps its backend while it exists, SNATed as it was; a SYN
/// on a closing flow's tuple is a new connection (as for IPv4).
#[inline(never)]
fn continue_flow(ctx: &TcContext, flow: &Flow6, now: u32) -> Result<u8, DropReason> {
    let original = CtKey6::original(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto);
    let Some(ct) = tc6::lookup(&original) else { return Ok(NEW) };
    if ct.is_over(now) || (ct.flags & CtEntry::FLAG_CLOSING != 0 && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN) {
        return Ok(NEW);
    }
    let Some(b) = v6::backend(ct.backend_id) else { return Ok(NEW) };
    let snat = if ct.flags & CtEntry::FLAG_SNAT != 0 {
        match node_addr() {
            Some(node) => Some(node),
            None => return Ok(NEW),
        }
    } else {
        None
    };
    tc6::observe_client(&original, &ct, flow, &b);
    tc6::rewrite_dst(ctx, flow, &b.addr, b.port)?;
    if let Some(node) = snat {
        tc6::rewrite_src(ctx, flow, &node, ct.nat_port)?;
        return Ok(SNATED);
    }
    Ok(LOCAL)
}

/// A new flow: a backend chosen, its entries written, the packet
/// translated. `LOCAL` or `SNATED`.
#[inline(never)]
fn new_flow(ctx: &TcContext, flow: &Flow6, svc: &ServiceValue, now: u32) -> Result<u8, DropReason> {
    let key = ServiceKey6::new(flow.daddr, flow.dport, flow.proto, SCOPE_EXTERNAL, 0);
    let (backend_id, b) = v6::choose(&key, svc, &flow.saddr, now).ok_or(DropReason::NoBackend)?;
    let entry = CtEntry { backend_id, rev_nat_id: svc.rev_nat_id, created: now, ..CtEntry::default() };
    // Local backends (always, under externalTrafficPolicy: Local) see the
    // client's address, and their replies pass this node anyway.
    let done = if b.flags & Backend::FLAG_LOCAL != 0 || svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
        to_local(ctx, flow, &b, &entry)?
    } else {
        // A remote backend: the node's address as the source, so the reply
        // comes back here.
        let node = node_addr().ok_or(DropReason::SnatExhausted)?;
        let port = snat_port(flow, &node, &b.addr, b.port).ok_or(DropReason::SnatExhausted)?;
        record_snat(flow, &b, &entry, &node, port);
        tc6::rewrite_dst(ctx, flow, &b.addr, b.port)?;
        tc6::rewrite_src(ctx, flow, &node, port)?;
        SNATED
    };
    // A new flow (later packets take `continue_flow`).
    tc6::tell_translated(ctx, flow, FLOW_DIR_INGRESS, &b);
    Ok(done)
}

// `to_local`, `snat_port` and `record_snat` in frames of their own, each
// called from `new_flow` in turn (not nested, and not around the
// rewrites): the deepest chain of frames must stay well under the 512
// bytes of stack.

#[inline(never)]
fn to_local(ctx: &TcContext, flow: &Flow6, b: &Backend6, entry: &CtEntry) -> Result<u8, DropReason> {
    tc6::insert(&CtKey6::reply(b.addr, b.port, flow.saddr, flow.sport, flow.proto), entry);
    tc6::insert(&CtKey6::original(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto), entry);
    tc6::rewrite_dst(ctx, flow, &b.addr, b.port)?;
    Ok(LOCAL)
}

/// The entries of a flow SNATed to `node`:`port`: the client first, then
/// the reply entry that leads to it, then the original, so a reply never
/// finds an entry without its client.
#[inline(never)]
fn record_snat(flow: &Flow6, b: &Backend6, entry: &CtEntry, node: &Ip6, port: u16) {
    let reply = CtKey6::reply(b.addr, b.port, *node, port, flow.proto);
    let _ = WEIR_SNAT6.insert(&reply, &Nat6 { addr: flow.saddr, port: flow.sport, _pad: 0 }, 0);
    let mut e = *entry;
    e.flags = CtEntry::FLAG_SNAT;
    e.nat_port = flow.sport;
    tc6::insert(&reply, &e);
    e.nat_port = port;
    tc6::insert(&CtKey6::original(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto), &e);
}

/// The source port for a flow SNATed to `node`: the client's own port
/// unless another client already holds that reply tuple, else a few
/// random ones.
#[inline(never)]
fn snat_port(flow: &Flow6, node: &Ip6, backend: &Ip6, backend_port: u16) -> Option<u16> {
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = if i == 0 {
            flow.sport
        } else {
            // Safety: helper without arguments.
            ((SNAT_PORT_MIN + unsafe { bpf_get_prandom_u32() } % SNAT_PORT_SPAN) as u16).to_be()
        };
        if tc6::lookup(&CtKey6::reply(*backend, backend_port, *node, port, flow.proto)).is_none() {
            return Some(port);
        }
        i += 1;
    }
    None
}

/// `weir_to_netdev6`: a reply of a backend on the node's own stack to an
/// uplink client, leaving by the uplink, gets its frontend back as its
/// source (routed already: the client is reached through this interface,
/// and the source stays a node address).
#[inline(always)]
pub fn to_netdev(ctx: &TcContext) -> i32 {
    let mut flow = Flow6::NONE;
    if !tc6::parse(ctx, &mut flow) {
        return TC_OK;
    }
    match reply_of_host(ctx, &flow) {
        Ok(true) => counters::pass(TC_OK),
        Ok(false) => TC_OK,
        Err(reason) => {
            counters::dropped(ctx, reason, &flow, FLOW_DIR_EGRESS);
            TC_ACT_SHOT as i32
        }
    }
}

#[inline(never)]
fn reply_of_host(ctx: &TcContext, flow: &Flow6) -> Result<bool, DropReason> {
    let Some(rn) = uplink_reply(flow) else { return Ok(false) };
    tc6::rewrite_src(ctx, flow, &rn.addr, rn.port)?;
    Ok(true)
}

/// The frontend of the live uplink flow whose local backend sent `flow`
/// (a reply: backend to client), if it is one. Pod clients' replies are
/// reversed at their own veth, SNATed flows' as they come back in, and a
/// hairpinned flow never leaves its pod's veth: none of those.
#[inline(always)]
fn uplink_reply(flow: &Flow6) -> Option<RevNat6> {
    let reply = CtKey6::reply(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto);
    let ct = tc6::lookup(&reply)?;
    if ct.flags & (CtEntry::FLAG_POD_CLIENT | CtEntry::FLAG_SNAT | CtEntry::FLAG_HAIRPIN) != 0 {
        // A pod client's reply: `local6` may deliver it, with this entry.
        if ct.flags & CtEntry::FLAG_POD_CLIENT != 0 {
            crate::pod6::stash_reply(&ct);
        }
        return None;
    }
    let rn = v6::rev_nat(ct.rev_nat_id)?;
    if !tc6::lives_past(&ct) && !lives(&flow.daddr, flow.dport, &rn, flow.proto) {
        tc6::remove(&reply);
        return None;
    }
    Some(rn)
}

/// `reply_of_local`'s answer for a packet that is not such a reply (no tc
/// action is this).
pub const NOT_REPLY: i32 = i32::MAX;

/// A packet leaving a local pod backend that is its reply to an uplink
/// client: reversed to come from the frontend, and its tc verdict
/// (uncounted; `TC_ACT_SHOT` if the rewrite failed), else `NOT_REPLY`.
/// From a NodePort (the node's address) it is handed straight to the
/// uplink (`packet::out_via`), as routing would drop a forwarded packet
/// with a local source.
// A plain integer back: a `Result<Option<i32>, _>` came back packed in a
// register the verifier refused to shift.
#[inline(never)]
pub fn reply_of_local(ctx: &TcContext, flow: &Flow6) -> i32 {
    let Some(rn) = uplink_reply(flow) else { return NOT_REPLY };
    if tc6::rewrite_src(ctx, flow, &rn.addr, rn.port).is_err() {
        return TC_ACT_SHOT as i32;
    }
    match WEIR_UPLINK6.get(0) {
        Some(u) if u.node_addr == rn.addr => packet::out_via(u.ifindex),
        _ => TC_OK,
    }
}
