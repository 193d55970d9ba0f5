//! The kinds weir reads, in one table both sources use: for each, the
//! Kubernetes type (its kind name and apiVersion), how an object becomes
//! the model's (the converter), its key, the `Update` it arrives as and
//! how the kube source watches it. The dir source decodes a manifest
//! document of the kind with it (`dir`), the kube source runs one watch
//! per kind with it (`kube`).
use std::fmt::Debug;

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

use super::{Change, Update, convert, pod_view::PodView};
use crate::model::{
    NodeInfo,
    policy::types::{NamespaceInfo, NetworkPolicyInfo, PodInfo},
    service::{EndpointSliceInfo, ServiceInfo},
};

/// One kind weir reads.
pub trait Kind {
    /// The Kubernetes type (its `KIND` and `API_VERSION`).
    type Object: k8s_openapi::Resource
        + kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static;
    /// What the model makes of it.
    type Model;
    /// Whether a manifest document of this kind name must have the
    /// type's apiVersion (when it names one) to be read as this kind: the
    /// same kind name in another API group (Calico's projectcalico.org
    /// NetworkPolicy, say) is another tool's object.
    const CHECK_API_VERSION: bool;
    /// The model object (None: weir does not use it), with what could not
    /// be read as written.
    fn convert(object: &Self::Object) -> Option<(Self::Model, Option<String>)>;
    /// The object's key (`Change::Deleted` names it by this).
    fn key(meta: &ObjectMeta) -> String {
        convert::key(meta)
    }
    /// The update a change of this kind arrives as.
    fn update(change: Change<Self::Model>) -> Update;
    /// What the kube source watches of it.
    fn watch_config() -> watcher::Config {
        watcher::Config::default()
    }
}

/// The kind's name, e.g. `Pod`.
pub fn name<K: Kind>() -> &'static str {
    <K::Object as k8s_openapi::Resource>::KIND
}

/// The kind's apiVersion, e.g. `networking.k8s.io/v1`.
pub fn api_version<K: Kind>() -> &'static str {
    <K::Object as k8s_openapi::Resource>::API_VERSION
}

/// The names of every kind in the table (a `<name>List` is a list of it).
pub const NAMES: [&str; 6] = ["Node", "Service", "EndpointSlice", "Pod", "Namespace", "NetworkPolicy"];

fn name_only(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

pub struct Nodes;

impl Kind for Nodes {
    type Object = Node;
    type Model = NodeInfo;
    const CHECK_API_VERSION: bool = false;
    fn convert(object: &Node) -> Option<(NodeInfo, Option<String>)> {
        Some((convert::node(object), None))
    }
    fn key(meta: &ObjectMeta) -> String {
        name_only(meta)
    }
    fn update(change: Change<NodeInfo>) -> Update {
        Update::Nodes(change)
    }
}

pub struct Services;

impl Kind for Services {
    type Object = Service;
    type Model = ServiceInfo;
    const CHECK_API_VERSION: bool = false;
    fn convert(object: &Service) -> Option<(ServiceInfo, Option<String>)> {
        convert::service(object).map(|s| (s, None))
    }
    fn update(change: Change<ServiceInfo>) -> Update {
        Update::Services(change)
    }
    /// Services the default proxy serves, selected as kube-proxy selects
    /// them: a label added at run time arrives as DELETED.
    fn watch_config() -> watcher::Config {
        watcher::Config::default().labels(&convert::proxied_selector())
    }
}

pub struct EndpointSlices;

impl Kind for EndpointSlices {
    type Object = EndpointSlice;
    type Model = EndpointSliceInfo;
    const CHECK_API_VERSION: bool = false;
    fn convert(object: &EndpointSlice) -> Option<(EndpointSliceInfo, Option<String>)> {
        convert::endpoint_slice(object).map(|s| (s, None))
    }
    fn update(change: Change<EndpointSliceInfo>) -> Update {
        Update::EndpointSlices(change)
    }
    /// Only slices that belong to a Service the default proxy serves.
    fn watch_config() -> watcher::Config {
        let slice_selector = format!("{},{}", convert::SERVICE_NAME_LABEL, convert::proxied_selector());
        watcher::Config::default().labels(&slice_selector)
    }
}

pub struct Pods;

impl Kind for Pods {
    /// Only what the converter reads (see `pod_view`).
    type Object = PodView;
    type Model = PodInfo;
    const CHECK_API_VERSION: bool = true;
    /// Finished and host-network pods are not policy pods.
    fn convert(object: &PodView) -> Option<(PodInfo, Option<String>)> {
        convert::pod(object).map(|p| (p, None))
    }
    fn update(change: Change<PodInfo>) -> Update {
        Update::Pods(change)
    }
    /// See `kube::pod_watch_config`.
    fn watch_config() -> watcher::Config {
        super::kube::pod_watch_config()
    }
}

pub struct Namespaces;

impl Kind for Namespaces {
    type Object = Namespace;
    type Model = NamespaceInfo;
    const CHECK_API_VERSION: bool = true;
    fn convert(object: &Namespace) -> Option<(NamespaceInfo, Option<String>)> {
        Some((convert::namespace(object), None))
    }
    fn key(meta: &ObjectMeta) -> String {
        name_only(meta)
    }
    fn update(change: Change<NamespaceInfo>) -> Update {
        Update::Namespaces(change)
    }
}

pub struct NetworkPolicies;

impl Kind for NetworkPolicies {
    type Object = NetworkPolicy;
    type Model = NetworkPolicyInfo;
    const CHECK_API_VERSION: bool = true;
    /// Fail closed: a policy that cannot be read in full still isolates
    /// what it selects (deny-all), and is reported.
    fn convert(object: &NetworkPolicy) -> Option<(NetworkPolicyInfo, Option<String>)> {
        Some(convert::network_policy_or_deny(object))
    }
    fn update(change: Change<NetworkPolicyInfo>) -> Update {
        Update::NetworkPolicies(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_types_kinds() {
        let names =
            [name::<Nodes>(), name::<Services>(), name::<EndpointSlices>(), name::<Pods>(), name::<Namespaces>()];
        assert_eq!(names[..], NAMES[..5]);
        assert_eq!(name::<NetworkPolicies>(), NAMES[5]);
        assert_eq!(api_version::<NetworkPolicies>(), "networking.k8s.io/v1");
        assert_eq!(api_version::<Pods>(), "v1");
        assert_eq!(api_version::<Namespaces>(), "v1");
    }
}
