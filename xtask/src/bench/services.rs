//! New-connection rate and latency through a ClusterIP with weir (per-packet
//! tc path and connect-time socket load balancing) next to the same backend
//! by pod IP and the same Services as kube-proxy-style iptables chains, for
//! 1, 1,000 and 10,000 Services of 4 endpoints each; then the control plane
//! (`weir-dev bench-control-plane`) against its goals; last, /metrics under
//! load (`metrics.rs`). IPVS is detected and reported as not measurable
//! when the kernel lacks it (never faked).
//!
//! Layout, all inside the run's namespaces:
//! - n1 (weir): the agent (release build) with connect-time load balancing
//!   attached to a cgroup v2 directory of this run that holds nothing but the
//!   socket-LB load generator; every other process uses the per-packet path.
//!   Pods through weir-cni with the datapath.
//! - n2 (iptables): no agent; pods through weir-cni without `bpfPinDir` (same
//!   veths, /32 routes and gateway, no eBPF), and the Services as
//!   KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* in its nat table (PREROUTING
//!   and OUTPUT jump to it), loaded with iptables-restore, the measured
//!   Service's rule last.
//! - The measured Service has a VIP of its own per size; the other Services
//!   have distinct VIPs and endpoint addresses that are never contacted.
//!   Four backend pods per node run the echo server; every (size, column)
//!   gets a fresh client pod.
//! - conntrack: an `-m conntrack` rule in each node namespace's FORWARD chain
//!   registers netfilter conntrack there, so every column pays for it as a
//!   real node does (weir's agent adds a MASQUERADE rule on n1 as well).
//!
//! The load generator and the echo servers are this binary (release build),
//! re-executed through hidden `bench services-load` / `bench services-echo`
//! subcommands: the generator enters the client pod's namespace (and, for
//! socket LB, the cgroup) and pins itself to one CPU, the servers run in the
//! backend pods pinned to another, both reniced. One connection: socket,
//! connect, 5-byte request, reply, the server closes, the client closes.
//! Each cell gets `--secs` of traffic in `--rounds` slices interleaved with
//! the other columns, so changing machine load hits all columns alike.
//! Latency is from socket() to the reply's first byte.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};
use weir_testbed::{
    Agent, Node, Pod, Topology, bins, cleanup,
    cni::Conflist,
    exec,
    manifest::{SvcPort, endpoint_slice_yaml, service_yaml},
    netns::NetNs,
    process::ChildGuard,
    tools,
};

use super::stats::Summary;
use crate::{cargo, setup};

const ENDPOINTS: usize = 4;
const SVC_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const REQUEST: &[u8] = b"ping\n";
const MANIFEST: &str = "bench-services.yaml";
/// The other Services' endpoints fill 10.245.0.0/16 at most.
const MAX_SERVICES: usize = 16_000;
/// Goals from issue 3.
const GOAL_DIRECT_RATIO: f64 = 0.95;
const GOAL_COLD_MS: f64 = 1000.0;
const GOAL_CHANGE_P99_US: f64 = 10_000.0;
const GOAL_RSS_MIB: f64 = 150.0;

#[derive(Args)]
pub struct ServicesBenchArgs {
    /// Service counts, measured one after the other (4 endpoints each).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    sizes: Vec<usize>,
    #[command(flatten)]
    common: super::CommonBenchArgs,
    /// Seconds of unmeasured traffic before a column's first slice at each
    /// size (later slices get a tenth of it).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Connections in flight at once (load-generator threads).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Services programmed by the control-plane half.
    #[arg(long, default_value_t = 10_000)]
    cp_services: u32,
    /// EndpointSlice changes timed by the control-plane half.
    #[arg(long, default_value_t = 1000)]
    changes: u32,
    /// Keep weir-agent running during the cells (by default it is paused
    /// with SIGSTOP once the Services answer, like kube-proxy idling: its
    /// manifest-dir source burns CPU on every poll at 10,000 Services).
    #[arg(long)]
    agent_running: bool,
    #[command(flatten)]
    metrics: super::metrics::MetricsArgs,
}

/// `bench services-load` (hidden): the load generator of one cell.
#[derive(Args)]
pub struct LoadArgs {
    #[arg(long)]
    target: SocketAddrV4,
    #[arg(long)]
    secs: f64,
    #[arg(long)]
    warmup: f64,
    #[arg(long)]
    streams: usize,
    #[arg(long)]
    cpu: usize,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    nice: i32,
    /// A cgroup v2 directory to join before opening any socket.
    #[arg(long)]
    cgroup: Option<PathBuf>,
}

/// `bench services-echo` (hidden): one backend's server.
#[derive(Args)]
pub struct EchoArgs {
    #[arg(long)]
    label: String,
    #[arg(long)]
    port: u16,
    #[arg(long)]
    cpu: usize,
    #[arg(long)]
    threads: usize,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    nice: i32,
}

/// The paths measured at every size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    /// Pod IP on the weir node: the limit.
    Direct,
    WeirTc,
    WeirSock,
    /// Pod IP on the iptables node (its KUBE-SERVICES is walked too).
    DirectIpt,
    Iptables,
}

impl Column {
    const ALL: [Column; 5] = [Column::Direct, Column::WeirTc, Column::WeirSock, Column::DirectIpt, Column::Iptables];

    fn label(self) -> &'static str {
        match self {
            Column::Direct => "direct",
            Column::WeirTc => "weir tc",
            Column::WeirSock => "weir sock",
            Column::DirectIpt => "direct@ipt",
            Column::Iptables => "iptables",
        }
    }
}

/// What the load generator reported for one cell.
/// One cell, summed over its rounds.
#[derive(Clone, Debug, Default)]
pub(super) struct Load {
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// Per connection: socket() to the reply's first byte.
    samples: Vec<Duration>,
    backends: BTreeMap<String, u64>,
    /// Connections per second of each slice (the spread shows the noise).
    slice_rates: Vec<f64>,
    /// Entries from this cell's client pod in the node namespace's
    /// conntrack table after its last slice.
    conntrack: Option<usize>,
}

impl Load {
    pub(super) fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(super) fn merge(&mut self, other: Load) {
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.elapsed += other.elapsed;
        self.samples.extend(other.samples);
        for (k, n) in other.backends {
            *self.backends.entry(k).or_default() += n;
        }
        self.slice_rates.extend(other.slice_rates);
        self.conntrack = other.conntrack.or(self.conntrack);
    }

