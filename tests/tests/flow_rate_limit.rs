//! Flow events under a flood (issue #13): with a small per-CPU rate and
//! burst, a burst of denied packets yields only as many events as the
//! bucket allows, the rest is counted as lost, the agent's history never
//! grows past its bound, and `weir-agent observe` keeps answering.
//! (Its own test binary: the agent's settings come from the environment,
//! which tests in one process would share.)

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use weir_testbed::{
    Node, Pod, Topology,
    manifest::{self, PodObject},
    policy_cluster::labels,
    tools,
};

const BUFFER: usize = 4;
const PACKETS: usize = 400;

const DENY_ALL: &str = "
podSelector: {}
policyTypes: [Ingress]
";

fn metric(node: &Node, name: &str) -> f64 {
    let metrics = node.netns.run(&["curl", "-sf", "http://127.0.0.1:9878/metrics"]).unwrap();
    let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn observe_json(node: &Node) -> Vec<String> {
    let agent = weir_testbed::bins::weir_agent().unwrap().display().to_string();
    let run = node.dirs.run.display().to_string();
    let out = node.netns.output(&[&agent, "observe", "--run-dir", &run, "--json", "--last", "1000"]).unwrap();
    assert!(out.success(), "weir-agent observe: {}", out.stderr_str());
    out.stdout_str().lines().map(str::to_string).collect()
}

/// `count` UDP datagrams from `pod` to `dst`:81, as fast as python sends them.
fn send_udp(pod: &Pod, dst: Ipv4Addr, count: usize) {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range({count}):\n    s.sendto(b'x',('{dst}',81))\n"
    );
    pod.netns.run(&["python3", "-c", &script]).unwrap();
}

#[test]
fn a_burst_of_denied_packets_is_rate_limited_and_the_agent_keeps_answering() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::CURL]);
    let topo = Topology::builder("flow_rate").nodes(1).build().unwrap();
    let node = topo.node("n1");
    // Safety: this test binary has no other test reading the environment.
    unsafe {
        std::env::set_var("WEIR_FLOW_EVENTS_PER_SEC", "2");
        std::env::set_var("WEIR_FLOW_EVENTS_BURST", "5");
        std::env::set_var("WEIR_FLOW_BUFFER", BUFFER.to_string());
    }
    let agent = topo.start_agent("n1").unwrap();
    for ns in ["x", "y"] {
        topo.write_manifest(&format!("namespace_{ns}.yaml"), &[manifest::namespace_yaml(ns, &labels(&[("ns", ns)]))])
            .unwrap();
    }
    let list = node.agent_conflist().unwrap();
    let a = Pod::create_k8s(node, "x-a", PodObject::new("x", "a").label("pod", "a"), &list).unwrap();
    let b = Pod::create_k8s(node, "y-b", PodObject::new("y", "b").label("pod", "b"), &list).unwrap();
    topo.write_manifest("netpol.yaml", &[manifest::network_policy_yaml("y", "deny-all", DENY_ALL)]).unwrap();

    // Wait until the policy drops: a first datagram gives an event.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(node, "weir_flow_drops_total{reason=\"policy-denied-ingress\",direction=\"ingress\"}") < 1.0 {
        assert!(Instant::now() < deadline, "no policy drop counted; agent log:\n{}", agent.log_tail(40));
        send_udp(&a, b.ip, 1);
        thread::sleep(Duration::from_millis(300));
    }
    let lost_before = metric(node, "weir_flow_events_lost_total ");
    let drops_before = metric(node, "weir_flow_drops_total{reason=\"policy-denied-ingress\",direction=\"ingress\"}");

    send_udp(&a, b.ip, PACKETS);
    // The datagrams sent after the bucket ran dry are lost events; the
    // agent samples the lost counter every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (lost, drops) = loop {
        let lost = metric(node, "weir_flow_events_lost_total ") - lost_before;
        let drops = metric(node, "weir_flow_drops_total{reason=\"policy-denied-ingress\",direction=\"ingress\"}")
            - drops_before;
        if lost > 0.0 {
            break (lost, drops);
        }
        assert!(Instant::now() < deadline, "the lost counter never rose; agent log:\n{}", agent.log_tail(40));
        thread::sleep(Duration::from_millis(200));
    };
    eprintln!("flow_rate_limit: {PACKETS} denied datagrams: {drops} events passed, {lost} lost");
    // At most the burst plus what 2/s refills while python sends (a few s
    // at worst) got through; every other datagram is a lost event.
    assert!(drops <= 5.0 + 2.0 * 10.0, "{drops} drop events passed a bucket of 5 at 2/s");
    assert!(lost + drops <= PACKETS as f64 + 1.0, "lost {lost} + passed {drops} > {PACKETS} datagrams");
    assert!(lost >= (PACKETS as f64) - 5.0 - 2.0 * 10.0, "only {lost} of {PACKETS} events counted as lost");

    // The agent answers, and its history stays within its bound.
    let flows = observe_json(node);
    assert!(!flows.is_empty() && flows.len() <= BUFFER, "{} flows kept with a buffer of {BUFFER}", flows.len());
    assert!(metric(node, "weir_flow_buffer_flows ") <= BUFFER as f64);
    assert!(flows.iter().any(|f| f.contains("policy-denied-ingress")), "{flows:#?}");
}
