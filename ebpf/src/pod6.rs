//! IPv6 through a pod's programs. `weir_from_pod` and `weir_to_pod` hand an
//! IPv6 packet here at once (`ipv6::is_ipv6`): `ipv6::screen` passes what
//! always passes and drops what must (no endpoint, policy pending, a
//! spoofed source); the rest goes on, by tail calls, to programs of their
//! own (the IPv6 Service and policy state does not fit on one stack): the
//! Service translation (`lb::tc6`), then the pod's policy, in IPv4's
//! order. Leaving: `weir_from_pod6` translates, `weir_egress6` judges the
//! backend a Service flow was sent to (the packet as sent reaches it in a
//! per-CPU stash). Entering: `weir_to_pod6` gives a reply its frontend
//! back and judges what is not a reply of a flow the pod opened. With the
//! tail-call slots empty (an agent still starting), the policy alone
//! judges the packet untranslated.
use aya_ebpf::{bindings::TC_ACT_SHOT, macros::map, maps::PerCpuArray, programs::TcContext};
use weir_common::{
    DropReason, EndpointInfo,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS},
    lb::{CtEntry, PROTO_TCP},
    policy::{DIR_EGRESS, DIR_INGRESS},
};

use crate::{
    counters::{self, TC_OK},
    endpoint,
    ipv6::{self, Flow6},
    lb::tc6,
    local6,
    packet::{self, TCP_ACK, TCP_SYN},
    policy,
};

/// `screen_*`'s answer when the packet goes on (no tc action is this).
const GO_ON: i32 = i32::MAX;

/// `weir_from_pod`'s IPv6 path.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    let action = screen_leaving(ctx);
    if action != GO_ON {
        return action;
    }
    tc6::tail_from_pod(ctx);
    judged_leaving(ctx)
}

/// `weir_to_pod`'s IPv6 path.
#[inline(always)]
pub fn to_pod(ctx: &TcContext) -> i32 {
    let action = screen_entering(ctx);
    if action != GO_ON {
        return action;
    }
    tc6::tail_to_pod(ctx);
    judged_entering(ctx)
}

// Each in a frame of its own: the tail call is made from the program's
// first frame, which must stay small.
#[inline(never)]
fn screen_leaving(ctx: &TcContext) -> i32 {
    screen(ctx, Some(DropReason::UnknownEndpoint), true)
}

#[inline(never)]
fn screen_entering(ctx: &TcContext) -> i32 {
    screen(ctx, None, false)
}

#[inline(never)]
fn judged_leaving(ctx: &TcContext) -> i32 {
    ipv6::at_pod(ctx, Some(DropReason::UnknownEndpoint), true)
}

#[inline(never)]
fn judged_entering(ctx: &TcContext) -> i32 {
    ipv6::at_pod(ctx, None, false)
}

#[inline(always)]
fn screen(ctx: &TcContext, missing: Option<DropReason>, leaving: bool) -> i32 {
    let mut seen = Flow6::NONE;
    let dir = if leaving { FLOW_DIR_EGRESS } else { FLOW_DIR_INGRESS };
    match ipv6::screen(ctx, packet::ifindex(ctx), missing, leaving, &mut seen) {
        Ok(Some(_)) => GO_ON,
        Ok(None) if leaving => counters::pass(TC_OK),
        Ok(None) => TC_OK,
        Err(reason) => ipv6::finish(ctx, Err(reason), &seen, dir),
    }
}

/// What `weir_from_pod6` hands `weir_egress6` across the tail call (on the
/// same CPU, in the same packet's run).
#[derive(Clone, Copy)]
pub struct Stash {
    /// The packet as the pod sent it, when `lb::tc6` read it (TCP, UDP or
    /// SCTP, as `lb::parse6` finds them).
    pub(crate) sent: Flow6,
    pub(crate) sent_valid: bool,
    /// The backend it was sent to, when translated, and whether that is a
    /// pod of this node (`local6` may deliver to it).
    pub(crate) backend: [u8; 16],
    pub(crate) backend_port: u16,
    pub(crate) backend_local: bool,
    /// The reply entry of a pod client's Service flow this packet belongs
    /// to, when `lb::tc6` found one (its uplink check looks it up).
    pub(crate) reply: CtEntry,
    pub(crate) reply_found: bool,
    /// `tc6::NOT_SERVICE` ...
    pub(crate) outcome: u8,
    /// The verdict so far.
    action: i32,
}

#[map]
static WEIR_STASH6: PerCpuArray<Stash> = PerCpuArray::with_max_entries(1, 0);

