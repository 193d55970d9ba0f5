//! The kind cluster as the run sees it: kubectl bound to its context, its
//! nodes, the test pods, applying YAML, and diagnostics.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weir_testbed::exec;

use super::{NAMESPACE, SHORT};

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

/// (name, InternalIP) of the control plane and the two workers.
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
            let ip = node["status"]["addresses"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                .and_then(|a| a["address"].as_str())
                .with_context(|| format!("node {name} has no InternalIP"))?
                .to_string();
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

/// Test pod name -> (IP, node).
pub struct Pods(pub BTreeMap<String, (String, String)>);

impl Pods {
    pub fn read(cluster: &Cluster) -> Result<Self> {
        let list = cluster.get_json(&["-n", NAMESPACE, "get", "pods", "-o", "json"])?;
        let mut pods = BTreeMap::new();
        for pod in list["items"].as_array().context("no pod list")? {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let ip = pod["status"]["podIP"].as_str().unwrap_or_default().to_string();
            let node = pod["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
            pods.insert(name, (ip, node));
        }
        Ok(Self(pods))
    }

    fn get(&self, name: &str) -> Result<&(String, String)> {
        self.0
            .get(name)
            .filter(|(ip, node)| !ip.is_empty() && !node.is_empty())
            .with_context(|| format!("pod {name} has no IP or node"))
    }

    pub fn ip(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?.0.clone())
    }

    pub fn node(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?.1.clone())
    }
}