    /// Half the min-max range of the slice rates, relative to their mean.
    pub(super) fn spread(&self) -> Option<f64> {
        let (min, max) = self.slice_rates.iter().fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
        let mean = self.slice_rates.iter().sum::<f64>() / self.slice_rates.len() as f64;
        (self.slice_rates.len() > 1 && mean > 0.0).then(|| (max - min) / 2.0 / mean)
    }

    /// (p50, p99) in microseconds.
    pub(super) fn latency_us(&self) -> (f64, f64) {
        let s = Summary::new(self.samples.clone());
        let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
        (us(s.median()), us(s.p99()))
    }
}

type Cell = std::result::Result<Load, String>;

pub fn run(args: ServicesBenchArgs) -> Result<()> {
    args.common.check(args.warmup)?;
    ensure!((1..=64).contains(&args.streams), "--streams must be 1..=64");
    ensure!((1..=20).contains(&args.sizes.len()), "--sizes takes 1 to 20 counts");
    ensure!(args.sizes.iter().all(|&n| (1..=MAX_SERVICES).contains(&n)), "--sizes must be 1..={MAX_SERVICES}");
    let cpus = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    ensure!(
        args.common.client_cpu != args.common.server_cpu && args.common.client_cpu.max(args.common.server_cpu) < cpus,
        "--client-cpu and --server-cpu must be two different CPUs below {cpus}"
    );
    let (release, xtask) = release_bins(args.common.build.no_build)?;
    weir_testbed::check_prerequisites(&[tools::IP, tools::IPTABLES, tools::CONNTRACK, tools::BPFTOOL, tools::SYSCTL])?;

    println!("bench services: release binaries from {}; load average {}", release.display(), loadavg());
    let topo = Topology::builder("bench-services").nodes(2).build()?;

    let control = if args.common.no_control_plane { None } else { Some(control_plane(&topo, &release, &args)) };
    let data = if args.common.no_data_path { None } else { Some(data_path(&topo, &xtask, &args)?) };

    if let Some(d) = &data {
        print_data_path(&args, d);
    }
    if let Some(c) = &control {
        print_control_plane(&args, c);
    }
    // Last, on a topology of its own.
    drop(topo);
    if !args.metrics.no_metrics {
        match super::metrics::measure(&args.metrics) {
            Ok(report) => super::metrics::print(&args.metrics, &report),
            Err(e) => println!("\n/metrics under load: not measured: {e:#}"),
        }
    }
    println!("load average at the end: {}", loadavg());
    Ok(())
}

/// Installs what is missing, builds the release binaries (unless
/// `no_build`) and points the test bed at them: (release dir, xtask).
/// Call it before any other thread exists (it sets WEIR_BIN_DIR).
pub(super) fn release_bins(no_build: bool) -> Result<(PathBuf, PathBuf)> {
    setup::run(setup::Mode::Strict)?;
    if !no_build {
        cargo::must(cargo::cargo().args([
            "build",
            "--release",
            "-p",
            "weir-agent",
            "-p",
            "weir-cni",
            "-p",
            "weir-devtools",
            "-p",
            "xtask",
        ]))?;
    }
    let release = bins::target_dir().join("release");
    // SAFETY: no other thread exists yet (the test bed starts its signal
    // thread when the topology is built).
    unsafe { std::env::set_var("WEIR_BIN_DIR", &release) };
    let xtask = release.join("xtask");
    ensure!(xtask.is_file(), "{} missing: run without --no-build", xtask.display());
    Ok((release, xtask))
}

// ---------------------------------------------------------------- data path

struct DataPath {
    cells: BTreeMap<(usize, Column), Cell>,
    ipvs: String,
    socket_lb: std::result::Result<(), String>,
    /// Per size: manifest-dir programming time (weir), iptables-restore time.
    programming: BTreeMap<usize, (Option<Duration>, Option<Duration>)>,
    /// Per size: the agent's CPU use while nothing changes, in % of a core.
    agent_idle_cpu: BTreeMap<usize, Option<f64>>,
    agent_rss_mib: Option<f64>,
    iptables_version: String,
    /// Per node: (entries, entries never answered in their own direction).
    conntrack_end: Vec<(String, Option<(usize, usize)>)>,
}

/// One node's four backend pods with their echo servers.
struct Side<'a> {
    node: &'a Node,
    list: Conflist,
    backends: Vec<Pod>,
    _servers: Vec<ChildGuard>,
}

/// A fresh client pod per column and size: a client never reuses a source
/// port towards a backend it reached before through another path or VIP.
/// (weir's conntrack keeps reply entries after a flow ends, and TCP
/// timestamps offsets differ per destination address: both make a reused
/// 4-tuple misbehave, which would measure the bench, not the path.)
struct Clients(Vec<Pod>);

impl Clients {
    fn new(side: &Side, size_index: usize, names: &[&str]) -> Result<Self> {
        names
            .iter()
            .map(|n| Pod::create(side.node, &format!("{n}{size_index}"), &side.list))
            .collect::<Result<Vec<_>>>()
            .map(Self)
    }

    fn get(&self, name: &str) -> &Pod {
        self.0.iter().find(|p| p.name.starts_with(name)).expect("client pod made by Clients::new")
    }
}

