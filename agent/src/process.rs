//! What a weir binary does around its command: logs to stderr filtered by
//! `$WEIR_LOG`, a runtime with two workers (as the agent has on a node, so
//! `weir-dev`'s benchmarks time the agent's code on the runtime it runs
//! on), and the error, if any, logged as the exit.
use std::{future::Future, io::IsTerminal as _, process::ExitCode};

use tracing_subscriber::EnvFilter;

/// mimalloc, for every binary built on this crate (the agent, and
/// `weir-dev`, whose benchmarks run the agent's code). With glibc's malloc
/// the agent's RSS at 150,000 pods was 420 MiB for 190 MB of live heap: the
/// Pod list is decoded on the runtime's workers, each with an arena of its
/// own, and the objects kept were spread over pages of the list's garbage,
/// which `malloc_trim` cannot return. mimalloc returns them (253 MiB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (mimalloc.h, the same in its v2 and v3; the
/// sys crate does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages go back to the kernel at once rather than after a delay
/// (10 ms by default, counted by the thread that owns them: an idle worker
/// never got to it, and 1.3 GiB of a relist's garbage stayed resident).
/// The agent allocates little after start-up, so the cost is nothing
/// measurable. `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, which may change at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// Runs `command` to completion; `name` prefixes the one error that cannot
/// be logged (no runtime).
pub fn main(name: &str, command: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    configure_allocator();
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

/// Hands memory the allocator holds but no longer uses back to the kernel:
/// called after a relist has been applied (which is rare), when the list's
/// garbage has just been freed.
pub fn release_freed_memory() {
    // SAFETY: collects mimalloc's own heaps; no pointer is handed over.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
