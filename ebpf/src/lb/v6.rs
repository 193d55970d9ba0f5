//! The IPv6 Service maps and what every IPv6 path shares: frontend lookup
//! (slot 0, the internal scope for pods and sockets) and backend choice
//! (affinity, then a random slot), as `lb` does for IPv4. The maps have
//! the IPv4 ones' layout with 16-byte addresses; backend and rev-NAT IDs
//! come from the same ID spaces as IPv4's.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, lpm_trie::Key},
};
use weir_common::lb::{
    AffinityKey6, AffinityValue, Backend6, Ip6, MAX_AFFINITY_ENTRIES, MAX_BACKENDS, MAX_REVNAT_ENTRIES,
    MAX_SOCK_REV_ENTRIES, MAX_SRC_RANGE_ENTRIES, MAX_SVC_ENTRIES, RevNat6, SCOPE_EXTERNAL, SCOPE_INTERNAL, ServiceKey6,
    ServiceValue, SockRevKey6, SourceRangeKey6,
};

#[map]
static WEIR_SVC6: HashMap<ServiceKey6, ServiceValue> = HashMap::pinned(MAX_SVC_ENTRIES, 0);
#[map]
static WEIR_BACKENDS6: HashMap<u32, Backend6> = HashMap::pinned(MAX_BACKENDS, 0);
#[map]
static WEIR_REVNAT6: HashMap<u16, RevNat6> = HashMap::pinned(MAX_REVNAT_ENTRIES, 0);
#[map]
static WEIR_AFFINITY6: LruHashMap<AffinityKey6, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY_ENTRIES, 0);
/// Connect-time translations of IPv6 sockets (`socket`).
#[map]
pub(super) static WEIR_SOCK_REV6: LruHashMap<SockRevKey6, RevNat6> = LruHashMap::pinned(MAX_SOCK_REV_ENTRIES, 0);
#[map]
static WEIR_SRC_RANGE6: LpmTrie<SourceRangeKey6, u8> = LpmTrie::pinned(MAX_SRC_RANGE_ENTRIES, BPF_F_NO_PREALLOC);

#[inline(always)]
pub(crate) fn service(key: &ServiceKey6) -> Option<ServiceValue> {
    // Safety: copied out at once.
    unsafe { WEIR_SVC6.get(key) }.copied()
}

/// Whether `client` is inside the loadBalancerSourceRanges of the frontend
/// `rev_nat_id` (the agent writes them only for frontends with
/// `FLAG_SOURCE_RANGES`).
#[inline(always)]
pub fn source_allowed(rev_nat_id: u16, client: &Ip6) -> bool {
    // The ID and padding (32 bits), then the whole address.
    let probe = Key::new(32 + 128, SourceRangeKey6 { rev_nat_id, _pad: 0, addr: *client });
    WEIR_SRC_RANGE6.get(&probe).is_some()
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend6> {
    // Safety: copied out at once.
    unsafe { WEIR_BACKENDS6.get(&id) }.copied()
}

#[inline(always)]
pub fn rev_nat(id: u16) -> Option<RevNat6> {
    // Safety: copied out at once.
    unsafe { WEIR_REVNAT6.get(&id) }.copied()
}

/// Pods and sockets are internal clients: an `externalTrafficPolicy: Local`
/// frontend sends them to every backend (its internal scope).
#[inline(always)]
pub fn internal_frontend(daddr: &Ip6, dport: u16, proto: u8) -> Option<(ServiceKey6, ServiceValue)> {
    let key = ServiceKey6::new(*daddr, dport, proto, SCOPE_EXTERNAL, 0);
    let svc = service(&key)?;
    if svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
        let internal = ServiceKey6::new(*daddr, dport, proto, SCOPE_INTERNAL, 0);
        if let Some(isvc) = service(&internal) {
            return Some((internal, isvc));
        }
    }
    Some((key, svc))
}

/// A new flow's backend: the client's affinity while it lasts, else a
/// random slot.
#[inline(always)]
pub fn choose(key: &ServiceKey6, svc: &ServiceValue, client: &Ip6, now: u32) -> Option<(u32, Backend6)> {
    let aff_key = AffinityKey6 { client: *client, rev_nat_id: svc.rev_nat_id, _pad: 0 };
    if svc.affinity_timeout != 0 {
        // Safety: copied out at once.
        if let Some(a) = unsafe { WEIR_AFFINITY6.get(&aff_key) }.copied()
            && now.wrapping_sub(a.last_seen) <= svc.affinity_timeout
            && let Some(b) = backend(a.backend_id)
        {
            let _ = WEIR_AFFINITY6.insert(&aff_key, &AffinityValue { backend_id: a.backend_id, last_seen: now }, 0);
            return Some((a.backend_id, b));
        }
    }
    // Checked here, not only by callers: where this is not inlined, the
    // compiler cannot see their check, and a division by zero would be a
    // panic path, which the verifier refuses.
    if svc.count == 0 {
        return None;
    }
    // Safety: helper without arguments.
    let slot = (unsafe { bpf_get_prandom_u32() } % svc.count as u32) as u16 + 1;
    let id = service(&key.with_slot(slot))?.backend_id;
    let b = backend(id)?;
    if svc.affinity_timeout != 0 {
        let _ = WEIR_AFFINITY6.insert(&aff_key, &AffinityValue { backend_id: id, last_seen: now }, 0);
    }
    Some((id, b))
}