/// The packet as sent (called by `lb::tc6` as it reads it, written
/// straight into the stash: `weir_from_pod6` has no stack to spare).
/// `proto_flags`: the protocol, and the TCP flags above it.
#[inline(always)]
pub fn stash_sent(saddr: &[u32; 4], daddr: &[u32; 4], sport: u16, dport: u16, proto_flags: u16) {
    let Some(st) = WEIR_STASH6.get_ptr_mut(0) else { return };
    // Safety: this CPU's entry; nothing else runs on it meanwhile. The
    // addresses are the same bytes either way.
    unsafe {
        (*st).sent.saddr = core::mem::transmute::<[u32; 4], [u8; 16]>(*saddr);
        (*st).sent.daddr = core::mem::transmute::<[u32; 4], [u8; 16]>(*daddr);
        (*st).sent.sport = sport;
        (*st).sent.dport = dport;
        (*st).sent.proto = proto_flags as u8;
        (*st).sent.tcp_flags = (proto_flags >> 8) as u8;
        (*st).sent.icmp_type = 0;
        (*st).sent_valid = true;
    }
}

/// The backend a packet was translated to (called by `lb::tc6` as it
/// rewrites it), and whether it is a pod of this node.
#[inline(always)]
pub fn stash_translated(addr: &[u32; 4], port: u16, local: bool) {
    let Some(st) = WEIR_STASH6.get_ptr_mut(0) else { return };
    // Safety: as in `stash_sent`.
    unsafe {
        (*st).backend = core::mem::transmute::<[u32; 4], [u8; 16]>(*addr);
        (*st).backend_port = port;
        (*st).backend_local = local;
    }
}

/// `weir_deliver6`: the packet `weir_from_pod6` let go with the verdict it
/// stashed, straight into its destination pod if it may.
#[inline(always)]
pub fn deliver6(ctx: &TcContext) -> i32 {
    pass_on(ctx, WEIR_STASH6.get(0).map_or(TC_OK, |st| st.action))
}

/// The reply entry of a pod client's Service flow the packet belongs to.
#[inline(always)]
pub fn stash_reply(ct: &CtEntry) {
    let Some(st) = WEIR_STASH6.get_ptr_mut(0) else { return };
    // Safety: as in `stash_sent`.
    unsafe {
        (*st).reply = *ct;
        (*st).reply_found = true;
    }
}

/// What this packet's run stashed so far (this CPU's entry).
#[inline(always)]
pub(crate) fn stashed() -> Option<&'static Stash> {
    WEIR_STASH6.get(0)
}

/// The packet goes on with `action`, straight into its destination pod
/// if `local6` may send it there, counted as passed (or dropped there).
#[inline(always)]
fn pass_on(ctx: &TcContext, action: i32) -> i32 {
    match local6::deliver(ctx, action) {
        local6::KERNEL => counters::pass(action),
        local6::DROPPED => TC_ACT_SHOT as i32,
        sent => counters::pass(sent),
    }
}

/// `weir_from_pod6`: a packet `weir_from_pod` screened, on to its Service
/// backend, then (`weir_egress6`) the pod's egress policy on what it
/// became.
#[inline(always)]
pub fn from_pod6(ctx: &TcContext) -> i32 {
    if let Some(st) = WEIR_STASH6.get_ptr_mut(0) {
        // Safety: as in `stash_sent`.
        unsafe {
            (*st).sent_valid = false;
            (*st).backend_local = false;
            (*st).reply_found = false;
        }
    }
    let (outcome, action) = match tc6::from_pod(ctx) {
        Ok(done) => done,
        Err(reason) => {
            counters::count(reason);
            return TC_ACT_SHOT as i32;
        }
    };
    // The pod's reply to itself: its flow passed the ingress check.
    if outcome == tc6::REPLY {
        return counters::pass(action);
    }
    let Some(st) = WEIR_STASH6.get_ptr_mut(0) else { return fail_closed(ctx, action) };
    // Safety: as in `stash_sent`.
    unsafe {
        (*st).outcome = outcome;
        (*st).action = action;
    }
    // A pod under no policy has nothing for `weir_egress6` to do but tell
    // the flow log of a new TCP connection: every other packet goes on
    // here, without a second tail call.
    // Safety: as in `stash_sent`.
    let (sent_valid, proto, flags) = unsafe { ((*st).sent_valid, (*st).sent.proto, (*st).sent.tcp_flags) };
    let opens = proto == PROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if outcome != tc6::REJECTED
        && sent_valid
        && !opens
        && endpoint::by_ifindex(packet::ifindex(ctx)).is_some_and(|ep| !policy::active(&ep))
    {
        // On to `weir_deliver6` (this program's frames leave no room for
        // the delivery); with its slot empty, the kernel's way.
        local6::tail_deliver(ctx);
        return counters::pass(action);
    }
    tc6::tail_egress(ctx);
    fail_closed(ctx, action)
}

/// `weir_egress6` was not reached (the agent fills its slot first, so
/// this is not expected): a pod that enforces egress policy sends nothing
/// unjudged.
#[inline(always)]
fn fail_closed(ctx: &TcContext, action: i32) -> i32 {
    match endpoint::by_ifindex(packet::ifindex(ctx)) {
        Some(ep) if ep.flags & EndpointInfo::FLAG_EGRESS_ENFORCED == 0 => counters::pass(action),
        _ => {
            counters::count(DropReason::PolicyPending);
            TC_ACT_SHOT as i32
        }
    }
}

