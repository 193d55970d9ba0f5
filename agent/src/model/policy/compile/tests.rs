//! Targeted cases: port ranges, identity and slot stability, pending
//! endpoints, the node's own access, ipBlock excepts, named ports.
use std::collections::BTreeMap;

use weir_common::policy::{DIR_INGRESS, PolicyKey};

use super::*;
use crate::model::{
    policy::{
        build::{self, ip_block, sel},
        keys::port_prefixes,
        selector::{LabelSelector, labels},
        simulate::simulate,
        types::{PolicyPort, PortRef},
    },
    service::Protocol,
};

const HOST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, last)
}

/// Namespaces x and y; pods x/a (.2, local, ifindex 2), x/b (.3, local,
/// ifindex 3), y/a (.12, remote), each labelled `pod=<name>` with
/// `http`/TCP/80 and `dns`/UDP/53.
struct World {
    pods: BTreeMap<String, PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<String, NetworkPolicyInfo>,
    endpoints: Vec<LocalEndpoint>,
    hosts: Vec<IpAddr>,
}

impl World {
    fn new() -> Self {
        let mut w = World {
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            policies: BTreeMap::new(),
            endpoints: vec![],
            hosts: vec![HOST.into()],
        };
        for ns in ["x", "y"] {
            w.namespaces.insert(ns.into(), NamespaceInfo { name: ns.into(), labels: labels(&[("ns", ns)]) });
        }
        w.pod("x/a", ip(2), "n1");
        w.pod("x/b", ip(3), "n1");
        w.pod("y/a", ip(12), "n2");
        w.endpoints = vec![local(2, ip(2), "x/a"), local(3, ip(3), "x/b")];
        w
    }

    fn pod(&mut self, key: &str, addr: Ipv4Addr, node: &str) {
        let (ns, name) = key.split_once('/').unwrap();
        self.pods.insert(
            key.into(),
            PodInfo {
                key: key.into(),
                namespace: ns.into(),
                labels: labels(&[("pod", name)]).into(),
                ip: Some(addr),
                ip6: None,
                node: Some(node.into()),
                named_ports: vec![("http".into(), Protocol::Tcp, 80), ("dns".into(), Protocol::Udp, 53)].into(),
            },
        );
    }

    fn policy(
        &mut self,
        key: &str,
        pods: LabelSelector,
        ingress: Option<Vec<PolicyRule>>,
        egress: Option<Vec<PolicyRule>>,
    ) {
        self.policies.insert(key.into(), build::policy(key, pods, ingress, egress));
    }

    fn compile(&self, c: &mut PolicyCompiler) -> DesiredPolicy {
        c.compile(&CompileInput {
            pods: &self.pods,
            namespaces: &self.namespaces,
            policies: &self.policies,
            host_addrs: &self.hosts,
            endpoints: &self.endpoints,
        })
    }
}

fn local(ifindex: u32, addr: Ipv4Addr, pod: &str) -> LocalEndpoint {
    LocalEndpoint { ifindex, ip: addr, ip6: None, pod: Some(pod.into()), pending: true }
}

fn port(proto: Protocol, p: PortRef, end_port: Option<u16>) -> PolicyPort {
    PolicyPort { protocol: proto, port: Some(p), end_port }
}

fn allowed(
    d: &DesiredPolicy,
    ifindex: u32,
    dir: Direction,
    peer: impl Into<IpAddr>,
    proto: Protocol,
    port: u16,
) -> bool {
    simulate(d, ifindex, dir, peer, proto, port).allowed
}

/// Every port of `lo..=hi` is covered by exactly one prefix and no other
/// port is.
fn assert_exact_cover(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let prefixes = port_prefixes(lo, hi);
    for port in 0..=u16::MAX {
        let hits = prefixes.iter().filter(|(p, bits)| u32::from(port ^ p) >> (16 - u32::from(*bits)) == 0).count();
        assert_eq!(hits, usize::from((lo..=hi).contains(&port)), "{lo}-{hi} at {port}: {prefixes:?}");
    }
    prefixes
}

#[test]
fn port_ranges_become_the_fewest_prefixes() {
    assert_eq!(assert_exact_cover(80, 81), [(80, 15)]);
    assert_eq!(assert_exact_cover(79, 80), [(79, 16), (80, 16)]);
    assert_eq!(assert_exact_cover(80, 80), [(80, 16)]);
    assert_eq!(assert_exact_cover(0, u16::MAX), [(0, 0)]);
    let all = assert_exact_cover(1, u16::MAX);
    assert_eq!(all.len(), 16, "1, 2-3, 4-7, ... 32768-65535: {all:?}");
    // 1000-1007, 1008-1023, 1024-1535, 1536-1791, 1792-1919, 1920-1983,
    // 1984-1999, 2000.
    assert_eq!(
        assert_exact_cover(1000, 2000),
        [(1000, 13), (1008, 12), (1024, 7), (1536, 8), (1792, 9), (1920, 10), (1984, 12), (2000, 16)]
    );
    assert_eq!(assert_exact_cover(65535, 65535), [(65535, 16)]);
    assert!(port_prefixes(81, 80).is_empty(), "an empty range allows nothing");
}

