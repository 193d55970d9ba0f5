//! The ClusterRole in manifests/weir.yaml grants exactly what the code
//! uses: every `Api::<Kind>` in the agent's sources needs get/list/watch on
//! its resource, and nothing else may be granted.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// API group and plural resource of each kind the agent may open.
fn resource_of(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "Node" => ("", "nodes"),
        "Service" => ("", "services"),
        "Pod" => ("", "pods"),
        "Namespace" => ("", "namespaces"),
        "EndpointSlice" => ("discovery.k8s.io", "endpointslices"),
        "NetworkPolicy" => ("networking.k8s.io", "networkpolicies"),
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests/rbac.rs") {
            out.push(path);
        }
    }
}

/// (group, resource) pairs the code opens an `Api` for.
fn used_by_code() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let mut used = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("Api::<") {
            // `Api::<Lenient<Pod>>` opens Pods.
            let rest = text[i + 6..].strip_prefix("Lenient<").unwrap_or(&text[i + 6..]);
            let kind: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
            // `Api::<Lenient<K::Object>>`: the kube source's watch, opened
            // for every kind of the `kinds` table.
            let kinds = if rest.starts_with("K::Object") {
                crate::sources::kinds::NAMES.iter().map(|k| k.to_string()).collect()
            } else {
                vec![kind]
            };
            for kind in kinds {
                let (group, resource) = resource_of(&kind).unwrap_or_else(|| {
                    panic!("{}: Api::<{kind}>: add it to resource_of and to the ClusterRole", file.display())
                });
                used.insert((group.to_string(), resource.to_string()));
            }
        }
    }
    used
}

/// (group, resource) -> verbs granted by the ClusterRole.
fn granted() -> BTreeMap<(String, String), BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/weir.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.get("kind").and_then(|k| k.as_str()) != Some("ClusterRole") {
            continue;
        }
        for rule in v["rules"].as_sequence().unwrap() {
            let strings = |key: &str| -> Vec<String> {
                rule[key].as_sequence().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    out.entry((group.clone(), resource)).or_default().extend(strings("verbs"));
                }
            }
        }
    }
    out
}

#[test]
fn cluster_role_grants_exactly_what_the_code_reads() {
    let used = used_by_code();
    assert!(used.contains(&(String::new(), "nodes".into())), "scanner found no Api::<Node>: {used:?}");
    let granted = granted();
    let read: BTreeSet<String> = ["get", "list", "watch"].iter().map(|s| s.to_string()).collect();
    for r in &used {
        assert_eq!(granted.get(r), Some(&read), "{r:?} is used by the code: the ClusterRole must grant get/list/watch");
    }
    for (r, verbs) in &granted {
        assert!(used.contains(r), "{r:?} is granted ({verbs:?}) but the code never reads it");
    }
}
