//! `cargo xtask bench policy`: what NetworkPolicy costs.
//!
//! Data path: new-connection rate (connect, one request, close) from a
//! client pod to a server pod by pod IP, over IPv4 and over IPv6 (the node
//! is dual-stack), with 0, 100 and 1,000 NetworkPolicies in the cluster. With policies, the server is isolated
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
//! Flow events (issue #13), at the largest policy set: the new-connection
//! rate with flow events on (the default) next to off (the agent restarted
//! with WEIR_FLOW_EVENTS_PER_SEC=0), the agent running (not paused: reading
//! the events is part of their cost), in rounds that alternate the order
//! (on, off | off, on) so a drift in machine load hits both alike. Then a
//! flood of denied UDP from the third pod (every datagram a policy drop and
//! a flow event the rate limit holds back): the agent's CPU, its RSS before
//! and after, `weir_flow_events_lost_total`, and whether `weir-agent
//! observe` still answers meanwhile.
//!
//! Control plane: `weir-dev bench-policy-control-plane` (1,000 policies
//! over 1,000 pods, 100 of them local, into a private copy of the maps):
//! cold compile-and-program time, and p50/p99 from one label or policy
//! change to the last map write.
//!
//! The load generator and the echo server are `bench services-load` and
//! `bench services-echo` (release build), pinned to different CPUs.

mod flood;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::Value;
use weir_testbed::{
    Agent, Node, Pod, Topology, bins, exec,
    manifest::{PodObject, documents, namespace_yaml, network_policy_yaml},
    netns::NetNs,
    tools,
    topology::Families,
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
/// Flow events on, as a share of the rate with them off.
const GOAL_FLOW_EVENTS_RATIO: f64 = 0.97;
/// The agent's CPU during the denied flood, in cores.
const GOAL_FLOOD_CORES: f64 = 1.0;
/// The agent's RSS growth over the flood.
const GOAL_FLOOD_RSS_MIB: f64 = 20.0;
/// `weir-agent observe` answers within this during the flood.
const GOAL_OBSERVE_MS: f64 = 2000.0;
const FLOW_ENV: &str = "WEIR_FLOW_EVENTS_PER_SEC";
/// The UDP port the flood aims at on the server (nothing listens; the
/// policy drops it first).
const FLOOD_PORT: u16 = 9;

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
    /// Rounds of the flow events on/off comparison (each restarts the agent
    /// once; 0 skips it). The cells take --secs in all, as the others.
    #[arg(long, default_value_t = 2)]
    flow_rounds: usize,
    /// Seconds of the denied UDP flood (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    flood_secs: f64,
    /// Datagrams per second the flood attempts (all senders together).
    #[arg(long, default_value_t = 1_000_000)]
    flood_pps: u64,
    /// Sender threads of the flood (thread i on CPU i).
    #[arg(long, default_value_t = 2)]
    flood_threads: usize,
}

pub fn run(args: PolicyBenchArgs) -> Result<()> {
    args.common.check(args.warmup)?;
    ensure!(args.sizes.first() == Some(&0), "--sizes must start with 0 (the baseline)");
    ensure!(args.sizes.iter().all(|&n| n <= 5000), "--sizes must be at most 5000");
    ensure!(args.flow_rounds <= 20, "--flow-rounds must be at most 20");
    ensure!(args.flood_secs >= 0.0 && args.flood_threads >= 1, "--flood-secs must be >= 0, --flood-threads >= 1");
    let (release, xtask) = release_bins(args.common.build.no_build)?;
    weir_testbed::check_prerequisites(&[tools::IP, tools::BPFTOOL, tools::SYSCTL])?;
    println!("bench policy: release binaries from {}; load average {}", release.display(), loadavg());

    let topo = Topology::builder("bench-policy").nodes(1).families(Families::DualStack).build()?;
    let control = (!args.common.no_control_plane).then(|| control_plane(&topo, &release, &args));
    let data = if args.common.no_data_path { None } else { Some(data_path(&topo, &xtask, &args)?) };
    if let Some(d) = &data {
        print_data_path(&args, d);
        print_flow_events(&args, d);
    }
    if let Some(c) = &control {
        print_control_plane(&args, c);
    }
    println!("load average at the end: {}", loadavg());
    Ok(())
}

