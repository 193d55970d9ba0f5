//! Every way the plugin can fail, with its CNI error code.
//!
//! Codes 0-99 are the spec's well-known codes; 100 and up are weir-cni's own:
//!
//! | code | meaning |
//! |---|---|
//! | 1 | unsupported `cniVersion`, or a command the configured version lacks |
//! | 3 | the container's network namespace does not exist |
//! | 4 | a `CNI_*` environment variable is missing or invalid |
//! | 5 | stdin could not be read |
//! | 6 | stdin is not a JSON object |
//! | 7 | the network configuration is invalid |
//! | 11 | the datapath pins are not there yet (agent starting): retry |
//! | 50 | STATUS: the node cannot take pods yet |
//! | 100 | no free address left in `podCIDR` |
//! | 101 | the IPAM store could not be read or written |
//! | 102 | this containerID/ifname already holds an address (DEL it first) |
//! | 103 | `CNI_IFNAME` already exists in the pod namespace |
//! | 104 | the host veth of this containerID/ifname already exists (DEL it first) |
//! | 105 | a netlink request failed |
//! | 106 | the pod namespace could not be opened or entered |
//! | 107 | a BPF map/program/link operation failed |
//! | 108 | CHECK found the attachment not as ADD left it |
//! | 109 | DEL or GC could not remove everything |

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::{
    attachment::Attachment, datapath::DatapathError, ipam::IpamError, netlink::NetlinkError, netns::NetnsError,
    version::CniVersion,
};

pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const IPAM_EXHAUSTED: u32 = 100;
    pub const IPAM_STORE: u32 = 101;
    pub const ALREADY_RESERVED: u32 = 102;
    pub const INTERFACE_EXISTS: u32 = 103;
    pub const HOST_VETH_EXISTS: u32 = 104;
    pub const NETLINK: u32 = 105;
    pub const NETNS: u32 = 106;
    pub const DATAPATH: u32 = 107;
    pub const CHECK_FAILED: u32 = 108;
    pub const CLEANUP: u32 = 109;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cniVersion {requested:?} is not supported; weir-cni supports {}", CniVersion::supported_list())]
    IncompatibleVersion { requested: String },
    #[error("{command} needs cniVersion {minimum} or later, but the configuration has {configured}")]
    CommandNeedsVersion { command: &'static str, minimum: CniVersion, configured: CniVersion },
    #[error("environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("cannot read {what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("cannot decode the network configuration on stdin: {reason}")]
    Decode { reason: String },
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "the weir datapath is not ready: {} does not exist (weir-agent pins it at startup); try again once the agent is running",
        path.display()
    )]
    DatapathNotReady { path: PathBuf },
    #[error("{reason}")]
    NotAvailable { reason: String },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(
        "interface {ifname} already exists in network namespace {}; CNI_IFNAME must name an interface that does not exist yet",
        netns.display()
    )]
    InterfaceExists { ifname: String, netns: PathBuf },
    #[error(
        "host interface {name} of {attachment} already exists: an earlier ADD was not cleaned up; run DEL for this container and interface first"
    )]
    HostVethExists { name: String, attachment: Attachment },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("CHECK of {attachment} failed: {}", problems.join("; "))]
    CheckFailed { attachment: Attachment, problems: Vec<String> },
    #[error("{command} could not remove everything: {}", problems.join("; "))]
    Cleanup { command: &'static str, problems: Vec<String> },
    /// ADD failed and undid what it had done; `rollback_problems` lists what
    /// could not be undone.
    #[error("{cause}")]
    RolledBack { cause: Box<CniError>, rollback_problems: Vec<String> },
}

