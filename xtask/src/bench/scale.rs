//! `cargo xtask bench scale`: one agent's view of a large cluster. For each
//! size, a node namespace of its own runs `weir-dev bench-scale`, which
//! serves a synthetic cluster (N nodes, 30 pods per node, S Services with
//! EndpointSlices, K NetworkPolicies) from an in-process fake API server
//! on the namespace's loopback and starts the release agent on its kube
//! source against it; see devtools/src/bench_scale for what is measured.
//! Peer nodes' InternalIPs sit in a /16 added to the node's eth0 inside
//! its namespace, so the agent's routes to 5,000 pod CIDRs are on-link.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use serde_json::Value;
use weir_testbed::{Topology, bins, tools};

use super::stats::{Summary, ms};

/// Goals from issue 14, at 150,000 pods / 10,000 Services / 1,000 policies.
const GOAL_RSS_MIB: f64 = 300.0;
const GOAL_READY_S: f64 = 20.0;
const GOAL_CHANGE_P99_MS: f64 = 100.0;
/// Peer nodes' InternalIPs (`weir-dev bench-scale --peer-network`).
const PEER_NETWORK: &str = "172.31.0.0";
const PEER_ADDRESS: &str = "172.31.255.254/16";

#[derive(Args)]
pub struct ScaleBenchArgs {
    /// Cluster sizes, each NODESxPODSxSERVICESxPOLICIES.
    #[arg(long, value_delimiter = ',', default_value = "500x15000x2000x200,5000x150000x10000x1000")]
    sizes: Vec<String>,
    /// Label changes timed one at a time per size.
    #[arg(long, default_value_t = 40)]
    label_changes: usize,
    /// Pod changes per second during the churn phase.
    #[arg(long, default_value_t = 200)]
    churn_rate: usize,
    #[arg(long, default_value_t = 10)]
    churn_secs: u64,
    #[command(flatten)]
    build: super::ReleaseArgs,
}

fn parse_size(s: &str) -> Result<[usize; 4]> {
    let parts: Vec<usize> = s
        .split('x')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("size {s:?}: expected NODESxPODSxSERVICESxPOLICIES"))?;
    let [n, p, s2, k] = parts[..] else { bail!("size {s:?}: expected four numbers") };
    ensure!((1..=30_000).contains(&n), "size {s:?}: 1 to 30,000 nodes");
    ensure!(p >= n && p < n * 250, "size {s:?}: pods between nodes and 250 per node");
    ensure!((1..=60_000).contains(&s2), "size {s:?}: 1 to 60,000 Services");
    Ok([n, p, s2, k])
}

pub fn run(args: ScaleBenchArgs) -> Result<()> {
    let sizes: Vec<[usize; 4]> = args.sizes.iter().map(|s| parse_size(s)).collect::<Result<_>>()?;
    let (release, _) = super::services::release_bins(args.build.no_build)?;
    weir_testbed::check_prerequisites(&[tools::IP])?;
    println!("bench scale: release binaries from {}; load average {}", release.display(), super::services::loadavg());
    let mut reports = Vec::new();
    for size in &sizes {
        let started = Instant::now();
        match one(&args, *size, &release) {
            Ok(r) => {
                println!("  {} done in {:.0} s", label(*size), started.elapsed().as_secs_f64());
                reports.push((*size, Ok(r)));
            }
            Err(e) => {
                println!("  {}: failed: {e:#}", label(*size));
                reports.push((*size, Err(format!("{e:#}"))));
            }
        }
    }
    print(&args, &reports);
    Ok(())
}

fn label([n, p, s, k]: [usize; 4]) -> String {
    format!("{n} nodes / {p} pods / {s} Services / {k} policies")
}

