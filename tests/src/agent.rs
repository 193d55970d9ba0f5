//! `weir-agent` running in a node namespace on the manifest-dir source, or
//! (opt-in, `Source::Kube`) on the kube source started as a DaemonSet
//! starts it: in-cluster configuration against a fake API server
//! (`weir-dev fake-apiserver`) that serves the same manifest dir over
//! https with a bearer token on the node's address (its service account
//! files in the node's dir), `KUBERNETES_SERVICE_HOST` naming the
//! `kubernetes` Service's ClusterIP that nothing serves at a cold start, and
//! the API server's own address given as the ConfigMap gives it
//! (`WEIR_K8S_SERVICE_HOST`/`PORT`), or found in a kubelet kubeconfig.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{bins, process::ChildGuard, topology::Node};

/// Written by the agent once the node is set up (docs/contracts.md).
pub const READY_FILE: &str = "agent-ready";

/// The port a node's fake API server listens on, at the node's address
/// (reachable from the other nodes and the pods, as a control plane is).
pub const FAKE_API_PORT: u16 = 6443;
/// The `kubernetes` Service's ClusterIP and port: what in-cluster
/// configuration names (`KUBERNETES_SERVICE_HOST`/`PORT`).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const KUBERNETES_SERVICE_PORT: u16 = 443;
/// A kubeconfig for the fake API server, in the node's dir (written by the
/// server once it listens and its service account files are there).
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// The node's service account files (token, ca.crt, namespace).
pub const SERVICE_ACCOUNT_DIR: &str = "serviceaccount";
/// Where the agent looks for a kubelet kubeconfig (`WEIR_KUBELET_KUBECONFIG`).
pub const KUBELET_KUBECONFIG_FILE: &str = "kubelet.conf";

/// How an agent on the kube source learns the API server's own address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApiAddress {
    /// `WEIR_K8S_SERVICE_HOST`/`PORT`, as the ConfigMap sets them.
    #[default]
    Setting,
    /// Only the kubelet kubeconfig in the node's dir (the caller writes it).
    KubeletKubeconfig,
    /// Nothing but the in-cluster ClusterIP (a misconfigured cold start).
    InClusterOnly,
}
const FAKE_API_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where an agent started by the test bed reads the cluster's objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// `--source dir:<manifest dir>`.
    #[default]
    Dir,
    /// `--source kube` in-cluster: kube-rs watches against a fake API server
    /// serving the manifest dir, one per node (started before the agent,
    /// stopped after it, with it in every way the agent is).
    Kube,
}

impl std::str::FromStr for Source {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dir" => Ok(Source::Dir),
            "kube" => Ok(Source::Kube),
            other => bail!("unknown agent source {other:?}: `dir` or `kube`"),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Dir => "dir",
            Source::Kube => "kube",
        })
    }
}

pub struct Agent {
    // Dropped in this order: the agent, then its API server.
    guard: ChildGuard,
    /// `Source::Kube`: the fake API server and its log.
    api: Option<(ChildGuard, PathBuf)>,
    node: String,
    log: PathBuf,
    ready_file: PathBuf,
}

impl Agent {
    /// Starts the agent (does not wait; see `wait_ready`). Its output goes to
    /// `<node dir>/logs/agent.log`.
    pub fn spawn(node: &Node, manifest_dir: &Path) -> Result<Self> {
        Self::spawn_with(node, manifest_dir, None)
    }

    /// Like `spawn`; with `socket_lb_cgroup`, connect-time Service load
    /// balancing is attached to that cgroup v2 directory (one the caller
    /// made, holding only the processes meant to use it) instead of being
    /// turned off.
    pub fn spawn_with(node: &Node, manifest_dir: &Path, socket_lb_cgroup: Option<&Path>) -> Result<Self> {
        Self::spawn_from(node, manifest_dir, Source::Dir, socket_lb_cgroup)
    }

    /// Starts the agent on the kube source: first a fake API server over
    /// `manifest_dir` in the node's namespace (waits until it listens),
    /// then the agent with a kubeconfig for it. Does not wait for the agent.
    pub fn spawn_kube(node: &Node, manifest_dir: &Path) -> Result<Self> {
        Self::spawn_from(node, manifest_dir, Source::Kube, None)
    }

    /// `spawn_with` for either source.
    pub fn spawn_from(
        node: &Node,
        manifest_dir: &Path,
        source: Source,
        socket_lb_cgroup: Option<&Path>,
    ) -> Result<Self> {
        Self::spawn_full(node, manifest_dir, source, ApiAddress::Setting, socket_lb_cgroup)
    }

    /// The kube source with the API server's address found as `address` says.
    pub fn spawn_in_cluster(node: &Node, manifest_dir: &Path, address: ApiAddress) -> Result<Self> {
        Self::spawn_full(node, manifest_dir, Source::Kube, address, None)
    }

