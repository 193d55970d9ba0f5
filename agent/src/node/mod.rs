//! Node plumbing: everything the agent changes on the node besides eBPF maps.

pub mod cgroup2;
pub mod cni_versions;
pub mod files;
pub mod health_check;
pub mod host_addrs;
pub mod masquerade;
pub mod policy_socket;
pub mod routes;
pub mod sysctl;
