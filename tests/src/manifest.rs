//! The Kubernetes objects the agents read from their manifest directory.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// One Node object as YAML: name, podCIDR, InternalIP.
pub fn node_yaml(name: &str, pod_cidr: &str, internal_ip: Ipv4Addr) -> String {
    node_yaml_families(name, &[pod_cidr], &[internal_ip.into()])
}

/// A Node with a pod CIDR and an InternalIP per family (dual-stack: IPv4
/// first, as Kubernetes lists them; IPv6-only: just the IPv6 ones).
pub fn node_yaml_families(name: &str, pod_cidrs: &[&str], internal_ips: &[std::net::IpAddr]) -> String {
    let first = pod_cidrs.first().copied().unwrap_or_default();
    let list: Vec<String> = pod_cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    let addresses: String =
        internal_ips.iter().map(|ip| format!("  - type: InternalIP\n    address: {ip}\n")).collect();
    format!(
        "apiVersion: v1\n\
         kind: Node\n\
         metadata:\n  name: {name}\n\
         spec:\n  podCIDR: {first}\n  podCIDRs: [{}]\n\
         status:\n  addresses:\n{addresses}  - type: Hostname\n    address: {name}\n",
        list.join(", ")
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

/// A Service with `cluster_ips` (the first is the primary), `ipFamilies`
/// as given and `ipFamilyPolicy` `policy` (SingleStack, PreferDualStack,
/// RequireDualStack): a dual-stack or IPv6 Service; a NodePort Service if
/// a port has a node port.
pub fn service_yaml_families(
    name: &str,
    cluster_ips: &[IpAddr],
    families: &[&str],
    policy: &str,
    ports: &[SvcPort],
) -> String {
    let ips: Vec<String> = cluster_ips.iter().map(|ip| format!("{:?}", ip.to_string())).collect();
    let families: Vec<String> = families.iter().map(|f| format!("{f:?}")).collect();
    let mut lines = vec![
        "apiVersion: v1".to_string(),
        "kind: Service".into(),
        "metadata:".into(),
        format!("  name: {name}"),
        "  namespace: default".into(),
        "spec:".into(),
        format!("  type: {}", if ports.iter().any(|p| p.node_port.is_some()) { "NodePort" } else { "ClusterIP" }),
        format!("  clusterIP: {:?}", cluster_ips[0].to_string()),
        format!("  clusterIPs: [{}]", ips.join(", ")),
        format!("  ipFamilies: [{}]", families.join(", ")),
        format!("  ipFamilyPolicy: {policy}"),
        "  ports:".into(),
    ];
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

/// An EndpointSlice of `addressType` IPv6 (named `<service>-slice-v6`)
/// with ready endpoints (address, node) serving `ports`.
pub fn endpoint_slice_yaml6(service: &str, ports: &[(&str, &str, u16)], endpoints: &[(Ipv6Addr, &str)]) -> String {
    let v4 = endpoint_slice_yaml(service, ports, &[]);
    let mut doc = v4
        .replace(&format!("name: {service}-slice\n"), &format!("name: {service}-slice-v6\n"))
        .replace("addressType: IPv4\n", "addressType: IPv6\n");
    if !endpoints.is_empty() {
        doc = doc.replace("endpoints: []\n", "endpoints:\n");
        for (ip, node) in endpoints {
            doc.push_str(&format!("- addresses: [\"{ip}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n"));
        }
    }
    doc
}

/// A YAML scalar that reads back as exactly `s`, whatever it holds
/// ("true", "80", ": " ...): JSON string syntax is YAML's double-quoted style.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// `labels:` (at `indent`) with every key and value quoted; nothing when empty.
fn labels_block(labels: &BTreeMap<String, String>, indent: &str) -> Vec<String> {
    if labels.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!("{indent}labels:")];
    for (k, v) in labels {
        lines.push(format!("{indent}  {}: {}", quote(k), quote(v)));
    }
    lines
}

/// A Namespace with `labels` and the `kubernetes.io/metadata.name` label the
/// API server sets on every namespace (namespaceSelectors may use it).
pub fn namespace_yaml(name: &str, labels: &BTreeMap<String, String>) -> String {
    let mut all = labels.clone();
    all.insert("kubernetes.io/metadata.name".into(), name.into());
    let mut lines = vec![
        "apiVersion: v1".to_string(),
        "kind: Namespace".into(),
        "metadata:".into(),
        format!("  name: {}", quote(name)),
    ];
    lines.extend(labels_block(&all, "  "));
    lines.join("\n") + "\n"
}

/// A NetworkPolicy; `spec` is the YAML of its spec (a block mapping at
/// column 0, or a flow mapping), indented here under `spec:`.
pub fn network_policy_yaml(namespace: &str, name: &str, spec: &str) -> String {
    let mut lines = vec![
        "apiVersion: networking.k8s.io/v1".to_string(),
        "kind: NetworkPolicy".into(),
        "metadata:".into(),
        format!("  name: {}", quote(name)),
        format!("  namespace: {}", quote(namespace)),
        "spec:".into(),
    ];
    lines.extend(spec.lines().filter(|l| !l.trim().is_empty() && l.trim() != "---").map(|l| format!("  {l}")));
    lines.join("\n") + "\n"
}

/// A named container port of a Pod (what named ports in policies resolve to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    /// "TCP", "UDP" or "SCTP".
    pub protocol: String,
    pub port: u16,
}

/// The Kubernetes side of a test pod: what its Pod object says. The test
/// bed writes it to the manifest directory before ADD (as the API server
/// has it before kubelet calls the runtime) and adds the status (podIP)
/// from the CNI result after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObject {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
}