    fn spawn_full(
        node: &Node,
        manifest_dir: &Path,
        source: Source,
        address: ApiAddress,
        socket_lb_cgroup: Option<&Path>,
    ) -> Result<Self> {
        let binary = bins::weir_agent()?;
        let path = |p: &Path| p.to_str().map(str::to_string).context("non-UTF-8 path");
        // The caller's WEIR_LOG wins (spawn keeps the environment).
        let mut env: Vec<(&str, String)> =
            if std::env::var_os("WEIR_LOG").is_none() { vec![("WEIR_LOG", "info".into())] } else { vec![] };
        // Counters on /metrics exact right after traffic: each scrape waits
        // for a map read of its own (off the agent's runtime; milliseconds
        // at test sizes) instead of the 5 s background snapshot. The
        // caller's setting wins here too.
        if std::env::var_os("WEIR_METRICS_REFRESH_MS").is_none() {
            env.push(("WEIR_METRICS_REFRESH_MS", "0".into()));
        }
        let (source_arg, api) = match source {
            Source::Dir => (format!("dir:{}", path(manifest_dir)?), None),
            Source::Kube => {
                let borrowed: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let api = start_fake_api(node, &bins::weir_dev()?, manifest_dir, &borrowed)?;
                env.extend(in_cluster_env(node, address)?);
                ("kube".to_string(), Some(api))
            }
        };
        let mut args: Vec<String> = vec![
            path(&binary)?,
            "run".into(),
            "--node-name".into(),
            node.name.clone(),
            "--source".into(),
            source_arg,
            "--cluster-cidr".into(),
            node.cluster_cidr.clone(),
            "--cni-conf-dir".into(),
            path(&node.dirs.cni_conf)?,
            "--cni-data-dir".into(),
            path(&node.dirs.cni_data)?,
            "--run-dir".into(),
            path(&node.dirs.run)?,
            "--bpf-pin-dir".into(),
            path(&node.pin_dir)?,
            // Where the chained plugins are: the agent asks them which
            // cniVersion to write.
            "--cni-bin-dir".into(),
            std::env::join_paths(crate::bins::cni_path())?
                .into_string()
                .map_err(|p| anyhow::anyhow!("non-UTF-8 CNI path {p:?}"))?,
        ];
        match socket_lb_cgroup {
            Some(cgroup) => args.extend(["--socket-lb-cgroup".into(), path(cgroup)?]),
            // Connect-time load balancing attaches to a cgroup for every
            // process in it; the test bed's nodes share the machine's
            // cgroups, so pods use the per-packet path here.
            None => args.push("--no-socket-lb".into()),
        }
        let log = node.dirs.logs.join("agent.log");
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // On an error here `api` is dropped: its server stops.
        let guard = node.netns.spawn(&argv, &env, &log, node.detached())?;
        Ok(Self::new(guard, api, node, log))
    }

    fn new(guard: ChildGuard, api: Option<(ChildGuard, PathBuf)>, node: &Node, log: PathBuf) -> Self {
        Self { guard, api, node: node.name.clone(), log, ready_file: node.dirs.run.join(READY_FILE) }
    }

