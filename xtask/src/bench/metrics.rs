//! `/metrics` under load (issue 10): scrape latency, and how long the
//! agent's runtime takes to answer meanwhile, with the map samples read
//! inside the request as before (`WEIR_METRICS_SCAN=inline`: every key of
//! every map walked on a runtime worker, one syscall per key) and as now
//! (read on a blocking thread every 5 s, batched; a scrape renders the
//! cached snapshot), side by side in the same run.
//!
//! One node namespace, the agent (release build) on the manifest-dir source
//! with N Services of 4 endpoints each, its conntrack map (WEIR_CT) filled
//! to capacity with entries no packet matches (written through the pinned
//! map, as a busy node's flows would fill it). The agent runs once per
//! mode, on the same pinned maps. Per mode:
//! - idle: /healthz probed every 10 ms for 2 s, nothing else running;
//! - 1 and 2 scrapers (a Prometheus pair scrapes every target twice) for
//!   `--metrics-secs`, each starting a GET /metrics every 50 ms or, when one
//!   takes longer, as soon as it is answered (the same offered load in both
//!   modes, hundreds of times what Prometheus asks), while /healthz is
//!   probed every 10 ms. The agent's main loop, the status server, the
//!   weir-cni hand-off and the CNI metrics socket share the runtime's two
//!   workers: a /healthz answer needs a free worker exactly as the main
//!   loop's next turn does, so its latency during scrapes is the main-loop
//!   delay scrapes cause.
//!
//! All clients are threads of this process that enter the node's namespace.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use weir_testbed::{
    Node, Topology, bins,
    manifest::{SvcPort, endpoint_slice_yaml, service_yaml},
    process::ChildGuard,
};

use super::stats::{Summary, ratio};

const ENDPOINTS: usize = 4;
const MANIFEST: &str = "bench-metrics.yaml";
const STATUS: &str = "127.0.0.1:9878";
const PROBE_EVERY: Duration = Duration::from_millis(10);
const SCRAPE_EVERY: Duration = Duration::from_millis(50);
const IDLE: Duration = Duration::from_secs(2);
const SCRAPERS: [usize; 2] = [1, 2];
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The conntrack map under the pin dir (weir_common::pin::{MAPS_DIR, MAP_CT}).
const CT_PIN: &str = "maps/WEIR_CT";

#[derive(Args, Clone, Debug)]
pub struct MetricsArgs {
    /// Services (4 endpoints each) the agent holds in the /metrics part.
    #[arg(long, default_value_t = 10_000)]
    metrics_services: usize,
    /// Seconds of scraping per mode and scraper count.
    #[arg(long, default_value_t = 5.0)]
    metrics_secs: f64,
    /// Leave the conntrack map as the agent has it (empty).
    #[arg(long)]
    metrics_no_ct_fill: bool,
    /// Skip the /metrics part.
    #[arg(long)]
    pub(super) no_metrics: bool,
}

/// `cargo xtask bench metrics`: the /metrics part of `bench services` alone.
#[derive(Args)]
pub struct MetricsBenchArgs {
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    build: super::ReleaseArgs,
}

pub fn run(args: MetricsBenchArgs) -> Result<()> {
    ensure!(!args.metrics.no_metrics, "--no-metrics leaves nothing to measure");
    super::services::release_bins(args.build.no_build)?;
    let report = measure(&args.metrics)?;
    print(&args.metrics, &report);
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Before,
    After,
}

impl Mode {
    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Mode::Before => &[("WEIR_METRICS_SCAN", "inline")],
            Mode::After => &[],
        }
    }
}

pub struct Report {
    modes: Vec<(Mode, ModeReport)>,
    /// WEIR_CT: (entries, capacity) as the agent reported them.
    ct: Option<(f64, f64)>,
    svc_entries: Option<f64>,
}

struct ModeReport {
    idle: Summary,
    loaded: Vec<Loaded>,
    /// weir_metrics_map_scan_duration_seconds at the end.
    scan_seconds: Option<f64>,
}

/// One scraper count: scrape latencies, /healthz latencies meanwhile.
struct Loaded {
    scrapers: usize,
    scrapes: usize,
    scrape: Summary,
    probes: usize,
    probe: Summary,
    failed: usize,
}

