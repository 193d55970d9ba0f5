//! Where cluster objects come from. Two sources feed the same channel with
//! the same updates, so everything after this point is one code path:
//! - `kube`: kube-rs watchers against the API server (in-cluster config or a
//!   kubeconfig);
//! - `dir`: a directory of YAML manifests, re-read when it changes (the
//!   sandbox and the tests).
//!
//! Sources convert API objects to the model's domain types (`convert`), so
//! nothing past this module depends on Kubernetes types; the kinds read,
//! with their converters, are one table both use (`kinds`).

pub mod api_server;
pub mod convert;
pub mod dir;
pub mod kinds;
pub mod kube;
pub mod lenient;
pub mod manifest_files;
pub mod pod_view;

use std::{collections::BTreeMap, path::PathBuf};

use tracing::{info, warn};

use crate::model::{
    NodeInfo,
    policy::types::{NamespaceInfo, NetworkPolicyInfo, PodInfo},
    service::{EndpointSliceInfo, ServiceInfo},
};

pub use crate::model::index::Change;

#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Nodes(Change<NodeInfo>),
    Services(Change<ServiceInfo>),
    EndpointSlices(Change<EndpointSliceInfo>),
    /// Every Pod of the cluster that has (or will have) a pod-network
    /// address: finished and host-network Pods are left out (see
    /// `convert::pod`).
    Pods(Change<PodInfo>),
    Namespaces(Change<NamespaceInfo>),
    /// NetworkPolicies, failing closed: one that cannot be read in full
    /// arrives as its deny-all reading (and is counted in `Problems`).
    NetworkPolicies(Change<NetworkPolicyInfo>),
    /// Whether the watch of one kind reaches the API server (sent when it
    /// changes). The datapath keeps its state either way; readiness says so.
    Reachable {
        kind: String,
        ok: bool,
    },
    /// How many objects of one kind could not be read as written (sent
    /// when it changes; each is logged by the source once).
    Problems {
        kind: String,
        count: usize,
    },
}

impl Update {
    /// A whole list of one kind (the first, or one after a watch lost its
    /// place): the source freed a list page's worth of memory.
    pub fn is_relist(&self) -> bool {
        fn relist<T>(c: &Change<T>) -> bool {
            matches!(c, Change::Relisted(_) | Change::RelistedKeeping { .. })
        }
        match self {
            Update::Nodes(c) => relist(c),
            Update::Services(c) => relist(c),
            Update::EndpointSlices(c) => relist(c),
            Update::Pods(c) => relist(c),
            Update::Namespaces(c) => relist(c),
            Update::NetworkPolicies(c) => relist(c),
            Update::Reachable { .. } | Update::Problems { .. } => false,
        }
    }
}

/// Objects of one kind that a source could not read as written, by key:
/// each problem is logged once (again only if it changes), and the count
/// goes to the status.
#[derive(Debug)]
pub(crate) struct ProblemLog {
    kind: String,
    current: BTreeMap<String, String>,
    sent: usize,
}

impl ProblemLog {
    pub(crate) fn new(kind: impl Into<String>) -> Self {
        Self { kind: kind.into(), current: BTreeMap::new(), sent: 0 }
    }

    /// One object's problem now (None: it has none, or it is gone).
    pub(crate) fn set(&mut self, key: &str, problem: Option<String>) {
        match problem {
            Some(p) => {
                if self.current.get(key) != Some(&p) {
                    warn!(kind = %self.kind, object = %key, "{p}");
                    self.current.insert(key.to_string(), p);
                }
            }
            None => {
                if self.current.remove(key).is_some() {
                    info!(kind = %self.kind, object = %key, "no longer has a problem (fixed or deleted)");
                }
            }
        }
    }

    /// The problems of a complete list: objects not in it have none.
    pub(crate) fn relisted(&mut self, problems: BTreeMap<String, String>) {
        let gone: Vec<String> = self.current.keys().filter(|k| !problems.contains_key(*k)).cloned().collect();
        for key in gone {
            self.set(&key, None);
        }
        for (key, p) in problems {
            self.set(&key, Some(p));
        }
    }

    /// `Update::Problems` if the count changed since the last one.
    pub(crate) fn update(&mut self) -> Option<Update> {
        (self.current.len() != self.sent).then(|| {
            self.sent = self.current.len();
            Update::Problems { kind: self.kind.clone(), count: self.sent }
        })
    }
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
mod tests;