    /// `$WEIR_AGENT_READY_TIMEOUT` seconds, 60 by default: building the
    /// datapath on a loaded 2-core machine takes a while.
    pub fn ready_timeout() -> Duration {
        let secs = std::env::var("WEIR_AGENT_READY_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        Duration::from_secs(secs)
    }

    /// Waits for `<runDir>/agent-ready`; fails early if the agent exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // The marker of this agent: a restarted agent finds its
            // predecessor's still there (kept on purpose, so the node stays
            // ready across restarts), with the predecessor's pid in it.
            if self.marker_is_mine() {
                return Ok(());
            }
            if let Some(status) = self.guard.try_wait() {
                bail!(
                    "weir-agent on {} exited before it was ready ({status}); last log lines:\n{}{}",
                    self.node,
                    self.log_tail(40),
                    self.api_log_tail(20)
                );
            }
            if let Some(status) = self.api.as_mut().and_then(|(api, _)| api.try_wait()) {
                bail!(
                    "the fake API server of {} exited ({status}); the agent cannot list anything{}",
                    self.node,
                    self.api_log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "weir-agent on {} not ready after {timeout:?} (no {}); last log lines:\n{}{}",
                    self.node,
                    self.ready_file.display(),
                    self.log_tail(40),
                    self.api_log_tail(20)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn marker_is_mine(&self) -> bool {
        fs::read(&self.ready_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["pid"].as_u64())
            == Some(u64::from(self.pid()))
    }

    /// The node this agent runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.try_wait().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Which source the agent reads.
    pub fn source(&self) -> Source {
        if self.api.is_some() { Source::Kube } else { Source::Dir }
    }

    /// `Source::Kube`: the fake API server's pid and log.
    pub fn fake_api(&self) -> Option<(u32, &Path)> {
        self.api.as_ref().map(|(g, log)| (g.id(), log.as_path()))
    }

    /// "\nlast lines of the fake API server's log: ..." (empty for `Source::Dir`).
    fn api_log_tail(&self, lines: usize) -> String {
        match &self.api {
            Some((_, log)) => {
                format!("\nlast lines of the fake API server's log ({}):\n{}", log.display(), tail(log, lines))
            }
            None => String::new(),
        }
    }

    /// Stops the agent now (SIGTERM, then SIGKILL), then its API server.
    pub fn stop(mut self) {
        self.guard.stop();
        if let Some((api, _)) = self.api.as_mut() {
            api.stop();
        }
    }

    /// Leaves the agent (and its API server) running (a kept sandbox).
    pub fn keep(self) {
        self.guard.forget();
        if let Some((api, _)) = self.api {
            api.forget();
        }
    }
}

fn tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the kubelet puts in a pod's environment, and the DaemonSet's
/// ConfigMap settings: the agent reads the service account files of the
/// node's dir and no kubeconfig.
fn in_cluster_env(node: &Node, address: ApiAddress) -> Result<Vec<(&'static str, String)>> {
    let s = |p: PathBuf| p.to_str().map(str::to_string).context("non-UTF-8 path");
    let mut env = vec![
        ("KUBERNETES_SERVICE_HOST", KUBERNETES_SERVICE_IP.to_string()),
        ("KUBERNETES_SERVICE_PORT", KUBERNETES_SERVICE_PORT.to_string()),
        ("WEIR_SERVICEACCOUNT_DIR", s(node.dirs.root.join(SERVICE_ACCOUNT_DIR))?),
        ("WEIR_KUBELET_KUBECONFIG", s(node.dirs.root.join(KUBELET_KUBECONFIG_FILE))?),
        // kube-rs would send the request through $HTTPS_PROXY (empty
        // values count as unset).
        ("HTTPS_PROXY", String::new()),
        ("https_proxy", String::new()),
    ];
    if address == ApiAddress::Setting {
        env.push(("WEIR_K8S_SERVICE_HOST", node.ip.to_string()));
        env.push(("WEIR_K8S_SERVICE_PORT", FAKE_API_PORT.to_string()));
    }
    Ok(env)
}

/// A kubelet kubeconfig (as kubeadm writes one) whose server is the node's
/// fake API server, in the node's dir.
pub fn write_kubelet_kubeconfig(node: &Node) -> Result<PathBuf> {
    let path = node.dirs.root.join(KUBELET_KUBECONFIG_FILE);
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: system:node:{n}@weir\nclusters:\n- name: weir\n  cluster:\n    \
         certificate-authority: /etc/kubernetes/pki/ca.crt\n    server: https://{ip}:{FAKE_API_PORT}\ncontexts:\n\
         - name: system:node:{n}@weir\n  context:\n    cluster: weir\n    user: system:node:{n}\nusers:\n- name: system:node:{n}\n  \
         user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        n = node.name,
        ip = node.ip
    );
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Starts `weir-dev fake-apiserver` over `manifest_dir` in the node's
/// namespace on `<node ip>:FAKE_API_PORT` (https, service account files in
/// the node's dir, the `kubernetes` ClusterIP in its certificate), and
/// waits for the kubeconfig it writes once it listens (`<node
/// dir>/kubeconfig`). Output goes to `<node dir>/logs/fake-apiserver.log`.
fn start_fake_api(
    node: &Node,
    binary: &Path,
    manifest_dir: &Path,
    env: &[(&str, &str)],
) -> Result<(ChildGuard, PathBuf)> {
    let kubeconfig = node.dirs.root.join(KUBECONFIG_FILE);
    // A restart: wait for the new server's, not the old one's.
    match fs::remove_file(&kubeconfig) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove {}", kubeconfig.display()));
        }
        _ => {}
    }
    let log = node.dirs.logs.join("fake-apiserver.log");
    let s = |p: &Path| p.to_str().map(str::to_string).context("non-UTF-8 path");
    let args = [
        s(binary)?,
        "fake-apiserver".into(),
        "--dir".into(),
        s(manifest_dir)?,
        "--listen".into(),
        format!("{}:{FAKE_API_PORT}", node.ip),
        "--service-account-dir".into(),
        s(&node.dirs.root.join(SERVICE_ACCOUNT_DIR))?,
        "--tls-san".into(),
        KUBERNETES_SERVICE_IP.to_string(),
        "--write-kubeconfig".into(),
        s(&kubeconfig)?,
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut guard = node.netns.spawn(&argv, env, &log, node.detached())?;
    let deadline = Instant::now() + FAKE_API_START_TIMEOUT;
    while !kubeconfig.exists() {
        if let Some(status) = guard.try_wait() {
            bail!("the fake API server on {} exited ({status}); last log lines:\n{}", node.name, tail(&log, 20));
        }
        if Instant::now() > deadline {
            bail!(
                "the fake API server on {} wrote no {} within {FAKE_API_START_TIMEOUT:?}; last log lines:\n{}",
                node.name,
                kubeconfig.display(),
                tail(&log, 20)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((guard, log))
}
