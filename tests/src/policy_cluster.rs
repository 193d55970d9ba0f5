//! The NetworkPolicy cluster harness, in the style of the upstream netpol
//! e2e suite: Kubernetes namespaces x, y, z (labelled `ns=<name>`), pods
//! a, b, c in each (`pod=<name>`) spread over two nodes with agents, every
//! pod serving TCP and UDP on ports 80 and 81 (named container ports
//! `serve-80-tcp` ...). A [`State`] says what the agents' manifest
//! directory holds; [`Cluster::check`] writes it and probes the 9x9 matrix
//! per (port, protocol), pair by pair, until what answers equals what a
//! [`PolicyOracle`] expects, or a deadline passes, then samples `weir-agent
//! inspect verdict` against the same oracle.
//!
//! The oracle is a trait so this crate does not depend on the agent (whose
//! build compiles the eBPF object): the truth tables implement it with the
//! agent's own policy model. `WEIR_NETPOL_DEADLINE_SECS` (10) is how long a
//! step may take to converge.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    marker::PhantomData,
    net::{IpAddr, Ipv4Addr},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result as AnyResult;
use serde_json::Value;

use crate::{
    Agent, NetNs, Node, Pod, Topology, echo,
    exec::Output,
    manifest::{self, PodObject, SvcPort},
    probe::{self, Outcome, Probe, Prober, Proto, SourcePorts},
    process::ChildGuard,
    tools,
    topology::Families,
};
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
pub const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];
/// The ClusterIP of the Service scenario, and its backend.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
pub const SVC_BACKEND: &str = "x/a";
/// Per socket operation of a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Between writing manifests and the first probe: the agents poll the
/// directory every 200 ms.
pub const SETTLE: Duration = Duration::from_millis(400);

/// All pods, `ns/name`, in matrix order.
pub fn pod_keys() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| POD_NAMES.iter().map(move |p| format!("{ns}/{p}"))).collect()
}

pub type Labels = BTreeMap<String, String>;

/// Labels from (key, value) pairs. (The agent has its own; this crate does
/// not depend on the agent.)
pub fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn deadline() -> Duration {
    let secs = std::env::var("WEIR_NETPOL_DEADLINE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    Duration::from_secs_f64(secs)
}

// ---------------------------------------------------------------------------
// Desired cluster state: what the manifest directory holds.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Namespace -> labels (the API server's kubernetes.io/metadata.name is
    /// added when written).
    pub namespaces: BTreeMap<String, Labels>,
    /// `ns/pod` -> labels.
    pub pods: BTreeMap<String, Labels>,
    /// (namespace, name) -> spec as YAML.
    pub policies: BTreeMap<(String, String), String>,
    /// The ClusterIP Service over x/a.
    pub service: bool,
}

impl State {
    pub fn baseline() -> Self {
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| {
                let mut l = labels(&[("ns", ns)]);
                // For Exists / DoesNotExist selectors.
                if *ns == "y" {
                    l.insert("team".into(), "red".into());
                }
                (ns.to_string(), l)
            })
            .collect();
        let pods = pod_keys()
            .into_iter()
            .map(|k| {
                let p = k.split_once('/').unwrap().1.to_string();
                (k, labels(&[("pod", &p)]))
            })
            .collect();
        State { namespaces, pods, policies: BTreeMap::new(), service: false }
    }

    pub fn policy(&mut self, ns: &str, name: &str, spec: Value) {
        let yaml = serde_yaml::to_string(&spec).expect("a JSON value is YAML");
        self.policies.insert((ns.into(), name.into()), yaml);
    }

    pub fn remove_policy(&mut self, ns: &str, name: &str) {
        assert!(self.policies.remove(&(ns.to_string(), name.to_string())).is_some(), "no policy {ns}/{name}");
    }

    pub fn pod_labels(&mut self, key: &str, kv: &[(&str, &str)]) {
        assert!(self.pods.contains_key(key), "no pod {key}");
        self.pods.insert(key.into(), labels(kv));
    }

    pub fn namespace_labels(&mut self, ns: &str, kv: &[(&str, &str)]) {
        assert!(self.namespaces.contains_key(ns), "no namespace {ns}");
        self.namespaces.insert(ns.into(), labels(kv));
    }

    pub fn namespace_file(ns: &str) -> String {
        format!("namespace_{ns}.yaml")
    }

    pub fn namespace_yaml(&self, ns: &str) -> String {
        manifest::namespace_yaml(ns, &self.namespaces[ns])
    }

    pub fn policy_file(ns: &str, name: &str) -> String {
        format!("netpol_{ns}_{name}.yaml")
    }

    /// Every NetworkPolicy as (file, YAML).
    pub fn policy_docs(&self) -> BTreeMap<String, String> {
        self.policies
            .iter()
            .map(|((ns, name), spec)| (Self::policy_file(ns, name), manifest::network_policy_yaml(ns, name, spec)))
            .collect()
    }
}

