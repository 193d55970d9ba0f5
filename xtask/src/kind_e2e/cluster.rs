//! The kind cluster as the run sees it: kubectl bound to its context, its
//! nodes, the test pods, applying YAML, and diagnostics.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weir_testbed::exec;

use super::{NAMESPACE, SHORT, family};

/// A kind cluster by name.
pub struct Cluster {
    pub name: String,
}

impl Cluster {
    pub fn context(&self) -> String {
        format!("kind-{}", self.name)
    }

    /// kubectl bound to this cluster's context, whatever the current one is.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--context").arg(self.context());
        cmd
    }

    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let out = exec::run(self.kubectl().args(args), SHORT)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {} printed no JSON", args.join(" ")))
    }

    /// A command in a test pod; its stdout, or an error quoting stderr.
    pub fn exec_in(&self, pod: &str, command: &[&str]) -> Result<String> {
        exec::run(self.kubectl().args(["-n", NAMESPACE, "exec", pod, "--"]).args(command), SHORT)
    }

    /// GET / from a test pod (busybox wget, 3 s deadline): the body.
    pub fn http_get(&self, pod: &str, host: &str, port: u16) -> Result<String> {
        self.exec_in(pod, &["wget", "-q", "-O", "-", "-T", "3", &format!("http://{host}:{port}/")])
    }

    /// `kubectl apply -f -` with `yaml`, shown as it is applied.
    pub fn apply_stdin(&self, yaml: &str) -> Result<()> {
        let mut cmd = self.kubectl();
        cmd.args(["apply", "-f", "-"]);
        println!("==> {} <<EOF\n{}EOF", exec::describe(&cmd), yaml);
        let out = exec::output(&mut cmd, Some(yaml.as_bytes()), SHORT)?;
        print!("{}", out.stdout_str());
        if !out.success() {
            bail!("kubectl apply failed ({}): {}", out.describe_status(), out.stderr_str().trim());
        }
        Ok(())
    }

    /// What to look at when something failed; printed before the cluster goes.
    pub fn diagnostics(&self) {
        println!("\nkind-e2e: diagnostics");
        let show: [&[&str]; 4] = [
            &["get", "nodes", "-o", "wide"],
            &["get", "pods", "-A", "-o", "wide"],
            &["-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"],
            &["-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=weir-agent", "--prefix", "--tail=40"],
        ];
        for args in show {
            let mut cmd = self.kubectl();
            cmd.args(args);
            println!("==> {}", exec::describe(&cmd));
            match exec::output(&mut cmd, None, SHORT) {
                Ok(out) => print!("{}{}", out.stdout_str(), out.stderr_str()),
                Err(e) => println!("({e:#})"),
            }
        }
    }
}

/// (name, InternalIP) of the control plane and the two workers; the IPv4
/// InternalIP on a dual-stack cluster (NodePorts are IPv4 only for now).
pub struct Nodes {
    pub control_plane: (String, String),
    pub workers: [(String, String); 2],
}

impl Nodes {
    pub fn read(cluster: &Cluster) -> Result<Self> {
        let list = cluster.get_json(&["get", "nodes", "-o", "json"])?;
        let mut control_plane = None;
        let mut workers = Vec::new();
        for node in list["items"].as_array().context("no node list")? {
            let name = node["metadata"]["name"].as_str().context("node without a name")?.to_string();
            let ip = internal_ip(node).with_context(|| format!("node {name} has no InternalIP"))?;
            let labels = &node["metadata"]["labels"];
            if labels.get("node-role.kubernetes.io/control-plane").is_some() {
                control_plane = Some((name, ip));
            } else {
                workers.push((name, ip));
            }
        }
        workers.sort();
        let n = workers.len();
        let workers: [(String, String); 2] = workers
            .try_into()
            .map_err(|_| anyhow::anyhow!("expected 2 worker nodes (manifests/kind-config.yaml), found {n}"))?;
        Ok(Self { control_plane: control_plane.context("no control-plane node")?, workers })
    }
}

