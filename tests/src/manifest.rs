//! The Kubernetes objects the agents read from their manifest directory.

use std::net::Ipv4Addr;

/// One Node object as YAML: name, podCIDR, InternalIP.
pub fn node_yaml(name: &str, pod_cidr: &str, internal_ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Node\n\
         metadata:\n  name: {name}\n\
         spec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [\"{pod_cidr}\"]\n\
         status:\n  addresses:\n  - type: InternalIP\n    address: {internal_ip}\n  - type: Hostname\n    address: {name}\n"
    )
}

/// Several objects as one multi-document YAML file.
pub fn documents(docs: &[String]) -> String {
    docs.iter().map(|d| format!("---\n{d}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_yaml_has_the_fields_the_agent_reads() {
        let y = node_yaml("n1", "10.244.1.0/24", Ipv4Addr::new(172, 30, 0, 11));
        assert!(y.contains("kind: Node"));
        assert!(y.contains("  name: n1\n"));
        assert!(y.contains("  podCIDR: 10.244.1.0/24\n"));
        assert!(y.contains("  - type: InternalIP\n    address: 172.30.0.11\n"));
        let two = documents(&[y.clone(), y]);
        assert_eq!(two.matches("---\n").count(), 2);
    }
}
