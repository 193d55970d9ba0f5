//! Scenarios in the style of the upstream NetworkPolicy e2e truth tables:
//! namespaces x, y, z; pods a, b, c in each; ports 80 and 81.
use std::collections::BTreeMap;

use super::*;
use crate::model::policy::{
    build::{ip_block, policy, sel},
    selector::{LabelSelector, Labels, Requirement, labels},
    types::{NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer, PolicyPort, PolicyRule, PortRef},
};

struct World {
    pods: Vec<PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    nodes: BTreeMap<String, Ipv4Addr>,
    policies: Vec<NetworkPolicyInfo>,
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
        nodes: BTreeMap::from([("n1".to_string(), Ipv4Addr::new(172, 30, 0, 11))]),
        policies: vec![],
    }
}

impl World {
    fn pod(&self, key: &str) -> &PodInfo {
        self.pods.iter().find(|p| &*p.key == key).unwrap()
    }
    fn allowed(&self, src: &str, dst: &str, proto: Protocol, port: u16) -> bool {
        let view = PolicyView { policies: &self.policies, namespaces: &self.namespaces, node_addrs: &self.nodes };
        evaluate(&view, Peer::Pod(self.pod(src)), Peer::Pod(self.pod(dst)), proto, port).allowed
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
    let from_node =
        evaluate(&view, Peer::Address(Ipv4Addr::new(172, 30, 0, 11)), Peer::Pod(w.pod("x/a")), Protocol::Tcp, 8080);
    assert!(from_node.allowed);
    let from_outside =
        evaluate(&view, Peer::Address(Ipv4Addr::new(192, 0, 2, 1)), Peer::Pod(w.pod("x/a")), Protocol::Tcp, 80);
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
