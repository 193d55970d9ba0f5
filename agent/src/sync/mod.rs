//! Keeping the datapath equal to what the model wants, one job per module:
//! - `services`: the service maps and the healthCheckNodePort servers, one
//!   dirty Service at a time;
//! - `policy`: the NetworkPolicy maps, compiled as a whole and applied as a
//!   diff;
//! - `handoff`: weir-cni's requests for a new pod's policy, held until the
//!   pod's entries are written (or their time runs out);
//! - `names`: the names behind the numbers in the policy maps, for
//!   `weir-agent inspect` (a separate process).
pub mod handoff;
pub mod names;
pub mod policy;
pub mod services;
