//! Types shared by the kernel programs (`weir-ebpf`) and user space
//! (`weir-agent`, `weir-cni`).
//!
//! Every type here is `#[repr(C)]` with explicit padding and a size assertion:
//! the kernel and user space must agree on the byte layout of every map key and
//! value, and a silently inserted padding byte would make lookups miss.
#![no_std]

pub mod crc32c;
pub mod endpoint;
pub mod flow;
pub mod lb;
pub mod metrics;
pub mod pin;
pub mod policy;
#[cfg(feature = "stats")]
pub mod stats;

pub use endpoint::{EndpointInfo, EndpointKey};
pub use metrics::DropReason;
