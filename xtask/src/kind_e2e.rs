//! `cargo xtask kind-e2e`: weir on a real Kubernetes cluster (kind).
//!
//! Builds the image archive (`cargo xtask image`, no docker build), creates a
//! kind cluster from manifests/kind-config.yaml (a control plane and two
//! workers, no default CNI, no kube-proxy), loads the image into the nodes
//! (`kind load image-archive`), applies manifests/weir.yaml with the API
//! server's address in its ConfigMap, waits for the DaemonSet and the nodes, then checks
//! on the cluster: pods on two nodes, ping and HTTP between them, a
//! ClusterIP Service (by address and by DNS name), a NodePort from other
//! nodes, and NetworkPolicy (default-deny ingress blocks, an allow policy
//! opens for the pods it names only). The cluster is deleted at the end
//! unless `--keep`.
//!
//! Test pods run `busybox` (docker.io/library/busybox, about 2 MB: `sh`,
//! `httpd`, `wget`, `ping`). It is pulled on this machine and loaded into the
//! nodes with `kind load`, so the nodes need no registry access.
//!
//! Exit codes: 0 every check passed; 1 something failed; 2 a prerequisite
//! (docker and its daemon, kind, kubectl) is missing and nothing was tested.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use weir_testbed::{bins, exec};

/// What manifests/weir.yaml runs (imagePullPolicy: IfNotPresent, so the
/// copy `kind load` puts on the nodes is used).
const WEIR_IMAGE: &str = "ghcr.io/weir-net/weir:latest";
const TEST_IMAGE: &str = "docker.io/library/busybox:1.36.1";
const NAMESPACE: &str = "weir-e2e";
const HTTP_PORT: u16 = 8080;
/// How long a change (new endpoints, a new policy) may take to reach the
/// datapath before a check gives up.
const SETTLE: Duration = Duration::from_secs(45);
const SHORT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct KindE2eArgs {
    /// Leave the cluster up at the end (also after a failure) and print how
    /// to reach and delete it.
    #[arg(long)]
    keep: bool,
    /// Name of the kind cluster (must not exist yet).
    #[arg(long, default_value = "weir-e2e")]
    name: String,
    /// Do not build the weir image: use the archive an earlier run (or
    /// `cargo xtask image`) left at <target dir>/weir-image.tar.
    #[arg(long)]
    no_build: bool,
    /// Image of the test pods: needs sh, httpd, wget and ping (busybox).
    #[arg(long, default_value = TEST_IMAGE)]
    test_image: String,
}

// ---------------------------------------------------------------- prerequisites

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prereq {
    Docker,
    DockerDaemon,
    Kind,
    Kubectl,
}

impl Prereq {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::DockerDaemon => "docker daemon",
            Self::Kind => "kind",
            Self::Kubectl => "kubectl",
        }
    }

    pub fn how_to_get(self) -> &'static str {
        match self {
            Self::Docker => {
                "install Docker Engine (https://docs.docker.com/engine/install/; Debian/Ubuntu: `sudo apt-get install docker.io`), then start it"
            }
            Self::DockerDaemon => {
                "start it (`sudo systemctl start docker`, or `sudo dockerd &` without systemd) and make sure this user may use it (root, the `docker` group, or DOCKER_HOST pointing at a running daemon)"
            }
            Self::Kind => {
                "a release binary (`curl -Lo kind https://kind.sigs.k8s.io/dl/v0.29.0/kind-linux-amd64 && chmod +x kind && sudo mv kind /usr/local/bin/`; newer releases: https://kind.sigs.k8s.io/docs/user/quick-start/#installation), or `go install sigs.k8s.io/kind@v0.29.0`"
            }
            Self::Kubectl => {
                "https://kubernetes.io/docs/tasks/tools/ (e.g. `curl -LO \"https://dl.k8s.io/release/$(curl -Ls https://dl.k8s.io/release/stable.txt)/bin/linux/amd64/kubectl\" && sudo install kubectl /usr/local/bin/`)"
            }
        }
    }
}

/// One prerequisite's state: Ok(what was found) or Err(why it is unmet).
pub type PrereqState = (Prereq, Result<String, String>);

