//! On the cluster, before the checks: weir installed from
//! manifests/weir.yaml and running everywhere, then the test namespace, its
//! pods and Services, and what the checks need to know about them.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result, bail};

use super::{
    NAMESPACE, Steps,
    cluster::{Cluster, Nodes, Pods},
    family::{self, IpFamily},
    must, objects,
};

/// Applies manifests/weir.yaml with the API server's address and the kind
/// config's pod subnets as the cluster CIDR, then waits for the DaemonSet,
/// every node and CoreDNS.
pub fn install_weir(cluster: &Cluster, root: &Path, ip_family: IpFamily, steps: &mut Steps) -> Result<()> {
    // Without kube-proxy nothing serves the `kubernetes` ClusterIP before
    // weir runs: the agent gets the API server's own address, as the
    // README's kind section shows (the control-plane node, port 6443).
    let api_host = format!("{}-control-plane", cluster.name);
    // The agent's cluster CIDR is the cluster's pod subnet, one per family.
    let config = std::fs::read_to_string(root.join(ip_family.kind_config()))
        .with_context(|| format!("reading {}", ip_family.kind_config()))?;
    let cidrs = family::pod_subnet(&config)?;
    steps.next(&format!(
        "kubectl apply -f manifests/weir.yaml (k8s-service-host {api_host}, k8s-service-port 6443, cluster-cidr {cidrs})"
    ));
    let manifest = std::fs::read_to_string(root.join("manifests/weir.yaml")).context("reading manifests/weir.yaml")?;
    let manifest = family::with_cluster_cidr(&manifest, &cidrs)?;
    let applied = root.join("target").join(format!("weir-{}.yaml", cluster.name));
    std::fs::write(&applied, with_api_server(&manifest, &api_host, 6443)?)
        .with_context(|| format!("writing {}", applied.display()))?;
    must(cluster.kubectl().arg("apply").arg("-f").arg(&applied))?;

    steps.next("wait for the weir-agent DaemonSet rollout");
    must(cluster.kubectl().args(["-n", "kube-system", "rollout", "status", "daemonset/weir-agent", "--timeout=6m"]))?;

    steps.next("wait for every node to be Ready");
    must(cluster.kubectl().args(["wait", "--for=condition=Ready", "node", "--all", "--timeout=3m"]))?;

    steps.next("wait for CoreDNS (its first pods need the CNI)");
    must(cluster.kubectl().args(["-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=3m"]))
}

/// What the checks run against.
pub struct OnCluster {
    pub nodes: Nodes,
    pub pods: Pods,
    pub cluster_ip: String,
    pub node_port: u64,
    pub web_a: String,
    pub web_b: String,
    /// What web-a and web-b answer.
    pub web_bodies: BTreeSet<String>,
    /// web-a's and web-b's IPv6 addresses on a dual-stack cluster.
    pub ipv6: Option<(String, String)>,
}

/// The test namespace (manifests/e2e/): web-a and client on the first
/// worker, web-b and other on the second, the Services; waits until the
/// pods are Ready and reads their addresses and the Services'.
pub fn test_objects(cluster: &Cluster, image: &str, ip_family: IpFamily, steps: &mut Steps) -> Result<OnCluster> {
    let nodes = Nodes::read(cluster)?;
    println!(
        "    workers {} ({}) and {} ({}); control plane {} ({})",
        nodes.workers[0].0,
        nodes.workers[0].1,
        nodes.workers[1].0,
        nodes.workers[1].1,
        nodes.control_plane.0,
        nodes.control_plane.1
    );

    steps.next(&format!(
        "create namespace {NAMESPACE}: web-a on {}, web-b on {}, client and other pods, Services web (ClusterIP) and web-nodeport",
        nodes.workers[0].0, nodes.workers[1].0
    ));
    let objects = objects::test_objects(image, &nodes.workers[0].0, &nodes.workers[1].0);
    cluster.apply_stdin(&objects)?;
    must(cluster.kubectl().args(["-n", NAMESPACE, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=3m"]))?;
    let pods = Pods::read(cluster)?;
    let cluster_ip = cluster.get_json(&["-n", NAMESPACE, "get", "service", "web", "-o", "json"])?["spec"]["clusterIP"]
        .as_str()
        .context("Service web has no clusterIP")?
        .to_string();
    let node_port = cluster.get_json(&["-n", NAMESPACE, "get", "service", "web-nodeport", "-o", "json"])?["spec"]["ports"][0]
        ["nodePort"]
        .as_u64()
        .context("Service web-nodeport has no nodePort")?;
    for (name, pod) in &pods.0 {
        println!("    pod {name}: {} on {}", pod.ips.join(" "), pod.node);
    }
    println!("    Service web: {cluster_ip}:80; web-nodeport: nodePort {node_port}");
    let web_a = pods.ip("web-a")?;
    let web_b = pods.ip("web-b")?;
    let web_bodies: BTreeSet<String> = ["web-a".to_string(), "web-b".to_string()].into();
    let ipv6 = match ip_family {
        IpFamily::Ipv4 => None,
        IpFamily::Dual => Some((pods.ip6("web-a")?, pods.ip6("web-b")?)),
    };
    Ok(OnCluster { nodes, pods, cluster_ip, node_port, web_a, web_b, web_bodies, ipv6 })
}

/// The manifest with the ConfigMap's API server address filled in.
fn with_api_server(manifest: &str, host: &str, port: u16) -> Result<String> {
    let (host_key, port_key) = ("  k8s-service-host: \"\"", "  k8s-service-port: \"\"");
    if !manifest.contains(host_key) || !manifest.contains(port_key) {
        bail!("manifests/weir.yaml has no empty k8s-service-host/k8s-service-port in its ConfigMap");
    }
    Ok(manifest.replacen(host_key, &format!("  k8s-service-host: \"{host}\""), 1).replacen(
        port_key,
        &format!("  k8s-service-port: \"{port}\""),
        1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_server_address_goes_into_the_configmap() {
        let manifest =
            std::fs::read_to_string(weir_testbed::bins::workspace_root().join("manifests/weir.yaml")).unwrap();
        let filled = with_api_server(&manifest, "weir-e2e-control-plane", 6443).unwrap();
        assert!(filled.contains("  k8s-service-host: \"weir-e2e-control-plane\"\n"));
        assert!(filled.contains("  k8s-service-port: \"6443\"\n"));
        assert!(with_api_server("kind: ConfigMap\n", "x", 1).is_err());
    }
}
