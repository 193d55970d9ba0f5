//! The parent's side of the hidden subcommands: echo servers started in
//! backend pods, one slice of load run from a client pod, and what the load
//! generator reported.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weir_testbed::{Node, Pod, exec, netns::NetNs, process::ChildGuard};

use crate::bench::stats::Summary;

/// What the load generator reported for one cell.
/// One cell, summed over its rounds.
#[derive(Clone, Debug, Default)]
pub(in crate::bench) struct Load {
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) elapsed: Duration,
    /// Per connection: socket() to the reply's first byte.
    pub(super) samples: Vec<Duration>,
    pub(super) backends: BTreeMap<String, u64>,
    /// Connections per second of each slice (the spread shows the noise).
    pub(super) slice_rates: Vec<f64>,
    /// Entries from this cell's client pod in the node namespace's
    /// conntrack table after its last slice.
    pub(super) conntrack: Option<usize>,
}

impl Load {
    pub(in crate::bench) fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(in crate::bench) fn merge(&mut self, other: Load) {
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
    pub(in crate::bench) fn spread(&self) -> Option<f64> {
        let (min, max) = self.slice_rates.iter().fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
        let mean = self.slice_rates.iter().sum::<f64>() / self.slice_rates.len() as f64;
        (self.slice_rates.len() > 1 && mean > 0.0).then(|| (max - min) / 2.0 / mean)
    }

    /// (p50, p99) in microseconds.
    pub(in crate::bench) fn latency_us(&self) -> (f64, f64) {
        let s = Summary::new(self.samples.clone());
        let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
        (us(s.median()), us(s.p99()))
    }
}

/// How a backend's echo server runs.
pub(in crate::bench) struct EchoParams {
    pub port: u16,
    pub cpu: usize,
    pub threads: usize,
    pub nice: i32,
}

/// Starts `bench services-echo` in `pod` and waits until it listens.
pub(in crate::bench) fn spawn_echo(
    node: &Node,
    pod: &Pod,
    xtask: &str,
    label: &str,
    p: &EchoParams,
) -> Result<ChildGuard> {
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

/// How one slice of load is generated.
pub(in crate::bench) struct LoadParams {
    pub secs: f64,
    pub warmup: f64,
    pub streams: usize,
    pub cpu: usize,
    pub nice: i32,
}

/// Runs the load generator (`bench services-load`) in `client` against
/// `targets` (one per connection, in turn) for one slice.
pub(in crate::bench) fn run_load(
    xtask: &Path,
    client: &NetNs,
    targets: &[SocketAddr],
    cgroup: Option<&Path>,
    p: &LoadParams,
) -> Result<Load> {
    let mut cmd = client.command(xtask)?;
    let targets: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
    cmd.args(["bench", "services-load", "--target"])
        .arg(targets.join(","))
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
