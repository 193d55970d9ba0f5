//! `cargo xtask bench policy`: what NetworkPolicy costs.
//!
//! Data path: new-connection rate (connect, one request, close) from a
//! client pod to a server pod by pod IP, with 0, 100 and 1,000
//! NetworkPolicies in the cluster. With policies, the server is isolated
//! for ingress and every new connection takes the policy lookups (ipcache,
//! policy LPM, conntrack insert); one of the policies lets the client in,
//! the others select the server too with rules for other peers and ports
//! (so its map holds many entries) or select other pods. A third pod, which
//! no rule allows, proves that enforcement is on before a cell is measured.
//! Every round runs every size in turn (the policy set is rewritten between
//! cells), so machine load hits all columns alike; the result is the ratio
//! to the no-policy rate of the same run. As in `bench services`, the agent
//! is paused (SIGSTOP) while a cell runs, once its maps are written: its
//! manifest-dir source polls files, which a kube-source agent would not;
//! its idle CPU with each policy set is reported instead.
//!
//! Control plane: `weir-dev bench-policy-control-plane` (1,000 policies
//! over 1,000 pods, 100 of them local, into a private copy of the maps):
//! cold compile-and-program time, and p50/p99 from one label or policy
//! change to the last map write.
//!
//! The load generator and the echo server are `bench services-load` and
//! `bench services-echo` (release build), pinned to different CPUs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::Value;
use weir_testbed::{
    Agent, Pod, Topology,
    manifest::{PodObject, documents, namespace_yaml, network_policy_yaml},
    netns::NetNs,
    tools,
};

use super::services::{EchoParams, Load, LoadParams, Paused, cpu_percent, loadavg, release_bins, run_load, spawn_echo};

const SERVER_PORT: u16 = 8080;
const MANIFEST: &str = "bench-policy.yaml";
const NAMESPACE: &str = "bench";
/// Pods that exist only as objects (on other nodes): peers for the
/// policies' selectors, so the server's map holds real entries.
const REMOTE_PODS: usize = 200;
const GOAL_RATIO: f64 = 0.95;
const GOAL_CHANGE_P99_MS: f64 = 50.0;

#[derive(Args)]
pub struct PolicyBenchArgs {
    /// Policy counts, measured side by side (0 is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "0,100,1000")]
    sizes: Vec<usize>,
    #[command(flatten)]
    common: super::CommonBenchArgs,
    /// Unmeasured traffic before each slice.
    #[arg(long, default_value_t = 0.2)]
    warmup: f64,
    /// Pods and policies of the control-plane half.
    #[arg(long, default_value_t = 1000)]
    cp_pods: usize,
    #[arg(long, default_value_t = 1000)]
    cp_policies: usize,
    #[arg(long, default_value_t = 400)]
    changes: usize,
}

pub fn run(args: PolicyBenchArgs) -> Result<()> {
    args.common.check(args.warmup)?;
    ensure!(args.sizes.first() == Some(&0), "--sizes must start with 0 (the baseline)");
    ensure!(args.sizes.iter().all(|&n| n <= 5000), "--sizes must be at most 5000");
    let (release, xtask) = release_bins(args.common.build.no_build)?;
    weir_testbed::check_prerequisites(&[tools::IP, tools::BPFTOOL, tools::SYSCTL])?;
    println!("bench policy: release binaries from {}; load average {}", release.display(), loadavg());

    let topo = Topology::builder("bench-policy").nodes(1).build()?;
    let control = (!args.common.no_control_plane).then(|| control_plane(&topo, &release, &args));
    let data = if args.common.no_data_path { None } else { Some(data_path(&topo, &xtask, &args)?) };
    if let Some(d) = &data {
        print_data_path(&args, d);
    }
    if let Some(c) = &control {
        print_control_plane(&args, c);
    }
    println!("load average at the end: {}", loadavg());
    Ok(())
}

// ---------------------------------------------------------------- data path

