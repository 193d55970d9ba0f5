//! The BPF filesystem, where the agent pins maps and programs and weir-cni
//! pins the tcx links it attaches.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{
    cleanup::{self, BPFFS},
    exec,
};

pub fn is_mounted() -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    Ok(cleanup::parse_mounts_with_type(&info).iter().any(|(p, t)| p == Path::new(BPFFS) && t == "bpf"))
}

/// Mounts bpffs on /sys/fs/bpf unless it is there; true if it mounted it.
pub fn ensure_mounted() -> Result<bool> {
    if is_mounted()? {
        return Ok(false);
    }
    exec::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]), exec::DEFAULT_TIMEOUT)
        .context("mount bpffs on /sys/fs/bpf")?;
    Ok(true)
}