/// Checks each prerequisite in order. `find` looks a program up (its path,
/// or None); `docker_info` asks the daemon (its version, or why not) and is
/// only called when the docker client exists.
pub fn check_prerequisites(
    find: impl Fn(&str) -> Option<String>,
    docker_info: impl FnOnce() -> Result<String, String>,
) -> Vec<PrereqState> {
    let found = |p: Prereq| find(p.name()).ok_or_else(|| "not found in PATH".to_string());
    let docker = found(Prereq::Docker);
    let daemon = match &docker {
        Ok(_) => docker_info(),
        Err(_) => Err("cannot be asked without the docker client".to_string()),
    };
    vec![
        (Prereq::Docker, docker),
        (Prereq::DockerDaemon, daemon),
        (Prereq::Kind, found(Prereq::Kind)),
        (Prereq::Kubectl, found(Prereq::Kubectl)),
    ]
}

/// The table printed before anything runs; with unmet prerequisites it says
/// what to install and that nothing was tested.
pub fn prerequisites_report(states: &[PrereqState]) -> (String, bool) {
    let mut out = String::from("kind-e2e: prerequisites\n");
    let mut unmet = Vec::new();
    for (p, state) in states {
        match state {
            Ok(what) => out.push_str(&format!("  ok       {:<14} {what}\n", p.name())),
            Err(why) => {
                out.push_str(&format!("  MISSING  {:<14} {why}\n", p.name()));
                out.push_str(&format!("           {:<14} how: {}\n", "", p.how_to_get()));
                unmet.push(p.name());
            }
        }
    }
    if unmet.is_empty() {
        return (out, true);
    }
    out.push_str(&format!(
        "\nkind-e2e: NOTHING WAS TESTED. Missing: {}. Install what is listed above and run `cargo xtask kind-e2e` again.\n",
        unmet.join(", ")
    ));
    (out, false)
}

/// The executable `name` in PATH.
fn find_in_path(name: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .map(|p| p.display().to_string())
}

fn docker_info() -> Result<String, String> {
    let mut cmd = Command::new("docker");
    cmd.args(["info", "--format", "{{.ServerVersion}}"]);
    match exec::output(&mut cmd, None, Duration::from_secs(30)) {
        Ok(out) if out.success() => Ok(format!("reachable (server {})", out.stdout_str().trim())),
        Ok(out) => {
            let text = format!("{}{}", out.stderr_str(), out.stdout_str());
            let first: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(2).collect();
            Err(format!("`docker info` failed ({}): {}", out.describe_status(), first.join(" / ")))
        }
        Err(e) => Err(format!("`docker info` did not run: {e:#}")),
    }
}

// ---------------------------------------------------------------- the run

