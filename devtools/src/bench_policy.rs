//! `weir-dev bench-policy-control-plane`: the control-plane half of
//! `cargo xtask bench policy`, in-process against the real maps (in a
//! private pin directory): a synthetic cluster of pods, namespaces and
//! policies is compiled and programmed cold, then single label and policy
//! changes are timed from the event to the last map write.
use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use anyhow::Context as _;
use weir_common::{EndpointInfo, EndpointKey};

use weir_agent::{
    datapath::{Datapath, policy::programmer::PolicyProgrammer},
    model::{
        ClusterIndex,
        index::Change,
        policy::{
            selector::{LabelSelector, labels},
            types::{NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer, PolicyPort, PolicyRule, PortRef},
        },
        service::Protocol,
    },
    sync::policy::PolicySync,
};

use crate::bench::{PinDir, percentile_us, rss_mib};

const NODE: &str = "bench-node";
const NAMESPACES: usize = 10;
const APPS: usize = 50;

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub pods: usize,
    pub local_pods: usize,
    pub policies: usize,
    pub identities: usize,
    pub rules: usize,
    pub cold_ms: f64,
    pub changes: usize,
    pub change_p50_us: f64,
    pub change_p99_us: f64,
    pub change_max_us: f64,
    pub label_change_p99_us: f64,
    pub policy_change_p99_us: f64,
    pub rss_mib: f64,
}

fn pod_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (j / 250) as u8, (j % 250 + 2) as u8)
}

fn pod(j: usize, app: usize) -> PodInfo {
    let ns = format!("ns-{}", j % NAMESPACES);
    PodInfo {
        key: format!("{ns}/pod-{j}").into(),
        namespace: ns,
        labels: labels(&[("app", format!("app-{app}")), ("tier", ["fe", "be", "db"][j % 3].to_string())]).into(),
        ip: Some(pod_ip(j)),
        ip6: None,
        node: Some(if j < LOCAL { NODE.into() } else { format!("node-{}", j % 9) }),
        named_ports: vec![("http".into(), Protocol::Tcp, 8080)].into(),
    }
}

const LOCAL: usize = 100;

fn selector(kv: &[(&str, String)]) -> LabelSelector {
    LabelSelector { match_labels: labels(kv), expressions: vec![] }
}

fn policy(i: usize, generation: usize) -> NetworkPolicyInfo {
    let ns = format!("ns-{}", i % NAMESPACES);
    let mut ingress = vec![PolicyRule {
        peers: vec![
            PolicyPeer::Pods { namespaces: None, pods: Some(selector(&[("tier", "fe".into())])) },
            PolicyPeer::Pods {
                namespaces: Some(selector(&[("team", format!("t{}", i % 3))])),
                pods: Some(selector(&[("app", format!("app-{}", (i * 7) % APPS))])),
            },
        ],
        ports: vec![
            PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Name("http".into())), end_port: None },
            PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Number(9000 + generation as u16)),
                end_port: Some(9100),
            },
        ],
    }];
    if i.is_multiple_of(10) {
        ingress.clear(); // deny all ingress
    }
    let egress = if i.is_multiple_of(4) {
        vec![PolicyRule {
            peers: vec![PolicyPeer::IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.244.3.0/24".parse().unwrap()],
            }],
            ports: vec![PolicyPort { protocol: Protocol::Udp, port: Some(PortRef::Number(53)), end_port: None }],
        }]
    } else {
        vec![]
    };
    NetworkPolicyInfo {
        key: format!("{ns}/policy-{i}"),
        namespace: ns,
        pod_selector: selector(&[("app", format!("app-{}", i % APPS))]),
        ingress_enabled: true,
        egress_enabled: !egress.is_empty(),
        ingress,
        egress,
    }
}

pub fn run(pods: usize, policies: usize, changes: usize) -> anyhow::Result<Report> {
    let dir = PinDir(PathBuf::from(format!("/sys/fs/bpf/weir-bench-policy-{}", std::process::id())));
    let run_dir = tempfile_dir()?;
    let mut datapath = Datapath::load(&dir.0).context("loading the datapath (root and bpffs needed)")?;
    {
        let mut eps = datapath.endpoints_map()?;
        for j in 0..LOCAL.min(pods) {
            let ep = EndpointInfo::new(
                pod_ip(j).octets(),
                EndpointInfo::FLAG_VERIFY_SOURCE | EndpointInfo::FLAG_POLICY_PENDING,
            );
            eps.insert(EndpointKey { ifindex: 10_000 + j as u32 }, ep, 0)?;
        }
    }
    let mut sync = PolicySync::new(PolicyProgrammer::default(), NODE.into(), &run_dir.0);
    let mut index = ClusterIndex::default();
    let namespaces: Vec<NamespaceInfo> = (0..NAMESPACES)
        .map(|n| NamespaceInfo { name: format!("ns-{n}"), labels: labels(&[("team", format!("t{}", n % 3))]) })
        .collect();

    let start = Instant::now();
    index.namespaces.change(Change::Relisted(namespaces));
    index.pods.change(Change::Relisted((0..pods).map(|j| pod(j, j % APPS)).collect()));
    index.policies.change(Change::Relisted((0..policies).map(|i| policy(i, 0)).collect()));
    sync.mark_dirty();
    sync.reconcile(&index, &mut datapath);
    let cold = start.elapsed();
    let gauges = sync.gauges(&index);
    anyhow::ensure!(
        gauges.pending_endpoints == 0,
        "{} endpoints still pending after the cold pass",
        gauges.pending_endpoints
    );

    let (mut all, mut label, mut pol) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..changes {
        let started = Instant::now();
        if c % 2 == 0 {
            // A pod (local or remote) changes its app label.
            let j = (c * 7919) % pods;
            index.pods.change(Change::Applied(pod(j, (j + c + 1) % APPS)));
            sync.mark_dirty();
            sync.reconcile(&index, &mut datapath);
            label.push(started.elapsed());
        } else {
            let i = (c * 104_729) % policies.max(1);
            index.policies.change(Change::Applied(policy(i, c % 50 + 1)));
            sync.mark_dirty();
            sync.reconcile(&index, &mut datapath);
            pol.push(started.elapsed());
        }
        all.push(started.elapsed());
    }
    let gauges = sync.gauges(&index);
    Ok(Report {
        pods,
        local_pods: LOCAL.min(pods),
        policies,
        identities: gauges.identities,
        rules: gauges.rules,
        cold_ms: cold.as_secs_f64() * 1e3,
        changes,
        change_p50_us: percentile_us(&all, 50.0),
        change_p99_us: percentile_us(&all, 99.0),
        change_max_us: percentile_us(&all, 100.0),
        label_change_p99_us: percentile_us(&label, 99.0),
        policy_change_p99_us: percentile_us(&pol, 99.0),
        rss_mib: rss_mib(),
    })
}

fn tempfile_dir() -> anyhow::Result<PinDir> {
    let path = std::env::temp_dir().join(format!("weir-bench-policy-run-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(PinDir(path))
}
