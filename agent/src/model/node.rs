//! What the agent needs to know about a Node.
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `spec.podCIDR` (the IPv4 one when the node is dual-stack).
    pub pod_cidr: Option<Ipv4Network>,
    /// The first IPv4 `InternalIP` in `status.addresses`.
    pub internal_ip: Option<Ipv4Addr>,
}

#[cfg(test)]
pub mod build {
    //! Builders for tests.
    use super::*;

    pub fn node(name: &str) -> NodeInfo {
        NodeInfo { name: name.to_string(), pod_cidr: None, internal_ip: None }
    }

    impl NodeInfo {
        pub fn with_pod_cidr(mut self, cidr: &str) -> Self {
            self.pod_cidr = Some(cidr.parse().expect("test CIDR"));
            self
        }
        pub fn with_internal_ip(mut self, ip: &str) -> Self {
            self.internal_ip = Some(ip.parse().expect("test IP"));
            self
        }
    }
}
