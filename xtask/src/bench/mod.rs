//! `cargo xtask bench ...`: measurements printed as tables, never asserted.

mod cni;
mod stats;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Which {
    /// ADD and DEL latency of weir-cni next to the reference bridge +
    /// host-local plugins, sequential and parallel, in the same run.
    Cni(cni::CniBenchArgs),
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Cni(args) => cni::run(args),
    }
}
