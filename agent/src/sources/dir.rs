//! Manifest-directory source: every `*.yaml`, `*.yml` and `*.json` file in a
//! directory (multi-document YAML and `kind: List` allowed) stands for the
//! API server's contents. The directory is polled; on any change the whole
//! directory is re-read and each kind is sent as a relist, which the index
//! turns into the minimal set of changes.
//!
//! A file that fails to parse is reported and its last good contents are
//! kept, so a half-written or broken file never deletes objects. A
//! NetworkPolicy that parses but cannot be read in full is not a file
//! error: it stands as its deny-all reading and is reported on its own.
//!
//! Pods carry their addresses in `status.podIP` / `status.podIPs`, as the
//! API server would have them.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    Change, ProblemLog, Update,
    kinds::{self, EndpointSlices, Kind, Namespaces, NetworkPolicies, Nodes, Pods, Services},
    manifest_files::ManifestFiles,
};
use crate::model::{
    NodeInfo,
    policy::types::{NamespaceInfo, NetworkPolicyInfo, PodInfo},
    service::{EndpointSliceInfo, ServiceInfo},
};

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot list manifest directory {dir}: {source}")]
    List { dir: PathBuf, source: std::io::Error },
}

/// The objects found in one file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileObjects {
    pub nodes: Vec<NodeInfo>,
    pub services: Vec<ServiceInfo>,
    pub slices: Vec<EndpointSliceInfo>,
    pub pods: Vec<PodInfo>,
    pub namespaces: Vec<NamespaceInfo>,
    /// Unreadable policies are here as their deny-all reading...
    pub policies: Vec<NetworkPolicyInfo>,
    /// ... with (policy key, problem) here.
    pub policy_problems: Vec<(String, String)>,
}

/// Parses one manifest file. Unknown kinds are skipped (other tools' objects
/// may share the directory); a document of a known kind that does not parse
/// fails the whole file, so it is never half-applied.
pub fn parse_file(text: &str) -> Result<FileObjects, String> {
    let mut out = FileObjects::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        collect(value, i + 1, &mut out)?;
    }
    Ok(out)
}

fn collect(value: serde_yaml::Value, doc: usize, out: &mut FileObjects) -> Result<(), String> {
    if value.is_null() {
        return Ok(()); // empty document, e.g. a trailing `---`
    }
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    if kind == "List" || kind.strip_suffix("List").is_some_and(|k| kinds::NAMES.contains(&k)) {
        let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
        for item in items {
            collect(item, doc, out)?;
        }
        return Ok(());
    }
    if kind.is_empty() {
        return Err(format!("document {doc}: no `kind`"));
    }
    // Only NetworkPolicies have problems.
    let problems = &mut out.policy_problems;
    let known = read::<Nodes>(&kind, &value, doc, &mut out.nodes, problems)?
        || read::<Services>(&kind, &value, doc, &mut out.services, problems)?
        || read::<EndpointSlices>(&kind, &value, doc, &mut out.slices, problems)?
        || read::<Pods>(&kind, &value, doc, &mut out.pods, problems)?
        || read::<Namespaces>(&kind, &value, doc, &mut out.namespaces, problems)?
        || read::<NetworkPolicies>(&kind, &value, doc, &mut out.policies, problems)?;
    if !known {
        debug!(kind, "manifest dir: kind not used by weir, skipped");
    }
    Ok(())
}

/// Reads a document of kind `K` (false: `kind` is not `K`'s name) into
/// `into`, with any problem into `problems`.
fn read<K: Kind>(
    kind: &str,
    value: &serde_yaml::Value,
    doc: usize,
    into: &mut Vec<K::Model>,
    problems: &mut Vec<(String, String)>,
) -> Result<bool, String> {
    if kind != kinds::name::<K>() {
        return Ok(false);
    }
    if K::CHECK_API_VERSION && !api_version_is(value, kinds::api_version::<K>()) {
        debug!(kind, api_version = ?value.get("apiVersion"), "manifest dir: not the Kubernetes kind weir reads, skipped");
        return Ok(true);
    }
    let object: K::Object =
        serde_yaml::from_value(value.clone()).map_err(|e| format!("document {doc}: invalid {kind}: {e}"))?;
    let meta = kube::Resource::meta(&object);
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(format!("document {doc}: {kind} without metadata.name"));
    }
    if let Some((model, problem)) = K::convert(&object) {
        if let Some(problem) = problem {
            problems.push((K::key(meta), problem));
        }
        into.push(model);
    }
    Ok(true)
}

