//! ICMPv6 port unreachable for a pod's packet to an IPv6 Service without
//! backends (as `reject` does for IPv4): the packet is rewritten in place
//! into the error, from the frontend to the client, and sent straight back
//! out of the veth it came in on, so a connect fails at once.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use network_types::eth::EthHdr;

use super::tc6::{Flow6, IP6_OFF};
use crate::packet;

const IP6_LEN: usize = 40;
const ICMP6_LEN: usize = 8;
/// The error quotes the original IPv6 header and the 8 bytes after it
/// (the ports: what the client's kernel matches its socket by).
const QUOTE_LEN: usize = IP6_LEN + 8;
const PAYLOAD: usize = ICMP6_LEN + QUOTE_LEN;
const TOTAL: usize = EthHdr::LEN + IP6_LEN + PAYLOAD;
const IPPROTO_ICMPV6: u8 = 58;
/// Destination unreachable, port unreachable (RFC 4443).
const DEST_UNREACH: u8 = 1;
const PORT_UNREACH: u8 = 4;

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Returns the tc verdict.
// Not inlined: its buffer gets a frame of its own, not a share of the
// pod program's (the stack is 512 bytes for the whole call chain).
#[inline(never)]
pub fn port_unreachable(ctx: &TcContext, flow: &Flow6) -> i32 {
    let Ok(eth) = ctx.load::<EthHdr>(0) else { return TC_ACT_SHOT as i32 };
    // The IPv6 header, the ICMPv6 header, the quote: written in one store.
    let mut out = [0u8; IP6_LEN + PAYLOAD];
    // The quote straight into place, a constant length (the verifier
    // refuses `load_bytes`' length, which may be 0 for a short packet).
    // Safety: the destination is `QUOTE_LEN` bytes of `out`.
    let quoted = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            IP6_OFF as u32,
            out.as_mut_ptr().add(IP6_LEN + ICMP6_LEN) as *mut core::ffi::c_void,
            QUOTE_LEN as u32,
        )
    };
    if quoted != 0 {
        return TC_ACT_SHOT as i32;
    }
    // Safety: ctx.skb.skb is the program's own __sk_buff.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, TOTAL as u32, 0) } != 0 {
        return TC_ACT_SHOT as i32;
    }
    let out_eth = EthHdr { dst_addr: eth.src_addr, src_addr: eth.dst_addr, ether_type: eth.ether_type };
    let src = weir_common::lb::ip6_octets(flow.daddr);
    let dst = weir_common::lb::ip6_octets(flow.saddr);
    let len = (PAYLOAD as u16).to_be_bytes();
    out[0] = 0x60;
    out[4] = len[0];
    out[5] = len[1];
    out[6] = IPPROTO_ICMPV6;
    out[7] = 64;
    let mut i = 0;
    while i < 16 {
        out[8 + i] = src[i];
        out[24 + i] = dst[i];
        i += 1;
    }
    out[IP6_LEN] = DEST_UNREACH;
    out[IP6_LEN + 1] = PORT_UNREACH;
    // The checksum: the pseudo-header's addresses (the header's last 32
    // bytes), its length and next-header words, and the message.
    // Safety: stack buffers of the sizes given.
    let addrs = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, out[8..].as_mut_ptr() as *mut u32, 32, 0) };
    // Safety: as above.
    let all = unsafe {
        bpf_csum_diff(core::ptr::null_mut(), 0, out[IP6_LEN..].as_mut_ptr() as *mut u32, PAYLOAD as u32, addrs as u32)
    };
    let words =
        u32::from_ne_bytes([0, 0, len[0], len[1]]) as u64 + u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]) as u64;
    let csum = fold(all as u32 as u64 + words).to_ne_bytes();
    out[IP6_LEN + 2] = csum[0];
    out[IP6_LEN + 3] = csum[1];
    if ctx.store(0, &out_eth, 0).is_err() || ctx.store(IP6_OFF, &out, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // Back out of the host veth: the pod receives it on eth0.
    // Safety: plain helper call.
    unsafe { bpf_redirect(packet::ifindex(ctx), 0) as i32 }
}
