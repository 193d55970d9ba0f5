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
    let status = cmd.status().with_context(|| format!("cannot start `{line}`"))?;
    Ok(status.success())
}

/// What `cargo test` runners reported, summed over every test binary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestCounts {
    /// Adds one runner's closing line, e.g.
    /// `test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; ...`.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Like `status` for `cargo test`: output passes through as it comes, and
/// every runner's result line is added to `counts`.
pub fn test_status(cmd: &mut Command, counts: &mut TestCounts) -> Result<bool> {
    use std::io::{BufRead as _, BufReader};
    let line = weir_testbed::exec::describe(cmd);
    println!("==> {line}");
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("cannot start `{line}`"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    for l in BufReader::new(stdout).lines() {
        let l = l.with_context(|| format!("reading the output of `{line}`"))?;
        println!("{l}");
        counts.add_line(&l);
    }
    Ok(child.wait().with_context(|| format!("waiting for `{line}`"))?.success())
}

/// Like `status`, but a non-zero exit is an error.
pub fn must(cmd: &mut Command) -> Result<()> {
    if !status(cmd)? {
        bail!("`{}` failed", weir_testbed::exec::describe(cmd));
    }
    Ok(())
}

/// `cargo build --workspace --bins` (less the kernel crate): weir-cni,
/// weir-agent (which embeds the kernel programs), weir-dev (the fake API
/// server the kube-source tests and the sandbox run) and xtask.
pub fn build_bins() -> Result<()> {
    must(cargo().args(["build", "--workspace", "--bins"]).args(EXCLUDE_KERNEL_CRATE))
}

/// The formatting and lint gate: `cargo fmt --check` over every crate
/// (the kernel one included: rustfmt needs no target), then clippy with
/// warnings as errors over the host crates. Every check runs; the names of
/// the failed ones come back.
pub fn lint_gate() -> Result<Vec<&'static str>> {
    let mut failed = Vec::new();
    if !status(cargo().args(["fmt", "--all", "--check"]))? {
        failed.push("cargo fmt --all --check (run `cargo fmt --all`)");
    }
    if !status(
        cargo()
            .args(["clippy", "--workspace", "--all-targets"])
            .args(EXCLUDE_KERNEL_CRATE)
            .args(["--", "-D", "warnings"]),
    )? {
        failed.push("cargo clippy --workspace --all-targets -- -D warnings");
    }
    Ok(failed)
}

#[cfg(test)]
mod count_tests {
    use super::TestCounts;

    #[test]
    fn sums_runner_result_lines() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.1s");
        c.add_line("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        c.add_line("test foo ... ok");
        assert_eq!(c, TestCounts { passed: 13, failed: 2, ignored: 3 });
    }
}