/// A cgroup v2 directory of this run (`<mount>/<prefix>-socklb`), removed on
/// drop; the test bed's sweep removes it on the other exit paths.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn data_path(topo: &Topology, xtask: &Path, args: &ServicesBenchArgs) -> Result<DataPath> {
    let (weir_node, ipt_node) = (topo.node("n1"), topo.node("n2"));
    let cg_root = cleanup::cgroup2_mount().context("no cgroup v2 mount: socket LB needs one")?;
    let cgroup = Cgroup(cg_root.join(topo.prefix().child("socklb")));
    fs::create_dir(&cgroup.0).with_context(|| format!("create cgroup {}", cgroup.0.display()))?;

    let mut agent = Agent::spawn_with(weir_node, topo.manifest_dir(), Some(&cgroup.0))?;
    agent.wait_ready(Agent::ready_timeout())?;
    let socket_lb = check_socket_lb(&cgroup.0);

    // conntrack in both node namespaces (see the module doc). TIME_WAIT
    // entries last 10 s instead of 120 s: a run opens up to ~250,000
    // connections per node and the table (262,144, a global limit not settable here)
    // must never fill, which would drop SYNs in whichever column came last.
    for node in [weir_node, ipt_node] {
        node.netns.run(&[
            "iptables",
            "-t",
            "filter",
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-m",
            "comment",
            "--comment",
            "bench: conntrack on",
            "-j",
            "ACCEPT",
        ])?;
        node.netns.run(&["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=10"])?;
    }
    let ipvs = detect_ipvs(&ipt_node.netns);
    let iptables_version = ipt_node.netns.run(&["iptables", "-V"]).unwrap_or_default().trim().to_string();

    let weir_list = weir_node.agent_conflist()?.only(&["weir-cni"]);
    let mut plain_list = ipt_node.contract_conflist().only(&["weir-cni"]);
    plain_list.plugin_mut("weir-cni").expect("weir-cni in the contract list").raw.remove("bpfPinDir");
    let weir = side(weir_node, weir_list, xtask, args)?;
    let ipt = side(ipt_node, plain_list, xtask, args)?;
    println!(
        "n1 (weir, agent pid {}): backends {}; n2 (iptables): backends {}",
        agent.pid(),
        ips(&weir.backends),
        ips(&ipt.backends)
    );

    let mut cells = BTreeMap::new();
    let mut programming = BTreeMap::new();
    let mut agent_idle_cpu = BTreeMap::new();
    for (index, &size) in args.sizes.iter().enumerate() {
        let vip = Ipv4Addr::new(10, 96, 1, 10 + index as u8);
        println!("\n== {size} Services (measured: {vip}:{SVC_PORT}, its iptables rule last)");
        let weir_clients = Clients::new(&weir, index, &["cd", "ct", "cs"])?;
        let ipt_clients = Clients::new(&ipt, index, &["cd", "ci"])?;

        let start = Instant::now();
        topo.write_manifest(MANIFEST, &weir_manifest(size, vip, &weir.backends))?;
        let weir_ready =
            probe(&weir_clients.get("ct").netns, SocketAddrV4::new(vip, SVC_PORT), Duration::from_secs(120))
                .map(|()| start.elapsed());
        match &weir_ready {
            Ok(t) => println!("weir: manifest with {size} Services answered after {:.2} s", t.as_secs_f64()),
            Err(e) => println!("weir: ClusterIP never answered: {e:#}\n{}", agent.log_tail(20)),
        }
        let ipt_ready = load_iptables(topo, ipt_node, size, vip, &ipt.backends).and_then(|t| {
            probe(&ipt_clients.get("ci").netns, SocketAddrV4::new(vip, SVC_PORT), Duration::from_secs(30))?;
            Ok(t)
        });
        match &ipt_ready {
            Ok(t) => println!("iptables: {} rules restored in {:.2} s", iptables_rules(size), t.as_secs_f64()),
            Err(e) => println!("iptables: not working: {e:#}"),
        }
        programming.insert(size, (weir_ready.as_ref().ok().copied(), ipt_ready.as_ref().ok().copied()));
        agent_idle_cpu.insert(size, cpu_percent(agent.pid(), Duration::from_secs(1)));
        // The datapath runs on pinned maps and links without the agent; the
        // agent's own CPU use (its manifest-dir source re-snapshots every
        // object at each poll) would otherwise land on the measured cores.
        let _paused = (!args.agent_running).then(|| Paused::new(agent.pid()));

        let mut sums: BTreeMap<Column, Cell> = BTreeMap::new();
        for round in 0..args.common.rounds {
            for col in Column::ALL {
                let (client, node, target, cg) = match col {
                    Column::Direct => {
                        (weir_clients.get("cd"), weir_node, SocketAddrV4::new(weir.backends[0].ip, TARGET_PORT), None)
                    }
                    Column::WeirTc => (weir_clients.get("ct"), weir_node, SocketAddrV4::new(vip, SVC_PORT), None),
                    Column::WeirSock => {
                        (weir_clients.get("cs"), weir_node, SocketAddrV4::new(vip, SVC_PORT), Some(&cgroup.0))
                    }
                    Column::DirectIpt => {
                        (ipt_clients.get("cd"), ipt_node, SocketAddrV4::new(ipt.backends[0].ip, TARGET_PORT), None)
                    }
                    Column::Iptables => (ipt_clients.get("ci"), ipt_node, SocketAddrV4::new(vip, SVC_PORT), None),
                };
                if matches!(sums.get(&col), Some(Err(_))) {
                    continue;
                }
                let result = match (col, &weir_ready, &ipt_ready, &socket_lb) {
                    (Column::WeirTc | Column::WeirSock, Err(e), _, _) => Err(format!("not programmed: {e:#}")),
                    (Column::Iptables, _, Err(e), _) => Err(format!("not programmed: {e:#}")),
                    (Column::WeirSock, _, _, Err(e)) => Err(e.clone()),
                    _ => measure(xtask, &client.netns, target, cg.map(PathBuf::as_path), round == 0, args)
                        .map(|mut l| {
                            if round + 1 == args.common.rounds {
                                l.conntrack = conntrack_from(node, client.ip);
                            }
                            l
                        })
                        .map_err(|e| format!("round {}: {e:#}", round + 1)),
                };
                match (sums.get_mut(&col), result) {
                    (_, Err(e)) => {
                        sums.insert(col, Err(e));
                    }
                    (Some(Ok(sum)), Ok(l)) => sum.merge(l),
                    (_, Ok(l)) => {
                        sums.insert(col, Ok(l));
                    }
                }
            }
        }
        for (col, cell) in sums {
            match &cell {
                Ok(l) => {
                    let (p50, p99) = l.latency_us();
                    println!(
                        "  {:<11} {:>9.0} conn/s  p50 {:>7.1} us  p99 {:>7.1} us  errors {}{}",
                        col.label(),
                        l.rate(),
                        p50,
                        p99,
                        l.errors,
                        l.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
                    )
                }
                Err(e) => println!("  {:<11} FAILED: {e}", col.label()),
            }
            cells.insert((size, col), cell);
        }
    }
    let agent_rss_mib = rss_mib(agent.pid());
    let conntrack_end = [weir_node, ipt_node].iter().map(|n| (n.name.clone(), conntrack_states(n))).collect();
    drop(ipt);
    drop(weir);
    agent.stop();
    drop(cgroup);
    Ok(DataPath { cells, ipvs, socket_lb, programming, agent_idle_cpu, agent_rss_mib, iptables_version, conntrack_end })
}

