//! The Services of one size, as weir reads them (a manifest) and as
//! kube-proxy in iptables mode writes them (a nat table): the measured
//! Service last, the others with addresses that are never contacted.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use weir_testbed::{
    Node, Pod, Topology, exec,
    manifest::{SvcPort, endpoint_slice_yaml, endpoint_slice_yaml6, service_yaml_families},
};

use super::{ENDPOINTS, SVC_PORT, TARGET_PORT};

/// Service `i` of the others (never the measured one): a VIP of its own and
/// four endpoint addresses of its own, none of which is ever contacted.
fn other_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i as u32)
}

fn other_endpoint(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 1)) + (i * ENDPOINTS + k) as u32)
}

/// The IPv6 twins (every Service is dual-stack, so both families' maps
/// hold as many).
pub(super) fn v6_of(a: Ipv4Addr) -> Ipv6Addr {
    let [_, b, c, d] = a.octets();
    Ipv6Addr::new(0xfd00, 0xbe, 0, 0, 0, b.into(), c.into(), d.into())
}

pub(super) fn weir_manifest(size: usize, vip: Ipv4Addr, backends: &[Pod]) -> Vec<String> {
    let port = [SvcPort { name: "http", protocol: "TCP", port: SVC_PORT, target_port: TARGET_PORT, node_port: None }];
    let slice_ports = [("http", "TCP", TARGET_PORT)];
    let mut docs = Vec::with_capacity(3 * size);
    let mut service = |name: &str, vip: Ipv4Addr, eps: Vec<(Ipv4Addr, Ipv6Addr)>| {
        let ips: [IpAddr; 2] = [vip.into(), v6_of(vip).into()];
        docs.push(service_yaml_families(name, &ips, &["IPv4", "IPv6"], "RequireDualStack", &port));
        let v4: Vec<(Ipv4Addr, &str)> = eps.iter().map(|(a, _)| (*a, "n1")).collect();
        let v6: Vec<(Ipv6Addr, &str)> = eps.iter().map(|(_, a)| (*a, "n1")).collect();
        docs.push(endpoint_slice_yaml(name, &slice_ports, &v4));
        docs.push(endpoint_slice_yaml6(name, &slice_ports, &v6));
    };
    for i in 0..size - 1 {
        let eps = (0..ENDPOINTS).map(|k| other_endpoint(i, k)).map(|a| (a, v6_of(a))).collect();
        service(&format!("s{i}"), other_vip(i), eps);
    }
    // Last in the file, so when it answers the whole file was applied.
    let eps = backends.iter().map(|p| (p.ip, p.ipv6.expect("a dual-stack backend"))).collect();
    service(&format!("measured-{size}"), vip, eps);
    docs
}

pub(super) fn iptables_rules(size: usize) -> usize {
    // KUBE-SERVICES rule, KUBE-SVC: masq rule + one per endpoint, KUBE-SEP: 2
    // each; plus the jumps, KUBE-MARK-MASQ and KUBE-POSTROUTING.
    size * (1 + 1 + ENDPOINTS + 2 * ENDPOINTS) + 7
}

fn chain_id(kind: &str, name: &str) -> String {
    // FNV-1a, 64 bits, as 16 hex digits: KUBE-SVC- + 16 = 25 of 28 chars.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain(name.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The nat table kube-proxy (iptables mode) writes for these Services.
fn kube_proxy_nat(size: usize, vip: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let cluster = weir_testbed::topology::CLUSTER_CIDR;
    let mut chains = String::new();
    let mut rules = String::new();
    let mut services = String::new();
    let mut add = |name: &str, vip: Ipv4Addr, eps: &[Ipv4Addr]| {
        let svc = format!("KUBE-SVC-{}", chain_id("svc", name));
        let comment = format!("\"default/{name}:http\"");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            services,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"default/{name}:http cluster IP\" -m tcp --dport {SVC_PORT} -j {svc}"
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s {cluster} -d {vip}/32 -p tcp -m comment --comment \"default/{name}:http cluster IP\" -m tcp --dport {SVC_PORT} -j KUBE-MARK-MASQ"
        );
        let n = eps.len();
        for (k, ep) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", chain_id(&format!("sep{k}"), name));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let remaining = n - k;
            if remaining > 1 {
                let p = 1.0 / remaining as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"default/{name}:http -> {ep}:{TARGET_PORT}\" -m statistic --mode random --probability {p:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"default/{name}:http -> {ep}:{TARGET_PORT}\" -j {sep}"
                );
            }
            let _ = writeln!(rules, "-A {sep} -s {ep}/32 -m comment --comment {comment} -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment {comment} -m tcp -j DNAT --to-destination {ep}:{TARGET_PORT}"
            );
        }
    };
    for i in 0..size - 1 {
        let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|k| other_endpoint(i, k)).collect();
        add(&format!("s{i}"), other_vip(i), &eps);
    }
    add(&format!("measured-{size}"), vip, backends);
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n{chains}\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         {services}{rules}COMMIT\n"
    )
}

