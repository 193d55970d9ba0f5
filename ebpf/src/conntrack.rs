//! Connection tracking for translated flows: the original direction keeps
//! its backend, the reply direction finds its way back to the frontend.
use core::ptr::write_volatile;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap};
use weir_common::lb::{Backend, CtEntry, CtKey, MAX_CT_ENTRIES};

use crate::packet::{Flow, TCP_FIN, TCP_RST};

#[map]
static WEIR_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);

/// Monotonic seconds. The coarse clock (the last tick's time) serves
/// timeouts counted in seconds, and costs a read where the precise one
/// reads the clock source on every packet of every translated flow (a
/// paravirtual clock on a VM: the largest single cost of a reply's path
/// after the map lookups).
#[inline(always)]
pub fn now_secs() -> u32 {
    // Safety: helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The key of a client packet, in the original direction.
#[inline(always)]
pub fn original_key(flow: &Flow) -> CtKey {
    CtKey::original(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
}

/// The key a reply from backend `b` to `addr:port` will carry (the client,
/// or the address its source was translated to).
#[inline(always)]
pub fn reply_key(b: &Backend, addr: u32, port: u16, proto: u8) -> CtKey {
    CtKey::reply(b.addr, b.port, addr, port, proto)
}

/// The key of a packet travelling in the reply direction.
#[inline(always)]
pub fn as_reply(flow: &Flow) -> CtKey {
    CtKey::reply(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtEntry> {
    // Safety: copied out at once.
    unsafe { WEIR_CT.get(key) }.copied()
}

/// A client packet of a tracked flow: FIN or RST mark the flow as ending,
/// in its original entry (`key`) and its reply entry (`reply`). The reply
/// entry's mark is what sends a reply to the original entry to learn
/// whether the flow is over (`lb::flow_is_over`): until the client ends
/// the flow, a reply needs no second lookup.
///
/// Entries change in place, as `refresh` does: an insert over an existing
/// key replaces its element, which in an LRU map takes a free node and
/// frees the old one (the LRU lists' locks), on a path every flow takes.
#[inline(always)]
pub fn observe_client(key: &CtKey, reply: &CtKey, entry: &CtEntry, flow: &Flow, now: u32) {
    let mark = if flow.tcp_flags & TCP_RST != 0 {
        CtEntry::FLAG_RESET
    } else if flow.tcp_flags & TCP_FIN != 0 && entry.flags & CtEntry::FLAG_CLOSING == 0 {
        CtEntry::FLAG_CLOSING
    } else {
        return;
    };
    for key in [key, reply] {
        let Some(ct) = WEIR_CT.get_ptr_mut(key) else { continue };
        // Safety: the map's value for `key`, live while this program runs.
        // The time first, then the flag that makes it count, each one
        // store (a reader on another CPU sees a closing flow with its new
        // time). Both entries were written with the same flags.
        unsafe {
            write_volatile(&raw mut (*ct).created, now);
            write_volatile(&raw mut (*ct).flags, entry.flags | mark);
        }
    }
}

/// Restarts a closing flow's grace period (in place, one store).
#[inline(always)]
pub fn refresh(key: &CtKey, entry: &CtEntry, now: u32) {
    if entry.created != now
        && let Some(ct) = WEIR_CT.get_ptr_mut(key)
    {
        // Safety: as in `observe_client`.
        unsafe { write_volatile(&raw mut (*ct).created, now) };
    }
}

pub fn remove(key: &CtKey) {
    let _ = WEIR_CT.remove(key);
}

#[inline(always)]
pub fn create(original: &CtKey, reply: &CtKey, entry: &CtEntry) {
    create_pair(original, entry, reply, entry);
}

#[inline(always)]
pub fn create_pair(original: &CtKey, original_entry: &CtEntry, reply: &CtKey, reply_entry: &CtEntry) {
    // An LRU map evicts instead of failing when full; an insert that still
    // fails only costs the flow its stickiness, so it is not fatal.
    let _ = WEIR_CT.insert(original, original_entry, 0);
    let _ = WEIR_CT.insert(reply, reply_entry, 0);
}
