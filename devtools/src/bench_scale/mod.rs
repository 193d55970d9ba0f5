//! `weir-dev bench-scale`: the agent on its kube source against this
//! process's fake API server loaded with a whole synthetic cluster (Nodes,
//! Pods, Services with EndpointSlices, Namespaces, NetworkPolicies), from
//! one node's point of view. `cargo xtask bench scale` runs it in a node
//! namespace of its own and prints the report against the goals.
//!
//! What it measures, in order:
//! - start to ready: the agent's process start to its ready marker, and
//!   its RSS then (current and peak);
//! - one pod label change to the policy maps: a remote pod's `tier` label
//!   flips, which changes its identity; the time until its ipcache entry
//!   (written after the policy entries that name the new identity) holds
//!   the new identity, one change at a time;
//! - pod churn at a fixed rate (status updates, relabels, and pods replaced
//!   as a rollout replaces them): the agent's CPU, normalised to 1,000
//!   changes per second, and the bytes the Pod watch sent per change;
//! - a forced relist: the API's event log is compacted, every watch gets
//!   410 Gone and relists; a label change made right then is timed to the
//!   ipcache as above, and the agent's peak RSS is read again.
pub mod cluster;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, lpm_trie::Key as LpmKey, lpm_trie::LpmTrie};
use tokio::net::TcpListener;
use weir_common::{
    pin,
    policy::{IpcacheEntry, IpcacheKey},
};

use crate::fake_api::{self, Resource, Shared, Store, store};
use cluster::{Layout, PodSpec, Shape};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub nodes: usize,
    #[arg(long)]
    pub pods: usize,
    #[arg(long)]
    pub services: usize,
    #[arg(long)]
    pub policies: usize,
    /// The agent's node (node 0 of the cluster) and its InternalIP.
    #[arg(long)]
    pub node_name: String,
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// Peer nodes' InternalIPs are taken from this /16 (on the node's link).
    #[arg(long, default_value = "172.31.0.0")]
    pub peer_network: Ipv4Addr,
    /// The agent's bpfPinDir (the ipcache is read from it).
    #[arg(long)]
    pub pin_dir: PathBuf,
    /// The agent's ready marker (`<runDir>/agent-ready`).
    #[arg(long)]
    pub ready_file: PathBuf,
    /// Where the kubeconfig for the fake API server is written.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The agent's log.
    #[arg(long)]
    pub agent_log: PathBuf,
    /// The report (JSON) is written here as well as printed.
    #[arg(long)]
    pub report: PathBuf,
    /// The agent's status port (its `--status-addr`), for /readyz.
    #[arg(long, default_value_t = 9878)]
    pub status_port: u16,
    /// Label changes timed one by one.
    #[arg(long, default_value_t = 40)]
    pub label_changes: usize,
    /// Pod changes per second during the churn phase.
    #[arg(long, default_value_t = 200)]
    pub churn_rate: usize,
    #[arg(long, default_value_t = 10)]
    pub churn_secs: u64,
    /// Seconds the agent gets to become ready.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout: u64,
    /// The agent's command line (`weir-agent run ...`), without `--source`.
    #[arg(last = true, required = true)]
    pub agent: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub shape: Option<Shape>,
    pub objects: usize,
    pub generate_s: f64,
    /// Bytes of the first lists the agent received, per kind.
    pub list_bytes: Vec<(String, u64)>,
    /// To the ready marker (pods can start: node plumbing in place).
    pub node_ready_s: f64,
    /// To /readyz answering 200: every list received and programmed.
    pub ready_s: f64,
    pub rss_ready_mib: f64,
    pub rss_peak_ready_mib: f64,
    pub label_change_ms: Vec<f64>,
    pub churn_changes: usize,
    pub churn_secs: f64,
    pub churn_cpu_cores: f64,
    pub cpu_cores_per_1k_changes_per_s: f64,
    pub bytes_per_pod_change: f64,
    pub idle_cpu_cores: f64,
    pub relist_label_change_ms: f64,
    pub rss_after_relist_mib: f64,
    pub rss_peak_mib: f64,
    pub pod_event_bytes_mean: f64,
}

/// The agent child, killed when dropped.
struct AgentChild(Child);

