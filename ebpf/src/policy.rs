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
        DIR_EGRESS, DIR_INGRESS, EndpointPolicyStats, IDENTITY_ANY, IDENTITY_WORLD, Ipcache6Key, IpcacheEntry,
        IpcacheKey, MAX_IPCACHE_ENTRIES, MAX_IPCACHE6_ENTRIES, MAX_POLICY_CT_ENTRIES, MAX_POLICY_CT6_ENTRIES,
        MAX_POLICY_ENTRIES, MAX_POLICY_SLOTS, PolicyCt6Key, PolicyCtEntry, PolicyCtKey, PolicyEntry, PolicyKey,
    },
};

use crate::{
    conntrack::now_secs,
    flow,
    ipv6::Flow6,
    packet::{Flow, TCP_ACK, TCP_SYN},
};

#[map]
static WEIR_IPCACHE: LpmTrie<IpcacheKey, IpcacheEntry> = LpmTrie::pinned(MAX_IPCACHE_ENTRIES, 0);

#[map]
static WEIR_IPCACHE6: LpmTrie<Ipcache6Key, IpcacheEntry> = LpmTrie::pinned(MAX_IPCACHE6_ENTRIES, 0);

#[map]
static WEIR_POLICY: LpmTrie<PolicyKey, PolicyEntry> = LpmTrie::pinned(MAX_POLICY_ENTRIES, 0);

#[map]
static WEIR_POLICY_CT: LruHashMap<PolicyCtKey, PolicyCtEntry> = LruHashMap::pinned(MAX_POLICY_CT_ENTRIES, 0);

#[map]
static WEIR_POLICY_CT6: LruHashMap<PolicyCt6Key, PolicyCtEntry> = LruHashMap::pinned(MAX_POLICY_CT6_ENTRIES, 0);

/// What the policy needs of a packet, whatever its family: its tuple, the
/// family's ipcache and policy conntrack, and the flow log.
pub trait Tuple {
    type CtKey;
    fn proto(&self) -> u8;
    fn dport(&self) -> u16;
    fn tcp_flags(&self) -> u8;
    /// The policy conntrack key of this packet at `ifindex`, as it is or
    /// with its ends swapped.
    fn ct_key(&self, ifindex: u32, reversed: bool) -> Self::CtKey;
    fn ct_get(key: &Self::CtKey) -> Option<PolicyCtEntry>;
    fn ct_put(key: &Self::CtKey, entry: &PolicyCtEntry);
    /// The ipcache identity of the peer: the source for ingress, the
    /// destination for egress.
    fn peer_identity(&self, dir: u8) -> u32;
    /// A new flow passed (see `flow::allowed`).
    fn report_allowed(&self, flow_dir: u8, ifindex: u32, slot: u32);
}

/// The `Tuple` of a family's flow: its conntrack key type and map, its
/// ipcache and the ipcache key of an address.
macro_rules! tuple_of_family {
    ($flow:ty, $ct_key:ident, $ct:ident, $ipcache:ident, $bits:expr, $ipcache_key:expr) => {
        impl Tuple for $flow {
            type CtKey = $ct_key;
            fn proto(&self) -> u8 {
                self.proto
            }
            fn dport(&self) -> u16 {
                self.dport
            }
            fn tcp_flags(&self) -> u8 {
                self.tcp_flags
            }
            fn ct_key(&self, ifindex: u32, reversed: bool) -> $ct_key {
                let f = self;
                let (saddr, daddr, sport, dport) =
                    if reversed { (f.daddr, f.saddr, f.dport, f.sport) } else { (f.saddr, f.daddr, f.sport, f.dport) };
                $ct_key { ifindex, saddr, daddr, sport, dport, proto: f.proto, _pad: [0; 3] }
            }
            fn ct_get(key: &$ct_key) -> Option<PolicyCtEntry> {
                // Safety: copied out at once.
                unsafe { $ct.get(key) }.copied()
            }
            fn ct_put(key: &$ct_key, entry: &PolicyCtEntry) {
                let _ = $ct.insert(key, entry, 0);
            }
            fn peer_identity(&self, dir: u8) -> u32 {
                let addr = if dir == DIR_INGRESS { self.saddr } else { self.daddr };
                $ipcache.get(Key::new($bits, $ipcache_key(addr))).map_or(IDENTITY_WORLD, |e| e.identity)
            }
            fn report_allowed(&self, flow_dir: u8, ifindex: u32, slot: u32) {
                flow::allowed(self, flow_dir, ifindex, slot);
            }
        }
    };
}

