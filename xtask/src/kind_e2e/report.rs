//! The end of a run: the results table and the exit code.

use std::process::ExitCode;

use anyhow::Result;

use super::checks::Check;

/// How many checks failed; a run stopped early counts as one.
pub fn failed(outcome: &Result<Vec<Check>>) -> usize {
    match outcome {
        Ok(checks) => checks.iter().filter(|c| !c.ok).count(),
        Err(_) => 1,
    }
}

/// PASS/FAIL per check, or why the run stopped before the checks finished.
pub fn results(outcome: &Result<Vec<Check>>) {
    match outcome {
        Ok(checks) => {
            println!("\nkind-e2e: results");
            for c in checks {
                println!("  {}  {}", if c.ok { "PASS" } else { "FAIL" }, c.name);
            }
        }
        Err(e) => eprintln!("\nkind-e2e: stopped before the checks finished: {e:#}"),
    }
}

/// 0 when every check passed, 1 when one failed; a run stopped early is an
/// error.
pub fn exit_code(outcome: Result<Vec<Check>>, failed: usize) -> Result<ExitCode> {
    match outcome {
        Ok(checks) if failed == 0 => {
            println!("\nkind-e2e: all {} checks passed", checks.len());
            Ok(ExitCode::SUCCESS)
        }
        Ok(checks) => {
            eprintln!("\nkind-e2e: {failed} of {} checks FAILED", checks.len());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}