/// A node's InternalIP, the IPv4 one when it has both.
fn internal_ip(node: &Value) -> Option<String> {
    let internal: Vec<String> = node["status"]["addresses"]
        .as_array()?
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .filter_map(|a| a["address"].as_str().map(str::to_string))
        .collect();
    family::of_family(&internal, false).or(internal.first()).cloned()
}

/// A test pod's addresses (`status.podIPs`: one per family) and node.
pub struct PodInfo {
    pub ips: Vec<String>,
    pub node: String,
}

/// Test pod name -> its addresses and node.
pub struct Pods(pub BTreeMap<String, PodInfo>);

impl Pods {
    pub fn read(cluster: &Cluster) -> Result<Self> {
        Self::from_list(&cluster.get_json(&["-n", NAMESPACE, "get", "pods", "-o", "json"])?)
    }

    fn from_list(list: &Value) -> Result<Self> {
        let mut pods = BTreeMap::new();
        for pod in list["items"].as_array().context("no pod list")? {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let mut ips: Vec<String> = pod["status"]["podIPs"]
                .as_array()
                .map(|a| a.iter().filter_map(|ip| ip["ip"].as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            // podIP alone (older API servers, or podIPs not filled yet).
            if ips.is_empty() {
                ips.extend(pod["status"]["podIP"].as_str().map(str::to_string));
            }
            let node = pod["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
            pods.insert(name, PodInfo { ips, node });
        }
        Ok(Self(pods))
    }

    fn get(&self, name: &str) -> Result<&PodInfo> {
        self.0
            .get(name)
            .filter(|p| !p.ips.is_empty() && !p.node.is_empty())
            .with_context(|| format!("pod {name} has no IP or node"))
    }

    /// The pod's IPv4 address (Services and policy are checked over IPv4).
    pub fn ip(&self, name: &str) -> Result<String> {
        let ips = &self.get(name)?.ips;
        family::of_family(ips, false).cloned().with_context(|| format!("pod {name} has no IPv4 address: {ips:?}"))
    }

    /// The pod's IPv6 address (a dual-stack cluster).
    pub fn ip6(&self, name: &str) -> Result<String> {
        let ips = &self.get(name)?.ips;
        family::of_family(ips, true).cloned().with_context(|| format!("pod {name} has no IPv6 address: {ips:?}"))
    }

    pub fn node(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?.node.clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pods_have_an_address_per_family() {
        let list = json!({"items": [
            {"metadata": {"name": "web-a"}, "spec": {"nodeName": "w1"},
             "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10:244:1::5"}]}},
            {"metadata": {"name": "old"}, "spec": {"nodeName": "w2"}, "status": {"podIP": "10.244.2.7"}},
            {"metadata": {"name": "pending"}, "spec": {}, "status": {}},
        ]});
        let pods = Pods::from_list(&list).unwrap();
        assert_eq!(pods.ip("web-a").unwrap(), "10.244.1.5");
        assert_eq!(pods.ip6("web-a").unwrap(), "fd00:10:244:1::5");
        assert_eq!(pods.node("web-a").unwrap(), "w1");
        assert_eq!(pods.ip("old").unwrap(), "10.244.2.7");
        assert!(format!("{:#}", pods.ip6("old").unwrap_err()).contains("no IPv6 address"));
        assert!(pods.ip("pending").is_err());
    }

    #[test]
    fn a_dual_stack_node_is_reached_on_its_ipv4_internal_ip() {
        let node = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "fc00:f853:ccd:e793::3"},
            {"type": "InternalIP", "address": "172.18.0.3"},
            {"type": "Hostname", "address": "w1"},
        ]}});
        assert_eq!(internal_ip(&node).unwrap(), "172.18.0.3");
        let v6_only = json!({"status": {"addresses": [{"type": "InternalIP", "address": "fc00::3"}]}});
        assert_eq!(internal_ip(&v6_only).unwrap(), "fc00::3");
        assert!(internal_ip(&json!({"status": {}})).is_none());
    }
}