fn ips(pods: &[Pod]) -> String {
    pods.iter().map(|p| p.ip.to_string()).collect::<Vec<_>>().join(",")
}

/// Four backend pods running the echo server.
fn side<'a>(node: &'a Node, list: Conflist, xtask: &Path, args: &ServicesBenchArgs) -> Result<Side<'a>> {
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    let xtask = xtask.to_str().context("non-UTF-8 path")?;
    for i in 0..ENDPOINTS {
        let pod = Pod::create(node, &format!("b{i}"), &list)?;
        let label = format!("{}/b{i}", node.name);
        let params = EchoParams {
            port: TARGET_PORT,
            cpu: args.common.server_cpu,
            threads: args.streams,
            nice: args.common.nice,
        };
        servers.push(spawn_echo(node, &pod, xtask, &label, &params)?);
        backends.push(pod);
    }
    Ok(Side { node, list, backends, _servers: servers })
}

/// How a backend's echo server runs.
pub(super) struct EchoParams {
    pub port: u16,
    pub cpu: usize,
    pub threads: usize,
    pub nice: i32,
}

/// Starts `bench services-echo` in `pod` and waits until it listens.
pub(super) fn spawn_echo(node: &Node, pod: &Pod, xtask: &str, label: &str, p: &EchoParams) -> Result<ChildGuard> {
    let log = node.dirs.logs.join(format!("echo-{}.log", label.replace('/', "-")));
    let (port, cpu, threads, nice) = (p.port.to_string(), p.cpu.to_string(), p.threads.to_string(), p.nice.to_string());
    let mut guard = pod.netns.spawn(
        &[
            xtask,
            "bench",
            "services-echo",
            "--label",
            label,
            "--port",
            &port,
            "--cpu",
            &cpu,
            "--threads",
            &threads,
            "--nice",
            &nice,
        ],
        &[],
        &log,
        false,
    )?;
    wait_for_line(&log, "listening", &mut guard)?;
    Ok(guard)
}

fn wait_for_line(log: &Path, needle: &str, guard: &mut ChildGuard) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if fs::read_to_string(log).unwrap_or_default().contains(needle) {
            return Ok(());
        }
        if let Some(status) = guard.try_wait() {
            bail!("{} exited ({status}): {}", guard.what(), fs::read_to_string(log).unwrap_or_default());
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not start: {}", guard.what(), fs::read_to_string(log).unwrap_or_default())
}

/// The programs the agent attached to the socket-LB cgroup, or why not.
fn check_socket_lb(cgroup: &Path) -> std::result::Result<(), String> {
    let out = exec::output(
        std::process::Command::new("bpftool").arg("cgroup").arg("show").arg(cgroup),
        None,
        exec::DEFAULT_TIMEOUT,
    )
    .map_err(|e| format!("bpftool cgroup show: {e:#}"))?;
    let text = out.stdout_str();
    if text.contains("connect4") || text.contains("inet4_connect") {
        Ok(())
    } else {
        Err(format!(
            "not measured: the agent attached no connect4 program to {} (bpftool: {:?})",
            cgroup.display(),
            text.trim()
        ))
    }
}

/// "n/a: ..." unless `ipvsadm -Ln` works in the node namespace.
fn detect_ipvs(netns: &NetNs) -> String {
    if !tools::IPVSADM.is_present() {
        return "n/a: ipvsadm not installed".into();
    }
    match netns.output(&["ipvsadm", "-Ln"]) {
        Ok(out) if out.success() => "available".into(),
        Ok(out) => {
            let msg = format!("{}{}", out.stderr_str(), out.stdout_str());
            if msg.contains("Protocol not available") {
                "n/a: kernel has no IP_VS".into()
            } else {
                format!("n/a: ipvsadm -Ln failed: {}", msg.lines().next().unwrap_or_default().trim())
            }
        }
        Err(e) => format!("n/a: {e:#}"),
    }
}

/// Service `i` of the others (never the measured one): a VIP of its own and
/// four endpoint addresses of its own, none of which is ever contacted.
fn other_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i as u32)
}

fn other_endpoint(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 1)) + (i * ENDPOINTS + k) as u32)
}

fn weir_manifest(size: usize, vip: Ipv4Addr, backends: &[Pod]) -> Vec<String> {
    let port = [SvcPort { name: "http", protocol: "TCP", port: SVC_PORT, target_port: TARGET_PORT, node_port: None }];
    let slice_ports = [("http", "TCP", TARGET_PORT)];
    let mut docs = Vec::with_capacity(2 * size);
    for i in 0..size - 1 {
        let name = format!("s{i}");
        let eps: Vec<(Ipv4Addr, &str)> = (0..ENDPOINTS).map(|k| (other_endpoint(i, k), "n1")).collect();
        docs.push(service_yaml(&name, other_vip(i), &port, false));
        docs.push(endpoint_slice_yaml(&name, &slice_ports, &eps));
    }
    // Last in the file, so when it answers the whole file was applied.
    let name = format!("measured-{size}");
    let eps: Vec<(Ipv4Addr, &str)> = backends.iter().map(|p| (p.ip, "n1")).collect();
    docs.push(service_yaml(&name, vip, &port, false));
    docs.push(endpoint_slice_yaml(&name, &slice_ports, &eps));
    docs
}

fn iptables_rules(size: usize) -> usize {
    // KUBE-SERVICES rule, KUBE-SVC: masq rule + one per endpoint, KUBE-SEP: 2
    // each; plus the jumps, KUBE-MARK-MASQ and KUBE-POSTROUTING.
    size * (1 + 1 + ENDPOINTS + 2 * ENDPOINTS) + 7
}

