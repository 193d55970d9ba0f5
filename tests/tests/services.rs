//! Services through weir's datapath on a two-node cluster in namespaces:
//! ClusterIP over TCP and UDP from pods on both nodes, NodePort from a host
//! outside the cluster, backend removal, session affinity, rejection
//! without endpoints, and an established connection across an agent
//! restart.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitStatus,
    thread,
    time::Duration,
};

use weir_testbed::{
    Agent, NetNs, Node, Pod, Topology,
    echo::{self, Answer},
    manifest::{SvcPort, endpoint_slice_yaml, service_yaml},
    process::ChildGuard,
    tools,
    topology::Direction,
};

const ECHO_PORT: u16 = 9000;
const NODE_PORT: u16 = 30090;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Two nodes, two pods on each, every pod running the echo server.
struct Cluster {
    // Dropped in this order: servers, pods, agents, then the namespaces.
    _servers: Vec<ChildGuard>,
    pods: Vec<Pod>,
    agents: Vec<Agent>,
    topo: Topology,
}

impl Cluster {
    fn new(label: &str) -> Self {
        weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP, tools::BPFTOOL]);
        let topo = Topology::builder(label).nodes(2).build().unwrap();
        let agents = topo.start_agents().unwrap();
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for node in topo.nodes() {
            let list = node.agent_conflist().unwrap();
            for name in ["a", "b"] {
                let pod = Pod::create(node, name, &list).unwrap();
                let log = node.dirs.logs.join(format!("echo-{name}.log"));
                let label = format!("{}/{name}", node.name);
                servers.push(echo::serve(&pod.netns, &label, ECHO_PORT, &log, false).unwrap());
                pods.push(pod);
            }
        }
        Cluster { _servers: servers, pods, agents, topo }
    }

    fn pod(&self, label: &str) -> &Pod {
        self.pods.iter().find(|p| format!("{}/{}", p.node, p.name) == label).unwrap()
    }

    fn endpoints(&self, except: &[&str]) -> Vec<(Ipv4Addr, &str)> {
        self.pods
            .iter()
            .filter(|p| !except.contains(&format!("{}/{}", p.node, p.name).as_str()))
            .map(|p| (p.ip, p.node.as_str()))
            .collect()
    }

    /// The echo Service (TCP and UDP, NodePort for TCP) over `endpoints`.
    fn publish(&self, name: &str, vip: Ipv4Addr, endpoints: &[(Ipv4Addr, &str)], affinity: bool) {
        let ports = [
            SvcPort {
                name: "tcp",
                protocol: "TCP",
                port: ECHO_PORT,
                target_port: ECHO_PORT,
                node_port: Some(NODE_PORT),
            },
            SvcPort { name: "udp", protocol: "UDP", port: ECHO_PORT, target_port: ECHO_PORT, node_port: None },
        ];
        let ports = if affinity { &ports[..1] } else { &ports[..] };
        let ports: Vec<SvcPort> = ports
            .iter()
            .map(|p| SvcPort { node_port: if affinity { None } else { p.node_port }, ..p.clone() })
            .collect();
        let slice_ports: Vec<(&str, &str, u16)> = ports.iter().map(|p| (p.name, p.protocol, ECHO_PORT)).collect();
        self.topo
            .write_manifest(
                &format!("svc-{name}.yaml"),
                &[service_yaml(name, vip, &ports, affinity), endpoint_slice_yaml(name, &slice_ports, endpoints)],
            )
            .unwrap();
    }
}

