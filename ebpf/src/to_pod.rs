//! Packets going to a pod (tc egress on its host veth): replies of
//! translated flows get their frontend address back.
use aya_ebpf::{
    bindings::TC_ACT_OK,
    programs::TcContext,
};
use weir_common::DropReason;

use crate::{counters, lb, packet};

pub fn handle(ctx: &TcContext) -> i32 {
    counters::finish(try_handle(ctx))
}

#[inline(always)]
fn try_handle(ctx: &TcContext) -> Result<i32, DropReason> {
    if let Some(flow) = packet::parse(ctx)? {
        // A hairpin reply never comes this way (from_pod sends it back out
        // directly), so any reversal here is a plain one.
        lb::reverse(ctx, &flow, lb::ReplyHook::ToClient)?;
    }
    Ok(TC_ACT_OK as i32)
}
