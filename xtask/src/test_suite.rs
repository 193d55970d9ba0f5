//! `cargo xtask test`: setup, build, unit tests, then the privileged
//! namespace tests (root only). A run that could not do the privileged part
//! says so loudly and does not exit 0 unless `--unit-only` was asked for.

use std::{fs, path::Path, process::ExitCode};

use anyhow::Result;
use clap::Args;
use weir_testbed::{bins, is_root};

use crate::{
    cargo::{self, EXCLUDE_KERNEL_CRATE},
    setup,
};

/// Exit code of a non-root run that skipped the privileged tests.
const EXIT_SKIPPED: u8 = 2;

#[derive(Args)]
pub struct TestArgs {
    /// Run only the unit tests (no root needed); exits 0 if they pass.
    #[arg(long)]
    unit_only: bool,
    /// Skip the formatting and lint gate (`cargo fmt --check`, clippy with
    /// warnings as errors), e.g. while iterating on one test.
    #[arg(long)]
    no_lint: bool,
    /// Passed to every `cargo test` after `--` (e.g. a test name filter).
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: TestArgs) -> Result<ExitCode> {
    let root = is_root();
    let privileged = root && !args.unit_only;
    setup::run(if privileged { setup::Mode::Strict } else { setup::Mode::BestEffort })?;
    cargo::build_bins()?;
    // Formatting and lints first: cheap, and a red gate is a failed run
    // whatever the tests say.
    let lint_failures = if args.no_lint { Vec::new() } else { cargo::lint_gate()? };

    let mut counts = cargo::TestCounts::default();
    let ok = if privileged {
        // Everything: unit tests of every crate, the privileged ones the
        // crates mark `#[ignore = "privileged: ..."]`, the test bed's own,
        // and the namespace tests in tests/tests/.
        cargo::test_status(
            cargo::cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(EXCLUDE_KERNEL_CRATE)
                .args(["--", "--include-ignored"])
                .args(&args.test_args),
            &mut counts,
        )?
    } else {
        let others = cargo::test_status(
            cargo::cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(EXCLUDE_KERNEL_CRATE)
                .args(["--exclude", "weir-testbed", "--"])
                .args(&args.test_args),
            &mut counts,
        )?;
        let mut testbed_cmd = cargo::cargo();
        testbed_cmd.args(["test", "-p", "weir-testbed", "--lib"]);
        for t in UNPRIVILEGED_TEST_FILES {
            testbed_cmd.args(["--test", t]);
        }
        let testbed = cargo::test_status(testbed_cmd.arg("--").args(&args.test_args), &mut counts)?;
        others && testbed
    };

    // One closing line for the whole run: cargo's last runner line is often a
    // crate with no tests, which says nothing about the run.
    println!("\nweir: {} passed, {} failed, {} skipped", counts.passed, counts.failed, counts.ignored);
    for gate in &lint_failures {
        eprintln!("FAILED lint gate: {gate}");
    }
    let ok = ok && lint_failures.is_empty();
    if !privileged {
        let files = privileged_test_files();
        let ignored = count_privileged_ignored_tests();
        let why = if root { "--unit-only was given" } else { "they need root" };
        let bar = "!".repeat(78);
        eprintln!(
            "\n{bar}\nSKIPPED: {} privileged test files ({}) and {ignored} tests marked \
             #[ignore = \"privileged...\"] because {why}:",
            files.len(),
            files.join(", ")
        );
        eprintln!(
            "the namespace, datapath, CNI and containerd tests did NOT run. \
             Run `cargo xtask test` as root.\n{bar}"
        );
        if !ok {
            return Ok(ExitCode::FAILURE);
        }
        return Ok(if args.unit_only { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) });
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Tests the crates mark `#[ignore = "privileged: ..."]` (run as root with
/// `--include-ignored`), counted in their sources.
fn count_privileged_ignored_tests() -> usize {
    fn walk(dir: &Path, count: &mut usize) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            if path.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    walk(&path, count);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&path).unwrap_or_default();
                *count += count_marks(&text);
            }
        }
    }
    let mut count = 0;
    walk(&bins::workspace_root(), &mut count);
    count
}

const PRIVILEGED_MARK: &str = concat!("#[ignore = \"", "privileged");

fn count_marks(source: &str) -> usize {
    source.matches(PRIVILEGED_MARK).count()
}

/// tests/tests/*.rs that need no root (they run in every mode).
const UNPRIVILEGED_TEST_FILES: &[&str] = &["manifests"];

/// tests/tests/*.rs: each is a test binary of namespace tests.
fn privileged_test_files() -> Vec<String> {
    let dir = bins::workspace_root().join("tests").join("tests");
    let mut files: Vec<String> = fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".rs"))
                .filter(|n| !UNPRIVILEGED_TEST_FILES.iter().any(|u| n.as_str() == format!("{u}.rs")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_privileged_ignore_marks_only() {
        let src = concat!(
            "#[test]\n#[ignore = \"",
            "privileged: needs root\"]\nfn a() {}\n",
            "#[test]\n#[ignore = \"slow\"]\nfn b() {}\n",
            "#[test]\n#[ignore = \"",
            "privileged: bpffs\"]\nfn c() {}\n",
        );
        assert_eq!(count_marks(src), 2);
    }
}