fn one(
    args: &ScaleBenchArgs,
    [nodes, pods, services, policies]: [usize; 4],
    release: &std::path::Path,
) -> Result<Value> {
    // Node 1 of the test bed is the cluster's node 0: its pod CIDR is the
    // first /24 of the synthetic cluster CIDR.
    let topo = Topology::builder("bench-scale").nodes(1).pod_cidr(1, "10.128.0.0/24").build()?;
    let node = &topo.nodes()[0];
    node.netns.run(&["ip", "addr", "add", PEER_ADDRESS, "dev", "eth0"])?;
    let dir = &node.dirs.root;
    let s = |p: std::path::PathBuf| p.to_str().map(str::to_string).context("non-UTF-8 path");
    let report = dir.join("bench-scale.json");
    let cni_path = std::env::join_paths(bins::cni_path())?
        .into_string()
        .map_err(|p| anyhow::anyhow!("non-UTF-8 CNI path {p:?}"))?;
    let mut argv: Vec<String> = vec![
        s(release.join("weir-dev"))?,
        "bench-scale".into(),
        "--nodes".into(),
        nodes.to_string(),
        "--pods".into(),
        pods.to_string(),
        "--services".into(),
        services.to_string(),
        "--policies".into(),
        policies.to_string(),
        "--node-name".into(),
        node.name.clone(),
        "--node-ip".into(),
        node.ip.to_string(),
        "--peer-network".into(),
        PEER_NETWORK.into(),
        "--pin-dir".into(),
        s(node.pin_dir.clone())?,
        "--ready-file".into(),
        s(node.dirs.run.join("agent-ready"))?,
        "--kubeconfig".into(),
        s(dir.join("bench-scale.kubeconfig"))?,
        "--agent-log".into(),
        s(node.dirs.logs.join("agent.log"))?,
        "--report".into(),
        s(report.clone())?,
        "--label-changes".into(),
        args.label_changes.to_string(),
        "--churn-rate".into(),
        args.churn_rate.to_string(),
        "--churn-secs".into(),
        args.churn_secs.to_string(),
        "--".into(),
        s(release.join("weir-agent"))?,
        "run".into(),
        "--node-name".into(),
        node.name.clone(),
        "--cluster-cidr".into(),
        CLUSTER_CIDR.into(),
        "--cni-conf-dir".into(),
        s(node.dirs.cni_conf.clone())?,
        "--cni-data-dir".into(),
        s(node.dirs.cni_data.clone())?,
        "--run-dir".into(),
        s(node.dirs.run.clone())?,
        "--bpf-pin-dir".into(),
        s(node.pin_dir.clone())?,
        "--cni-bin-dir".into(),
        cni_path,
        "--no-socket-lb".into(),
    ];
    argv.shrink_to_fit();
    let log = node.dirs.logs.join("bench-scale.log");
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    // The agent logs warnings only: a log line per object at this size
    // would measure the log.
    let mut child = node.netns.spawn(&argv_ref, &[("WEIR_LOG", "warn")], &log, node.detached())?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        ensure!(Instant::now() < deadline, "bench-scale still running after 30 min");
        thread::sleep(Duration::from_millis(200));
    };
    let tail = || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    ensure!(status.success(), "weir-dev bench-scale failed ({status}):\n{}", tail());
    let text = fs::read(&report).with_context(|| format!("read {}", report.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

/// The synthetic cluster's pod CIDR (`devtools/src/bench_scale/cluster.rs`).
pub const CLUSTER_CIDR: &str = "10.128.0.0/9";

fn print(args: &ScaleBenchArgs, reports: &[([usize; 4], std::result::Result<Value, String>)]) {
    println!("\nbench scale: the agent on its kube source, one node's view of the cluster");
    println!(
        "(pod churn: {} changes/s for {} s: 70% status updates, 15% relabels, 15% pods replaced)\n",
        args.churn_rate, args.churn_secs
    );
    for (size, r) in reports {
        println!("{}", label(*size));
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                println!("  not measured: {e}\n");
                continue;
            }
        };
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let changes = Summary::new(
            r["label_change_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).map(|m| Duration::from_secs_f64(m / 1e3)).collect())
                .unwrap_or_default(),
        );
        let lists: Vec<String> = r["list_bytes"]
            .as_array()
            .map(|a| {
                a.iter().filter_map(|kv| Some(format!("{} {:.1} MB", kv[0].as_str()?, kv[1].as_f64()? / 1e6))).collect()
            })
            .unwrap_or_default();
        let goal = |ok: bool| if ok { "met" } else { "NOT met" };
        println!("  objects served              {} (generated in {:.1} s)", r["objects"], f("generate_s"));
        println!("  first lists received        {}", lists.join(", "));
        println!("  start to node ready         {:.2} s   (pods can start)", f("node_ready_s"));
        println!(
            "  start to ready (/readyz)    {:.2} s   (every list programmed; goal < {GOAL_READY_S} s: {})",
            f("ready_s"),
            goal(f("ready_s") < GOAL_READY_S)
        );
        println!(
            "  RSS at ready                {:.1} MiB (peak {:.1} MiB; goal < {GOAL_RSS_MIB} MiB: {})",
            f("rss_ready_mib"),
            f("rss_peak_ready_mib"),
            goal(f("rss_ready_mib") < GOAL_RSS_MIB)
        );
        println!("  idle CPU                    {:.3} cores", f("idle_cpu_cores"));
        if let Some(p99) = changes.p99() {
            println!(
                "  label change -> ipcache     p50 {} ms, p99 {} ms, max {} ms over {} (goal p99 < {GOAL_CHANGE_P99_MS} ms: {})",
                ms(changes.median()),
                ms(Some(p99)),
                ms(changes.percentile(100.0)),
                args.label_changes,
                goal(p99.as_secs_f64() * 1e3 < GOAL_CHANGE_P99_MS)
            );
        }
        println!(
            "  pod churn                   {} changes in {:.1} s: {:.3} cores, {:.3} cores per 1,000 changes/s",
            r["churn_changes"],
            f("churn_secs"),
            f("churn_cpu_cores"),
            f("cpu_cores_per_1k_changes_per_s")
        );
        println!("  bytes received per change   {:.0} B", f("bytes_per_pod_change"));
        println!(
            "  after a forced relist (410) label change -> ipcache {:.0} ms; RSS {:.1} MiB, peak {:.1} MiB",
            f("relist_label_change_ms"),
            f("rss_after_relist_mib"),
            f("rss_peak_mib")
        );
        println!();
    }
}
