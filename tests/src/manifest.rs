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

/// A Service port: name, protocol, port, targetPort, nodePort.
#[derive(Clone, Debug)]
pub struct SvcPort {
    pub name: &'static str,
    pub protocol: &'static str,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

/// A Service (ClusterIP unless a port has a nodePort) in namespace
/// `default`; `affinity` turns on sessionAffinity: ClientIP.
pub fn service_yaml(name: &str, cluster_ip: Ipv4Addr, ports: &[SvcPort], affinity: bool) -> String {
    let type_ = if ports.iter().any(|p| p.node_port.is_some()) { "NodePort" } else { "ClusterIP" };
    let mut lines = vec![
        "apiVersion: v1".to_string(),
        "kind: Service".into(),
        "metadata:".into(),
        format!("  name: {name}"),
        "  namespace: default".into(),
        "spec:".into(),
        format!("  type: {type_}"),
        format!("  clusterIP: {cluster_ip}"),
        format!("  clusterIPs: [\"{cluster_ip}\"]"),
    ];
    if affinity {
        lines.push("  sessionAffinity: ClientIP".into());
    }
    lines.push("  ports:".into());
    for p in ports {
        lines.push(format!("  - name: {}", p.name));
        lines.push(format!("    protocol: {}", p.protocol));
        lines.push(format!("    port: {}", p.port));
        lines.push(format!("    targetPort: {}", p.target_port));
        if let Some(np) = p.node_port {
            lines.push(format!("    nodePort: {np}"));
        }
    }
    lines.join("\n") + "\n"
}

/// The EndpointSlice of Service `service` with ready endpoints
/// (address, node) serving `ports` (name, protocol, port).
pub fn endpoint_slice_yaml(service: &str, ports: &[(&str, &str, u16)], endpoints: &[(Ipv4Addr, &str)]) -> String {
    let mut lines = vec![
        "apiVersion: discovery.k8s.io/v1".to_string(),
        "kind: EndpointSlice".into(),
        "metadata:".into(),
        format!("  name: {service}-slice"),
        "  namespace: default".into(),
        "  labels:".into(),
        format!("    kubernetes.io/service-name: {service}"),
        "addressType: IPv4".into(),
        "ports:".into(),
    ];
    for (name, protocol, port) in ports {
        lines.push(format!("- name: {name}"));
        lines.push(format!("  protocol: {protocol}"));
        lines.push(format!("  port: {port}"));
    }
    lines.push(if endpoints.is_empty() { "endpoints: []".into() } else { "endpoints:".into() });
    for (ip, node) in endpoints {
        lines.push(format!("- addresses: [\"{ip}\"]"));
        lines.push(format!("  nodeName: {node}"));
        lines.push("  conditions: {ready: true}".into());
    }
    lines.join("\n") + "\n"
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

    #[test]
    fn service_and_slice_yaml_parse_as_yaml() {
        let svc = service_yaml(
            "web",
            Ipv4Addr::new(10, 96, 0, 10),
            &[SvcPort { name: "http", protocol: "TCP", port: 80, target_port: 8080, node_port: Some(30080) }],
            true,
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&svc).unwrap();
        assert_eq!(v["spec"]["type"].as_str(), Some("NodePort"));
        assert_eq!(v["spec"]["ports"][0]["nodePort"].as_u64(), Some(30080));
        assert_eq!(v["spec"]["sessionAffinity"].as_str(), Some("ClientIP"));
        let slice = endpoint_slice_yaml("web", &[("http", "TCP", 8080)], &[(Ipv4Addr::new(10, 244, 1, 2), "n1")]);
        let v: serde_yaml::Value = serde_yaml::from_str(&slice).unwrap();
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/service-name"].as_str(), Some("web"));
        assert_eq!(v["endpoints"][0]["addresses"][0].as_str(), Some("10.244.1.2"));
        let empty = endpoint_slice_yaml("web", &[("http", "TCP", 8080)], &[]);
        let v: serde_yaml::Value = serde_yaml::from_str(&empty).unwrap();
        assert_eq!(v["endpoints"].as_sequence().map(|s| s.len()), Some(0));
    }
}
