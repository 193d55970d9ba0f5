//! ADD+DEL latency: weir-cni (on node n1, agent running, so the programs'
//! attachment through bpfPinDir and the policy hand-off with the agent are
//! included; both release builds) against two reference plugins, each on its
//! own node with its own config, measured in the same run: `bridge` +
//! `host-local` (n2) and `ptp` + `host-local` (n3).
//!
//! Only the plugin invocation is timed (exec, the plugin's work, result
//! parsing): pod namespaces are created beforehand and removed afterwards.
//! Sequential pods alternate weir/bridge/ptp so a change in machine load hits
//! all alike. Two parallel phases follow for every side: `--parallel` pods at
//! once (the goal's figure) and a larger `--parallel-large`.

use std::{
    path::{Path, PathBuf},
    sync::Barrier,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use weir_testbed::{
    Node, Pod, Topology, bins,
    cni::{Attachment, CniRuntime, Conflist},
    manifest::PodObject,
    netns::NetNs,
    tools,
    topology::write_manifest_file,
};

use super::stats::{Summary, ms, ratio};
use crate::{cargo, setup};

#[derive(Args)]
pub struct CniBenchArgs {
    /// Pods created one after the other.
    #[arg(long, default_value_t = 100)]
    sequential: usize,
    /// Pods created at once (the p99 goal's phase).
    #[arg(long, default_value_t = 30)]
    parallel: usize,
    /// Pods created at once in the second, larger parallel phase.
    #[arg(long, default_value_t = 100)]
    parallel_large: usize,
    /// Time the debug builds of weir-cni and the agent instead of release
    /// builds (the reference plugins are optimized Go binaries: debug is not
    /// comparable).
    #[arg(long)]
    debug: bool,
    /// Use the binaries already built (implies --debug).
    #[arg(long)]
    no_build: bool,
}

/// One side of the comparison.
struct Side<'a> {
    label: &'static str,
    node: &'a Node,
    conflist: Conflist,
    runtime: CniRuntime,
}

