//! Packets leaving a pod (tc ingress on its host veth).
//!
//! Fails closed: a veth with no endpoint entry passes nothing but ARP, so the
//! program can be attached before anything else is ready.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use weir_common::{DropReason, EndpointInfo};

use crate::{counters, endpoint};

const ETH_P_IP: u16 = 0x0800_u16.to_be();

pub fn handle(ctx: &TcContext) -> i32 {
    let verdict = try_handle(ctx);
    counters::count(verdict);
    match verdict {
        DropReason::Passed => TC_ACT_OK,
        _ => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> DropReason {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return DropReason::Malformed;
    };
    // ARP must flow for the pod to find its gateway; IPv6 is not configured
    // on weir pods and the kernel drops it on the host side anyway.
    if eth.ether_type != ETH_P_IP {
        return DropReason::Passed;
    }
    // Safety: reading a plain u32 field of the kernel's __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(ep) = endpoint::by_ifindex(ifindex) else {
        return DropReason::UnknownEndpoint;
    };
    let Ok(ip) = ctx.load::<Ipv4Hdr>(EthHdr::LEN) else {
        return DropReason::Malformed;
    };
    // A raw socket in the pod can send anything; later stages read L4
    // headers at the IHL offset, so refuse headers that lie about it.
    if ip.version() != 4 || ip.ihl() < Ipv4Hdr::LEN as u8 {
        return DropReason::Malformed;
    }
    if ep.flags & EndpointInfo::FLAG_VERIFY_SOURCE != 0
        && u32::from_ne_bytes(ip.src_addr) != ep.ipv4
    {
        return DropReason::SourceSpoofed;
    }
    DropReason::Passed
}
