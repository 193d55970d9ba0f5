//! `cargo xtask sandbox`: two nodes, an agent on each, two pods per node
//! through the agent-written conflist (weir-cni + portmap), an HTTP server in
//! every pod and node, the ping + HTTP matrix between all of them, and
//! Services (ClusterIP, NodePort from outside, one without endpoints), then
//! a NetworkPolicy (who may reach one pod, and `inspect verdict` on why).
//!
//! `--ip-family` picks the cluster's families (`dual` by default: ULA IPv6
//! pod CIDRs and InternalIPs beside IPv4, inside the sandbox's namespaces
//! only). The matrix runs once per family; the Service demo is IPv4's (the
//! namespace tests cover IPv6 Services), the policy demo ends with the same
//! policy over IPv6.
//!
//! `--source` picks what the agents read: the manifest directory (`dir`),
//! kube-rs watches against a fake API server per node (`weir-dev
//! fake-apiserver`) that serves that directory from 127.0.0.1 inside the
//! node's namespace (`kube`), or one of each (`mixed`, the default: n1 dir,
//! n2 kube, same cluster, so one run shows both sources).

use std::{fs, net::IpAddr, process::ExitCode, thread};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use weir_testbed::{
    Agent, Node, Pod, RunPrefix, Topology, agent::Source, cleanup, netns::NetNs, pod::HTTP_PORT, process::ChildGuard,
    topology::Families,
};

use crate::{
    cargo,
    matrix::{self, Endpoint, Kind, Probe},
    sandbox_family::{self, Family, IpFamily},
    sandbox_services, setup,
};

const PODS_PER_NODE: [&str; 2] = ["a", "b"];

