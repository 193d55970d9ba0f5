//! NetworkPolicy verdicts for new flows, and the policy conntrack that lets
//! the rest of an allowed flow (both directions) through without another
//! lookup.
//!
//! The agent compiles every policy into two LPM tries: the ipcache gives a
//! peer address its identity, and the policy map says which identities an
//! endpoint may exchange which ports with, per direction. A verdict is at
//! most three lookups whatever the number of policies in the cluster.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use weir_common::{
    DropReason, EndpointInfo, EndpointKey,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS},
    lb::PROTO_TCP,
    pin::MAX_ENDPOINTS,
    policy::{
        DIR_EGRESS, DIR_INGRESS, EndpointPolicyStats, IDENTITY_ANY, IDENTITY_WORLD, IpcacheEntry, IpcacheKey,
        MAX_IPCACHE_ENTRIES, MAX_POLICY_CT_ENTRIES, MAX_POLICY_ENTRIES, MAX_POLICY_SLOTS, PolicyCtEntry, PolicyCtKey,
        PolicyEntry, PolicyKey,
    },
};

use crate::{
    conntrack::now_secs,
    flow,
    packet::{Flow, TCP_ACK, TCP_SYN},
};

#[map]
static WEIR_IPCACHE: LpmTrie<IpcacheKey, IpcacheEntry> = LpmTrie::pinned(MAX_IPCACHE_ENTRIES, 0);

#[map]
static WEIR_POLICY: LpmTrie<PolicyKey, PolicyEntry> = LpmTrie::pinned(MAX_POLICY_ENTRIES, 0);

#[map]
static WEIR_POLICY_CT: LruHashMap<PolicyCtKey, PolicyCtEntry> = LruHashMap::pinned(MAX_POLICY_CT_ENTRIES, 0);

/// Allowed new flows per policy slot.
#[map]
static WEIR_POL_HITS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_POLICY_SLOTS, 0);

#[map]
static WEIR_EP_POLSTAT: PerCpuHashMap<EndpointKey, EndpointPolicyStats> = PerCpuHashMap::pinned(MAX_ENDPOINTS, 0);

/// Does the endpoint check or track anything at all?
#[inline(always)]
pub fn active(ep: &EndpointInfo) -> bool {
    ep.flags & EndpointInfo::FLAGS_ENFORCED != 0
}

#[inline(always)]
fn ct_key(ifindex: u32, saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> PolicyCtKey {
    PolicyCtKey { ifindex, saddr, daddr, sport, dport, proto, _pad: [0; 3] }
}

/// Is this packet part of a flow the endpoint already allowed (either
/// direction)? A TCP SYN without ACK opens a new connection and is always
/// checked, so a reused tuple never rides on an old verdict.
#[inline(always)]
pub fn tracked(ifindex: u32, flow: &Flow) -> bool {
    if flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return false;
    }
    let now = now_secs();
    let forward = ct_key(ifindex, flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto);
    if alive(&forward, flow.proto, now) {
        return true;
    }
    let reply = ct_key(ifindex, flow.daddr, flow.saddr, flow.dport, flow.sport, flow.proto);
    alive(&reply, flow.proto, now)
}

#[inline(always)]
fn alive(key: &PolicyCtKey, proto: u8, now: u32) -> bool {
    // Safety: copied out at once.
    let Some(entry) = (unsafe { WEIR_POLICY_CT.get(key) }).copied() else { return false };
    let idle = if proto == PROTO_TCP { PolicyCtEntry::TCP_IDLE_SECS } else { PolicyCtEntry::OTHER_IDLE_SECS };
    if now.wrapping_sub(entry.last_seen) > idle {
        return false;
    }
    if entry.last_seen != now {
        let _ = WEIR_POLICY_CT.insert(key, &PolicyCtEntry { last_seen: now, ..entry }, 0);
    }
    true
}

/// A new TCP connection (a SYN without ACK) at an endpoint that enforces no
/// policy at all, told to the flow log as allowed with no policy (slot 0).
/// Such endpoints keep no per-flow state, so other protocols have no first
/// packet to report; endpoints under policy report every new flow from
/// `check_new`.
#[inline(always)]
pub fn report_unenforced(ifindex: u32, ep: &EndpointInfo, flow_dir: u8, flow: &Flow) {
    if !active(ep) && flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        flow::allowed(flow, flow_dir, ifindex, 0);
    }
}

