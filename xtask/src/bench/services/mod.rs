//! New-connection rate and latency through a ClusterIP with weir (per-packet
//! tc path and connect-time socket load balancing) next to the same backends
//! by pod IP (the four in turn) and the same Services as kube-proxy-style
//! iptables chains, for 1, 1,000 and 10,000 Services of 4 endpoints each;
//! then the control plane (`weir-dev bench-control-plane`) against its
//! goals; last, /metrics under load (`metrics.rs`). IPVS is detected and reported as not measurable
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
//!   On n1 every Service is dual-stack (an IPv6 ClusterIP and an IPv6
//!   EndpointSlice beside the IPv4 ones), and the three weir columns are
//!   measured over IPv6 too, against direct over IPv6 (`direct6`, `weir
//!   tc6`, `weir sock6`); kube-proxy's chains stay IPv4.
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
//! the other columns, each round starting one column later, so changing
//! machine load hits all columns alike.
//! Latency is from socket() to the reply's first byte.

mod control_plane;
mod data_path;
mod host;
mod load;
mod manifests;
mod report;
mod subcommands;

use std::{path::PathBuf, thread};

use anyhow::{Result, ensure};
use clap::Args;
use weir_testbed::{Topology, bins, tools};

use crate::{cargo, setup};
use control_plane::control_plane;
use data_path::data_path;
use report::{print_control_plane, print_data_path};

pub(super) use host::{Paused, cpu_percent, loadavg};
pub(super) use load::{EchoParams, Load, LoadParams, run_load, spawn_echo};
pub use subcommands::{EchoArgs, LoadArgs, echo, load};

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
    /// Only these columns (e.g. `direct,weir-tc` to profile one path
    /// against its baseline); ratios need both of their columns.
    #[arg(long, value_delimiter = ',', value_enum)]
    columns: Vec<Column>,
    /// Print every slice's rate per cell (where the spread comes from).
    #[arg(long)]
    slices: bool,
    #[command(flatten)]
    metrics: super::metrics::MetricsArgs,
}

/// The paths measured at every size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Column {
    /// The backends' pod IPs on the weir node, in turn: the limit.
    Direct,
    WeirTc,
    WeirSock,
    /// The backends' pod IPs on the iptables node, in turn (its
    /// KUBE-SERVICES is walked too).
    DirectIpt,
    Iptables,
    /// The same three over IPv6 (the weir node is dual-stack, every
    /// Service too).
    Direct6,
    WeirTc6,
    WeirSock6,
}

impl Column {
    const ALL: [Column; 8] = [
        Column::Direct,
        Column::WeirTc,
        Column::WeirSock,
        Column::DirectIpt,
        Column::Iptables,
        Column::Direct6,
        Column::WeirTc6,
        Column::WeirSock6,
    ];

    /// The columns `args` asks for (all of them by default).
    fn chosen(args: &ServicesBenchArgs) -> impl Iterator<Item = Column> + '_ {
        Self::ALL.into_iter().filter(|c| args.columns.is_empty() || args.columns.contains(c))
    }

    fn label(self) -> &'static str {
        match self {
            Column::Direct => "direct",
            Column::WeirTc => "weir tc",
            Column::WeirSock => "weir sock",
            Column::DirectIpt => "direct@ipt",
            Column::Iptables => "iptables",
            Column::Direct6 => "direct6",
            Column::WeirTc6 => "weir tc6",
            Column::WeirSock6 => "weir sock6",
        }
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
    let topo =
        Topology::builder("bench-services").nodes(2).families(weir_testbed::topology::Families::DualStack).build()?;

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
