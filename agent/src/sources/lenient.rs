//! Watched objects decoded one at a time, so that one object the typed
//! decoder refuses costs that object, not the whole watch.
//!
//! kube-rs decodes each watch line as a typed `WatchEvent<K>`; when that
//! fails it reads the line as a `Status`, and since every field of `Status`
//! is optional any JSON object passes: the watch then yields
//! `ApiError: : (Status { status: None, code: 0, message: "" })` and the
//! event is lost. A list with such an object fails whole, so every relist
//! fails for as long as the object exists. Upstream's Conformance test
//! "should complete a service status lifecycle" (test/e2e/network/
//! service.go) makes exactly such a Service: it adds a `metav1.Condition`
//! without `lastTransitionTime`, which the API server stores and serves as
//! `null`, and k8s-openapi requires that field.
//!
//! `Lenient<K>` reads the object as JSON first, drops what the agent never
//! reads and that may not decode (`managedFields`, `status.conditions`),
//! then decodes `K`. If that still fails, the object arrives as
//! `Err(reason)` with whatever metadata could be read, so the watcher keeps
//! its resourceVersion and the source reports the object by name and keeps
//! its last readable version.
use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Lenient<K> {
    meta: ObjectMeta,
    pub object: Result<K, String>,
}

impl<K> Lenient<K> {
    #[cfg(test)]
    pub fn ok(meta: ObjectMeta, object: K) -> Self {
        Self { meta, object: Ok(object) }
    }
}

/// Removes what no converter reads and what has been seen not to decode.
fn prune(value: &mut Value) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(status) = value.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("conditions");
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        if !value.is_object() {
            return Err(serde::de::Error::custom("a Kubernetes object must be a JSON object"));
        }
        prune(&mut value);
        // What the watcher and the source read of it: the object itself
        // carries the rest (a second copy of every pod's labels would be
        // held for a whole list page).
        let meta = value
            .get("metadata")
            .and_then(|m| ObjectMeta::deserialize(m).ok())
            .map(|m| ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                resource_version: m.resource_version,
                uid: m.uid,
                deletion_timestamp: m.deletion_timestamp,
                ..ObjectMeta::default()
            })
            .unwrap_or_default();
        let object = K::deserialize(&value).map_err(|e| e.to_string());
        Ok(Self { meta, object })
    }
}

impl<K: Resource> Resource for Lenient<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use kube::core::{ObjectList, WatchEvent};

    use super::*;

    /// What the API server serves after upstream's service status
    /// lifecycle test added its condition.
    const SERVICE_WITH_NULL_CONDITION_TIME: &str = r#"{"type":"MODIFIED","object":{"kind":"Service","apiVersion":"v1",
        "metadata":{"name":"test-service-x","namespace":"services-1","resourceVersion":"4711",
          "managedFields":[{"manager":"e2e.test","operation":"Update","time":null}]},
        "spec":{"clusterIP":"10.96.3.4","ports":[{"port":80,"targetPort":80}]},
        "status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.1"}]},
          "conditions":[{"type":"StatusUpdate","status":"True","lastTransitionTime":null,"reason":"E2E","message":"Set from e2e test"}]}}}"#;

    #[test]
    fn the_typed_decoder_alone_refuses_the_lifecycle_service() {
        // Why this module exists: the line kube-rs would read as an empty
        // Status.
        assert!(serde_json::from_str::<WatchEvent<Service>>(SERVICE_WITH_NULL_CONDITION_TIME).is_err());
    }

    #[test]
    fn decodes_what_the_agent_reads_despite_unreadable_conditions() {
        let event: WatchEvent<Lenient<Service>> = serde_json::from_str(SERVICE_WITH_NULL_CONDITION_TIME).unwrap();
        let WatchEvent::Modified(obj) = event else { panic!("not MODIFIED") };
        assert_eq!(obj.meta().resource_version.as_deref(), Some("4711"));
        let svc = obj.object.unwrap();
        assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.96.3.4"));
        let ingress = svc.status.unwrap().load_balancer.unwrap().ingress.unwrap();
        assert_eq!(ingress[0].ip.as_deref(), Some("203.0.113.1"));
    }

    #[test]
    fn an_object_that_still_does_not_decode_keeps_its_name_and_version() {
        let line = r#"{"type":"ADDED","object":{"metadata":{"name":"odd","namespace":"x","resourceVersion":"9"},
            "spec":{"ports":"not a list"}}}"#;
        let event: WatchEvent<Lenient<Service>> = serde_json::from_str(line).unwrap();
        let WatchEvent::Added(obj) = event else { panic!("not ADDED") };
        assert_eq!(obj.meta().name.as_deref(), Some("odd"));
        assert_eq!(obj.meta().resource_version.as_deref(), Some("9"));
        assert!(obj.object.unwrap_err().contains("invalid type"));
    }

    #[test]
    fn one_unreadable_item_does_not_fail_the_list() {
        let list = r#"{"apiVersion":"v1","kind":"ServiceList","metadata":{"resourceVersion":"10"},"items":[
            {"metadata":{"name":"a","namespace":"x"},"spec":{"ports":[{"port":80}]}},
            {"metadata":{"name":"b","namespace":"x"},"spec":{"ports":7}}]}"#;
        assert!(serde_json::from_str::<ObjectList<Service>>(list).is_err());
        let list: ObjectList<Lenient<Service>> = serde_json::from_str(list).unwrap();
        assert!(list.items[0].object.is_ok());
        assert!(list.items[1].object.is_err());
    }

    #[test]
    fn errors_and_bookmarks_still_decode_as_such() {
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old","reason":"Expired","code":410}}"#;
        match serde_json::from_str::<WatchEvent<Lenient<Service>>>(gone).unwrap() {
            WatchEvent::Error(s) => assert_eq!(s.code, 410),
            other => panic!("{other:?}"),
        }
        let bookmark =
            r#"{"type":"BOOKMARK","object":{"kind":"Service","apiVersion":"v1","metadata":{"resourceVersion":"12"}}}"#;
        assert!(matches!(
            serde_json::from_str::<WatchEvent<Lenient<Service>>>(bookmark).unwrap(),
            WatchEvent::Bookmark(_)
        ));
    }
}
