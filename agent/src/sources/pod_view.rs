//! The part of a Pod the agent reads, decoded straight from the API's JSON.
//!
//! Every agent lists every Pod of the cluster (see `kube::pod_watch_config`),
//! and kube-rs holds a whole list page of decoded objects while the watcher
//! hands them out one by one. A full `k8s_openapi` Pod (containers with
//! their env, probes, volumes, statuses...) is several times its JSON; at
//! 15,000 pods that page was the largest thing the agent ever held. This
//! view keeps what `convert::pod` reads (names, labels, node, host network,
//! phase, addresses, named container ports) and nothing else; serde skips
//! the rest while it reads.
use std::borrow::Cow;

use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{ContainerPort, PodIP},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodView {
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodViewSpec>,
    #[serde(default)]
    pub status: Option<PodViewStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodViewSpec {
    #[serde(default, rename = "nodeName")]
    pub node_name: Option<String>,
    #[serde(default, rename = "hostNetwork")]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub containers: Vec<ContainerView>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerView {
    #[serde(default)]
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodViewStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIP>>,
}

/// The metadata without what no converter reads (annotations, owners,
/// managed fields...): name, namespace, labels, resourceVersion, uid and
/// deletionTimestamp stay.
pub fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let meta = ObjectMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        labels: meta.labels,
        resource_version: meta.resource_version,
        uid: meta.uid,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl k8s_openapi::Resource for PodView {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = NamespaceResourceScope;
}

impl kube::Resource for PodView {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(<Self as k8s_openapi::Resource>::KIND)
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(<Self as k8s_openapi::Resource>::GROUP)
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(<Self as k8s_openapi::Resource>::VERSION)
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(<Self as k8s_openapi::Resource>::URL_PATH_SEGMENT)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::service::Protocol, sources::convert};
    use std::sync::Arc;

    /// A pod as the API server sends it, with what the view leaves out.
    fn pod_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
                "labels": {"app": "web"}, "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "r1"}],
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "app", "image": "web:1", "env": [{"name": "X", "value": "1"}],
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"containerPort": 9090}]},
                {"name": "sidecar", "image": "s:1", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": null}]},
        })
    }

    #[test]
    fn keeps_what_the_converter_reads_and_drops_the_rest() {
        let view: PodView = serde_json::from_value(pod_json()).unwrap();
        assert_eq!(view.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(view.metadata.resource_version.as_deref(), Some("42"));
        assert!(view.metadata.annotations.is_none() && view.metadata.owner_references.is_none());
        assert!(view.metadata.managed_fields.is_none());
        assert_eq!(view.spec.as_ref().unwrap().containers.len(), 2);
    }

    #[test]
    fn converts_to_the_policy_pod() {
        let view: PodView = serde_json::from_value(pod_json()).unwrap();
        let pod = convert::pod(&view).unwrap();
        assert_eq!(&*pod.key, "shop/web-1");
        assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(pod.node.as_deref(), Some("n1"));
        assert_eq!(pod.ip, Some("10.244.1.5".parse().unwrap()));
        // Unnamed ports are no named ports; sorted, as identities keep them.
        assert_eq!(
            *pod.named_ports,
            vec![("dns".to_string(), Protocol::Udp, 53), ("http".to_string(), Protocol::Tcp, 8080)]
        );
        // Another pod of the workload shares its labels and ports.
        let twin = convert::pod(&view).unwrap();
        assert!(Arc::ptr_eq(&pod.labels, &twin.labels));
        assert!(Arc::ptr_eq(&pod.named_ports, &twin.named_ports));
    }
}
