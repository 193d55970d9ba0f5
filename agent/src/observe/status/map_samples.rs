//! What `/metrics` reads from the pinned maps (the datapath's counters, the
//! maps' fill levels), read off the async runtime.
//!
//! Reading the maps is blocking work that grows with them: a fill level is
//! a walk of every key, and at 10,000 Services with a full conntrack map
//! that is hundreds of thousands of entries. Done inside the request's task
//! (as before issue 10) it held one of the agent's two runtime workers for
//! the whole walk, and two scrapes at once held both: the main loop,
//! /healthz and the weir-cni hand-off waited meanwhile.
//!
//! So one task refreshes a snapshot on a blocking thread every
//! `WEIR_METRICS_REFRESH_MS` (5,000 by default), one walk at a time, and a
//! scrape renders the latest snapshot without touching a map; the page says
//! how old it is (`weir_metrics_map_scan_age_seconds`) and what the last
//! walk cost (`weir_metrics_map_scan_duration_seconds`). With
//! `WEIR_METRICS_REFRESH_MS=0` nothing refreshes in the background and each
//! scrape waits for a walk that starts after it arrived, still off the
//! runtime (exact counters right after traffic, for tests and debugging).
//! `WEIR_METRICS_SCAN=inline` restores the old walk inside the request,
//! key by key: only the baseline of `cargo xtask bench services`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use weir_common::{DropReason, policy::EndpointPolicyStats};

use crate::datapath::{
    loader::verdict_counts,
    map_fill::{self, Walk},
    policy::stats,
};

/// Background refresh interval, in milliseconds (0: on demand per scrape).
pub const REFRESH_ENV: &str = "WEIR_METRICS_REFRESH_MS";
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// `inline`: the benchmark baseline (see the module doc).
pub const SCAN_ENV: &str = "WEIR_METRICS_SCAN";
/// How long a scrape waits for a walk (the first one, or its own with an
/// interval of 0) before it serves what there is.
const WAIT: Duration = Duration::from_secs(10);

/// One read of every map `/metrics` shows.
#[derive(Debug)]
pub struct MapSamples {
    /// When the read started: nothing in it is older.
    started: Instant,
    took: Duration,
    verdicts: Option<Vec<(DropReason, u64)>>,
    fill: Vec<(&'static str, u64, u32)>,
    policy_hits: Option<BTreeMap<u32, u64>>,
    endpoint_stats: Option<BTreeMap<u32, EndpointPolicyStats>>,
}

impl MapSamples {
    /// Reads the maps under `pin_dir` (blocking: never call it on a runtime
    /// worker but in tests). `policy_slots`: the policy counters to read.
    pub fn read(pin_dir: &Path, policy_slots: &[u32], walk: Walk) -> Self {
        let started = Instant::now();
        let verdicts = verdict_counts(pin_dir).map_err(|e| debug!(error = %e, "datapath counters unavailable")).ok();
        let fill = map_fill::fill_levels_with(pin_dir, walk);
        let policy_hits = stats::policy_hits(pin_dir, policy_slots.iter().copied()).ok();
        let endpoint_stats = stats::endpoint_stats(pin_dir).ok();
        Self { started, took: started.elapsed(), verdicts, fill, policy_hits, endpoint_stats }
    }

