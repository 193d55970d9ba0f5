//! weir's kernel-side programs. Each attach point has one entry function, a
//! thin wrapper over a `try_*` function; shared logic lives in modules.
#![no_std]
#![no_main]

mod counters;
mod endpoint;
mod from_pod;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// tc ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn weir_from_pod(ctx: TcContext) -> i32 {
    from_pod::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