/// The policy slot that allows `peer` on this flow at the endpoint, if any.
#[inline(always)]
fn lookup(ifindex: u32, dir: u8, peer: u32, flow: &Flow) -> Option<u32> {
    let identity = WEIR_IPCACHE.get(Key::new(32, IpcacheKey { addr: peer })).map_or(IDENTITY_WORLD, |e| e.identity);
    let key = PolicyKey { ifindex, identity, dir, proto: flow.proto, port: flow.dport };
    if let Some(hit) = WEIR_POLICY.get(Key::new(PolicyKey::PREFIX_FULL, key)) {
        return Some(hit.policy_slot);
    }
    let any = PolicyKey { identity: IDENTITY_ANY, ..key };
    WEIR_POLICY.get(Key::new(PolicyKey::PREFIX_FULL, any)).map(|hit| hit.policy_slot)
}

/// The verdict on a new flow at the endpoint behind `ifindex`, in direction
/// `dir`. `seen` is the packet as the policy judges it (for egress, after
/// Service translation: the real backend and port); `tracked_as` is the
/// packet as it arrived, which is what later packets of the flow look like
/// here. An allowed flow is tracked and told to the flow log (as `seen`,
/// with the slot that allowed it, 0 if none is enforced in `dir`); a denial
/// is counted and returned as the drop reason.
#[inline(always)]
pub fn check_new(ifindex: u32, ep: &EndpointInfo, dir: u8, seen: &Flow, tracked_as: &Flow) -> Result<(), DropReason> {
    let (enforced_bit, peer) = if dir == DIR_INGRESS {
        (EndpointInfo::FLAG_INGRESS_ENFORCED, seen.saddr)
    } else {
        (EndpointInfo::FLAG_EGRESS_ENFORCED, seen.daddr)
    };
    let enforced = ep.flags & enforced_bit != 0;
    let slot = if enforced {
        let Some(slot) = lookup(ifindex, dir, peer, seen) else {
            count_endpoint(ifindex, dir, false);
            return Err(if dir == DIR_EGRESS { DropReason::PolicyEgress } else { DropReason::PolicyIngress });
        };
        if let Some(hits) = WEIR_POL_HITS.get_ptr_mut(slot) {
            // Per-CPU slot: no other writer.
            unsafe { *hits += 1 };
        }
        count_endpoint(ifindex, dir, true);
        slot
    } else {
        // Not isolated in this direction; tracked so that replies pass the
        // other direction's check.
        u32::MAX
    };
    let f = tracked_as;
    let key = ct_key(ifindex, f.saddr, f.daddr, f.sport, f.dport, f.proto);
    let _ = WEIR_POLICY_CT.insert(&key, &PolicyCtEntry { last_seen: now_secs(), policy_slot: slot }, 0);
    let flow_dir = if dir == DIR_INGRESS { FLOW_DIR_INGRESS } else { FLOW_DIR_EGRESS };
    flow::allowed(seen, flow_dir, ifindex, if enforced { slot } else { 0 });
    Ok(())
}

#[inline(always)]
fn count_endpoint(ifindex: u32, dir: u8, allowed: bool) {
    let key = EndpointKey { ifindex };
    let mut stats = WEIR_EP_POLSTAT.get_ptr_mut(&key);
    if stats.is_none() {
        let _ = WEIR_EP_POLSTAT.insert(&key, &EndpointPolicyStats::default(), BPF_NOEXIST as u64);
        stats = WEIR_EP_POLSTAT.get_ptr_mut(&key);
    }
    let Some(stats) = stats else { return };
    // Safety: this CPU's copy of the value; no other writer.
    let stats = unsafe { &mut *stats };
    match (dir == DIR_INGRESS, allowed) {
        (true, true) => stats.ingress_allowed += 1,
        (true, false) => stats.ingress_denied += 1,
        (false, true) => stats.egress_allowed += 1,
        (false, false) => stats.egress_denied += 1,
    }
}
