//! Address and port rewrites with incremental checksum updates.
//!
//! One call per packet: a packet whose source and destination both change
//! (hairpin, SNAT) takes `both`. The common header (no IP options, a
//! transport header) is rewritten with one store of the IP checksum,
//! addresses and ports, which are contiguous there, with the IP checksum
//! computed here: three helper calls for a DNAT instead of five (an L3
//! checksum helper and a store per field cost a helper call each, on every
//! packet of a translated flow). As that store writes the header from
//! `flow`, a second call on the same packet would undo the first.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use weir_common::{
    DropReason,
    lb::{PROTO_SCTP, PROTO_UDP},
};

use crate::{
    packet::{Flow, IP_CSUM_OFF, IP_DST_OFF, IP_OFF, IP_SRC_OFF},
    sctp,
};

/// Where the packet goes: its new source and destination, network order.
#[derive(Clone, Copy)]
struct Target {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// Client -> frontend becomes client -> backend.
#[inline(always)]
pub fn dnat(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), DropReason> {
    translate(ctx, flow, &Target { saddr: flow.saddr, sport: flow.sport, daddr: addr, dport: port })
}

/// Backend -> client becomes frontend -> client.
#[inline(always)]
pub fn snat(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), DropReason> {
    translate(ctx, flow, &Target { saddr: addr, sport: port, daddr: flow.daddr, dport: flow.dport })
}

/// Both at once: the destination becomes `dst`, the source `src`
/// (address, port).
#[inline(always)]
pub fn both(ctx: &TcContext, flow: &Flow, dst: (u32, u16), src: (u32, u16)) -> Result<(), DropReason> {
    translate(ctx, flow, &Target { saddr: src.0, sport: src.1, daddr: dst.0, dport: dst.1 })
}

/// The rewrite, and SCTP's CRC32c for changed ports. The CRC is updated
/// from here rather than inside `rewrite`: a call from there would be one
/// frame too deep for the pod program's stack.
#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow, to: &Target) -> Result<(), DropReason> {
    rewrite(ctx, flow, to)?;
    if flow.proto == PROTO_SCTP && flow.l4_off != 0 && !flow.fragment {
        let xor = sctp::port_xor((flow.sport, flow.dport), (to.sport, to.dport));
        sctp::ports_changed(ctx, flow.l4_off, xor, false)?;
    }
    Ok(())
}

/// RFC 1624 incremental update of a one's complement checksum `check`
/// (as stored) for a 32-bit field changing from `old` to `new` (as
/// stored): byte order does not matter to the arithmetic.
#[inline(always)]
pub fn csum_add4(sum: u32, old: u32, new: u32) -> u32 {
    sum + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16)
}

#[inline(always)]
pub fn csum_fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

// Not inlined: as one BPF-to-BPF function the verifier sees clean register
// lifetimes around the helper calls (inlined twice into the uplink program,
// LLVM spilled a register clobbered by a helper call).
#[inline(never)]
fn rewrite(ctx: &TcContext, flow: &Flow, to: &Target) -> Result<(), DropReason> {
    let fail = |_| DropReason::RewriteFailed;
    if let Some(csum_off) = flow.l4_csum_off() {
        // UDP checksum 0 means "none": the kernel keeps it 0.
        let mangled = if flow.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled | 4;
        if flow.saddr != to.saddr {
            ctx.l4_csum_replace(csum_off, flow.saddr as u64, to.saddr as u64, pseudo).map_err(fail)?;
        }
        if flow.daddr != to.daddr {
            ctx.l4_csum_replace(csum_off, flow.daddr as u64, to.daddr as u64, pseudo).map_err(fail)?;
        }
        if flow.sport != to.sport {
            ctx.l4_csum_replace(csum_off, flow.sport as u64, to.sport as u64, mangled | 2).map_err(fail)?;
        }
        if flow.dport != to.dport {
            ctx.l4_csum_replace(csum_off, flow.dport as u64, to.dport as u64, mangled | 2).map_err(fail)?;
        }
    }
    if flow.l4_off == IP_OFF + 20 {
        // IP checksum, source, destination, ports: bytes 10..24 of the IP
        // header onwards, one store.
        let sum = csum_add4(!flow.ip_csum as u32 & 0xffff, flow.saddr, to.saddr);
        let check = !csum_fold(csum_add4(sum, flow.daddr, to.daddr));
        let mut hdr = [0u8; 14];
        hdr[0..2].copy_from_slice(&check.to_ne_bytes());
        hdr[2..6].copy_from_slice(&to.saddr.to_ne_bytes());
        hdr[6..10].copy_from_slice(&to.daddr.to_ne_bytes());
        hdr[10..12].copy_from_slice(&to.sport.to_ne_bytes());
        hdr[12..14].copy_from_slice(&to.dport.to_ne_bytes());
        return ctx.store(IP_CSUM_OFF, &hdr, 0).map_err(fail);
    }
    // IP options, or a later fragment (no transport header: its addresses
    // are all there is to rewrite): field by field.
    for (addr_off, old, new) in [(IP_SRC_OFF, flow.saddr, to.saddr), (IP_DST_OFF, flow.daddr, to.daddr)] {
        if old != new {
            ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4).map_err(fail)?;
            ctx.store(addr_off, &new, 0).map_err(fail)?;
        }
    }
    if flow.l4_off != 0 {
        if flow.sport != to.sport {
            ctx.store(flow.l4_off, &to.sport, 0).map_err(fail)?;
        }
        if flow.dport != to.dport {
            ctx.store(flow.l4_off + 2, &to.dport, 0).map_err(fail)?;
        }
    }
    Ok(())
}