impl AgentChild {
    /// Polls `ready` every 10 ms until it holds; an error when the agent
    /// exits first or `args.ready_timeout` (from `start`) passes.
    async fn until<F: std::future::Future<Output = bool>>(
        &mut self,
        start: Instant,
        args: &Args,
        what: &str,
        mut ready: impl FnMut() -> F,
    ) -> anyhow::Result<()> {
        while !ready().await {
            if let Some(status) = self.0.try_wait()? {
                bail!("the agent exited before {what} ({status}); see {}", args.agent_log.display());
            }
            if start.elapsed() > Duration::from_secs(args.ready_timeout) {
                bail!("no {what} after {} s; see {}", args.ready_timeout, args.agent_log.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl Drop for AgentChild {
    fn drop(&mut self) {
        // SIGTERM first: the agent leaves its pins for the next run but
        // stops its servers.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the bench's pods are and what it changed of them.
struct Pods<'a> {
    shape: &'a Shape,
    layout: &'a Layout,
    /// Per pod: (replica id, generation, canary).
    state: Vec<(usize, usize, bool)>,
    next_replica: usize,
    rng: u64,
}

impl<'a> Pods<'a> {
    fn new(shape: &'a Shape, layout: &'a Layout) -> Self {
        Self {
            shape,
            layout,
            state: (0..shape.pods).map(|p| (p, 0, false)).collect(),
            next_replica: shape.pods,
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    fn spec(&self, p: usize) -> PodSpec<'a> {
        let (replica, generation, _) = self.state[p];
        PodSpec {
            shape: self.shape,
            layout: self.layout,
            app: p % self.shape.services.max(1),
            node: p % self.shape.nodes,
            slot: p / self.shape.nodes,
            generation,
            replica,
        }
    }

    fn json(&self, p: usize) -> serde_json::Value {
        let mut v = self.spec(p).to_json();
        if self.state[p].2 {
            v["metadata"]["labels"]["tier"] = serde_json::json!("canary");
        }
        v
    }

    fn key(&self, p: usize) -> store::Key {
        let spec = self.spec(p);
        (Resource::Pod, spec.namespace(), spec.name())
    }

    fn random(&mut self, below: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % below as u64) as usize
    }

    /// A pod on another node than the agent's.
    fn remote(&mut self) -> usize {
        loop {
            let p = self.random(self.shape.pods);
            if !p.is_multiple_of(self.shape.nodes) {
                return p;
            }
        }
    }

    /// Flips pod `p`'s tier label; returns how many store changes.
    fn relabel(&mut self, p: usize, store: &mut Store) -> usize {
        self.state[p].2 = !self.state[p].2;
        usize::from(store.upsert(self.key(p), self.json(p)))
    }

    /// One change as churn makes them: 70% status updates, 15% relabels,
    /// 15% pods replaced (deleted, then created with a new name on the
    /// same address, as a rollout does).
    fn churn_one(&mut self, store: &mut Store) -> usize {
        let p = self.remote();
        match self.random(100) {
            0..70 => {
                self.state[p].1 += 1;
                usize::from(store.upsert(self.key(p), self.json(p)))
            }
            70..85 => self.relabel(p, store),
            _ => {
                let gone = usize::from(store.remove(&self.key(p)));
                self.state[p].0 = self.next_replica;
                self.next_replica += 1;
                gone + usize::from(store.upsert(self.key(p), self.json(p)))
            }
        }
    }
}

/// /proc/<pid>/status values in MiB: (VmRSS, VmHWM).
fn rss(pid: u32) -> (f64, f64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) the process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 here.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) / hz
}

fn ipcache_key(ip: Ipv4Addr) -> LpmKey<IpcacheKey> {
    LpmKey::new(32, IpcacheKey { addr: u32::from_ne_bytes(ip.octets()) })
}

fn identity(map: &LpmTrie<MapData, IpcacheKey, IpcacheEntry>, ip: Ipv4Addr) -> Option<u32> {
    map.get(&ipcache_key(ip), 0).ok().map(|e| e.identity)
}

/// Waits until `ip`'s identity is no longer `before`; the time since `from`.
async fn until_changed(
    map: &LpmTrie<MapData, IpcacheKey, IpcacheEntry>,
    ip: Ipv4Addr,
    before: Option<u32>,
    from: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if identity(map, ip) != before {
            return Ok(from.elapsed());
        }
        if from.elapsed() > timeout {
            bail!("{ip}'s ipcache entry still holds identity {before:?} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Whether the agent's /readyz answers 200 (on the namespace's loopback).
async fn readyz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))),
    )
    .await
    else {
        return false;
    };
    if conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(tokio::time::timeout(Duration::from_millis(500), conn.read_exact(&mut head)).await, Ok(Ok(_)))
        && head.starts_with(b"HTTP/1.1 200")
}

fn ready_pid(path: &Path) -> Option<u64> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["pid"].as_u64())
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let shape = Shape { nodes: args.nodes, pods: args.pods, services: args.services, policies: args.policies };
    if shape.nodes == 0 || shape.pods / shape.nodes >= 250 || shape.pods < shape.nodes {
        bail!("--pods must be between --nodes and 250 x --nodes");
    }
    let layout = Layout { own_node: args.node_name.clone(), own_ip: args.node_ip, peer_network: args.peer_network };
    let mut report = Report { shape: Some(shape), ..Report::default() };