#[test]
fn port_ranges_and_protocol_only_entries_in_the_map() {
    let mut w = World::new();
    w.policy(
        "x/p",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule {
            peers: vec![],
            ports: vec![
                port(Protocol::Tcp, PortRef::Number(1000), Some(2000)),
                PolicyPort { protocol: Protocol::Udp, port: None, end_port: None },
            ],
        }]),
        None,
    );
    let d = w.compile(&mut PolicyCompiler::new());
    let peer = ip(12);
    for p in [999u16, 1000, 1500, 2000, 2001, 80] {
        assert_eq!(allowed(&d, 2, Direction::Ingress, peer, Protocol::Tcp, p), (1000..=2000).contains(&p), "TCP {p}");
        assert!(allowed(&d, 2, Direction::Ingress, peer, Protocol::Udp, p), "UDP {p}");
        assert!(!allowed(&d, 2, Direction::Ingress, peer, Protocol::Sctp, p), "SCTP {p}");
    }
    // 8 range prefixes and one protocol entry, with the wildcard identity.
    assert_eq!(d.rules.keys().filter(|(_, k)| k.ifindex == 2 && k.identity == IDENTITY_ANY).count(), 9);
    assert!(d.rules.contains_key(&(
        PolicyKey::PREFIX_ANY_PORT,
        PolicyKey { ifindex: 2, identity: IDENTITY_ANY, dir: DIR_INGRESS, proto: 17, port: 0 }
    )));
    assert!(d.rules.contains_key(&(
        PolicyKey::PREFIX_ANY_PORT + 13,
        PolicyKey { ifindex: 2, identity: IDENTITY_ANY, dir: DIR_INGRESS, proto: 6, port: 1000u16.to_be() }
    )));
}

#[test]
fn identities_are_stable_across_compiles_and_released_when_unused() {
    let mut w = World::new();
    let mut c = PolicyCompiler::new();
    let d1 = w.compile(&mut c);
    let ya = d1.identity_of(ip(12));
    assert!(ya >= IDENTITY_FIRST_DYNAMIC);
    assert_eq!(d1.identities[&ya], "pod y {pod=a} ports [dns/UDP/53,http/TCP/80]");
    assert_eq!(d1.identity_of(HOST), d1.ipcache[&prefix_of(HOST, 32)]);
    assert_eq!(d1.identities[&d1.identity_of(HOST)], "host");
    assert_eq!(d1.identity_of(Ipv4Addr::new(8, 8, 8, 8)), IDENTITY_WORLD);
    assert_eq!(d1.identities[&IDENTITY_WORLD], "world");

    // A new pod, a relabelled one: the others keep their numbers.
    w.pod("y/c", ip(14), "n2");
    w.pods.get_mut("x/b").unwrap().labels = labels(&[("pod", "b2")]).into();
    let xb = d1.identity_of(ip(3));
    let d2 = w.compile(&mut c);
    assert_eq!(d2.identity_of(ip(12)), ya);
    assert_eq!(d2.identity_of(ip(2)), d1.identity_of(ip(2)));
    assert_eq!(d2.identity_of(HOST), d1.identity_of(HOST));
    assert_ne!(d2.identity_of(ip(3)), xb);
    assert!(c.identity_key(xb).is_none(), "released after the compile");
    // Pods with the same namespace, labels and named ports share one.
    w.pod("y/a2", ip(13), "n2");
    w.pods.get_mut("y/a2").unwrap().labels = labels(&[("pod", "a")]).into();
    let d3 = w.compile(&mut c);
    assert_eq!(d3.identity_of(ip(13)), ya);
    // ... and the same compile again changes nothing.
    assert_eq!(w.compile(&mut c), d3);
    // A released number is not handed out again right away.
    assert!(!d3.identities.contains_key(&xb));
}