#[derive(Args)]
pub struct SandboxArgs {
    /// Leave the sandbox up to poke at; prints how to tear it down.
    #[arg(long, conflicts_with_all = ["down", "list"])]
    keep: bool,
    /// Tear down a kept sandbox (its prefix, e.g. wa1b2c3).
    #[arg(long, value_name = "PREFIX")]
    down: Option<String>,
    /// List kept and live runs.
    #[arg(long)]
    list: bool,
    /// Use the binaries already built (in $WEIR_BIN_DIR or target/debug).
    #[arg(long)]
    no_build: bool,
    /// What the agents read the cluster from: the manifest directory, the
    /// kube source against a fake API server per node (serving that
    /// directory), or n1 the one and n2 the other.
    #[arg(long, value_enum, default_value_t = SandboxSource::Mixed)]
    source: SandboxSource,
    /// The cluster's address families: IPv4 and IPv6 pod CIDRs on every
    /// node (`dual`), or one family. The Service demo runs over IPv4; the
    /// policy demo over IPv4, then IPv6.
    #[arg(long, value_enum, default_value_t = IpFamily::Dual)]
    ip_family: IpFamily,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SandboxSource {
    Dir,
    Kube,
    Mixed,
}

impl SandboxSource {
    /// The source of node `index` (0-based).
    fn for_node(self, index: usize) -> Source {
        match self {
            SandboxSource::Dir => Source::Dir,
            SandboxSource::Kube => Source::Kube,
            SandboxSource::Mixed if index.is_multiple_of(2) => Source::Dir,
            SandboxSource::Mixed => Source::Kube,
        }
    }
}

pub fn run(args: SandboxArgs) -> Result<ExitCode> {
    if let Some(prefix) = args.down {
        return down(&prefix);
    }
    if args.list {
        list();
        return Ok(ExitCode::SUCCESS);
    }
    prepare(&args)?;

    // Everything below lives in guards (topology, agents, pods, servers):
    // an early return drops them, which tears the sandbox down.
    let topo = Topology::builder("sandbox").nodes(2).families(args.ip_family.families()).detached(args.keep).build()?;
    println!("sandbox {}: nodes {}", topo.prefix(), node_list(&topo));
    let agents = start_agents(&topo, args.source)?;
    let mut pods = create_pods(&topo)?;
    let node_servers: Vec<ChildGuard> = topo.nodes().iter().map(serve_node).collect::<Result<_>>()?;

    let (all_ok, external) = check_paths(&topo, &mut pods, args.ip_family)?;
    println!("{}", if all_ok { "all paths work" } else { "SOME PATHS FAIL (see above)" });

    if args.keep {
        keep(topo, pods, node_servers, external, agents)?;
    } else {
        tear_down(topo, pods, node_servers, external, agents);
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `--down PREFIX`: tears down a kept sandbox.
fn down(prefix: &str) -> Result<ExitCode> {
    let prefix = RunPrefix::parse(prefix)?;
    let report = cleanup::sweep(&prefix);
    println!("sandbox {prefix}: {report}");
    Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `--list`: kept and live runs.
fn list() {
    for (prefix, m) in cleanup::list_runs() {
        println!("{prefix}  {}  pid {}{}", m.label, m.pid, if m.kept { "  (kept)" } else { "" });
    }
}

/// The host's setup, the binaries and the tools a run needs.
fn prepare(args: &SandboxArgs) -> Result<()> {
    setup::run(setup::Mode::Strict)?;
    if !args.no_build {
        cargo::build_bins()?;
    }
    weir_testbed::check_prerequisites(weir_testbed::tools::BASE)?;
    if args.source != SandboxSource::Dir {
        // The kube source's fake API server.
        weir_testbed::bins::weir_dev()?;
    }
    Ok(())
}

/// An agent on every node, each reading from its node's `source`.
fn start_agents(topo: &Topology, source: SandboxSource) -> Result<Vec<Agent>> {
    // Both agents start together; readiness is awaited afterwards.
    let mut agents: Vec<Agent> = topo
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| Agent::spawn_from(n, topo.manifest_dir(), source.for_node(i), None))
        .collect::<Result<_>>()?;
    for (agent, node) in agents.iter_mut().zip(topo.nodes()) {
        agent.wait_ready(Agent::ready_timeout()).with_context(|| format!("agent on {}", node.name))?;
        println!("agent on {} ready, {} (log: {})", node.name, source_note(agent, node), agent.log_path().display());
    }
    Ok(agents)
}

/// PODS_PER_NODE pods on every node through its agent's conflist, each
/// serving HTTP.
fn create_pods(topo: &Topology) -> Result<Vec<Pod>> {
    let mut pods = Vec::new();
    for node in topo.nodes() {
        let conflist = node.agent_conflist()?;
        for name in PODS_PER_NODE {
            let mut pod = Pod::create(node, name, &conflist)?;
            pod.serve_http()?;
            println!("pod {}/{name}: {} (netns {})", node.name, pod_addresses(&pod), pod.netns.name());
            pods.push(pod);
        }
    }
    Ok(pods)
}

/// The ping + HTTP matrix per family, then (with IPv4) the Services demo
/// and the NetworkPolicy demo: whether all passed, and the Services demo's
/// outside namespace (none in an IPv6-only run).
fn check_paths(topo: &Topology, pods: &mut [Pod], ip_family: IpFamily) -> Result<(bool, Option<NetNs>)> {
    let mut summary = Vec::new();
    for family in ip_family.probed() {
        let (endpoints, targets) = endpoints(topo, pods, family);
        let probes = probe_all(topo, pods, &endpoints, &targets);
        println!("\n{} ping + HTTP matrix:\n{}", family.label(), matrix::render(&endpoints, &probes));
        summary.push((family, probes.iter().filter(|p| p.ok()).count(), probes.len()));
    }
    let matrix_ok = summary.iter().all(|(_, ok, n)| ok == n);
    for (family, ok, n) in &summary {
        println!("{} {}: {ok}/{n} pairs answer ping and HTTP", if ok == n { '✔' } else { '✘' }, family.label());
    }
    if let Some(note) = ip_family.scope_note() {
        println!("\n{note}");
    }
    if !ip_family.has_ipv4() {
        return Ok((matrix_ok, None));
    }
    let (services_ok, external) = sandbox_services::demo(topo, pods)?;
    let policy_ok = crate::sandbox_policy::demo(topo, pods)?;
    Ok((matrix_ok && services_ok && policy_ok, Some(external)))
}

/// `--keep`: leaves everything up and says how to poke at it and tear it
/// down.
fn keep(
    topo: Topology,
    pods: Vec<Pod>,
    node_servers: Vec<ChildGuard>,
    external: Option<NetNs>,
    agents: Vec<Agent>,
) -> Result<()> {
    let prefix = topo.prefix().clone();
    print_poke_help(&topo, &pods, &agents);
    for pod in pods {
        pod.keep();
    }
    for s in node_servers {
        s.forget();
    }
    if let Some(mut external) = external {
        external.disown();
    }
    for a in agents {
        a.keep();
    }
    topo.keep()?;
    println!("\ntear down: cargo xtask sandbox --down {prefix}");
    Ok(())
}

/// Tears everything down, outside in.
fn tear_down(
    topo: Topology,
    pods: Vec<Pod>,
    node_servers: Vec<ChildGuard>,
    external: Option<NetNs>,
    agents: Vec<Agent>,
) {
    drop(external);
    drop(pods);
    drop(node_servers);
    drop(agents);
    drop(topo);
    println!("sandbox torn down");
}

fn source_note(agent: &Agent, node: &weir_testbed::Node) -> String {
    match agent.fake_api() {
        None => "reading the manifest directory".into(),
        Some((pid, _)) => format!(
            "kube source, started as a DaemonSet starts it: in-cluster service account, https to a fake API \
             server (pid {pid}) on {}:{}, the address from WEIR_K8S_SERVICE_HOST/PORT (KUBERNETES_SERVICE_HOST \
             names {}, which nothing serves before weir runs)",
            node.ip,
            weir_testbed::agent::FAKE_API_PORT,
            weir_testbed::agent::KUBERNETES_SERVICE_IP,
        ),
    }
}

/// Each node's addresses and pod CIDRs, of the families its Node object
/// names (an IPv6-only node's eth0 keeps an IPv4 address nothing uses).
fn node_list(topo: &Topology) -> String {
    topo.nodes()
        .iter()
        .map(|n| match (n.families, n.ip6, &n.pod_cidr_v6) {
            (Families::Ipv4, _, _) | (_, None, _) | (_, _, None) => {
                format!("{} {} podCIDR {}", n.name, n.ip, n.pod_cidr)
            }
            (Families::DualStack, Some(ip6), Some(cidr6)) => {
                format!("{} {} {ip6} podCIDRs {} {cidr6}", n.name, n.ip, n.pod_cidr)
            }
            (Families::Ipv6, Some(ip6), Some(cidr6)) => format!("{} {ip6} podCIDR {cidr6}", n.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A pod's addresses: IPv4, IPv6 or both.
fn pod_addresses(pod: &Pod) -> String {
    let v4 = (!pod.ip.is_unspecified()).then(|| pod.ip.to_string());
    let v6 = pod.ipv6.map(|ip| ip.to_string());
    [v4, v6].into_iter().flatten().collect::<Vec<_>>().join(" ")
}

/// busybox httpd in the node namespace, so "pod -> node" has HTTP too.
fn serve_node(node: &Node) -> Result<ChildGuard> {
    let root = node.dirs.www.join("_node");
    fs::create_dir_all(&root)?;
    fs::write(root.join("index.html"), node_body(&node.name))?;
    node.netns.start_httpd(&root, HTTP_PORT, &node.dirs.logs.join("httpd-node.log"), node.detached())
}

fn node_body(node: &str) -> String {
    format!("node {node}\n")
}

/// Where each endpoint is probed: its address of the family probed (none
/// when it has none: every probe of it then fails) and the body its server
/// answers.
struct Target {
    ip: Option<IpAddr>,
    family: Family,
    body: String,
}

fn endpoints(topo: &Topology, pods: &[Pod], family: Family) -> (Vec<Endpoint>, Vec<Target>) {
    let mut eps = Vec::new();
    let mut targets = Vec::new();
    for p in pods {
        eps.push(Endpoint { label: format!("{}/{}", p.node, p.name), node: p.node.clone(), kind: Kind::Pod });
        let ip = match family {
            Family::V4 => (!p.ip.is_unspecified()).then_some(IpAddr::V4(p.ip)),
            Family::V6 => p.ipv6.map(IpAddr::V6),
        };
        targets.push(Target { ip, family, body: p.http_body() });
    }
    for n in topo.nodes() {
        eps.push(Endpoint { label: n.name.clone(), node: n.name.clone(), kind: Kind::Node });
        let ip = match family {
            Family::V4 => Some(IpAddr::V4(n.ip)),
            Family::V6 => n.ip6.map(IpAddr::V6),
        };
        targets.push(Target { ip, family, body: node_body(&n.name) });
    }
    (eps, targets)
}

/// Every ordered pair, one thread per source.
fn probe_all(topo: &Topology, pods: &[Pod], endpoints: &[Endpoint], targets: &[Target]) -> Vec<Probe> {
    let sources: Vec<&NetNs> = pods.iter().map(|p| &p.netns).chain(topo.nodes().iter().map(|n| &n.netns)).collect();
    thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(from, ns)| {
                s.spawn(move || {
                    (0..endpoints.len())
                        .filter(|to| *to != from)
                        .map(|to| probe(ns, from, to, &targets[to]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("probe thread panicked")).collect()
    })
}

fn probe(ns: &NetNs, from: usize, to: usize, target: &Target) -> Probe {
    let Some(ip) = target.ip else {
        let missing = format!("no {} address", target.family.label());
        return Probe { from, to, ping: Err(missing.clone()), http: Err(missing) };
    };
    let ping = ns.ping_ip(ip).map_err(|e| format!("{e:#}"));
    let http = ns.curl(&sandbox_family::url(ip, HTTP_PORT)).map_err(|e| format!("{e:#}")).and_then(|body| {
        if body == target.body { Ok(()) } else { Err(format!("answered {body:?}, expected {:?}", target.body)) }
    });
    Probe { from, to, ping, http }
}

fn print_poke_help(topo: &Topology, pods: &[Pod], agents: &[Agent]) {
    println!("\nsandbox {} kept. Poke at it (as root):", topo.prefix());
    let n1 = &topo.nodes()[0];
    println!("  {} ip route                      # node n1's routes", n1.netns.nsenter());
    if let (Some(a), Some(b)) = (pods.first(), pods.last()) {
        if !b.ip.is_unspecified() {
            println!(
                "  {} ping -c1 {}        # {}/{} -> {}/{}",
                a.netns.nsenter(),
                b.ip,
                a.node,
                a.name,
                b.node,
                b.name
            );
            println!("  {} curl -s {}", a.netns.nsenter(), b.url());
        }
        if let Some(b6) = b.ipv6 {
            println!("  {} ping -6 -c1 {b6}   # over IPv6", a.netns.nsenter());
            // Quoted: the brackets are shell glob characters.
            println!("  {} curl -s '{}'", a.netns.nsenter(), sandbox_family::url(b6.into(), HTTP_PORT));
        }
    }
    println!("  {} bpftool net show              # weir_from_pod on each pod veth", n1.netns.nsenter());
    println!("  conflist: {}", n1.conflist_path().display());
    for (agent, node) in agents.iter().zip(topo.nodes()) {
        println!("  agent {} (pid {}): log {}", node.name, agent.pid(), agent.log_path().display());
        if let Some((pid, log)) = agent.fake_api() {
            println!(
                "  fake API of {} (pid {pid}): log {}; kubeconfig {}",
                node.name,
                log.display(),
                node.dirs.root.join(weir_testbed::agent::KUBECONFIG_FILE).display()
            );
            let sa = node.dirs.root.join(weir_testbed::agent::SERVICE_ACCOUNT_DIR);
            println!(
                "  {} curl -s --cacert {}/ca.crt -H \"Authorization: Bearer $(cat {}/token)\" https://{}:{}/api/v1/pods   # what {}'s agent watches",
                node.netns.nsenter(),
                sa.display(),
                sa.display(),
                node.ip,
                weir_testbed::agent::FAKE_API_PORT,
                node.name
            );
        }
    }
    println!("  namespaces: ip netns list | grep {}", topo.prefix());
}
