//! The compiled maps, looked up as the datapath does, against the
//! evaluator: random clusters and policies, every local endpoint, every
//! peer, a few ports and every protocol, both directions. A compile that
//! reuses the previous one's work against one from scratch, through random
//! changes. And the size and time of a large input. Pods, nodes and
//! ipBlocks are of both families (some pods have no IPv6), and every peer
//! is checked over each family both ends have.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use ipnetwork::IpNetwork;

use super::*;
use crate::model::{
    policy::{
        build::sel,
        evaluate::{Family, Peer, PolicyView, Verdict, evaluate},
        selector::{LabelSelector, Requirement, labels},
        simulate::simulate,
        types::{PolicyPeer, PolicyPort, PortRef},
    },
    service::Protocol,
};

/// xorshift64*: small, deterministic, good enough to shake inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

const HOST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 12);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xac, 0x1e, 0, 0, 0, 0, 11);
const REMOTE_NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xac, 0x1e, 0, 0, 0, 0, 12);

/// This node's addresses.
fn hosts() -> Vec<IpAddr> {
    vec![HOST.into(), HOST6.into()]
}

/// A pod address's IPv6 twin: 10.244.a.b is fd00:a:f4:a::b.
fn v6_of(ip: Ipv4Addr) -> Ipv6Addr {
    let [_, _, a, b] = ip.octets();
    Ipv6Addr::new(0xfd00, 10, 244, a.into(), 0, 0, 0, b.into())
}
const PROTOS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
const PORTS: [u16; 5] = [79, 80, 81, 1000, 65535];
const NAMED: [(&str, Protocol, u16); 6] = [
    ("http", Protocol::Tcp, 80),
    ("http", Protocol::Tcp, 81),
    ("dns", Protocol::Udp, 81),
    ("dns", Protocol::Udp, 79),
    ("alt", Protocol::Tcp, 1000),
    ("alt", Protocol::Sctp, 80),
];

/// One random cluster: what the compiler gets, and the evaluator's view of
/// the same (local pods with their endpoint's address filled in).
struct Case {
    pods: BTreeMap<String, PodInfo>,
    eval_pods: BTreeMap<String, PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<String, NetworkPolicyInfo>,
    endpoints: Vec<LocalEndpoint>,
    addresses: Vec<IpAddr>,
}

fn gen_selector(rng: &mut Rng, keys: &[(&str, &[&str])]) -> LabelSelector {
    let mut s = LabelSelector::default();
    for _ in 0..rng.below(3) {
        let (k, vs) = rng.pick(keys);
        let values = |rng: &mut Rng| (0..1 + rng.below(2)).map(|_| rng.pick(vs).to_string()).collect::<Vec<_>>();
        match rng.below(6) {
            0 | 1 => {
                s.match_labels.insert(k.to_string(), rng.pick(vs).to_string());
            }
            2 => s.expressions.push(Requirement::In(k.to_string(), values(rng))),
            3 => s.expressions.push(Requirement::NotIn(k.to_string(), values(rng))),
            4 => s.expressions.push(Requirement::Exists(k.to_string())),
            _ => s.expressions.push(Requirement::DoesNotExist(k.to_string())),
        }
    }
    s
}

const POD_KEYS: &[(&str, &[&str])] = &[("pod", &["a", "b", "c"]), ("app", &["web", "db"])];
const NS_KEYS: &[(&str, &[&str])] = &[("ns", &["x", "y", "z"]), ("team", &["red", "blue"])];

