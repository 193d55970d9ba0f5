//! Packets leaving a pod (tc ingress on its host veth): source check, then
//! Service translation.
//!
//! Fails closed: a veth with no endpoint entry passes nothing but ARP, so the
//! program can be attached before anything else is ready.
use aya_ebpf::{
    bindings::TC_ACT_OK,
    programs::TcContext,
};
use weir_common::{DropReason, EndpointInfo};

use crate::{counters, endpoint, lb, packet, reject};

pub fn handle(ctx: &TcContext) -> i32 {
    counters::finish(try_handle(ctx))
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<i32, DropReason> {
    // ARP must flow for the pod to find its gateway; IPv6 is not configured
    // on weir pods and the host side does not route it.
    let Some(flow) = packet::parse(ctx)? else {
        counters::count(DropReason::Passed);
        return Ok(TC_ACT_OK as i32);
    };
    // Safety: reading a plain u32 field of the kernel's __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ep = endpoint::by_ifindex(ifindex).ok_or(DropReason::UnknownEndpoint)?;
    if ep.flags & EndpointInfo::FLAG_VERIFY_SOURCE != 0 && flow.saddr != ep.ipv4 {
        return Err(DropReason::SourceSpoofed);
    }
    // A backend pod answering a translated flow: the client sees the
    // frontend.
    match lb::reverse(ctx, &flow, lb::ReplyHook::FromBackend)? {
        lb::Reversed::No => {}
        lb::Reversed::Yes => {
            counters::count(DropReason::Passed);
            return Ok(TC_ACT_OK as i32);
        }
        lb::Reversed::Hairpin => {
            counters::count(DropReason::Passed);
            return Ok(packet::back_out(ctx, ifindex));
        }
        lb::Reversed::ToUplink => {
            counters::count(DropReason::Passed);
            return Ok(packet::out_via(lb::uplink_ifindex()));
        }
    }
    match lb::from_pod(ctx, &flow)? {
        // TranslatedVia only arises on the uplink (from_netdev).
        lb::Outcome::NotService | lb::Outcome::Translated | lb::Outcome::TranslatedToUplink => {
            counters::count(DropReason::Passed);
            Ok(TC_ACT_OK as i32)
        }
        lb::Outcome::Hairpin => {
            counters::count(DropReason::Passed);
            Ok(packet::back_out(ctx, ifindex))
        }
        lb::Outcome::NoBackend { frontend_addr } => {
            counters::count(DropReason::NoBackend);
            Ok(reject::icmp_port_unreachable(ctx, &flow, frontend_addr))
        }
    }
}
