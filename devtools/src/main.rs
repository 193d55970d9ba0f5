//! weir-dev: development tools over the agent's library (a fake API server,
//! the control-plane benchmarks). Not shipped in the node image.
use weir_devtools::{bench, bench_policy, bench_scale, cli, fake_api};

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    weir_agent::process::main("weir-dev", async {
        match cli.command {
            cli::Command::BenchControlPlane { services, endpoints, changes } => {
                let report = bench::run(services, endpoints, changes).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            cli::Command::FakeApiserver(args) => fake_api::run(args).await,
            cli::Command::BenchScale(args) => {
                let report = bench_scale::run(args).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            cli::Command::BenchPolicyControlPlane { pods, policies, changes } => {
                let report = bench_policy::run(pods, policies, changes)?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
        }
    })
}
