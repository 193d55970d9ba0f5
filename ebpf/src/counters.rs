//! Per-CPU verdict counters, indexed by `DropReason`.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use weir_common::DropReason;

use crate::packet::{self, Flow};

#[map]
static WEIR_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

#[inline(always)]
pub fn count(reason: DropReason) {
    if let Some(slot) = WEIR_DROPS.get_ptr_mut(reason as u32) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

/// tc's action for a packet that goes on its way.
pub const TC_OK: i32 = TC_ACT_OK as i32;

/// A packet let through with tc action `action`: counted as passed.
#[inline(always)]
pub fn pass(action: i32) -> i32 {
    count(DropReason::Passed);
    action
}

/// The tc action for a program's result; a drop is counted by its reason.
#[inline(always)]
pub fn finish(result: Result<i32, DropReason>) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            TC_ACT_SHOT as i32
        }
    }
}

/// The tc action of an uplink program: a packet that is not IPv4, or does
/// not parse, is the node's own and goes on as it is, uncounted; any other
/// is `handle`d, and finished as `finish` does.
#[inline(always)]
pub fn finish_parsed(ctx: &TcContext, handle: impl FnOnce(&TcContext, &Flow) -> Result<i32, DropReason>) -> i32 {
    let Ok(Some(flow)) = packet::parse(ctx) else {
        return TC_OK;
    };
    finish(handle(ctx, &flow))
}
