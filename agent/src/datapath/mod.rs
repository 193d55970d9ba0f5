//! The eBPF datapath as the agent sees it: the embedded object, loaded once
//! and pinned under the pin directory, where weir-cni finds it at ADD.
//!
//! Maps are pinned by name and reused across agent restarts (the loader opens
//! an existing pin instead of creating a new map), so pods keep working while
//! the agent is down or being upgraded.

mod aya_lb_maps;
mod aya_policy_maps;
pub mod lb_maps;
pub mod lb_programmer;
pub mod loader;
pub mod map_fill;
pub mod policy_maps;
pub mod policy_programmer;
pub mod policy_stats;
pub mod reattach;
pub mod socket_lb;
pub mod uplink;

pub use loader::Datapath;

#[cfg(test)]
mod prog_test_run;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lb;
#[cfg(test)]
mod tests_netdev;
#[cfg(test)]
mod tests_policy;
#[cfg(test)]
mod tests_socket;
