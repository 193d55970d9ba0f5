//! Desired node plumbing computed from the index: the CNI config for this
//! node and a route to every peer node's pod CIDR, per address family (a
//! dual-stack cluster has an IPv4 and an IPv6 cluster CIDR, each node a pod
//! CIDR of each). A family is used only when it is consistent: a node whose
//! pod CIDR of a family is outside that family's cluster CIDR, or of a
//! family the cluster does not have, is reported and skipped for that
//! family, never half-programmed.
use std::{collections::BTreeMap, net::IpAddr, ops::RangeInclusive, str::FromStr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::{
    ClusterIndex, NodeInfo,
    cni_conf::{self, CniSettings, FamilyRanges},
};

/// The cluster's pod CIDRs, one per family (at least one):
/// `--cluster-cidr 10.244.0.0/16,fd00:10:244::/56`, as kube-controller-manager
/// spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCidrs {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

impl ClusterCidrs {
    /// The families the cluster has: those it has a CIDR of.
    pub fn families(&self) -> std::collections::BTreeSet<super::service::Family> {
        use super::service::Family;
        self.v4.map(|_| Family::Ipv4).into_iter().chain(self.v6.map(|_| Family::Ipv6)).collect()
    }
}

impl FromStr for ClusterCidrs {
    type Err = String;

    /// Comma-separated CIDRs, at most one per family; host bits are
    /// cleared (10.244.1.7/16 is 10.244.0.0/16).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for part in s.split(',').map(str::trim) {
            let net: IpNetwork = part.parse().map_err(|e| format!("{part:?} is not a CIDR: {e}"))?;
            let normal = IpNetwork::new(net.network(), net.prefix()).expect("same prefix");
            match normal {
                IpNetwork::V4(v4) if out.v4.is_none() => out.v4 = Some(v4),
                IpNetwork::V6(v6) if out.v6.is_none() => out.v6 = Some(v6),
                _ => return Err(format!("{s:?} has two CIDRs of one family; give at most one IPv4 and one IPv6")),
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for ClusterCidrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> =
            self.v4.iter().map(ToString::to_string).chain(self.v6.iter().map(ToString::to_string)).collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Clone, Debug)]
pub struct PlanSettings {
    pub node_name: String,
    pub cluster_cidrs: ClusterCidrs,
    pub cni: CniSettings,
}

/// Something in the cluster the agent cannot act on; reported, then skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// This node's IPv4 pod CIDR, once its Node object has a usable one.
    pub pod_cidr: Option<Ipv4Network>,
    /// This node's IPv6 pod CIDR, likewise.
    pub pod_cidr_v6: Option<Ipv6Network>,
    /// The conflist to write; `None` until a pod CIDR is known, so that the
    /// runtime reports the network as not ready instead of failing pods.
    pub conflist: Option<String>,
    /// Peer pod CIDR -> that peer's InternalIP of the same family.
    pub peer_routes: BTreeMap<IpNetwork, IpAddr>,
    pub problems: Vec<Problem>,
}

/// One address family as the plan sees it.
struct Family {
    name: &'static str,
    cluster: Option<IpNetwork>,
    /// Prefix lengths weir-cni accepts for a node's slice.
    pod_prefixes: RangeInclusive<u8>,
    pod_cidr: fn(&NodeInfo) -> Option<IpNetwork>,
    internal_ip: fn(&NodeInfo) -> Option<IpAddr>,
}

fn families(cluster: ClusterCidrs) -> [Family; 2] {
    [
        Family {
            name: "IPv4",
            cluster: cluster.v4.map(IpNetwork::V4),
            pod_prefixes: 16..=30,
            pod_cidr: |n| n.pod_cidr.map(IpNetwork::V4),
            internal_ip: |n| n.internal_ip.map(IpAddr::V4),
        },
        Family {
            name: "IPv6",
            cluster: cluster.v6.map(IpNetwork::V6),
            pod_prefixes: 48..=126,
            pod_cidr: |n| n.pod_cidr_v6.map(IpNetwork::V6),
            internal_ip: |n| n.internal_ip_v6.map(IpAddr::V6),
        },
    ]
}

