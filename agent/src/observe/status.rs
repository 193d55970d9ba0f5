//! The agent's own HTTP endpoint for the kubelet and Prometheus:
//! - `/healthz`: the main loop turned within the last 30 s (liveness);
//! - `/readyz`: the node is set up, every watch has delivered its list and
//!   the last sync wrote everything (readiness);
//! - `/metrics`: Prometheus text format. What it shows from the pinned maps
//!   is read off the async runtime and cached (`map_samples`): a scrape
//!   never walks a map on a runtime worker, and /healthz and /readyz never
//!   touch one.
mod map_samples;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::net::TcpListener;
use tracing::warn;

pub use self::map_samples::{MapCache, MapSamples, MapScan};
use crate::{
    datapath::map_fill::Walk,
    observe::{histogram::Histogram, http},
};

const LIVENESS_WINDOW: Duration = Duration::from_secs(30);
/// The longest request head the status server reads.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Default)]
pub struct Status {
    /// Unix seconds of the main loop's last turn.
    heartbeat: AtomicU64,
    node_ready: AtomicBool,
    synced: AtomicBool,
    sync_ok: AtomicBool,
    gauges: Mutex<Gauges>,
    /// Kinds whose watch cannot reach the API server right now.
    unreachable: Mutex<std::collections::BTreeSet<String>>,
    /// Objects per kind that could not be read as written.
    problems: Mutex<std::collections::BTreeMap<String, usize>>,
    syncs: AtomicU64,
    sync_seconds_total: Mutex<f64>,
    sync_errors: AtomicU64,
    /// Policy slot -> `namespace/name`, and endpoint ifindex -> pod, to
    /// label the datapath's policy counters.
    policy_names: Mutex<(BTreeMap<u32, String>, BTreeMap<u32, String>)>,
    /// weir-cni's per-command reports (`node::cni_metrics`).
    cni: Arc<crate::observe::cni_metrics::CniMetrics>,
    /// Connect-time Service load balancing: Ok(the cgroup it is attached
    /// to) or Err(why it is off). Shown, never a reason to be unready.
    socket_lb: Mutex<Option<Result<String, String>>>,
    /// Unix milliseconds of the last reconcile that wrote everything.
    last_clean_sync_ms: AtomicU64,
    programming: Mutex<ProgrammingLatency>,
    /// Flow events (`weir_flow*`), once the agent reads them.
    flows: std::sync::OnceLock<Arc<crate::observe::flows::Hub>>,
}

/// Buckets of `weir_network_programming_duration_seconds`: kube-proxy's
/// `network_programming_duration_seconds` covers 0.25 s to 5 min; these
/// start lower, since writing maps takes milliseconds.
pub const PROGRAMMING_BUCKETS: [f64; 13] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

struct ProgrammingLatency(Histogram);

impl Default for ProgrammingLatency {
    fn default() -> Self {
        Self(Histogram::new(&PROGRAMMING_BUCKETS))
    }
}

/// EndpointSlice changes waiting for the datapath write that makes them
/// effective: the time from each change (its
/// `endpoints.kubernetes.io/last-change-trigger-time`) to the end of the
/// first reconcile after it that left nothing unwritten, as kube-proxy
/// measures network programming latency. Changes from before the agent
/// started are not counted (their wait includes the agent's absence).
#[derive(Debug)]
pub struct ProgrammingClock {
    started: SystemTime,
    pending: Vec<SystemTime>,
}

impl ProgrammingClock {
    pub fn new(started: SystemTime) -> Self {
        Self { started, pending: Vec::new() }
    }

    pub fn note(&mut self, trigger_time: Option<SystemTime>) {
        if let Some(t) = trigger_time.filter(|t| *t >= self.started) {
            self.pending.push(t);
        }
    }