/// A pod namespace with its attachment, ready to be ADDed.
struct Slot {
    netns: NetNs,
    att: Attachment,
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// One phase's samples, per side.
struct Phase {
    name: String,
    weir: Samples,
    bridge: Samples,
    ptp: Samples,
}

impl Phase {
    fn new(name: String, [weir, bridge, ptp]: [Samples; 3]) -> Self {
        Self { name, weir, bridge, ptp }
    }
}

/// Each node has one /24 (and host-local the same range).
const MAX_PODS: usize = 250;

pub fn run(args: CniBenchArgs) -> Result<()> {
    for (flag, n) in
        [("--sequential", args.sequential), ("--parallel", args.parallel), ("--parallel-large", args.parallel_large)]
    {
        if n == 0 || n > MAX_PODS {
            bail!("{flag} must be 1..={MAX_PODS} (each node has one /24), not {n}");
        }
    }
    let weir_cni_dir = build(&args)?;

    let topo = Topology::builder("bench-cni").nodes(3).build()?;
    let agent = topo.start_agent("n1")?;
    let weir_node = topo.node("n1");
    let bridge_node = topo.node("n2");
    let ptp_node = topo.node("n3");
    // weir-cni alone: the references have no portmap either.
    let sides = [
        Side {
            label: "weir",
            node: weir_node,
            conflist: weir_node.agent_conflist()?.only(&["weir-cni"]),
            runtime: CniRuntime::new(
                Some(weir_node.netns.path()),
                vec![weir_cni_dir.clone(), PathBuf::from(bins::REFERENCE_PLUGIN_DIR)],
                &weir_node.dirs.cni_cache,
            ),
        },
        Side {
            label: "bridge",
            node: bridge_node,
            conflist: bridge_conflist(bridge_node)?,
            runtime: bridge_node.runtime(),
        },
        Side { label: "ptp", node: ptp_node, conflist: ptp_conflist(ptp_node)?, runtime: ptp_node.runtime() },
    ];
    println!(
        "bench cni {}: {} on n1 ({}, bpfPinDir {}), bridge+host-local on n2 ({}), ptp+host-local on n3 ({})",
        topo.prefix(),
        weir_cni_dir.join("weir-cni").display(),
        weir_node.pod_cidr,
        weir_node.pin_dir.display(),
        bridge_node.pod_cidr,
        ptp_node.pod_cidr
    );

    // Warm-up: page cache, the bridge plugin creating cni0, first-use paths.
    for side in &sides {
        let slot = prepare(side, "warm", 1)?.pop().expect("one slot");
        timed_add(side, &slot)?;
        timed_del(side, &slot)?;
    }

    let mut phases = vec![Phase::new(format!("sequential x{}", args.sequential), sequential(&sides, args.sequential)?)];
    for (tag, n) in [("p", args.parallel), ("pl", args.parallel_large)] {
        let [weir, bridge, ptp] = &sides;
        let per_side = [parallel(weir, tag, n)?, parallel(bridge, tag, n)?, parallel(ptp, tag, n)?];
        phases.push(Phase::new(format!("parallel x{n}"), per_side));
    }
    drop(agent);

    print_table(&phases);
    print_goals(&args, &phases[0], &phases[1], &phases[2]);
    Ok(())
}

/// Makes sure of the tools and builds what is timed: weir-cni and the agent
/// from a release build unless --debug (the agent is part of an ADD: it puts
/// the new pod's policy in place before ADD returns, as on a real node).
/// The directory weir-cni is taken from.
fn build(args: &CniBenchArgs) -> Result<PathBuf> {
    setup::run(setup::Mode::Strict)?;
    if !args.no_build {
        cargo::build_bins()?;
    }
    weir_testbed::check_prerequisites(&[tools::IP, tools::BRIDGE, tools::HOST_LOCAL])?;
    // The test bed has no tool entry for ptp: the same package as bridge.
    let ptp = Path::new(bins::REFERENCE_PLUGIN_DIR).join("ptp");
    if !ptp.is_file() {
        bail!(
            "the reference ptp plugin is missing: no {} (Debian package {}, which `cargo xtask setup` installs)",
            ptp.display(),
            tools::BRIDGE.package
        );
    }
    if args.debug || args.no_build {
        return Ok(bins::bin_dir());
    }
    cargo::must(cargo::cargo().args(["build", "--release", "-p", "weir-cni", "-p", "weir-agent", "--bins"]))?;
    let release = bins::target_dir().join("release");
    // SAFETY: no other thread exists yet (the test bed starts its signal
    // thread when the topology is built).
    unsafe { std::env::set_var("WEIR_BIN_DIR", &release) };
    Ok(release)
}

/// `n` ADDs on each side, alternating weir/bridge/ptp per pod, then `n` DELs
/// alike.
fn sequential(sides: &[Side; 3], n: usize) -> Result<[Samples; 3]> {
    let mut samples: [Samples; 3] = Default::default();
    let slots = sides.iter().map(|side| prepare(side, "s", n)).collect::<Result<Vec<_>>>()?;
    for i in 0..n {
        for ((side, slots), s) in sides.iter().zip(&slots).zip(&mut samples) {
            s.add.push(timed_add(side, &slots[i])?);
        }
    }
    for i in 0..n {
        for ((side, slots), s) in sides.iter().zip(&slots).zip(&mut samples) {
            s.del.push(timed_del(side, &slots[i])?);
        }
    }
    Ok(samples)
}

fn print_goals(args: &CniBenchArgs, seq: &Phase, par: &Phase, large: &Phase) {
    let fmt_ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}"));
    let half = |r: Option<f64>| verdict(r.is_some_and(|r| r <= 0.5));
    let median = |s: &[Duration]| Summary::new(s.to_vec()).median();
    let p99 = |s: &[Duration]| Summary::new(s.to_vec()).p99();
    for (op, weir, bridge, ptp) in
        [("ADD", &seq.weir.add, &seq.bridge.add, &seq.ptp.add), ("DEL", &seq.weir.del, &seq.bridge.del, &seq.ptp.del)]
    {
        let vs_bridge = ratio(median(weir), median(bridge));
        let vs_ptp = ratio(median(weir), median(ptp));
        println!(
            "goal: weir median {op} <= 0.5 x reference (sequential): vs bridge {} -> {}; vs ptp {} -> {}",
            fmt_ratio(vs_bridge),
            half(vs_bridge),
            fmt_ratio(vs_ptp),
            half(vs_ptp)
        );
    }
    let par_p99 = p99(&par.weir.add);
    println!(
        "goal: p99 of {} parallel weir ADDs < 100 ms: {} ms -> {} (bridge {} ms, ptp {} ms)",
        args.parallel,
        ms(par_p99),
        verdict(par_p99.is_some_and(|p| p < Duration::from_millis(100))),
        ms(p99(&par.bridge.add)),
        ms(p99(&par.ptp.add))
    );
    println!(
        "info: p99 of {} parallel weir ADDs: {} ms, no goal yet (bridge {} ms, ptp {} ms)",
        args.parallel_large,
        ms(p99(&large.weir.add)),
        ms(p99(&large.bridge.add)),
        ms(p99(&large.ptp.add))
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// bridge + host-local as the containernetworking-plugins README configures
/// them, with host-local's store in the node's scratch dir. No ipMasq: weir
/// leaves masquerading to the agent, so the plugins do comparable work.
fn bridge_conflist(node: &Node) -> Result<Conflist> {
    Conflist::from_value(json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": host_local(node)
        }]
    }))
}

/// ptp + host-local: a veth per pod with a host route, like weir (no
/// bridge), no ipMasq for the same reason as `bridge_conflist`.
fn ptp_conflist(node: &Node) -> Result<Conflist> {
    Conflist::from_value(json!({
        "cniVersion": "1.0.0",
        "name": "reference-ptp",
        "plugins": [{
            "type": "ptp",
            "ipMasq": false,
            "ipam": host_local(node)
        }]
    }))
}