pub fn plan(index: &ClusterIndex, settings: &PlanSettings) -> NodePlan {
    let mut out = NodePlan::default();
    let families = families(settings.cluster_cidrs);

    let mut ranges = Vec::new();
    if let Some(me) = index.node(&settings.node_name) {
        for family in &families {
            if let Some(r) = own_range(me, family, &mut out.problems) {
                ranges.push(r);
            }
        }
    }
    for r in &ranges {
        match r.pod {
            IpNetwork::V4(v4) => out.pod_cidr = Some(v4),
            IpNetwork::V6(v6) => out.pod_cidr_v6 = Some(v6),
        }
    }
    if !ranges.is_empty() {
        out.conflist = Some(cni_conf::render(&settings.cni, &ranges));
    }

    for family in &families {
        let mine = ranges.iter().find(|r| r.pod.is_ipv6() == (family.name == "IPv6")).map(|r| r.pod);
        peer_routes(index, settings, family, mine, &mut out);
    }
    out
}

/// This node's range of `family`, if it has a usable one; a reported
/// problem otherwise (none when neither the node nor the cluster has the
/// family).
fn own_range(me: &NodeInfo, family: &Family, problems: &mut Vec<Problem>) -> Option<FamilyRanges> {
    let object = format!("Node/{}", me.name);
    let mut problem = |message: String| problems.push(Problem { object: object.clone(), message });
    let name = family.name;
    match ((family.pod_cidr)(me), family.cluster) {
        (None, None) => None,
        (None, Some(_)) => {
            problem(format!(
                "this node has no {name} spec.podCIDRs entry yet (is the controller manager allocating node CIDRs of every family?); no {name} for its pods"
            ));
            None
        }
        (Some(cidr), None) => {
            problem(format!(
                "spec.podCIDRs has {name} {cidr} but no {name} cluster CIDR is configured (--cluster-cidr); no {name} for its pods"
            ));
            None
        }
        (Some(cidr), Some(cluster)) if !contains(cluster, cidr) => {
            problem(format!(
                "spec.podCIDRs {cidr} is outside the {name} cluster CIDR {cluster}; no {name} for its pods"
            ));
            None
        }
        (Some(cidr), Some(_)) if !family.pod_prefixes.contains(&cidr.prefix()) => {
            problem(format!(
                "spec.podCIDRs {cidr} must have a prefix length between /{} and /{}; no {name} for its pods",
                family.pod_prefixes.start(),
                family.pod_prefixes.end()
            ));
            None
        }
        (Some(pod), Some(cluster)) => Some(FamilyRanges { pod, cluster }),
    }
}

/// Routes to every peer's pod CIDR of `family` via its InternalIP of that
/// family; peers that cannot be routed are reported and skipped.
fn peer_routes(
    index: &ClusterIndex,
    settings: &PlanSettings,
    family: &Family,
    mine: Option<IpNetwork>,
    out: &mut NodePlan,
) {
    let name = family.name;
    // Who claims which CIDR, to refuse routing a CIDR two nodes claim.
    let mut claims: BTreeMap<IpNetwork, Vec<&str>> = BTreeMap::new();
    for node in index.nodes() {
        if let Some(cidr) = (family.pod_cidr)(node) {
            claims.entry(cidr).or_default().push(&node.name);
        }
    }

    for peer in index.nodes().filter(|n| n.name != settings.node_name) {
        let object = format!("Node/{}", peer.name);
        let Some(cidr) = (family.pod_cidr)(peer) else { continue };
        let mut problem = |message: String| out.problems.push(Problem { object: object.clone(), message });
        let Some(cluster) = family.cluster else {
            problem(format!("spec.podCIDRs has {name} {cidr} but no {name} cluster CIDR is configured; not routed"));
            continue;
        };
        let Some(via) = (family.internal_ip)(peer) else {
            problem(format!("has an {name} podCIDR but no {name} InternalIP: cannot route to its pods"));
            continue;
        };
        if !contains(cluster, cidr) {
            problem(format!("spec.podCIDR {cidr} is outside the cluster CIDR {cluster}; not routed"));
            continue;
        }
        if let Some(mine) = mine
            && overlaps(mine, cidr)
        {
            problem(format!("spec.podCIDR {cidr} overlaps this node's {mine}; not routed"));
            continue;
        }
        if claims.get(&cidr).is_some_and(|owners| owners.len() > 1) {
            problem(format!("spec.podCIDR {cidr} is claimed by several nodes; not routed"));
            continue;
        }
        out.peer_routes.insert(cidr, via);
    }
}

