//! Address and port rewrites with incremental checksum updates.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use weir_common::{DropReason, lb::PROTO_UDP};

use crate::packet::{Flow, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF};

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// Client -> frontend becomes client -> backend.
#[inline(always)]
pub fn dnat(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), DropReason> {
    rewrite(ctx, flow, Side::Destination, addr, port)
}

/// Backend -> client becomes frontend -> client.
#[inline(always)]
pub fn snat(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), DropReason> {
    rewrite(ctx, flow, Side::Source, addr, port)
}

// Not inlined: as one BPF-to-BPF function the verifier sees clean register
// lifetimes around the helper calls (inlined twice into the uplink program,
// LLVM spilled a register clobbered by a helper call).
#[inline(never)]
fn rewrite(ctx: &TcContext, flow: &Flow, side: Side, addr: u32, port: u16) -> Result<(), DropReason> {
    let (addr_off, old_addr, port_off, old_port) = match side {
        Side::Source => (IP_SRC_OFF, flow.saddr, flow.l4_off, flow.sport),
        Side::Destination => (IP_DST_OFF, flow.daddr, flow.l4_off + 2, flow.dport),
    };
    let fail = |_| DropReason::RewriteFailed;
    if let Some(csum_off) = flow.l4_csum_off() {
        // UDP checksum 0 means "none": the kernel keeps it 0.
        let mangled = if flow.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        if old_addr != addr {
            ctx.l4_csum_replace(csum_off, old_addr as u64, addr as u64, BPF_F_PSEUDO_HDR as u64 | mangled | 4)
                .map_err(fail)?;
        }
        if old_port != port {
            ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, mangled | 2).map_err(fail)?;
        }
    }
    if old_addr != addr {
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, addr as u64, 4).map_err(fail)?;
        ctx.store(addr_off, &addr, 0).map_err(fail)?;
    }
    // A later fragment has no transport header: its address is all there
    // is to rewrite.
    if old_port != port && flow.l4_off != 0 {
        ctx.store(port_off, &port, 0).map_err(fail)?;
    }
    Ok(())
}