fn gen_block(rng: &mut Rng, anchors: &[IpAddr]) -> PolicyPeer {
    let (cidr, except_anchor): (IpNetwork, Option<IpAddr>) = match rng.below(12) {
        0 => ("0.0.0.0/0".parse().unwrap(), None),
        1 => ("172.30.0.0/24".parse().unwrap(), Some(HOST.into())),
        2 => ("10.244.0.0/16".parse().unwrap(), None),
        3 => ("::/0".parse().unwrap(), None),
        4 => ("fd00:ac:1e::/64".parse().unwrap(), Some(HOST6.into())),
        5 => ("fd00:a:f4::/48".parse().unwrap(), None),
        _ => {
            let a = rng.pick(anchors);
            // Host bits left set on purpose: only the prefix counts.
            let len = if a.is_ipv4() { 20 + rng.below(13) } else { 116 + rng.below(13) };
            (IpNetwork::new(a, len as u8).unwrap(), None)
        }
    };
    let bits = if cidr.is_ipv4() { 32 } else { 128 };
    let anchors: Vec<IpAddr> = anchors.iter().copied().filter(|a| a.is_ipv4() == cidr.is_ipv4()).collect();
    let mut except = Vec::new();
    for _ in 0..rng.below(3) {
        let a = match except_anchor {
            Some(a) if rng.chance(50) => a,
            _ => rng.pick(&anchors),
        };
        // Mostly inside the cidr (as upstream validation wants), not always.
        let len = (cidr.prefix() as usize + rng.below(bits + 1 - cidr.prefix() as usize)).max(8) as u8;
        let e = IpNetwork::new(a, len).unwrap();
        if rng.chance(85) && !cidr.contains(a) {
            continue;
        }
        except.push(e);
    }
    PolicyPeer::IpBlock { cidr, except }
}

fn gen_rule(rng: &mut Rng, anchors: &[IpAddr]) -> PolicyRule {
    let mut rule = PolicyRule::default();
    if !rng.chance(30) {
        for _ in 0..1 + rng.below(2) {
            rule.peers.push(if rng.chance(35) {
                gen_block(rng, anchors)
            } else {
                let namespaces = match rng.below(4) {
                    0 => None,
                    1 => Some(LabelSelector::default()),
                    _ => Some(gen_selector(rng, NS_KEYS)),
                };
                let pods = if rng.chance(30) { None } else { Some(gen_selector(rng, POD_KEYS)) };
                PolicyPeer::Pods { namespaces, pods }
            });
        }
    }
    if !rng.chance(35) {
        for _ in 0..1 + rng.below(2) {
            let protocol = rng.pick(&PROTOS);
            let (port, end_port) = match rng.below(10) {
                0 => (None, None),
                1..=3 => (Some(PortRef::Number(rng.pick(&[79, 80, 81, 1000]))), None),
                4 | 5 => {
                    (Some(PortRef::Number(rng.pick(&[1, 79, 80, 81]))), Some(rng.pick(&[80, 81, 1000, 65535, 78])))
                }
                _ => (Some(PortRef::Name(rng.pick(&["http", "dns", "alt", "nope"]).to_string())), None),
            };
            rule.ports.push(PolicyPort { protocol, port, end_port });
        }
    }
    rule
}

fn gen_case(rng: &mut Rng) -> Case {
    let namespaces = gen_namespaces(rng);
    let PodSet { pods, eval_pods, endpoints, used } = gen_pods(rng);
    let mut anchors = used;
    anchors.extend([IpAddr::from(Ipv4Addr::new(10, 244, 1, 200)), v6_of(Ipv4Addr::new(10, 244, 1, 200)).into()]);
    let policies: BTreeMap<_, _> =
        (0..1 + rng.below(4)).map(|i| gen_policy(rng, i, &anchors)).map(|p| (p.key.clone(), p)).collect();
    let addresses = peer_addresses(&policies, &eval_pods);
    Case { pods, eval_pods, namespaces, policies, endpoints, addresses }
}

/// x, y and z, each labelled with its name and maybe a team.
fn gen_namespaces(rng: &mut Rng) -> BTreeMap<String, NamespaceInfo> {
    let mut namespaces = BTreeMap::new();
    for ns in ["x", "y", "z"] {
        let mut l = labels(&[("ns", ns)]);
        if rng.chance(50) {
            l.insert("team".into(), rng.pick(&["red", "blue"]).into());
        }
        namespaces.insert(ns.to_string(), NamespaceInfo { name: ns.into(), labels: l });
    }
    namespaces
}

