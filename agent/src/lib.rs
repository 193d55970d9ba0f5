//! weir-agent as a library: the binary (`main.rs`) is a thin command line
//! over these modules, and the test bed uses the pure model (the policy
//! evaluator is the oracle of the NetworkPolicy truth-table tests).
pub mod app;
pub mod bench;
pub mod bench_policy;
pub mod cleanup;
pub mod config;
pub mod datapath;
pub mod fake_api;
pub mod histogram;
pub mod inspect;
pub mod inspect_policy;
pub mod model;
pub mod node;
pub mod policy_sync;
pub mod services;
pub mod sources;
pub mod status;
