//! The eBPF datapath as the agent sees it: the embedded object, loaded once
//! and pinned under the pin directory, where weir-cni finds it at ADD.
//!
//! Maps are pinned by name and reused across agent restarts (the loader opens
//! an existing pin instead of creating a new map), so pods keep working while
//! the agent is down or being upgraded.

pub mod lb;
pub mod loader;
mod map_error;
pub mod map_fill;
mod object_maps;
pub mod pinned;
pub mod policy;
pub mod reattach;
pub mod uplink;

pub use loader::Datapath;
pub use map_error::MapError;

#[cfg(test)]
pub mod fault;

#[cfg(test)]
mod prog_test_run;
#[cfg(test)]
mod tests;
