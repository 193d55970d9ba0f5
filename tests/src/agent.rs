//! `weir-agent` running in a node namespace on the manifest-dir source.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bins,
    process::ChildGuard,
    topology::{CLUSTER_CIDR, Node},
};

/// Written by the agent once the node is set up (docs/contracts.md).
pub const READY_FILE: &str = "agent-ready";

pub struct Agent {
    guard: ChildGuard,
    node: String,
    log: PathBuf,
    ready_file: PathBuf,
}

impl Agent {
    /// Starts the agent (does not wait; see `wait_ready`). Its output goes to
    /// `<node dir>/logs/agent.log`.
    pub fn spawn(node: &Node, manifest_dir: &Path) -> Result<Self> {
        Self::spawn_with(node, manifest_dir, None)
    }

    /// Like `spawn`; with `socket_lb_cgroup`, connect-time Service load
    /// balancing is attached to that cgroup v2 directory (one the caller
    /// made, holding only the processes meant to use it) instead of being
    /// turned off.
    pub fn spawn_with(node: &Node, manifest_dir: &Path, socket_lb_cgroup: Option<&Path>) -> Result<Self> {
        let binary = bins::weir_agent()?;
        let path = |p: &Path| p.to_str().map(str::to_string).context("non-UTF-8 path");
        let mut args: Vec<String> = vec![
            path(&binary)?,
            "run".into(),
            "--node-name".into(),
            node.name.clone(),
            "--source".into(),
            format!("dir:{}", path(manifest_dir)?),
            "--cluster-cidr".into(),
            CLUSTER_CIDR.into(),
            "--cni-conf-dir".into(),
            path(&node.dirs.cni_conf)?,
            "--cni-data-dir".into(),
            path(&node.dirs.cni_data)?,
            "--run-dir".into(),
            path(&node.dirs.run)?,
            "--bpf-pin-dir".into(),
            path(&node.pin_dir)?,
            // Where the chained plugins are: the agent asks them which
            // cniVersion to write.
            "--cni-bin-dir".into(),
            std::env::join_paths(crate::bins::cni_path())?.into_string().map_err(|p| anyhow::anyhow!("non-UTF-8 CNI path {p:?}"))?,
        ];
        match socket_lb_cgroup {
            Some(cgroup) => args.extend(["--socket-lb-cgroup".into(), path(cgroup)?]),
            // Connect-time load balancing attaches to a cgroup for every
            // process in it; the test bed's nodes share the machine's
            // cgroups, so pods use the per-packet path here.
            None => args.push("--no-socket-lb".into()),
        }
        let log = node.dirs.logs.join("agent.log");
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        // The caller's WEIR_LOG wins (spawn keeps the environment).
        let env: &[(&str, &str)] = if std::env::var_os("WEIR_LOG").is_none() {
            &[("WEIR_LOG", "info")]
        } else {
            &[]
        };
        let guard = node.netns.spawn(&argv, env, &log, node.detached())?;
        Ok(Self::new(guard, node, log))
    }

    fn new(guard: ChildGuard, node: &Node, log: PathBuf) -> Self {
        Self {
            guard,
            node: node.name.clone(),
            log,
            ready_file: node.dirs.run.join(READY_FILE),
        }
    }

    /// `$WEIR_AGENT_READY_TIMEOUT` seconds, 60 by default: building the
    /// datapath on a loaded 2-core machine takes a while.
    pub fn ready_timeout() -> Duration {
        let secs = std::env::var("WEIR_AGENT_READY_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        Duration::from_secs(secs)
    }

    /// Waits for `<runDir>/agent-ready`; fails early if the agent exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // The marker of this agent: a restarted agent finds its
            // predecessor's still there (kept on purpose, so the node stays
            // ready across restarts), with the predecessor's pid in it.
            if self.marker_is_mine() {
                return Ok(());
            }
            if let Some(status) = self.guard.try_wait() {
                bail!(
                    "weir-agent on {} exited before it was ready ({status}); last log lines:\n{}",
                    self.node,
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "weir-agent on {} not ready after {timeout:?} (no {}); last log lines:\n{}",
                    self.node,
                    self.ready_file.display(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn marker_is_mine(&self) -> bool {
        fs::read(&self.ready_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["pid"].as_u64())
            == Some(u64::from(self.pid()))
    }

    /// The node this agent runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.try_wait().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the agent now (SIGTERM, then SIGKILL).
    pub fn stop(mut self) {
        self.guard.stop();
    }

    /// Leaves the agent running (a kept sandbox).
    pub fn keep(self) {
        self.guard.forget();
    }
}
