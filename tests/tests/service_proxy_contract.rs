//! kube-proxy semantics that upstream's e2e suites check and a unit test of
//! ours did not name, on a node whose agent reads the kube source (real
//! kube-rs watches with label selectors, against the fake API server):
//! - test/e2e/network/service.go "should implement
//!   service.kubernetes.io/service-proxy-name" and "... headless": a
//!   Service carrying either label is not proxied, and adding or removing
//!   the label at run time removes or restores its frontend;
//! - "should fail health check node port if there are only terminating
//!   endpoints" (KEP-1669): with externalTrafficPolicy Local, the
//!   healthCheckNodePort answers 503 while the node's only endpoint is
//!   terminating (still serving), 200 once one is ready;
//! - kube-proxy's network_programming_duration_seconds: an EndpointSlice
//!   change carrying `endpoints.kubernetes.io/last-change-trigger-time` is
//!   counted in weir_network_programming_duration_seconds.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use weir_testbed::{Agent, Node, Pod, Topology, agent::Source, echo, tools};

const PORT: u16 = 9000;
const CONVERGE: Duration = Duration::from_secs(20);

fn service(name: &str, vip: Ipv4Addr, labels: &[(&str, &str)], extra_spec: &str) -> String {
    let mut label_lines = String::new();
    for (k, v) in labels {
        label_lines.push_str(&format!("\n    {k}: \"{v}\""));
    }
    let labels = if label_lines.is_empty() { String::new() } else { format!("\n  labels:{label_lines}") };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default{labels}\nspec:\n  clusterIP: {vip}\n  \
         clusterIPs: [\"{vip}\"]\n  ports:\n  - name: tcp\n    protocol: TCP\n    port: {PORT}\n    targetPort: {PORT}\n{extra_spec}"
    )
}

/// One endpoint (`ready`, `serving`, `terminating`), with the trigger-time
/// annotation the EndpointSlice controller sets.
fn slice(service: &str, ip: Ipv4Addr, node: &str, conditions: (bool, bool, bool), ports: &[(&str, u16)]) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (ready, serving, terminating) = conditions;
    let ports: String = ports.iter().map(|(n, p)| format!("- name: {n}\n  protocol: TCP\n  port: {p}\n")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-a\n  namespace: default\n  \
         labels:\n    kubernetes.io/service-name: {service}\n  annotations:\n    \
         endpoints.kubernetes.io/last-change-trigger-time: \"{}\"\naddressType: IPv4\nports:\n{ports}endpoints:\n\
         - addresses: [\"{ip}\"]\n  nodeName: {node}\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n",
        rfc3339(t)
    )
}

/// Unix seconds as RFC 3339 (UTC), without a date library.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Trigger times are whole seconds, and the agent counts a change only if
/// it was triggered after the agent started (as kube-proxy does): a slice
/// written in the second the agent started carries an earlier time and is
/// rightly left out, which made the count short once in CI.
fn into_the_next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())));
}

fn until(what: &str, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match ok() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within {CONVERGE:?}; last: {last}"),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn rfc3339_of_known_instants() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_796_497_987), "2026-12-05T19:13:07Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}

/// service.kubernetes.io/service-proxy-name and .../headless: a labelled
/// Service is not proxied; removing the label restores its frontend.
fn check_proxy_labels(topo: &Topology, node: &Node, server: &Pod, client: &Pod) {
    let vip = Ipv4Addr::new(10, 96, 0, 40);
    let reachable = || echo::ask(&client.netns, "tcp", vip, PORT, "x").map(|a| a.server).map_err(|e| format!("{e:#}"));
    let publish = |labels: &[(&str, &str)]| {
        topo.write_manifest(
            "labelled.yaml",
            &[
                service("labelled", vip, labels, ""),
                slice("labelled", server.ip, "n1", (true, true, false), &[("tcp", PORT)]),
            ],
        )
        .unwrap()
    };
    publish(&[]);
    until("the unlabelled Service is proxied", || {
        reachable().and_then(|s| if s == "n1/server" { Ok(()) } else { Err(s) })
    });
    let agent_bin = weir_testbed::bins::weir_agent().unwrap();
    let inspect_services = || {
        node.netns
            .run(&[agent_bin.to_str().unwrap(), "inspect", "services", "--bpf-pin-dir", node.pin_dir.to_str().unwrap()])
            .unwrap()
    };
    assert!(inspect_services().contains(&vip.to_string()), "{vip} not in inspect services:\n{}", inspect_services());
    for label in ["service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless"] {
        publish(&[(label, "foo-bar")]);
        until(&format!("{label} removes the frontend"), || match reachable() {
            Ok(s) => Err(format!("still answered by {s}")),
            Err(_) => Ok(()),
        });
        let services = inspect_services();
        assert!(!services.contains(&vip.to_string()), "{label}: {vip} still programmed:\n{services}");
        publish(&[]);
        until(&format!("removing {label} restores the frontend"), || reachable().map(|_| ()));
    }
}

