//! Flow events end to end (issue #13): one node with its agent, pods x/a
//! and y/b, a NetworkPolicy in y letting x/a reach y/b on TCP 80 only, and
//! a ClusterIP Service over y/b, and an IPv6 one (the node is dual-stack).
//! x/a connects to y/b on 80 (allowed), on 81 (denied) and to both
//! Services (IPv6 translated per packet by `lb::tc6`); `weir-agent
//! observe`, run as an operator runs it on the node (in its namespace,
//! against its run dir), shows them all with pod, policy and Service names.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use weir_testbed::{
    Node, Pod, Topology, echo,
    manifest::{self, PodObject, SvcPort},
    policy_cluster::labels,
    probe::{Outcome, Probe, Prober, Proto},
    tools,
    topology::Families,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 90);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x90);
const POLICY: &str = "allow-a-80";
const LOG_MAX_BYTES: u64 = 8192;

const POLICY_SPEC: &str = "
podSelector:
  matchLabels: {pod: b}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: x}}
    podSelector: {matchLabels: {pod: a}}
  ports:
  - {protocol: TCP, port: 80}
";

/// `weir-agent observe <args>` in the node's namespace; its stdout.
fn observe(node: &Node, args: &[&str]) -> String {
    let agent = weir_testbed::bins::weir_agent().unwrap().display().to_string();
    let run = node.dirs.run.display().to_string();
    let mut argv = vec![agent.as_str(), "observe", "--run-dir", run.as_str()];
    argv.extend_from_slice(args);
    let out = node.netns.output(&argv).unwrap();
    assert!(out.success(), "weir-agent observe {args:?}: {}", out.stderr_str());
    out.stdout_str().to_string()
}

