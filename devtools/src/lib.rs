//! weir's development tools as a library: the `weir-dev` binary (`main.rs`)
//! is a thin command line over these modules. None of it runs on a node:
//! the DaemonSet image carries `weir-agent` and `weir-cni` only.
pub mod bench;
pub mod bench_policy;
pub mod bench_scale;
pub mod cli;
pub mod fake_api;
