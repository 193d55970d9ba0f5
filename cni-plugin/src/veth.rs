//! The veth pair between a pod and the node: naming and creation.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
};

use crate::{
    attachment::Attachment,
    netlink::{NetlinkError, NetlinkSocket},
};

/// Hex digits of the hash in a host veth name: with a prefix of at most four
/// characters the name fits the kernel's 15-byte limit.
pub const HASH_DIGITS: usize = 11;
pub const MAX_PREFIX_LEN: usize = 15 - HASH_DIGITS;

/// The host-side veth name of an attachment: `<prefix><11 hex digits of the
/// FNV-1a 64 hash of "containerID/ifname">`. Stable across invocations, so DEL,
/// CHECK and GC find the interface ADD created without any stored state.
pub fn host_veth_name(prefix: &str, attachment: &Attachment) -> String {
    let hash = fnv1a_64(format!("{}/{}", attachment.container_id, attachment.ifname).as_bytes());
    let hex = format!("{hash:016x}");
    format!("{prefix}{}", &hex[..HASH_DIGITS])
}

/// Whether `name` has the shape of a host veth name made with `prefix`.
pub fn is_host_veth_name(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == HASH_DIGITS && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Creates the pair in one request: `host_name` in the socket's namespace and
/// the peer, named `pod_ifname`, directly in the pod namespace. Creating the
/// peer in place (instead of creating it on the node and moving it) means the
/// pod's name never exists in the node namespace, where it could collide with
/// a node interface called `eth0`.
pub fn create_pair(
    host: &mut NetlinkSocket,
    host_name: &str,
    pod_ifname: &str,
    pod_netns: BorrowedFd<'_>,
    mtu: u32,
) -> Result<(), NetlinkError> {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(pod_ifname.to_string()));
    peer.attributes.push(LinkAttribute::Mtu(mtu));
    peer.attributes.push(LinkAttribute::NetNsFd(pod_netns.as_raw_fd()));

    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(host_name.to_string()));
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    host.execute(
        &format!("create veth pair {host_name} <-> {pod_ifname}"),
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn host_veth_name_is_stable_and_fits() {
        let a = Attachment::new("c1", "eth0");
        let name = host_veth_name("weir", &a);
        assert_eq!(name, host_veth_name("weir", &a));
        assert_eq!(name.len(), 15);
        let expected = format!("{:016x}", fnv1a_64(b"c1/eth0"));
        assert_eq!(name, format!("weir{}", &expected[..11]));
        assert!(is_host_veth_name("weir", &name));
    }

    #[test]
    fn host_veth_name_differs_per_attachment() {
        let a = host_veth_name("weir", &Attachment::new("c1", "eth0"));
        let b = host_veth_name("weir", &Attachment::new("c1", "eth1"));
        let c = host_veth_name("weir", &Attachment::new("c2", "eth0"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }

    #[test]
    fn host_veth_name_shape() {
        assert!(is_host_veth_name("weir", "weir0123456789a"));
        assert!(!is_host_veth_name("weir", "weir0123456789"));
        assert!(!is_host_veth_name("weir", "weir0123456789A"));
        assert!(!is_host_veth_name("weir", "weir0"));
        assert!(!is_host_veth_name("weir", "eth00123456789a"));
    }
}
