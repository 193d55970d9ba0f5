//! Scenarios in the style of the upstream NetworkPolicy e2e truth tables:
//! namespaces x, y, z; pods a, b, c in each; ports 80 and 81.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use super::*;
use crate::model::policy::{
    build::{ip_block, policy, sel},
    selector::{LabelSelector, Labels, Requirement, labels},
    types::{NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer, PolicyPort, PolicyRule, PortRef},
};

struct World {
    pods: Vec<PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    nodes: BTreeMap<String, Vec<IpAddr>>,
    policies: Vec<NetworkPolicyInfo>,
    /// What connections are made over (every pod has both families).
    family: Family,
}

fn world() -> World {
    let mut pods = Vec::new();
    let mut namespaces = BTreeMap::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        namespaces.insert(ns.to_string(), NamespaceInfo { name: ns.to_string(), labels: labels(&[("ns", ns)]) });
        for (i, p) in ["a", "b", "c"].iter().enumerate() {
            pods.push(PodInfo {
                key: format!("{ns}/{p}").into(),
                namespace: ns.to_string(),
                labels: labels(&[("pod", p)]).into(),
                ip: Some(Ipv4Addr::new(10, 244, 1, (n * 10 + i + 2) as u8)),
                ip6: Some(Ipv6Addr::new(0xfd00, 10, 244, 1, 0, 0, 0, (n * 10 + i + 2) as u16)),
                node: Some("n1".into()),
                named_ports: vec![
                    ("serve-80-tcp".to_string(), Protocol::Tcp, 80),
                    ("serve-81-udp".to_string(), Protocol::Udp, 81),
                ]
                .into(),
            });
        }
    }
    World {
        pods,
        namespaces,
        nodes: BTreeMap::from([(
            "n1".to_string(),
            vec![Ipv4Addr::new(172, 30, 0, 11).into(), Ipv6Addr::new(0xfd00, 172, 30, 0, 0, 0, 0, 11).into()],
        )]),
        policies: vec![],
        family: Family::Ipv4,
    }
}

impl World {
    fn pod(&self, key: &str) -> &PodInfo {
        self.pods.iter().find(|p| &*p.key == key).unwrap()
    }
    fn allowed(&self, src: &str, dst: &str, proto: Protocol, port: u16) -> bool {
        let view = PolicyView { policies: &self.policies, namespaces: &self.namespaces, node_addrs: &self.nodes };
        evaluate(&view, self.family, Peer::Pod(self.pod(src)), Peer::Pod(self.pod(dst)), proto, port).allowed
    }
    /// The 9x9 matrix for one port, as rows of '.' (allowed) and 'X'.
    fn matrix(&self, proto: Protocol, port: u16) -> Vec<String> {
        self.pods
            .iter()
            .map(|s| {
                self.pods.iter().map(|d| if self.allowed(&s.key, &d.key, proto, port) { '.' } else { 'X' }).collect()
            })
            .collect()
    }
}

fn tcp(port: u16) -> PolicyPort {
    PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(port)), end_port: None }
}

const ALL: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

#[test]
fn no_policy_allows_everything() {
    let w = world();
    assert!(w.matrix(Protocol::Tcp, 80).iter().all(|r| r == "........."));
}

#[test]
fn default_deny_ingress_isolates_only_its_namespace() {
    let mut w = world();
    w.policies.push(policy("x/deny", LabelSelector::default(), Some(vec![]), None));
    let m = w.matrix(Protocol::Tcp, 80);
    // Columns x/a x/b x/c (into namespace x) are denied from everyone.
    assert!(m.iter().all(|r| r.starts_with("XXX") && r.ends_with("......")), "{m:#?}");
}

#[test]
fn default_deny_egress() {
    let mut w = world();
    w.policies.push(policy("x/deny", LabelSelector::default(), None, Some(vec![])));
    let m = w.matrix(Protocol::Tcp, 80);
    for (i, row) in m.iter().enumerate() {
        let expect = if i < 3 { "XXXXXXXXX" } else { "........." };
        assert_eq!(row, expect, "row {}", ALL[i]);
    }
}

#[test]
fn allow_from_namespace_and_from_pod_in_namespace() {
    let mut w = world();
    // Into x/a: from all of namespace y, or from pod b of namespace z (both
    // selectors in one peer: AND).
    w.policies.push(policy(
        "x/allow",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule {
            peers: vec![
                PolicyPeer::Pods { namespaces: Some(sel(&[("ns", "y")])), pods: None },
                PolicyPeer::Pods { namespaces: Some(sel(&[("ns", "z")])), pods: Some(sel(&[("pod", "b")])) },
            ],
            ports: vec![],
        }]),
        None,
    ));
    let allowed: Vec<&str> = ALL.iter().copied().filter(|s| w.allowed(s, "x/a", Protocol::Tcp, 80)).collect();
    assert_eq!(allowed, ["y/a", "y/b", "y/c", "z/b"]);
    // x/b is not selected: open.
    assert!(w.allowed("z/c", "x/b", Protocol::Tcp, 80));
}

