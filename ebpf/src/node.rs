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

/// The interface that carries node-address traffic out.
#[inline(always)]
pub fn uplink_ifindex() -> u32 {
    read(|n| n.uplink_ifindex)
}
