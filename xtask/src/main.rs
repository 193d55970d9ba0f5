//! Developer entry points: `cargo xtask <command>` (alias in .cargo/config.toml).

mod bench;
mod cargo;
mod image;
mod kind_e2e;
mod matrix;
mod sandbox;
mod sandbox_family;
mod sandbox_policy;
mod sandbox_policy_v6;
mod sandbox_services;
mod setup;
mod test_suite;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "weir developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks (apt packages, rust-src for the nightly,
    /// bpf-linker 0.10.x) and mount bpffs. Idempotent; quick when nothing is missing.
    Setup,
    /// Setup, build, then unit tests and (as root) the privileged namespace tests.
    Test(test_suite::TestArgs),
    /// A 2-node cluster in network namespaces (dual-stack unless
    /// --ip-family says otherwise) with agents and pods, a ping + HTTP
    /// matrix across it per family, and the Service and policy demos.
    Sandbox(sandbox::SandboxArgs),
    /// Benchmarks (print tables; not tests).
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// weir's container image as an archive, without a Docker engine: an OCI
    /// layout (+ docker's manifest.json) from the release binaries, iptables,
    /// busybox and CA certificates of this host. `ctr images import`,
    /// `kind load image-archive` and `docker load` take it.
    Image(image::ImageArgs),
    /// weir on a kind cluster (docker, kind, kubectl): build the image,
    /// create the cluster, install, check pods, Services, NetworkPolicy.
    /// Exits 2 without testing anything when a prerequisite is missing.
    KindE2e(kind_e2e::KindE2eArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Setup => setup::run(setup::Mode::Strict).map(|_| ExitCode::SUCCESS),
        Command::Test(args) => test_suite::run(args),
        Command::Sandbox(args) => sandbox::run(args),
        Command::Bench { which } => bench::run(which).map(|_| ExitCode::SUCCESS),
        Command::Image(args) => image::run(args),
        Command::KindE2e(args) => kind_e2e::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