pub fn measure(args: &MetricsArgs) -> Result<Report> {
    ensure!((1..=16_000).contains(&args.metrics_services), "--metrics-services must be 1..=16000");
    ensure!((0.5..=600.0).contains(&args.metrics_secs), "--metrics-secs must be 0.5..=600");
    let topo = Topology::builder("bench-metrics").nodes(1).build()?;
    let node = topo.node("n1");
    topo.write_manifest(MANIFEST, &manifest(args.metrics_services))?;
    let mut modes = Vec::new();
    let mut last = String::new();
    for mode in [Mode::Before, Mode::After] {
        println!("\n== /metrics, {mode:?}: weir-agent with {} Services", args.metrics_services);
        let mut agent = spawn_agent(node, mode)?;
        wait_ready(node, &mut agent)?;
        if mode == Mode::Before && !args.metrics_no_ct_fill {
            let map = node.pin_dir.join(CT_PIN);
            let (n, took) = fill_map(&map)?;
            println!("wrote {n} entries into {} in {:.2} s", map.display(), took.as_secs_f64());
        }
        let report = measure_mode(node, args)?;
        last = in_node(node, || get("/metrics")).map(|(_, body)| body).unwrap_or_default();
        modes.push((
            mode,
            ModeReport { scan_seconds: sample(&last, "weir_metrics_map_scan_duration_seconds"), ..report },
        ));
        agent.stop();
    }
    let ct = sample(&last, "weir_bpf_map_entries{map=\"WEIR_CT\"}")
        .zip(sample(&last, "weir_bpf_map_capacity{map=\"WEIR_CT\"}"));
    Ok(Report { modes, ct, svc_entries: sample(&last, "weir_bpf_map_entries{map=\"WEIR_SVC\"}") })
}

fn manifest(services: usize) -> Vec<String> {
    let port = [SvcPort { name: "http", protocol: "TCP", port: 80, target_port: 8080, node_port: None }];
    let slice_ports = [("http", "TCP", 8080)];
    let mut docs = Vec::with_capacity(2 * services);
    for i in 0..services {
        let name = format!("m{i}");
        let vip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 100, 0, 1)) + i as u32);
        let eps: Vec<(std::net::Ipv4Addr, &str)> = (0..ENDPOINTS)
            .map(|k| {
                (
                    std::net::Ipv4Addr::from(
                        u32::from(std::net::Ipv4Addr::new(10, 245, 0, 1)) + (i * ENDPOINTS + k) as u32,
                    ),
                    "n1",
                )
            })
            .collect();
        docs.push(service_yaml(&name, vip, &port, false));
        docs.push(endpoint_slice_yaml(&name, &slice_ports, &eps));
    }
    docs
}

