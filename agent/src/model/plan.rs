//! Desired node plumbing computed from the index: the CNI config for this
//! node and a route to every peer node's pod CIDR.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use super::{
    ClusterIndex,
    cni_conf::{self, CniSettings},
};

#[derive(Clone, Debug)]
pub struct PlanSettings {
    pub node_name: String,
    pub cluster_cidr: Ipv4Network,
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
    /// This node's pod CIDR, once its Node object has one.
    pub pod_cidr: Option<Ipv4Network>,
    /// The conflist to write; `None` until the pod CIDR is known, so that the
    /// runtime reports the network as not ready instead of failing pods.
    pub conflist: Option<String>,
    /// Peer pod CIDR -> that peer's InternalIP.
    pub peer_routes: BTreeMap<Ipv4Network, Ipv4Addr>,
    pub problems: Vec<Problem>,
}

pub fn plan(index: &ClusterIndex, settings: &PlanSettings) -> NodePlan {
    let mut out = NodePlan::default();
    let cluster = settings.cluster_cidr;

    match index.node(&settings.node_name) {
        None => {}
        Some(me) => match me.pod_cidr {
            None => out.problems.push(Problem {
                object: format!("Node/{}", me.name),
                message: "this node has no IPv4 spec.podCIDR yet (is the controller manager allocating node CIDRs?)"
                    .into(),
            }),
            Some(cidr) if !contains(cluster, cidr) => out.problems.push(Problem {
                object: format!("Node/{}", me.name),
                message: format!("spec.podCIDR {cidr} is outside the cluster CIDR {cluster}"),
            }),
            Some(cidr) if cidr.prefix() < 16 || cidr.prefix() > 30 => out.problems.push(Problem {
                object: format!("Node/{}", me.name),
                message: format!("spec.podCIDR {cidr} must have a prefix length between /16 and /30"),
            }),
            Some(cidr) => {
                out.pod_cidr = Some(cidr);
                out.conflist = Some(cni_conf::render(&settings.cni, cidr, cluster));
            }
        },
    }

    // Who claims which CIDR, to refuse routing a CIDR two nodes claim.
    let mut claims: BTreeMap<Ipv4Network, Vec<&str>> = BTreeMap::new();
    for node in index.nodes() {
        if let Some(cidr) = node.pod_cidr {
            claims.entry(cidr).or_default().push(&node.name);
        }
    }

    for peer in index.nodes().filter(|n| n.name != settings.node_name) {
        let object = format!("Node/{}", peer.name);
        let Some(cidr) = peer.pod_cidr else { continue };
        let Some(via) = peer.internal_ip else {
            out.problems.push(Problem {
                object,
                message: "has a podCIDR but no IPv4 InternalIP: cannot route to its pods".into(),
            });
            continue;
        };
        if !contains(cluster, cidr) {
            out.problems.push(Problem {
                object,
                message: format!("spec.podCIDR {cidr} is outside the cluster CIDR {cluster}; not routed"),
            });
            continue;
        }
        if let Some(mine) = out.pod_cidr
            && overlaps(mine, cidr)
        {
            out.problems.push(Problem {
                object,
                message: format!("spec.podCIDR {cidr} overlaps this node's {mine}; not routed"),
            });
            continue;
        }
        if claims.get(&cidr).is_some_and(|owners| owners.len() > 1) {
            out.problems.push(Problem {
                object,
                message: format!("spec.podCIDR {cidr} is claimed by several nodes; not routed"),
            });
            continue;
        }
        out.peer_routes.insert(cidr, via);
    }
    out
}

fn contains(outer: Ipv4Network, inner: Ipv4Network) -> bool {
    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::build::node;

    fn settings() -> PlanSettings {
        PlanSettings {
            node_name: "n1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
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
    }

    #[test]
    fn own_cidr_outside_cluster_or_too_small_gives_no_conflist() {
        for bad in ["10.0.0.0/24", "10.244.1.0/31", "10.244.0.0/15"] {
            let p = plan(&index(vec![node("n1").with_pod_cidr(bad).with_internal_ip("172.30.0.11")]), &settings());
            assert_eq!(p.conflist, None, "{bad}");
            assert_eq!(p.problems.len(), 1, "{bad}");
        }
    }
}
