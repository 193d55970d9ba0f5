//! Running cargo (and other commands) from the workspace root with the
//! output going straight to the terminal.

use std::process::Command;

use anyhow::{Context, Result, bail};
use weir_testbed::bins;

/// The kernel crate builds only for bpfel-unknown-none (through the agent's
/// build script); `--workspace` on the host must leave it out.
pub const EXCLUDE_KERNEL_CRATE: [&str; 2] = ["--exclude", "weir-ebpf"];

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(bins::workspace_root());
    cmd
}

/// Runs `cmd` with inherited stdio; Ok(false) when it exits non-zero.
pub fn status(cmd: &mut Command) -> Result<bool> {
    let line = weir_testbed::exec::describe(cmd);
    println!("==> {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    Ok(status.success())
}

/// Like `status`, but a non-zero exit is an error.
pub fn must(cmd: &mut Command) -> Result<()> {
    if !status(cmd)? {
        bail!("`{}` failed", weir_testbed::exec::describe(cmd));
    }
    Ok(())
}

/// `cargo build --workspace --bins` (less the kernel crate): weir-cni,
/// weir-agent (which embeds the kernel programs) and the tools.
pub fn build_bins() -> Result<()> {
    must(
        cargo()
            .args(["build", "--workspace", "--bins"])
            .args(EXCLUDE_KERNEL_CRATE),
    )
}