/// The HTTP status the node's healthCheckNodePort `hc` answers.
fn health(node: &Node, hc: u16) -> Result<String, String> {
    let out = node
        .netns
        .output(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            &format!("http://{}:{hc}/healthz", node.ip),
        ])
        .map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// healthCheckNodePort with only a terminating local endpoint: 503, while
/// the NodePort still reaches it; 200 once it is ready.
fn check_health_check_node_port(topo: &Topology, node: &Node, server: &Pod, client: &Pod) {
    let (np, hc) = (30400, 30401);
    let local = format!("  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {hc}\n");
    let local_svc = service("local", Ipv4Addr::new(10, 96, 0, 41), &[], &local)
        .replace(&format!("    targetPort: {PORT}\n"), &format!("    targetPort: {PORT}\n    nodePort: {np}\n"));
    let want = |code: &'static str| move || health(node, hc).and_then(|c| if c == code { Ok(()) } else { Err(c) });
    topo.write_manifest(
        "local.yaml",
        &[local_svc.clone(), slice("local", server.ip, "n1", (false, true, true), &[("tcp", PORT)])],
    )
    .unwrap();
    until("503 with only a terminating local endpoint", want("503"));
    // Traffic that still arrives keeps going to the terminating endpoint.
    until("the NodePort still reaches the terminating endpoint", || {
        echo::ask(&client.netns, "tcp", node.ip, np, "x").map(|_| ()).map_err(|e| format!("{e:#}"))
    });
    topo.write_manifest(
        "local.yaml",
        &[local_svc, slice("local", server.ip, "n1", (true, true, false), &[("tcp", PORT)])],
    )
    .unwrap();
    until("200 once the local endpoint is ready", want("200"));
}

/// Network programming latency: the slice changes with a trigger time are
/// counted. Recorded at the end of the reconcile that wrote the last change
/// (the health check may answer a moment before).
fn check_programming_latency(node: &Node) {
    let mut metrics = String::new();
    until("the slice changes with a trigger time are counted", || {
        metrics = node.netns.curl("http://127.0.0.1:9878/metrics").map_err(|e| format!("{e:#}"))?;
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weir_network_programming_duration_seconds_count "))
            .ok_or("no programming latency in /metrics")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        if count >= 3 { Ok(()) } else { Err(format!("{count} observations")) }
    });
    assert!(metrics.contains("weir_build_info{version="), "{metrics}");
}

#[test]
#[ignore = "privileged: network namespaces, bpffs, weir-cni, weir-agent on the kube source"]
fn proxy_labels_health_check_and_programming_latency() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::BPFTOOL, tools::CURL]);
    let topo = Topology::builder("proxy-contract").nodes(1).build().unwrap();
    let node = topo.node("n1");
    let mut agents: Vec<Agent> = topo.start_agents_with(Source::Kube).unwrap();
    into_the_next_second();
    let list = node.agent_conflist().unwrap();
    let server = Pod::create(node, "server", &list).unwrap();
    let client = Pod::create(node, "client", &list).unwrap();
    let _echo = echo::serve(&server.netns, "n1/server", PORT, &node.dirs.logs.join("echo.log"), false).unwrap();

    // --- service.kubernetes.io/service-proxy-name and .../headless ---
    check_proxy_labels(&topo, node, &server, &client);
    // --- healthCheckNodePort with only a terminating local endpoint ---
    check_health_check_node_port(&topo, node, &server, &client);
    // --- network programming latency ---
    check_programming_latency(node);
    for a in agents.drain(..) {
        a.stop();
    }
}
