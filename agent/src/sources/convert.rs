//! Kubernetes API objects -> model types.
use k8s_openapi::api::core::v1::Node;

use crate::model::NodeInfo;

pub fn node(node: &Node) -> NodeInfo {
    let name = node.metadata.name.clone().unwrap_or_default();
    let spec = node.spec.as_ref();
    // Dual-stack nodes list both families in podCIDRs; weir is IPv4-only.
    let pod_cidr = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .find_map(|c| c.parse().ok());
    let internal_ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok());
    NodeInfo { name, pod_cidr, internal_ip }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_ipv4_pod_cidr_and_internal_ip() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "w1"},
            "spec": {"podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.244.4.0/24"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "w1"},
                {"type": "InternalIP", "address": "fc00::4"},
                {"type": "InternalIP", "address": "172.18.0.4"}
            ]}
        }))
        .unwrap();
        let info = node(&n);
        assert_eq!(info.name, "w1");
        assert_eq!(info.pod_cidr.unwrap().to_string(), "10.244.4.0/24");
        assert_eq!(info.internal_ip.unwrap().to_string(), "172.18.0.4");
    }

    #[test]
    fn missing_fields_are_none() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}
        }))
        .unwrap();
        let info = node(&n);
        assert_eq!((info.pod_cidr, info.internal_ip), (None, None));
    }
}
