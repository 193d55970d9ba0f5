//! Manifest-directory source: every `*.yaml`, `*.yml` and `*.json` file in a
//! directory (multi-document YAML and `kind: List` allowed) stands for the
//! API server's contents. The directory is polled; on any change the whole
//! directory is re-read and each kind is sent as a relist, which the index
//! turns into the minimal set of changes.
//!
//! A file that fails to parse is reported and its last good contents are
//! kept, so a half-written or broken file never deletes objects.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Change, Update, convert};
use crate::model::{
    NodeInfo,
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
}

/// Parses one manifest file. Unknown kinds are skipped (other tools' objects
/// may share the directory); a document of a known kind that does not parse
/// fails the whole file, so it is never half-applied.
pub fn parse_file(text: &str) -> Result<FileObjects, String> {
    let mut out = FileObjects::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        collect(value, i + 1, &mut out)?;
    }
    Ok(out)
}

fn collect(value: serde_yaml::Value, doc: usize, out: &mut FileObjects) -> Result<(), String> {
    if value.is_null() {
        return Ok(()); // empty document, e.g. a trailing `---`
    }
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    match kind.as_str() {
        "List" | "NodeList" | "ServiceList" | "EndpointSliceList" => {
            let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
            for item in items {
                collect(item, doc, out)?;
            }
        }
        "Node" => {
            let node: Node = serde_yaml::from_value(value)
                .map_err(|e| format!("document {doc}: invalid Node: {e}"))?;
            if node.metadata.name.as_deref().unwrap_or_default().is_empty() {
                return Err(format!("document {doc}: Node without metadata.name"));
            }
            out.nodes.push(convert::node(&node));
        }
        "Service" => {
            let svc: Service = serde_yaml::from_value(value)
                .map_err(|e| format!("document {doc}: invalid Service: {e}"))?;
            if svc.metadata.name.as_deref().unwrap_or_default().is_empty() {
                return Err(format!("document {doc}: Service without metadata.name"));
            }
            out.services.push(convert::service(&svc));
        }
        "EndpointSlice" => {
            let slice: EndpointSlice = serde_yaml::from_value(value)
                .map_err(|e| format!("document {doc}: invalid EndpointSlice: {e}"))?;
            if slice.metadata.name.as_deref().unwrap_or_default().is_empty() {
                return Err(format!("document {doc}: EndpointSlice without metadata.name"));
            }
            out.slices.extend(convert::endpoint_slice(&slice));
        }
        "" => return Err(format!("document {doc}: no `kind`")),
        other => debug!(kind = other, "manifest dir: kind not used by weir, skipped"),
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

pub struct DirSource {
    dir: PathBuf,
    poll: Duration,
    stamps: BTreeMap<PathBuf, Stamp>,
    /// Last good parse of each file.
    files: BTreeMap<PathBuf, FileObjects>,
    last_sent: Option<FileObjects>,
}

impl DirSource {
    pub fn new(dir: PathBuf, poll: Duration) -> Self {
        Self { dir, poll, stamps: BTreeMap::new(), files: BTreeMap::new(), last_sent: None }
    }

    pub async fn run(mut self, tx: mpsc::Sender<Update>) -> Result<(), DirError> {
        info!(dir = %self.dir.display(), "watching manifest directory");
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
                        warn!(dir = %self.dir.display(), "manifest directory does not exist yet");
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
        let list_err = |source| DirError::List { dir: self.dir.clone(), source };
        let mut seen = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(list_err)? {
            let entry = entry.map_err(|source| DirError::List { dir: self.dir.clone(), source })?;
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            seen.insert(path, Stamp { modified: meta.modified().ok(), len: meta.len() });
        }
        for (path, stamp) in &seen {
            if self.stamps.get(path) == Some(stamp) {
                continue;
            }
            match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| parse_file(&t)) {
                Ok(objects) => {
                    self.files.insert(path.clone(), objects);
                }
                Err(e) => warn!(file = %path.display(), error = %e, "manifest skipped; keeping its last good contents"),
            }
        }
        self.files.retain(|p, _| seen.contains_key(p));
        let changed = self.stamps != seen;
        self.stamps = seen;
        Ok(changed)
    }

    /// One relist per kind whose contents changed (all kinds the first
    /// time, so each counts as synced).
    fn snapshot_if_changed(&mut self) -> Vec<Update> {
        let mut now = FileObjects::default();
        for f in self.files.values() {
            now.nodes.extend(f.nodes.iter().cloned());
            now.services.extend(f.services.iter().cloned());
            now.slices.extend(f.slices.iter().cloned());
        }
        now.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        now.services.sort_by(|a, b| a.key.cmp(&b.key));
        now.slices.sort_by(|a, b| a.key.cmp(&b.key));
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
        self.last_sent = Some(now);
        updates
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
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
}