#[test]
fn pod_selector_alone_means_the_policy_namespace() {
    let mut w = world();
    w.policies.push(policy(
        "x/allow",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule {
            peers: vec![PolicyPeer::Pods { namespaces: None, pods: Some(sel(&[("pod", "b")])) }],
            ports: vec![],
        }]),
        None,
    ));
    assert!(w.allowed("x/b", "x/a", Protocol::Tcp, 80));
    assert!(!w.allowed("y/b", "x/a", Protocol::Tcp, 80), "pod b of another namespace");
    // An empty namespaceSelector means every namespace.
    w.policies[0].ingress[0].peers =
        vec![PolicyPeer::Pods { namespaces: Some(LabelSelector::default()), pods: Some(sel(&[("pod", "b")])) }];
    assert!(w.allowed("y/b", "x/a", Protocol::Tcp, 80));
}

#[test]
fn ip_block_with_except() {
    let mut w = world();
    w.policies.push(policy(
        "x/cidr",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule { peers: vec![ip_block("10.244.1.0/24", &["10.244.1.12/31"])], ports: vec![] }]),
        None,
    ));
    // y/a is 10.244.1.12, y/b 10.244.1.13: excepted; y/c .14 allowed.
    assert!(!w.allowed("y/a", "x/a", Protocol::Tcp, 80));
    assert!(!w.allowed("y/b", "x/a", Protocol::Tcp, 80));
    assert!(w.allowed("y/c", "x/a", Protocol::Tcp, 80));
    // An IPv4 block admits nothing over IPv6.
    w.family = Family::Ipv6;
    assert!(!w.allowed("y/c", "x/a", Protocol::Tcp, 80));
}

#[test]
fn ip_blocks_of_each_family_admit_that_family_only() {
    let mut w = world();
    w.policies.push(policy(
        "x/cidr6",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule {
            peers: vec![ip_block("fd00:a:f4:1::/64", &["fd00:a:f4:1::c/127"]), ip_block("0.0.0.0/0", &[])],
            ports: vec![],
        }]),
        None,
    ));
    w.family = Family::Ipv6;
    // y/a is fd00:a:f4:1::c, y/b ::d: excepted; y/c ::e allowed.
    assert!(!w.allowed("y/a", "x/a", Protocol::Tcp, 80));
    assert!(!w.allowed("y/b", "x/a", Protocol::Tcp, 80));
    assert!(w.allowed("y/c", "x/a", Protocol::Tcp, 80));
    // 0.0.0.0/0 is every IPv4 address, and no IPv6 one.
    w.policies[0].ingress[0].peers.remove(0);
    assert!(!w.allowed("y/c", "x/a", Protocol::Tcp, 80));
    w.family = Family::Ipv4;
    assert!(w.allowed("y/c", "x/a", Protocol::Tcp, 80));
}

/// Pod selectors, namespace selectors and ports decide alike over both
/// families (the upstream truth tables, over IPv6).
#[test]
fn selectors_and_ports_decide_alike_over_ipv6() {
    let mut w = world();
    w.policies.push(policy(
        "x/from-y-b",
        LabelSelector::default(),
        Some(vec![PolicyRule {
            peers: vec![PolicyPeer::Pods { namespaces: Some(sel(&[("ns", "y")])), pods: Some(sel(&[("pod", "b")])) }],
            ports: vec![tcp(80)],
        }]),
        None,
    ));
    w.policies.push(policy("z/deny-egress", sel(&[("pod", "c")]), None, Some(vec![])));
    let v4 = [w.matrix(Protocol::Tcp, 80), w.matrix(Protocol::Tcp, 81)];
    w.family = Family::Ipv6;
    let v6 = [w.matrix(Protocol::Tcp, 80), w.matrix(Protocol::Tcp, 81)];
    assert_eq!(v4, v6);
    assert_eq!(v6[0][4], ".........", "y/b reaches x on 80");
    assert_eq!(v6[1][4], "XXX......", "but not on 81");
    assert_eq!(v6[0][0], "XXX......", "x/a does not reach x");
    assert_eq!(v6[0][8], "XXXXXXXXX", "z/c sends nothing");
}

