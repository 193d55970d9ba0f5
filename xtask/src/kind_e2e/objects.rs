//! The objects the checks create, from the YAML files under manifests/e2e/
//! with their `${NAME}` placeholders filled in.

use super::{HTTP_PORT, NAMESPACE};

const NAMESPACE_YAML: &str = include_str!("../../../manifests/e2e/namespace.yaml");
const WEB_POD: &str = include_str!("../../../manifests/e2e/web-pod.yaml");
const CLIENT_POD: &str = include_str!("../../../manifests/e2e/client-pod.yaml");
const SERVICES: &str = include_str!("../../../manifests/e2e/services.yaml");
const DENY_ALL_INGRESS: &str = include_str!("../../../manifests/e2e/deny-all-ingress.yaml");
const ALLOW_CLIENT_TO_WEB: &str = include_str!("../../../manifests/e2e/allow-client-to-web.yaml");

/// `template` with every `${KEY}` of `values` (and `${NAMESPACE}`,
/// `${HTTP_PORT}`) replaced. A placeholder left over is a bug in the
/// template or the caller.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let port = HTTP_PORT.to_string();
    let mut out = template.to_string();
    for (key, value) in values.iter().chain(&[("NAMESPACE", NAMESPACE), ("HTTP_PORT", port.as_str())]) {
        out = out.replace(&format!("${{{key}}}"), value);
    }
    assert!(!out.contains("${"), "unfilled placeholder in:\n{out}");
    out
}

/// The namespace, four pods and two Services of the checks.
pub fn test_objects(image: &str, node_a: &str, node_b: &str) -> String {
    let server = |name: &str, node: &str| fill(WEB_POD, &[("NAME", name), ("NODE", node), ("IMAGE", image)]);
    let client = |name: &str, role: &str, node: &str| {
        fill(CLIENT_POD, &[("NAME", name), ("ROLE", role), ("NODE", node), ("IMAGE", image)])
    };
    [
        fill(NAMESPACE_YAML, &[]),
        server("web-a", node_a),
        server("web-b", node_b),
        client("client", "client", node_a),
        client("other", "other", node_b),
        fill(SERVICES, &[]),
    ]
    .join("---\n")
}

pub fn deny_all_ingress() -> String {
    fill(DENY_ALL_INGRESS, &[])
}

pub fn allow_client() -> String {
    fill(ALLOW_CLIENT_TO_WEB, &[])
}

#[cfg(test)]
mod tests {
    use super::{super::TEST_IMAGE, *};

    #[test]
    fn the_test_objects_pin_pods_to_the_two_workers() {
        let yaml = test_objects(TEST_IMAGE, "w1", "w2");
        assert_eq!(yaml.matches("kind: Pod\n").count(), 4);
        assert!(yaml.contains("name: web-a\n  namespace: weir-e2e\n  labels: {app: web}\nspec:\n  nodeSelector: {kubernetes.io/hostname: w1}"), "{yaml}");
        assert!(yaml.contains("name: other\n  namespace: weir-e2e\n  labels: {role: other}\nspec:\n  nodeSelector: {kubernetes.io/hostname: w2}"), "{yaml}");
        assert!(yaml.contains("type: NodePort"));
        assert!(allow_client().contains("port: 8080"));
    }
}