/// What kubelet reports in a Pod's status once its sandbox is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodStatus {
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
}

impl PodObject {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.into(), name: name.into(), labels: BTreeMap::new(), ports: Vec::new() }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// A named container port; `protocol` is "TCP", "UDP" or "SCTP".
    pub fn port(mut self, name: &str, protocol: &str, port: u16) -> Self {
        self.ports.push(ContainerPort { name: name.into(), protocol: protocol.into(), port });
        self
    }

    /// `namespace/name`, as the agent keys pods.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The manifest file of this pod (`_` appears in neither a namespace
    /// nor a pod name, so no two pods share one).
    pub fn file_name(&self) -> String {
        format!("pod_{}_{}.yaml", self.namespace, self.name)
    }

    /// The Pod object on node `node`: `Pending` without a status, `Running`
    /// with its podIP(s) once `status` is given.
    pub fn yaml(&self, node: &str, status: Option<PodStatus>) -> String {
        self.yaml_ips(node, status.map(|s| (s.host_ip, vec![s.pod_ip.into()])))
    }

    /// `yaml` with every address of the pod (`status.podIPs`, one per
    /// family, the first also `podIP`), given with the host IP.
    pub fn yaml_ips(&self, node: &str, status: Option<(Ipv4Addr, Vec<std::net::IpAddr>)>) -> String {
        let mut lines = vec![
            "apiVersion: v1".to_string(),
            "kind: Pod".into(),
            "metadata:".into(),
            format!("  name: {}", quote(&self.name)),
            format!("  namespace: {}", quote(&self.namespace)),
        ];
        lines.extend(labels_block(&self.labels, "  "));
        lines.extend([
            "spec:".into(),
            format!("  nodeName: {}", quote(node)),
            "  containers:".into(),
            "  - name: main".into(),
            "    image: busybox".into(),
        ]);
        if !self.ports.is_empty() {
            lines.push("    ports:".into());
            for p in &self.ports {
                lines.push(format!("    - name: {}", quote(&p.name)));
                lines.push(format!("      containerPort: {}", p.port));
                lines.push(format!("      protocol: {}", p.protocol));
            }
        }
        lines.push("status:".into());
        match status {
            None => lines.push("  phase: Pending".into()),
            Some((host_ip, pod_ips)) => {
                let first = pod_ips.first().map(ToString::to_string).unwrap_or_default();
                let list: Vec<String> = pod_ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
                lines.extend([
                    "  phase: Running".into(),
                    format!("  hostIP: \"{host_ip}\""),
                    format!("  hostIPs: [{{ip: \"{host_ip}\"}}]"),
                    format!("  podIP: \"{first}\""),
                    format!("  podIPs: [{}]", list.join(", ")),
                ])
            }
        }
        lines.join("\n") + "\n"
    }
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
        let dual = node_yaml_families(
            "n2",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["172.30.0.12".parse().unwrap(), "fd00:172:30::12".parse().unwrap()],
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&dual).unwrap();
        assert_eq!(v["spec"]["podCIDRs"][1].as_str(), Some("fd00:10:244:2::/64"));
        assert_eq!(v["status"]["addresses"][1]["address"].as_str(), Some("fd00:172:30::12"));
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

    #[test]
    fn pod_namespace_and_policy_yaml_parse_as_yaml() {
        let pod = PodObject::new("x", "a").label("pod", "a").label("flag", "true").port("serve-80-tcp", "TCP", 80);
        let pending: serde_yaml::Value = serde_yaml::from_str(&pod.yaml("n1", None)).unwrap();
        assert_eq!(pending["metadata"]["namespace"].as_str(), Some("x"));
        assert_eq!(pending["metadata"]["labels"]["flag"].as_str(), Some("true"), "label values stay strings");
        assert_eq!(pending["spec"]["nodeName"].as_str(), Some("n1"));
        assert_eq!(pending["spec"]["containers"][0]["ports"][0]["name"].as_str(), Some("serve-80-tcp"));
        assert!(pending["status"]["podIP"].is_null());
        let status = PodStatus { pod_ip: Ipv4Addr::new(10, 244, 1, 5), host_ip: Ipv4Addr::new(172, 30, 0, 11) };
        let running: serde_yaml::Value = serde_yaml::from_str(&pod.yaml("n1", Some(status))).unwrap();
        assert_eq!(running["status"]["podIP"].as_str(), Some("10.244.1.5"));
        assert_eq!(running["status"]["podIPs"][0]["ip"].as_str(), Some("10.244.1.5"));
        assert_eq!(pod.file_name(), "pod_x_a.yaml");

        let ns: serde_yaml::Value =
            serde_yaml::from_str(&namespace_yaml("y", &BTreeMap::from([("ns".to_string(), "y".to_string())]))).unwrap();
        assert_eq!(ns["metadata"]["labels"]["ns"].as_str(), Some("y"));
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"].as_str(), Some("y"));

        let np = network_policy_yaml("x", "deny", "podSelector: {}\npolicyTypes:\n- Ingress\n");
        let v: serde_yaml::Value = serde_yaml::from_str(&np).unwrap();
        assert_eq!(v["spec"]["policyTypes"][0].as_str(), Some("Ingress"));
        assert!(v["spec"]["podSelector"].is_mapping());
        let flow: serde_yaml::Value =
            serde_yaml::from_str(&network_policy_yaml("x", "f", "{podSelector: {}}")).unwrap();
        assert!(flow["spec"]["podSelector"].is_mapping());
    }
}
