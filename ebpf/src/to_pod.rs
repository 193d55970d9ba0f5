//! Packets going to a pod (tc egress on its host veth): replies of
//! translated flows get their frontend address back, and new flows meet the
//! pod's ingress policy.
use aya_ebpf::programs::TcContext;
use weir_common::{DropReason, EndpointInfo, flow::FLOW_DIR_INGRESS, policy::DIR_INGRESS};

use crate::{
    counters::{self, TC_OK},
    endpoint, ipv6,
    lb::reverse,
    packet::{self, Flow},
    pod6, policy,
};

pub fn handle(ctx: &TcContext) -> i32 {
    if ipv6::is_ipv6(ctx) { pod6::to_pod(ctx) } else { handle_ipv4(ctx) }
}

// IPv4 in a function of its own, IPv6 in `pod6`'s, as in `from_pod`.
#[inline(never)]
fn handle_ipv4(ctx: &TcContext) -> i32 {
    // What a drop reports: the packet as far as it was read.
    let mut seen = Flow::NONE;
    let result = try_handle(ctx, &mut seen);
    counters::finish(ctx, result, &seen, FLOW_DIR_INGRESS)
}

#[inline(always)]
fn try_handle(ctx: &TcContext, seen: &mut Flow) -> Result<i32, DropReason> {
    let Some(flow) = packet::parse(ctx)? else {
        ipv6::refuse_unjudged(ctx)?;
        return Ok(TC_OK);
    };
    *seen = flow;
    // On egress, the device the packet leaves by: the pod's host veth.
    let ifindex = packet::ifindex(ctx);
    // An endpoint's entry or none, never an `Option` whose payload is
    // undefined when empty: LLVM kept that payload in a register across the
    // reply lookup and spilled it, a read the verifier refuses.
    let found = endpoint::by_ifindex(ifindex);
    let known = found.is_some();
    let ep = found.unwrap_or(EndpointInfo::new([0; 4], 0));
    if ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
        return Err(DropReason::PolicyPending);
    }
    // New flows of a pod under policy (judged after any reply translation).
    let judge = known && policy::active(&ep) && !policy::tracked(ifindex, &flow);
    // A hairpin reply never comes this way (from_pod sends it back out
    // directly), so any reversal here is a plain one.
    let reversed = reverse::to_client(ctx, &flow)?;
    // (A reversed packet is a reply of a Service flow this pod opened,
    // which its egress check already saw.)
    if judge && !reversed {
        policy::check_new(ifindex, &ep, DIR_INGRESS, &flow, &flow)?;
    } else if known && !reversed {
        policy::report_unenforced(ifindex, &ep, FLOW_DIR_INGRESS, &flow);
    }
    Ok(TC_OK)
}
