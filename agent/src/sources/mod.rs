//! Where cluster objects come from. Two sources feed the same channel with
//! the same updates, so everything after this point is one code path:
//! - `kube`: kube-rs watchers against the API server (in-cluster config or a
//!   kubeconfig);
//! - `dir`: a directory of YAML manifests, re-read when it changes (the
//!   sandbox and the tests).
//!
//! Sources convert API objects to the model's domain types (`convert`), so
//! nothing past this module depends on Kubernetes types.

pub mod convert;
pub mod dir;
pub mod kube;
#[cfg(test)]
mod kube_tests;
#[cfg(test)]
mod rbac_tests;

use std::path::PathBuf;

use crate::model::{
    NodeInfo,
    service::{EndpointSliceInfo, ServiceInfo},
};

pub use crate::model::index::Change;

#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Nodes(Change<NodeInfo>),
    Services(Change<ServiceInfo>),
    EndpointSlices(Change<EndpointSliceInfo>),
    /// Whether the watch of one kind reaches the API server (sent when it
    /// changes). The datapath keeps its state either way; readiness says so.
    Reachable { kind: String, ok: bool },
}

/// Which source to run, from the command line (`kube` or `dir:<path>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Kube { kubeconfig: Option<PathBuf> },
    Dir(PathBuf),
}

impl std::str::FromStr for SourceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "kube" {
            Ok(SourceSpec::Kube { kubeconfig: None })
        } else if let Some(path) = s.strip_prefix("kube:") {
            Ok(SourceSpec::Kube { kubeconfig: Some(path.into()) })
        } else if let Some(path) = s.strip_prefix("dir:") {
            if path.is_empty() {
                return Err("dir: needs a path, e.g. dir:/etc/weir/manifests".into());
            }
            Ok(SourceSpec::Dir(path.into()))
        } else {
            Err(format!(
                "unknown source {s:?}: use `kube` (in-cluster or $KUBECONFIG), `kube:<kubeconfig>` or `dir:<manifest dir>`"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_specs() {
        assert_eq!("kube".parse(), Ok(SourceSpec::Kube { kubeconfig: None }));
        assert_eq!(
            "kube:/k".parse(),
            Ok(SourceSpec::Kube { kubeconfig: Some("/k".into()) })
        );
        assert_eq!("dir:/m".parse(), Ok(SourceSpec::Dir("/m".into())));
        assert!("dir:".parse::<SourceSpec>().is_err());
        assert!("etcd".parse::<SourceSpec>().is_err());
    }
}