pub fn run(args: KindE2eArgs) -> Result<ExitCode> {
    let (report, ok) = prerequisites_report(&check_prerequisites(find_in_path, docker_info));
    if ok {
        print!("{report}");
    } else {
        eprint!("{report}");
        return Ok(ExitCode::from(2));
    }

    let root = bins::workspace_root();
    let cluster = Cluster { name: args.name.clone() };
    let mut steps = Steps::default();

    // The image is an OCI archive built without docker (`cargo xtask
    // image`), loaded into the nodes with `kind load image-archive`.
    let archive = bins::target_dir().join("weir-image.tar");
    if args.no_build {
        steps.next(&format!("use the existing image archive {} (--no-build)", archive.display()));
        if !archive.is_file() {
            bail!("{} does not exist; run without --no-build (or `cargo xtask image`)", archive.display());
        }
    } else {
        steps.next(&format!("build {WEIR_IMAGE} as {} (cargo xtask image)", archive.display()));
        crate::image::build_default(&archive)?;
    }

    steps.next(&format!("make the test pod image {} available", args.test_image));
    let have = exec::output(
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &args.test_image]),
        None,
        SHORT,
    )?;
    if have.success() {
        println!("    already in the local docker");
    } else {
        must(Command::new("docker").args(["pull", &args.test_image]))?;
    }

    steps.next(&format!("create kind cluster {:?} from manifests/kind-config.yaml", cluster.name));
    let existing = exec::run(Command::new("kind").args(["get", "clusters"]), SHORT)?;
    if existing.lines().any(|l| l.trim() == cluster.name) {
        bail!(
            "a kind cluster named {:?} already exists; delete it (`kind delete cluster --name {}`) or pass --name",
            cluster.name,
            cluster.name
        );
    }
    must(
        Command::new("kind")
            .args(["create", "cluster", "--name", &cluster.name, "--config"])
            .arg(root.join("manifests/kind-config.yaml")),
    )?;
    println!("    (if this run is interrupted: `kind delete cluster --name {}`)", cluster.name);

    let outcome = on_cluster(&cluster, &args, &root, &mut steps);
    let failed = match &outcome {
        Ok(checks) => checks.iter().filter(|c| !c.ok).count(),
        Err(_) => 1,
    };
    if failed > 0 {
        diagnostics(&cluster);
    }

    match &outcome {
        Ok(checks) => {
            println!("\nkind-e2e: results");
            for c in checks {
                println!("  {}  {}", if c.ok { "PASS" } else { "FAIL" }, c.name);
            }
        }
        Err(e) => eprintln!("\nkind-e2e: stopped before the checks finished: {e:#}"),
    }

    if args.keep {
        println!(
            "\nkind-e2e: cluster kept. kubectl --context {} get pods -A -o wide\ndelete it with: kind delete cluster --name {}",
            cluster.context(),
            cluster.name
        );
    } else {
        steps.next(&format!("delete kind cluster {:?}", cluster.name));
        if let Err(e) = must(Command::new("kind").args(["delete", "cluster", "--name", &cluster.name])) {
            eprintln!("kind-e2e: could not delete the cluster: {e:#}");
        }
    }

    match outcome {
        Ok(checks) if failed == 0 => {
            println!("\nkind-e2e: all {} checks passed", checks.len());
            Ok(ExitCode::SUCCESS)
        }
        Ok(checks) => {
            eprintln!("\nkind-e2e: {failed} of {} checks FAILED", checks.len());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e),
    }
}

