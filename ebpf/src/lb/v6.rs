//! The IPv6 Service maps. They have the IPv4 ones' layout with 16-byte
//! addresses; backend and rev-NAT IDs come from the same ID spaces as
//! IPv4's. The agent writes them; no program reads them yet.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap},
};
use weir_common::lb::{
    AffinityKey6, AffinityValue, Backend6, MAX_AFFINITY_ENTRIES, MAX_BACKENDS, MAX_REVNAT_ENTRIES,
    MAX_SOCK_REV_ENTRIES, MAX_SRC_RANGE_ENTRIES, MAX_SVC_ENTRIES, RevNat6, ServiceKey6, ServiceValue, SockRevKey6,
    SourceRangeKey6,
};

#[map]
static WEIR_SVC6: HashMap<ServiceKey6, ServiceValue> = HashMap::pinned(MAX_SVC_ENTRIES, 0);
#[map]
static WEIR_BACKENDS6: HashMap<u32, Backend6> = HashMap::pinned(MAX_BACKENDS, 0);
#[map]
static WEIR_REVNAT6: HashMap<u16, RevNat6> = HashMap::pinned(MAX_REVNAT_ENTRIES, 0);
#[map]
static WEIR_AFFINITY6: LruHashMap<AffinityKey6, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY_ENTRIES, 0);
/// Connect-time translations of IPv6 sockets.
#[map]
static WEIR_SOCK_REV6: LruHashMap<SockRevKey6, RevNat6> = LruHashMap::pinned(MAX_SOCK_REV_ENTRIES, 0);
#[map]
static WEIR_SRC_RANGE6: LpmTrie<SourceRangeKey6, u8> = LpmTrie::pinned(MAX_SRC_RANGE_ENTRIES, BPF_F_NO_PREALLOC);