/// Asks until the datapath answers (the agents poll the manifest directory),
/// then returns that first answer.
fn first_answer(ns: &weir_testbed::NetNs, proto: &str, host: Ipv4Addr, port: u16) -> Answer {
    let mut last = None;
    for _ in 0..60 {
        match echo::ask(ns, proto, host, port, "hello") {
            Ok(a) => return a,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("{proto} {host}:{port} from {} never answered: {:#}", ns.name(), last.unwrap());
}

fn servers(answers: &[Answer]) -> BTreeSet<String> {
    answers.iter().map(|a| a.server.clone()).collect()
}

#[test]
fn cluster_ip_over_tcp_and_udp_from_both_nodes_and_backend_removal() {
    let c = Cluster::new("svc_cip");
    c.publish("echo", VIP, &c.endpoints(&[]), false);

    for client in ["n1/a", "n2/a"] {
        let ns = &c.pod(client).netns;
        first_answer(ns, "tcp", VIP, ECHO_PORT);
        let tcp: Vec<Answer> = (0..24).map(|_| echo::ask(ns, "tcp", VIP, ECHO_PORT, "t").unwrap()).collect();
        assert!(tcp.iter().all(|a| a.peer == VIP), "the client must only ever see the Service address: {tcp:?}");
        assert!(servers(&tcp).len() >= 3, "24 connections from {client} reached only {:?}", servers(&tcp));

        // Hairpin: the client is one of the backends; with 40 connections
        // it reaches itself (all but surely: (3/4)^40 < 1e-5), through its
        // own Service.
        let more: Vec<Answer> = (0..16).map(|_| echo::ask(ns, "tcp", VIP, ECHO_PORT, "t").unwrap()).collect();
        assert!(
            servers(&tcp).contains(client) || servers(&more).contains(client),
            "{client} never reached itself through the Service in 40 connections"
        );

        let udp: Vec<Answer> = (0..16).map(|_| echo::ask(ns, "udp", VIP, ECHO_PORT, "u").unwrap()).collect();
        assert!(udp.iter().all(|a| a.peer == VIP), "UDP replies must come from the Service address: {udp:?}");
        assert!(servers(&udp).len() >= 2, "16 UDP flows from {client} reached only {:?}", servers(&udp));
    }

    // n2/b leaves: new connections never reach it.
    c.publish("echo", VIP, &c.endpoints(&["n2/b"]), false);
    thread::sleep(Duration::from_secs(2));
    let ns = &c.pod("n1/a").netns;
    let after: Vec<Answer> = (0..24).map(|_| echo::ask(ns, "tcp", VIP, ECHO_PORT, "t").unwrap()).collect();
    assert!(!servers(&after).contains("n2/b"), "removed backend still used: {:?}", servers(&after));
    assert!(servers(&after).len() >= 2);
}

#[test]
fn node_port_from_an_external_client_reaches_local_and_remote_backends() {
    let c = Cluster::new("svc_np");
    c.publish("echo", VIP, &c.endpoints(&[]), false);
    let (client, _) = c.topo.external_host("ext", 100).unwrap();
    for node in c.topo.nodes() {
        first_answer(&client, "tcp", node.ip, NODE_PORT);
        let answers: Vec<Answer> =
            (0..16).map(|_| echo::ask(&client, "tcp", node.ip, NODE_PORT, "n").unwrap()).collect();
        assert!(answers.iter().all(|a| a.peer == node.ip), "replies must come from the node port: {answers:?}");
        let nodes_reached: BTreeSet<&str> = answers.iter().map(|a| &a.server[..2]).collect();
        assert_eq!(
            nodes_reached.len(),
            2,
            "16 connections to {}:{NODE_PORT} should reach backends on both nodes (local, and remote through SNAT): {:?}",
            node.ip,
            servers(&answers)
        );
    }
}

#[test]
fn session_affinity_and_rejection_without_endpoints() {
    let c = Cluster::new("svc_aff");
    let sticky = Ipv4Addr::new(10, 96, 0, 11);
    let empty = Ipv4Addr::new(10, 96, 0, 12);
    c.publish("sticky", sticky, &c.endpoints(&[]), true);
    c.publish("empty", empty, &[], false);

    let ns = &c.pod("n1/a").netns;
    let first = first_answer(ns, "tcp", sticky, ECHO_PORT);
    for _ in 0..16 {
        assert_eq!(echo::ask(ns, "tcp", sticky, ECHO_PORT, "s").unwrap().server, first.server, "ClientIP affinity");
    }

    // Wait for the empty Service to be programmed: until then the VIP is
    // not routed and the connect times out instead of being refused.
    let mut last = String::new();
    for _ in 0..40 {
        match echo::ask(ns, "tcp", empty, ECHO_PORT, "e") {
            Ok(a) => panic!("a Service without endpoints answered: {a:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        if last.contains("ConnectionRefused") {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(last.contains("ConnectionRefused"), "expected an immediate refusal, got: {last}");
}

/// Connects through the ClusterIP, waits for `go`, then talks again.
const LONG_CLIENT: &str = r#"
import os, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"before"); print(s.recv(100).decode().split()[0], flush=True)
open(sys.argv[3], "w").write("connected")
while not os.path.exists(sys.argv[4]): time.sleep(0.05)
s.sendall(b"after"); print(s.recv(100).decode().split()[0], flush=True)
"#;

/// LONG_CLIENT running in a pod, and the files it reports through.
struct LongClient {
    child: ChildGuard,
    go: PathBuf,
    out: PathBuf,
}

impl LongClient {
    /// Starts LONG_CLIENT in `ns` against the Service (its files in `dir`)
    /// and waits until it has connected and had its first answer.
    fn start(ns: &NetNs, dir: &Path) -> Self {
        let (connected, go, out) = (dir.join("connected"), dir.join("go"), dir.join("client.out"));
        let child = ns
            .spawn(
                &[
                    "python3",
                    "-c",
                    LONG_CLIENT,
                    &VIP.to_string(),
                    &ECHO_PORT.to_string(),
                    connected.to_str().unwrap(),
                    go.to_str().unwrap(),
                ],
                &[],
                &out,
                false,
            )
            .unwrap();
        for _ in 0..100 {
            if connected.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        assert!(connected.exists(), "client never connected: {}", std::fs::read_to_string(&out).unwrap_or_default());
        LongClient { child, go, out }
    }

    /// Lets it ask again over the same connection; how it exited (none if it
    /// had not within 10 s) and what it printed.
    fn finish(&mut self) -> (Option<ExitStatus>, String) {
        std::fs::write(&self.go, "go").unwrap();
        let mut status = None;
        for _ in 0..200 {
            status = self.child.try_wait();
            if status.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        (status, std::fs::read_to_string(&self.out).unwrap())
    }
}

/// Stops `node`'s agent (dropping the guard kills it) and starts a new one.
fn restart_agent(c: &mut Cluster, node: &str) {
    let index = c.agents.iter().position(|a| a.node() == node).unwrap();
    c.agents.remove(index).stop();
    let mut agent = c.topo.start_agent(node).unwrap();
    agent.wait_ready(Agent::ready_timeout()).unwrap();
    c.agents.push(agent);
}

/// Every pod veth on `node` carries its two cls_bpf filters, running the
/// programs pinned there now; returns how many filters there are.
fn filters_running_pinned_programs(node: &Node) -> usize {
    let filters = node.pod_filters().unwrap();
    let mut expected = Vec::new();
    for veth in node.host_veths().unwrap() {
        expected.extend(node.expected_pod_filters(&veth).unwrap());
    }
    expected.sort();
    assert_eq!(filters, expected, "the pod filters run the programs pinned now");
    filters.len()
}

#[test]
fn an_established_connection_survives_an_agent_restart_with_its_backend() {
    let mut c = Cluster::new("svc_restart");
    c.publish("echo", VIP, &c.endpoints(&[]), false);
    let client_index = c.pods.iter().position(|p| p.node == "n1" && p.name == "a").unwrap();
    let client = &c.pods[client_index].netns;
    first_answer(client, "tcp", VIP, ECHO_PORT);

    let dir = c.topo.node("n1").dirs.root.clone();
    let mut long = LongClient::start(client, &dir);
    let before = c.topo.node("n1").pinned_prog_id(Direction::Ingress).unwrap();
    assert_eq!(filters_running_pinned_programs(c.topo.node("n1")), 4, "two pods on n1, two filters each");

    // Stop n1's agent (dropping the guard kills it), start a new one.
    restart_agent(&mut c, "n1");

    // Every pod filter now runs the programs the new agent loaded and pinned.
    assert_ne!(
        c.topo.node("n1").pinned_prog_id(Direction::Ingress).unwrap(),
        before,
        "the new agent pinned new programs"
    );
    let filters = filters_running_pinned_programs(c.topo.node("n1"));
    assert_eq!(filters, 4, "two pods on n1, two filters each");
    assert!(c.topo.node("n1").legacy_link_pins().is_empty(), "no tcx link pins");

    let (status, text) = long.finish();
    assert!(status.is_some_and(|s| s.success()), "client failed or hung after the restart: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], lines[1], "the connection changed backend across the restart");
}

/// A process on the node itself (no pod, no veth: nothing per-packet sees
/// it) reaches a ClusterIP, over TCP and UDP, through connect-time load
/// balancing on the node's cgroup; replies come from the Service address.
#[test]
fn processes_on_the_node_reach_a_cluster_ip() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("svc_host").nodes(1).build().unwrap();
    let cg_root = weir_testbed::cleanup::cgroup2_mount().expect("a cgroup v2 mount (socket load balancing needs one)");
    let cgroup = cg_root.join(topo.prefix().child("n1-host"));
    std::fs::create_dir(&cgroup).unwrap();
    let node = topo.node("n1");
    let mut agent = Agent::spawn_with(node, topo.manifest_dir(), Some(&cgroup)).unwrap();
    agent.wait_ready(Agent::ready_timeout()).unwrap();

    let list = node.agent_conflist().unwrap();
    let backend = Pod::create(node, "b", &list).unwrap();
    let _server = echo::serve(&backend.netns, "n1/b", ECHO_PORT, &node.dirs.logs.join("echo-b.log"), false).unwrap();
    let ports = [
        SvcPort { name: "tcp", protocol: "TCP", port: ECHO_PORT, target_port: ECHO_PORT, node_port: None },
        SvcPort { name: "udp", protocol: "UDP", port: ECHO_PORT, target_port: ECHO_PORT, node_port: None },
    ];
    topo.write_manifest(
        "svc-echo.yaml",
        &[
            service_yaml("echo", VIP, &ports, false),
            endpoint_slice_yaml("echo", &[("tcp", "TCP", ECHO_PORT), ("udp", "UDP", ECHO_PORT)], &[(backend.ip, "n1")]),
        ],
    )
    .unwrap();

    let mut last = None;
    for _ in 0..40 {
        match echo::ask_from(&node.netns, Some(&cgroup), "tcp", VIP, ECHO_PORT, "h") {
            Ok(a) => {
                last = None;
                assert_eq!(a, Answer { server: "n1/b".into(), peer: VIP });
                break;
            }
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(last.is_none(), "the node never reached the ClusterIP: {:#}", last.unwrap());
    let udp = echo::ask_from(&node.netns, Some(&cgroup), "udp", VIP, ECHO_PORT, "u").unwrap();
    assert_eq!(udp, Answer { server: "n1/b".into(), peer: VIP }, "UDP replies must come from the Service address");
    drop(agent);
}

/// Upstream's "[sig-network] Services should be rejected when no endpoints
/// exist" (and "... for evicted pods (no endpoints exist)") in
/// test/e2e/network/service.go: `agnhost connect --timeout=3s` to a
/// Service without endpoints must fail with an error containing REFUSED,
/// i.e. connect(2) returns ECONNREFUSED, not a timeout and not EPERM. Here
/// through connect-time load balancing, where the per-packet path's ICMP
/// cannot help (a node process has no veth; an unconnected UDP socket
/// never hears of ICMP errors), from a process on the node and one in a
/// pod, both in the cgroup it is attached to: TCP connect() and UDP
/// sendto() fail with errno 111 exactly; once the Service has an endpoint,
/// the same clients reach it.
#[test]
fn connect_time_balancing_refuses_services_without_endpoints() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("svc_sock_refuse").nodes(1).build().unwrap();
    let cg_root = weir_testbed::cleanup::cgroup2_mount().expect("a cgroup v2 mount (socket load balancing needs one)");
    let cgroup = cg_root.join(topo.prefix().child("n1-clients"));
    std::fs::create_dir(&cgroup).unwrap();
    let node = topo.node("n1");
    let mut agent = Agent::spawn_with(node, topo.manifest_dir(), Some(&cgroup)).unwrap();
    agent.wait_ready(Agent::ready_timeout()).unwrap();
    let list = node.agent_conflist().unwrap();
    let client_pod = Pod::create(node, "client", &list).unwrap();
    let backend = Pod::create(node, "b", &list).unwrap();
    let _server = echo::serve(&backend.netns, "n1/b", ECHO_PORT, &node.dirs.logs.join("echo-b.log"), false).unwrap();

    let ports = [
        SvcPort { name: "tcp", protocol: "TCP", port: ECHO_PORT, target_port: ECHO_PORT, node_port: None },
        SvcPort { name: "udp", protocol: "UDP", port: ECHO_PORT, target_port: ECHO_PORT, node_port: None },
    ];
    let slice_ports = [("tcp", "TCP", ECHO_PORT), ("udp", "UDP", ECHO_PORT)];
    let publish = |endpoints: &[(Ipv4Addr, &str)]| {
        topo.write_manifest(
            "svc-no-pods.yaml",
            &[service_yaml("no-pods", VIP, &ports, false), endpoint_slice_yaml("no-pods", &slice_ports, endpoints)],
        )
        .unwrap()
    };
    publish(&[]);

    const ECONNREFUSED: &str = "[Errno 111]";
    let clients = [("the node", &node.netns), ("a pod", &client_pod.netns)];
    for (who, ns) in clients {
        // Until the agent programs the Service: ENETUNREACH from the node
        // (no route to the VIP), a timeout or ICMP from the pod.
        let mut last = String::new();
        for _ in 0..40 {
            match echo::ask_from(ns, Some(&cgroup), "tcp", VIP, ECHO_PORT, "e") {
                Ok(a) => panic!("a Service without endpoints answered {who}: {a:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            if last.contains(ECONNREFUSED) {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        assert!(
            last.contains(&format!("ConnectionRefusedError: {ECONNREFUSED}")),
            "TCP connect from {who}: want ECONNREFUSED, got: {last}"
        );
        // sendto() itself fails: nothing else could report ECONNREFUSED to
        // an unconnected UDP socket (recvfrom would time out).
        let udp = echo::ask_from(ns, Some(&cgroup), "udp", VIP, ECHO_PORT, "e").unwrap_err();
        let udp = format!("{udp:#}");
        assert!(
            udp.contains(&format!("ConnectionRefusedError: {ECONNREFUSED}")),
            "UDP sendto from {who}: want ECONNREFUSED, got: {udp}"
        );
    }

    // One endpoint: the same clients, in the same cgroup, get through.
    publish(&[(backend.ip, "n1")]);
    for (who, ns) in clients {
        let mut last = None;
        for _ in 0..40 {
            match echo::ask_from(ns, Some(&cgroup), "tcp", VIP, ECHO_PORT, "t") {
                Ok(a) => {
                    assert_eq!(a, Answer { server: "n1/b".into(), peer: VIP }, "TCP from {who}");
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            thread::sleep(Duration::from_millis(250));
        }
        assert!(last.is_none(), "{who} never reached the Service once it had an endpoint: {:#}", last.unwrap());
        let udp = echo::ask_from(ns, Some(&cgroup), "udp", VIP, ECHO_PORT, "u").unwrap();
        assert_eq!(udp, Answer { server: "n1/b".into(), peer: VIP }, "UDP from {who}");
    }
    drop(agent);
}

/// A hybrid (cgroup v1) host's layout, as the DaemonSet sees it: the
/// configured `--socket-lb-cgroup` is not cgroup v2, its `unified/` is.
/// The agent attaches there instead of running without connect-time
/// balancing, says so (log, /metrics, /readyz), and a process in that
/// cgroup reaches a ClusterIP. The "host" here is a plain directory with a
/// private cgroup bound at its `unified/`, under the test's scratch dir.
#[test]
fn connect_time_balancing_attaches_below_unified_on_a_hybrid_host() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("svc_sock_hybrid").nodes(1).build().unwrap();
    let cg_root = weir_testbed::cleanup::cgroup2_mount().expect("a cgroup v2 mount (socket load balancing needs one)");
    let cgroup = cg_root.join(topo.prefix().child("n1-unified"));
    std::fs::create_dir(&cgroup).unwrap();
    let host_cgroup = topo.root().join("host-sys-fs-cgroup");
    let unified = host_cgroup.join("unified");
    std::fs::create_dir_all(&unified).unwrap();
    let bind = std::process::Command::new("mount").arg("--bind").arg(&cgroup).arg(&unified).status().unwrap();
    assert!(bind.success(), "mount --bind {} {}", cgroup.display(), unified.display());
    // Unmounted by the topology's cleanup too (everything under its root).
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&unified);

    let node = topo.node("n1");
    let mut agent = Agent::spawn_with(node, topo.manifest_dir(), Some(&host_cgroup)).unwrap();
    agent.wait_ready(Agent::ready_timeout()).unwrap();
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(
        log.contains("its unified/ is") && log.contains(&*unified.to_string_lossy()),
        "the log must say where and why: {log}"
    );

    let list = node.agent_conflist().unwrap();
    let backend = Pod::create(node, "b", &list).unwrap();
    let _server = echo::serve(&backend.netns, "n1/b", ECHO_PORT, &node.dirs.logs.join("echo-b.log"), false).unwrap();
    let ports = [SvcPort { name: "tcp", protocol: "TCP", port: ECHO_PORT, target_port: ECHO_PORT, node_port: None }];
    topo.write_manifest(
        "svc-echo.yaml",
        &[
            service_yaml("echo", VIP, &ports, false),
            endpoint_slice_yaml("echo", &[("tcp", "TCP", ECHO_PORT)], &[(backend.ip, "n1")]),
        ],
    )
    .unwrap();
    let mut last = None;
    for _ in 0..40 {
        // Joins the cgroup through the "host's" unified/ path.
        match echo::ask_from(&node.netns, Some(&unified), "tcp", VIP, ECHO_PORT, "h") {
            Ok(a) => {
                assert_eq!(a, Answer { server: "n1/b".into(), peer: VIP });
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(last.is_none(), "the node never reached the ClusterIP: {:#}", last.unwrap());

    let metrics = node.netns.curl("http://127.0.0.1:9878/metrics").unwrap();
    assert!(metrics.contains("\nweir_socket_lb_enabled 1\n"), "{metrics}");
    let ready = node.netns.curl("http://127.0.0.1:9878/readyz").unwrap();
    assert!(ready.contains(&format!("load balancing: on (cgroup {})", unified.display())), "{ready}");
    drop(agent);
}

/// Packets counted by the node's FORWARD chain for each rule in `rules`
/// (each a list of iptables match arguments), after `traffic` ran.
fn forwarded(node: &Node, rules: &[&[&str]], traffic: impl FnOnce()) -> Vec<u64> {
    for rule in rules.iter().rev() {
        let mut args = vec!["iptables", "-w", "-I", "FORWARD", "1"];
        args.extend_from_slice(rule);
        node.netns.run(&args).unwrap();
    }
    node.netns.run(&["iptables", "-w", "-Z", "FORWARD"]).unwrap();
    traffic();
    let listing = node.netns.run(&["iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n"]).unwrap();
    // Rows after the two header lines, in rule order: packets first.
    listing
        .lines()
        .skip(2)
        .take(rules.len())
        .map(|row| row.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

/// The TTL of the reply to one UDP datagram sent from `ns` to `host:port`.
fn reply_ttl(ns: &NetNs, host: Ipv4Addr, port: u16) -> u8 {
    // IP_RECVTTL = 12, IP_TTL = 2 (Linux).
    const SCRIPT: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.setsockopt(socket.IPPROTO_IP, 12, 1)\n\
        s.settimeout(5)\n\
        s.sendto(b'ttl', (sys.argv[1], int(sys.argv[2])))\n\
        data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(4))\n\
        print([int.from_bytes(d[:4], sys.byteorder) for (l, t, d) in anc if l == socket.IPPROTO_IP and t == 2][0])\n";
    let out = ns.run(&["python3", "-c", SCRIPT, &host.to_string(), &port.to_string()]).unwrap();
    out.trim().parse().unwrap_or_else(|e| panic!("TTL from {out:?}: {e}"))
}

/// Between pods of one node, the flows weir owns (a Service flow to a local
/// backend and its replies, a TCP connection weir saw open) go from veth to
/// veth (bpf_redirect_peer) past the host's routing and netfilter, while
/// the pods see what routing would give them (the Service's address, the
/// right server); direct UDP, which weir does not track, still takes the
/// host's way.
#[test]
fn local_flows_go_from_veth_to_veth_past_the_host() {
    let c = Cluster::new("svc_local");
    let (a, b) = (c.pod("n1/a"), c.pod("n1/b"));
    c.publish("echo", VIP, &[(b.ip, "n1")], false);
    // The host's neighbour entries for both pods, which the shortcut needs
    // (until then the kernel forwards and resolves them).
    first_answer(&a.netns, "tcp", b.ip, ECHO_PORT);
    first_answer(&a.netns, "tcp", VIP, ECHO_PORT);

    let (ab, ba) = (format!("{}/32", a.ip), format!("{}/32", b.ip));
    let rules: [&[&str]; 3] = [
        &["-p", "tcp", "-s", &ab, "-d", &ba],
        &["-p", "tcp", "-s", &ba, "-d", &ab],
        &["-p", "udp", "-s", &ab, "-d", &ba],
    ];
    let node = c.topo.node("n1");
    let counts = forwarded(node, &rules, || {
        for _ in 0..20 {
            let direct = echo::ask(&a.netns, "tcp", b.ip, ECHO_PORT, "d").unwrap();
            assert_eq!((direct.server.as_str(), direct.peer), ("n1/b", b.ip));
            let via = echo::ask(&a.netns, "tcp", VIP, ECHO_PORT, "s").unwrap();
            assert_eq!((via.server.as_str(), via.peer), ("n1/b", VIP), "the client must see the Service address");
        }
        for _ in 0..10 {
            let udp = echo::ask(&a.netns, "udp", b.ip, ECHO_PORT, "u").unwrap();
            assert_eq!(udp.server, "n1/b");
        }
        // A datagram in fragments keeps all of them on one way (the host
        // reassembles them): through the Service, to the local backend.
        let large = echo::ask(&a.netns, "udp", VIP, ECHO_PORT, &"f".repeat(3000)).unwrap();
        assert_eq!((large.server.as_str(), large.peer), ("n1/b", VIP));
    });
    // One router hop, as the host's way gives: the TTL a reply through the
    // Service arrives with (the echo server sends with 64).
    assert_eq!(reply_ttl(&a.netns, VIP, ECHO_PORT), 63, "a reply sent from veth to veth must lose one TTL");
    // 40 connections are some 400 packets on the host's way.
    assert!(
        counts[0] + counts[1] < 10,
        "TCP between n1/a and n1/b, direct and through the Service, crossed the host's FORWARD chain: \
         {} packets a->b, {} b->a",
        counts[0],
        counts[1]
    );
    assert!(counts[2] >= 10, "direct UDP should take the host's way (the counting rules work): {} packets", counts[2]);
}
