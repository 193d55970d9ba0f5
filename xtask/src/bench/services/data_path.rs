//! The data-path half: two nodes (weir, iptables) with four echo backends
//! each, then for every size the Services programmed both ways and every
//! column measured in interleaved rounds.

use std::{
    collections::BTreeMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use weir_testbed::{
    Agent, Node, Pod, Topology, cleanup, cni::Conflist, exec, netns::NetNs, process::ChildGuard, tools,
};

use super::{
    Cell, Column, ENDPOINTS, MANIFEST, SVC_PORT, ServicesBenchArgs, TARGET_PORT,
    host::{Paused, cpu_percent, rss_mib},
    load::{EchoParams, Load, LoadParams, run_load, spawn_echo},
    manifests::{iptables_rules, load_iptables, v6_of, weir_manifest},
    subcommands::exchange,
};

pub(super) struct DataPath {
    pub(super) cells: BTreeMap<(usize, Column), Cell>,
    pub(super) ipvs: String,
    pub(super) socket_lb: std::result::Result<(), String>,
    /// Per size: manifest-dir programming time (weir), iptables-restore time.
    pub(super) programming: BTreeMap<usize, (Option<Duration>, Option<Duration>)>,
    /// Per size: the agent's CPU use while nothing changes, in % of a core.
    pub(super) agent_idle_cpu: BTreeMap<usize, Option<f64>>,
    pub(super) agent_rss_mib: Option<f64>,
    pub(super) iptables_version: String,
    /// Per node: (entries, entries never answered in their own direction).
    pub(super) conntrack_end: Vec<(String, Option<(usize, usize)>)>,
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

pub(super) fn data_path(topo: &Topology, xtask: &Path, args: &ServicesBenchArgs) -> Result<DataPath> {
    let (weir_node, ipt_node) = (topo.node("n1"), topo.node("n2"));
    let cg_root = cleanup::cgroup2_mount().context("no cgroup v2 mount: socket LB needs one")?;
    let cgroup = Cgroup(cg_root.join(topo.prefix().child("socklb")));
    fs::create_dir(&cgroup.0).with_context(|| format!("create cgroup {}", cgroup.0.display()))?;

    let mut agent = Agent::spawn_with(weir_node, topo.manifest_dir(), Some(&cgroup.0))?;
    agent.wait_ready(Agent::ready_timeout())?;
    let socket_lb = check_socket_lb(&cgroup.0);

    for node in [weir_node, ipt_node] {
        track_connections(node)?;
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
        let weir_clients = Clients::new(&weir, index, &["cd", "ct", "cs", "6d", "6t", "6s"])?;
        let ipt_clients = Clients::new(&ipt, index, &["cd", "ci"])?;
        let weir_ready = program_weir(topo, &agent, size, vip, &weir.backends, weir_clients.get("ct"));
        let ipt_ready = program_iptables(topo, ipt_node, size, vip, &ipt.backends, ipt_clients.get("ci"));
        programming.insert(size, (weir_ready.as_ref().ok().copied(), ipt_ready.as_ref().ok().copied()));
        agent_idle_cpu.insert(size, cpu_percent(agent.pid(), Duration::from_secs(1)));
        let size_run = SizeRun {
            args,
            xtask,
            vip,
            weir: &weir,
            ipt: &ipt,
            ipt_clients,
            weir_clients,
            cgroup: &cgroup.0,
            socket_lb: &socket_lb,
            weir_ready,
            ipt_ready,
        };
        // The datapath runs on pinned maps and links without the agent; the
        // agent's own CPU use (its manifest-dir source re-snapshots every
        // object at each poll) would otherwise land on the measured cores.
        let _paused = (!args.agent_running).then(|| Paused::new(agent.pid()));

        for (col, cell) in size_run.rounds() {
            print_cell(col, &cell);
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

/// conntrack in a node namespace (see the module doc). TIME_WAIT entries
/// last 10 s instead of 120 s: a run opens up to ~250,000 connections per
/// node and the table (262,144, a global limit not settable here) must
/// never fill, which would drop SYNs in whichever column came last.
fn track_connections(node: &Node) -> Result<()> {
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
    Ok(())
}

/// Writes the manifest of `size` Services; how long until the measured
/// ClusterIP answered `client`.
fn program_weir(
    topo: &Topology,
    agent: &Agent,
    size: usize,
    vip: Ipv4Addr,
    backends: &[Pod],
    client: &Pod,
) -> Result<Duration> {
    let start = Instant::now();
    topo.write_manifest(MANIFEST, &weir_manifest(size, vip, backends))?;
    // Both families' ClusterIPs.
    let ready = probe(&client.netns, (vip, SVC_PORT).into(), Duration::from_secs(120))
        .and_then(|()| probe(&client.netns, (v6_of(vip), SVC_PORT).into(), Duration::from_secs(60)))
        .map(|()| start.elapsed());
    match &ready {
        Ok(t) => println!("weir: manifest with {size} Services answered after {:.2} s", t.as_secs_f64()),
        Err(e) => println!("weir: ClusterIP never answered: {e:#}\n{}", agent.log_tail(20)),
    }
    ready
}

/// Restores the nat table of `size` Services; how long iptables-restore
/// took, once the measured ClusterIP answers `client`.
fn program_iptables(
    topo: &Topology,
    node: &Node,
    size: usize,
    vip: Ipv4Addr,
    backends: &[Pod],
    client: &Pod,
) -> Result<Duration> {
    let ready = load_iptables(topo, node, size, vip, backends).and_then(|t| {
        probe(&client.netns, (vip, SVC_PORT).into(), Duration::from_secs(30))?;
        Ok(t)
    });
    match &ready {
        Ok(t) => println!("iptables: {} rules restored in {:.2} s", iptables_rules(size), t.as_secs_f64()),
        Err(e) => println!("iptables: not working: {e:#}"),
    }
    ready
}

/// One size once programmed: its client pods, whether each side got
/// programmed, and what a cell needs besides.
struct SizeRun<'a> {
    args: &'a ServicesBenchArgs,
    xtask: &'a Path,
    vip: Ipv4Addr,
    weir: &'a Side<'a>,
    ipt: &'a Side<'a>,
    // Dropped in this order (pods deleted), as when they were locals.
    ipt_clients: Clients,
    weir_clients: Clients,
    cgroup: &'a Path,
    socket_lb: &'a std::result::Result<(), String>,
    weir_ready: Result<Duration>,
    ipt_ready: Result<Duration>,
}

impl SizeRun<'_> {
    /// Every column in turn, `--rounds` times, each round starting one
    /// column later (`round_order`); a column that failed once is not
    /// measured again.
    fn rounds(&self) -> BTreeMap<Column, Cell> {
        let mut sums: BTreeMap<Column, Cell> = BTreeMap::new();
        let columns: Vec<Column> = Column::chosen(self.args).collect();
        for round in 0..self.args.common.rounds {
            for col in round_order(&columns, round) {
                if matches!(sums.get(&col), Some(Err(_))) {
                    continue;
                }
                match (sums.get_mut(&col), self.cell(col, round)) {
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
        sums
    }

    /// One slice of one column, or why it cannot be measured.
    fn cell(&self, col: Column, round: usize) -> Cell {
        let (client, node, targets, cg) = self.path(col);
        match (col, &self.weir_ready, &self.ipt_ready, self.socket_lb) {
            (Column::WeirTc | Column::WeirSock | Column::WeirTc6 | Column::WeirSock6, Err(e), _, _) => {
                Err(format!("not programmed: {e:#}"))
            }
            (Column::Iptables, _, Err(e), _) => Err(format!("not programmed: {e:#}")),
            (Column::WeirSock | Column::WeirSock6, _, _, Err(e)) => Err(e.clone()),
            _ => measure(self.xtask, &client.netns, &targets, cg, round == 0, self.args)
                .map(|mut l| {
                    if round + 1 == self.args.common.rounds {
                        let from =
                            if targets[0].is_ipv6() { client.ipv6.map(IpAddr::V6) } else { Some(client.ip.into()) };
                        l.conntrack = from.and_then(|ip| conntrack_from(node, ip));
                    }
                    l
                })
                .map_err(|e| format!("round {}: {e:#}", round + 1)),
        }
    }

    /// The column's client pod, its node, the addresses it connects to (in
    /// turn, one per connection) and the socket-LB cgroup it joins, if any.
    /// The direct columns go to the same four backends the Service balances
    /// over: one backend alone would compare a path that wakes one hot echo
    /// server and piles all TIME_WAITs in one namespace with one that
    /// spreads over four.
    fn path(&self, col: Column) -> (&Pod, &Node, Vec<SocketAddr>, Option<&Path>) {
        let (weir_node, ipt_node) = (self.weir.node, self.ipt.node);
        let vip = vec![SocketAddr::new(self.vip.into(), SVC_PORT)];
        let vip6 = vec![SocketAddr::new(v6_of(self.vip).into(), SVC_PORT)];
        let pod_ips = |side: &Side| side.backends.iter().map(|b| SocketAddr::new(b.ip.into(), TARGET_PORT)).collect();
        let pod_ips6 = |side: &Side| {
            side.backends
                .iter()
                .map(|b| SocketAddr::new(b.ipv6.expect("a dual-stack backend").into(), TARGET_PORT))
                .collect()
        };
        match col {
            Column::Direct => (self.weir_clients.get("cd"), weir_node, pod_ips(self.weir), None),
            Column::WeirTc => (self.weir_clients.get("ct"), weir_node, vip, None),
            Column::WeirSock => (self.weir_clients.get("cs"), weir_node, vip, Some(self.cgroup)),
            Column::DirectIpt => (self.ipt_clients.get("cd"), ipt_node, pod_ips(self.ipt), None),
            Column::Iptables => (self.ipt_clients.get("ci"), ipt_node, vip, None),
            Column::Direct6 => (self.weir_clients.get("6d"), weir_node, pod_ips6(self.weir), None),
            Column::WeirTc6 => (self.weir_clients.get("6t"), weir_node, vip6, None),
            Column::WeirSock6 => (self.weir_clients.get("6s"), weir_node, vip6, Some(self.cgroup)),
        }
    }
}

/// The columns of round `round`: the list turned by one column a round,
/// so no column always runs first (right after the previous round's last
/// one) or always right after the same neighbour: this machine drifts
/// between two speeds, and a fixed order gave one column's slices the
/// same place in every drift.
fn round_order(columns: &[Column], round: usize) -> impl Iterator<Item = Column> + '_ {
    let start = if columns.is_empty() { 0 } else { round % columns.len() };
    columns[start..].iter().chain(&columns[..start]).copied()
}

/// One column's line once its rounds are done.
fn print_cell(col: Column, cell: &Cell) {
    match cell {
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

/// The programs the agent attached to the socket-LB cgroup, or why not.
fn check_socket_lb(cgroup: &Path) -> std::result::Result<(), String> {
    let out = exec::output(
        std::process::Command::new("bpftool").arg("cgroup").arg("show").arg(cgroup),
        None,
        exec::DEFAULT_TIMEOUT,
    )
    .map_err(|e| format!("bpftool cgroup show: {e:#}"))?;
    let text = out.stdout_str();
    if (text.contains("connect4") || text.contains("inet4_connect"))
        && (text.contains("connect6") || text.contains("inet6_connect"))
    {
        Ok(())
    } else {
        Err(format!(
            "not measured: the agent attached no connect4 and connect6 programs to {} (bpftool: {:?})",
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

/// TCP entries whose original source is `client` in the node's table.
fn conntrack_from(node: &Node, client: IpAddr) -> Option<usize> {
    let mut cmd = node.netns.command("conntrack").ok()?;
    cmd.args(["-L", "-f", if client.is_ipv6() { "ipv6" } else { "ipv4" }, "-p", "tcp", "-s", &client.to_string()]);
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

/// Tries one exchange from `netns` until it works or `timeout` passes.
fn probe(netns: &NetNs, target: SocketAddr, timeout: Duration) -> Result<()> {
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
    targets: &[SocketAddr],
    cgroup: Option<&Path>,
    first: bool,
    args: &ServicesBenchArgs,
) -> Result<Load> {
    let secs = args.common.secs / args.common.rounds as f64;
    let warmup = if first { args.warmup } else { args.warmup / 10.0 };
    let params =
        LoadParams { secs, warmup, streams: args.streams, cpu: args.common.client_cpu, nice: args.common.nice };
    run_load(xtask, client, targets, cgroup, &params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_one_column_later() {
        let columns = [Column::Direct, Column::WeirTc, Column::WeirSock];
        let order = |round| round_order(&columns, round).collect::<Vec<_>>();
        assert_eq!(order(0), columns);
        assert_eq!(order(1), [Column::WeirTc, Column::WeirSock, Column::Direct]);
        assert_eq!(order(2), [Column::WeirSock, Column::Direct, Column::WeirTc]);
        assert_eq!(order(3), columns);
        assert_eq!(round_order(&[], 5).count(), 0);
    }
}
