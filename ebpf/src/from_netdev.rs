//! Packets entering the node through its uplink: NodePort, external IP and
//! load-balancer traffic, and replies of flows sent to remote backends.
//! IPv6 goes on to `weir_from_netdev6` (`netdev6`).
use aya_ebpf::programs::TcContext;
use weir_common::{DropReason, flow::FLOW_DIR_INGRESS};

use crate::{
    counters::{self, TC_OK},
    ipv6,
    lb::netdev::{self, Outcome},
    netdev6,
    packet::{self, Flow},
    reject,
};

pub fn handle(ctx: &TcContext) -> i32 {
    // IPv6 in a program of its own (`netdev6`), from this first frame: the
    // IPv4 path's code stays as it was, one field read in front.
    if ipv6::is_ipv6(ctx) {
        netdev6::tail_from_netdev(ctx);
        return TC_OK;
    }
    // Not IPv4, or not parseable: the node's own stack decides.
    counters::finish_parsed(ctx, FLOW_DIR_INGRESS, try_handle)
}

#[inline(always)]
fn try_handle(ctx: &TcContext, flow: &Flow) -> Result<i32, DropReason> {
    match netdev::translate(ctx, flow)? {
        Outcome::NotService => Ok(TC_OK),
        Outcome::Translated => Ok(counters::pass(TC_OK)),
        Outcome::TranslatedToUplink => Ok(counters::pass(packet::out_via(packet::ifindex(ctx)))),
        Outcome::NoBackend { frontend_addr } => {
            counters::dropped(ctx, DropReason::NoBackend, flow, FLOW_DIR_INGRESS);
            Ok(reject::icmp_port_unreachable(ctx, flow, frontend_addr))
        }
    }
}