// ---------------------------------------------------------------- data path

/// The family a cell's connections are made over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Over {
    Ipv4,
    Ipv6,
}

impl Over {
    const BOTH: [Over; 2] = [Over::Ipv4, Over::Ipv6];

    fn name(self) -> &'static str {
        match self {
            Over::Ipv4 => "IPv4",
            Over::Ipv6 => "IPv6",
        }
    }
}

struct DataPath {
    /// Per (policies, family).
    cells: BTreeMap<(usize, Over), std::result::Result<Load, String>>,
    /// Per size: (policy map entries, identities) as the agent reported.
    maps: BTreeMap<usize, (u64, u64)>,
    /// Per size: the agent's CPU (% of a core) over 1 s once enforced.
    idle_cpu: BTreeMap<usize, Option<f64>>,
    /// Flow events on next to off (None: not run).
    flows: Option<std::result::Result<FlowCompare, String>>,
    /// The denied flood (None: not run).
    flood: Option<std::result::Result<Flood, String>>,
}

/// New connections with flow events on and off, at `size` policies.
struct FlowCompare {
    size: usize,
    on: std::result::Result<Load, String>,
    off: std::result::Result<Load, String>,
    /// The agent's CPU (% of a core) over each cell, per setting.
    cpu_on: Vec<f64>,
    cpu_off: Vec<f64>,
    /// Each restart: stop, start, ready, policies enforced again.
    restarts: Vec<Duration>,
}

