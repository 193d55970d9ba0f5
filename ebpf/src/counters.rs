//! Per-CPU verdict counters, indexed by `DropReason`; every drop counted
//! here is also a flow event (`flow::dropped`).
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use weir_common::DropReason;

use crate::{
    flow::{self, EventTuple},
    packet::{self, Flow},
};

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

/// The packet `flow`, going `dir` (`FLOW_DIR_*`) through the program's
/// interface, is dropped for `reason` (or answered in its place, as a
/// Service without backends is): counted, and told to the flow log.
#[inline(always)]
pub fn dropped(ctx: &TcContext, reason: DropReason, flow: &impl EventTuple, dir: u8) {
    count(reason);
    flow::dropped(flow, reason, dir, packet::ifindex(ctx));
}

/// The tc action for a program's result; a drop is counted by its reason
/// and reported with `flow`, the packet as far as the program had read it
/// (`Flow::NONE` if not even its addresses), going `dir`.
#[inline(always)]
pub fn finish(ctx: &TcContext, result: Result<i32, DropReason>, flow: &impl EventTuple, dir: u8) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            dropped(ctx, reason, flow, dir);
            TC_ACT_SHOT as i32
        }
    }
}

/// The tc action of an uplink program: a packet that is not IPv4, or does
/// not parse, is the node's own and goes on as it is, uncounted; any other
/// is `handle`d, and finished as `finish` does.
#[inline(always)]
pub fn finish_parsed(
    ctx: &TcContext,
    dir: u8,
    handle: impl FnOnce(&TcContext, &Flow) -> Result<i32, DropReason>,
) -> i32 {
    let Ok(Some(flow)) = packet::parse(ctx) else {
        return TC_OK;
    };
    finish(ctx, handle(ctx, &flow), &flow, dir)
}