fn chain_id(kind: &str, name: &str) -> String {
    // FNV-1a, 64 bits, as 16 hex digits: KUBE-SVC- + 16 = 25 of 28 chars.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain(name.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The nat table kube-proxy (iptables mode) writes for these Services.
fn kube_proxy_nat(size: usize, vip: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let cluster = weir_testbed::topology::CLUSTER_CIDR;
    let mut chains = String::new();
    let mut rules = String::new();
    let mut services = String::new();
    let mut add = |name: &str, vip: Ipv4Addr, eps: &[Ipv4Addr]| {
        let svc = format!("KUBE-SVC-{}", chain_id("svc", name));
        let comment = format!("\"default/{name}:http\"");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            services,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"default/{name}:http cluster IP\" -m tcp --dport {SVC_PORT} -j {svc}"
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s {cluster} -d {vip}/32 -p tcp -m comment --comment \"default/{name}:http cluster IP\" -m tcp --dport {SVC_PORT} -j KUBE-MARK-MASQ"
        );
        let n = eps.len();
        for (k, ep) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", chain_id(&format!("sep{k}"), name));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let remaining = n - k;
            if remaining > 1 {
                let p = 1.0 / remaining as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"default/{name}:http -> {ep}:{TARGET_PORT}\" -m statistic --mode random --probability {p:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"default/{name}:http -> {ep}:{TARGET_PORT}\" -j {sep}"
                );
            }
            let _ = writeln!(rules, "-A {sep} -s {ep}/32 -m comment --comment {comment} -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment {comment} -m tcp -j DNAT --to-destination {ep}:{TARGET_PORT}"
            );
        }
    };
    for i in 0..size - 1 {
        let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|k| other_endpoint(i, k)).collect();
        add(&format!("s{i}"), other_vip(i), &eps);
    }
    add(&format!("measured-{size}"), vip, backends);
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n{chains}\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         {services}{rules}COMMIT\n"
    )
}

/// Replaces the node's nat table; returns how long iptables-restore took.
fn load_iptables(topo: &Topology, node: &Node, size: usize, vip: Ipv4Addr, backends: &[Pod]) -> Result<Duration> {
    let eps: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    let file = topo.root().join(format!("kube-proxy-nat-{size}.rules"));
    fs::write(&file, kube_proxy_nat(size, vip, &eps)).with_context(|| format!("write {}", file.display()))?;
    let mut cmd = node.netns.command("iptables-restore")?;
    cmd.arg(&file);
    let start = Instant::now();
    exec::run(&mut cmd, Duration::from_secs(300)).context("iptables-restore")?;
    let took = start.elapsed();
    let saved = node.netns.run(&["iptables-save", "-t", "nat"])?;
    let services = saved.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count();
    let last = saved.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES ")).unwrap_or_default();
    ensure!(
        services == size && last.contains(&format!("-d {vip}/32")),
        "nat table after iptables-restore: {services} KUBE-SERVICES rules (want {size}), last: {last}"
    );
    Ok(took)
}

/// TCP entries whose original source is `client` in the node's table.
fn conntrack_from(node: &Node, client: Ipv4Addr) -> Option<usize> {
    let mut cmd = node.netns.command("conntrack").ok()?;
    cmd.args(["-L", "-p", "tcp", "-s", &client.to_string()]);
    let out = exec::output(&mut cmd, None, Duration::from_secs(60)).ok()?;
    Some(out.stdout_str().lines().filter(|l| l.starts_with("tcp")).count())
}

/// `conntrack -L` in the node namespace: (entries, [UNREPLIED] entries).
fn conntrack_states(node: &Node) -> Option<(usize, usize)> {
    let mut cmd = node.netns.command("conntrack").ok()?;
    cmd.arg("-L");
    let out = exec::output(&mut cmd, None, Duration::from_secs(60)).ok()?;
    let text = out.stdout_str();
    let lines = text.lines().filter(|l| l.starts_with("tcp")).count();
    let unreplied = text.lines().filter(|l| l.contains("[UNREPLIED]")).count();
    Some((lines, unreplied))
}

/// SIGSTOPs a process this run started until dropped (SIGCONT).
pub(super) struct Paused(u32);

impl Paused {
    pub(super) fn new(pid: u32) -> Self {
        // SAFETY: kill with the pid of our own child (the agent).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        Self(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// CPU time (user + system) of `pid` over `window`, in % of one core.
pub(super) fn cpu_percent(pid: u32, window: Duration) -> Option<f64> {
    let ticks = || -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat; `rest` starts at field 3.
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, start) = (ticks()?, Instant::now());
    thread::sleep(window);
    let used = (ticks()? - t0) as f64 / hz;
    Some(used / start.elapsed().as_secs_f64() * 100.0)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

pub(super) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Tries one exchange from `netns` until it works or `timeout` passes.
fn probe(netns: &NetNs, target: SocketAddrV4, timeout: Duration) -> Result<()> {
    let ns = fs::File::open(netns.path()).with_context(|| format!("open {}", netns.path().display()))?;
    thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // SAFETY: setns on this (short-lived, dedicated) thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("setns");
            }
            let deadline = Instant::now() + timeout;
            let mut buf = [0u8; 256];
            loop {
                match exchange(target, Duration::from_millis(500), &mut buf) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => {
                        return Err(e).with_context(|| format!("{target} from {}", netns.name()));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .join()
        .expect("probe thread panicked")
    })
}

/// One cell: the load generator in the client pod (and cgroup, if any).
fn measure(
    xtask: &Path,
    client: &NetNs,
    target: SocketAddrV4,
    cgroup: Option<&Path>,
    first: bool,
    args: &ServicesBenchArgs,
) -> Result<Load> {
    let secs = args.common.secs / args.common.rounds as f64;
    let warmup = if first { args.warmup } else { args.warmup / 10.0 };
    let params =
        LoadParams { secs, warmup, streams: args.streams, cpu: args.common.client_cpu, nice: args.common.nice };
    run_load(xtask, client, target, cgroup, &params)
}

/// How one slice of load is generated.
pub(super) struct LoadParams {
    pub secs: f64,
    pub warmup: f64,
    pub streams: usize,
    pub cpu: usize,
    pub nice: i32,
}

/// Runs the load generator (`bench services-load`) in `client` against
/// `target` for one slice.
pub(super) fn run_load(
    xtask: &Path,
    client: &NetNs,
    target: SocketAddrV4,
    cgroup: Option<&Path>,
    p: &LoadParams,
) -> Result<Load> {
    let mut cmd = client.command(xtask)?;
    cmd.args(["bench", "services-load", "--target"])
        .arg(target.to_string())
        .args(["--secs", &p.secs.to_string(), "--warmup", &p.warmup.to_string()])
        .args(["--streams", &p.streams.to_string(), "--cpu", &p.cpu.to_string()])
        .args(["--nice", &p.nice.to_string()]);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    exec::die_with_parent(&mut cmd);
    let timeout = Duration::from_secs_f64(p.secs + p.warmup + 30.0);
    let out = exec::output(&mut cmd, None, timeout)?;
    if !out.success() {
        bail!("load generator {}: {}", out.describe_status(), out.stderr_str().trim());
    }
    let v: Value = serde_json::from_str(out.stdout_str().trim()).context("parse the load generator's JSON")?;
    let f = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
    let mut load = Load {
        errors: f("errors")? as u64,
        first_error: v["first_error"].as_str().map(str::to_string),
        elapsed: Duration::from_secs_f64(f("elapsed_s")?),
        samples: v["samples_ns"]
            .as_array()
            .context("no samples_ns")?
            .iter()
            .map(|n| Duration::from_nanos(n.as_u64().unwrap_or(0)))
            .collect(),
        backends: v["backends"]
            .as_object()
            .map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default(),
        slice_rates: vec![],
        conntrack: None,
    };
    load.slice_rates.push(load.rate());
    // A slice where more than 1% of the connections failed is not a result.
    let ok = load.samples.len() as u64;
    if ok == 0 || load.errors * 100 > ok {
        bail!(
            "{} of {} connections failed (first: {})",
            load.errors,
            ok + load.errors,
            load.first_error.as_deref().unwrap_or("-")
        );
    }
    Ok(load)
}

// ------------------------------------------------------- hidden subcommands

/// Pins the calling thread (and the threads it starts later) to `cpu` and
/// sets the process's nice value.
fn pin(cpu: usize, nice: i32) -> Result<()> {
    if nice != 0 {
        // SAFETY: setpriority on this process.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("nice {nice}"));
        }
    }
    pin_to_cpu(cpu)
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0)
    // applies to the calling thread, whose children inherit it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("pin to CPU {cpu}"));
        }
    }
    Ok(())
}