#[test]
fn slots_are_stable_and_reused_late() {
    let mut w = World::new();
    let mut c = PolicyCompiler::new();
    w.policy("x/one", sel(&[("pod", "a")]), Some(vec![]), None);
    w.policy("x/two", sel(&[("pod", "a")]), Some(vec![]), None);
    w.compile(&mut c);
    assert_eq!((c.slot_of("x/one"), c.slot_of("x/two")), (Some(1), Some(2)));
    assert_eq!(c.policy_of_slot(2), Some("x/two"));
    w.policies.remove("x/one");
    w.policy("x/three", sel(&[("pod", "a")]), Some(vec![]), None);
    w.compile(&mut c);
    assert_eq!(c.slot_of("x/one"), None);
    assert_eq!(c.policy_of_slot(1), None);
    assert_eq!((c.slot_of("x/two"), c.slot_of("x/three")), (Some(2), Some(3)));
    // The lowest slot wins an entry two policies give.
    w.policy("x/allow-a", sel(&[("pod", "a")]), Some(vec![PolicyRule::default()]), None);
    w.policy("x/allow-b", sel(&[("pod", "a")]), Some(vec![PolicyRule::default()]), None);
    let d = w.compile(&mut c);
    let (a, b) = (c.slot_of("x/allow-a").unwrap(), c.slot_of("x/allow-b").unwrap());
    assert_eq!(simulate(&d, 2, Direction::Ingress, ip(12), Protocol::Tcp, 1).slot, Some(a.min(b)));
}

#[test]
fn pending_endpoints_stay_isolated_until_their_pod_is_known() {
    let mut w = World::new();
    w.endpoints.push(local(4, ip(4), "x/late"));
    w.endpoints.push(LocalEndpoint { ifindex: 5, ip: ip(5), ip6: None, pod: None, pending: false });
    w.endpoints.push(LocalEndpoint { ifindex: 6, ip: ip(6), ip6: None, pod: None, pending: true });
    let mut c = PolicyCompiler::new();
    let d = w.compile(&mut c);
    assert_eq!(d.endpoint_flags[&4], EndpointInfo::FLAG_POLICY_PENDING);
    let s = simulate(&d, 4, Direction::Egress, ip(12), Protocol::Tcp, 80);
    assert!(s.pending && !s.allowed);
    assert_eq!(d.endpoint_flags[&5], 0, "not a pod: nothing to enforce");
    assert_eq!(d.endpoint_flags[&6], EndpointInfo::FLAG_POLICY_PENDING, "weir-cni's pending bit is kept");
    // Bound pods no policy selects: open, pending cleared.
    assert_eq!(d.endpoint_flags[&2], 0);
    // Its address is not the pod's yet: an address.
    assert_eq!(d.identity_of(ip(4)), IDENTITY_WORLD);

    // The pod arrives (without an address in its status yet) and a policy
    // isolates it for egress.
    w.pod("x/late", ip(4), "n1");
    w.pods.get_mut("x/late").unwrap().ip = None;
    w.policy("x/eg", sel(&[("pod", "late")]), None, Some(vec![]));
    let d = w.compile(&mut c);
    assert_eq!(d.endpoint_flags[&4], EndpointInfo::FLAG_EGRESS_ENFORCED);
    assert!(d.identities[&d.identity_of(ip(4))].starts_with("pod x {pod=late}"), "the endpoint's address is the pod's");
    assert!(!allowed(&d, 4, Direction::Egress, ip(12), Protocol::Tcp, 80));
    assert!(allowed(&d, 4, Direction::Ingress, ip(12), Protocol::Tcp, 80));
}

#[test]
fn the_node_always_reaches_its_isolated_pods() {
    let mut w = World::new();
    w.policy("x/deny", LabelSelector::default(), Some(vec![]), Some(vec![]));
    let d = w.compile(&mut PolicyCompiler::new());
    let host = d.identity_of(HOST);
    for ifindex in [2, 3] {
        assert_eq!(d.endpoint_flags[&ifindex], EndpointInfo::FLAGS_ENFORCED);
        assert_eq!(d.rules.get(&any_proto_entry(ifindex, host, Direction::Ingress)), Some(&POLICY_SLOT_OWN_NODE));
        let s = simulate(&d, ifindex, Direction::Ingress, HOST, Protocol::Udp, 9);
        assert_eq!((s.allowed, s.slot), (true, Some(POLICY_SLOT_OWN_NODE)));
        // Only inbound: the pod may not reach the node unless allowed.
        assert!(!allowed(&d, ifindex, Direction::Egress, HOST, Protocol::Tcp, 10250));
        assert!(!allowed(&d, ifindex, Direction::Ingress, ip(12), Protocol::Tcp, 80));
    }
    assert_eq!(d.rules.len(), 2, "nothing but the node's entries: {:?}", d.rules);
    // A host-network pod has the node's address: it is the node.
    w.pod("y/hostnet", HOST, "n1");
    let d = w.compile(&mut PolicyCompiler::new());
    assert_eq!(d.identities[&d.identity_of(HOST)], "host");
}

