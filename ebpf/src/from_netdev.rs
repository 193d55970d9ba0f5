//! Packets entering the node through its uplink: NodePort, external IP and
//! load-balancer traffic, and replies of flows sent to remote backends.
use aya_ebpf::programs::TcContext;
use weir_common::{DropReason, flow::FLOW_DIR_INGRESS};

use crate::{
    counters::{self, TC_OK},
    lb::netdev::{self, Outcome},
    packet::{self, Flow},
    reject,
};

pub fn handle(ctx: &TcContext) -> i32 {
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
