//! weir's test bed: clusters in network namespaces, a mini CNI runtime, and
//! guards for the processes and namespaces a test creates.
//!
//! Rules every user of this crate gets for free:
//! - all networking happens in namespaces the run creates, named
//!   `<prefix>-*` with a per-run prefix `w<6 hex>`; the root namespace's
//!   addresses, routes and links are never touched;
//! - everything is removed on drop, on panic (drop runs while unwinding),
//!   on Ctrl-C/SIGTERM (signal handler), and after a SIGKILL by the next run
//!   (owner markers in /run/weir-testbed), see `cleanup`.

pub mod agent;
pub mod bins;
pub mod bpffs;
pub mod cleanup;
pub mod cni;
pub mod containerd;
pub mod echo;
pub mod exec;
pub mod manifest;
pub mod netns;
pub mod oci;
pub mod pod;
pub mod policy_cluster;
pub mod probe;
pub mod process;
pub mod tools;
pub mod topology;

pub use agent::Agent;
pub use cleanup::RunPrefix;
pub use netns::NetNs;
pub use pod::Pod;
pub use topology::{Node, Topology};

use anyhow::{Result, bail};

/// Whether this process runs as root (the privileged tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root() -> Result<()> {
    if !is_root() {
        bail!(
            "this needs root (network namespaces, bpffs, veths). Run the privileged tests through \
             `cargo xtask test` as root; as another user it runs the unit tests only and says so"
        );
    }
    Ok(())
}

/// Root, the tools given, and the weir binaries; the error says what to do.
pub fn check_prerequisites(tools: &[tools::Tool]) -> Result<()> {
    require_root()?;
    let missing = tools::missing(tools);
    if !missing.is_empty() {
        bail!("{}", tools::missing_message(&missing));
    }
    bins::weir_cni()?;
    bins::weir_agent()?;
    Ok(())
}

/// The start of every privileged test. Panics with what to do instead of
/// skipping: a privileged test that cannot run must not look like a pass.
pub fn privileged(tools: &[tools::Tool]) {
    if let Err(e) = check_prerequisites(tools) {
        panic!("{e:#}");
    }
}
