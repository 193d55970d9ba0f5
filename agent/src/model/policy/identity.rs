//! Peer identities: everything a policy rule can tell about the other end
//! of a flow, so that the datapath, which only sees an address, can ask one
//! LPM map (ipcache) what the address is and one LPM map (policy) whether
//! that identity may pass.
//!
//! Two addresses share an identity exactly when every rule of every policy
//! treats them alike: same subject (the same pod labels, namespace and named
//! ports; this node; or anything else) and the same ipBlock membership.
use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use ipnetwork::Ipv4Network;

use super::{
    selector::Labels,
    types::{NamedPort, NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer},
};
use crate::model::service::Protocol;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// Named ports are part of the key so that an egress rule with a named
    /// port resolves exactly per identity (the port is the destination's),
    /// sorted and without duplicates. Labels and ports are the pods' own,
    /// shared.
    Pod { namespace: String, labels: Arc<Labels>, named_ports: Arc<Vec<NamedPort>> },
    /// This node's own addresses (always reach the node's pods).
    Host,
    /// Anything else: other nodes, outside the cluster, pods not known yet.
    Address,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    pub subject: Subject,
    /// The most specific ipBlock prefix (a `cidr` or an `except` of any
    /// policy) containing the address, if any. Prefixes are nested or
    /// disjoint, so the prefixes containing an address form a chain and
    /// this one stands for the whole membership: every ipBlock prefix that
    /// contains it.
    pub block: Option<Ipv4Network>,
}

impl IdentityKey {
    /// The key of an address or prefix with no pod and no host behind it.
    /// With no ipBlock around it this is the reserved `world`.
    pub fn address(block: Option<Ipv4Network>) -> Self {
        Self { subject: Subject::Address, block }
    }

    pub fn pod(pod: &PodInfo, block: Option<Ipv4Network>) -> Self {
        // The converter hands them out sorted; other sources may not.
        let named_ports = if pod.named_ports.is_sorted_by(|a, b| a < b) {
            pod.named_ports.clone()
        } else {
            let mut ports = pod.named_ports.to_vec();
            ports.sort();
            ports.dedup();
            Arc::new(ports)
        };
        Self {
            subject: Subject::Pod { namespace: pod.namespace.clone(), labels: pod.labels.clone(), named_ports },
            block,
        }
    }

    /// Whether this is `pod`'s key (in whatever block), without building
    /// one.
    pub fn is_of(&self, pod: &PodInfo) -> bool {
        let Subject::Pod { namespace, labels, named_ports } = &self.subject else { return false };
        if *namespace != pod.namespace || *labels != pod.labels {
            return false;
        }
        if pod.named_ports.is_sorted_by(|a, b| a < b) {
            *named_ports == pod.named_ports
        } else {
            let mut ports = pod.named_ports.to_vec();
            ports.sort();
            ports.dedup();
            **named_ports == ports
        }
    }

    pub fn is_pod(&self) -> bool {
        matches!(self.subject, Subject::Pod { .. })
    }

    /// The ports a named port resolves to when this identity is the
    /// destination (only pods have named ports).
    pub fn named_port<'a>(&'a self, name: &'a str, proto: Protocol) -> impl Iterator<Item = u16> + 'a {
        let ports = match &self.subject {
            Subject::Pod { named_ports, .. } => named_ports.as_slice(),
            _ => &[],
        };
        ports.iter().filter(move |(n, p, _)| n == name && *p == proto).map(|(_, _, port)| *port)
    }

    /// Does `peer`, in a rule of `policy`, match this identity (as the
    /// evaluator matches the addresses behind it)?
    pub fn matches_peer(
        &self,
        policy: &NetworkPolicyInfo,
        peer: &PolicyPeer,
        namespaces: &BTreeMap<String, NamespaceInfo>,
    ) -> bool {
        match peer {
            PolicyPeer::IpBlock { cidr, except } => {
                // Both are in the block set, so "cidr contains the address"
                // is "cidr contains the most specific block".
                self.block.is_some_and(|b| covers(*cidr, b) && !except.iter().any(|e| covers(*e, b)))
            }
            PolicyPeer::Pods { namespaces: ns_sel, pods } => {
                let Subject::Pod { namespace, labels, .. } = &self.subject else { return false };
                let ns_ok = match ns_sel {
                    None => *namespace == policy.namespace,
                    Some(sel) => namespaces.get(namespace).is_some_and(|ns| sel.matches(&ns.labels)),
                };
                ns_ok && pods.as_ref().is_none_or(|sel| sel.matches(labels))
            }
        }
    }

    /// For operators: `pod x {app=web} ports [http/TCP/80] in 10.0.0.0/8`,
    /// `host`, `world`, `cidr 10.0.0.0/8`.
    pub fn describe(&self) -> String {
        let mut s = match &self.subject {
            Subject::Pod { namespace, labels, named_ports } => {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let mut s = format!("pod {namespace} {{{}}}", labels.join(","));
                if !named_ports.is_empty() {
                    let ports: Vec<String> =
                        named_ports.iter().map(|(n, p, port)| format!("{n}/{}/{port}", p.name())).collect();
                    s += &format!(" ports [{}]", ports.join(","));
                }
                s
            }
            Subject::Host => "host".to_string(),
            Subject::Address => {
                return match self.block {
                    Some(b) => format!("cidr {b}"),
                    None => "world".to_string(),
                };
            }
        };
        if let Some(b) = self.block {
            s += &format!(" in {b}");
        }
        s
    }
}

/// Every prefix (cidr and except) of every ipBlock of every policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocks {
    prefixes: std::collections::BTreeSet<Ipv4Network>,
    /// Bit n set: some prefix is a /n (a lookup tries only those lengths).
    lengths: u64,
}

impl Blocks {
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a NetworkPolicyInfo>) -> Self {
        let mut prefixes = std::collections::BTreeSet::new();
        for p in policies {
            for rule in p.ingress.iter().chain(&p.egress) {
                for peer in &rule.peers {
                    if let PolicyPeer::IpBlock { cidr, except } = peer {
                        prefixes.insert(canonical(*cidr));
                        prefixes.extend(except.iter().map(|e| canonical(*e)));
                    }
                }
            }
        }
        let lengths = prefixes.iter().fold(0, |bits, p| bits | 1 << p.prefix());
        Self { prefixes, lengths }
    }

    pub fn iter(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        self.prefixes.iter().copied()
    }

    /// The longest block prefix containing `net` (`net` itself included).
    pub fn most_specific(&self, net: Ipv4Network) -> Option<Ipv4Network> {
        (0..=net.prefix())
            .rev()
            .filter(|len| self.lengths & 1 << len != 0)
            .map(|len| prefix_of(net.network(), len))
            .find(|p| self.prefixes.contains(p))
    }

    pub fn of_addr(&self, addr: Ipv4Addr) -> Option<Ipv4Network> {
        self.most_specific(prefix_of(addr, 32))
    }
}

/// `addr/len` with the host bits cleared.
pub fn prefix_of(addr: Ipv4Addr, len: u8) -> Ipv4Network {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
    Ipv4Network::new(Ipv4Addr::from(u32::from(addr) & mask), len.min(32)).expect("prefix length at most 32")
}

/// The prefix with its host bits cleared (`10.0.0.1/8` is `10.0.0.0/8`).
pub fn canonical(net: Ipv4Network) -> Ipv4Network {
    prefix_of(net.ip(), net.prefix())
}

/// Does `outer` contain all of `inner`?
pub fn covers(outer: Ipv4Network, inner: Ipv4Network) -> bool {
    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}