tuple_of_family!(Flow, PolicyCtKey, WEIR_POLICY_CT, WEIR_IPCACHE, 32, |addr| IpcacheKey { addr });
tuple_of_family!(Flow6, PolicyCt6Key, WEIR_POLICY_CT6, WEIR_IPCACHE6, 128, |addr| Ipcache6Key { addr });

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

/// Is this packet part of a flow the endpoint already allowed (either
/// direction)? A TCP SYN without ACK opens a new connection and is always
/// checked, so a reused tuple never rides on an old verdict.
#[inline(always)]
pub fn tracked<T: Tuple>(ifindex: u32, flow: &T) -> bool {
    if flow.proto() == PROTO_TCP && flow.tcp_flags() & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return false;
    }
    let now = now_secs();
    alive::<T>(&flow.ct_key(ifindex, false), flow.proto(), now)
        || alive::<T>(&flow.ct_key(ifindex, true), flow.proto(), now)
}

#[inline(always)]
fn alive<T: Tuple>(key: &T::CtKey, proto: u8, now: u32) -> bool {
    let Some(entry) = T::ct_get(key) else { return false };
    let idle = if proto == PROTO_TCP { PolicyCtEntry::TCP_IDLE_SECS } else { PolicyCtEntry::OTHER_IDLE_SECS };
    if now.wrapping_sub(entry.last_seen) > idle {
        return false;
    }
    if entry.last_seen != now {
        T::ct_put(key, &PolicyCtEntry { last_seen: now, ..entry });
    }
    true
}

/// A new TCP connection (a SYN without ACK) at an endpoint that enforces no
/// policy at all, told to the flow log as allowed with no policy (slot 0).
/// Such endpoints keep no per-flow state, so other protocols have no first
/// packet to report; endpoints under policy report every new flow from
/// `check_new`.
#[inline(always)]
pub fn report_unenforced<T: Tuple>(ifindex: u32, ep: &EndpointInfo, flow_dir: u8, flow: &T) {
    if !active(ep) && flow.proto() == PROTO_TCP && flow.tcp_flags() & (TCP_SYN | TCP_ACK) == TCP_SYN {
        flow.report_allowed(flow_dir, ifindex, 0);
    }
}

/// The policy slot that allows the flow's peer at the endpoint, if any.
#[inline(always)]
fn lookup<T: Tuple>(ifindex: u32, dir: u8, flow: &T) -> Option<u32> {
    let identity = flow.peer_identity(dir);
    let key = PolicyKey { ifindex, identity, dir, proto: flow.proto(), port: flow.dport() };
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
pub fn check_new<T: Tuple>(
    ifindex: u32,
    ep: &EndpointInfo,
    dir: u8,
    seen: &T,
    tracked_as: &T,
) -> Result<(), DropReason> {
    let enforced_bit =
        if dir == DIR_INGRESS { EndpointInfo::FLAG_INGRESS_ENFORCED } else { EndpointInfo::FLAG_EGRESS_ENFORCED };
    let enforced = ep.flags & enforced_bit != 0;
    let slot = if enforced {
        let Some(slot) = lookup(ifindex, dir, seen) else {
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
    T::ct_put(&tracked_as.ct_key(ifindex, false), &PolicyCtEntry { last_seen: now_secs(), policy_slot: slot });
    let flow_dir = if dir == DIR_INGRESS { FLOW_DIR_INGRESS } else { FLOW_DIR_EGRESS };
    seen.report_allowed(flow_dir, ifindex, if enforced { slot } else { 0 });
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
