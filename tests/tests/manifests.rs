//! manifests/ is valid for current Kubernetes: every object is checked
//! against the API schema (strict: unknown fields fail) by
//! kubernetes-validate, which `cargo xtask setup` installs.

use std::{path::Path, process::Command};

#[test]
fn manifests_validate_against_the_kubernetes_api_schema() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/weir.yaml");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&manifest)
        .output()
        .expect("kubernetes-validate is missing: run `cargo xtask setup` (pip install kubernetes-validate)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "manifests/weir.yaml is not valid:\n{text}");
    for kind in ["serviceaccount", "clusterrole/", "clusterrolebinding", "configmap", "daemonset"] {
        assert!(text.contains(&format!("passed for resource {kind}")), "{kind} not validated:\n{text}");
    }
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
}
