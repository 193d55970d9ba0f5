//! `cargo xtask bench ...`: measurements printed as tables, never asserted.

mod args;
mod cni;
mod metrics;
mod policy;
mod scale;
mod services;
mod stats;
mod weir_dev;

use anyhow::Result;
use clap::Subcommand;

pub use args::{CommonBenchArgs, ReleaseArgs};

#[derive(Subcommand)]
pub enum Which {
    /// ADD and DEL latency of weir-cni next to the reference bridge +
    /// host-local plugins, sequential and parallel, in the same run.
    Cni(cni::CniBenchArgs),
    /// New-connection rate and latency through a ClusterIP (weir per-packet
    /// and socket LB) next to direct pod IP and kube-proxy-style iptables,
    /// for 1, 1000 and 10000 Services; then the control plane at 10000;
    /// then /metrics under load (see `bench metrics`).
    Services(services::ServicesBenchArgs),
    /// Scrape latency of /metrics and the agent's /healthz latency while
    /// scrapes run, at 10,000 Services with a full conntrack map: map
    /// samples read inside the request (as before issue 10) next to the
    /// cached background read. The last part of `bench services`, alone.
    Metrics(metrics::MetricsBenchArgs),
    /// New-connection rate to a pod with 0, 100 and 1,000 NetworkPolicies
    /// side by side; flow events on vs off; a denied flood (agent CPU and
    /// memory, events held back, observe answering); then
    /// compile-and-program time and change-to-enforcement latency for 1,000
    /// policies over 1,000 pods.
    Policy(policy::PolicyBenchArgs),
    /// One agent's view of a large cluster (the fake API server serving a
    /// synthetic one): start to ready, RSS, label change to the policy
    /// maps, CPU and bytes per pod change, a forced relist; at 500 and
    /// 5,000 nodes.
    Scale(scale::ScaleBenchArgs),
    /// Internal: the load generator of `bench services` (one cell).
    #[command(hide = true)]
    ServicesLoad(services::LoadArgs),
    /// Internal: the echo server of `bench services` (one backend pod).
    #[command(hide = true)]
    ServicesEcho(services::EchoArgs),
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Cni(args) => cni::run(args),
        Which::Services(args) => services::run(args),
        Which::Metrics(args) => metrics::run(args),
        Which::Policy(args) => policy::run(args),
        Which::Scale(args) => scale::run(args),
        Which::ServicesLoad(args) => services::load(args),
        Which::ServicesEcho(args) => services::echo(args),
    }
}
