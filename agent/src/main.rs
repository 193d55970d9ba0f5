//! weir-agent: the per-node DaemonSet agent.
use weir_agent::{
    app, cleanup, config,
    observe::{flows, inspect},
};

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = config::Cli::parse();
    weir_agent::process::main("weir-agent", async {
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
            config::Command::Observe(args) => {
                // Safety: as for inspect, piped into `head`.
                unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
                flows::cli::run(args).await
            }
        }
    })
}
