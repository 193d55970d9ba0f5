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
    flow::{FAMILY_IPV4, FAMILY_IPV6, FLOWS_RING_BYTES, FlowEvent, FlowRate, FlowVerdict},
    lb::Ip6,
};

use crate::{ipv6::Flow6, packet::Flow};

/// What an event says of its packet, for either family.
pub trait EventTuple {
    /// Writes the family and the addresses as the event holds them.
    ///
    /// # Safety
    /// The pointers are valid for writes.
    unsafe fn write_addresses(&self, family: *mut u8, saddr: *mut [u8; 16], daddr: *mut [u8; 16]);
    /// Ports in network byte order, and the protocol.
    fn ports_proto(&self) -> (u16, u16, u8);
}

impl EventTuple for Flow {
    #[inline(always)]
    unsafe fn write_addresses(&self, family: *mut u8, saddr: *mut [u8; 16], daddr: *mut [u8; 16]) {
        // Safety: as the caller promises.
        unsafe {
            *family = FAMILY_IPV4;
            write_v4(saddr, self.saddr);
            write_v4(daddr, self.daddr);
        }
    }
    #[inline(always)]
    fn ports_proto(&self) -> (u16, u16, u8) {
        (self.sport, self.dport, self.proto)
    }
}

/// An IPv4 address (network order, as in packets) into an event's 16
/// bytes, without a 16-byte temporary on the program's stack.
///
/// # Safety
/// `to` is valid for writes.
#[inline(always)]
unsafe fn write_v4(to: *mut [u8; 16], addr: u32) {
    let to = to.cast::<u32>();
    // Safety: as the caller promises; 16 bytes are four u32s.
    unsafe {
        to.write_unaligned(addr);
        to.add(1).write_unaligned(0);
        to.add(2).write_unaligned(0);
        to.add(3).write_unaligned(0);
    }
}

impl EventTuple for Flow6 {
    #[inline(always)]
    unsafe fn write_addresses(&self, family: *mut u8, saddr: *mut [u8; 16], daddr: *mut [u8; 16]) {
        // Safety: as the caller promises.
        unsafe {
            *family = FAMILY_IPV6;
            *saddr = self.saddr;
            *daddr = self.daddr;
        }
    }
    #[inline(always)]
    fn ports_proto(&self) -> (u16, u16, u8) {
        (self.sport, self.dport, self.proto)
    }
}

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
pub fn dropped(flow: &impl EventTuple, reason: DropReason, dir: u8, ifindex: u32) {
    emit(flow, tag(FlowVerdict::Dropped, reason as u8, dir), ifindex, 0, (0u32, 0u16));
}

/// A new flow passed the policy check; `slot` is the policy slot that
/// allowed it (0: the endpoint enforces nothing in direction `dir`).
#[inline(always)]
pub fn allowed(flow: &impl EventTuple, dir: u8, ifindex: u32, slot: u32) {
    emit(flow, tag(FlowVerdict::Allowed, 0, dir), ifindex, slot, (0u32, 0u16));
}

/// A new flow to the Service frontend `flow.daddr:flow.dport` was sent to
/// the backend `addr:port` (network order, as in the Service maps).
#[inline(always)]
pub fn translated(flow: &Flow, dir: u8, ifindex: u32, addr: u32, port: u16) {
    emit(flow, tag(FlowVerdict::Translated, 0, dir), ifindex, 0, (addr, port));
}

/// `translated` for an IPv6 flow (`lb::tc6`'s): the backend's 16 bytes.
#[inline(always)]
pub fn translated6(flow: &impl EventTuple, dir: u8, ifindex: u32, addr: &Ip6, port: u16) {
    emit(flow, tag(FlowVerdict::Translated, 0, dir), ifindex, 0, (addr, port));
}

/// The backend a `Translated` event names, of either family: written
/// into the event's 16 bytes, and its port (network order).
pub trait Xlate {
    /// # Safety
    /// `to` is valid for writes.
    unsafe fn write_addr(&self, to: *mut [u8; 16]);
    fn port(&self) -> u16;
}

impl Xlate for (u32, u16) {
    #[inline(always)]
    unsafe fn write_addr(&self, to: *mut [u8; 16]) {
        // Safety: as the caller promises.
        unsafe { write_v4(to, self.0) }
    }
    #[inline(always)]
    fn port(&self) -> u16 {
        self.1
    }
}

impl Xlate for (&Ip6, u16) {
    #[inline(always)]
    unsafe fn write_addr(&self, to: *mut [u8; 16]) {
        // Safety: as the caller promises; 16 bytes are four u32s, and the
        // words hold the address's bytes in order.
        unsafe {
            let to = to.cast::<u32>();
            for i in 0..4 {
                to.add(i).write_unaligned(self.0[i]);
            }
        }
    }
    #[inline(always)]
    fn port(&self) -> u16 {
        self.1
    }
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
// direction << 16, `xlate` the backend's address and port (network order;
// of the flow's family, zero for other verdicts).
#[inline(always)]
fn emit(flow: &impl EventTuple, tag: u32, ifindex: u32, policy_slot: u32, xlate: impl Xlate) {
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
    // Field by field into the ring's memory: an event built on the stack
    // first took 80 bytes of the program's 512 for every inlined copy.
    let ev = entry.as_mut_ptr();
    let (sport, dport, protocol) = flow.ports_proto();
    // Safety: `ev` is the reserved record, valid for a FlowEvent; every
    // field is written before it is submitted.
    unsafe {
        flow.write_addresses(&raw mut (*ev).family, &raw mut (*ev).saddr, &raw mut (*ev).daddr);
        (*ev).timestamp_ns = now;
        (*ev).sport = u16::from_be(sport);
        (*ev).dport = u16::from_be(dport);
        (*ev).protocol = protocol;
        (*ev).verdict = tag as u8;
        (*ev).reason = (tag >> 8) as u8;
        (*ev).direction = (tag >> 16) as u8;
        (*ev).ifindex = ifindex;
        (*ev).policy_slot = policy_slot;
        xlate.write_addr(&raw mut (*ev).xlate_addr);
        (*ev).xlate_port = u16::from_be(xlate.port());
        (*ev)._pad = [0; 5];
    }
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
