//! Packets leaving a pod (tc ingress on its host veth): source check,
//! Service translation, then the pod's egress policy on the translated
//! packet (the policy sees the real backend).
//!
//! Fails closed: a veth with no endpoint entry passes nothing but ARP (and
//! IPv6 neighbour discovery and link-local traffic), so the program can be
//! attached before anything else is ready.
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use weir_common::{DropReason, EndpointInfo, flow::FLOW_DIR_EGRESS, policy::DIR_EGRESS};

use crate::{
    counters::{self, TC_OK},
    endpoint, ipv6,
    lb::{pod, reverse},
    local, node,
    packet::{self, Flow},
    pod6, policy, reject,
};

pub fn handle(ctx: &TcContext) -> i32 {
    if ipv6::is_ipv6(ctx) {
        return pod6::from_pod(ctx);
    }
    let mut next = local::Next::NONE;
    match handle_ipv4(ctx, &mut next) {
        // After `handle_ipv4` returned, not inside it: its frame and the
        // delivery's together outgrew the 512 bytes of stack.
        local::DELIVER => match local::deliver(ctx, &next) {
            local::Delivery::Kernel => counters::pass(TC_OK),
            local::Delivery::Sent(action) => counters::pass(action),
            local::Delivery::Dropped => TC_ACT_SHOT as i32,
        },
        action => action,
    }
}

// IPv4 in a function of its own, IPv6 in `pod6`'s: inlined together, their
// state outgrew the 512 bytes of stack a program has (and `pod6` makes its
// tail call from this first frame, which must stay small). `local::DELIVER`
// leaves the packet to `local::deliver`, as `next` says.
#[inline(never)]
fn handle_ipv4(ctx: &TcContext, next: &mut local::Next) -> i32 {
    // What a drop reports: the packet as far as it was read, and as the
    // policy judged it.
    let mut seen = Flow::NONE;
    let result = try_handle(ctx, &mut seen, next);
    counters::finish(ctx, result, &seen, FLOW_DIR_EGRESS)
}

#[inline(always)]
fn try_handle(ctx: &TcContext, seen: &mut Flow, next: &mut local::Next) -> Result<i32, DropReason> {
    // ARP must flow for the pod to find its gateway (IPv6 went to `ipv6`).
    let Some(flow) = packet::parse(ctx)? else {
        ipv6::refuse_unjudged(ctx)?;
        return Ok(counters::pass(TC_OK));
    };
    *seen = flow;
    let ifindex = packet::ifindex(ctx);
    let ep = endpoint::by_ifindex(ifindex).ok_or(DropReason::UnknownEndpoint)?;
    if ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
        return Err(DropReason::PolicyPending);
    }
    if ep.flags & EndpointInfo::FLAG_VERIFY_SOURCE != 0 && flow.saddr != ep.ipv4 {
        return Err(DropReason::SourceSpoofed);
    }
    let check_policy = policy::active(&ep) && !policy::tracked(ifindex, &flow);
    // The Service maps first: a packet of a live Service flow goes on
    // translated (it is never a reply `from_backend` reverses: `pod::lookup`
    // says why). Otherwise a backend pod answering a translated flow: the
    // client sees the frontend. (A reply: its flow passed this pod's
    // ingress check.) `local`: whether it may go straight to a local pod.
    let mut local = local::Kind::NO;
    let mut direct = false;
    let outcome = match pod::lookup(ctx, &flow, &mut local)? {
        pod::Lookup::Continued(outcome) => outcome,
        lookup => match reverse::from_backend(ctx, &flow)? {
            reverse::FromBackend::NotReply => match lookup {
                pod::Lookup::New { key, svc } => pod::start(ctx, &flow, &key, &svc, &mut local)?,
                _ => {
                    direct = true;
                    pod::Outcome::NotService
                }
            },
            // Going to a pod, not to a Service.
            reverse::FromBackend::ToPodClient { frontend_addr, frontend_port } => {
                local = local::Kind::service_reply(frontend_addr, frontend_port);
                pod::Outcome::NotService
            }
            reverse::FromBackend::Reversed => return Ok(counters::pass(TC_OK)),
            reverse::FromBackend::Hairpin => return Ok(counters::pass(packet::back_out(ctx, ifindex))),
            reverse::FromBackend::ToUplink => return Ok(counters::pass(packet::out_via(node::uplink_ifindex()))),
        },
    };
    if direct {
        local = local::kind_of_direct(&flow);
    }
    let translated = !matches!(outcome, pod::Outcome::NotService);
    if check_policy && !matches!(outcome, pod::Outcome::NoBackend { .. }) {
        // Judge the packet as it now is: a translated one goes to a backend.
        if translated {
            *seen = packet::parse(ctx)?.unwrap_or(flow);
        }
        policy::check_new(ifindex, &ep, DIR_EGRESS, seen, &flow)?;
    } else if !matches!(outcome, pod::Outcome::NoBackend { .. }) {
        policy::report_unenforced(ifindex, &ep, FLOW_DIR_EGRESS, &flow);
    }
    match outcome {
        pod::Outcome::NotService | pod::Outcome::Translated if local.may() => {
            *next = local::Next { flow, kind: local };
            Ok(local::DELIVER)
        }
        pod::Outcome::NotService | pod::Outcome::Translated => Ok(counters::pass(TC_OK)),
        pod::Outcome::Hairpin => Ok(counters::pass(packet::back_out(ctx, ifindex))),
        pod::Outcome::NoBackend { frontend_addr } => {
            counters::dropped(ctx, DropReason::NoBackend, &flow, FLOW_DIR_EGRESS);
            Ok(reject::icmp_port_unreachable(ctx, &flow, frontend_addr))
        }
    }
}
