//! `weir-dev bench-control-plane`: the control-plane half of
//! `cargo xtask bench services`, run in-process against the real maps (in a
//! private pin directory): the path one EndpointSlice event takes from the
//! API watch to the datapath, without the API server around it.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use weir_agent::{
    datapath::{Datapath, lb::programmer::LbProgrammer},
    model::{
        ClusterIndex,
        index::Change,
        lb::LbNode,
        service::{EndpointSliceInfo, Family, Protocol, ServiceInfo, ServicePort, SliceEndpoint, SlicePort},
    },
    sync::services::ServiceSync,
};

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub frontends: usize,
    pub cold_ms: f64,
    pub changes: usize,
    pub change_p50_us: f64,
    pub change_p99_us: f64,
    pub change_max_us: f64,
    pub rss_mib: f64,
}

fn service(i: u32) -> ServiceInfo {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i);
    let mut svc = ServiceInfo::cluster_ip(&format!("bench/svc-{i}"), ip.into());
    svc.ports.push(ServicePort { name: "http".into(), port: 80, protocol: Protocol::Tcp, node_port: None });
    svc
}

fn slice(i: u32, endpoints: u32, generation: u32) -> EndpointSliceInfo {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * endpoints;
    EndpointSliceInfo {
        key: format!("bench/svc-{i}-abcde"),
        service: format!("bench/svc-{i}"),
        family: Family::Ipv4,
        ports: vec![SlicePort { name: "http".into(), port: 8080, protocol: Protocol::Tcp }],
        endpoints: (0..endpoints)
            .map(|k| {
                // A change replaces endpoint 0 with a fresh address.
                let addr = if k == 0 && generation > 0 {
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + generation)
                } else {
                    Ipv4Addr::from(base + k)
                };
                SliceEndpoint {
                    addresses: vec![addr.into()],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("bench-node".into()),
                }
            })
            .collect(),
        trigger_time: None,
        problems: vec![],
    }
}

pub(crate) fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The nearest-rank `p`th percentile (`weir_common::stats::percentile`, the
/// statistic of every bench table) of unsorted samples, in microseconds;
/// NaN when there are none.
pub(crate) fn percentile_us(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    weir_common::stats::percentile(&sorted, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// Removes a private directory (pins, run dir) however the bench ends.
pub(crate) struct PinDir(pub(crate) PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(services: u32, endpoints: u32, changes: u32) -> anyhow::Result<Report> {
    let dir = PinDir(PathBuf::from(format!("/sys/fs/bpf/weir-bench-{}", std::process::id())));
    let mut datapath = Datapath::load(&dir.0).context("loading the datapath (root and bpffs needed)")?;
    let mut sync = ServiceSync::new(LbProgrammer::default());
    let mut index = ClusterIndex::default();
    let node = LbNode { name: "bench-node".into(), addrs: vec![], families: [Family::Ipv4].into() };

    let all_services: Vec<_> = (0..services).map(service).collect();
    let all_slices: Vec<_> = (0..services).map(|i| slice(i, endpoints, 0)).collect();

    // Cold: both lists arrive, everything is programmed.
    let start = Instant::now();
    let mut dirty = index.change_services(Change::Relisted(all_services));
    dirty.extend(index.change_slices(Change::Relisted(all_slices)));
    sync.mark_dirty(dirty);
    sync.reconcile(&index, &node, &mut datapath).await;
    let cold = start.elapsed();
    let frontends = sync.frontends();
    anyhow::ensure!(frontends == services as usize, "expected {services} frontends, got {frontends}");

    // One EndpointSlice change at a time.
    let mut samples = Vec::with_capacity(changes as usize);
    for j in 0..changes {
        let i = (j.wrapping_mul(7919)) % services;
        let changed = slice(i, endpoints, j + 1);
        let start = Instant::now();
        let dirty = index.change_slices(Change::Applied(changed));
        sync.mark_dirty(dirty);
        sync.reconcile(&index, &node, &mut datapath).await;
        samples.push(start.elapsed());
    }
    Ok(Report {
        services: services as usize,
        endpoints_per_service: endpoints as usize,
        frontends,
        cold_ms: cold.as_secs_f64() * 1e3,
        changes: changes as usize,
        change_p50_us: percentile_us(&samples, 50.0),
        change_p99_us: percentile_us(&samples, 99.0),
        change_max_us: percentile_us(&samples, 100.0),
        rss_mib: rss_mib(),
    })
}