fn flows(node: &Node) -> Vec<Value> {
    observe(node, &["--json", "--last", "100"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn pod_of(peer: &Value) -> String {
    format!("{}/{}", peer["namespace"].as_str().unwrap_or("?"), peer["pod"].as_str().unwrap_or("?"))
}

/// What x/a's three connections should have left in the flow log.
#[derive(Debug, Default)]
struct Seen {
    allowed: Option<Value>,
    denied: Option<Value>,
    translated: Option<Value>,
    translated6: Option<Value>,
}

fn find(flows: &[Value], b: Ipv4Addr) -> Seen {
    let mut seen = Seen::default();
    let b = b.to_string();
    for f in flows {
        let (src, dst) = (&f["source"], &f["destination"]);
        if pod_of(src) != "x/a" || f["protocol"] != "TCP" {
            continue;
        }
        match f["verdict"].as_str() {
            // The policy's check at y/b (x/a's own egress is not isolated:
            // its allowed flow names no policy).
            Some("allowed") if dst["ip"] == b.as_str() && dst["port"] == 80 && f["direction"] == "ingress" => {
                seen.allowed = Some(f.clone())
            }
            Some("dropped") if dst["ip"] == b.as_str() && dst["port"] == 81 => seen.denied = Some(f.clone()),
            Some("translated") if dst["ip"] == VIP.to_string().as_str() => seen.translated = Some(f.clone()),
            Some("translated") if dst["ip"] == VIP6.to_string().as_str() => seen.translated6 = Some(f.clone()),
            _ => {}
        }
    }
    seen
}

#[test]
fn denied_allowed_and_translated_flows_are_observed_with_names() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::CURL]);
    let topo = Topology::builder("flow_observe").nodes(1).families(Families::DualStack).build().unwrap();
    let node = topo.node("n1");
    // The flow log, as the ConfigMap's flow-log turns it on, small enough
    // to rotate during the test (the agent keeps the environment).
    let flow_log = node.dirs.logs.join("flows.log");
    // Safety: no other thread of this test process reads the environment.
    unsafe {
        std::env::set_var("WEIR_FLOW_LOG", &flow_log);
        std::env::set_var("WEIR_FLOW_LOG_MAX_BYTES", LOG_MAX_BYTES.to_string());
    }
    let agent = topo.start_agent("n1").unwrap();
    for ns in ["x", "y"] {
        let yaml = manifest::namespace_yaml(ns, &labels(&[("ns", ns)]));
        topo.write_manifest(&format!("namespace_{ns}.yaml"), &[yaml]).unwrap();
    }
    let list = node.agent_conflist().unwrap();
    let a = Pod::create_k8s(node, "x-a", PodObject::new("x", "a").label("pod", "a"), &list).unwrap();
    let b = Pod::create_k8s(node, "y-b", PodObject::new("y", "b").label("pod", "b"), &list).unwrap();
    let log = node.dirs.logs.join("serve-y-b.log");
    let _servers = echo::serve_ports(&b.netns, "y/b", &[80, 81], &log, false).unwrap();
    let mut prober = Prober::start(&a.netns).unwrap();

    topo.write_manifest("netpol.yaml", &[manifest::network_policy_yaml("y", POLICY, POLICY_SPEC)]).unwrap();
    let b6 = b.ipv6.expect("a dual-stack pod has IPv6");
    let ports = [SvcPort { name: "http", protocol: "TCP", port: 80, target_port: 80, node_port: None }];
    let svc = [
        manifest::service_yaml("web", VIP, &ports, false),
        manifest::endpoint_slice_yaml("web", &[("http", "TCP", 80)], &[(b.ip, node.name.as_str())]),
        manifest::service_yaml_families("web6", &[VIP6.into()], &["IPv6"], "SingleStack", &ports),
        manifest::endpoint_slice_yaml6("web6", &[("http", "TCP", 80)], &[(b6, node.name.as_str())]),
    ];
    topo.write_manifest("svc_web.yaml", &svc).unwrap();

    // Until the policy and the Service are in place: 80 and the Service
    // answer, 81 does not.
    let probes = [
        Probe { dst: b.ip.into(), port: 80, proto: Proto::Tcp, src_port: 0 },
        Probe { dst: b.ip.into(), port: 81, proto: Proto::Tcp, src_port: 0 },
        Probe { dst: VIP.into(), port: 80, proto: Proto::Tcp, src_port: 0 },
        Probe { dst: VIP6.into(), port: 80, proto: Proto::Tcp, src_port: 0 },
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = prober.run(&probes, Duration::from_secs(1)).unwrap();
        let want = matches!(&out[0], Outcome::Answered(by) if by == "y/b")
            && matches!(out[1], Outcome::Blocked(_))
            && matches!(&out[2], Outcome::Answered(by) if by == "y/b")
            && matches!(&out[3], Outcome::Answered(by) if by == "y/b");
        if want {
            break;
        }
        assert!(Instant::now() < deadline, "the policy and the Service never took effect: {out:?}");
        thread::sleep(Duration::from_millis(200));
    }

    // Once more, all under the policy and the Service: the last flows of
    // each kind are these.
    let out = prober.run(&probes, Duration::from_secs(1)).unwrap();
    assert!(matches!(out[1], Outcome::Blocked(_)), "{out:?}");

    // The events reach the agent within moments of the probes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let all = flows(node);
        let seen = find(&all, b.ip);
        if seen.allowed.is_some() && seen.denied.is_some() && seen.translated.is_some() && seen.translated6.is_some() {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "flows missing: {seen:?}\nall flows:\n{}\nagent log:\n{}",
            all.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"),
            agent.log_tail(40)
        );
        thread::sleep(Duration::from_millis(200));
    };

    let allowed = seen.allowed.unwrap();
    assert_eq!(pod_of(&allowed["destination"]), "y/b", "{allowed}");
    assert_eq!(allowed["policies"], serde_json::json!([format!("y/{POLICY}")]), "{allowed}\n{}", agent.log_tail(30));
    assert_eq!(allowed["node"], node.name.as_str(), "{allowed}");

    let denied = seen.denied.unwrap();
    assert_eq!(pod_of(&denied["destination"]), "y/b", "{denied}");
    assert_eq!(denied["reason"], "policy-denied-ingress", "{denied}");
    assert_eq!(denied["direction"], "ingress", "{denied}");
    assert_eq!(denied["policies"], serde_json::json!([format!("y/{POLICY}")]), "{denied}");

    let translated = seen.translated.unwrap();
    assert_eq!(translated["service"], "default/web", "{translated}");
    assert_eq!(pod_of(&translated["backend"]), "y/b", "{translated}");
    assert_eq!(translated["backend"]["port"], 80, "{translated}");

    // The IPv6 Service's, named alike, with the backend's IPv6 address.
    let translated6 = seen.translated6.unwrap();
    assert_eq!(translated6["service"], "default/web6", "{translated6}");
    assert_eq!(pod_of(&translated6["backend"]), "y/b", "{translated6}");
    assert_eq!(translated6["backend"]["ip"], b6.to_string().as_str(), "{translated6}");
    assert_eq!(translated6["backend"]["port"], 80, "{translated6}");
    assert_eq!(translated6["direction"], "egress", "{translated6}");
    let by_service6 = observe(node, &["--service", "default/web6", "--last", "100"]);
    let want = format!("-> service default/web6 [{VIP6}]:80 => y/b [{b6}]:80 TCP TRANSLATED");
    assert!(by_service6.lines().any(|l| l.contains("x/a [") && l.contains(&want)), "{want} not in\n{by_service6}");

    // Filters, and the readable form.
    let dropped = observe(node, &["--verdict", "dropped", "--pod", "y/b", "--port", "81", "--last", "100"]);
    let want = format!("x/a {}:", a.ip);
    let line = dropped.lines().find(|l| l.contains(&want)).unwrap_or_else(|| panic!("no x/a line in\n{dropped}"));
    assert!(
        line.contains(&format!("-> y/b {}:81 TCP DROPPED policy-denied-ingress (policy: y/{POLICY})", b.ip)),
        "{line}"
    );
    assert!(!dropped.contains("ALLOWED") && !dropped.contains("TRANSLATED"), "{dropped}");
    let by_service = observe(node, &["--service", "default/web", "--json", "--last", "100"]);
    assert!(!by_service.is_empty() && by_service.lines().all(|l| l.contains("\"service\":\"default/web\"")));
    let nothing = observe(node, &["--namespace", "nowhere", "--json", "--last", "100"]);
    assert!(nothing.is_empty(), "{nothing}");

    // /metrics counts them (the agent's status endpoint in the node).
    let metrics = node.netns.run(&["curl", "-sf", "http://127.0.0.1:9878/metrics"]).unwrap();
    let sample = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(sample("weir_flows_total{verdict=\"dropped\",direction=\"ingress\"}") >= 1.0);
    assert!(sample("weir_flows_total{verdict=\"translated\",direction=\"egress\"}") >= 1.0);
    assert!(sample("weir_flow_drops_total{reason=\"policy-denied-ingress\",direction=\"ingress\"}") >= 1.0);
    assert!(sample("weir_flow_buffer_flows ") >= 3.0);
    assert_eq!(sample("weir_flow_events_reading "), 1.0);
    sample("weir_flow_events_lost_total ");

    // The flow log: JSON lines, rotated to one old file by size; the
    // denied flow is in it.
    let rotated = flow_log.with_extension("log.1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut lines = Vec::new();
        for path in [&rotated, &flow_log] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            assert!(text.len() as u64 <= LOG_MAX_BYTES, "{} has {} bytes", path.display(), text.len());
            lines.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))));
        }
        if find(&lines, b.ip).denied.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no denied flow in the flow log {}:\n{lines:#?}", flow_log.display());
        thread::sleep(Duration::from_millis(200));
    }
}
