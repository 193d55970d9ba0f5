//! Packets leaving the node through its uplink (tc egress): replies of
//! flows that entered through the uplink (NodePort, external IP,
//! load-balancer IP) and were sent to a backend on the node's own network
//! stack, i.e. an endpoint whose address is the node's (a hostNetwork pod).
//! Such a backend has no veth, so no earlier program sees its replies; this
//! is the one place they pass. Replies of pod backends are reversed as they
//! leave the pod (`from_pod`) and pass here untouched. IPv6 goes on to
//! `weir_to_netdev6` (`netdev6`).
use aya_ebpf::programs::TcContext;
use weir_common::{DropReason, flow::FLOW_DIR_EGRESS};

use crate::{
    counters::{self, TC_OK},
    ipv6,
    lb::reverse,
    netdev6,
    packet::Flow,
};

pub fn handle(ctx: &TcContext) -> i32 {
    // IPv6 in a program of its own (`netdev6`), as in `from_netdev`.
    if ipv6::is_ipv6(ctx) {
        netdev6::tail_to_netdev(ctx);
        return TC_OK;
    }
    // Not IPv4, or not parseable: the node's own traffic, left alone.
    counters::finish_parsed(ctx, FLOW_DIR_EGRESS, try_handle)
}

#[inline(always)]
fn try_handle(ctx: &TcContext, flow: &Flow) -> Result<i32, DropReason> {
    // Routed already (the client is reached through this interface, and the
    // source stays a node address): the packet goes on as it is.
    if reverse::from_host(ctx, flow)? {
        counters::count(DropReason::Passed);
    }
    Ok(TC_OK)
}
