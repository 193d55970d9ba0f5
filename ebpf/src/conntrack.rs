//! Connection tracking for translated flows: the original direction keeps
//! its backend, the reply direction finds its way back to the frontend.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use weir_common::lb::{CT_DIR_ORIGINAL, CT_DIR_REPLY, CtEntry, CtKey, MAX_CT_ENTRIES};

use crate::packet::{Flow, TCP_FIN, TCP_RST};

#[map]
static WEIR_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);

#[inline(always)]
pub fn now_secs() -> u32 {
    // Safety: helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
pub fn original_key(flow: &Flow) -> CtKey {
    CtKey { saddr: flow.saddr, daddr: flow.daddr, sport: flow.sport, dport: flow.dport, proto: flow.proto, dir: CT_DIR_ORIGINAL, _pad: [0; 2] }
}

/// The key a reply from `backend` to the client will carry.
#[inline(always)]
pub fn reply_key(flow: &Flow, backend_addr: u32, backend_port: u16) -> CtKey {
    CtKey { saddr: backend_addr, daddr: flow.saddr, sport: backend_port, dport: flow.sport, proto: flow.proto, dir: CT_DIR_REPLY, _pad: [0; 2] }
}

/// The key of a packet travelling in the reply direction.
#[inline(always)]
pub fn as_reply(flow: &Flow) -> CtKey {
    CtKey { saddr: flow.saddr, daddr: flow.daddr, sport: flow.sport, dport: flow.dport, proto: flow.proto, dir: CT_DIR_REPLY, _pad: [0; 2] }
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtEntry> {
    // Safety: copied out at once.
    unsafe { WEIR_CT.get(key) }.copied()
}

/// A client packet of a tracked flow: FIN or RST mark the flow as ending.
#[inline(always)]
pub fn observe_client(key: &CtKey, entry: &CtEntry, flow: &Flow, now: u32) {
    let mark = if flow.tcp_flags & TCP_RST != 0 {
        CtEntry::FLAG_RESET
    } else if flow.tcp_flags & TCP_FIN != 0 && entry.flags & CtEntry::FLAG_CLOSING == 0 {
        CtEntry::FLAG_CLOSING
    } else {
        return;
    };
    let updated = CtEntry { flags: entry.flags | mark, created: now, ..*entry };
    let _ = WEIR_CT.insert(key, &updated, 0);
}

/// Restarts a closing flow's grace period.
#[inline(always)]
pub fn refresh(key: &CtKey, entry: &CtEntry, now: u32) {
    if entry.created != now {
        let _ = WEIR_CT.insert(key, &CtEntry { created: now, ..*entry }, 0);
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
