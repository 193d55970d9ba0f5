//! The node's own settings: an array of one `NodeConfig`, written by the
//! agent. Each field reads 0 until the agent has written it.
use aya_ebpf::{macros::map, maps::Array};
use weir_common::lb::{NODE_CONFIG_ENTRIES, NodeConfig};

#[map]
static WEIR_NODE: Array<NodeConfig> = Array::pinned(NODE_CONFIG_ENTRIES, 0);

#[inline(always)]
fn read(field: impl FnOnce(&NodeConfig) -> u32) -> u32 {
    WEIR_NODE.get(0).map_or(0, field)
}

/// The node's address: the source of flows sent to remote backends, and
/// of connect-time affinity.
#[inline(always)]
pub fn addr() -> u32 {
    read(|n| n.node_addr)
}

/// Every pod's gateway (the first address of the pod CIDR): the source of
/// hairpinned flows.
#[inline(always)]
pub fn gateway() -> u32 {
    read(|n| n.gateway_addr)
}

/// Whether `addr` (network order) may be a pod of this node: inside its pod
/// CIDR, or anywhere while the agent has not said where that is.
#[inline(always)]
pub fn may_be_local_pod(addr: u32) -> bool {
    WEIR_NODE.get(0).is_none_or(|n| n.pod_mask == 0 || addr & n.pod_mask == n.gateway_addr & n.pod_mask)
}

/// The interface that carries node-address traffic out.
#[inline(always)]
pub fn uplink_ifindex() -> u32 {
    read(|n| n.uplink_ifindex)
}