/// What a pod's manifest says, for a state (labels) and an address.
pub fn pod_object(key: &str, labels: &Labels) -> PodObject {
    let (ns, name) = key.split_once('/').unwrap();
    let mut o = PodObject::new(ns, name);
    o.labels = labels.clone();
    for port in PORTS {
        for proto in PROTOS {
            o = o.port(&format!("serve-{port}-{proto}"), proto.k8s(), port);
        }
    }
    o
}

// ---------------------------------------------------------------------------
// Scenarios: a name, what it shows, and steps; each step changes the state
// of the step before (the first, the baseline).

pub struct Step {
    pub name: String,
    pub state: State,
}

pub struct Scenario {
    pub name: String,
    pub about: String,
    pub steps: Vec<Step>,
}

impl Scenario {
    pub fn new(name: &str, about: &str) -> Self {
        Scenario { name: name.into(), about: about.into(), steps: Vec::new() }
    }

    pub fn step(mut self, name: &str, change: impl FnOnce(&mut State)) -> Self {
        let mut state = self.steps.last().map(|s| s.state.clone()).unwrap_or_else(State::baseline);
        change(&mut state);
        self.steps.push(Step { name: name.into(), state });
        self
    }

    /// A one-step scenario.
    pub fn one(name: &str, about: &str, change: impl FnOnce(&mut State)) -> Self {
        Self::new(name, about).step("policies applied", change)
    }
}

// ---------------------------------------------------------------------------
// The oracle: what the policies in the manifest directory allow.

/// Answers what the NetworkPolicies allow, built from the very manifests
/// the agents read.
pub trait PolicyOracle: Sized {
    /// From manifests (multi-document strings allowed), the nodes'
    /// addresses (of both families), and the family probes go over.
    fn from_docs(docs: &[String], nodes: BTreeMap<String, Vec<IpAddr>>, ipv6: bool) -> Result<Self, String>;

    /// Pod to pod (through a Service: to its backend, `direct` false).
    fn allowed(&self, src: &str, dst: &str, proto: Proto, port: u16, direct: bool) -> bool;

    /// Why, for a report.
    fn reason(&self, src: &str, dst: &str, proto: Proto, port: u16) -> String;
}

// ---------------------------------------------------------------------------
// Matrices.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cell {
    Allowed,
    Blocked,
    /// Answered by another server than the one meant.
    Wrong(String),
    /// The probe could not run.
    Broken(String),
    /// Not probed (a pod to itself through the Service).
    Skipped,
}

impl Cell {
    pub fn symbol(&self) -> char {
        match self {
            Cell::Allowed => '.',
            Cell::Blocked => 'X',
            Cell::Wrong(_) => '!',
            Cell::Broken(_) => '?',
            Cell::Skipped => '-',
        }
    }

