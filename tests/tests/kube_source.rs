//! The agents' kube source (kube-rs lists and watches), not the manifest
//! dir: each node runs `weir-dev fake-apiserver` over the topology's
//! manifest directory on the node's address (https, a service account in
//! the node's dir), and its agent runs with `--source kube` in-cluster, as
//! a DaemonSet starts it (the API server's address from the setting). Pods on both nodes reach each
//! other and a ClusterIP Service; then a backend leaves the EndpointSlice
//! and the agents see it through their watches (no relist).

use std::{collections::BTreeSet, fs, net::Ipv4Addr, thread, time::Duration};

use weir_testbed::{
    Agent, NetNs, Pod, Topology,
    agent::Source,
    echo::{self, Answer},
    manifest::{SvcPort, endpoint_slice_yaml, service_yaml},
    process::ChildGuard,
    tools,
};

const ECHO_PORT: u16 = 9000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

fn log(path: &std::path::Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Lines of the agent's log where the kube source finished a list of `kind`.
fn lists_of(agent: &Agent, kind: &str) -> usize {
    let needle = format!("kind={kind} ");
    log(agent.log_path())
        .lines()
        .filter(|l| l.contains("weir_agent::sources::kube") && l.contains("listed") && l.contains(&needle))
        .count()
}

fn servers(answers: &[Answer]) -> BTreeSet<String> {
    answers.iter().map(|a| a.server.clone()).collect()
}

/// Asks until the datapath answers (the Service arrives through a watch),
/// then returns that first answer.
fn first_answer(ns: &NetNs, host: Ipv4Addr) -> Answer {
    let mut last = None;
    for _ in 0..60 {
        match echo::ask(ns, "tcp", host, ECHO_PORT, "hello") {
            Ok(a) => return a,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("{host}:{ECHO_PORT} from {} never answered: {:#}", ns.name(), last.unwrap());
}

/// Each agent reads its own node's fake API server, not the directory, and
/// listed each kind once.
fn assert_agents_read_their_api_servers(topo: &Topology, agents: &[Agent]) {
    for (agent, node) in agents.iter().zip(topo.nodes()) {
        assert_eq!(agent.source(), Source::Kube);
        let (_, api_log) = agent.fake_api().expect("a fake API server");
        let addr = format!("{}:{}", node.ip, weir_testbed::agent::FAKE_API_PORT);
        assert!(log(api_log).contains(&format!("fake API server listening addr={addr}")), "{}", log(api_log));
        let text = log(agent.log_path());
        assert!(
            text.lines().any(|l| l.contains("API server address") && l.contains(&addr)),
            "{}: {text}",
            agent.node()
        );
        assert!(!text.contains("watching manifest directory"), "{} runs the dir source:\n{text}", agent.node());
        for kind in ["Node", "Service", "EndpointSlice", "Pod", "Namespace", "NetworkPolicy"] {
            assert_eq!(lists_of(agent, kind), 1, "{}: one list of {kind}:\n{text}", agent.node());
        }
    }
}

/// Two pods per node, each an echo server named `<node>/<pod>`.
fn echo_pods(topo: &Topology) -> (Vec<Pod>, Vec<ChildGuard>) {
    let mut pods = Vec::new();
    let mut echo_servers = Vec::new();
    for node in topo.nodes() {
        let list = node.agent_conflist().unwrap();
        for name in ["a", "b"] {
            let pod = Pod::create(node, name, &list).unwrap();
            let log = node.dirs.logs.join(format!("echo-{name}.log"));
            echo_servers
                .push(echo::serve(&pod.netns, &format!("{}/{name}", node.name), ECHO_PORT, &log, false).unwrap());
            pods.push(pod);
        }
    }
    (pods, echo_servers)
}

fn find_pod<'p>(pods: &'p [Pod], label: &str) -> &'p Pod {
    pods.iter().find(|p| format!("{}/{}", p.node, p.name) == label).unwrap()
}

/// The ClusterIP Service over the pods, except those in `except`.
fn publish(topo: &Topology, pods: &[Pod], except: &[&str]) {
    let endpoints: Vec<(Ipv4Addr, &str)> = pods
        .iter()
        .filter(|p| !except.contains(&format!("{}/{}", p.node, p.name).as_str()))
        .map(|p| (p.ip, p.node.as_str()))
        .collect();
    let ports = [SvcPort { name: "tcp", protocol: "TCP", port: ECHO_PORT, target_port: ECHO_PORT, node_port: None }];
    topo.write_manifest(
        "svc-echo.yaml",
        &[
            service_yaml("echo", VIP, &ports, false),
            endpoint_slice_yaml("echo", &[("tcp", "TCP", ECHO_PORT)], &endpoints),
        ],
    )
    .unwrap();
}

/// `n` connections from `ns` to the Service, each answered.
fn ask_vip(ns: &NetNs, n: usize) -> Vec<Answer> {
    (0..n).map(|_| echo::ask(ns, "tcp", VIP, ECHO_PORT, "t").unwrap()).collect()
}

/// Waits (10 s at most) until n1/a no longer reaches `removed`.
fn wait_backend_gone(pods: &[Pod], removed: &str) {
    let ns = &find_pod(pods, "n1/a").netns;
    let mut converged = false;
    for _ in 0..40 {
        let batch = ask_vip(ns, 8);
        if !servers(&batch).contains(removed) {
            converged = true;
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(converged, "n1/a still reaches the removed backend {removed} after 10 s");
}

/// All of it came through the watches: still one list per kind, no watch
/// errors; each server saw the directory change.
fn assert_only_watched(agents: &[Agent]) {
    for agent in agents {
        let text = log(agent.log_path());
        for kind in ["Service", "EndpointSlice", "Pod"] {
            assert_eq!(lists_of(agent, kind), 1, "{}: {kind} was relisted:\n{text}", agent.node());
        }
        assert!(!text.contains("watch failed"), "{}:\n{text}", agent.node());
        let (_, api_log) = agent.fake_api().unwrap();
        assert!(log(api_log).contains("manifest directory changed"), "{}", log(api_log));
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs (network namespaces, weir-cni, weir-agent)"]
fn agents_on_the_kube_source_route_pods_serve_a_service_and_follow_a_slice_change() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP, tools::BPFTOOL]);
    let topo = Topology::builder("kube_source").nodes(2).build().unwrap();
    let agents = topo.start_agents_with(Source::Kube).unwrap();
    assert_agents_read_their_api_servers(&topo, &agents);
    // The routes to the peer's podCIDR come from the Nodes the API served.
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    for (node, peer) in [(n1, n2), (n2, n1)] {
        let routes = node.netns.routes().unwrap();
        let want = format!("{} via {}", peer.pod_cidr, peer.ip);
        assert!(routes.iter().any(|r| r.starts_with(&want)), "{}: no `{want}` in {routes:#?}", node.name);
    }

    // Two pods per node (their Pod objects reach the agents as watch
    // events: they are published after the lists), each an echo server.
    let (pods, echo_servers) = echo_pods(&topo);
    let pod = |label: &str| find_pod(&pods, label);

    // Across nodes, directly.
    for (from, to) in [("n1/a", "n2/a"), ("n2/b", "n1/b")] {
        let (from, to) = (pod(from), pod(to));
        from.ping(to.ip).unwrap();
        assert_eq!(
            echo::ask(&from.netns, "tcp", to.ip, ECHO_PORT, "x").unwrap().server,
            format!("{}/{}", to.node, to.name)
        );
    }

    // A ClusterIP Service over the four pods.
    publish(&topo, &pods, &[]);
    for client in ["n1/a", "n2/a"] {
        let ns = &pod(client).netns;
        first_answer(ns, VIP);
        let answers = ask_vip(ns, 24);
        assert!(answers.iter().all(|a| a.peer == VIP), "the client must only see the Service address: {answers:?}");
        assert!(servers(&answers).len() >= 3, "24 connections from {client} reached only {:?}", servers(&answers));
    }

    // n2/b leaves the EndpointSlice: a MODIFIED event on the watch.
    publish(&topo, &pods, &["n2/b"]);
    wait_backend_gone(&pods, "n2/b");
    for client in ["n1/a", "n2/a"] {
        let after = ask_vip(&pod(client).netns, 24);
        assert!(!servers(&after).contains("n2/b"), "{client}: removed backend still used: {:?}", servers(&after));
        assert!(servers(&after).len() >= 2, "{client}: {:?}", servers(&after));
    }

    assert_only_watched(&agents);
    // Servers, pods, agents (each with its API server), then the namespaces.
    drop(echo_servers);
    drop(pods);
    drop(agents);
}