/// The pods of a case as the compiler and the evaluator see them, the
/// local endpoints among them, and every address in use (the nodes' too).
struct PodSet {
    pods: BTreeMap<String, PodInfo>,
    eval_pods: BTreeMap<String, PodInfo>,
    endpoints: Vec<LocalEndpoint>,
    used: Vec<IpAddr>,
}

fn gen_pods(rng: &mut Rng) -> PodSet {
    let mut out = PodSet {
        pods: BTreeMap::new(),
        eval_pods: BTreeMap::new(),
        endpoints: Vec::new(),
        used: vec![HOST.into(), REMOTE_NODE.into(), HOST6.into(), REMOTE_NODE6.into()],
    };
    // "w" has pods but no Namespace object: no namespaceSelector matches.
    let pod_namespaces = if rng.chance(20) { vec!["x", "y", "z", "w"] } else { vec!["x", "y", "z"] };
    for ns in pod_namespaces {
        for i in 0..3 + rng.below(2) {
            gen_pod(rng, ns, i, &mut out);
        }
    }
    out
}

/// Pod `p{i}` of `ns` at an unused address, on this node or the other.
fn gen_pod(rng: &mut Rng, ns: &str, i: usize, out: &mut PodSet) {
    let ip = loop {
        let ip = Ipv4Addr::new(10, 244, rng.below(2) as u8, rng.below(64) as u8);
        if !out.used.contains(&ip.into()) {
            break ip;
        }
    };
    out.used.push(ip.into());
    // Most pods are dual-stack.
    let ip6 = rng.chance(70).then(|| v6_of(ip));
    out.used.extend(ip6.map(IpAddr::V6));
    let mut l = labels(&[("pod", rng.pick(&["a", "b", "c"]))]);
    if rng.chance(40) {
        l.insert("app".into(), rng.pick(&["web", "db"]).into());
    }
    let named_ports: Vec<_> =
        (0..rng.below(3)).map(|_| rng.pick(&NAMED)).map(|(n, p, port)| (n.to_string(), p, port)).collect();
    let key = format!("{ns}/p{i}");
    let is_local = rng.chance(50);
    let pod = PodInfo {
        key: key.as_str().into(),
        namespace: ns.into(),
        labels: l.into(),
        ip: Some(ip),
        ip6,
        node: Some(if is_local { "n1" } else { "n2" }.into()),
        named_ports: named_ports.into(),
    };
    out.eval_pods.insert(key.clone(), pod.clone());
    let mut compiled = pod;
    if is_local {
        out.endpoints.push(LocalEndpoint {
            ifindex: 100 + out.endpoints.len() as u32,
            ip,
            ip6,
            pod: Some(key.clone()),
            pending: rng.chance(50),
        });
        // The status lags: the endpoint's address is the truth.
        if rng.chance(30) {
            compiled.ip = None;
        }
        if rng.chance(30) {
            compiled.ip6 = None;
        }
    }
    out.pods.insert(key, compiled);
}

/// Policy `np{i}` in a random namespace, ipBlocks around `anchors`.
fn gen_policy(rng: &mut Rng, i: usize, anchors: &[IpAddr]) -> NetworkPolicyInfo {
    let ns = rng.pick(&["x", "y", "z"]);
    let key = format!("{ns}/np{i}");
    let (ingress_enabled, egress_enabled) = rng.pick(&[(true, false), (false, true), (true, true)]);
    let rules = |enabled: bool, rng: &mut Rng| {
        if enabled || rng.chance(20) { (0..rng.below(3)).map(|_| gen_rule(rng, anchors)).collect() } else { vec![] }
    };
    let ingress = rules(ingress_enabled, rng);
    let egress = rules(egress_enabled, rng);
    let pod_selector = if rng.chance(30) { LabelSelector::default() } else { gen_selector(rng, POD_KEYS) };
    NetworkPolicyInfo { key, namespace: ns.into(), pod_selector, ingress_enabled, egress_enabled, ingress, egress }
}