#[test]
fn ip_block_except_carves_out_pods_and_addresses() {
    let mut w = World::new();
    w.pod("y/b", ip(13), "n2");
    w.pod("y/c", ip(14), "n2");
    w.policy(
        "x/cidr",
        sel(&[("pod", "a")]),
        Some(vec![PolicyRule { peers: vec![ip_block("10.244.1.0/24", &["10.244.1.12/31"])], ports: vec![] }]),
        Some(vec![PolicyRule {
            peers: vec![ip_block("0.0.0.0/0", &["10.0.0.1/8"])],
            ports: vec![port(Protocol::Tcp, PortRef::Number(443), None)],
        }]),
    );
    let d = w.compile(&mut PolicyCompiler::new());
    let ing = |peer| allowed(&d, 2, Direction::Ingress, peer, Protocol::Tcp, 80);
    assert!(!ing(ip(12)) && !ing(ip(13)), "excepted pods");
    assert!(ing(ip(14)) && ing(ip(3)), "pods in the block");
    assert!(ing(ip(200)), "an address in the block");
    assert!(!ing(Ipv4Addr::new(10, 244, 2, 1)));
    assert!(ing(HOST), "the node, always");
    let eg = |peer| allowed(&d, 2, Direction::Egress, peer, Protocol::Tcp, 443);
    assert!(eg(Ipv4Addr::new(8, 8, 8, 8)) && eg(HOST));
    assert!(!eg(ip(12)) && !eg(Ipv4Addr::new(10, 1, 2, 3)), "10/8 is excepted (host bits ignored)");
    // The prefixes are in the ipcache as themselves.
    for net in ["0.0.0.0/0", "10.0.0.0/8", "10.244.1.0/24", "10.244.1.12/31"] {
        assert!(d.ipcache.contains_key(&net.parse().unwrap()), "{net}");
    }
    assert_eq!(d.identities[&d.identity_of(Ipv4Addr::new(10, 244, 1, 200))], "cidr 10.244.1.0/24");
    assert_eq!(d.identities[&d.identity_of(ip(14))], "pod y {pod=c} ports [dns/UDP/53,http/TCP/80] in 10.244.1.0/24");
}

#[test]
fn named_ports_resolve_on_the_destination_in_both_directions() {
    let mut w = World::new();
    // y/a's "http" is 8080; x/b has no "http".
    w.pods.get_mut("y/a").unwrap().named_ports = vec![("http".into(), Protocol::Tcp, 8080)].into();
    w.pods.get_mut("x/b").unwrap().named_ports = vec![].into();
    let named =
        |name: &str| PolicyRule { peers: vec![], ports: vec![port(Protocol::Tcp, PortRef::Name(name.into()), None)] };
    w.policy("x/named", LabelSelector::default(), Some(vec![named("http")]), Some(vec![named("http")]));
    let d = w.compile(&mut PolicyCompiler::new());
    // Ingress: the endpoint's own port.
    assert!(allowed(&d, 2, Direction::Ingress, ip(12), Protocol::Tcp, 80));
    assert!(!allowed(&d, 2, Direction::Ingress, ip(12), Protocol::Tcp, 8080));
    assert!(!allowed(&d, 2, Direction::Ingress, ip(12), Protocol::Udp, 80));
    assert!(!allowed(&d, 3, Direction::Ingress, ip(12), Protocol::Tcp, 80), "x/b has no such port");
    // Egress: the peer's.
    assert!(allowed(&d, 2, Direction::Egress, ip(12), Protocol::Tcp, 8080));
    assert!(!allowed(&d, 2, Direction::Egress, ip(12), Protocol::Tcp, 80));
    assert!(allowed(&d, 3, Direction::Egress, ip(2), Protocol::Tcp, 80));
    assert!(!allowed(&d, 2, Direction::Egress, ip(3), Protocol::Tcp, 80), "x/b has no such port");
    assert!(
        !allowed(&d, 2, Direction::Egress, Ipv4Addr::new(8, 8, 8, 8), Protocol::Tcp, 80),
        "addresses have no named ports"
    );
}

#[test]
fn pods_sharing_an_address_resolve_deterministically() {
    let mut w = World::new();
    // A stale y/old still claims x/a's address, and two remote pods share one.
    w.pod("y/old", ip(2), "n2");
    w.pod("y/b", ip(20), "n2");
    w.pod("y/c", ip(20), "n2");
    let d = w.compile(&mut PolicyCompiler::new());
    assert!(d.identities[&d.identity_of(ip(2))].starts_with("pod x {pod=a}"), "the local endpoint's pod");
    assert!(d.identities[&d.identity_of(ip(20))].starts_with("pod y {pod=b}"), "the first by key");
}
