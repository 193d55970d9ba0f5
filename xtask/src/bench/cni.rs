//! ADD+DEL latency: weir-cni (on node n1, agent running, so the tcx attach
//! through bpfPinDir is included) against the reference `bridge` +
//! `host-local` (on node n2, its own config), measured in the same run.
//!
//! Only the plugin invocation is timed (exec, the plugin's work, result
//! parsing): pod namespaces are created beforehand and removed afterwards.
//! Sequential pods alternate weir/reference so a change in machine load hits
//! both alike.

use std::{
    path::PathBuf,
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
    /// Pods created at once.
    #[arg(long, default_value_t = 30)]
    parallel: usize,
    /// Time the debug build of weir-cni instead of a release build (the
    /// reference plugins are optimized Go binaries: debug is not comparable).
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

pub fn run(args: CniBenchArgs) -> Result<()> {
    if args.sequential == 0 || args.parallel == 0 || args.sequential.max(args.parallel) > 250 {
        bail!("--sequential and --parallel must be 1..=250 (each node has one /24)");
    }
    let weir_cni_dir = build(&args)?;

    let topo = Topology::builder("bench-cni").nodes(2).build()?;
    let agent = topo.start_agent("n1")?;
    let weir_node = topo.node("n1");
    let ref_node = topo.node("n2");
    // weir-cni alone: the reference has no portmap either.
    let weir = Side {
        label: "weir",
        node: weir_node,
        conflist: weir_node.agent_conflist()?.only(&["weir-cni"]),
        runtime: CniRuntime::new(
            Some(weir_node.netns.path()),
            vec![weir_cni_dir.clone(), PathBuf::from(bins::REFERENCE_PLUGIN_DIR)],
            &weir_node.dirs.cni_cache,
        ),
    };
    let reference = Side {
        label: "reference",
        node: ref_node,
        conflist: reference_conflist(ref_node)?,
        runtime: ref_node.runtime(),
    };
    println!(
        "bench cni {}: {} on n1 ({}, bpfPinDir {}), bridge+host-local on n2 ({})",
        topo.prefix(),
        weir_cni_dir.join("weir-cni").display(),
        weir_node.pod_cidr,
        weir_node.pin_dir.display(),
        ref_node.pod_cidr
    );

    // Warm-up: page cache, the bridge plugin creating cni0, first-use paths.
    for side in [&weir, &reference] {
        let slot = prepare(side, "warm", 1)?.pop().expect("one slot");
        timed_add(side, &slot)?;
        timed_del(side, &slot)?;
    }

    let (seq_weir, seq_ref) = sequential(&weir, &reference, args.sequential)?;
    let par_weir = parallel(&weir, args.parallel)?;
    let par_ref = parallel(&reference, args.parallel)?;
    drop(agent);

    print_table(&[
        (format!("sequential x{}", args.sequential), &seq_weir, &seq_ref),
        (format!("parallel x{}", args.parallel), &par_weir, &par_ref),
    ]);
    print_goals(&args, &seq_weir, &seq_ref, &par_weir);
    Ok(())
}

/// Makes sure of the tools and builds what is timed: the agent (not timed)
/// runs from the debug build; the timed plugin from a release build unless
/// --debug. The directory weir-cni is taken from.
fn build(args: &CniBenchArgs) -> Result<PathBuf> {
    setup::run(setup::Mode::Strict)?;
    if !args.no_build {
        cargo::build_bins()?;
    }
    weir_testbed::check_prerequisites(&[tools::IP, tools::BRIDGE, tools::HOST_LOCAL])?;
    Ok(if args.debug || args.no_build {
        bins::bin_dir()
    } else {
        cargo::must(cargo::cargo().args(["build", "--release", "-p", "weir-cni", "--bin", "weir-cni"]))?;
        bins::target_dir().join("release")
    })
}

/// `n` ADDs on each side, alternating, then `n` DELs alike.
fn sequential(weir: &Side, reference: &Side, n: usize) -> Result<(Samples, Samples)> {
    let (mut seq_weir, mut seq_ref) = (Samples::default(), Samples::default());
    let weir_slots = prepare(weir, "s", n)?;
    let ref_slots = prepare(reference, "s", n)?;
    for (w, r) in weir_slots.iter().zip(&ref_slots) {
        seq_weir.add.push(timed_add(weir, w)?);
        seq_ref.add.push(timed_add(reference, r)?);
    }
    for (w, r) in weir_slots.iter().zip(&ref_slots) {
        seq_weir.del.push(timed_del(weir, w)?);
        seq_ref.del.push(timed_del(reference, r)?);
    }
    Ok((seq_weir, seq_ref))
}

fn print_goals(args: &CniBenchArgs, seq_weir: &Samples, seq_ref: &Samples, par_weir: &Samples) {
    let goal_ratio = ratio(Summary::new(seq_weir.add.clone()).median(), Summary::new(seq_ref.add.clone()).median());
    let par_p99 = Summary::new(par_weir.add.clone()).p99();
    println!(
        "goal: weir median ADD <= 0.5 x reference (sequential): {} -> {}",
        goal_ratio.map_or("-".into(), |r| format!("{r:.2}")),
        verdict(goal_ratio.is_some_and(|r| r <= 0.5))
    );
    println!(
        "goal: p99 of {} parallel weir ADDs < 100 ms: {} ms -> {}",
        args.parallel,
        ms(par_p99),
        verdict(par_p99.is_some_and(|p| p < Duration::from_millis(100)))
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// bridge + host-local as the containernetworking-plugins README configures
/// them, with host-local's store in the node's scratch dir. No ipMasq: weir
/// leaves masquerading to the agent, so the plugins do comparable work.
fn reference_conflist(node: &Node) -> Result<Conflist> {
    Conflist::from_value(json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": node.pod_cidr }]],
                "dataDir": node.dirs.cni_data.join("host-local")
            }
        }]
    }))
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

/// `n` ADDs released together by a barrier, then `n` DELs likewise.
fn parallel(side: &Side, n: usize) -> Result<Samples> {
    let slots = prepare(side, "p", n)?;
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

fn print_table(rows: &[(String, &Samples, &Samples)]) {
    println!("\nCNI latency in ms (weir: weir-cni, agent running; reference: bridge + host-local)");
    println!(
        "{:<16} {:<4} {:>9} {:>8}   {:>9} {:>8}   {:>12} {:>8}",
        "", "", "weir", "", "reference", "", "weir / ref", ""
    );
    println!(
        "{:<16} {:<4} {:>9} {:>8}   {:>9} {:>8}   {:>12} {:>8}",
        "phase", "op", "median", "p99", "median", "p99", "median", "p99"
    );
    for (phase, w, r) in rows {
        for (op, ws, rs) in [("ADD", &w.add, &r.add), ("DEL", &w.del, &r.del)] {
            let (ws, rs) = (Summary::new(ws.to_vec()), Summary::new(rs.to_vec()));
            let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
            println!(
                "{:<16} {:<4} {:>9} {:>8}   {:>9} {:>8}   {:>12} {:>8}",
                phase,
                op,
                ms(ws.median()),
                ms(ws.p99()),
                ms(rs.median()),
                ms(rs.p99()),
                f(ratio(ws.median(), rs.median())),
                f(ratio(ws.p99(), rs.p99())),
            );
        }
    }
    println!();
}