/// Everything after the cluster exists: setup steps fail the run, checks
/// are all tried and collected.
fn on_cluster(cluster: &Cluster, args: &KindE2eArgs, root: &Path, steps: &mut Steps) -> Result<Vec<Check>> {
    steps.next("load the images into the kind nodes");
    let archive = bins::target_dir().join("weir-image.tar");
    must(Command::new("kind").arg("load").arg("image-archive").arg(&archive).args(["--name", &cluster.name]))?;
    must(Command::new("kind").args(["load", "docker-image", args.test_image.as_str(), "--name", &cluster.name]))?;

    steps.next("mount bpffs on every node (kind nodes start without it)");
    let nodes = exec::run(Command::new("kind").args(["get", "nodes", "--name", &cluster.name]), SHORT)?;
    for node in nodes.split_whitespace() {
        must(Command::new("docker").args([
            "exec",
            node,
            "sh",
            "-c",
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf",
        ]))?;
    }

    // Without kube-proxy nothing serves the `kubernetes` ClusterIP before
    // weir runs: the agent gets the API server's own address, as the
    // README's kind section shows (the control-plane node, port 6443).
    let api_host = format!("{}-control-plane", cluster.name);
    steps.next(&format!("kubectl apply -f manifests/weir.yaml (k8s-service-host {api_host}, k8s-service-port 6443)"));
    let manifest = std::fs::read_to_string(root.join("manifests/weir.yaml")).context("reading manifests/weir.yaml")?;
    let applied = root.join("target").join(format!("weir-{}.yaml", cluster.name));
    std::fs::write(&applied, with_api_server(&manifest, &api_host, 6443)?)
        .with_context(|| format!("writing {}", applied.display()))?;
    must(cluster.kubectl().arg("apply").arg("-f").arg(&applied))?;

    steps.next("wait for the weir-agent DaemonSet rollout");
    must(cluster.kubectl().args(["-n", "kube-system", "rollout", "status", "daemonset/weir-agent", "--timeout=6m"]))?;

    steps.next("wait for every node to be Ready");
    must(cluster.kubectl().args(["wait", "--for=condition=Ready", "node", "--all", "--timeout=3m"]))?;

    steps.next("wait for CoreDNS (its first pods need the CNI)");
    must(cluster.kubectl().args(["-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=3m"]))?;

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
    let objects = test_objects(&args.test_image, &nodes.workers[0].0, &nodes.workers[1].0);
    apply_stdin(cluster, &objects)?;
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
    for (name, (ip, node)) in &pods.0 {
        println!("    pod {name}: {ip} on {node}");
    }
    println!("    Service web: {cluster_ip}:80; web-nodeport: nodePort {node_port}");

    let mut checks = Vec::new();
    let web_a = pods.ip("web-a")?;
    let web_b = pods.ip("web-b")?;
    let web_bodies: BTreeSet<String> = ["web-a".to_string(), "web-b".to_string()].into();

    steps.next("connectivity checks");
    checks.push(Check::new("web-a and web-b run on different nodes, client beside web-a", || {
        let (a, b, c) = (pods.node("web-a")?, pods.node("web-b")?, pods.node("client")?);
        if a != b && a == c {
            Ok(format!("web-a on {a}, web-b on {b}, client on {c}"))
        } else {
            bail!("web-a on {a}, web-b on {b}, client on {c}")
        }
    }));
    checks.push(Check::new(&format!("ping client -> web-b {web_b} (across nodes)"), || {
        eventually(SETTLE, || cluster.exec_in("client", &["ping", "-c", "3", "-W", "2", &web_b]))
    }));
    checks.push(Check::new(&format!("ping client -> web-a {web_a} (same node)"), || {
        eventually(SETTLE, || cluster.exec_in("client", &["ping", "-c", "3", "-W", "2", &web_a]))
    }));
    checks.push(Check::new(&format!("HTTP client -> web-b {web_b}:{HTTP_PORT} (across nodes)"), || {
        eventually(SETTLE, || expect_body(cluster.http_get("client", &web_b, HTTP_PORT), "web-b"))
    }));
    checks.push(Check::new(&format!("ClusterIP {cluster_ip}:80 from client reaches both backends"), || {
        let deadline = Instant::now() + SETTLE;
        let mut seen = BTreeSet::new();
        let mut last_error = String::from("no attempt");
        while Instant::now() < deadline && seen != web_bodies {
            match cluster.http_get("client", &cluster_ip, 80) {
                Ok(body) if web_bodies.contains(body.trim()) => {
                    seen.insert(body.trim().to_string());
                }
                Ok(body) => last_error = format!("unexpected answer {body:?}"),
                Err(e) => {
                    last_error = format!("{e:#}");
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
        if seen == web_bodies {
            Ok(format!("answered by {}", seen.into_iter().collect::<Vec<_>>().join(" and ")))
        } else {
            bail!("answered by {seen:?} only; last problem: {last_error}")
        }
    }));
    let dns_name = format!("web.{NAMESPACE}.svc.cluster.local");
    checks.push(Check::new(&format!("ClusterIP by DNS name {dns_name} (CoreDNS through its own Service)"), || {
        eventually(SETTLE, || expect_one_of(cluster.http_get("client", &dns_name, 80), &web_bodies))
    }));
    // From the host network of one node to another node's address.
    let np_cases = [
        (&nodes.control_plane, &nodes.workers[1]),
        (&nodes.workers[1], &nodes.workers[0]),
        (&nodes.workers[0], &nodes.control_plane),
    ];
    for (from, to) in np_cases {
        let url = format!("http://{}:{node_port}/", to.1);
        checks.push(Check::new(&format!("NodePort {url} from node {} (host network)", from.0), || {
            eventually(SETTLE, || {
                expect_one_of(
                    exec::run(
                        Command::new("docker").args(["exec", &from.0, "curl", "-sS", "--max-time", "3", &url]),
                        SHORT,
                    ),
                    &web_bodies,
                )
            })
        }));
    }

    steps.next(&format!("NetworkPolicy: default-deny ingress in {NAMESPACE}"));
    apply_stdin(cluster, &deny_all_ingress())?;
    checks.push(Check::new("default-deny blocks client -> web-b", || {
        eventually_blocked(SETTLE, || cluster.http_get("client", &web_b, HTTP_PORT))
    }));
    checks.push(Check::new("default-deny blocks client -> ClusterIP (policy sees the backend)", || {
        still_blocked(|| cluster.http_get("client", &cluster_ip, 80))
    }));

    steps.next("NetworkPolicy: allow role=client -> app=web on TCP 8080");
    apply_stdin(cluster, &allow_client())?;
    checks.push(Check::new("allow policy opens client -> web-b (across nodes)", || {
        eventually(SETTLE, || expect_body(cluster.http_get("client", &web_b, HTTP_PORT), "web-b"))
    }));
    checks.push(Check::new("allow policy opens client -> web-a (same node)", || {
        eventually(SETTLE, || expect_body(cluster.http_get("client", &web_a, HTTP_PORT), "web-a"))
    }));
    checks.push(Check::new("allow policy opens client -> ClusterIP", || {
        eventually(SETTLE, || expect_one_of(cluster.http_get("client", &cluster_ip, 80), &web_bodies))
    }));
    checks.push(Check::new("pod without role=client stays blocked: other -> web-a (across nodes)", || {
        still_blocked(|| cluster.http_get("other", &web_a, HTTP_PORT))
    }));
    Ok(checks)
}

// ---------------------------------------------------------------- checks

struct Check {
    name: String,
    ok: bool,
}

impl Check {
    /// Runs one check and prints its outcome as it happens.
    fn new(name: &str, f: impl FnOnce() -> Result<String>) -> Self {
        println!("    ... {name}");
        let started = Instant::now();
        let outcome = f();
        let took = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(detail) => println!("    PASS {name} ({took:.1} s){}", detail_suffix(detail)),
            Err(e) => println!("    FAIL {name} ({took:.1} s): {e:#}"),
        }
        Self { name: name.to_string(), ok: outcome.is_ok() }
    }
}

fn detail_suffix(detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() || detail.contains('\n') { String::new() } else { format!(": {detail}") }
}

/// Retries `f` until it succeeds or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> Result<String>) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {} s", within.as_secs())));
            }
            Err(_) => thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Why an HTTP probe counts as blocked: wget itself ran and reported the
/// failure. Anything else (kubectl could not exec, the pod is gone) proves
/// nothing about the policy and is an error.
fn blocked(probe: Result<String>) -> Result<std::result::Result<String, String>> {
    match probe {
        Ok(answer) => Ok(Err(answer)),
        Err(e) => {
            let text = format!("{e:#}");
            match text.lines().find_map(|l| l.find("wget: ").map(|at| &l[at..])) {
                Some(line) => Ok(Ok(line.trim().to_string())),
                None => Err(e.context("the probe itself failed")),
            }
        }
    }
}

/// Waits until `f` is blocked twice in a row (a policy taking effect); a
/// single failure may be a hiccup.
fn eventually_blocked(within: Duration, mut f: impl FnMut() -> Result<String>) -> Result<String> {
    let deadline = Instant::now() + within;
    let mut failures = 0;
    loop {
        match blocked(f())? {
            Err(answer) => {
                failures = 0;
                if Instant::now() >= deadline {
                    bail!("still open after {} s (answered {:?})", within.as_secs(), answer.trim());
                }
                thread::sleep(Duration::from_secs(1));
            }
            Ok(why) => {
                failures += 1;
                if failures == 2 {
                    return Ok(format!("blocked twice in a row ({why})"));
                }
            }
        }
    }
}

/// `f` must be blocked on every one of three tries.
fn still_blocked(mut f: impl FnMut() -> Result<String>) -> Result<String> {
    let mut why = String::new();
    for _ in 0..3 {
        match blocked(f())? {
            Err(answer) => bail!("open: answered {:?}", answer.trim()),
            Ok(w) => why = w,
        }
    }
    Ok(format!("blocked three times ({why})"))
}

fn expect_body(got: Result<String>, want: &str) -> Result<String> {
    let body = got?;
    if body.trim() == want {
        Ok(format!("answered {want:?}"))
    } else {
        bail!("answered {:?}, expected {want:?}", body.trim())
    }
}

fn expect_one_of(got: Result<String>, want: &BTreeSet<String>) -> Result<String> {
    let body = got?;
    if want.contains(body.trim()) {
        Ok(format!("answered {:?}", body.trim()))
    } else {
        bail!("answered {:?}, expected one of {want:?}", body.trim())
    }
}

// ---------------------------------------------------------------- the cluster

struct Cluster {
    name: String,
}

impl Cluster {
    fn context(&self) -> String {
        format!("kind-{}", self.name)
    }

    /// kubectl bound to this cluster's context, whatever the current one is.
    fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--context").arg(self.context());
        cmd
    }

    fn get_json(&self, args: &[&str]) -> Result<Value> {
        let out = exec::run(self.kubectl().args(args), SHORT)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {} printed no JSON", args.join(" ")))
    }

    /// A command in a test pod; its stdout, or an error quoting stderr.
    fn exec_in(&self, pod: &str, command: &[&str]) -> Result<String> {
        exec::run(self.kubectl().args(["-n", NAMESPACE, "exec", pod, "--"]).args(command), SHORT)
    }

    /// GET / from a test pod (busybox wget, 3 s deadline): the body.
    fn http_get(&self, pod: &str, host: &str, port: u16) -> Result<String> {
        self.exec_in(pod, &["wget", "-q", "-O", "-", "-T", "3", &format!("http://{host}:{port}/")])
    }
}