    /// The latencies of every pending change, programmed at `now`.
    pub fn programmed(&mut self, now: SystemTime) -> Vec<f64> {
        self.pending.drain(..).map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64()).collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub nodes: usize,
    pub services: usize,
    pub endpoint_slices: usize,
    pub frontends: usize,
    pub peer_routes: usize,
    pub policy: crate::sync::policy::PolicyGauges,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Status {
    pub fn beat(&self) {
        self.heartbeat.store(now(), Ordering::Relaxed);
    }

    pub fn set_node_ready(&self, ready: bool) {
        self.node_ready.store(ready, Ordering::Relaxed);
    }

    /// After a reconcile: how long it took, whether it wrote everything,
    /// whether every watch has listed, and the object counts.
    pub fn record_sync(&self, took: Duration, ok: bool, synced: bool, gauges: Gauges) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        *self.sync_seconds_total.lock().expect("lock") += took.as_secs_f64();
        if !ok {
            self.sync_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.sync_ok.store(ok, Ordering::Relaxed);
        if ok {
            let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            self.last_clean_sync_ms.store(ms, Ordering::Relaxed);
        }
        self.synced.store(synced, Ordering::Relaxed);
        *self.gauges.lock().expect("lock") = gauges;
    }

    /// Network programming latencies, in seconds (see `ProgrammingClock`).
    pub fn observe_programming(&self, seconds: &[f64]) {
        let mut h = self.programming.lock().expect("lock");
        for s in seconds {
            h.0.observe(*s);
        }
    }

    pub fn set_policy_names(&self, slots: BTreeMap<u32, String>, endpoints: BTreeMap<u32, String>) {
        *self.policy_names.lock().expect("lock") = (slots, endpoints);
    }

    /// Where the flow samples come from.
    pub fn set_flows(&self, hub: Arc<crate::observe::flows::Hub>) {
        let _ = self.flows.set(hub);
    }

    /// Where the CNI metrics socket records weir-cni's reports.
    pub fn cni_metrics(&self) -> Arc<crate::observe::cni_metrics::CniMetrics> {
        self.cni.clone()
    }

    pub fn set_socket_lb(&self, state: Result<String, String>) {
        *self.socket_lb.lock().expect("lock") = Some(state);
    }

    /// The /readyz line about connect-time load balancing.
    fn socket_lb_line(&self) -> Option<String> {
        Some(match self.socket_lb.lock().expect("lock").as_ref()? {
            Ok(cgroup) => format!("connect-time Service load balancing: on (cgroup {cgroup})"),
            Err(why) => format!(
                "connect-time Service load balancing: off ({why}); host-network pods and node processes cannot reach ClusterIPs"
            ),
        })
    }

    pub fn set_reachable(&self, kind: &str, ok: bool) {
        let mut set = self.unreachable.lock().expect("lock");
        if ok {
            set.remove(kind);
        } else {
            set.insert(kind.to_string());
        }
    }

    /// How many objects of a kind the source could not read as written
    /// (an unreadable NetworkPolicy stands as deny-all meanwhile).
    pub fn set_problems(&self, kind: &str, count: usize) {
        self.problems.lock().expect("lock").insert(kind.to_string(), count);
    }

    pub fn live(&self) -> bool {
        now().saturating_sub(self.heartbeat.load(Ordering::Relaxed)) <= LIVENESS_WINDOW.as_secs()
    }

    /// Why the agent is not ready, or None.
    pub fn not_ready(&self) -> Option<String> {
        let unreachable = self.unreachable.lock().expect("lock");
        if !unreachable.is_empty() {
            return Some(format!(
                "cannot reach the API server (watching {}); the datapath keeps its last state",
                unreachable.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if !self.node_ready.load(Ordering::Relaxed) {
            Some("node not set up yet (no podCIDR, routes or CNI config)".into())
        } else if !self.synced.load(Ordering::Relaxed) {
            Some("waiting for the initial lists of Nodes, Services, EndpointSlices, Pods, Namespaces and NetworkPolicies".into())
        } else if !self.sync_ok.load(Ordering::Relaxed) {
            Some("the last sync failed to write some state; retrying".into())
        } else {
            None
        }
    }

    /// Prometheus text exposition, reading the maps now in this thread
    /// (tests; the server reads them off the runtime, see `map_samples`).
    pub fn metrics(&self, pin_dir: &std::path::Path) -> String {
        self.render(Some(&MapSamples::read(pin_dir, &self.policy_slots(), Walk::Batched)))
    }

    /// Prometheus text exposition; what comes from the pinned maps is
    /// taken from `samples` (None: left out).
    pub fn render(&self, samples: Option<&MapSamples>) -> String {
        let mut out = self.render_agent();
        if let Some(samples) = samples {
            let (slots, pods) = self.policy_names.lock().expect("lock").clone();
            samples.render(&mut out, &slots, &pods);
        }
        out
    }

    /// The policy counter slots worth reading: the own node's and every
    /// named policy's.
    pub fn policy_slots(&self) -> Vec<u32> {
        let names = self.policy_names.lock().expect("lock");
        std::iter::once(weir_common::policy::POLICY_SLOT_OWN_NODE).chain(names.0.keys().copied()).collect()
    }

    /// The agent's own state (no map read).
    fn render_agent(&self) -> String {
        let mut out = String::new();
        self.render_object_gauges(&mut out);
        self.render_state_gauges(&mut out);
        self.render_object_problems(&mut out);
        self.render_sync_counters(&mut out);
        self.render_programming_and_build(&mut out);
        self.cni.render(&mut out);
        if let Some(flows) = self.flows.get() {
            flows.render(&mut out);
        }
        out
    }

    /// How many objects of each kind the agent knows and has programmed.
    fn render_object_gauges(&self, out: &mut String) {
        let g = self.gauges.lock().expect("lock").clone();
        write_gauge(out, "weir_nodes", "Nodes known to the agent.", g.nodes);
        write_gauge(out, "weir_services", "Services known to the agent.", g.services);
        write_gauge(out, "weir_endpoint_slices", "EndpointSlices known to the agent.", g.endpoint_slices);
        write_gauge(
            out,
            "weir_service_frontends",
            "Service frontends (address, port, protocol) programmed.",
            g.frontends,
        );
        write_gauge(out, "weir_peer_routes", "Routes to other nodes' pod CIDRs.", g.peer_routes);
        write_gauge(out, "weir_network_policies", "NetworkPolicies known to the agent.", g.policy.policies);
        write_gauge(
            out,
            "weir_policy_identities",
            "Identities in the ipcache (distinct label sets and address blocks).",
            g.policy.identities,
        );
        write_gauge(out, "weir_policy_map_entries", "Entries in the per-pod policy map.", g.policy.rules);
        write_gauge(
            out,
            "weir_policy_enforced_pods",
            "Local pods isolated by a NetworkPolicy in at least one direction.",
            g.policy.enforced_endpoints,
        );
        write_gauge(
            out,
            "weir_policy_pending_pods",
            "Local pods waiting for their policy (isolated meanwhile).",
            g.policy.pending_endpoints,
        );
    }

    /// Readiness and whether connect-time load balancing is on, as 0/1.
    fn render_state_gauges(&self, out: &mut String) {
        write_gauge(out, "weir_ready", "1 when the agent reports ready.", u8::from(self.not_ready().is_none()));
        let socket_lb = matches!(*self.socket_lb.lock().expect("lock"), Some(Ok(_)));
        write_gauge(
            out,
            "weir_socket_lb_enabled",
            "1 when connect-time Service load balancing is attached (without it host-network pods and node processes cannot reach ClusterIPs).",
            u8::from(socket_lb),
        );
    }

    /// Objects per kind that could not be read as written.
    fn render_object_problems(&self, out: &mut String) {
        let mut problems = self.problems.lock().expect("lock").clone();
        // Always there, so an alert on it needs no absent() twin.
        problems.entry("NetworkPolicy".into()).or_insert(0);
        let _ = writeln!(
            out,
            "# HELP weir_object_problems Objects that could not be read as written (each is logged once); an unreadable NetworkPolicy is enforced as deny-all.\n# TYPE weir_object_problems gauge"
        );
        for (kind, n) in problems {
            let _ = writeln!(out, "weir_object_problems{{kind=\"{kind}\"}} {n}");
        }
    }

    /// Reconcile passes: how many, how long in all, how many failed, and
    /// when one last wrote everything.
    fn render_sync_counters(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP weir_syncs_total Reconcile passes.\n# TYPE weir_syncs_total counter\nweir_syncs_total {}",
            self.syncs.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_sync_seconds_total Time spent reconciling.\n# TYPE weir_sync_seconds_total counter\nweir_sync_seconds_total {}",
            *self.sync_seconds_total.lock().expect("lock")
        );
        let _ = writeln!(
            out,
            "# HELP weir_sync_errors_total Reconcile passes that left something unwritten.\n# TYPE weir_sync_errors_total counter\nweir_sync_errors_total {}",
            self.sync_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_sync_last_success_timestamp_seconds When a reconcile last wrote everything (Unix time; 0: never yet).\n# TYPE weir_sync_last_success_timestamp_seconds gauge\nweir_sync_last_success_timestamp_seconds {}",
            self.last_clean_sync_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
    }

    /// The network programming latency histogram and the build info.
    fn render_programming_and_build(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP weir_network_programming_duration_seconds From an EndpointSlice change (its last-change-trigger-time) to the datapath write that makes it effective.\n# TYPE weir_network_programming_duration_seconds histogram"
        );
        self.programming.lock().expect("lock").0.render(out, "weir_network_programming_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP weir_build_info The running agent's version (always 1).\n# TYPE weir_build_info gauge\nweir_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
    }
}

/// One gauge with its HELP and TYPE lines.
fn write_gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

const METRICS_TYPE: &str = "text/plain; version=0.0.4";

/// Answers one request, reading the maps for /metrics in this thread
/// (tests); returns (status line, content type, body).
pub fn respond(status: &Status, path: &str, pin_dir: &std::path::Path) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => ("200 OK", METRICS_TYPE, status.metrics(pin_dir)),
        _ => probe(status, path),
    }
}

/// Every answer but /metrics: from memory, no map read.
fn probe(status: &Status, path: &str) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" | "/livez" => {
            if status.live() {
                ("200 OK", "text/plain", "ok\n".into())
            } else {
                ("503 Service Unavailable", "text/plain", "main loop stalled\n".into())
            }
        }
        "/readyz" => {
            let socket_lb = status.socket_lb_line().map(|l| format!("{l}\n")).unwrap_or_default();
            match status.not_ready() {
                None => ("200 OK", "text/plain", format!("ready\n{socket_lb}")),
                Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n{socket_lb}")),
            }
        }
        _ => ("404 Not Found", "text/plain", "try /healthz, /readyz or /metrics\n".into()),
    }
}

