//! What the policy model needs to know about Pods, Namespaces and
//! NetworkPolicies.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnetwork::IpNetwork;

use super::selector::{LabelSelector, Labels};
use crate::model::service::Protocol;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/name`; shared with what the policy compile keeps per pod.
    pub key: Arc<str>,
    pub namespace: String,
    /// Shared by the pods that have the same (`model::intern`).
    pub labels: Arc<Labels>,
    /// The pod's address of each family (`status.podIPs`).
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub node: Option<String>,
    /// Named container ports: (name, protocol, port). Shared as `labels`.
    pub named_ports: Arc<Vec<NamedPort>>,
}

impl PodInfo {
    /// The pod's addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ip.map(IpAddr::V4).into_iter().chain(self.ip6.map(IpAddr::V6))
    }
}

/// A named container port: (name, protocol, port).
pub type NamedPort = (String, Protocol, u16);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    /// A container port name, resolved on the destination pod.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
    /// With a numeric `port`: the range `port..=end_port`.
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyPeer {
    /// `podSelector` and/or `namespaceSelector` (None: not given).
    Pods { namespaces: Option<LabelSelector>, pods: Option<LabelSelector> },
    /// Of either family; an `except` is of the `cidr`'s.
    IpBlock { cidr: IpNetwork, except: Vec<IpNetwork> },
}

/// One ingress or egress rule. Empty `peers`: every peer; empty `ports`:
/// every port (upstream semantics for omitted or empty lists).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub peers: Vec<PolicyPeer>,
    pub ports: Vec<PolicyPort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicyInfo {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub pod_selector: LabelSelector,
    /// policyTypes, with the upstream default applied: Ingress always,
    /// Egress when the policy has egress rules.
    pub ingress_enabled: bool,
    pub egress_enabled: bool,
    pub ingress: Vec<PolicyRule>,
    pub egress: Vec<PolicyRule>,
}

impl NetworkPolicyInfo {
    pub fn selects(&self, pod: &PodInfo) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}
