//! Flow events for the agent's flow log (`weir observe`, issue #13): one
//! `FlowEvent` per new flow (allowed by policy, or translated to a Service
//! backend) and per dropped packet, through the `WEIR_FLOWS` ring buffer.
//! Never one per packet of an established flow: the call sites are on the
//! new-flow and drop paths only, and the fast path pays no map lookup.
//!
//! A per-CPU token bucket (`WEIR_FLOW_RATE`, written by the agent) holds a
//! flood back; what it holds back, and what a full ring refuses, is counted
//! in `WEIR_FLOW_LOST`. Until the agent writes a rate, events are off.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use weir_common::{
    DropReason,
    flow::{FLOWS_RING_BYTES, FlowEvent, FlowRate, FlowVerdict},
};

use crate::packet::Flow;

/// Fill level past which a new event wakes the agent (see `emit`).
const FLOWS_WAKEUP_BYTES: u32 = FLOWS_RING_BYTES / 4;

#[map]
static WEIR_FLOWS: RingBuf = RingBuf::pinned(FLOWS_RING_BYTES, 0);

#[map]
static WEIR_FLOW_RATE: PerCpuArray<FlowRate> = PerCpuArray::pinned(1, 0);

#[map]
static WEIR_FLOW_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

const MAX_BURST: u64 = 1 << 20;
const MAX_NS_PER_TOKEN: u64 = 1 << 43;

/// The packet `flow` was dropped for `reason`, going `dir` (`FLOW_DIR_*`)
/// on the interface `ifindex`.
#[inline(always)]
pub fn dropped(flow: &Flow, reason: DropReason, dir: u8, ifindex: u32) {
    emit(flow, tag(FlowVerdict::Dropped, reason as u8, dir), ifindex, 0, 0);
}

/// A new flow passed the policy check; `slot` is the policy slot that
/// allowed it (0: the endpoint enforces nothing in direction `dir`).
#[inline(always)]
pub fn allowed(flow: &Flow, dir: u8, ifindex: u32, slot: u32) {
    emit(flow, tag(FlowVerdict::Allowed, 0, dir), ifindex, slot, 0);
}

/// A new flow to the Service frontend `flow.daddr:flow.dport` was sent to
/// the backend `addr:port` (network order, as in the Service maps).
#[inline(always)]
pub fn translated(flow: &Flow, dir: u8, ifindex: u32, addr: u32, port: u16) {
    emit(flow, tag(FlowVerdict::Translated, 0, dir), ifindex, 0, addr as u64 | (port as u64) << 32);
}

#[inline(always)]
fn tag(verdict: FlowVerdict, reason: u8, dir: u8) -> u32 {
    verdict as u32 | (reason as u32) << 8 | (dir as u32) << 16
}

/// Whether this CPU's bucket has a token for one more event (and takes
/// it). Buckets hold credit in nanoseconds, so refill needs no division.
#[inline(always)]
fn take_token(now: u64) -> Option<bool> {
    let rate = WEIR_FLOW_RATE.get_ptr_mut(0)?;
    // Safety: this CPU's copy of the value; no other writer runs here (the
    // agent writes the rate, racing at worst with one refill).
    let rate = unsafe { &mut *rate };
    let cost = rate.ns_per_token;
    if cost == 0 {
        // Events off: nothing is emitted, nothing counted.
        return None;
    }
    // Bounded so the product cannot overflow (an overflow check would need
    // a 128-bit multiply, which BPF has not): a million tokens, a token per
    // 2.4 hours, more than any agent setting.
    let cap = rate.burst.min(MAX_BURST) * cost.min(MAX_NS_PER_TOKEN);
    let credit = rate.credit_ns.saturating_add(now.saturating_sub(rate.last_ns));
    let credit = if credit > cap { cap } else { credit };
    rate.last_ns = now;
    if credit < cost {
        rate.credit_ns = credit;
        return Some(false);
    }
    rate.credit_ns = credit - cost;
    Some(true)
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = WEIR_FLOW_LOST.get_ptr_mut(0) {
        // Safety: per-CPU slot, no other writer.
        unsafe { *lost += 1 };
    }
}

// Inlined at each call site. As a BPF-to-BPF function it was smaller, but
// the verifier walked it once per path reaching a call, and could not prune
// the caller's paths after it: weir_from_pod went from 38k to 87k verified
// instructions (6.18), against 40k inlined. `tag` is verdict | reason << 8 |
// direction << 16, `xlate` the backend's address | port << 32.
#[inline(always)]
fn emit(flow: &Flow, tag: u32, ifindex: u32, policy_slot: u32, xlate: u64) {
    // Safety: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match take_token(now) {
        None => return,
        Some(false) => return count_lost(),
        Some(true) => {}
    }
    let Some(mut entry) = WEIR_FLOWS.reserve::<FlowEvent>(0) else {
        return count_lost();
    };
    entry.write(FlowEvent {
        timestamp_ns: now,
        saddr: flow.saddr.to_ne_bytes(),
        daddr: flow.daddr.to_ne_bytes(),
        sport: u16::from_be(flow.sport),
        dport: u16::from_be(flow.dport),
        protocol: flow.proto,
        verdict: tag as u8,
        reason: (tag >> 8) as u8,
        direction: (tag >> 16) as u8,
        ifindex,
        policy_slot,
        xlate_addr: (xlate as u32).to_ne_bytes(),
        xlate_port: u16::from_be((xlate >> 32) as u16),
        _pad: 0,
    });
    // Waking the agent for every event costs a context switch per new
    // flow (5% of the new-connection rate in `bench policy`): it reads the
    // ring on a short timer instead, and is woken only when the ring fills
    // past a quarter.
    let flags = if WEIR_FLOWS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(FLOWS_WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
}