/// The agent as the test bed starts it, with the mode's environment.
fn spawn_agent(node: &Node, mode: Mode) -> Result<ChildGuard> {
    let binary = bins::weir_agent()?;
    let s = |p: &Path| p.to_str().map(str::to_string).context("non-UTF-8 path");
    let args = [
        s(&binary)?,
        "run".into(),
        "--node-name".into(),
        node.name.clone(),
        "--source".into(),
        format!("dir:{}", s(&node.manifest_dir)?),
        "--cluster-cidr".into(),
        weir_testbed::topology::CLUSTER_CIDR.into(),
        "--cni-conf-dir".into(),
        s(&node.dirs.cni_conf)?,
        "--cni-data-dir".into(),
        s(&node.dirs.cni_data)?,
        "--run-dir".into(),
        s(&node.dirs.run)?,
        "--bpf-pin-dir".into(),
        s(&node.pin_dir)?,
        "--cni-bin-dir".into(),
        std::env::join_paths(bins::cni_path())?
            .into_string()
            .map_err(|p| anyhow::anyhow!("non-UTF-8 CNI path {p:?}"))?,
        "--no-socket-lb".into(),
        // Nothing changes during the measurement: a slow poll keeps the
        // source's stat calls out of it.
        "--dir-poll-ms".into(),
        "1000".into(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = node.dirs.logs.join("agent.log");
    let mut env = vec![("WEIR_LOG", "info")];
    env.extend_from_slice(mode.env());
    println!("==> {} {}", env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "), argv.join(" "));
    node.netns.spawn(&argv, &env, &log, node.detached())
}

fn wait_ready(node: &Node, agent: &mut ChildGuard) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Ok((_, reply)) = in_node(node, || get("/readyz"))
            && reply.starts_with("HTTP/1.1 200")
        {
            println!("agent ready after {:.1} s", start.elapsed().as_secs_f64());
            return Ok(());
        }
        if let Some(status) = agent.try_wait() {
            bail!(
                "weir-agent exited before it was ready ({status}); see {}",
                node.dirs.logs.join("agent.log").display()
            );
        }
        ensure!(start.elapsed() < READY_TIMEOUT, "weir-agent not ready after {READY_TIMEOUT:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn measure_mode(node: &Node, args: &MetricsArgs) -> Result<ModeReport> {
    // Warm up: the first read of each map, page cache, connection paths.
    for _ in 0..2 {
        in_node(node, || get("/metrics"))?;
    }
    let stop = AtomicBool::new(false);
    let idle = thread::scope(|s| {
        let prober = s.spawn(|| probe_until(node, &stop));
        thread::sleep(IDLE);
        stop.store(true, Ordering::Relaxed);
        prober.join().expect("prober")
    })?;
    let window = Duration::from_secs_f64(args.metrics_secs);
    let mut loaded = Vec::new();
    for scrapers in SCRAPERS {
        let stop = AtomicBool::new(false);
        let (scrapes, probes) = thread::scope(|s| -> Result<_> {
            let prober = s.spawn(|| probe_until(node, &stop));
            let workers: Vec<_> = (0..scrapers).map(|_| s.spawn(|| scrape_for(node, window))).collect();
            let mut scrapes = Vec::new();
            for w in workers {
                scrapes.extend(w.join().expect("scraper")?);
            }
            stop.store(true, Ordering::Relaxed);
            Ok((scrapes, prober.join().expect("prober")?))
        })?;
        let (probe_times, failed) = probes;
        loaded.push(Loaded {
            scrapers,
            scrapes: scrapes.len(),
            scrape: Summary::new(scrapes),
            probes: probe_times.len(),
            probe: Summary::new(probe_times),
            failed,
        });
    }
    Ok(ModeReport { idle: Summary::new(idle.0), loaded, scan_seconds: None })
}

/// GET /metrics every SCRAPE_EVERY (back to back when slower) for `window`.
fn scrape_for(node: &Node, window: Duration) -> Result<Vec<Duration>> {
    enter(node)?;
    let start = Instant::now();
    let mut times = Vec::new();
    while start.elapsed() < window {
        let (t, reply) = get("/metrics")?;
        ensure!(reply.starts_with("HTTP/1.1 200"), "/metrics: {}", reply.lines().next().unwrap_or_default());
        times.push(t);
        thread::sleep(SCRAPE_EVERY.saturating_sub(t));
    }
    Ok(times)
}

/// /healthz every PROBE_EVERY until `stop`: (latencies, failures).
fn probe_until(node: &Node, stop: &AtomicBool) -> Result<(Vec<Duration>, usize)> {
    enter(node)?;
    let (mut times, mut failed) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        match get("/healthz") {
            Ok((t, reply)) if reply.starts_with("HTTP/1.1 200") => times.push(t),
            _ => failed += 1,
        }
        thread::sleep(PROBE_EVERY);
    }
    Ok((times, failed))
}

/// Runs `f` on a thread inside the node's network namespace.
fn in_node<T: Send>(node: &Node, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            enter(node)?;
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// Moves the calling thread into the node's network namespace.
fn enter(node: &Node) -> Result<()> {
    let ns = File::open(node.netns.path()).with_context(|| format!("open {}", node.netns.path().display()))?;
    // SAFETY: setns on an open namespace fd; it changes this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into {}: {}", node.netns.name(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// One HTTP/1.1 request to the status endpoint: (time from connect to the
/// last byte, the whole reply).
fn get(path: &str) -> Result<(Duration, String)> {
    let addr: SocketAddr = STATUS.parse().expect("address");
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {STATUS}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok((start.elapsed(), reply))
}

/// The value of the sample `name` (with its labels, if any) on a page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ------------------------------------------------------------- conntrack fill

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// Fills a pinned (LRU) hash map to its capacity with keys no packet
/// carries (a counter as the source address, 198.51.100.1 as the
/// destination, TEST-NET-2) and zeroed values: (entries written, time).
fn fill_map(pin: &Path) -> Result<(u32, Duration)> {
    let start = Instant::now();
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())?;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = ObjGet { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: the attr points at a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjGet, size_of::<ObjGet>()) };
    ensure!(fd >= 0, "open pinned map {}: {}", pin.display(), std::io::Error::last_os_error());
    // SAFETY: a fresh fd this function owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // bpf_map_info's first fields: type, id, key_size, value_size, max_entries.
    let mut info = [0u32; 6];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr =
        InfoAttr { bpf_fd: fd.as_raw_fd() as u32, info_len: size_of_val(&info) as u32, info: info.as_mut_ptr() as u64 };
    // SAFETY: info_len bytes of `info` are writable.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, size_of::<InfoAttr>())
    };
    ensure!(ret == 0, "map info of {}: {}", pin.display(), std::io::Error::last_os_error());
    let [map_type, _, key_size, value_size, max_entries, _] = info;
    ensure!(
        matches!(map_type, BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_LRU_HASH) && key_size >= 8,
        "{} is not a hash map with 8-byte or larger keys (type {map_type}, key {key_size} bytes)",
        pin.display()
    );
    let mut key = vec![0u8; key_size as usize];
    key[4..8].copy_from_slice(&[198, 51, 100, 1]);
    let value = vec![0u8; value_size as usize];
    #[repr(C)]
    struct UpdateAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    for i in 0..max_entries {
        key[..4].copy_from_slice(&i.to_ne_bytes());
        let attr = UpdateAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: key and value buffers of the sizes the map reported.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &attr as *const UpdateAttr, size_of::<UpdateAttr>())
        };
        ensure!(ret == 0, "write entry {i} into {}: {}", pin.display(), std::io::Error::last_os_error());
    }
    Ok((max_entries, start.elapsed()))
}