/// A blocking TCP connect with send and receive timeouts set before it (one
/// setsockopt each: no non-blocking connect + poll dance per connection).
fn connect(target: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: target.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*target.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket syscalls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let e = io::Error::last_os_error();
            // A blocking connect that hit SO_SNDTIMEO.
            if e.raw_os_error() == Some(libc::EINPROGRESS) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            return Err(e);
        }
        Ok(TcpStream::from(sock))
    }
}

/// connect, request, reply, close: the latency to the reply's first byte and
/// the reply's length in `buf` (read to EOF: the server closes first).
fn exchange(target: SocketAddrV4, timeout: Duration, buf: &mut [u8]) -> io::Result<(Duration, usize)> {
    let start = Instant::now();
    let mut s = connect(target, timeout)?;
    s.write_all(REQUEST)?;
    let mut len = s.read(buf)?;
    let latency = start.elapsed();
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a reply"));
    }
    loop {
        match s.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
        if len == buf.len() {
            return Err(io::Error::other("reply too long"));
        }
    }
    Ok((latency, len))
}

#[derive(Default)]
struct StreamOut {
    samples: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    backends: Vec<(Vec<u8>, u64)>,
}

fn stream(target: SocketAddrV4, stop: &AtomicBool, keep: bool) -> StreamOut {
    let mut out = StreamOut { samples: Vec::with_capacity(if keep { 1 << 17 } else { 0 }), ..Default::default() };
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match exchange(target, Duration::from_secs(2), &mut buf) {
            Ok((latency, len)) => {
                if !keep {
                    continue;
                }
                out.samples.push(latency);
                let label = buf[..len].split(|b| *b == b' ').next().unwrap_or_default();
                match out.backends.iter_mut().find(|(l, _)| l == label) {
                    Some((_, n)) => *n += 1,
                    None => out.backends.push((label.to_vec(), 1)),
                }
            }
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(e.to_string());
                }
            }
        }
    }
    out
}

/// `streams` threads for `secs`; their outputs and the wall time.
fn phase(target: SocketAddrV4, streams: usize, secs: f64, keep: bool) -> (Vec<StreamOut>, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let outs = thread::scope(|s| {
        let handles: Vec<_> = (0..streams).map(|_| s.spawn(|| stream(target, &stop, keep))).collect();
        thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().expect("load thread panicked")).collect()
    });
    (outs, start.elapsed())
}

/// The load generator: prints one JSON object.
pub fn load(args: LoadArgs) -> Result<()> {
    if let Some(cg) = &args.cgroup {
        // Before any socket exists: socket LB applies per cgroup at connect.
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", cg.display()))?;
    }
    pin(args.cpu, args.nice)?;
    if args.warmup > 0.0 {
        phase(args.target, args.streams, args.warmup, false);
    }
    let (outs, elapsed) = phase(args.target, args.streams, args.secs, true);
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    for o in outs {
        samples.extend(o.samples);
        errors += o.errors;
        first_error = first_error.or(o.first_error);
        for (l, n) in o.backends {
            *backends.entry(String::from_utf8_lossy(&l).into_owned()).or_default() += n;
        }
    }
    let samples_ns: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
    println!(
        "{}",
        json!({
            "errors": errors,
            "first_error": first_error,
            "elapsed_s": elapsed.as_secs_f64(),
            "samples_ns": samples_ns,
            "backends": backends,
        })
    );
    Ok(())
}

/// The echo server: answers `<label> <request>` and closes (first, so the
/// TIME_WAIT lands here and not on the client's ephemeral ports).
pub fn echo(args: EchoArgs) -> Result<()> {
    pin(args.cpu, args.nice)?;
    let listener =
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port)).with_context(|| format!("bind :{}", args.port))?;
    println!("listening: {} on :{}", args.label, args.port);
    io::stdout().flush()?;
    let label = Arc::new(args.label.into_bytes());
    let workers: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let listener = listener.try_clone()?;
            let label = Arc::clone(&label);
            Ok(thread::spawn(move || serve(&listener, &label)))
        })
        .collect::<io::Result<_>>()?;
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn serve(listener: &TcpListener, label: &[u8]) {
    let mut buf = [0u8; 512];
    let mut reply = Vec::with_capacity(600);
    loop {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let Ok(n) = s.read(&mut buf) else { continue };
        reply.clear();
        reply.extend_from_slice(label);
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        let _ = s.write_all(&reply);
    }
}