/// (name, InternalIP) of the control plane and the two workers.
struct Nodes {
    control_plane: (String, String),
    workers: [(String, String); 2],
}

impl Nodes {
    fn read(cluster: &Cluster) -> Result<Self> {
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
struct Pods(std::collections::BTreeMap<String, (String, String)>);

impl Pods {
    fn read(cluster: &Cluster) -> Result<Self> {
        let list = cluster.get_json(&["-n", NAMESPACE, "get", "pods", "-o", "json"])?;
        let mut pods = std::collections::BTreeMap::new();
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

    fn ip(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?.0.clone())
    }

    fn node(&self, name: &str) -> Result<String> {
        Ok(self.get(name)?.1.clone())
    }
}

/// The namespace, four pods and two Services of the checks.
fn test_objects(image: &str, node_a: &str, node_b: &str) -> String {
    let server = |name: &str, node: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NAMESPACE}
  labels: {{app: web}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 0
  containers:
    - name: httpd
      image: {image}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p {HTTP_PORT} -h /www"]
      ports: [{{containerPort: {HTTP_PORT}}}]
      readinessProbe:
        tcpSocket: {{port: {HTTP_PORT}}}
        periodSeconds: 2
---
"#
        )
    };
    let client = |name: &str, role: &str, node: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NAMESPACE}
  labels: {{role: {role}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 0
  containers:
    - name: sh
      image: {image}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "86400"]
      securityContext:
        capabilities: {{add: [NET_RAW]}}
---
"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
{}{}{}{}apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {NAMESPACE}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: {HTTP_PORT}, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-nodeport
  namespace: {NAMESPACE}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: {HTTP_PORT}, protocol: TCP}}]