#[test]
fn named_ports_end_ports_and_protocols() {
    let mut w = world();
    w.policies.push(policy(
        "x/ports",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule {
            peers: vec![],
            ports: vec![PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Name("serve-80-tcp".into())),
                end_port: None,
            }],
        }]),
        None,
    ));
    assert!(w.allowed("y/a", "x/a", Protocol::Tcp, 80));
    assert!(!w.allowed("y/a", "x/a", Protocol::Tcp, 81));
    assert!(!w.allowed("y/a", "x/a", Protocol::Udp, 80), "the named port is TCP");

    w.policies[0].ingress[0].ports =
        vec![PolicyPort { protocol: Protocol::Udp, port: Some(PortRef::Number(80)), end_port: Some(81) }];
    assert!(w.allowed("y/a", "x/a", Protocol::Udp, 80));
    assert!(w.allowed("y/a", "x/a", Protocol::Udp, 81));
    assert!(!w.allowed("y/a", "x/a", Protocol::Udp, 82));
    assert!(!w.allowed("y/a", "x/a", Protocol::Tcp, 80));
}

#[test]
fn egress_named_port_resolves_on_the_destination() {
    let mut w = world();
    w.policies.push(policy(
        "x/egress",
        sel(&[("pod", "a")]),
        None,
        Some(vec![PolicyRule {
            peers: vec![],
            ports: vec![PolicyPort {
                protocol: Protocol::Udp,
                port: Some(PortRef::Name("serve-81-udp".into())),
                end_port: None,
            }],
        }]),
    ));
    assert!(w.allowed("x/a", "y/b", Protocol::Udp, 81));
    assert!(!w.allowed("x/a", "y/b", Protocol::Udp, 80));
}

#[test]
fn union_of_policies_and_empty_rule_allows_all() {
    let mut w = world();
    let from = |ns: &str| PolicyRule {
        peers: vec![PolicyPeer::Pods { namespaces: Some(sel(&[("ns", ns)])), pods: None }],
        ports: vec![tcp(80)],
    };
    w.policies.push(policy("x/one", sel(&[("pod", "a")]), Some(vec![from("y")]), None));
    w.policies.push(policy("x/two", sel(&[("pod", "a")]), Some(vec![from("z")]), None));
    assert!(w.allowed("y/a", "x/a", Protocol::Tcp, 80));
    assert!(w.allowed("z/a", "x/a", Protocol::Tcp, 80));
    assert!(!w.allowed("x/b", "x/a", Protocol::Tcp, 80));
    // An empty rule in a third policy opens everything.
    w.policies.push(policy("x/open", sel(&[("pod", "a")]), Some(vec![PolicyRule::default()]), None));
    assert!(w.allowed("x/b", "x/a", Protocol::Tcp, 81));
}

#[test]
fn policies_of_other_namespaces_do_not_apply() {
    let mut w = world();
    w.policies.push(policy("y/deny", sel(&[("pod", "a")]), Some(vec![]), None));
    assert!(w.allowed("z/a", "x/a", Protocol::Tcp, 80));
    assert!(!w.allowed("z/a", "y/a", Protocol::Tcp, 80));
}

#[test]
fn the_pods_own_node_always_reaches_it_and_verdicts_name_the_policies() {
    let mut w = world();
    w.policies.push(policy("x/deny", LabelSelector::default(), Some(vec![]), None));
    let view = PolicyView { policies: &w.policies, namespaces: &w.namespaces, node_addrs: &w.nodes };
    let from = |family, addr: IpAddr, port| {
        evaluate(&view, family, Peer::Address(addr), Peer::Pod(w.pod("x/a")), Protocol::Tcp, port)
    };
    assert!(from(Family::Ipv4, Ipv4Addr::new(172, 30, 0, 11).into(), 8080).allowed);
    assert!(from(Family::Ipv6, "fd00:ac:1e::b".parse().unwrap(), 8080).allowed, "the node's IPv6 address");
    let from_outside = from(Family::Ipv4, Ipv4Addr::new(192, 0, 2, 1).into(), 80);
    assert!(!from_outside.allowed);
    let v = from_outside.ingress.unwrap();
    assert_eq!(v.selecting, ["x/deny"]);
    assert!(v.reason.contains("x/deny"), "{}", v.reason);
}

#[test]
fn match_expressions_in_peers() {
    let mut w = world();
    w.policies.push(policy(
        "x/expr",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule {
            peers: vec![PolicyPeer::Pods {
                namespaces: Some(LabelSelector {
                    match_labels: Labels::new(),
                    expressions: vec![Requirement::NotIn("ns".into(), vec!["y".into()])],
                }),
                pods: None,
            }],
            ports: vec![],
        }]),
        None,
    ));
    assert!(w.allowed("z/c", "x/a", Protocol::Tcp, 80));
    assert!(w.allowed("x/b", "x/a", Protocol::Tcp, 80));
    assert!(!w.allowed("y/c", "x/a", Protocol::Tcp, 80));
}