/// Peers that are not pods: this node, another node, outside, an unused
/// cluster address, and both ends of every ipBlock prefix.
fn peer_addresses(
    policies: &BTreeMap<String, NetworkPolicyInfo>,
    eval_pods: &BTreeMap<String, PodInfo>,
) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = vec![
        HOST.into(),
        REMOTE_NODE.into(),
        Ipv4Addr::new(8, 8, 8, 8).into(),
        Ipv4Addr::new(10, 244, 1, 200).into(),
        Ipv4Addr::new(192, 168, 0, 1).into(),
        HOST6.into(),
        REMOTE_NODE6.into(),
        "2001:db8::1".parse().unwrap(),
        v6_of(Ipv4Addr::new(10, 244, 1, 200)).into(),
    ];
    for p in policies.values() {
        for rule in p.ingress.iter().chain(&p.egress) {
            for peer in &rule.peers {
                if let PolicyPeer::IpBlock { cidr, except } = peer {
                    for net in std::iter::once(cidr).chain(except) {
                        let last = match net {
                            IpNetwork::V4(n) => n.broadcast().into(),
                            IpNetwork::V6(n) => {
                                let host_bits = 128 - u32::from(n.prefix());
                                let mask = u128::MAX.checked_shr(128 - host_bits).filter(|_| host_bits > 0);
                                Ipv6Addr::from(u128::from(n.network()) | mask.unwrap_or(0)).into()
                            }
                        };
                        addresses.extend([net.network(), last]);
                    }
                }
            }
        }
    }
    addresses.retain(|a| !eval_pods.values().any(|p| p.addrs().any(|b| b == *a)));
    addresses.sort();
    addresses.dedup();
    addresses
}

/// How many checks, and of the enforced ones how many were allowed and
/// denied (so a generator that stopped producing denials shows).
#[derive(Default)]
struct Counts {
    checks: usize,
    allowed: usize,
    denied: usize,
}