"#,
        server("web-a", node_a),
        server("web-b", node_b),
        client("client", "client", node_a),
        client("other", "other", node_b),
    )
}

fn deny_all_ingress() -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: {NAMESPACE}
spec:
  podSelector: {{}}
  policyTypes: [Ingress]
"#
    )
}

fn allow_client() -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-client-to-web
  namespace: {NAMESPACE}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
  ingress:
    - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]
      ports: [{{protocol: TCP, port: {HTTP_PORT}}}]
"#
    )
}

fn apply_stdin(cluster: &Cluster, yaml: &str) -> Result<()> {
    let mut cmd = cluster.kubectl();
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
fn diagnostics(cluster: &Cluster) {
    println!("\nkind-e2e: diagnostics");
    let show: [&[&str]; 4] = [
        &["get", "nodes", "-o", "wide"],
        &["get", "pods", "-A", "-o", "wide"],
        &["-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"],
        &["-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=weir-agent", "--prefix", "--tail=40"],
    ];
    for args in show {
        let mut cmd = cluster.kubectl();
        cmd.args(args);
        println!("==> {}", exec::describe(&cmd));
        match exec::output(&mut cmd, None, SHORT) {
            Ok(out) => print!("{}{}", out.stdout_str(), out.stderr_str()),
            Err(e) => println!("({e:#})"),
        }
    }
}

// ---------------------------------------------------------------- helpers

#[derive(Default)]
struct Steps(usize);

impl Steps {
    fn next(&mut self, what: &str) {
        self.0 += 1;
        println!("\n[kind-e2e step {}] {what}", self.0);
    }
}

/// Runs with the output on the terminal; a non-zero exit is an error.
fn must(cmd: &mut Command) -> Result<()> {
    crate::cargo::must(cmd)
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
    use std::cell::Cell;

    use super::*;

    fn found(names: &'static [&'static str]) -> impl Fn(&str) -> Option<String> {
        move |n| names.contains(&n).then(|| format!("/usr/bin/{n}"))
    }

    #[test]
    fn everything_present_means_go() {
        let states =
            check_prerequisites(found(&["docker", "kind", "kubectl"]), || Ok("reachable (server 27.0)".into()));
        assert!(states.iter().all(|(_, s)| s.is_ok()), "{states:?}");
        let (text, ok) = prerequisites_report(&states);
        assert!(ok);
        assert!(!text.contains("NOTHING"), "{text}");
    }

    #[test]
    fn each_missing_tool_is_named_with_how_to_get_it() {
        let asked = Cell::new(false);
        let states = check_prerequisites(found(&["kubectl"]), || {
            asked.set(true);
            Ok(String::new())
        });
        assert!(!asked.get(), "no docker client: the daemon cannot be asked");
        let unmet: Vec<Prereq> = states.iter().filter(|(_, s)| s.is_err()).map(|(p, _)| *p).collect();
        assert_eq!(unmet, [Prereq::Docker, Prereq::DockerDaemon, Prereq::Kind]);
        let (text, ok) = prerequisites_report(&states);
        assert!(!ok);
        assert!(text.contains("NOTHING WAS TESTED"), "{text}");
        assert!(text.contains("Missing: docker, docker daemon, kind."), "{text}");
        assert!(text.contains("go install sigs.k8s.io/kind"), "{text}");
        assert!(text.contains("ok       kubectl"), "{text}");
    }

    #[test]
    fn a_docker_client_without_a_daemon_is_not_enough() {
        let states = check_prerequisites(found(&["docker", "kind", "kubectl"]), || {
            Err("`docker info` failed: Cannot connect to the Docker daemon".into())
        });
        let (text, ok) = prerequisites_report(&states);
        assert!(!ok);
        assert!(text.contains("MISSING  docker daemon"), "{text}");
        assert!(text.contains("Cannot connect to the Docker daemon"), "{text}");
        assert!(text.contains("Missing: docker daemon."), "{text}");
    }

    #[test]
    fn only_wget_reporting_a_failure_counts_as_blocked() {
        let err = |text: &str| Err(anyhow::anyhow!("{text}"));
        let timed_out =
            "`kubectl exec` failed (exit code 1): wget: download timed out\ncommand terminated with exit code 1";
        assert_eq!(blocked(err(timed_out)).unwrap(), Ok("wget: download timed out".to_string()));
        assert_eq!(blocked(Ok("web-a\n".into())).unwrap(), Err("web-a\n".to_string()));
        assert!(blocked(err("`kubectl exec` failed (exit code 1): error: pod client not found")).is_err());
        assert!(still_blocked(|| err(timed_out)).is_ok());
        assert!(still_blocked(|| Ok("web-a".into())).is_err());
    }

    #[test]
    fn the_test_objects_pin_pods_to_the_two_workers() {
        let yaml = test_objects(TEST_IMAGE, "w1", "w2");
        assert_eq!(yaml.matches("kind: Pod\n").count(), 4);
        assert!(yaml.contains("name: web-a\n  namespace: weir-e2e\n  labels: {app: web}\nspec:\n  nodeSelector: {kubernetes.io/hostname: w1}"), "{yaml}");
        assert!(yaml.contains("name: other\n  namespace: weir-e2e\n  labels: {role: other}\nspec:\n  nodeSelector: {kubernetes.io/hostname: w2}"), "{yaml}");
        assert!(yaml.contains("type: NodePort"));
        assert!(allow_client().contains("port: 8080"));
    }

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
