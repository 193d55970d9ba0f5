//! What a weir binary does around its command: logs to stderr filtered by
//! `$WEIR_LOG`, a runtime with two workers (as the agent has on a node, so
//! `weir-dev`'s benchmarks time the agent's code on the runtime it runs
//! on), and the error, if any, logged as the exit.
use std::{future::Future, io::IsTerminal as _, process::ExitCode};

use tracing_subscriber::EnvFilter;

/// Runs `command` to completion; `name` prefixes the one error that cannot
/// be logged (no runtime).
pub fn main(name: &str, command: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Hands memory the allocator holds but no longer uses back to the kernel.
/// glibc keeps freed heap for reuse, so the peak of a list of every Pod of
/// the cluster (decoded page, converted objects) stayed in the agent's RSS
/// for good; called after a relist has been applied, which is rare.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims the allocator's own heaps.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