fn contains(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.is_ipv6() == inner.is_ipv6() && outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::build::node;

    fn settings() -> PlanSettings {
        PlanSettings {
            node_name: "n1".into(),
            cluster_cidrs: "10.244.0.0/16".parse().unwrap(),
            cni: CniSettings {
                network_name: "weir".into(),
                cni_version: "1.1.0".into(),
                mtu: 1500,
                data_dir: "/d".into(),
                run_dir: "/r".into(),
                bpf_pin_dir: "/b".into(),
                veth_prefix: "weir".into(),
                chain_portmap: true,
            },
        }
    }

    fn index(nodes: Vec<crate::model::NodeInfo>) -> ClusterIndex {
        let mut idx = ClusterIndex::default();
        idx.nodes.change(crate::model::index::Change::Relisted(nodes));
        idx
    }

    #[test]
    fn no_conflist_until_own_pod_cidr_is_known() {
        let p = plan(&index(vec![node("n1")]), &settings());
        assert_eq!(p.conflist, None);
        assert_eq!(p.problems.len(), 1);
        let p = plan(&index(vec![]), &settings());
        assert_eq!(p.conflist, None);
    }

    #[test]
    fn own_cidr_gives_conflist_and_peers_give_routes() {
        let p = plan(
            &index(vec![
                node("n1").with_pod_cidr("10.244.1.0/24").with_internal_ip("172.30.0.11"),
                node("n2").with_pod_cidr("10.244.2.0/24").with_internal_ip("172.30.0.12"),
                node("n3").with_pod_cidr("10.244.3.0/24").with_internal_ip("172.30.0.13"),
            ]),
            &settings(),
        );
        assert_eq!(p.pod_cidr.unwrap().to_string(), "10.244.1.0/24");
        assert!(p.conflist.unwrap().contains("10.244.1.0/24"));
        let routes: Vec<_> = p.peer_routes.iter().map(|(c, v)| format!("{c} via {v}")).collect();
        assert_eq!(routes, ["10.244.2.0/24 via 172.30.0.12", "10.244.3.0/24 via 172.30.0.13"]);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn bad_peers_are_reported_and_skipped() {
        let p = plan(
            &index(vec![
                node("n1").with_pod_cidr("10.244.1.0/24").with_internal_ip("172.30.0.11"),
                node("noip").with_pod_cidr("10.244.2.0/24"),
                node("outside").with_pod_cidr("192.168.0.0/24").with_internal_ip("172.30.0.13"),
                node("overlap").with_pod_cidr("10.244.1.0/25").with_internal_ip("172.30.0.14"),
                node("dup1").with_pod_cidr("10.244.9.0/24").with_internal_ip("172.30.0.15"),
                node("dup2").with_pod_cidr("10.244.9.0/24").with_internal_ip("172.30.0.16"),
                node("nocidr").with_internal_ip("172.30.0.17"),
            ]),
            &settings(),
        );
        assert!(p.peer_routes.is_empty(), "{:?}", p.peer_routes);
        let objects: Vec<_> = p.problems.iter().map(|x| x.object.as_str()).collect();
        assert_eq!(objects, ["Node/dup1", "Node/dup2", "Node/noip", "Node/outside", "Node/overlap"]);
        let routes: Vec<_> = p.peer_routes.keys().collect();
        assert!(routes.is_empty());
    }

    #[test]
    fn own_cidr_outside_cluster_or_too_small_gives_no_conflist() {
        for bad in ["10.0.0.0/24", "10.244.1.0/31", "10.244.0.0/15"] {
            let p = plan(&index(vec![node("n1").with_pod_cidr(bad).with_internal_ip("172.30.0.11")]), &settings());
            assert_eq!(p.conflist, None, "{bad}");
            assert_eq!(p.problems.len(), 1, "{bad}");
        }
    }

    fn dual() -> PlanSettings {
        PlanSettings { cluster_cidrs: "10.244.0.0/16,fd00:10:244::/56".parse().unwrap(), ..settings() }
    }

    fn routes(p: &NodePlan) -> Vec<String> {
        p.peer_routes.iter().map(|(c, v)| format!("{c} via {v}")).collect()
    }

    #[test]
    fn cluster_cidrs_parse_one_per_family() {
        let c: ClusterCidrs = "10.244.1.7/16, fd00:10:244::5/56".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16,fd00:10:244::/56");
        let c: ClusterCidrs = "fd00:10:244::/56".parse().unwrap();
        assert_eq!((c.v4, c.v6.map(|n| n.to_string())), (None, Some("fd00:10:244::/56".into())));
        assert!("10.244.0.0/16,10.245.0.0/16".parse::<ClusterCidrs>().unwrap_err().contains("two CIDRs of one family"));
        assert!("fd00::/48,fd01::/48".parse::<ClusterCidrs>().is_err());
        assert!("10.244.0.0/16,".parse::<ClusterCidrs>().is_err());
        assert!("nope".parse::<ClusterCidrs>().is_err());
    }

    #[test]
    fn dual_stack_nodes_get_both_families() {
        let p = plan(
            &index(vec![
                node("n1")
                    .with_pod_cidr("10.244.1.0/24")
                    .with_internal_ip("172.30.0.11")
                    .with_pod_cidr_v6("fd00:10:244:1::/64")
                    .with_internal_ip_v6("fd00:172:30::11"),
                node("n2")
                    .with_pod_cidr("10.244.2.0/24")
                    .with_internal_ip("172.30.0.12")
                    .with_pod_cidr_v6("fd00:10:244:2::/64")
                    .with_internal_ip_v6("fd00:172:30::12"),
            ]),
            &dual(),
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.pod_cidr_v6.unwrap().to_string(), "fd00:10:244:1::/64");
        let conflist: serde_json::Value = serde_json::from_str(p.conflist.as_deref().unwrap()).unwrap();
        assert_eq!(conflist["plugins"][0]["podCIDRs"], serde_json::json!(["10.244.1.0/24", "fd00:10:244:1::/64"]));
        assert_eq!(conflist["plugins"][0]["clusterCIDRs"], serde_json::json!(["10.244.0.0/16", "fd00:10:244::/56"]));
        assert_eq!(routes(&p), ["10.244.2.0/24 via 172.30.0.12", "fd00:10:244:2::/64 via fd00:172:30::12"]);
    }

    #[test]
    fn ipv6_only_cluster() {
        let s = PlanSettings { cluster_cidrs: "fd00:10:244::/56".parse().unwrap(), ..settings() };
        let p = plan(
            &index(vec![
                node("n1").with_pod_cidr_v6("fd00:10:244:1::/64").with_internal_ip_v6("fd00:172:30::11"),
                node("n2").with_pod_cidr_v6("fd00:10:244:2::/64").with_internal_ip_v6("fd00:172:30::12"),
            ]),
            &s,
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.pod_cidr, None);
        let conflist: serde_json::Value = serde_json::from_str(p.conflist.as_deref().unwrap()).unwrap();
        assert!(conflist["plugins"][0].get("podCIDR").is_none());
        assert_eq!(conflist["plugins"][0]["podCIDRs"], serde_json::json!(["fd00:10:244:1::/64"]));
        assert_eq!(routes(&p), ["fd00:10:244:2::/64 via fd00:172:30::12"]);
    }

    #[test]
    fn a_family_that_disagrees_is_reported_and_skipped_alone() {
        // This node's IPv6 range is outside the IPv6 cluster CIDR: IPv4
        // only for its pods, and a problem naming it.
        let p = plan(
            &index(vec![
                node("n1")
                    .with_pod_cidr("10.244.1.0/24")
                    .with_internal_ip("172.30.0.11")
                    .with_pod_cidr_v6("fd99::/64")
                    .with_internal_ip_v6("fd00:172:30::11"),
                // A peer with IPv6 but no IPv6 InternalIP, one outside the
                // IPv6 cluster CIDR, one without IPv6 at all.
                node("noip6")
                    .with_pod_cidr("10.244.2.0/24")
                    .with_internal_ip("172.30.0.12")
                    .with_pod_cidr_v6("fd00:10:244:2::/64"),
                node("out6")
                    .with_pod_cidr("10.244.3.0/24")
                    .with_internal_ip("172.30.0.13")
                    .with_pod_cidr_v6("fd98::/64")
                    .with_internal_ip_v6("fd00:172:30::13"),
                node("v4only").with_pod_cidr("10.244.4.0/24").with_internal_ip("172.30.0.14"),
            ]),
            &dual(),
        );
        assert_eq!(p.pod_cidr_v6, None);
        let conflist: serde_json::Value = serde_json::from_str(p.conflist.as_deref().unwrap()).unwrap();
        assert!(conflist["plugins"][0].get("podCIDRs").is_none(), "{conflist}");
        assert_eq!(
            routes(&p),
            ["10.244.2.0/24 via 172.30.0.12", "10.244.3.0/24 via 172.30.0.13", "10.244.4.0/24 via 172.30.0.14"]
        );
        let got: Vec<_> = p.problems.iter().map(|x| format!("{}: {}", x.object, x.message)).collect();
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with("Node/n1: spec.podCIDRs fd99::/64 is outside the IPv6 cluster CIDR"), "{got:#?}");
        assert!(
            got.iter().any(|g| g.starts_with("Node/noip6: has an IPv6 podCIDR but no IPv6 InternalIP")),
            "{got:#?}"
        );
        assert!(got.iter().any(|g| g.starts_with("Node/out6: spec.podCIDR fd98::/64 is outside")), "{got:#?}");
    }

    #[test]
    fn a_family_the_cluster_lacks_is_reported_and_skipped() {
        // IPv4-only cluster, dual-stack nodes: IPv4 works, IPv6 reported.
        let p = plan(
            &index(vec![
                node("n1")
                    .with_pod_cidr("10.244.1.0/24")
                    .with_internal_ip("172.30.0.11")
                    .with_pod_cidr_v6("fd00:10:244:1::/64"),
                node("n2")
                    .with_pod_cidr("10.244.2.0/24")
                    .with_internal_ip("172.30.0.12")
                    .with_pod_cidr_v6("fd00:10:244:2::/64")
                    .with_internal_ip_v6("fd00:172:30::12"),
            ]),
            &settings(),
        );
        assert_eq!(routes(&p), ["10.244.2.0/24 via 172.30.0.12"]);
        assert!(p.conflist.as_deref().unwrap().contains("10.244.1.0/24"));
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert!(
            p.problems.iter().all(|x| x.message.contains("no IPv6 cluster CIDR is configured")),
            "{:?}",
            p.problems
        );
        // A dual-stack cluster whose node has only IPv4 yet: IPv4 only, reported.
        let p = plan(&index(vec![node("n1").with_pod_cidr("10.244.1.0/24").with_internal_ip("172.30.0.11")]), &dual());
        assert!(p.conflist.is_some());
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].message.contains("no IPv6 spec.podCIDRs entry"), "{:?}", p.problems);
        // Too small an IPv6 slice.
        let p = plan(
            &index(vec![node("n1").with_pod_cidr("10.244.1.0/24").with_pod_cidr_v6("fd00:10:244:1::/127")]),
            &dual(),
        );
        assert_eq!(p.pod_cidr_v6, None);
        assert!(p.problems[0].message.contains("between /48 and /126"), "{:?}", p.problems);
    }
}
