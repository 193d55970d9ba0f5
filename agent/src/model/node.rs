//! What the agent needs to know about a Node.
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The IPv4 entry of `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidr: Option<Ipv4Network>,
    /// The first IPv4 `InternalIP` in `status.addresses`.
    pub internal_ip: Option<Ipv4Addr>,
    /// The IPv6 entry of `spec.podCIDRs`: a dual-stack or IPv6-only node.
    pub pod_cidr_v6: Option<Ipv6Network>,
    /// The first IPv6 `InternalIP`: where peers route its IPv6 pod CIDR.
    pub internal_ip_v6: Option<Ipv6Addr>,
}

#[cfg(test)]
pub mod build {
    //! Builders for tests.
    use super::*;

    pub fn node(name: &str) -> NodeInfo {
        NodeInfo { name: name.to_string(), pod_cidr: None, internal_ip: None, pod_cidr_v6: None, internal_ip_v6: None }
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
        pub fn with_pod_cidr_v6(mut self, cidr: &str) -> Self {
            self.pod_cidr_v6 = Some(cidr.parse().expect("test CIDR"));
            self
        }
        pub fn with_internal_ip_v6(mut self, ip: &str) -> Self {
            self.internal_ip_v6 = Some(ip.parse().expect("test IP"));
            self
        }
    }
}
