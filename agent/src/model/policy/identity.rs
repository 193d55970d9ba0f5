//! Peer identities: everything a policy rule can tell about the other end
//! of a flow, so that the datapath, which only sees an address, can ask one
//! LPM map (ipcache) what the address is and one LPM map (policy) whether
//! that identity may pass.
//!
//! Two addresses share an identity exactly when every rule of every policy
//! treats them alike: same subject (the same pod labels, namespace and named
//! ports; this node; or anything else) and the same ipBlock membership.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

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
    pub block: Option<IpNetwork>,
}

impl IdentityKey {
    /// The key of an address or prefix with no pod and no host behind it.
    /// With no ipBlock around it this is the reserved `world`.
    pub fn address(block: Option<IpNetwork>) -> Self {
        Self { subject: Subject::Address, block }
    }

    pub fn pod(pod: &PodInfo, block: Option<IpNetwork>) -> Self {
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

/// Every prefix (cidr and except) of every ipBlock of every policy, of
/// both families. Prefixes of one family never contain an address of the
/// other: an IPv4 block never admits IPv6 traffic, nor the reverse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocks {
    prefixes: std::collections::BTreeSet<IpNetwork>,
    /// Bit n set: some IPv4 prefix is a /n (a lookup tries only those
    /// lengths).
    lengths4: u64,
    /// The same for IPv6 (/0 to /128).
    lengths6: [u64; 3],
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
        let (mut lengths4, mut lengths6) = (0u64, [0u64; 3]);
        for p in &prefixes {
            let len = usize::from(p.prefix());
            match p {
                IpNetwork::V4(_) => lengths4 |= 1 << len,
                IpNetwork::V6(_) => lengths6[len / 64] |= 1 << (len % 64),
            }
        }
        Self { prefixes, lengths4, lengths6 }
    }

    pub fn iter(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.prefixes.iter().copied()
    }

    fn has_length(&self, v4: bool, len: u8) -> bool {
        let len = usize::from(len);
        if v4 { self.lengths4 & 1 << len != 0 } else { self.lengths6[len / 64] & 1 << (len % 64) != 0 }
    }

    /// The longest block prefix containing `net` (`net` itself included),
    /// of `net`'s family.
    pub fn most_specific(&self, net: IpNetwork) -> Option<IpNetwork> {
        (0..=net.prefix())
            .rev()
            .filter(|len| self.has_length(net.is_ipv4(), *len))
            .map(|len| prefix_of(net.network(), len))
            .find(|p| self.prefixes.contains(p))
    }

    pub fn of_addr(&self, addr: IpAddr) -> Option<IpNetwork> {
        self.most_specific(host_prefix(addr))
    }
}

/// `addr/len` with the host bits cleared (`len` at most the family's
/// length).
pub fn prefix_of(addr: impl Into<IpAddr>, len: u8) -> IpNetwork {
    match addr.into() {
        IpAddr::V4(a) => {
            let len = len.min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(u32::from(a) & mask), len).expect("length at most 32"))
        }
        IpAddr::V6(a) => {
            let len = len.min(128);
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(u128::from(a) & mask), len).expect("length at most 128"))
        }
    }
}

/// The address as a prefix of its own (/32, /128).
pub fn host_prefix(addr: impl Into<IpAddr>) -> IpNetwork {
    let addr = addr.into();
    prefix_of(addr, if addr.is_ipv4() { 32 } else { 128 })
}

/// The prefix with its host bits cleared (`10.0.0.1/8` is `10.0.0.0/8`).
pub fn canonical(net: IpNetwork) -> IpNetwork {
    prefix_of(net.ip(), net.prefix())
}

/// Does `outer` contain all of `inner`? (Never across families.)
pub fn covers(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4() && outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}