/// Serves the status endpoint; the map samples of /metrics are refreshed
/// as `map_samples` says (`WEIR_METRICS_REFRESH_MS`).
pub async fn serve(listener: TcpListener, status: Arc<Status>, pin_dir: PathBuf) {
    let scan = {
        let status = status.clone();
        MapScan::from_env(pin_dir, move || status.policy_slots())
    };
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let status = status.clone();
        let scan = scan.clone();
        tokio::spawn(async move {
            let Some(head) = http::read_one_head(&mut conn, MAX_HEAD, Duration::from_secs(5)).await else { return };
            let path = http::target(&head);
            let (code, kind, body) = if path == "/metrics" {
                let samples = scan.samples(&status.policy_slots()).await;
                ("200 OK", METRICS_TYPE, status.render(samples.as_deref()))
            } else {
                probe(&status, path)
            };
            if let Err(e) = http::write_response(&mut conn, code, kind, &[], body.as_bytes(), true).await {
                warn!(error = %e, "status client went away");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn readiness_needs_node_lists_and_a_clean_sync() {
        let s = Status::default();
        s.beat();
        assert!(s.live());
        let path = std::path::Path::new("/nonexistent");
        assert_eq!(respond(&s, "/readyz", path).0, "503 Service Unavailable");
        s.set_node_ready(true);
        s.record_sync(Duration::from_millis(3), true, false, Gauges::default());
        assert!(respond(&s, "/readyz", path).2.contains("initial lists"));
        s.record_sync(Duration::from_millis(3), false, true, Gauges::default());
        assert!(respond(&s, "/readyz", path).2.contains("failed"));
        s.record_sync(Duration::from_millis(3), true, true, Gauges { services: 7, ..Default::default() });
        assert_eq!(respond(&s, "/readyz", path).0, "200 OK");
        let (_, _, metrics) = respond(&s, "/metrics", path);
        assert!(metrics.contains("weir_services 7"), "{metrics}");
        assert!(metrics.contains("weir_syncs_total 3"));
        assert!(metrics.contains("weir_sync_errors_total 1"));
        assert!(metrics.contains("weir_ready 1"));
        assert!(metrics.contains("weir_object_problems{kind=\"NetworkPolicy\"} 0"), "{metrics}");
        s.set_problems("NetworkPolicy", 2);
        assert!(respond(&s, "/metrics", path).2.contains("weir_object_problems{kind=\"NetworkPolicy\"} 2"));
        assert_eq!(respond(&s, "/nope", path).0, "404 Not Found");

        // Connect-time load balancing off: visible, still ready.
        assert!(respond(&s, "/metrics", path).2.contains("weir_socket_lb_enabled 0"));
        s.set_socket_lb(Err("/sys/fs/cgroup is not a cgroup v2 mount".into()));
        let (code, _, body) = respond(&s, "/readyz", path);
        assert_eq!(code, "200 OK");
        assert!(body.starts_with("ready\n") && body.contains("load balancing: off (/sys/fs/cgroup is not"), "{body}");
        s.set_socket_lb(Ok("/sys/fs/cgroup/unified".into()));
        assert!(respond(&s, "/readyz", path).2.contains("load balancing: on (cgroup /sys/fs/cgroup/unified)"));
        assert!(respond(&s, "/metrics", path).2.contains("weir_socket_lb_enabled 1"));

        s.set_reachable("Service", false);
        let (code, _, why) = respond(&s, "/readyz", path);
        assert_eq!(code, "503 Service Unavailable");
        assert!(why.contains("watching Service"), "{why}");
        s.set_reachable("Service", true);
        assert_eq!(respond(&s, "/readyz", path).0, "200 OK");
    }

    /// What kube-proxy users look for on /metrics: the programming latency
    /// histogram (kube-proxy's network_programming_duration_seconds), the
    /// last successful sync, build info.
    #[test]
    fn programming_latency_last_sync_and_build_info() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut clock = ProgrammingClock::new(start);
        clock.note(Some(start - Duration::from_secs(5))); // before the agent: not counted
        clock.note(None);
        clock.note(Some(start + Duration::from_secs(10)));
        clock.note(Some(start + Duration::from_millis(10_700)));
        let seconds = clock.programmed(start + Duration::from_secs(11));
        assert_eq!(seconds.len(), 2);
        assert!((seconds[0] - 1.0).abs() < 1e-9 && (seconds[1] - 0.3).abs() < 1e-9, "{seconds:?}");
        assert!(clock.programmed(start + Duration::from_secs(12)).is_empty(), "each change counts once");

        let s = Status::default();
        let path = std::path::Path::new("/nonexistent");
        let metrics = respond(&s, "/metrics", path).2;
        assert!(metrics.contains("weir_sync_last_success_timestamp_seconds 0\n"), "{metrics}");
        assert!(metrics.contains("weir_network_programming_duration_seconds_count 0"), "{metrics}");
        s.observe_programming(&seconds);
        s.record_sync(Duration::from_millis(3), false, true, Gauges::default());
        assert!(
            respond(&s, "/metrics", path).2.contains("weir_sync_last_success_timestamp_seconds 0\n"),
            "a failed sync is no success"
        );
        s.record_sync(Duration::from_millis(3), true, true, Gauges::default());
        let metrics = respond(&s, "/metrics", path).2;
        let last: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weir_sync_last_success_timestamp_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((last - now() as f64).abs() < 5.0, "{last}");
        assert!(metrics.contains("weir_network_programming_duration_seconds_bucket{le=\"0.25\"} 0"), "{metrics}");
        assert!(metrics.contains("weir_network_programming_duration_seconds_bucket{le=\"0.5\"} 1"), "{metrics}");
        assert!(metrics.contains("weir_network_programming_duration_seconds_bucket{le=\"1\"} 2"), "{metrics}");
        assert!(metrics.contains("weir_network_programming_duration_seconds_count 2"), "{metrics}");
        assert!(
            metrics.contains(&format!("weir_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
            "{metrics}"
        );
    }

    /// The server end to end: probes and /metrics (its map part from the
    /// background read: here of a pin dir with nothing in it).
    #[tokio::test]
    async fn the_server_answers_probes_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::new(Status::default());
        s.beat();
        tokio::spawn(serve(listener, s.clone(), PathBuf::from("/nonexistent")));
        for (path, want) in [
            ("/healthz", "200 OK"),
            ("/readyz", "503 Service Unavailable"),
            ("/metrics", "weir_metrics_map_scan_age_seconds "),
            ("/metrics", "weir_ready 0\n"),
        ] {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut reply = String::new();
            conn.read_to_string(&mut reply).await.unwrap();
            assert!(reply.contains(want), "{path}: {reply}");
        }
    }

    #[test]
    fn flow_samples_once_flows_are_read() {
        let s = Status::default();
        let path = std::path::Path::new("/nonexistent");
        assert!(!respond(&s, "/metrics", path).2.contains("weir_flow"));
        let hub = Arc::new(crate::observe::flows::Hub::new(8, None));
        hub.set_lost(3);
        s.set_flows(hub);
        let metrics = respond(&s, "/metrics", path).2;
        for want in [
            "weir_flows_total{verdict=\"dropped\",direction=\"ingress\"} 0\n",
            "weir_flow_drops_total{reason=\"policy-denied-egress\",direction=\"egress\"} 0\n",
            "weir_flow_events_lost_total 3\n",
            "weir_flow_buffer_flows 0\n",
        ] {
            assert!(metrics.contains(want), "{want} in\n{metrics}");
        }
    }

    #[test]
    fn liveness_fails_when_the_loop_stalls() {
        let s = Status::default();
        s.heartbeat.store(now() - 120, Ordering::Relaxed);
        assert_eq!(respond(&s, "/healthz", std::path::Path::new("/x")).0, "503 Service Unavailable");
    }
}
