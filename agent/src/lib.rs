//! weir-agent as a library: the binary (`main.rs`) is a thin command line
//! over these modules, the test bed uses the pure model (the policy
//! evaluator is the oracle of the NetworkPolicy truth-table tests), and the
//! development tools (`weir-dev`, in `devtools/`) run the kube source, the
//! datapath and the syncs outside the agent binary.
pub mod app;
pub mod cleanup;
pub mod config;
pub mod datapath;
pub mod model;
pub mod node;
pub mod observe;
pub mod process;
pub mod reconcile;
pub mod sources;
pub mod sync;