/// `weir_egress6`: the pod's egress policy on a packet `weir_from_pod6`
/// translated, or found not to be a Service's; its drop told to the flow
/// log.
#[inline(always)]
pub fn egress6(ctx: &TcContext) -> i32 {
    match judged_egress(ctx) {
        // Delivered from this first frame, once the policy's are gone.
        PASSED => pass_on(ctx, WEIR_STASH6.get(0).map_or(TC_OK, |st| st.action)),
        action => action,
    }
}

/// `judged_egress`' answer for a packet that passed (no tc action is this).
const PASSED: i32 = i32::MIN;

/// `PASSED`, or the verdict on a packet that did not pass (counted and
/// reported).
#[inline(never)]
fn judged_egress(ctx: &TcContext) -> i32 {
    let mut seen = Flow6::NONE;
    let result = egress6_judged(ctx, &mut seen);
    if let Ok(PASSED) = result {
        return PASSED;
    }
    ipv6::finish(ctx, result, &seen, FLOW_DIR_EGRESS)
}

#[inline(always)]
fn egress6_judged(ctx: &TcContext, seen: &mut Flow6) -> Result<i32, DropReason> {
    // Copied out at once (this CPU's entry).
    let mut st = *WEIR_STASH6.get(0).ok_or(DropReason::Malformed)?;
    // Not read by `tc6` (not TCP, UDP or SCTP as `lb::parse6` finds them):
    // not translated either, so the packet is as it was sent.
    if !st.sent_valid {
        parse_into(ctx, &mut st.sent)?;
    }
    *seen = st.sent;
    if st.outcome == tc6::REJECTED {
        counters::dropped(ctx, DropReason::NoBackend, &st.sent, FLOW_DIR_EGRESS);
        return Ok(st.action);
    }
    // Judged as it now is: a translated packet goes to its backend.
    if st.outcome == tc6::TRANSLATED {
        seen.daddr = st.backend;
        seen.dport = st.backend_port;
    }
    let judged = *seen;
    egress(ctx, &st.sent, &judged)?;
    Ok(PASSED)
}

/// The packet, read into `into` (its own frame: the parser's buffers are
/// not on the policy's stack).
#[inline(never)]
fn parse_into(ctx: &TcContext, into: &mut Flow6) -> Result<(), DropReason> {
    *into = ipv6::parse(ctx)?.ok_or(DropReason::Malformed)?;
    Ok(())
}

/// The pod's egress policy on a new flow `sent` (as it was sent), judged
/// as `judged` (to the Service backend, if translated).
#[inline(never)]
fn egress(ctx: &TcContext, sent: &Flow6, judged: &Flow6) -> Result<(), DropReason> {
    let ifindex = packet::ifindex(ctx);
    let ep = endpoint::by_ifindex(ifindex).ok_or(DropReason::UnknownEndpoint)?;
    if !policy::active(&ep) || policy::tracked(ifindex, sent) {
        policy::report_unenforced(ifindex, &ep, FLOW_DIR_EGRESS, sent);
        return Ok(());
    }
    policy::check_new(ifindex, &ep, DIR_EGRESS, judged, sent)
}

/// `weir_to_pod6`: a reply of a Service flow gets its frontend back; what
/// is not such a reply meets the pod's ingress policy.
#[inline(always)]
pub fn to_pod6(ctx: &TcContext) -> i32 {
    let mut seen = Flow6::NONE;
    let result = entering(ctx, &mut seen);
    ipv6::finish(ctx, result, &seen, FLOW_DIR_INGRESS)
}

#[inline(always)]
fn entering(ctx: &TcContext, seen: &mut Flow6) -> Result<i32, DropReason> {
    let arrived = ipv6::parse(ctx)?.ok_or(DropReason::Malformed)?;
    *seen = arrived;
    // Judged as it arrived, before any reply translation (as for IPv4):
    // `tracked` is read first.
    let judge = ingress_tracked(ctx, &arrived);
    if tc6::to_pod(ctx)? {
        // A reply of a Service flow this pod opened: its egress check saw it.
        return Ok(TC_OK);
    }
    ingress(ctx, &arrived, judge)?;
    Ok(TC_OK)
}

/// Whether the endpoint enforces policy and `arrived` is of no flow it
/// allowed (as `policy::tracked`).
#[inline(never)]
fn ingress_tracked(ctx: &TcContext, arrived: &Flow6) -> bool {
    let ifindex = packet::ifindex(ctx);
    endpoint::by_ifindex(ifindex).is_some_and(|ep| policy::active(&ep) && !policy::tracked(ifindex, arrived))
}

/// The pod's ingress policy on `arrived`, a new flow when `judge`.
#[inline(never)]
fn ingress(ctx: &TcContext, arrived: &Flow6, judge: bool) -> Result<(), DropReason> {
    let ifindex = packet::ifindex(ctx);
    let Some(ep) = endpoint::by_ifindex(ifindex) else { return Ok(()) };
    if judge {
        policy::check_new(ifindex, &ep, DIR_INGRESS, arrived, arrived)
    } else {
        policy::report_unenforced(ifindex, &ep, FLOW_DIR_INGRESS, arrived);
        Ok(())
    }
}