/// Whether a document's apiVersion is `expected` (absent counts as yes).
fn api_version_is(value: &serde_yaml::Value, expected: &str) -> bool {
    match value.get("apiVersion") {
        None | Some(serde_yaml::Value::Null) => true,
        Some(v) => v.as_str() == Some(expected),
    }
}

pub struct DirSource {
    poll: Duration,
    files: ManifestFiles<FileObjects>,
    last_sent: Option<FileObjects>,
    policy_problems: ProblemLog,
}

impl DirSource {
    pub fn new(dir: PathBuf, poll: Duration) -> Self {
        Self {
            poll,
            files: ManifestFiles::new(dir),
            last_sent: None,
            policy_problems: ProblemLog::new("NetworkPolicy"),
        }
    }

    pub async fn run(mut self, tx: mpsc::Sender<Update>) -> Result<(), DirError> {
        info!(dir = %self.files.dir().display(), "watching manifest directory");
        let mut warned_missing = false;
        loop {
            match self.scan() {
                Ok(changed) => {
                    warned_missing = false;
                    // Rebuilding the snapshot costs as much as the whole
                    // directory: only when a file changed.
                    if !changed && self.last_sent.is_some() {
                        tokio::time::sleep(self.poll).await;
                        continue;
                    }
                    for update in self.snapshot_if_changed() {
                        if tx.send(update).await.is_err() {
                            return Ok(()); // agent is shutting down
                        }
                    }
                }
                // Not there (yet): that is not an empty cluster, so send nothing.
                Err(DirError::List { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    if !warned_missing {
                        warn!(dir = %self.files.dir().display(), "manifest directory does not exist yet");
                        warned_missing = true;
                    }
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Re-reads files whose size or mtime changed, forgets removed ones;
    /// returns whether anything changed.
    fn scan(&mut self) -> Result<bool, DirError> {
        self.files.scan(parse_file).map_err(|source| DirError::List { dir: self.files.dir().to_path_buf(), source })
    }

    /// One relist per kind whose contents changed (all kinds the first
    /// time, so each counts as synced).
    fn snapshot_if_changed(&mut self) -> Vec<Update> {
        let mut now = FileObjects::default();
        for f in self.files.files().values() {
            now.nodes.extend(f.nodes.iter().cloned());
            now.services.extend(f.services.iter().cloned());
            now.slices.extend(f.slices.iter().cloned());
            now.pods.extend(f.pods.iter().cloned());
            now.namespaces.extend(f.namespaces.iter().cloned());
            now.policies.extend(f.policies.iter().cloned());
            now.policy_problems.extend(f.policy_problems.iter().cloned());
        }
        now.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        now.services.sort_by(|a, b| a.key.cmp(&b.key));
        now.slices.sort_by(|a, b| a.key.cmp(&b.key));
        now.pods.sort_by(|a, b| a.key.cmp(&b.key));
        now.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        now.policies.sort_by(|a, b| a.key.cmp(&b.key));
        now.policy_problems.sort();
        let last = self.last_sent.take();
        let mut updates = Vec::new();
        if last.as_ref().map(|l| &l.nodes) != Some(&now.nodes) {
            updates.push(Update::Nodes(Change::Relisted(now.nodes.clone())));
        }
        if last.as_ref().map(|l| &l.services) != Some(&now.services) {
            updates.push(Update::Services(Change::Relisted(now.services.clone())));
        }
        if last.as_ref().map(|l| &l.slices) != Some(&now.slices) {
            updates.push(Update::EndpointSlices(Change::Relisted(now.slices.clone())));
        }
        if last.as_ref().map(|l| &l.pods) != Some(&now.pods) {
            updates.push(Update::Pods(Change::Relisted(now.pods.clone())));
        }
        if last.as_ref().map(|l| &l.namespaces) != Some(&now.namespaces) {
            updates.push(Update::Namespaces(Change::Relisted(now.namespaces.clone())));
        }
        if last.as_ref().map(|l| &l.policies) != Some(&now.policies) {
            updates.push(Update::NetworkPolicies(Change::Relisted(now.policies.clone())));
        }
        self.policy_problems.relisted(now.policy_problems.iter().cloned().collect());
        updates.extend(self.policy_problems.update());
        self.last_sent = Some(now);
        updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 172.30.0.11}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  spec: {podCIDR: 10.244.2.0/24}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
---
"#;

    #[test]
    fn parses_multi_doc_and_lists() {
        let objs = parse_file(NODES).unwrap();
        let names: Vec<_> = objs.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
        assert_eq!(objs.nodes[0].internal_ip.unwrap().to_string(), "172.30.0.11");
    }

    #[test]
    fn parses_services_and_slices() {
        let objs = parse_file(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.5]}]
"#,
        )
        .unwrap();
        assert_eq!(objs.services[0].key, "shop/web");
        assert_eq!(objs.slices[0].service, "shop/web");
    }

    #[test]
    fn broken_known_kind_fails_the_file() {
        let err = parse_file("kind: Node\nmetadata: {name: x}\nspec: {podCIDR: [1]}\n").unwrap_err();
        assert!(err.contains("invalid Node"), "{err}");
        let err = parse_file("kind: Node\nmetadata: {}\n").unwrap_err();
        assert!(err.contains("without metadata.name"), "{err}");
        let err = parse_file("metadata: {name: x}\n").unwrap_err();
        assert!(err.contains("no `kind`"), "{err}");
        assert!(parse_file("kind: [").is_err());
    }

    #[tokio::test]
    async fn relists_on_change_keeps_last_good_file_and_prunes_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let src = DirSource::new(dir.path().to_path_buf(), Duration::from_millis(20));
        let task = tokio::spawn(src.run(tx));

        // Empty dir: an empty relist of every kind (so each counts as synced).
        assert_eq!(rx.recv().await.unwrap(), Update::Nodes(Change::Relisted(vec![])));
        assert_eq!(rx.recv().await.unwrap(), Update::Services(Change::Relisted(vec![])));
        assert_eq!(rx.recv().await.unwrap(), Update::EndpointSlices(Change::Relisted(vec![])));
        assert_eq!(rx.recv().await.unwrap(), Update::Pods(Change::Relisted(vec![])));
        assert_eq!(rx.recv().await.unwrap(), Update::Namespaces(Change::Relisted(vec![])));
        assert_eq!(rx.recv().await.unwrap(), Update::NetworkPolicies(Change::Relisted(vec![])));

        std::fs::write(dir.path().join("a.yaml"), NODES).unwrap();
        let Update::Nodes(Change::Relisted(nodes)) = rx.recv().await.unwrap() else { panic!() };
        assert_eq!(nodes.len(), 2);

        // Broken rewrite: nothing is sent, the old contents stay.
        std::fs::write(dir.path().join("a.yaml"), "kind: Node\nmetadata: {}\n# longer than before").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "kind: Node\nmetadata: {name: n3}\n").unwrap();
        let Update::Nodes(Change::Relisted(nodes)) = rx.recv().await.unwrap() else { panic!() };
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);

        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let Update::Nodes(Change::Relisted(nodes)) = rx.recv().await.unwrap() else { panic!() };
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n3"]);
        task.abort();
    }

    const POLICY_OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}]}