// ------------------------------------------------------------ control plane

struct ControlPlane {
    report: std::result::Result<Value, String>,
}

fn control_plane(topo: &Topology, release: &Path, args: &ServicesBenchArgs) -> ControlPlane {
    let run = || -> Result<Value> {
        // Its own namespace: it attaches nothing, but nothing of it lands in
        // the root namespace either way. Pins under /sys/fs/bpf/weir-bench-<pid>,
        // removed by weir-dev.
        let ns = NetNs::create(&topo.prefix().child("cp"))?;
        let mut cmd = ns.command(release.join("weir-dev"))?;
        cmd.args(["bench-control-plane", "--services", &args.cp_services.to_string()]).args([
            "--endpoints",
            &ENDPOINTS.to_string(),
            "--changes",
            &args.changes.to_string(),
        ]);
        exec::die_with_parent(&mut cmd);
        println!("==> {}", exec::describe(&cmd));
        let out = exec::output(&mut cmd, None, Duration::from_secs(300))?;
        if !out.success() {
            bail!("bench-control-plane {}: {}", out.describe_status(), out.stderr_str().trim());
        }
        let text = out.stdout_str();
        let line =
            text.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON from bench-control-plane")?;
        serde_json::from_str(line).context("parse bench-control-plane's JSON")
    };
    ControlPlane { report: run().map_err(|e| format!("{e:#}")) }
}

// ----------------------------------------------------------------- printing

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn print_data_path(args: &ServicesBenchArgs, d: &DataPath) {
    let ipvs_na = d.ipvs != "available";
    println!(
        "\nData path: TCP connect + {}-byte request + reply + close, {} stream(s); load generator on CPU {}, \
         echo servers on CPU {} (nice {}); {:.1} s per cell in {} interleaved slices, {:.2} s warm-up first",
        REQUEST.len(),
        args.streams,
        args.common.client_cpu,
        args.common.server_cpu,
        args.common.nice,
        args.common.secs,
        args.common.rounds,
        args.warmup
    );
    println!(
        "direct = backend pod IP on the weir node (the limit); weir tc = ClusterIP, per-packet tc path; weir sock = \
         ClusterIP, connect-time socket LB; direct@ipt = pod IP on the iptables node; iptables = ClusterIP via \
         kube-proxy-style chains ({})",
        d.iptables_version
    );
    let rate = |size: usize, p: Column| d.cells.get(&(size, p)).and_then(|c| c.as_ref().ok()).map(Load::rate);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let num = |x: Option<f64>| x.map_or_else(|| "FAILED".into(), |x| format!("{x:.0}"));
    let ipvs_cell = if ipvs_na { d.ipvs.clone() } else { "NOT MEASURED".into() };

    println!("\nNew connections per second (higher is better)");
    println!(
        "{:>8} {:>8} {:>8} {:>9} {:>10} {:>8}  {:<25} | {:>7} {:>8} {:>8} {:>8} {:>8}",
        "services",
        "direct",
        "weir tc",
        "weir sock",
        "direct@ipt",
        "iptables",
        "IPVS",
        "tc/dir",
        "sock/dir",
        "ipt/dir",
        "sock/ipt",
        "tc/ipt"
    );
    for &size in &args.sizes {
        let r: BTreeMap<Column, Option<f64>> = Column::ALL.iter().map(|&p| (p, rate(size, p))).collect();
        println!(
            "{:>8} {:>8} {:>8} {:>9} {:>10} {:>8}  {:<25} | {:>7} {:>8} {:>8} {:>8} {:>8}",
            size,
            num(r[&Column::Direct]),
            num(r[&Column::WeirTc]),
            num(r[&Column::WeirSock]),
            num(r[&Column::DirectIpt]),
            num(r[&Column::Iptables]),
            ipvs_cell,
            ratio(r[&Column::WeirTc], r[&Column::Direct]),
            ratio(r[&Column::WeirSock], r[&Column::Direct]),
            ratio(r[&Column::Iptables], r[&Column::Direct]),
            ratio(r[&Column::WeirSock], r[&Column::Iptables]),
            ratio(r[&Column::WeirTc], r[&Column::Iptables]),
        );
    }

    println!("\nLatency socket() -> first reply byte, p50 / p99 in us (lower is better)");
    println!(
        "{:>8} {:>15} {:>15} {:>15} {:>15} {:>15}  {:<25}",
        "services", "direct", "weir tc", "weir sock", "direct@ipt", "iptables", "IPVS"
    );
    for &size in &args.sizes {
        let lat = |p: Column| match d.cells.get(&(size, p)) {
            Some(Ok(l)) => {
                let (p50, p99) = l.latency_us();
                format!("{p50:.0} / {p99:.0}")
            }
            _ => "FAILED".into(),
        };
        println!(
            "{:>8} {:>15} {:>15} {:>15} {:>15} {:>15}  {:<25}",
            size,
            lat(Column::Direct),
            lat(Column::WeirTc),
            lat(Column::WeirSock),
            lat(Column::DirectIpt),
            lat(Column::Iptables),
            ipvs_cell
        );
    }

    println!(
        "\nChecks per cell: backends that answered / conntrack entries from the cell's client pod in its node's \
         table at the end (tracked in every column) / slice-to-slice spread of the rate"
    );
    for &size in &args.sizes {
        let mut line = format!("{size:>8}");
        for p in Column::ALL {
            let _ = match d.cells.get(&(size, p)) {
                Some(Ok(l)) => write!(
                    line,
                    "  {}: {} bk / ct {} / ±{}",
                    p.label(),
                    l.backends.len(),
                    l.conntrack.map_or("?".into(), |c| c.to_string()),
                    l.spread().map_or("-".into(), |s| format!("{:.0}%", s * 100.0))
                ),
                Some(Err(_)) | None => write!(line, "  {}: -", p.label()),
            };
        }
        println!("{line}");
        if let Some((weir, ipt)) = d.programming.get(&size) {
            let t = |x: &Option<Duration>| x.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
            let idle = d.agent_idle_cpu.get(&size).copied().flatten();
            println!(
                "{:>8}  programming: weir manifest dir -> ClusterIP answers {}; iptables-restore of {} rules {}; \
                 weir-agent idle afterwards: {} of a core{}",
                "",
                t(weir),
                iptables_rules(size),
                t(ipt),
                idle.map_or("?".into(), |c| format!("{c:.1}%")),
                if args.agent_running { "" } else { " (paused with SIGSTOP during the cells)" }
            );
        }
    }
    for ((size, p), c) in &d.cells {
        if let Err(e) = c {
            println!("FAILED {size} Services, {}: {e}", p.label());
        }
    }
    if let Err(e) = &d.socket_lb {
        println!("weir sock: {e}");
    }
    for (node, ct) in &d.conntrack_end {
        if let Some((all, unreplied)) = ct {
            println!(
                "conntrack on {node} at the end: {all} TCP entries, {unreplied} [UNREPLIED] (never matched by a reply: \
                 the flow was seen translated in one direction only)"
            );
        }
    }
    if ipvs_na {
        println!(
            "IPVS: NOT MEASURED, {} (ipvsadm -Ln in the node namespace: \"Can't initialize ipvs: Protocol not \
             available\"; CONFIG_IP_VS is not set and this kernel loads no modules). No numbers are shown for it.",
            d.ipvs
        );
    }

    println!("\nGoals (new-connection rate)");
    for (p, name) in [(Column::WeirSock, "weir socket LB"), (Column::WeirTc, "weir per-packet tc")] {
        let ratios: Vec<Option<f64>> =
            args.sizes.iter().map(|&s| rate(s, p).zip(rate(s, Column::Direct)).map(|(a, b)| a / b)).collect();
        let met = ratios.iter().all(|r| r.is_some_and(|r| r >= GOAL_DIRECT_RATIO));
        println!(
            "  ClusterIP >= {GOAL_DIRECT_RATIO} x direct at every size, {name}: {} -> {}",
            fmt_ratios(&ratios),
            verdict(met)
        );
        let vs_ipt: Vec<Option<f64>> =
            args.sizes.iter().map(|&s| rate(s, p).zip(rate(s, Column::Iptables)).map(|(a, b)| a / b)).collect();
        let met = vs_ipt.iter().all(|r| r.is_some_and(|r| r > 1.0));
        println!("  ahead of iptables at every size, {name}: {} -> {}", fmt_ratios(&vs_ipt), verdict(met));
    }
    println!(
        "  ahead of IPVS at every size: {}",
        if ipvs_na { format!("NOT MEASURED ({})", d.ipvs) } else { "NOT MEASURED".into() }
    );
    if let Some(rss) = d.agent_rss_mib {
        println!(
            "(info) the live agent on n1 with {} Services via the manifest dir: RSS {rss:.1} MiB",
            args.sizes.last().copied().unwrap_or(0)
        );
    }
}