/// host-local over the node's podCIDR, its store in the node's scratch dir.
fn host_local(node: &Node) -> serde_json::Value {
    json!({
        "type": "host-local",
        "ranges": [[{ "subnet": node.pod_cidr }]],
        "dataDir": node.dirs.cni_data.join("host-local")
    })
}

/// Pod namespaces and attachments. For weir, the Pod objects are published
/// first, as kubelet only starts sandboxes of pods the API server has: each
/// ADD then includes the policy hand-off with the agent (the pod's policy
/// put in place before ADD returns), as on a real node.
fn prepare(side: &Side, tag: &str, n: usize) -> Result<Vec<Slot>> {
    let slots: Vec<Slot> = (0..n)
        .map(|i| {
            let netns = NetNs::create(&side.node.pod_netns_name(&format!("{tag}{i}")))?;
            let att = Pod::attachment_for(side.node, &format!("{tag}{i}"), &netns);
            Ok(Slot { netns, att })
        })
        .collect::<Result<_>>()?;
    if side.label == "weir" {
        let docs: Vec<String> = slots
            .iter()
            .filter_map(|s| {
                let arg = |k: &str| s.att.cni_args.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                Some(PodObject::new(&arg("K8S_POD_NAMESPACE")?, &arg("K8S_POD_NAME")?).yaml(&side.node.name, None))
            })
            .collect();
        write_manifest_file(&side.node.manifest_dir, &format!("bench-cni-{tag}.yaml"), &docs)?;
        // The agent polls its manifest directory every 200 ms.
        thread::sleep(Duration::from_secs(1));
    }
    Ok(slots)
}

fn timed_add(side: &Side, slot: &Slot) -> Result<Duration> {
    let start = Instant::now();
    side.runtime.add(&side.conflist, &slot.att).with_context(|| format!("{} ADD {}", side.label, slot.netns.name()))?;
    Ok(start.elapsed())
}

fn timed_del(side: &Side, slot: &Slot) -> Result<Duration> {
    let start = Instant::now();
    side.runtime.del(&side.conflist, &slot.att).with_context(|| format!("{} DEL {}", side.label, slot.netns.name()))?;
    Ok(start.elapsed())
}

/// `n` ADDs released together by a barrier, then `n` DELs likewise. `tag`
/// keeps the pods' names apart from the other phases'.
fn parallel(side: &Side, tag: &str, n: usize) -> Result<Samples> {
    let slots = prepare(side, tag, n)?;
    let run_all = |op: fn(&Side, &Slot) -> Result<Duration>| -> Result<Vec<Duration>> {
        let barrier = Barrier::new(n);
        thread::scope(|s| {
            let handles: Vec<_> = slots
                .iter()
                .map(|slot| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        op(side, slot)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("bench thread panicked")).collect()
        })
    };
    let add = run_all(timed_add)?;
    let del = run_all(timed_del)?;
    Ok(Samples { add, del })
}

/// One row's cells: two groups of three times (median, p99) and two ratios.
fn row(phase: &str, op: &str, cells: [String; 10]) -> String {
    let [a, b, c, d, e, f, g, h, i, j] = cells;
    format!("{phase:<16} {op:<4}  {a:>8} {b:>8}   {c:>8} {d:>8}   {e:>8} {f:>8}   {g:>7} {h:>6}   {i:>7} {j:>6}")
}

fn print_table(phases: &[Phase]) {
    println!("\nCNI latency in ms (weir: weir-cni, agent running; bridge: bridge + host-local; ptp: ptp + host-local)");
    println!(
        "{:<16} {:<4}  {:^17}   {:^17}   {:^17}   {:^14}   {:^14}",
        "", "", "weir", "bridge", "ptp", "weir / bridge", "weir / ptp"
    );
    let header = std::array::from_fn(|i| if i % 2 == 0 { "median" } else { "p99" }.to_string());
    println!("{}", row("phase", "op", header));
    let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
    for p in phases {
        for (op, samples) in
            [("ADD", [&p.weir.add, &p.bridge.add, &p.ptp.add]), ("DEL", [&p.weir.del, &p.bridge.del, &p.ptp.del])]
        {
            let [w, b, t] = samples.map(|s| Summary::new(s.clone()));
            let cells = [
                ms(w.median()),
                ms(w.p99()),
                ms(b.median()),
                ms(b.p99()),
                ms(t.median()),
                ms(t.p99()),
                f(ratio(w.median(), b.median())),
                f(ratio(w.p99(), b.p99())),
                f(ratio(w.median(), t.median())),
                f(ratio(w.p99(), t.p99())),
            ];
            println!("{}", row(&p.name, op, cells));
        }
    }
    println!();
}