---
apiVersion: v1
kind: PodList
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: pending, namespace: shop}
  spec: {containers: [{name: c}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: done, namespace: shop}
  spec: {containers: [{name: c}]}
  status: {phase: Succeeded, podIP: 10.244.1.6}
- apiVersion: v1
  kind: Pod
  metadata: {name: host, namespace: kube-system}
  spec: {hostNetwork: true, containers: [{name: c}]}
  status: {phase: Running, podIP: 172.30.0.11}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}], ports: [{port: http}]}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: calico, namespace: shop}
spec: {selector: all(), types: [Ingress]}
"#;

    #[test]
    fn parses_pods_namespaces_and_policies() {
        let objs = parse_file(POLICY_OBJECTS).unwrap();
        assert_eq!(objs.namespaces.len(), 1);
        assert_eq!(objs.namespaces[0].labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(objs.namespaces[0].labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("shop"));
        let pods: Vec<_> = objs.pods.iter().map(|p| (&*p.key, p.ip.map(|ip| ip.to_string()))).collect();
        // The finished and the host-network pods are not policy pods.
        assert_eq!(pods, [("shop/web-1", Some("10.244.1.5".to_string())), ("shop/pending", None)]);
        assert_eq!(objs.pods[0].node.as_deref(), Some("n1"));
        assert_eq!(objs.pods[0].named_ports.len(), 1);
        // Calico's NetworkPolicy is not ours.
        assert_eq!(objs.policies.len(), 1);
        let p = &objs.policies[0];
        assert_eq!(p.key, "shop/web");
        assert!(p.ingress_enabled && !p.egress_enabled);
        assert_eq!(p.ingress.len(), 1);
        assert!(objs.policy_problems.is_empty());
    }

    #[test]
    fn unreadable_policy_is_deny_all_not_a_file_error() {
        let objs = parse_file(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: 80, endPort: 70}]}]
  egress: [{}]
