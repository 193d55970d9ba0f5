//! Turns a packet to a Service without backends into an ICMP port
//! unreachable for the client, sent straight back out of the interface it
//! came in on, so connects fail at once (ECONNREFUSED) instead of hanging.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use network_types::eth::EthHdr;

use crate::packet::{self, Flow, IP_OFF};

const IP_LEN: usize = 20;
const ICMP_LEN: usize = 8;
/// ICMP quotes the original IP header and the first 8 bytes after it.
const QUOTE_LEN: usize = IP_LEN + 8;
const TOTAL: usize = EthHdr::LEN + IP_LEN + ICMP_LEN + QUOTE_LEN;

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Returns the tc verdict. Only for packets whose IP header has no options
/// (anything else is dropped).
#[inline(always)]
pub fn icmp_port_unreachable(ctx: &TcContext, flow: &Flow, frontend_addr: u32) -> i32 {
    if flow.l4_off != IP_OFF + IP_LEN {
        return TC_ACT_SHOT as i32;
    }
    let Ok(eth) = ctx.load::<EthHdr>(0) else { return TC_ACT_SHOT as i32 };
    let Ok(quote) = ctx.load::<[u8; QUOTE_LEN]>(IP_OFF) else { return TC_ACT_SHOT as i32 };
    // Safety: ctx.skb.skb is the program's own __sk_buff.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, TOTAL as u32, 0) } != 0 {
        return TC_ACT_SHOT as i32;
    }

    let out_eth = EthHdr { dst_addr: eth.src_addr, src_addr: eth.dst_addr, ether_type: eth.ether_type };
    let total_len = ((IP_LEN + ICMP_LEN + QUOTE_LEN) as u16).to_be_bytes();
    let src = frontend_addr.to_ne_bytes();
    let dst = flow.saddr.to_ne_bytes();
    let mut ip: [u8; IP_LEN] = [
        0x45,
        0xc0,
        total_len[0],
        total_len[1],
        0,
        0,
        0,
        0,
        64,
        1,
        0,
        0, //
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    // Safety: stack buffers of the sizes given.
    let ip_sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ip.as_mut_ptr() as *mut u32, IP_LEN as u32, 0) };
    let ip_csum = fold(ip_sum as u64).to_ne_bytes();
    ip[10] = ip_csum[0];
    ip[11] = ip_csum[1];

    // type 3 (destination unreachable), code 3 (port unreachable).
    let mut icmp = [0u8; ICMP_LEN + QUOTE_LEN];
    icmp[0] = 3;
    icmp[1] = 3;
    let mut i = 0;
    while i < QUOTE_LEN {
        icmp[ICMP_LEN + i] = quote[i];
        i += 1;
    }
    // Safety: stack buffer of the size given.
    let icmp_sum = unsafe {
        bpf_csum_diff(core::ptr::null_mut(), 0, icmp.as_mut_ptr() as *mut u32, (ICMP_LEN + QUOTE_LEN) as u32, 0)
    };
    let icmp_csum = fold(icmp_sum as u64).to_ne_bytes();
    icmp[2] = icmp_csum[0];
    icmp[3] = icmp_csum[1];

    if ctx.store(0, &out_eth, 0).is_err()
        || ctx.store(IP_OFF, &ip, 0).is_err()
        || ctx.store(IP_OFF + IP_LEN, &icmp, 0).is_err()
    {
        return TC_ACT_SHOT as i32;
    }
    // Back out of the host veth: the pod receives it on eth0.
    // Safety: plain helper call.
    unsafe { bpf_redirect(packet::ifindex(ctx), 0) as i32 }
}