    fn expected(allowed: bool) -> Self {
        if allowed { Cell::Allowed } else { Cell::Blocked }
    }
}

/// A column: a pod, or the Service (its backend answers).
#[derive(Clone, Debug)]
struct Target {
    label: String,
    ip: IpAddr,
    /// The pod whose server answers (and whose policy applies).
    backend: String,
    direct: bool,
}

/// (port, protocol) -> rows (clients) x columns (targets).
type Matrix = BTreeMap<(u16, Proto), Vec<Vec<Cell>>>;

/// One probe of a round, for the report.
struct Seen {
    client: String,
    target: String,
    port: u16,
    proto: Proto,
    outcome: Outcome,
}

fn matrix_legend() -> String {
    format!(
        "legend: rows are clients, columns servers (svc: ClusterIP {VIP} over {SVC_BACKEND}); \
         '.' answered, 'X' no answer, '!' answered by the wrong server, '?' probe broken, '-' not probed; \
         in `observed`, cells that differ from `expected` are in brackets"
    )
}

fn render(rows: &[String], targets: &[Target], expected: &Matrix, observed: &Matrix) -> String {
    let mut out = String::new();
    let header: String = targets.iter().map(|t| format!("{:>4}", t.label)).collect();
    let width = 6 + 4 * targets.len();
    for (key, exp) in expected {
        let (port, proto) = key;
        let obs = &observed[key];
        let _ = writeln!(out, "{:<width$}   {port}/{proto} observed", format!("{port}/{proto} expected"));
        let _ = writeln!(out, "{:<6}{header}   {:<6}{header}", "", "");
        for (r, row) in rows.iter().enumerate() {
            let e: String = exp[r].iter().map(|c| format!("  {} ", c.symbol())).collect();
            let o: String = obs[r]
                .iter()
                .zip(&exp[r])
                .map(|(o, e)| if o == e { format!("  {} ", o.symbol()) } else { format!(" [{}]", o.symbol()) })
                .collect();
            let _ = writeln!(out, "{row:<6}{e}   {row:<6}{o}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The cluster: two nodes with agents, nine pods with servers.

pub struct Cluster<O> {
    // Dropped in this order: probers, servers, pods, agents, then the
    // namespaces.
    /// One per pod, in `pod_keys()` order.
    probers: Vec<Prober>,
    _servers: Vec<ChildGuard>,
    /// In `pod_keys()` order.
    pods: Vec<Pod>,
    /// Taken out and put back by tests that restart the agents.
    pub agents: Vec<Agent>,
    pub topo: Topology,
    /// What the manifest directory holds (besides the pods).
    applied: State,
    /// File -> the YAML written there (namespaces, policies, the Service).
    written: BTreeMap<String, String>,
    ports: SourcePorts,
    /// Expected matrix of the last step checked.
    last_expected: Option<Matrix>,
    pub stats: Stats,
    /// Probes go to the pods' IPv6 addresses (a dual-stack cluster).
    ipv6: bool,
    oracle: PhantomData<O>,
}

#[derive(Default)]
pub struct Stats {
    pub rounds: usize,
    pub probes: usize,
    pub round_time: Duration,
    pub slowest_round: Duration,
    /// Pairs checked with `inspect verdict` so far.
    pub inspected: usize,
}

impl<O: PolicyOracle> Cluster<O> {
    /// Two nodes with agents, the baseline Namespaces written, nine pods
    /// with servers and probers; probes over IPv4.
    pub fn new(label: &str) -> Self {
        Self::build(label, false)
    }

    /// `new`, dual-stack, with probes over IPv6 (the Service column is
    /// IPv4's: scenarios with the Service are for `new`).
    pub fn new_ipv6(label: &str) -> Self {
        Self::build(label, true)
    }

    fn build(label: &str, ipv6: bool) -> Self {
        crate::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP, tools::BPFTOOL]);
        let t0 = Instant::now();
        let families = if ipv6 { Families::DualStack } else { Families::Ipv4 };
        let topo = Topology::builder(label).nodes(2).families(families).build().unwrap();
        let agents = topo.start_agents().unwrap();
        eprintln!("netpol: topology and agents up in {:.1?}", t0.elapsed());
        let base = State::baseline();
        let mut written = BTreeMap::new();
        for ns in NAMESPACES {
            let (file, yaml) = (State::namespace_file(ns), base.namespace_yaml(ns));
            topo.write_manifest(&file, std::slice::from_ref(&yaml)).unwrap();
            written.insert(file, yaml);
        }
        let pods = Self::create_pods(&topo, &base);
        let (servers, probers) = Self::start_servers(&topo, &pods);
        Cluster {
            probers,
            _servers: servers,
            pods,
            agents,
            topo,
            applied: base,
            written,
            ports: SourcePorts::new(),
            last_expected: None,
            stats: Stats::default(),
            ipv6,
            oracle: PhantomData,
        }
    }

    /// The nine pods, in `pod_keys()` order, created in parallel and spread
    /// over the nodes: x/a on n1, x/b on n2, ...
    fn create_pods(topo: &Topology, base: &State) -> Vec<Pod> {
        let t1 = Instant::now();
        let keys = pod_keys();
        let lists: Vec<_> = topo.nodes().iter().map(|n| n.agent_conflist().unwrap()).collect();
        let pods: Vec<Pod> = thread::scope(|s| {
            let handles: Vec<_> = keys
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    let node = &topo.nodes()[i % 2];
                    let list = &lists[i % 2];
                    let object = pod_object(key, &base.pods[key]);
                    s.spawn(move || Pod::create_k8s(node, &key.replace('/', "-"), object, list))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        eprintln!("netpol: 9 pods created (ADD, in parallel) in {:.1?}", t1.elapsed());
        pods
    }

    /// A server on every port in each pod, and a prober per pod. From this
    /// thread: a server dies with the thread that started it.
    fn start_servers(topo: &Topology, pods: &[Pod]) -> (Vec<ChildGuard>, Vec<Prober>) {
        let t2 = Instant::now();
        let keys = pod_keys();
        let logs: Vec<_> =
            pods.iter().map(|p| topo.node(&p.node).dirs.logs.join(format!("serve-{}.log", p.name))).collect();
        let servers: Vec<(&NetNs, &str, &std::path::Path)> =
            pods.iter().zip(&keys).zip(&logs).map(|((p, k), l)| (&p.netns, k.as_str(), l.as_path())).collect();
        let servers = echo::serve_ports_many(&servers, &PORTS, false).unwrap();
        let probers = pods.iter().map(|p| Prober::start(&p.netns).unwrap()).collect();
        eprintln!("netpol: servers listening in {:.1?}", t2.elapsed());
        (servers, probers)
    }

    /// Each pod's address of the family probed.
    pub fn ips(&self) -> BTreeMap<String, IpAddr> {
        pod_keys().into_iter().zip(&self.pods).map(|(k, p)| (k, self.addr_of(p))).collect()
    }

    fn addr_of(&self, pod: &Pod) -> IpAddr {
        if self.ipv6 { pod.ipv6.expect("a dual-stack pod").into() } else { pod.ip.into() }
    }

    pub fn pod(&self, key: &str) -> &Pod {
        let i = pod_keys().iter().position(|k| k == key).unwrap_or_else(|| panic!("no pod {key}"));
        &self.pods[i]
    }

    /// Every node's addresses (both families in a dual-stack cluster).
    pub fn node_addrs(&self) -> BTreeMap<String, Vec<IpAddr>> {
        self.topo
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), std::iter::once(n.ip.into()).chain(n.ip6.map(IpAddr::V6)).collect()))
            .collect()
    }

    /// Makes the manifest directory say `state`: only what changed is
    /// rewritten.
    fn apply(&mut self, state: &State) {
        for ns in NAMESPACES {
            if state.namespaces[ns] != self.applied.namespaces[ns] {
                self.write(&State::namespace_file(ns), state.namespace_yaml(ns));
            }
        }
        for (i, key) in pod_keys().iter().enumerate() {
            if state.pods[key] != self.applied.pods[key] {
                let kv: Vec<(&str, &str)> = state.pods[key].iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                self.pods[i].set_labels(kv).unwrap();
            }
        }
        let (old, new) = (self.applied.policy_docs(), state.policy_docs());
        for file in old.keys().filter(|f| !new.contains_key(*f)) {
            self.topo.remove_manifest(file).unwrap();
            self.written.remove(file);
        }
        for (file, yaml) in &new {
            if old.get(file) != Some(yaml) {
                self.write(file, yaml.clone());
            }
        }
        if state.service != self.applied.service {
            self.apply_service(state.service);
        }
        self.applied = state.clone();
    }

    /// Writes (`on`) or removes the ClusterIP Service over SVC_BACKEND with
    /// its EndpointSlice.
    fn apply_service(&mut self, on: bool) {
        let file = "svc_web.yaml";
        if on {
            let backend = self.pod(SVC_BACKEND);
            let mut ports = Vec::new();
            let mut slice_ports = Vec::new();
            for port in PORTS {
                for proto in PROTOS {
                    let name = match (proto, port) {
                        (Proto::Tcp, 80) => "tcp-80",
                        (Proto::Udp, 80) => "udp-80",
                        (Proto::Tcp, _) => "tcp-81",
                        (Proto::Udp, _) => "udp-81",
                    };
                    ports.push(SvcPort { name, protocol: proto.k8s(), port, target_port: port, node_port: None });
                    slice_ports.push((name, proto.k8s(), port));
                }
            }
            let docs = [
                manifest::service_yaml("web", VIP, &ports, false),
                manifest::endpoint_slice_yaml("web", &slice_ports, &[(backend.ip, backend.node.as_str())]),
            ];
            self.topo.write_manifest(file, &docs).unwrap();
            self.written.insert(file.into(), manifest::documents(&docs));
        } else {
            self.topo.remove_manifest(file).unwrap();
            self.written.remove(file);
        }
    }

    fn write(&mut self, file: &str, yaml: String) {
        self.topo.write_manifest(file, std::slice::from_ref(&yaml)).unwrap();
        self.written.insert(file.into(), yaml);
    }

    /// The oracle over exactly what the manifest directory holds.
    fn oracle(&self) -> O {
        let mut docs: Vec<String> = self.written.values().cloned().collect();
        docs.extend(self.pods.iter().map(|p| p.manifest_yaml().expect("every pod has an object")));
        O::from_docs(&docs, self.node_addrs(), self.ipv6).unwrap()
    }

    /// The oracle over what the manifest directory would hold in `state`
    /// (to plan; checks use `oracle`).
    fn oracle_for(&self, state: &State) -> O {
        let mut docs: Vec<String> = NAMESPACES.iter().map(|ns| state.namespace_yaml(ns)).collect();
        for (key, pod) in pod_keys().iter().zip(&self.pods) {
            let ips = std::iter::once(pod.ip.into()).chain(pod.ipv6.map(IpAddr::V6)).collect();
            docs.push(pod_object(key, &state.pods[key]).yaml_ips(&pod.node, Some((self.topo.node(&pod.node).ip, ips))));
        }
        docs.extend(state.policy_docs().into_values());
        O::from_docs(&docs, self.node_addrs(), self.ipv6).unwrap()
    }

    fn targets(&self) -> Vec<Target> {
        self.targets_for(&self.applied)
    }

    fn targets_for(&self, state: &State) -> Vec<Target> {
        let mut t: Vec<Target> = pod_keys()
            .into_iter()
            .map(|k| Target { label: k.clone(), ip: self.addr_of(self.pod(&k)), backend: k, direct: true })
            .collect();
        if state.service {
            assert!(!self.ipv6, "the Service column is IPv4's");
            t.push(Target { label: "svc".into(), ip: VIP.into(), backend: SVC_BACKEND.into(), direct: false });
        }
        t
    }

    /// Whether `client` probes `target` (not itself through the Service).
    fn probed(client: &str, target: &Target) -> bool {
        target.direct || client != target.backend
    }

    fn expected(&self, oracle: &O, targets: &[Target]) -> Matrix {
        let mut m = Matrix::new();
        for port in PORTS {
            for proto in PROTOS {
                let rows = pod_keys()
                    .iter()
                    .map(|c| {
                        targets
                            .iter()
                            .map(|t| {
                                if !Self::probed(c, t) {
                                    Cell::Skipped
                                } else {
                                    Cell::expected(oracle.allowed(c, &t.backend, proto, port, t.direct))
                                }
                            })
                            .collect()
                    })
                    .collect();
                m.insert((port, proto), rows);
            }
        }
        m
    }

    /// One round: every client probes every target on every (port,
    /// protocol), all at once.
    fn observe(&mut self, targets: &[Target]) -> (Matrix, Vec<Seen>) {
        let keys = pod_keys();
        let mut plan: Vec<Vec<(usize, u16, Proto)>> = Vec::new();
        let mut batches: Vec<(&mut Prober, Vec<Probe>)> = Vec::new();
        for (key, prober) in keys.iter().zip(self.probers.iter_mut()) {
            let mut probes = Vec::new();
            let mut meta = Vec::new();
            for port in PORTS {
                for proto in PROTOS {
                    for (t, target) in targets.iter().enumerate() {
                        if Self::probed(key, target) {
                            probes.push(Probe { dst: target.ip, port, proto, src_port: self.ports.next(key) });
                            meta.push((t, port, proto));
                        }
                    }
                }
            }
            batches.push((prober, probes));
            plan.push(meta);
        }
        let t0 = Instant::now();
        let outcomes = probe::run_batches(&mut batches, PROBE_TIMEOUT).unwrap();
        let took = t0.elapsed();
        self.stats.rounds += 1;
        self.stats.probes += batches.iter().map(|(_, p)| p.len()).sum::<usize>();
        self.stats.round_time += took;
        self.stats.slowest_round = self.stats.slowest_round.max(took);

        let mut m = Matrix::new();
        for port in PORTS {
            for proto in PROTOS {
                m.insert((port, proto), vec![vec![Cell::Skipped; targets.len()]; keys.len()]);
            }
        }
        let mut details = Vec::new();
        for (c, (meta, outs)) in plan.iter().zip(outcomes).enumerate() {
            for (&(t, port, proto), out) in meta.iter().zip(outs) {
                let cell = match &out {
                    Outcome::Answered(by) if *by == targets[t].backend => Cell::Allowed,
                    Outcome::Answered(by) => Cell::Wrong(by.clone()),
                    Outcome::Blocked(_) => Cell::Blocked,
                    Outcome::Broken(why) => Cell::Broken(why.clone()),
                };
                m.get_mut(&(port, proto)).unwrap()[c][t] = cell;
                details.push(Seen {
                    client: keys[c].clone(),
                    target: targets[t].label.clone(),
                    port,
                    proto,
                    outcome: out,
                });
            }
        }
        (m, details)
    }

    /// Applies `state`, then probes until the matrix is the oracle's, or
    /// the deadline. Err: the report.
    pub fn check(&mut self, what: &str, state: &State) -> Result<String, String> {
        self.apply(state);
        let oracle = self.oracle();
        let targets = self.targets();
        let expected = self.expected(&oracle, &targets);
        // The harness itself: what was written is what the state says.
        assert!(
            expected == self.expected(&self.oracle_for(state), &targets),
            "{what}: the manifest directory does not say what the state does"
        );
        if self.last_expected.as_ref() == Some(&expected) {
            eprintln!("netpol: note: {what} expects what the step before expected");
        }
        thread::sleep(SETTLE);
        let start = Instant::now();
        let mut rounds = 0;
        loop {
            let (observed, details) = self.observe(&targets);
            rounds += 1;
            if observed == expected {
                self.last_expected = Some(expected);
                let took = start.elapsed() + SETTLE;
                self.inspect_agrees(what, &oracle)?;
                return Ok(format!("converged in {took:.1?} ({rounds} rounds); inspect verdict agrees"));
            }
            if start.elapsed() >= deadline() {
                self.last_expected = Some(expected.clone());
                let head =
                    format!("{what}: observed != expected after {:.1?} ({rounds} rounds)", start.elapsed() + SETTLE);
                return Err(self.mismatch_report(head, &oracle, &targets, &expected, &observed, &details));
            }
            thread::sleep(Duration::from_millis(150));
        }
    }

    /// Why a step failed: both matrices, the probes that differ (a few)
    /// with the oracle's reason, and the manifests besides Pods and
    /// Namespaces.
    fn mismatch_report(
        &self,
        head: String,
        oracle: &O,
        targets: &[Target],
        expected: &Matrix,
        observed: &Matrix,
        details: &[Seen],
    ) -> String {
        let rows = pod_keys();
        let mut report = format!("{head}\n{}\n{}", matrix_legend(), render(&rows, targets, expected, observed));
        let wrong: Vec<String> = details
            .iter()
            .filter_map(|Seen { client: c, target: t, port, proto, outcome }| {
                let ti = targets.iter().position(|x| &x.label == t).unwrap();
                let ci = rows.iter().position(|r| r == c).unwrap();
                let (e, o) = (&expected[&(*port, *proto)][ci][ti], &observed[&(*port, *proto)][ci][ti]);
                (e != o).then(|| {
                    format!(
                        "  {c} -> {t} {port}/{proto}: expected {}, saw {outcome:?}; oracle: {}",
                        if *e == Cell::Allowed { "an answer" } else { "none" },
                        oracle.reason(c, &targets[ti].backend, *proto, *port)
                    )
                })
            })
            .collect();
        let _ = writeln!(report, "{} probes differ, e.g.:", wrong.len());
        for w in wrong.iter().take(8) {
            let _ = writeln!(report, "{w}");
        }
        let _ = writeln!(report, "manifests (besides Pods and Namespaces):");
        for (file, yaml) in &self.written {
            if !file.starts_with("namespace_") {
                let _ = writeln!(report, "# {file}\n{yaml}");
            }
        }
        report
    }

    /// `weir-agent inspect verdict`, asked on the client's node and on the
    /// server's node, answers what the oracle does for a rotating sample of
    /// pod pairs (every pair over the whole suite).
    fn inspect_agrees(&mut self, what: &str, oracle: &O) -> Result<(), String> {
        let keys = pod_keys();
        let mut mismatches = Vec::new();
        for k in 0..4 {
            let n = self.stats.inspected + k;
            let (src, dst) = (&keys[n % keys.len()], &keys[(n / keys.len() + n + 1) % keys.len()]);
            if src == dst {
                continue;
            }
            let (port, proto) = (PORTS[n % 2], PROTOS[(n / 2) % 2]);
            let (allowed, said) = self.inspect_pair(what, src, dst, port, proto)?;
            let want = oracle.allowed(src, dst, proto, port, true);
            if allowed != want {
                mismatches.push(format!(
                    "  {src} -> {dst} {port}/{}: inspect says {}, oracle {} ({}); inspect: {}",
                    proto.as_str(),
                    if allowed { "allowed" } else { "denied" },
                    if want { "allowed" } else { "denied" },
                    oracle.reason(src, dst, proto, port),
                    said.join(" | ")
                ));
            }
        }
        self.stats.inspected += 4;
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: the datapath matched, but `inspect verdict` disagrees with the oracle:\n{}",
                mismatches.join("\n")
            ))
        }
    }

    /// `inspect verdict --json` for one pod pair on the client's node and
    /// on the server's node: allowed by both, and what each checked.
    fn inspect_pair(
        &self,
        what: &str,
        src: &str,
        dst: &str,
        port: u16,
        proto: Proto,
    ) -> Result<(bool, Vec<String>), String> {
        let (from, to) = (self.pod(src), self.pod(dst));
        let mut allowed = true;
        let mut said = Vec::new();
        for node in BTreeSet::from([from.node.clone(), to.node.clone()]) {
            let node = self.topo.node(&node);
            let p = format!("{port}/{}", proto.as_str());
            let out =
                inspect_verdict(node, self.addr_of(from), self.addr_of(to), &p, true).map_err(|e| e.to_string())?;
            if !out.success() {
                return Err(format!("{what}: inspect verdict failed: {}", out.stderr_str().trim()));
            }
            let v: Value =
                serde_json::from_str(out.stdout_str().trim()).map_err(|e| format!("inspect verdict JSON: {e}"))?;
            allowed &= v["allowed"].as_bool().ok_or("inspect verdict: no `allowed`")?;
            said.push(v["checks"].to_string());
        }
        Ok((allowed, said))
    }

    /// Runs a scenario's steps, then puts the baseline back. Failed steps
    /// as (name, report).
    pub fn run(&mut self, scenario: &Scenario) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let t0 = Instant::now();
        eprintln!("netpol: == {}: {}", scenario.name, scenario.about);
        let baseline = State::baseline();
        // Starting from what the last scenario left (the baseline, on
        // paper): if the first step expects what that scenario's last step
        // expected, a datapath stuck in the old state would pass. See the
        // baseline take effect first.
        if let Some(first) = scenario.steps.first() {
            let first_expected = self.expected(&self.oracle_for(&first.state), &self.targets_for(&first.state));
            let base_expected = self.expected(&self.oracle_for(&baseline), &self.targets_for(&first.state));
            if self.last_expected.as_ref() == Some(&first_expected) && first_expected != base_expected {
                let what = format!("{} (baseline first)", scenario.name);
                if let Err(report) = self.check(&what, &baseline) {
                    eprintln!("netpol: FAILED {report}");
                    failed.push((what, report));
                }
            }
        }
        for step in &scenario.steps {
            let what = format!("{} / {}", scenario.name, step.name);
            match self.check(&what, &step.state) {
                Ok(how) => eprintln!("netpol:   ok   {what}: {how}"),
                Err(report) => {
                    eprintln!("netpol: FAILED {report}");
                    failed.push((what, report));
                }
            }
        }
        self.apply(&baseline);
        eprintln!("netpol:   {} took {:.1?}", scenario.name, t0.elapsed());
        failed
    }
}

/// `weir-agent inspect verdict --from <from> --to <to> --port <port>` (with
/// `--json` if asked) in `node`'s namespace, against its pinned maps and
/// run directory, as an operator would run it on that node.
pub fn inspect_verdict(node: &Node, from: IpAddr, to: IpAddr, port: &str, json: bool) -> AnyResult<Output> {
    let agent = crate::bins::weir_agent()?.display().to_string();
    let (pins, run) = (node.pin_dir.display().to_string(), node.dirs.run.display().to_string());
    let (f, t) = (from.to_string(), to.to_string());
    let mut args = vec![
        &agent[..],
        "inspect",
        "verdict",
        "--bpf-pin-dir",
        &pins,
        "--run-dir",
        &run,
        "--from",
        &f,
        "--to",
        &t,
        "--port",
        port,
    ];
    if json {
        args.push("--json");
    }
    node.netns.output(&args)
}