"#,
        )
        .unwrap();
        let p = &objs.policies[0];
        assert_eq!(p.key, "shop/typo");
        assert!(p.ingress_enabled && p.egress_enabled && p.ingress.is_empty() && p.egress.is_empty());
        assert_eq!(objs.policy_problems.len(), 1);
        assert_eq!(objs.policy_problems[0].0, "shop/typo");
        assert!(objs.policy_problems[0].1.contains("endPort"), "{:?}", objs.policy_problems);
    }

    #[test]
    fn broken_policy_kinds_fail_the_file() {
        for (text, want) in [
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: 3}\n", "invalid Pod"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n", "Pod without metadata.name"),
            ("apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n", "Namespace without metadata.name"),
            ("apiVersion: v1\nkind: Namespace\nmetadata: {name: [x]}\n", "invalid Namespace"),
            (
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: 3}\n",
                "invalid NetworkPolicy",
            ),
            (
                "kind: NetworkPolicy\nmetadata: {namespace: x}\nspec: {podSelector: {}}\n",
                "NetworkPolicy without metadata.name",
            ),
        ] {
            let err = parse_file(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn policy_problems_are_counted_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n";
        std::fs::write(dir.path().join("p.yaml"), bad).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(DirSource::new(dir.path().to_path_buf(), Duration::from_millis(20)).run(tx));
        let mut policies = None;
        loop {
            match rx.recv().await.unwrap() {
                Update::NetworkPolicies(Change::Relisted(v)) => policies = Some(v),
                Update::Problems { kind, count } => {
                    assert_eq!((kind.as_str(), count), ("NetworkPolicy", 1));
                    break;
                }
                _ => {}
            }
        }
        let policies = policies.expect("policies before their problems");
        assert_eq!(policies.len(), 1);
        assert!(policies[0].ingress_enabled && policies[0].ingress.is_empty(), "deny-all: {policies:?}");

        // Fixed, in one step (a rename: never seen half-written).
        std::fs::write(dir.path().join("p.tmp"), bad.replace("port: 0", "port: 8080")).unwrap();
        std::fs::rename(dir.path().join("p.tmp"), dir.path().join("p.yaml")).unwrap();
        let Update::NetworkPolicies(Change::Relisted(v)) = rx.recv().await.unwrap() else { panic!() };
        assert_eq!(v[0].ingress.len(), 1);
        assert_eq!(rx.recv().await.unwrap(), Update::Problems { kind: "NetworkPolicy".into(), count: 0 });
        task.abort();
    }
}