struct DataPath {
    cells: BTreeMap<usize, std::result::Result<Load, String>>,
    /// Per size: (policy map entries, identities) as the agent reported.
    maps: BTreeMap<usize, (u64, u64)>,
    /// Per size: the agent's CPU (% of a core) over 1 s once enforced.
    idle_cpu: BTreeMap<usize, Option<f64>>,
}

fn namespaces() -> Vec<String> {
    let mut docs = vec![namespace_yaml(NAMESPACE, &[("team".to_string(), "bench".to_string())].into())];
    for i in 0..10 {
        docs.push(namespace_yaml(&format!("peer-{i}"), &[("team".to_string(), format!("t{}", i % 5))].into()));
    }
    docs
}

fn remote_pods() -> Vec<String> {
    (0..REMOTE_PODS)
        .map(|j| {
            let ip = Ipv4Addr::new(10, 250, (j / 250) as u8, (j % 250 + 1) as u8);
            let obj = PodObject::new(&format!("peer-{}", j % 10), &format!("peer-{j}"))
                .label("app", &format!("app-{}", j % 40))
                .label("tier", ["fe", "be", "db"][j % 3]);
            obj.yaml(
                "remote-node",
                Some(weir_testbed::manifest::PodStatus { pod_ip: ip, host_ip: Ipv4Addr::new(192, 168, 99, 1) }),
            )
        })
        .collect()
}

/// `size` policies: the first lets the client reach the server; of the
/// rest, half select the server with rules for other peers and ports, half
/// select pods elsewhere.
fn policies(size: usize) -> Vec<String> {
    (0..size)
        .map(|i| {
            if i == 0 {
                return network_policy_yaml(
                    NAMESPACE,
                    "allow-client",
                    "podSelector: {matchLabels: {app: server}}\npolicyTypes: [Ingress]\ningress:\n- from:\n  - podSelector: {matchLabels: {app: client}}\n  ports:\n  - {protocol: TCP, port: 8080}\n",
                );
            }
            let spec = if i % 2 == 0 {
                format!(
                    "podSelector: {{matchLabels: {{app: server}}}}\npolicyTypes: [Ingress]\ningress:\n- from:\n  - namespaceSelector: {{matchLabels: {{team: t{}}}}}\n    podSelector: {{matchLabels: {{tier: {}}}}}\n  ports:\n  - {{protocol: TCP, port: {}, endPort: {}}}\n",
                    i % 5,
                    ["fe", "be", "db"][i % 3],
                    9000 + i % 500,
                    9010 + i % 500
                )
            } else {
                format!(
                    "podSelector: {{matchLabels: {{app: app-{}}}}}\npolicyTypes: [Ingress, Egress]\ningress:\n- from:\n  - podSelector: {{matchLabels: {{tier: fe}}}}\negress:\n- to:\n  - ipBlock: {{cidr: 10.0.0.0/8, except: [10.250.0.0/24]}}\n  ports:\n  - {{protocol: UDP, port: 53}}\n",
                    i % 40
                )
            };
            let ns = if i % 2 == 0 { NAMESPACE.to_string() } else { format!("peer-{}", i % 10) };
            network_policy_yaml(&ns, &format!("p-{i}"), &spec)
        })
        .collect()
}