// ------------------------------------------------------------------ printing

pub fn print(args: &MetricsArgs, r: &Report) {
    let (before, after) = (&r.modes[0].1, &r.modes[1].1);
    let ct = r.ct.map_or_else(|| "unknown".into(), |(n, cap)| format!("{n:.0} of {cap:.0}"));
    println!(
        "\n/metrics under load: {} Services x {ENDPOINTS} endpoints (WEIR_SVC {} entries), WEIR_CT {ct} entries; weir-agent release, 2 runtime workers",
        args.metrics_services,
        r.svc_entries.map_or_else(|| "?".into(), |n| format!("{n:.0}")),
    );
    println!(
        "before: map samples read inside the request, key by key (WEIR_METRICS_SCAN=inline, the code before issue 10)"
    );
    println!("after:  map samples read on a blocking thread every 5 s, batched; a scrape renders the snapshot");
    println!(
        "scrapers start a scrape every {} ms (back to back when slower) for {} s; /healthz probed every {} ms meanwhile",
        SCRAPE_EVERY.as_millis(),
        args.metrics_secs,
        PROBE_EVERY.as_millis()
    );
    println!("{:<42} {:>12} {:>12} {:>13}", "", "before", "after", "after/before");
    let row = |label: String, b: Option<Duration>, a: Option<Duration>| {
        println!("{label:<42} {:>12} {:>12} {:>13}", fmt_ms(b), fmt_ms(a), fmt_ratio(ratio(a, b)));
    };
    let count = |label: String, b: usize, a: usize| println!("{label:<42} {b:>12} {a:>12}");
    let secs = |s: Option<f64>| s.map(Duration::from_secs_f64);
    row("map read, the last one (ms)".into(), secs(before.scan_seconds), secs(after.scan_seconds));
    row("idle: /healthz p50 (ms)".into(), before.idle.median(), after.idle.median());
    row("idle: /healthz p99 (ms)".into(), before.idle.p99(), after.idle.p99());
    for (b, a) in before.loaded.iter().zip(&after.loaded) {
        let n = b.scrapers;
        count(format!("{n} scraper(s): scrapes"), b.scrapes, a.scrapes);
        row(format!("{n} scraper(s): scrape p50 (ms)"), b.scrape.median(), a.scrape.median());
        row(format!("{n} scraper(s): scrape p99 (ms)"), b.scrape.p99(), a.scrape.p99());
        count(format!("{n} scraper(s): /healthz probes"), b.probes, a.probes);
        row(format!("{n} scraper(s): /healthz p50 (ms)"), b.probe.median(), a.probe.median());
        row(format!("{n} scraper(s): /healthz p99 (ms)"), b.probe.p99(), a.probe.p99());
        row(format!("{n} scraper(s): /healthz max (ms)"), b.probe.percentile(100.0), a.probe.percentile(100.0));
        if b.failed + a.failed > 0 {
            count(format!("{n} scraper(s): /healthz failed"), b.failed, a.failed);
        }
    }
}

/// Milliseconds, with two decimals below 10 ms.
fn fmt_ms(d: Option<Duration>) -> String {
    match d.map(|d| d.as_secs_f64() * 1000.0) {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// A ratio far below 1 reads better as a fraction.
fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(x) if x > 0.0 && x < 0.1 => format!("1/{:.0}", 1.0 / x),
        Some(x) => format!("{x:.2}"),
    }
}
