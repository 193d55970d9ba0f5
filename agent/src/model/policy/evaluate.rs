//! The upstream decision for one connection: the source pod's egress
//! policies and the destination pod's ingress policies must both allow it.
//! A pod no policy selects (in that direction) is not isolated.
use std::{collections::BTreeMap, net::IpAddr};

use super::types::{NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer, PolicyPort, PolicyRule, PortRef};
use crate::model::service::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// The address family a connection is made over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 }
    }
}

/// One end of a connection.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// A pod, at its address of the connection's family.
    Pod(&'a PodInfo),
    /// Not a pod: a node, or outside the cluster.
    Address(IpAddr),
}

impl Peer<'_> {
    fn addr(&self, family: Family) -> Option<IpAddr> {
        match (self, family) {
            (Peer::Pod(p), Family::Ipv4) => p.ip.map(IpAddr::V4),
            (Peer::Pod(p), Family::Ipv6) => p.ip6.map(IpAddr::V6),
            (Peer::Address(a), _) => Some(*a),
        }
    }
}

/// The decision for one direction at one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Policies that select the pod in this direction (empty: not isolated).
    pub selecting: Vec<String>,
    /// Those of them with a rule that allows the connection.
    pub allowed_by: Vec<String>,
    /// Why, in words.
    pub reason: String,
}

/// The whole decision: egress at the source, ingress at the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `None` when the source is not a pod (nothing to enforce there).
    pub egress: Option<Verdict>,
    pub ingress: Option<Verdict>,
}

pub struct PolicyView<'a> {
    pub policies: &'a [NetworkPolicyInfo],
    pub namespaces: &'a BTreeMap<String, NamespaceInfo>,
    /// Node name -> its addresses: a pod's own node always reaches it
    /// (kubelet probes).
    pub node_addrs: &'a BTreeMap<String, Vec<IpAddr>>,
}

/// The decision on a connection from `src` to `dst` over `family` (an
/// `Address` peer is of that family).
pub fn evaluate(
    view: &PolicyView<'_>,
    family: Family,
    src: Peer<'_>,
    dst: Peer<'_>,
    proto: Protocol,
    port: u16,
) -> Decision {
    let conn = Connection { family, proto, port };
    let egress = match src {
        Peer::Pod(pod) => Some(direction(view, pod, Direction::Egress, dst, dst, conn)),
        Peer::Address(_) => None,
    };
    let ingress = match dst {
        Peer::Pod(pod) => Some(direction(view, pod, Direction::Ingress, src, dst, conn)),
        Peer::Address(_) => None,
    };
    let allowed = egress.as_ref().is_none_or(|v| v.allowed) && ingress.as_ref().is_none_or(|v| v.allowed);
    Decision { allowed, egress, ingress }
}

/// What a connection is made over, besides its ends.
#[derive(Clone, Copy)]
struct Connection {
    family: Family,
    proto: Protocol,
    port: u16,
}

/// Does `pod` accept (ingress) or send (egress) this connection with `peer`?
/// `port_owner` is the destination, whose container ports name the port.
fn direction(
    view: &PolicyView<'_>,
    pod: &PodInfo,
    dir: Direction,
    peer: Peer<'_>,
    port_owner: Peer<'_>,
    conn: Connection,
) -> Verdict {
    let selecting: Vec<&NetworkPolicyInfo> = view
        .policies
        .iter()
        .filter(|p| p.selects(pod))
        .filter(|p| match dir {
            Direction::Ingress => p.ingress_enabled,
            Direction::Egress => p.egress_enabled,
        })
        .collect();
    let names = |ps: &[&NetworkPolicyInfo]| ps.iter().map(|p| p.key.clone()).collect::<Vec<_>>();
    if dir == Direction::Ingress
        && let (Some(node), Some(addr)) = (&pod.node, peer.addr(conn.family))
        && view.node_addrs.get(node).is_some_and(|addrs| addrs.contains(&addr))
        && !matches!(peer, Peer::Pod(_))
    {
        return Verdict {
            allowed: true,
            selecting: names(&selecting),
            allowed_by: vec![],
            reason: "from the pod's own node".into(),
        };
    }
    if selecting.is_empty() {
        return Verdict {
            allowed: true,
            selecting: vec![],
            allowed_by: vec![],
            reason: format!("no policy isolates {} for {dir:?}", pod.key),
        };
    }
    let allowed_by: Vec<&NetworkPolicyInfo> = selecting
        .iter()
        .copied()
        .filter(|p| {
            let rules = match dir {
                Direction::Ingress => &p.ingress,
                Direction::Egress => &p.egress,
            };
            rules.iter().any(|r| rule_allows(view, p, r, peer, port_owner, conn))
        })
        .collect();
    let allowed = !allowed_by.is_empty();
    let reason = if allowed {
        format!("allowed by {}", names(&allowed_by).join(", "))
    } else {
        format!("{} isolated for {dir:?} by {} and no rule matches", pod.key, names(&selecting).join(", "))
    };
    Verdict { allowed, selecting: names(&selecting), allowed_by: names(&allowed_by), reason }
}

fn rule_allows(
    view: &PolicyView<'_>,
    policy: &NetworkPolicyInfo,
    rule: &PolicyRule,
    peer: Peer<'_>,
    port_owner: Peer<'_>,
    conn: Connection,
) -> bool {
    let peer_ok = rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(view, policy, p, peer, conn.family));
    let port_ok =
        rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(p, port_owner, conn.proto, conn.port));
    peer_ok && port_ok
}

fn peer_matches(
    view: &PolicyView<'_>,
    policy: &NetworkPolicyInfo,
    spec: &PolicyPeer,
    peer: Peer<'_>,
    family: Family,
) -> bool {
    match spec {
        // (`contains` is false across families.)
        PolicyPeer::IpBlock { cidr, except } => {
            peer.addr(family).is_some_and(|a| cidr.contains(a) && !except.iter().any(|e| e.contains(a)))
        }
        PolicyPeer::Pods { namespaces, pods } => {
            let Peer::Pod(pod) = peer else { return false };
            let ns_ok = match namespaces {
                // Only podSelector: pods of the policy's own namespace.
                None => pod.namespace == policy.namespace,
                Some(sel) => view.namespaces.get(&pod.namespace).is_some_and(|ns| sel.matches(&ns.labels)),
            };
            ns_ok && pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
        }
    }
}

fn port_matches(spec: &PolicyPort, port_owner: Peer<'_>, proto: Protocol, port: u16) -> bool {
    if spec.protocol != proto {
        return false;
    }
    match &spec.port {
        None => true,
        Some(PortRef::Number(p)) => match spec.end_port {
            Some(end) => (*p..=end).contains(&port),
            None => *p == port,
        },
        // Named: the destination pod's container port of that name.
        Some(PortRef::Name(name)) => match port_owner {
            Peer::Pod(pod) => pod.named_ports.iter().any(|(n, pr, p)| n == name && *pr == proto && *p == port),
            Peer::Address(_) => false,
        },
    }
}

#[cfg(test)]
mod tests;
