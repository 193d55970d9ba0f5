//! `weir-dev`'s command line: the subcommands and flags the agent binary
//! carried as hidden subcommands before they moved here.
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weir-dev",
    version,
    about = "weir development tools: a fake Kubernetes API server, control-plane benchmarks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Developer benchmark (root): program N synthetic Services into a
    /// private copy of the maps, then time single EndpointSlice changes.
    /// Prints one JSON object. `cargo xtask bench services` runs it.
    BenchControlPlane {
        #[arg(long, default_value_t = 10_000)]
        services: u32,
        #[arg(long, default_value_t = 4)]
        endpoints: u32,
        #[arg(long, default_value_t = 1_000)]
        changes: u32,
    },
    /// Developer benchmark (root): compile and program N synthetic
    /// policies over M pods (100 of them local) into a private copy of the
    /// maps, then time single label and policy changes. Prints one JSON
    /// object. `cargo xtask bench policy` runs it.
    BenchPolicyControlPlane {
        #[arg(long, default_value_t = 1_000)]
        pods: usize,
        #[arg(long, default_value_t = 1_000)]
        policies: usize,
        #[arg(long, default_value_t = 400)]
        changes: usize,
    },
    /// Developer benchmark (root, in a node namespace of its own): the
    /// agent on its kube source against a fake API server loaded with a
    /// synthetic cluster; start to ready, RSS, label change to the policy
    /// maps, CPU and bytes per pod change, a forced relist. Prints one
    /// JSON object. `cargo xtask bench scale` runs it.
    BenchScale(crate::bench_scale::Args),
    /// A fake Kubernetes API server (plain HTTP, read-only) serving a
    /// manifest directory to the kube source. The test bed and
    /// `cargo xtask sandbox --source kube` run it.
    FakeApiserver(crate::fake_api::Args),
}