fn fmt_ratios(r: &[Option<f64>]) -> String {
    r.iter().map(|r| r.map_or("-".into(), |r| format!("{r:.2}"))).collect::<Vec<_>>().join(" / ")
}

fn print_control_plane(args: &ServicesBenchArgs, c: &ControlPlane) {
    println!(
        "\nControl plane: weir-dev bench-control-plane --services {} --endpoints {ENDPOINTS} --changes {} (release, real pinned maps)",
        args.cp_services, args.changes
    );
    let v = match &c.report {
        Ok(v) => v,
        Err(e) => {
            println!("  FAILED: {e}");
            return;
        }
    };
    let f = |k: &str| v[k].as_f64();
    let row = |what: &str, value: Option<f64>, unit: &str, goal: Option<(f64, &str)>| {
        let shown = value.map_or("-".into(), |x| format!("{x:.1} {unit}"));
        match goal {
            Some((limit, goal_text)) => println!(
                "  {what:<34} {shown:>14}   goal {goal_text:<12} {}",
                verdict(value.is_some_and(|x| x < limit))
            ),
            None => println!("  {what:<34} {shown:>14}"),
        }
    };
    println!("  frontends programmed: {}", v["frontends"]);
    row("cold programming", f("cold_ms"), "ms", Some((GOAL_COLD_MS, "< 1 s")));
    row("EndpointSlice change p50", f("change_p50_us"), "us", None);
    row("EndpointSlice change p99", f("change_p99_us"), "us", Some((GOAL_CHANGE_P99_US, "< 10 ms")));
    row("EndpointSlice change max", f("change_max_us"), "us", None);
    row("resident memory", f("rss_mib"), "MiB", Some((GOAL_RSS_MIB, "< 150 MiB")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_rules_put_the_measured_service_last_with_kube_proxy_probabilities() {
        let vip = Ipv4Addr::new(10, 96, 1, 10);
        let eps: Vec<Ipv4Addr> = (2..6).map(|i| Ipv4Addr::new(10, 244, 2, i)).collect();
        let rules = kube_proxy_nat(3, vip, &eps);
        let services: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).collect();
        assert_eq!(services.len(), 3);
        assert!(services[2].contains("-d 10.96.1.10/32"), "{}", services[2]);
        assert!(services[0].contains(&format!("-d {}/32", other_vip(0))));
        for p in ["0.25000000000", "0.33333333333", "0.50000000000"] {
            assert_eq!(rules.matches(&format!("--probability {p} ")).count(), 3, "{p}");
        }
        assert!(rules.contains("-j DNAT --to-destination 10.244.2.5:8080"));
        assert!(rules.contains("-A PREROUTING ") && rules.contains("-A OUTPUT "));
        assert_eq!(rules.lines().filter(|l| l.starts_with("-A ")).count(), iptables_rules(3));
        // iptables chain names: 28 characters at most, all distinct.
        let chains: Vec<&str> =
            rules.lines().filter_map(|l| l.strip_prefix(':')).map(|l| l.split(' ').next().unwrap()).collect();
        assert!(chains.iter().all(|c| c.len() <= 28));
        let mut unique = chains.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), chains.len());
    }

    #[test]
    fn other_services_never_overlap_the_measured_one_or_the_pods() {
        let last = other_endpoint(MAX_SERVICES - 2, ENDPOINTS - 1);
        assert!(last.octets()[..2] == [10, 245], "{last}");
        assert_eq!(other_vip(MAX_SERVICES - 2).octets()[..2], [10, 100]);
        let docs = weir_manifest(3, Ipv4Addr::new(10, 96, 1, 10), &[]);
        assert_eq!(docs.len(), 6);
        assert!(docs[4].contains("clusterIP: 10.96.1.10"));
    }
}