/// The denied flood, as the agent lived through it.
struct Flood {
    size: usize,
    sent: flood::Sent,
    /// The agent's CPU over the flood, in cores.
    cores: Option<f64>,
    rss_before: Option<f64>,
    /// Midway through the flood: whether it still grows.
    rss_mid: Option<f64>,
    rss_after: Option<f64>,
    /// weir_flow_buffer_flows before and after, and the capacity.
    history: [Option<f64>; 3],
    /// weir_flow_events_lost_total before, midway, after.
    lost: [Option<f64>; 3],
    /// weir_flow_drops_total (all reasons) before and after.
    drops: [Option<f64>; 2],
    /// `weir-agent observe --last 1` during the flood: how long each took,
    /// and its output or error.
    observes: Vec<(Duration, std::result::Result<String, String>)>,
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
            let ip6 = Ipv6Addr::new(0xfd00, 10, 250, 0, 0, 0, 0, j as u16 + 1);
            let obj = PodObject::new(&format!("peer-{}", j % 10), &format!("peer-{j}"))
                .label("app", &format!("app-{}", j % 40))
                .label("tier", ["fe", "be", "db"][j % 3]);
            obj.yaml_ips("remote-node", Some((Ipv4Addr::new(192, 168, 99, 1), vec![ip.into(), ip6.into()])))
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

fn reaches(client: &NetNs, target: SocketAddr) -> Result<bool> {
    let script = format!(
        "import socket\ntry:\n  socket.create_connection(('{}', {}), timeout=0.5).close(); print('yes')\nexcept Exception: print('no')",
        target.ip(),
        target.port()
    );
    Ok(client.run(&["python3", "-c", &script])?.trim() == "yes")
}

/// Writes the policy set for `size` and waits until the agent enforces it
/// (over both families, when `server` has both).
fn apply(
    topo: &Topology,
    node: &NetNs,
    outsider: &NetNs,
    server: &[SocketAddr],
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
        let enforced = || -> Result<bool> {
            for s in server {
                if reaches(outsider, *s)? != (size == 0) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        if policies == size as f64 && pending == 0.0 && enforced()? {
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
    // The caller's setting of the flow event rate, before any restart
    // changes it (only while an agent starts).
    let flow_env = std::env::var_os(FLOW_ENV);
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
    let target6 = SocketAddr::new(IpAddr::V6(server.ipv6.context("the server pod has no IPv6")?), SERVER_PORT);
    let targets = [SocketAddr::V4(target), target6];
    println!(
        "n1: agent pid {}, server {target} and {target6}, client {}, outsider {}",
        agent.pid(),
        client.ip,
        outsider.ip
    );
    // TIME_WAIT on the client side would run out of ports at these rates.
    let _ = node.netns.run(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"]);

    let mut cells: BTreeMap<(usize, Over), std::result::Result<Load, String>> = BTreeMap::new();
    let mut maps = BTreeMap::new();
    let mut idle_cpu = BTreeMap::new();
    let slice = args.common.secs / args.common.rounds as f64;
    for round in 0..args.common.rounds {
        for &size in &args.sizes {
            if Over::BOTH.iter().all(|o| matches!(cells.get(&(size, *o)), Some(Err(_)))) {
                continue;
            }
            let (took, m) = apply(topo, &node.netns, &outsider.netns, &targets, size)?;
            maps.insert(size, m);
            if round == 0 {
                idle_cpu.insert(size, cpu_percent(agent.pid(), Duration::from_secs(1)));
            }
            // Both families under the same policy set, the order
            // alternating by round (a drift in load hits both alike).
            let order = if round % 2 == 0 { Over::BOTH } else { [Over::Ipv6, Over::Ipv4] };
            for over in order {
                if matches!(cells.get(&(size, over)), Some(Err(_))) {
                    continue;
                }
                let paused = Paused::new(agent.pid());
                let params = LoadParams {
                    secs: slice,
                    warmup: if round == 0 { args.warmup * 2.0 } else { args.warmup },
                    streams: 1,
                    cpu: args.common.client_cpu,
                    nice: args.common.nice,
                };
                let to = targets[over as usize];
                let cell = run_load(xtask, &client.netns, &[to], None, &params);
                drop(paused);
                let slot = cells.entry((size, over)).or_insert_with(|| Ok(Load::default()));
                match cell {
                    Ok(l) => {
                        if let Ok(acc) = slot {
                            acc.merge(l);
                        }
                    }
                    Err(e) => *slot = Err(format!("{e:#}")),
                }
            }
            if round == 0 {
                println!("  {size:>5} policies enforced {took:?} after the manifest was written");
            }
        }
        println!("round {}/{} done", round + 1, args.common.rounds);
    }

    // Flow events, at the largest policy set (at least one policy: with
    // none, no new flow is checked, and none is reported allowed).
    let size = args.sizes.iter().copied().max().unwrap_or(0).max(1);
    let mut bed = Bed {
        topo,
        node,
        outsider: &outsider.netns,
        target,
        agent: Some(agent),
        flow_env,
        xtask,
        client: &client.netns,
    };
    if args.flow_rounds > 0 || args.flood_secs > 0.0 {
        apply(topo, &node.netns, &outsider.netns, &[target.into()], size)?;
    }
    let flows = (args.flow_rounds > 0).then(|| flow_compare(&mut bed, args, size).map_err(|e| format!("{e:#}")));
    let flood = (args.flood_secs > 0.0).then(|| {
        bed.ensure_flow_events(true, size).and_then(|_| flood(&bed, &server, args, size)).map_err(|e| format!("{e:#}"))
    });
    drop(bed);
    Ok(DataPath { cells, maps, idle_cpu, flows, flood })
}

/// The node, its pods and its agent, which the flow-events part restarts.
struct Bed<'a> {
    topo: &'a Topology,
    node: &'a Node,
    outsider: &'a NetNs,
    client: &'a NetNs,
    target: SocketAddrV4,
    agent: Option<Agent>,
    /// WEIR_FLOW_EVENTS_PER_SEC as the caller set it.
    flow_env: Option<OsString>,
    xtask: &'a Path,
}

impl Bed<'_> {
    fn pid(&self) -> Result<u32> {
        Ok(self.agent.as_ref().context("no agent running")?.pid())
    }

    /// Whether the running agent reads flow events (its own gauge).
    fn flow_events_on(&self) -> Result<bool> {
        let m = metrics(&self.node.netns)?;
        let reading = m.get("weir_flow_events_reading").context("no weir_flow_events_reading on /metrics")?;
        Ok(*reading > 0.0)
    }

    /// Restarts the agent with flow events `on` (the caller's setting,
    /// default: on) or off (WEIR_FLOW_EVENTS_PER_SEC=0) unless it already
    /// runs so; waits until it enforces `size` policies again. How long
    /// that took, if it restarted.
    fn ensure_flow_events(&mut self, on: bool, size: usize) -> Result<Option<Duration>> {
        if self.agent.is_some() && self.flow_events_on()? == on {
            return Ok(None);
        }
        let start = Instant::now();
        if let Some(agent) = self.agent.take() {
            agent.stop();
        }
        // SAFETY: no other thread of this process runs now but the test
        // bed's Ctrl-C handler, which waits for a signal and reads no
        // environment (the load generator and the flood have ended).
        unsafe {
            match (on, &self.flow_env) {
                (false, _) => std::env::set_var(FLOW_ENV, "0"),
                (true, Some(v)) if v != "0" => std::env::set_var(FLOW_ENV, v),
                (true, _) => std::env::remove_var(FLOW_ENV),
            }
        }
        // The agent keeps the environment.
        let spawned = Agent::spawn(self.node, self.topo.manifest_dir());
        // SAFETY: as above.
        unsafe {
            match &self.flow_env {
                Some(v) => std::env::set_var(FLOW_ENV, v),
                None => std::env::remove_var(FLOW_ENV),
            }
        }
        let mut agent = spawned?;
        agent.wait_ready(Agent::ready_timeout())?;
        self.agent = Some(agent);
        apply(self.topo, &self.node.netns, self.outsider, &[self.target.into()], size)?;
        ensure!(
            self.flow_events_on()? == on,
            "the restarted agent has flow events {} (wanted {})",
            if on { "off" } else { "on" },
            if on { "on" } else { "off" }
        );
        Ok(Some(start.elapsed()))
    }
}

/// CPU ticks (user + system) of `pid` so far.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Cores `pid` used between two tick readings `elapsed` apart.
fn cores(t0: Option<u64>, t1: Option<u64>, elapsed: Duration) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(t1?.checked_sub(t0?)? as f64 / hz / elapsed.as_secs_f64())
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// On and off side by side at `size` policies, the agent running.
fn flow_compare(bed: &mut Bed, args: &PolicyBenchArgs, size: usize) -> Result<FlowCompare> {
    println!("flow events on vs off at {size} policies ({} rounds, the agent restarted between):", args.flow_rounds);
    let mut fc = FlowCompare {
        size,
        on: Ok(Load::default()),
        off: Ok(Load::default()),
        cpu_on: vec![],
        cpu_off: vec![],
        restarts: vec![],
    };
    let slice = args.common.secs / args.flow_rounds as f64;
    for round in 0..args.flow_rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for on in order {
            if let Some(took) = bed.ensure_flow_events(on, size)? {
                println!("  agent restarted with flow events {} in {took:.1?}", if on { "on" } else { "off" });
                fc.restarts.push(took);
            }
            let pid = bed.pid()?;
            let params = LoadParams {
                secs: slice,
                warmup: args.warmup,
                streams: 1,
                cpu: args.common.client_cpu,
                nice: args.common.nice,
            };
            let (t0, start) = (cpu_ticks(pid), Instant::now());
            let cell = run_load(bed.xtask, bed.client, &[bed.target.into()], None, &params);
            let cpu = cores(t0, cpu_ticks(pid), start.elapsed());
            let (slot, cpus) = if on { (&mut fc.on, &mut fc.cpu_on) } else { (&mut fc.off, &mut fc.cpu_off) };
            cpus.extend(cpu.map(|c| c * 100.0));
            match cell {
                Ok(l) => {
                    if let Ok(acc) = slot {
                        acc.merge(l);
                    }
                }
                Err(e) => *slot = Err(format!("{e:#}")),
            }
        }
        println!("  flow events round {}/{} done", round + 1, args.flow_rounds);
    }
    Ok(fc)
}

/// `weir-agent observe --last 1` on the node, as an operator runs it: how
/// long it took and what it printed.
fn observe_last(node: &Node) -> (Duration, std::result::Result<String, String>) {
    let start = Instant::now();
    let run = || -> Result<String> {
        let mut cmd = node.netns.command(bins::weir_agent()?)?;
        cmd.arg("observe").arg("--run-dir").arg(&node.dirs.run).args(["--last", "1"]);
        let out = exec::output(&mut cmd, None, Duration::from_secs(10))?;
        ensure!(out.success(), "{}: {}", out.describe_status(), out.stderr_str().trim());
        Ok(out.stdout_str().trim().to_string())
    };
    let out = run().map_err(|e| format!("{e:#}"));
    (start.elapsed(), out)
}

/// The outsider floods the server with UDP the policy denies.
fn flood(bed: &Bed, server: &Pod, args: &PolicyBenchArgs, size: usize) -> Result<Flood> {
    let pid = bed.pid()?;
    let node = &bed.node.netns;
    let sample = |m: &BTreeMap<String, f64>, prefix: &str| -> Option<f64> {
        let mut it = m.iter().filter(|(k, _)| k.starts_with(prefix)).peekable();
        it.peek()?;
        Some(it.map(|(_, v)| v).sum())
    };
    let before = metrics(node)?;
    let target = SocketAddrV4::new(server.ip, FLOOD_PORT);
    println!(
        "denied flood: {} threads from the outsider pod to {target}/udp, {} datagrams/s attempted for {} s",
        args.flood_threads, args.flood_pps, args.flood_secs
    );
    let rss_before = rss_mib(pid);
    let (t0, start) = (cpu_ticks(pid), Instant::now());
    let senders = flood::start(bed.outsider.path(), target, args.flood_pps, args.flood_threads, args.flood_secs)?;
    let mut observes = Vec::new();
    let (mut lost_mid, mut rss_mid) = (None, None);
    // About once a second: does the agent still answer?
    let mut next = start + Duration::from_millis(700);
    while !senders.is_finished() {
        if Instant::now() >= next && start.elapsed().as_secs_f64() < args.flood_secs - 0.3 {
            observes.push(observe_last(bed.node));
            if lost_mid.is_none() && start.elapsed().as_secs_f64() > args.flood_secs / 2.0 {
                lost_mid = metrics(node).ok().and_then(|m| sample(&m, "weir_flow_events_lost_total"));
                rss_mid = rss_mib(pid);
            }
            next = Instant::now() + Duration::from_secs(1);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let sent = senders.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    let cores = cores(t0, cpu_ticks(pid), start.elapsed());
    let rss_after = rss_mib(pid);
    let after = metrics(node)?;
    Ok(Flood {
        size,
        sent,
        cores,
        rss_before,
        rss_mid,
        rss_after,
        history: [
            sample(&before, "weir_flow_buffer_flows"),
            sample(&after, "weir_flow_buffer_flows"),
            sample(&after, "weir_flow_buffer_capacity"),
        ],
        lost: [sample(&before, "weir_flow_events_lost_total"), lost_mid, sample(&after, "weir_flow_events_lost_total")],
        drops: [sample(&before, "weir_flow_drops_total"), sample(&after, "weir_flow_drops_total")],
        observes,
    })
}

fn print_data_path(args: &PolicyBenchArgs, d: &DataPath) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nNew connections to a pod by IP (one client, connect + request + close), {} s per cell in {} rounds, \
         each family against its own no-policy rate:",
        args.common.secs, args.common.rounds
    );
    let _ = writeln!(
        out,
        "| over | policies | conn/s | ratio to 0 | spread | p50 us | p99 us | map entries | identities | agent idle CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let largest = args.sizes.iter().copied().max().unwrap_or(0);
    let mut goals = Vec::new();
    for over in Over::BOTH {
        let base = d.cells.get(&(0, over)).and_then(|c| c.as_ref().ok()).map(Load::rate);
        for &size in &args.sizes {
            let (entries, ids) = d.maps.get(&size).copied().unwrap_or_default();
            let name = over.name();
            match d.cells.get(&(size, over)) {
                Some(Ok(l)) => {
                    let (p50, p99) = l.latency_us();
                    let ratio = base.map(|b| l.rate() / b);
                    let cpu = d.idle_cpu.get(&size).copied().flatten();
                    let _ = writeln!(
                        out,
                        "| {name} | {size} | {:.0} | {} | {} | {p50:.0} | {p99:.0} | {entries} | {ids} | {} |",
                        l.rate(),
                        ratio.map_or("-".into(), |r| format!("{r:.2}")),
                        l.spread().map_or("-".into(), |s| format!("±{:.0}%", s * 100.0)),
                        cpu.map_or("-".into(), |c| format!("{c:.1}%")),
                    );
                }
                Some(Err(e)) => {
                    let _ = writeln!(out, "| {name} | {size} | failed: {e} | | | | | | | |");
                }
                None => {}
            }
        }
        if let (Some(b), Some(Ok(l))) = (base, d.cells.get(&(largest, over))) {
            goals.push(format!("{} {:.2}, {}", over.name(), l.rate() / b, verdict(l.rate() / b >= GOAL_RATIO)));
        }
    }
    if !goals.is_empty() {
        let _ = writeln!(
            out,
            "Goal: at least {GOAL_RATIO} of the no-policy rate at {largest} policies: {}.",
            goals.join("; ")
        );
    }
    print!("{out}");
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn print_flow_events(args: &PolicyBenchArgs, d: &DataPath) {
    let mut out = String::new();
    match &d.flows {
        None => {}
        Some(Err(e)) => {
            let _ = writeln!(out, "\nFlow events on vs off: not measured: {e}");
        }
        Some(Ok(fc)) => {
            let _ = writeln!(
                out,
                "\nFlow events on (default) vs off (WEIR_FLOW_EVENTS_PER_SEC=0), new connections at {} policies, the agent running (not paused), {} s per setting in {} rounds (order alternating):",
                fc.size, args.common.secs, args.flow_rounds
            );
            let _ = writeln!(out, "| flow events | conn/s | spread | p50 us | p99 us | agent CPU during the cells |");
            let _ = writeln!(out, "|---|---|---|---|---|---|");
            for (name, cell, cpu) in [("on", &fc.on, &fc.cpu_on), ("off", &fc.off, &fc.cpu_off)] {
                match cell {
                    Ok(l) if l.rate() > 0.0 => {
                        let (p50, p99) = l.latency_us();
                        let cpu = (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64);
                        let _ = writeln!(
                            out,
                            "| {name} | {:.0} | {} | {p50:.0} | {p99:.0} | {} |",
                            l.rate(),
                            l.spread().map_or("-".into(), |s| format!("±{:.0}%", s * 100.0)),
                            cpu.map_or("-".into(), |c| format!("{c:.1}%")),
                        );
                    }
                    Ok(_) => {
                        let _ = writeln!(out, "| {name} | no samples | | | | |");
                    }
                    Err(e) => {
                        let _ = writeln!(out, "| {name} | failed: {e} | | | | |");
                    }
                }
            }
            if let (Ok(on), Ok(off)) = (&fc.on, &fc.off)
                && off.rate() > 0.0
            {
                let r = on.rate() / off.rate();
                let _ = writeln!(
                    out,
                    "Goal: flow events on >= {GOAL_FLOW_EVENTS_RATIO} x off: {r:.3}, {}.",
                    verdict(r >= GOAL_FLOW_EVENTS_RATIO)
                );
            }
            if !fc.restarts.is_empty() {
                let took: Vec<String> = fc.restarts.iter().map(|t| format!("{:.1}", t.as_secs_f64())).collect();
                let _ = writeln!(out, "(agent restarts, to ready and enforcing: {} s)", took.join(", "));
            }
        }
    }
    match &d.flood {
        None => {}
        Some(Err(e)) => {
            let _ = writeln!(out, "\nDenied flood: not measured: {e}");
        }
        Some(Ok(f)) => {
            let _ = writeln!(
                out,
                "\nDenied flood at {} policies: UDP from the outsider pod (no rule allows it) for {:.1} s, {} sender threads: attempted {} datagrams/s, achieved {:.0}/s ({} datagrams, {} failed sendmmsg calls); flow events on",
                f.size,
                f.sent.elapsed.as_secs_f64(),
                args.flood_threads,
                args.flood_pps,
                f.sent.rate(),
                f.sent.packets,
                f.sent.errors
            );
            match f.cores {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "  agent CPU during the flood: {c:.2} cores. Goal: agent < {GOAL_FLOOD_CORES} core: {}.",
                        verdict(c < GOAL_FLOOD_CORES)
                    );
                }
                None => {
                    let _ = writeln!(out, "  agent CPU during the flood: unknown (/proc unreadable)");
                }
            }
            match (f.rss_before, f.rss_after) {
                (Some(b), Some(a)) => {
                    let _ = writeln!(
                        out,
                        "  agent RSS: {b:.1} MiB before, {} MiB midway, {a:.1} MiB after ({:+.1} MiB). Goal: RSS bounded (after - before < {GOAL_FLOOD_RSS_MIB} MiB): {}.",
                        f.rss_mid.map_or("?".into(), |m| format!("{m:.1}")),
                        a - b,
                        verdict(a - b < GOAL_FLOOD_RSS_MIB)
                    );
                }
                _ => {
                    let _ = writeln!(out, "  agent RSS: unknown (/proc unreadable)");
                }
            }
            let show = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}"));
            let _ = writeln!(
                out,
                "  the agent's flow history (weir_flow_buffer_flows): {} flows before, {} after, of {} at most",
                show(f.history[0]),
                show(f.history[1]),
                show(f.history[2])
            );
            let rose = matches!(f.lost, [Some(b), _, Some(a)] if a > b);
            let _ = writeln!(
                out,
                "  weir_flow_events_lost_total: {} before, {} midway, {} after ({}); weir_flow_drops_total: {} -> {}",
                show(f.lost[0]),
                show(f.lost[1]),
                show(f.lost[2]),
                if rose { "rising: the rate limit holds events back" } else { "NOT rising" },
                show(f.drops[0]),
                show(f.drops[1]),
            );
            let answered: Vec<Duration> =
                f.observes.iter().filter(|(_, r)| r.as_ref().is_ok_and(|s| !s.is_empty())).map(|(t, _)| *t).collect();
            let max_ms = answered.iter().map(|t| t.as_secs_f64() * 1e3).fold(0.0, f64::max);
            let responsive = !f.observes.is_empty() && answered.len() == f.observes.len() && max_ms < GOAL_OBSERVE_MS;
            let _ = writeln!(
                out,
                "  weir-agent observe --last 1 during the flood: {}/{} answered, slowest {max_ms:.0} ms ({}).",
                answered.len(),
                f.observes.len(),
                if responsive { "responsive" } else { "NOT responsive" }
            );
            if let Some((_, r)) = f.observes.last() {
                let _ = match r {
                    Ok(line) => writeln!(out, "    last answer: {line}"),
                    Err(e) => writeln!(out, "    last attempt failed: {e}"),
                };
            }
        }
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
