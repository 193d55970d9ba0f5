//! The control-plane half: `weir-dev bench-control-plane` in a namespace
//! of its own, its JSON report.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weir_testbed::{Topology, exec, netns::NetNs};

use super::{ENDPOINTS, ServicesBenchArgs};

pub(super) struct ControlPlane {
    pub(super) report: std::result::Result<Value, String>,
}

pub(super) fn control_plane(topo: &Topology, release: &Path, args: &ServicesBenchArgs) -> ControlPlane {
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