    let started = Instant::now();
    let objects = cluster::generate(&shape, &layout);
    report.objects = objects.len();
    let mut store = Store::new(store::start_resource_version(), store::DEFAULT_LOG_CAPACITY);
    store.replace_all(objects);
    report.generate_s = started.elapsed().as_secs_f64();
    let shared = Shared::new(store);

    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("listen on loopback")?;
    fake_api::write_kubeconfig(&args.kubeconfig, listener.local_addr()?, None)?;
    tokio::spawn(fake_api::serve(listener, shared.clone()));

    // The agent.
    let log = fs::File::create(&args.agent_log).with_context(|| format!("create {}", args.agent_log.display()))?;
    let (program, rest) = args.agent.split_first().context("no agent command")?;
    let start = Instant::now();
    let child = Command::new(program)
        .args(rest)
        .arg("--source")
        .arg(format!("kube:{}", args.kubeconfig.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {program}"))?;
    let mut agent = AgentChild(child);
    let pid = agent.0.id();
    agent
        .until(start, &args, "its ready marker", || async { ready_pid(&args.ready_file) == Some(u64::from(pid)) })
        .await?;
    report.node_ready_s = start.elapsed().as_secs_f64();
    agent.until(start, &args, "/readyz answering 200", || readyz(args.status_port)).await?;
    report.ready_s = start.elapsed().as_secs_f64();
    (report.rss_ready_mib, report.rss_peak_ready_mib) = rss(pid);
    report.list_bytes = Resource::ALL.iter().map(|r| (r.kind().to_string(), shared.sent_bytes(*r))).collect();
    eprintln!("bench-scale: ready after {:.2} s, RSS {:.1} MiB", report.ready_s, report.rss_ready_mib);

    let map: LpmTrie<MapData, IpcacheKey, IpcacheEntry> =
        weir_agent::datapath::pinned::open(&args.pin_dir, pin::MAP_IPCACHE).context("open the ipcache")?;
    let mut pods = Pods::new(&shape, &layout);

    // Idle CPU: nothing changes for 2 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.idle_cpu_cores = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();

    // One label change at a time.
    let timeout = Duration::from_secs(60);
    for _ in 0..args.label_changes {
        let p = pods.remote();
        let ip = pods.spec(p).ip();
        let before = identity(&map, ip);
        if before.is_none() {
            bail!("pod {ip} is not in the ipcache");
        }
        let from = Instant::now();
        shared.update(|s| pods.relabel(p, s));
        let took = until_changed(&map, ip, before, from, timeout).await?;
        report.label_change_ms.push(took.as_secs_f64() * 1e3);
    }

    // Churn at a fixed rate, in 10 ms batches.
    let pod_bytes0 = shared.sent_bytes(Resource::Pod);
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let total = args.churn_rate * args.churn_secs as usize;
    let mut made = 0usize;
    let mut events = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while made < total {
        tick.tick().await;
        let due = ((t0.elapsed().as_secs_f64() * args.churn_rate as f64) as usize).min(total);
        if due > made {
            let n = due - made;
            events += shared.update(|s| (0..n).map(|_| pods.churn_one(s)).sum::<usize>());
            made = due;
        }
    }
    // The agent has caught up when a marker change arrives.
    let p = pods.remote();
    let ip = pods.spec(p).ip();
    let before = identity(&map, ip);
    let from = Instant::now();
    shared.update(|s| pods.relabel(p, s));
    until_changed(&map, ip, before, from, timeout).await?;
    let secs = t0.elapsed().as_secs_f64();
    report.churn_changes = made;
    report.churn_secs = secs;
    report.churn_cpu_cores = (cpu_seconds(pid) - cpu0) / secs;
    report.cpu_cores_per_1k_changes_per_s = report.churn_cpu_cores / (made as f64 / secs / 1000.0);
    let pod_bytes = (shared.sent_bytes(Resource::Pod) - pod_bytes0) as f64;
    report.bytes_per_pod_change = pod_bytes / made.max(1) as f64;
    report.pod_event_bytes_mean = pod_bytes / (events + 1).max(1) as f64;

    // A forced relist of every kind, and a label change made meanwhile.
    let p = pods.remote();
    let ip = pods.spec(p).ip();
    let before = identity(&map, ip);
    let from = Instant::now();
    shared.update(|s| {
        s.compact();
        pods.relabel(p, s)
    });
    let took = until_changed(&map, ip, before, from, timeout).await?;
    report.relist_label_change_ms = took.as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (report.rss_after_relist_mib, report.rss_peak_mib) = rss(pid);

    if let Some(status) = agent.0.try_wait()? {
        bail!("the agent exited during the bench ({status}); see {}", args.agent_log.display());
    }
    drop(agent);
    fs::write(&args.report, serde_json::to_vec(&report)?)?;
    Ok(report)
}
