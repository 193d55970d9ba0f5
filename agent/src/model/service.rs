//! Services and EndpointSlices as the load balancer needs them.
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// `namespace/name`.
pub type ObjectKey = String;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => weir_common::lb::PROTO_TCP,
            Protocol::Udp => weir_common::lb::PROTO_UDP,
            Protocol::Sctp => weir_common::lb::PROTO_SCTP,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// An IP family, as Services (`ipFamilies`) and EndpointSlices
/// (`addressType`) name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The API's name (`ipFamilies`, `addressType`).
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Family::Ipv4),
            "IPv6" => Some(Family::Ipv6),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    /// DNS only; nothing for the datapath.
    ExternalName,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Matches the EndpointSlice port of the same name (empty for a
    /// single unnamed port), which carries the resolved target port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: ObjectKey,
    pub type_: ServiceType,
    /// Cluster IPs, at most one per family (`spec.clusterIPs`, checked
    /// against `spec.ipFamilies`); empty for headless Services. The
    /// Service is served in the families it has a cluster IP of, as
    /// kube-proxy serves it (one proxier per family, each taking the
    /// Service only if it has a cluster IP of its family).
    pub cluster_ips: Vec<IpAddr>,
    pub headless: bool,
    pub ports: Vec<ServicePort>,
    /// Of both families: each family's frontends take their own.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, of both families.
    pub lb_ingress_ips: Vec<IpAddr>,
    /// Of both families: each applies to the frontends of its own.
    pub lb_source_ranges: Vec<IpNetwork>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    pub health_check_node_port: Option<u16>,
    /// What the converter could not express (bad ports, unsupported
    /// protocols, ...), reported with the Service's name.
    pub problems: Vec<String>,
}

impl ServiceInfo {
    /// A plain ClusterIP Service with no ports yet.
    pub fn cluster_ip(key: &str, ip: IpAddr) -> Self {
        ServiceInfo {
            key: key.into(),
            type_: ServiceType::ClusterIp,
            cluster_ips: vec![ip],
            headless: false,
            ports: vec![],
            external_ips: vec![],
            lb_ingress_ips: vec![],
            lb_source_ranges: vec![],
            affinity_timeout: None,
            external_traffic_local: false,
            internal_traffic_local: false,
            health_check_node_port: None,
            problems: vec![],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Of the slice's family only (the converter drops the others).
    pub addresses: Vec<IpAddr>,
    /// Conditions with the API's defaults applied (ready: nil means true;
    /// serving: nil means ready; terminating: nil means false).
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    pub key: ObjectKey,
    /// `namespace/<kubernetes.io/service-name label>`.
    pub service: ObjectKey,
    /// `addressType`: its endpoints serve the frontends of this family.
    pub family: Family,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
    /// When the change that made this version happened (the
    /// `endpoints.kubernetes.io/last-change-trigger-time` annotation the
    /// EndpointSlice controller sets): the start of the network
    /// programming latency.
    pub trigger_time: Option<std::time::SystemTime>,
    /// What the converter could not use (an address not of the slice's
    /// family, ...), reported with the slice's name.
    pub problems: Vec<String>,
}

#[cfg(test)]
pub mod build {
    //! Builders for tests.
    use super::*;

    pub fn service(key: &str, cluster_ip: &str) -> ServiceInfo {
        ServiceInfo::cluster_ip(key, cluster_ip.parse().unwrap())
    }

    impl ServiceInfo {
        pub fn port(mut self, name: &str, port: u16, protocol: Protocol) -> Self {
            self.ports.push(ServicePort { name: name.into(), port, protocol, node_port: None });
            self
        }
        pub fn node_port(mut self, name: &str, port: u16, node_port: u16) -> Self {
            self.type_ = ServiceType::NodePort;
            self.ports.push(ServicePort {
                name: name.into(),
                port,
                protocol: Protocol::Tcp,
                node_port: Some(node_port),
            });
            self
        }
    }

    /// An IPv4 slice (`slice6` for IPv6).
    pub fn slice(key: &str, service: &str) -> EndpointSliceInfo {
        EndpointSliceInfo {
            key: key.into(),
            service: service.into(),
            family: Family::Ipv4,
            ports: vec![],
            endpoints: vec![],
            trigger_time: None,
            problems: vec![],
        }
    }

    pub fn slice6(key: &str, service: &str) -> EndpointSliceInfo {
        EndpointSliceInfo { family: Family::Ipv6, ..slice(key, service) }
    }

    /// A dual-stack Service: cluster IPs of both families.
    pub fn service_dual(key: &str, v4: &str, v6: &str) -> ServiceInfo {
        let mut svc = service(key, v4);
        svc.cluster_ips.push(v6.parse().unwrap());
        svc
    }

    impl EndpointSliceInfo {
        pub fn port(mut self, name: &str, port: u16, protocol: Protocol) -> Self {
            self.ports.push(SlicePort { name: name.into(), port, protocol });
            self
        }
        pub fn ready(self, ip: &str, node: &str) -> Self {
            self.endpoint(ip, node, true, true, false)
        }
        pub fn endpoint(mut self, ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Self {
            self.endpoints.push(SliceEndpoint {
                addresses: vec![ip.parse().unwrap()],
                ready,
                serving,
                terminating,
                node_name: Some(node.into()),
            });
            self
        }
    }
}
