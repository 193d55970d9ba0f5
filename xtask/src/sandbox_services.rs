//! The sandbox's Service demo: a ClusterIP + NodePort Service over every
//! pod's HTTP server, probed from every pod and from a host outside the
//! cluster, and a Service without endpoints that must refuse at once.

use std::{collections::BTreeSet, net::Ipv4Addr, thread, time::Duration};

use anyhow::Result;
use weir_testbed::{
    NetNs, Pod, Topology,
    manifest::{SvcPort, endpoint_slice_yaml, service_yaml},
    pod::HTTP_PORT,
};

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const NODE_PORT: u16 = 30080;
const TRIES: usize = 8;

/// Publishes the Services, probes them, prints a table; true when all work.
/// The external host is returned so a kept sandbox keeps it.
pub fn demo(topo: &Topology, pods: &[Pod]) -> Result<(bool, NetNs)> {
    let http =
        |node_port| SvcPort { name: "http", protocol: "TCP", port: HTTP_PORT, target_port: HTTP_PORT, node_port };
    let endpoints: Vec<(Ipv4Addr, &str)> = pods.iter().map(|p| (p.ip, p.node.as_str())).collect();
    topo.write_manifest(
        "services.yaml",
        &[
            service_yaml("web", WEB_VIP, &[http(Some(NODE_PORT))], false),
            endpoint_slice_yaml("web", &[("http", "TCP", HTTP_PORT)], &endpoints),
            service_yaml("empty", EMPTY_VIP, &[http(None)], false),
            endpoint_slice_yaml("empty", &[("http", "TCP", HTTP_PORT)], &[]),
        ],
    )?;
    let (external, external_ip) = topo.external_host("ext", 100)?;
    println!(
        "\nServices: web {WEB_VIP}:{HTTP_PORT} (NodePort {NODE_PORT}) over all 4 pods; empty {EMPTY_VIP}:{HTTP_PORT} with no endpoints; external client {external_ip}"
    );

    // The agents poll their manifest directory: wait for the first answer.
    let first = &pods[0].netns;
    let url = format!("http://{WEB_VIP}:{HTTP_PORT}/");
    for _ in 0..40 {
        if first.curl(&url).is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }

    let mut all_ok = true;
    let mut row = |from: &str, to: String, ns: &NetNs| {
        let mut ok = 0;
        let mut backends = BTreeSet::new();
        for _ in 0..TRIES {
            if let Ok(body) = ns.curl(&format!("http://{to}/")) {
                ok += 1;
                backends.insert(body.trim().trim_start_matches("pod ").to_string());
            }
        }
        let good = ok == TRIES && backends.len() >= 2;
        all_ok &= good;
        let mark = if good { '✔' } else { '✘' };
        let list: Vec<_> = backends.into_iter().collect();
        println!("{mark} {from:<14} -> {to:<20} {ok}/{TRIES} answered, by {}", list.join(" "));
    };
    for pod in pods {
        row(&format!("{}/{}", pod.node, pod.name), format!("{WEB_VIP}:{HTTP_PORT}"), &pod.netns);
    }
    for node in topo.nodes() {
        row("external", format!("{}:{NODE_PORT}", node.ip), &external);
    }

    // No endpoints: refused at once (ICMP port unreachable from the
    // datapath): curl exits 7 (could not connect), where a black hole would
    // end in 28 (timed out).
    let refused = match first.curl(&format!("http://{EMPTY_VIP}:{HTTP_PORT}/")) {
        Ok(_) => false,
        Err(e) => format!("{e:#}").contains("exit code 7"),
    };
    all_ok &= refused;
    println!(
        "{} {:<14} -> {:<20} {}",
        if refused { '✔' } else { '✘' },
        format!("{}/{}", pods[0].node, pods[0].name),
        format!("{EMPTY_VIP}:{HTTP_PORT}"),
        if refused { "refused at once (no endpoints)" } else { "NOT refused" }
    );
    Ok((all_ok, external))
}
