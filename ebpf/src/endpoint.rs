//! Lookups in the local endpoint map written by weir-cni.
use aya_ebpf::{macros::map, maps::HashMap};
use weir_common::{EndpointInfo, EndpointKey, pin::MAX_ENDPOINTS};

#[map]
static WEIR_ENDPOINTS: HashMap<EndpointKey, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, 0);
#[map]
static WEIR_ENDPOINTS6: HashMap<EndpointKey, [u8; 16]> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[inline(always)]
pub fn by_ifindex(ifindex: u32) -> Option<EndpointInfo> {
    // Safety: the value is copied out before the map can change under us.
    unsafe { WEIR_ENDPOINTS.get(&EndpointKey { ifindex }) }.copied()
}

/// The IPv6 address of the pod behind `ifindex`, if it has one.
#[inline(always)]
pub fn ipv6_of(ifindex: u32) -> Option<[u8; 16]> {
    // Safety: as in `by_ifindex`.
    unsafe { WEIR_ENDPOINTS6.get(&EndpointKey { ifindex }) }.copied()
}
