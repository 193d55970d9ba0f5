//! Packets entering the node through its uplink: NodePort, external IP and
//! load-balancer traffic, and replies of flows sent to remote backends.
use aya_ebpf::programs::TcContext;
use weir_common::DropReason;

use crate::{
    counters::{self, TC_OK},
    lb::netdev::{self, Outcome},
    packet, reject,
};

pub fn handle(ctx: &TcContext) -> i32 {
    counters::finish(try_handle(ctx))
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<i32, DropReason> {
    // Not IPv4, or not parseable: the node's own stack decides.
    let Ok(Some(flow)) = packet::parse(ctx) else {
        return Ok(TC_OK);
    };
    match netdev::translate(ctx, &flow)? {
        Outcome::NotService => Ok(TC_OK),
        Outcome::Translated => Ok(counters::pass(TC_OK)),
        Outcome::TranslatedToUplink => Ok(counters::pass(packet::out_via(packet::ifindex(ctx)))),
        Outcome::NoBackend { frontend_addr } => {
            counters::count(DropReason::NoBackend);
            Ok(reject::icmp_port_unreachable(ctx, &flow, frontend_addr))
        }
    }
}