impl CniError {
    pub fn invalid_config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig { field: field.into(), reason: reason.into() }
    }

    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            Self::IncompatibleVersion { .. } | Self::CommandNeedsVersion { .. } => INCOMPATIBLE_VERSION,
            Self::InvalidEnv { .. } => INVALID_ENV,
            Self::Io { .. } => IO_FAILURE,
            Self::Decode { .. } => DECODE_FAILURE,
            Self::InvalidConfig { .. } => INVALID_CONFIG,
            Self::Netns(NetnsError::NotFound { .. }) => CONTAINER_UNKNOWN,
            Self::Netns(NetnsError::NotANetns { .. }) => INVALID_ENV,
            Self::Netns(NetnsError::Netlink { .. }) => NETLINK,
            Self::Netns(NetnsError::Open { .. } | NetnsError::Enter { .. }) => NETNS,
            Self::DatapathNotReady { .. } => TRY_AGAIN_LATER,
            Self::NotAvailable { .. } => NOT_AVAILABLE,
            Self::Ipam(IpamError::Exhausted { .. }) => IPAM_EXHAUSTED,
            Self::Ipam(IpamError::AlreadyReserved { .. }) => ALREADY_RESERVED,
            Self::Ipam(IpamError::Store { .. }) => IPAM_STORE,
            Self::InterfaceExists { .. } => INTERFACE_EXISTS,
            Self::HostVethExists { .. } => HOST_VETH_EXISTS,
            Self::Netlink(_) => NETLINK,
            Self::Datapath(_) => DATAPATH,
            Self::CheckFailed { .. } => CHECK_FAILED,
            Self::Cleanup { .. } => CLEANUP,
            Self::RolledBack { cause, .. } => cause.code(),
        }
    }

    pub fn details(&self) -> Option<String> {
        match self {
            Self::RolledBack { rollback_problems, .. } if rollback_problems.is_empty() => {
                Some("everything this ADD had set up was removed again".into())
            }
            Self::RolledBack { rollback_problems, .. } => Some(format!(
                "undoing the failed ADD also failed, these may be left behind: {}",
                rollback_problems.join("; ")
            )),
            _ => None,
        }
    }

    /// The error object printed on stdout (CNI spec, "Error").
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut reply = json!({
            "cniVersion": version.as_str(),
            "code": self.code(),
            "msg": self.to_string(),
        });
        if let Some(details) = self.details() {
            reply["details"] = Value::String(details);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_golden_for_every_version() {
        let err = CniError::invalid_config("mtu", "must be between 576 and 65535, got 10");
        for v in CniVersion::SUPPORTED {
            let expected = format!(
                r#"{{"cniVersion":"{v}","code":7,"msg":"invalid network configuration: mtu: must be between 576 and 65535, got 10"}}"#
            );
            assert_eq!(serde_json::to_string(&err.to_json(v)).unwrap(), expected);
        }
    }

    #[test]
    fn rolled_back_error_keeps_cause_code_and_lists_leftovers() {
        let err = CniError::RolledBack {
            cause: Box::new(CniError::InterfaceExists { ifname: "eth0".into(), netns: "/run/netns/p".into() }),
            rollback_problems: vec!["delete link weirabc: EBUSY".into()],
        };
        let reply = err.to_json(CniVersion::V1_0_0);
        assert_eq!(reply["code"], 103);
        assert_eq!(
            reply["msg"],
            "interface eth0 already exists in network namespace /run/netns/p; CNI_IFNAME must name an interface that does not exist yet"
        );
        assert_eq!(
            reply["details"],
            "undoing the failed ADD also failed, these may be left behind: delete link weirabc: EBUSY"
        );
    }

    #[test]
    fn well_known_codes() {
        assert_eq!(CniError::IncompatibleVersion { requested: "0.2.0".into() }.code(), 1);
        assert_eq!(CniError::InvalidEnv { var: "CNI_IFNAME", reason: "x".into() }.code(), 4);
        assert_eq!(CniError::Decode { reason: "x".into() }.code(), 6);
        assert_eq!(CniError::DatapathNotReady { path: "/x".into() }.code(), 11);
        assert_eq!(CniError::NotAvailable { reason: "x".into() }.code(), 50);
        assert_eq!(CniError::Netns(NetnsError::NotFound { path: "/x".into() }).code(), 3);
    }
}
