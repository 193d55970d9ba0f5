//! The node's own addresses.
use std::net::Ipv4Addr;

use tracing::warn;

/// Every IPv4 address of the node's own namespace: traffic from these is
/// the pod's own node (kubelet probes), which always reaches it.
pub fn ipv4() -> Vec<Ipv4Addr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            let mut out: Vec<Ipv4Addr> =
                addrs.filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))).collect();
            out.sort();
            out.dedup();
            out
        }
        Err(e) => {
            warn!(error = %e, "cannot list the node's addresses");
            Vec::new()
        }
    }
}