    /// The map-derived part of the page; `slots` and `pods` name the policy
    /// slots and endpoints (as known now, not at the read).
    pub fn render(&self, out: &mut String, slots: &BTreeMap<u32, String>, pods: &BTreeMap<u32, String>) {
        if let Some(counts) = &self.verdicts {
            let _ = writeln!(
                out,
                "# HELP weir_datapath_packets_total Packets per datapath verdict (passed, or why dropped).\n# TYPE weir_datapath_packets_total counter"
            );
            for (reason, n) in counts {
                let _ = writeln!(out, "weir_datapath_packets_total{{verdict=\"{}\"}} {n}", reason.name());
            }
        }
        if !self.fill.is_empty() {
            let _ = writeln!(
                out,
                "# HELP weir_bpf_map_entries Entries in each pinned eBPF map.\n# TYPE weir_bpf_map_entries gauge"
            );
            for (map, n, _) in &self.fill {
                let _ = writeln!(out, "weir_bpf_map_entries{{map=\"{map}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP weir_bpf_map_capacity Capacity (max_entries) of each pinned eBPF map.\n# TYPE weir_bpf_map_capacity gauge"
            );
            for (map, _, cap) in &self.fill {
                let _ = writeln!(out, "weir_bpf_map_capacity{{map=\"{map}\"}} {cap}");
            }
        }
        if let Some(hits) = &self.policy_hits {
            let _ = writeln!(
                out,
                "# HELP weir_policy_allowed_flows_total New flows a NetworkPolicy allowed, by the policy that allowed them (own-node: the pod's node, always allowed).\n# TYPE weir_policy_allowed_flows_total counter"
            );
            for (slot, n) in hits {
                let name = if *slot == weir_common::policy::POLICY_SLOT_OWN_NODE {
                    "own-node".to_string()
                } else {
                    slots.get(slot).cloned().unwrap_or_else(|| format!("slot-{slot}"))
                };
                let _ = writeln!(out, "weir_policy_allowed_flows_total{{policy=\"{name}\"}} {n}");
            }
        }
        if let Some(stats) = &self.endpoint_stats {
            let _ = writeln!(
                out,
                "# HELP weir_pod_policy_flows_total New flows judged by NetworkPolicy at a local pod, by direction and verdict.\n# TYPE weir_pod_policy_flows_total counter"
            );
            for (ifindex, st) in stats {
                let pod = pods.get(ifindex).cloned().unwrap_or_else(|| format!("ifindex-{ifindex}"));
                for (dir, verdict, n) in [
                    ("ingress", "allowed", st.ingress_allowed),
                    ("ingress", "denied", st.ingress_denied),
                    ("egress", "allowed", st.egress_allowed),
                    ("egress", "denied", st.egress_denied),
                ] {
                    let _ = writeln!(
                        out,
                        "weir_pod_policy_flows_total{{pod=\"{pod}\",direction=\"{dir}\",verdict=\"{verdict}\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP weir_metrics_map_scan_age_seconds Age of the samples read from the pinned maps on this page (weir_datapath_packets_total, weir_bpf_map_*, weir_policy_allowed_flows_total, weir_pod_policy_flows_total): refreshed in the background every WEIR_METRICS_REFRESH_MS (5 s by default).\n# TYPE weir_metrics_map_scan_age_seconds gauge\nweir_metrics_map_scan_age_seconds {:.3}",
            self.started.elapsed().as_secs_f64()
        );
        let _ = writeln!(
            out,
            "# HELP weir_metrics_map_scan_duration_seconds How long that read of the pinned maps took (off the request path).\n# TYPE weir_metrics_map_scan_duration_seconds gauge\nweir_metrics_map_scan_duration_seconds {:.6}",
            self.took.as_secs_f64()
        );
    }
}

/// Where a scrape gets its map samples.
#[derive(Clone)]
pub enum MapScan {
    /// The latest snapshot of the background refresh.
    Cached(Arc<MapCache>),
    /// `WEIR_METRICS_SCAN=inline`: read key by key inside the request's
    /// task, as before issue 10 (the benchmark's baseline; stalls a worker).
    Inline(Arc<PathBuf>),
}

impl MapScan {
    /// As the environment says (see the module doc); starts the refresh
    /// task on the current runtime. `slots`: the policy counters to read.
    pub fn from_env(pin_dir: PathBuf, slots: impl Fn() -> Vec<u32> + Send + Sync + 'static) -> Self {
        if std::env::var(SCAN_ENV).is_ok_and(|v| v == "inline") {
            warn!("{SCAN_ENV}=inline: /metrics walks the pinned maps inside the request (benchmark baseline)");
            return MapScan::Inline(Arc::new(pin_dir));
        }
        let interval = match std::env::var(REFRESH_ENV) {
            Err(_) => DEFAULT_REFRESH,
            Ok(v) => v.trim().parse::<u64>().map(Duration::from_millis).unwrap_or_else(|_| {
                warn!(value = %v, "{REFRESH_ENV} is not a number of milliseconds; using {DEFAULT_REFRESH:?}");
                DEFAULT_REFRESH
            }),
        };
        info!(?interval, "map samples for /metrics read off the runtime (interval 0: on each scrape)");
        MapScan::Cached(MapCache::spawn(interval, move || MapSamples::read(&pin_dir, &slots(), Walk::Batched)))
    }

    pub async fn samples(&self, slots: &[u32]) -> Option<Arc<MapSamples>> {
        match self {
            MapScan::Cached(cache) => cache.latest().await,
            MapScan::Inline(pin_dir) => Some(Arc::new(MapSamples::read(pin_dir, slots, Walk::KeyByKey))),
        }
    }
}

type Reader = Arc<dyn Fn() -> MapSamples + Send + Sync>;

/// The latest map samples and the task that refreshes them.
pub struct MapCache {
    latest: watch::Sender<Option<Arc<MapSamples>>>,
    /// A scrape wants a read that starts after it (interval 0).
    wake: Notify,
    interval: Duration,
}

impl MapCache {
    /// Starts the refresh task on the current runtime; the first read
    /// starts at once. `read` runs on a blocking thread.
    pub fn spawn(interval: Duration, read: impl Fn() -> MapSamples + Send + Sync + 'static) -> Arc<Self> {
        let cache = Arc::new(Self { latest: watch::Sender::new(None), wake: Notify::new(), interval });
        tokio::spawn(Self::refresh(Arc::downgrade(&cache), Arc::new(read)));
        cache
    }

    /// Reads on a blocking thread, one read at a time (each waits for the
    /// previous one), every `interval` or, with 0, when a scrape asks. Ends
    /// once the cache is dropped.
    async fn refresh(cache: std::sync::Weak<Self>, read: Reader) {
        loop {
            let read = read.clone();
            let result = tokio::task::spawn_blocking(move || read()).await;
            let Some(cache) = cache.upgrade() else { return };
            match result {
                Ok(samples) => {
                    debug!(took = ?samples.took, "map samples for /metrics read");
                    cache.latest.send_replace(Some(Arc::new(samples)));
                }
                Err(e) => warn!(error = %e, "reading the pinned maps for /metrics failed"),
            }
            if cache.interval.is_zero() {
                // Dropping the cache while waiting here leaves the task
                // parked; the cache lives as long as the status server.
                cache.wake.notified().await;
            } else {
                let interval = cache.interval;
                drop(cache);
                tokio::time::sleep(interval).await;
            }
        }
    }

    /// The latest samples, never waiting for a map read except for the
    /// first one, or (interval 0) for one that starts after this call.
    pub async fn latest(&self) -> Option<Arc<MapSamples>> {
        let mut rx = self.latest.subscribe();
        let asked = Instant::now();
        let on_demand = self.interval.is_zero();
        if on_demand {
            self.wake.notify_one();
        }
        let ready = |s: &Option<Arc<MapSamples>>| s.as_ref().is_some_and(|s| !on_demand || s.started >= asked);
        let waited = tokio::time::timeout(WAIT, rx.wait_for(ready)).await.ok().and_then(Result::ok).map(|s| s.clone());
        // Timed out: what there is.
        waited.unwrap_or_else(|| rx.borrow().clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };

    use super::*;

    fn samples(fill: Vec<(&'static str, u64, u32)>) -> MapSamples {
        MapSamples {
            started: Instant::now(),
            took: Duration::from_millis(2),
            verdicts: None,
            fill,
            policy_hits: Some(BTreeMap::from([(0, 3), (9, 4)])),
            endpoint_stats: None,
        }
    }

    /// A reader that holds each read until the test lets it go.
    struct Gate {
        started: tokio::sync::mpsc::UnboundedSender<()>,
        release: Mutex<mpsc::Receiver<()>>,
        inflight: AtomicUsize,
        most: AtomicUsize,
        reads: AtomicUsize,
        timed_out: AtomicUsize,
    }

    impl Gate {
        fn read(&self) -> MapSamples {
            let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.reads.fetch_add(1, Ordering::SeqCst);
            let _ = self.started.send(());
            // Were this on the runtime's only thread, the test could never
            // release it: it would give up here and say so.
            if self.release.lock().unwrap().recv_timeout(WAIT).is_err() {
                self.timed_out.fetch_add(1, Ordering::SeqCst);
            }
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            samples(vec![])
        }
    }

    /// On a single-threaded runtime, the runtime keeps serving while a map
    /// read is held; concurrent on-demand scrapes share one read that
    /// started after they arrived; never two reads at once.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_run_off_the_runtime_one_at_a_time() {
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = mpsc::channel();
        let gate = Arc::new(Gate {
            started: started_tx,
            release: Mutex::new(release_rx),
            inflight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            timed_out: AtomicUsize::new(0),
        });
        let reader = gate.clone();
        let cache = MapCache::spawn(Duration::ZERO, move || reader.read());
        started.recv().await.unwrap(); // the first read, held
        let asked = Instant::now();
        let scrapes: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.latest().await })
            })
            .collect();
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        started.recv().await.unwrap(); // the scrapes' read
        release.send(()).unwrap();
        for s in scrapes {
            let s = s.await.unwrap().expect("samples");
            assert!(s.started >= asked, "a scrape got a read older than itself");
        }
        assert_eq!(gate.timed_out.load(Ordering::SeqCst), 0, "a read ran on the runtime thread");
        assert_eq!(gate.most.load(Ordering::SeqCst), 1, "two reads at once");
        assert_eq!(gate.reads.load(Ordering::SeqCst), 2, "the eight scrapes should share one read");
    }

    /// With an interval, scrapes take the snapshot as it is: the first one
    /// waits for the first read, the next ones get the same samples.
    #[tokio::test]
    async fn with_an_interval_scrapes_share_the_snapshot() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let cache = MapCache::spawn(Duration::from_secs(3600), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            samples(vec![(weir_common::pin::MAP_CT, 5, 262_144)])
        });
        let first = cache.latest().await.expect("the first read");
        let second = cache.latest().await.expect("samples");
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn samples_render_with_their_age_and_current_names() {
        let s = samples(vec![(weir_common::pin::MAP_CT, 5, 262_144)]);
        let mut out = String::new();
        s.render(&mut out, &BTreeMap::from([(9, "ns/allow-web".to_string())]), &BTreeMap::new());
        assert!(out.contains("weir_bpf_map_entries{map=\"WEIR_CT\"} 5\n"), "{out}");
        assert!(out.contains("weir_bpf_map_capacity{map=\"WEIR_CT\"} 262144\n"), "{out}");
        assert!(out.contains("weir_policy_allowed_flows_total{policy=\"own-node\"} 3\n"), "{out}");
        assert!(out.contains("weir_policy_allowed_flows_total{policy=\"ns/allow-web\"} 4\n"), "{out}");
        assert!(
            out.contains("# TYPE weir_metrics_map_scan_age_seconds gauge\nweir_metrics_map_scan_age_seconds "),
            "{out}"
        );
        assert!(out.contains("weir_metrics_map_scan_duration_seconds 0.002000\n"), "{out}");
        assert!(!out.contains("# TYPE weir_datapath_packets_total"), "unreadable counters are left out: {out}");
    }
}
