//! Arguments shared by the bench subcommands, flattened into each.

use anyhow::{Result, ensure};
use clap::Args;

/// What `bench services` and `bench policy` both take: how each cell's
/// traffic is measured and pinned, which halves run, which binaries.
#[derive(Args, Clone, Debug)]
pub struct CommonBenchArgs {
    /// Seconds measured per cell (split over the rounds).
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Rounds per size: each runs every column for secs/rounds in turn, so
    /// a change in machine load (2 shared cores) hits every column alike.
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Nice value of the load generator and echo servers (the 2 cores are
    /// shared with other work; 0 leaves the priority alone).
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    pub nice: i32,
    /// CPU of the load generator.
    #[arg(long, default_value_t = 0)]
    pub client_cpu: usize,
    /// CPU of the echo servers.
    #[arg(long, default_value_t = 1)]
    pub server_cpu: usize,
    /// Data path only.
    #[arg(long, conflicts_with = "no_data_path")]
    pub no_control_plane: bool,
    /// Control plane only.
    #[arg(long)]
    pub no_data_path: bool,
    #[command(flatten)]
    pub build: ReleaseArgs,
}

impl CommonBenchArgs {
    /// The bounds every data-path bench holds to; `warmup` is the bench's
    /// own (its default and meaning differ between them).
    pub fn check(&self, warmup: f64) -> Result<()> {
        ensure!(self.secs > 0.0 && warmup >= 0.0, "--secs must be > 0 and --warmup >= 0");
        ensure!((1..=20).contains(&self.rounds), "--rounds must be 1..=20");
        Ok(())
    }
}

/// The release binaries the benches time: built first unless told not to.
#[derive(Args, Clone, Debug)]
pub struct ReleaseArgs {
    /// Use the release binaries already in target/release.
    #[arg(long)]
    pub no_build: bool,
}
