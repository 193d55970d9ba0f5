//! Where the binaries under test are.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { workspace_root().join(t) })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `$WEIR_BIN_DIR`, else `<target dir>/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_BIN_DIR") {
        return PathBuf::from(dir);
    }
    target_dir().join("debug")
}

/// The reference plugins from Debian's containernetworking-plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --bins` (or point WEIR_BIN_DIR at the directory holding it)",
            path.display()
        );
    }
    Ok(path)
}

pub fn weir_cni() -> Result<PathBuf> {
    binary("weir-cni")
}

pub fn weir_agent() -> Result<PathBuf> {
    binary("weir-agent")
}

/// The development tools (`devtools/`): the fake API server the kube
/// source runs against here, and the control-plane benchmarks.
pub fn weir_dev() -> Result<PathBuf> {
    binary("weir-dev")
}

/// CNI_PATH for weir's conflist: weir-cni's directory, then the reference plugins.
pub fn cni_path() -> Vec<PathBuf> {
    vec![bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)]
}
