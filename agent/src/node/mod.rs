//! Node plumbing: everything the agent changes on the node besides eBPF maps.

pub mod cni_versions;
pub mod files;
pub mod health_check;
pub mod masquerade;
pub mod routes;
pub mod sysctl;