/// Checks every local endpoint x peer x port x protocol x direction.
fn check(seed: u64, case: &Case, compiler: &mut PolicyCompiler, counts: &mut Counts) {
    let input = CompileInput {
        pods: &case.pods,
        namespaces: &case.namespaces,
        policies: &case.policies,
        host_addrs: &hosts(),
        endpoints: &case.endpoints,
    };
    let desired = compiler.compile(&input);
    assert_eq!(compiler.compile(&input), desired, "seed {seed}: a second compile differs");
    let policies: Vec<NetworkPolicyInfo> = case.policies.values().cloned().collect();
    let nodes = BTreeMap::from([
        ("n1".to_string(), hosts()),
        ("n2".to_string(), vec![REMOTE_NODE.into(), REMOTE_NODE6.into()]),
    ]);
    let view = PolicyView { policies: &policies, namespaces: &case.namespaces, node_addrs: &nodes };
    // Each peer at each of its addresses.
    let peers: Vec<(Peer<'_>, IpAddr, String)> = case
        .eval_pods
        .values()
        .flat_map(|p| p.addrs().map(move |a| (Peer::Pod(p), a, p.key.to_string())))
        .chain(case.addresses.iter().map(|a| (Peer::Address(*a), *a, a.to_string())))
        .collect();
    for ep in &case.endpoints {
        let pod = &case.eval_pods[ep.pod.as_ref().unwrap()];
        // Over the families the endpoint has.
        for (peer, peer_ip, peer_name) in
            peers.iter().filter(|(_, a, _)| pod.addrs().any(|b| b.is_ipv4() == a.is_ipv4()))
        {
            let family = Family::of(*peer_ip);
            for proto in PROTOS {
                for port in PORTS {
                    for dir in [Direction::Ingress, Direction::Egress] {
                        let expected: Verdict = match dir {
                            Direction::Ingress => {
                                evaluate(&view, family, *peer, Peer::Pod(pod), proto, port).ingress.unwrap()
                            }
                            Direction::Egress => {
                                evaluate(&view, family, Peer::Pod(pod), *peer, proto, port).egress.unwrap()
                            }
                        };
                        let got = simulate(&desired, ep.ifindex, dir, *peer_ip, proto, port);
                        // The slot names a policy that allows it; from the
                        // node, that may also be a selecting policy whose
                        // rule matches the node (a longer prefix than the
                        // node's own entry).
                        let from_node = dir == Direction::Ingress && hosts().contains(peer_ip);
                        let slot_ok = match got.slot {
                            None => true,
                            Some(POLICY_SLOT_OWN_NODE) => from_node,
                            Some(s) => compiler.policy_of_slot(s).is_some_and(|p| {
                                expected.allowed_by.iter().any(|a| a == p)
                                    || (from_node && expected.selecting.iter().any(|a| a == p))
                            }),
                        };
                        if got.allowed != expected.allowed || !slot_ok {
                            panic!(
                                "seed {seed}: {dir:?} at {} ({}) with {peer_name} ({peer_ip}) {}/{port}\n\
                                 evaluator: {expected:?}\ncompiled: {got:?} (slot {:?} is {:?}), identity {:?}\n\
                                 policies: {:#?}\npods: {:#?}\nnamespaces: {:#?}\nendpoints: {:#?}\ndesired: {desired:#?}",
                                pod.key,
                                ep.ip,
                                proto.name(),
                                got.slot,
                                got.slot.and_then(|s| compiler.policy_of_slot(s)),
                                desired.identities.get(&got.identity),
                                case.policies,
                                case.pods,
                                case.namespaces,
                                case.endpoints,
                            );
                        }
                        counts.checks += 1;
                        if got.enforced {
                            *if got.allowed { &mut counts.allowed } else { &mut counts.denied } += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn compiled_maps_agree_with_the_evaluator() {
    // One compiler for every case: identities and slots churn as they would
    // in a long-running agent.
    let mut compiler = PolicyCompiler::new();
    // More for a deeper run: WEIR_POLICY_SEEDS=5000 cargo test ...
    let seeds: u64 = std::env::var("WEIR_POLICY_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let (mut counts, mut policies) = (Counts::default(), 0);
    for seed in 0..seeds {
        let case = gen_case(&mut Rng::new(seed));
        check(seed, &case, &mut compiler, &mut counts);
        policies += case.policies.len();
    }
    println!(
        "{} verdicts agreed over {seeds} clusters ({policies} policies); enforced: {} allowed, {} denied",
        counts.checks, counts.allowed, counts.denied
    );
    assert!(
        counts.denied > counts.checks / 10 && counts.allowed > counts.checks / 20,
        "the cases have stopped exercising the policies"
    );
}

/// One change of the kind the agent sees, taking the new objects from
/// another random cluster (whose keys mostly overlap this one's).
fn change(rng: &mut Rng, case: &mut Case, hosts: &mut Vec<IpAddr>) {
    let other = gen_case(rng);
    let pick_key = |rng: &mut Rng, a: &BTreeMap<String, PodInfo>, b: &BTreeMap<String, PodInfo>| {
        let keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys[rng.below(keys.len())].clone()
    };
    match rng.below(7) {
        // A pod is relabelled (maybe its ports too): identities come and go.
        0 | 1 => {
            let key = pick_key(rng, &case.pods, &case.pods);
            let donor = rng.pick(&other.pods.values().cloned().collect::<Vec<_>>());
            let pod = case.pods.get_mut(&key).unwrap();
            pod.labels = donor.labels;
            if rng.chance(30) {
                pod.named_ports = donor.named_ports;
            }
        }
        // A pod comes, goes or moves.
        2 => {
            let key = pick_key(rng, &case.pods, &other.pods);
            match other.pods.get(&key) {
                Some(pod) if rng.chance(60) => case.pods.insert(key, pod.clone()),
                _ => case.pods.remove(&key),
            };
        }
        // A policy is edited, created or deleted.
        3 | 4 => {
            let keys: Vec<&String> = case.policies.keys().chain(other.policies.keys()).collect();
            let key = keys[rng.below(keys.len())].clone();
            match other.policies.get(&key) {
                Some(policy) if rng.chance(80) => case.policies.insert(key, policy.clone()),
                _ => case.policies.remove(&key),
            };
        }
        // Namespaces are relabelled (or one is gone).
        5 => {
            case.namespaces = other.namespaces;
            if rng.chance(30) {
                case.namespaces.remove(rng.pick(&["x", "y", "z"]));
            }
        }
        // Local endpoints or the node's addresses change.
        _ => match rng.below(3) {
            0 => case.endpoints = other.endpoints,
            1 => {
                if let Some(ep) = case.endpoints.first_mut() {
                    ep.pending = !ep.pending;
                    if rng.chance(50) {
                        ep.pod = None;
                    }
                }
            }
            _ => {
                *hosts = self::hosts();
                if rng.chance(50) {
                    hosts.extend(case.pods.values().find_map(|p| p.addrs().last()));
                }
                hosts.sort();
            }
        },
    }
}

#[test]
fn compiles_reusing_earlier_work_equal_compiles_from_scratch() {
    let seeds: u64 = std::env::var("WEIR_POLICY_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed);
        let mut case = gen_case(&mut rng);
        let mut hosts = self::hosts();
        let mut compiler = PolicyCompiler::new();
        let mut before: Option<BTreeMap<String, PodInfo>> = None;
        let mut last_ipcache = None;
        for step in 0..20 {
            let input = CompileInput {
                pods: &case.pods,
                namespaces: &case.namespaces,
                policies: &case.policies,
                host_addrs: &hosts,
                endpoints: &case.endpoints,
            };
            // As the agent tells it: the pods that changed since the
            // previous compile (every other step, none: not known).
            let changed: Option<BTreeSet<String>> =
                before.as_ref().filter(|_| step % 2 == 1 || seed % 3 != 0).map(|b| {
                    b.keys().chain(case.pods.keys()).filter(|k| b.get(*k) != case.pods.get(*k)).cloned().collect()
                });
            // The same numbering, none of the previous compile's work.
            let mut fresh = PolicyCompiler { cache: Cache::default(), ..compiler.clone() };
            let desired = compiler.compile_after(&input, changed.as_ref());
            assert_eq!(desired, fresh.compile(&input), "seed {seed}, step {step}, changed pods {changed:?}");
            // What the programmer is told changed since the previous
            // ipcache is everything that did.
            if let (Some((since, nets)), Some((version, previous))) = (&desired.ipcache_delta.since, &last_ipcache) {
                assert_eq!(since, version, "seed {seed}, step {step}: a delta since the previous compile");
                let previous: &BTreeMap<IpNetwork, u32> = previous;
                let differing = previous
                    .keys()
                    .chain(desired.ipcache.keys())
                    .filter(|n| previous.get(*n) != desired.ipcache.get(*n))
                    .collect::<BTreeSet<_>>();
                let listed = nets.iter().collect::<BTreeSet<_>>();
                assert!(differing.is_subset(&listed), "seed {seed}, step {step}: {differing:?} not all in {listed:?}");
            }
            last_ipcache = Some((desired.ipcache_delta.version, (*desired.ipcache).clone()));
            before = Some(case.pods.clone());
            change(&mut rng, &mut case, &mut hosts);
        }
    }
}

/// 1,000 pods in 10 namespaces, 20 apps (pods of an app share labels and
/// ports), 100 of them local; 1,000 policies, each selecting an app and
/// allowing another app, a namespace and a port range in, and a CIDR out.
struct Large {
    pods: BTreeMap<String, PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: BTreeMap<String, NetworkPolicyInfo>,
    endpoints: Vec<LocalEndpoint>,
}

fn large_input() -> Large {
    let namespaces = (0..10).map(large_namespace).map(|n| (n.name.clone(), n)).collect();
    let mut pods = BTreeMap::new();
    let mut endpoints = Vec::new();
    for i in 0..1000u32 {
        let (pod, endpoint) = large_pod(i);
        endpoints.extend(endpoint);
        pods.insert(pod.key.to_string(), pod);
    }
    let policies = (0..1000u32).map(large_policy).map(|p| (p.key.clone(), p)).collect();
    Large { pods, namespaces, policies, endpoints }
}

/// `ns{n}`, of team red or blue in turn.
fn large_namespace(n: u32) -> NamespaceInfo {
    let name = format!("ns{n}");
    NamespaceInfo { name, labels: labels(&[("team", if n.is_multiple_of(2) { "red" } else { "blue" })]) }
}

/// Pod `i`, and its endpoint if it is local.
fn large_pod(i: u32) -> (PodInfo, Option<LocalEndpoint>) {
    let ns = format!("ns{}", i % 10);
    let app = format!("app{}", (i / 10) % 20);
    let key = format!("{ns}/pod{i}");
    let ip = Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 1);
    // 10 per hundred, over every namespace and app.
    let local = i % 10 == i / 100;
    let pod = PodInfo {
        key: key.as_str().into(),
        namespace: ns,
        labels: labels(&[("app", &app)]).into(),
        ip: Some(ip),
        ip6: None,
        node: Some(if local { "n1" } else { "n2" }.into()),
        named_ports: vec![("http".into(), Protocol::Tcp, 8080)].into(),
    };
    let endpoint = local.then(|| LocalEndpoint { ifindex: 1000 + i, ip, ip6: None, pod: Some(key), pending: false });
    (pod, endpoint)
}

/// The selector of app `n % 20`.
fn large_app(n: u32) -> LabelSelector {
    sel(&[("app", &format!("app{}", n % 20))])
}

/// Policy `i`: 100 policies per namespace, 5 per app.
fn large_policy(i: u32) -> NetworkPolicyInfo {
    let ns = format!("ns{}", i % 10);
    let key = format!("{ns}/policy{i}");
    let a = i / 10;
    NetworkPolicyInfo {
        key,
        namespace: ns,
        pod_selector: large_app(a),
        ingress_enabled: true,
        egress_enabled: true,
        ingress: vec![PolicyRule {
            peers: vec![
                PolicyPeer::Pods { namespaces: None, pods: Some(large_app(a * 7)) },
                PolicyPeer::Pods { namespaces: Some(sel(&[("team", "red")])), pods: Some(large_app(a + 1)) },
            ],
            ports: vec![
                PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(8000)), end_port: Some(8100) },
                PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Name("http".into())), end_port: None },
            ],
        }],
        egress: vec![PolicyRule {
            peers: vec![PolicyPeer::IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec![format!("10.{}.0.0/16", i % 4).parse().unwrap()],
            }],
            ports: vec![PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(443)), end_port: None }],
        }],
    }
}

#[test]
fn a_thousand_policies_over_a_thousand_pods_stay_small() {
    let Large { pods, namespaces, policies, endpoints } = large_input();
    let input = CompileInput {
        pods: &pods,
        namespaces: &namespaces,
        policies: &policies,
        host_addrs: &hosts(),
        endpoints: &endpoints,
    };
    let mut compiler = PolicyCompiler::new();
    let start = Instant::now();
    let desired = compiler.compile(&input);
    let first = start.elapsed();
    let start = Instant::now();
    let again = compiler.compile(&input);
    let second = start.elapsed();
    assert_eq!(desired, again);
    println!(
        "1,000 policies, 1,000 pods (100 local): compile {first:?}, again {second:?}; {} policy entries, {} ipcache entries, {} identities ({} build)",
        desired.rules.len(),
        desired.ipcache.len(),
        desired.identities.len(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
    );
    // 200 pod identities (10 namespaces x 20 apps) and a few CIDRs. Per
    // endpoint, its 5 selecting policies allow the same 6 peer identities
    // on 5 entries (4 range prefixes and the named port) in; out, the
    // 10.0.0.0/8 block holds every pod identity, so it takes one entry per
    // identity (~205): entries grow with identities, not with policies.
    assert!(desired.identities.len() < 250, "{}", desired.identities.len());
    let per_endpoint = desired.rules.len() / endpoints.len();
    assert!(per_endpoint <= 6 * 5 + desired.identities.len() + 1, "{per_endpoint} entries per endpoint");
    assert!(desired.endpoint_flags.values().all(|f| *f == EndpointInfo::FLAGS_ENFORCED));
}
