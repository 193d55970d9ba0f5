//! weir's kernel-side programs. Each attach point has one entry function, a
//! thin wrapper; shared logic lives in modules (packet parsing, conntrack,
//! NAT, load balancing).
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod endpoint;
mod from_netdev;
mod from_pod;
mod lb;
mod nat;
mod packet;
mod reject;
mod to_pod;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// tc ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn weir_from_pod(ctx: TcContext) -> i32 {
    from_pod::handle(&ctx)
}

/// tc ingress of the node's uplink.
#[classifier]
pub fn weir_from_netdev(ctx: TcContext) -> i32 {
    from_netdev::handle(&ctx)
}

/// tc egress of a pod's host-side veth: every packet the pod receives.
#[classifier]
pub fn weir_to_pod(ctx: TcContext) -> i32 {
    to_pod::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
