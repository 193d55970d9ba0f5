//! weir-agent: the per-node DaemonSet agent.
use weir_agent::{app, cleanup, config, observe::inspect};

use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = config::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            config::Command::Run(args) => app::run(args.validate()?).await,
            config::Command::Cleanup(paths) => cleanup::run(paths).await,
            config::Command::Inspect { what, bpf_pin_dir, json, run_dir, from, to, port } => {
                // A command line tool piped into `head` just stops, as
                // cat does (Rust ignores SIGPIPE by default).
                // Safety: restoring the default disposition of one signal.
                unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
                let query = inspect::PolicyQuery { run_dir, from, to, port };
                inspect::run(what, &bpf_pin_dir, json, &query).await
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