/// Replaces the node's nat table; returns how long iptables-restore took.
pub(super) fn load_iptables(
    topo: &Topology,
    node: &Node,
    size: usize,
    vip: Ipv4Addr,
    backends: &[Pod],
) -> Result<Duration> {
    let eps: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    let file = topo.root().join(format!("kube-proxy-nat-{size}.rules"));
    fs::write(&file, kube_proxy_nat(size, vip, &eps)).with_context(|| format!("write {}", file.display()))?;
    let mut cmd = node.netns.command("iptables-restore")?;
    cmd.arg(&file);
    let start = Instant::now();
    exec::run(&mut cmd, Duration::from_secs(300)).context("iptables-restore")?;
    let took = start.elapsed();
    let saved = node.netns.run(&["iptables-save", "-t", "nat"])?;
    let services = saved.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count();
    let last = saved.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES ")).unwrap_or_default();
    ensure!(
        services == size && last.contains(&format!("-d {vip}/32")),
        "nat table after iptables-restore: {services} KUBE-SERVICES rules (want {size}), last: {last}"
    );
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::services::MAX_SERVICES;

    #[test]
    fn kube_proxy_rules_put_the_measured_service_last_with_kube_proxy_probabilities() {
        let vip = Ipv4Addr::new(10, 96, 1, 10);
        let eps: Vec<Ipv4Addr> = (2..6).map(|i| Ipv4Addr::new(10, 244, 2, i)).collect();
        let rules = kube_proxy_nat(3, vip, &eps);
        let services: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).collect();
        assert_eq!(services.len(), 3);
        assert!(services[2].contains("-d 10.96.1.10/32"), "{}", services[2]);
        assert!(services[0].contains(&format!("-d {}/32", other_vip(0))));
        for p in ["0.25000000000", "0.33333333333", "0.50000000000"] {
            assert_eq!(rules.matches(&format!("--probability {p} ")).count(), 3, "{p}");
        }
        assert!(rules.contains("-j DNAT --to-destination 10.244.2.5:8080"));
        assert!(rules.contains("-A PREROUTING ") && rules.contains("-A OUTPUT "));
        assert_eq!(rules.lines().filter(|l| l.starts_with("-A ")).count(), iptables_rules(3));
        // iptables chain names: 28 characters at most, all distinct.
        let chains: Vec<&str> =
            rules.lines().filter_map(|l| l.strip_prefix(':')).map(|l| l.split(' ').next().unwrap()).collect();
        assert!(chains.iter().all(|c| c.len() <= 28));
        let mut unique = chains.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), chains.len());
    }

    #[test]
    fn other_services_never_overlap_the_measured_one_or_the_pods() {
        let last = other_endpoint(MAX_SERVICES - 2, ENDPOINTS - 1);
        assert!(last.octets()[..2] == [10, 245], "{last}");
        assert_eq!(other_vip(MAX_SERVICES - 2).octets()[..2], [10, 100]);
        // Three per Service: the dual-stack Service, a slice per family.
        let docs = weir_manifest(3, Ipv4Addr::new(10, 96, 1, 10), &[]);
        assert_eq!(docs.len(), 9);
        assert!(docs[6].contains("clusterIP: \"10.96.1.10\""), "{}", docs[6]);
        assert!(docs[6].contains(&format!("\"{}\"", v6_of(Ipv4Addr::new(10, 96, 1, 10)))), "{}", docs[6]);
        assert!(docs[7].contains("addressType: IPv4") && docs[8].contains("addressType: IPv6"));
    }
}