/// The agent's /metrics, from inside the node's namespace.
fn metrics(node: &NetNs) -> Result<BTreeMap<String, f64>> {
    let text = node.run(&[
        "python3",
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9878/metrics',timeout=2).read().decode())",
    ])?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn reaches(client: &NetNs, target: SocketAddrV4) -> Result<bool> {
    let script = format!(
        "import socket\ntry:\n  socket.create_connection(('{}', {}), timeout=0.5).close(); print('yes')\nexcept Exception: print('no')",
        target.ip(),
        target.port()
    );
    Ok(client.run(&["python3", "-c", &script])?.trim() == "yes")
}

/// Writes the policy set for `size` and waits until the agent enforces it.
fn apply(
    topo: &Topology,
    node: &NetNs,
    outsider: &NetNs,
    server: SocketAddrV4,
    size: usize,
) -> Result<(Duration, (u64, u64))> {
    let mut docs = namespaces();
    docs.extend(remote_pods());
    docs.extend(policies(size));
    let start = Instant::now();
    topo.write_manifest(MANIFEST, &[documents(&docs)])?;
    let deadline = start + Duration::from_secs(60);
    loop {
        let m = metrics(node).unwrap_or_default();
        let policies = m.get("weir_network_policies").copied().unwrap_or(-1.0);
        let pending = m.get("weir_policy_pending_pods").copied().unwrap_or(-1.0);
        if policies == size as f64 && pending == 0.0 && reaches(outsider, server)? == (size == 0) {
            let entries = m.get("weir_policy_map_entries").copied().unwrap_or(0.0) as u64;
            let ids = m.get("weir_policy_identities").copied().unwrap_or(0.0) as u64;
            return Ok((start.elapsed(), (entries, ids)));
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not enforce {size} policies within 60 s (metrics: policies {policies}, pending {pending})"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn data_path(topo: &Topology, xtask: &Path, args: &PolicyBenchArgs) -> Result<DataPath> {
    let node = topo.node("n1");
    let mut agent = Agent::spawn(node, topo.manifest_dir())?;
    agent.wait_ready(Agent::ready_timeout())?;
    let list = node.agent_conflist()?.only(&["weir-cni"]);
    let server = Pod::create_k8s(node, "srv", PodObject::new(NAMESPACE, "server").label("app", "server"), &list)?;
    let client = Pod::create_k8s(node, "cli", PodObject::new(NAMESPACE, "client").label("app", "client"), &list)?;
    let outsider = Pod::create_k8s(node, "out", PodObject::new(NAMESPACE, "outsider").label("app", "outsider"), &list)?;
    let xtask_s = xtask.to_str().context("non-UTF-8 path")?;
    let echo = EchoParams { port: SERVER_PORT, cpu: args.common.server_cpu, threads: 1, nice: args.common.nice };
    let _server = spawn_echo(node, &server, xtask_s, "n1/server", &echo)?;
    let target = SocketAddrV4::new(server.ip, SERVER_PORT);
    println!("n1: agent pid {}, server {target}, client {}, outsider {}", agent.pid(), client.ip, outsider.ip);
    // TIME_WAIT on the client side would run out of ports at these rates.
    let _ = node.netns.run(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"]);

    let mut cells: BTreeMap<usize, std::result::Result<Load, String>> = BTreeMap::new();
    let mut maps = BTreeMap::new();
    let mut idle_cpu = BTreeMap::new();
    let slice = args.common.secs / args.common.rounds as f64;
    for round in 0..args.common.rounds {
        for &size in &args.sizes {
            if matches!(cells.get(&size), Some(Err(_))) {
                continue;
            }
            let (took, m) = apply(topo, &node.netns, &outsider.netns, target, size)?;
            maps.insert(size, m);
            if round == 0 {
                idle_cpu.insert(size, cpu_percent(agent.pid(), Duration::from_secs(1)));
            }
            let paused = Paused::new(agent.pid());
            let params = LoadParams {
                secs: slice,
                warmup: if round == 0 { args.warmup * 2.0 } else { args.warmup },
                streams: 1,
                cpu: args.common.client_cpu,
                nice: args.common.nice,
            };
            let cell = run_load(xtask, &client.netns, target, None, &params);
            drop(paused);
            let slot = cells.entry(size).or_insert_with(|| Ok(Load::default()));
            match cell {
                Ok(l) => {
                    if let Ok(acc) = slot {
                        acc.merge(l);
                    }
                }
                Err(e) => *slot = Err(format!("{e:#}")),
            }
            if round == 0 {
                println!("  {size:>5} policies enforced {took:?} after the manifest was written");
            }
        }
        println!("round {}/{} done", round + 1, args.common.rounds);
    }
    drop(agent);
    Ok(DataPath { cells, maps, idle_cpu })
}

fn print_data_path(args: &PolicyBenchArgs, d: &DataPath) {
    let base = d.cells.get(&0).and_then(|c| c.as_ref().ok()).map(Load::rate);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nNew connections to a pod by IP (one client, connect + request + close), {} s per cell in {} rounds:",
        args.common.secs, args.common.rounds
    );
    let _ = writeln!(
        out,
        "| policies | conn/s | ratio to 0 | spread | p50 us | p99 us | map entries | identities | agent idle CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for &size in &args.sizes {
        let (entries, ids) = d.maps.get(&size).copied().unwrap_or_default();
        match d.cells.get(&size) {
            Some(Ok(l)) => {
                let (p50, p99) = l.latency_us();
                let ratio = base.map(|b| l.rate() / b);
                let cpu = d.idle_cpu.get(&size).copied().flatten();
                let _ = writeln!(
                    out,
                    "| {size} | {:.0} | {} | {} | {p50:.0} | {p99:.0} | {entries} | {ids} | {} |",
                    l.rate(),
                    ratio.map_or("-".into(), |r| format!("{r:.2}")),
                    l.spread().map_or("-".into(), |s| format!("±{:.0}%", s * 100.0)),
                    cpu.map_or("-".into(), |c| format!("{c:.1}%")),
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(out, "| {size} | failed: {e} | | | | | | | |");
            }
            None => {}
        }
    }
    if let (Some(b), Some(Ok(l))) = (base, d.cells.get(args.sizes.iter().max().unwrap_or(&0))) {
        let r = l.rate() / b;
        let _ = writeln!(
            out,
            "Goal: at least {GOAL_RATIO} of the no-policy rate at {} policies: {:.2}, {}.",
            args.sizes.iter().max().unwrap_or(&0),
            r,
            if r >= GOAL_RATIO { "met" } else { "NOT met" }
        );
    }
    print!("{out}");
}

// ------------------------------------------------------------ control plane

fn control_plane(topo: &Topology, release: &Path, args: &PolicyBenchArgs) -> std::result::Result<Value, String> {
    let (pods, policies, changes) = (args.cp_pods.to_string(), args.cp_policies.to_string(), args.changes.to_string());
    let cmd = ["bench-policy-control-plane", "--pods", &pods, "--policies", &policies, "--changes", &changes];
    super::weir_dev::report(topo, release, &cmd, &[("WEIR_LOG", "warn")], Duration::from_secs(600))
        .map_err(|e| format!("{e:#}"))
}

fn print_control_plane(args: &PolicyBenchArgs, c: &std::result::Result<Value, String>) {
    println!(
        "\nControl plane ({} policies over {} pods, 100 local, real maps in a private pin dir):",
        args.cp_policies, args.cp_pods
    );
    match c {
        Err(e) => println!("  failed: {e}"),
        Ok(v) => {
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            println!("  identities {}, policy map entries {}", f("identities"), f("rules"));
            println!("  compute and program everything (cold): {:.0} ms", f("cold_ms"));
            let p99_ms = f("change_p99_us") / 1e3;
            println!(
                "  one change (label or policy) to the last map write: p50 {:.1} ms, p99 {:.1} ms (labels {:.1}, policies {:.1}), max {:.1} ms",
                f("change_p50_us") / 1e3,
                p99_ms,
                f("label_change_p99_us") / 1e3,
                f("policy_change_p99_us") / 1e3,
                f("change_max_us") / 1e3
            );
            println!(
                "  goal: p99 under {GOAL_CHANGE_P99_MS} ms: {}. RSS {:.1} MiB.",
                if p99_ms < GOAL_CHANGE_P99_MS { "met" } else { "NOT met" },
                f("rss_mib")
            );
            println!(
                "  (the agent's own path from event to maps; a watch event arrives from the API server first, and the manifest-dir source polls every 200 ms)"
            );
        }
    }
}
