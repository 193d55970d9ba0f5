//! The control-plane halves of the benches: a `weir-dev bench-*`
//! subcommand (release build) in a network namespace of its own, its JSON
//! report.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weir_testbed::{Topology, exec, netns::NetNs};

/// Runs `weir-dev <args>` from `release` with `env` in a namespace of the
/// run and parses the last JSON line of its output. Its own namespace: it
/// attaches nothing, but nothing of it lands in the root namespace either
/// way. Pins under /sys/fs/bpf/weir-bench-*, removed by weir-dev.
pub(super) fn report(
    topo: &Topology,
    release: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Value> {
    let what = args.first().copied().unwrap_or("weir-dev");
    let ns = NetNs::create(&topo.prefix().child("cp"))?;
    let mut cmd = ns.command(release.join("weir-dev"))?;
    cmd.args(args).envs(env.iter().copied());
    exec::die_with_parent(&mut cmd);
    println!("==> {}", exec::describe(&cmd));
    let out = exec::output(&mut cmd, None, timeout)?;
    if !out.success() {
        bail!("{what} {}: {}", out.describe_status(), out.stderr_str().trim());
    }
    let text = out.stdout_str();
    let line =
        text.lines().rev().find(|l| l.trim_start().starts_with('{')).with_context(|| format!("no JSON from {what}"))?;
    serde_json::from_str(line).with_context(|| format!("parse {what}'s JSON"))
}
