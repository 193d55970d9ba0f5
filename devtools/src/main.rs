//! weir-dev: development tools over the agent's library (a fake API server,
//! the control-plane benchmarks). Not shipped in the node image.
use weir_devtools::{bench, bench_policy, cli, fake_api};

use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = cli::Cli::parse();
    // Two workers, as the agent runs with: the benchmarks time the agent's
    // code on the runtime it has on a node.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-dev: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::BenchControlPlane { services, endpoints, changes } => {
                let report = bench::run(services, endpoints, changes).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            cli::Command::FakeApiserver(args) => fake_api::run(args).await,
            cli::Command::BenchPolicyControlPlane { pods, policies, changes } => {
                let report = bench_policy::run(pods, policies, changes)?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
