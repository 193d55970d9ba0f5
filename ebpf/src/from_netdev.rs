//! Packets entering the node through its uplink: NodePort, external IP and
//! load-balancer traffic, and replies of flows sent to remote backends.
use aya_ebpf::{
    bindings::TC_ACT_OK,
    programs::TcContext,
};
use weir_common::DropReason;

use crate::{counters, lb, packet, reject};

pub fn handle(ctx: &TcContext) -> i32 {
    counters::finish(try_handle(ctx))
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<i32, DropReason> {
    // Not IPv4, or not parseable: the node's own stack decides.
    let Ok(Some(flow)) = packet::parse(ctx) else {
        return Ok(TC_ACT_OK as i32);
    };
    match lb::from_netdev(ctx, &flow)? {
        lb::Outcome::NotService => Ok(TC_ACT_OK as i32),
        // Hairpin only arises for pods (from_pod).
        lb::Outcome::Translated | lb::Outcome::Hairpin => {
            counters::count(DropReason::Passed);
            Ok(TC_ACT_OK as i32)
        }
        lb::Outcome::TranslatedToUplink => {
            counters::count(DropReason::Passed);
            // Safety: reading a plain u32 field of the kernel's __sk_buff.
            let ingress = unsafe { (*ctx.skb.skb).ifindex };
            Ok(packet::out_via(ingress))
        }
        lb::Outcome::NoBackend { frontend_addr } => {
            counters::count(DropReason::NoBackend);
            Ok(reject::icmp_port_unreachable(ctx, &flow, frontend_addr))
        }
    }
}
