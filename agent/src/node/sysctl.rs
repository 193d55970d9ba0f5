//! Kernel settings the node needs to route pod traffic. Written through
//! /proc/sys/net, which is per network namespace (the agent runs in the
//! node's).
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot set {key}: {source}")]
pub struct SysctlError {
    pub key: String,
    pub source: std::io::Error,
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    let p = path(key);
    if std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&p, value).map_err(|source| SysctlError { key: key.into(), source })
}

/// Pods reach each other and other nodes through the node's routing table,
/// in every family the cluster has.
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> Result<(), SysctlError> {
    if ipv4 {
        set("net.ipv4.ip_forward", "1")?;
    }
    if ipv6 {
        set("net.ipv6.conf.all.forwarding", "1")?;
    }
    Ok(())
}
