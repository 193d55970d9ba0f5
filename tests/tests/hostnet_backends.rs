//! A Service whose endpoints are the nodes themselves (hostNetwork pods: the
//! endpoint address is the node's InternalIP, the backend port a port of the
//! node's own network stack), reached through every frontend from every kind
//! of client.
//!
//! This is upstream's e2e `[sig-network] Networking Granular Checks: Services
//! should function for service endpoints using hostNetwork`
//! (test/e2e/network/networking.go, helpers in
//! test/e2e/framework/network/utils.go). Upstream runs, with one netexec
//! endpoint per node on the host network (`EndpointsUseHostNetwork`, the
//! endpoint's answer is its node's hostname) and a NodePort Service (http
//! 80 -> 8083, udp 90 -> 8081), each step until every endpoint answered or
//! `MaxTries` ran out:
//! - pod-Service(hostNetwork): http and udp, test pod -> ClusterIP and
//!   test pod -> NodeIP:NodePort (NodeIP: the first node's address, so from
//!   a pod on another node this is a remote NodePort whose own node's
//!   endpoint is the node itself: the reported failure);
//! - node-Service(hostNetwork): http and udp, a hostNetwork pod (the node
//!   itself, also an endpoint's host: the endpoint -> Service case) ->
//!   ClusterIP and -> NodeIP:NodePort;
//! - handle large requests: http (2,000 bytes) and udp (2,000 bytes: the
//!   datagram is fragmented both ways) from the test pod -> ClusterIP.
//!
//! Here every one of those from both sides: clients are a pod on each node,
//! each node itself (connect-time balancing on a private cgroup, as on a real
//! node where the host's processes are in the agent's cgroup), and a host
//! outside the cluster (NodePorts only: it has no route to ClusterIPs);
//! frontends are the ClusterIP and the NodePort on each node's address; TCP
//! and UDP over connected sockets. Each path must reach both endpoints within
//! `MAX_TRIES` tries, with every answer coming from the frontend (address
//! and port) the client asked, and no failed try.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf, thread, time::Duration};

use weir_testbed::{
    Agent, NetNs, Node, Pod, Topology, echo,
    manifest::{SvcPort, endpoint_slice_yaml, service_yaml},
    process::ChildGuard,
    tools,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// Upstream's ports: ClusterHTTPPort / ClusterUDPPort on the Service,
/// EndpointHTTPPort / EndpointUDPPort on the endpoints.
const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 90;
const HTTP_TARGET: u16 = 8083;
const UDP_TARGET: u16 = 8081;
const HTTP_NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30081;
/// Tries per path: two endpoints chosen at random, so a working path misses
/// one of them with probability 2^-23.
const MAX_TRIES: usize = 24;
/// A path that failed this often is broken: stop asking it.
const MAX_ERRORS: usize = 3;

/// Starts the echo server in the node's namespace (its host network),
/// named after the node (upstream: the node's hostname), UDP bound to the
/// node's address as netexec is there, and waits until it listens.
fn serve_on_host(node: &Node) -> ChildGuard {
    let log = node.dirs.logs.join("echo-host.log");
    echo::serve_host_network(&node.netns, &node.name, node.ip, &[HTTP_TARGET, UDP_TARGET], &log).unwrap()
}

/// One request, one answer, over a connected socket as upstream's clients
/// use (netexec's dial, `nc -u`, curl): a UDP reply from any other address
/// or port than the one asked is dropped by the kernel, as a TCP SYN-ACK
/// would be. Prints who answered and the peer the socket sees.
/// It differs from `echo::ask`'s client on purpose: that one sends UDP with
/// `sendto` and takes a reply from any address (the Service tests assert on
/// the address it came from), where this one must see what upstream's
/// connected clients see, and also reports the peer's port.
const CLIENT: &str = r#"
import socket, sys
proto, host, port, msg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
if len(sys.argv) > 5:
    # Join a cgroup first (connect-time load balancing is per cgroup).
    open(sys.argv[5] + "/cgroup.procs", "w").write("0")
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=3)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.connect((host, port))
s.send(msg)
d = s.recv(65536)
print(d.decode().split()[0], "%s:%d" % s.getpeername())
"#;

/// Who answered, and the peer address and port the client's socket saw.
#[derive(Debug)]
struct Answer {
    server: String,
    peer: (Ipv4Addr, u16),
}

fn ask(
    netns: &NetNs,
    cgroup: Option<&PathBuf>,
    proto: &str,
    host: Ipv4Addr,
    port: u16,
    msg: &str,
) -> anyhow::Result<Answer> {
    let (host, port) = (host.to_string(), port.to_string());
    let mut args = vec!["python3", "-c", CLIENT, proto, &host, &port, msg];
    let cg = cgroup.map(|c| c.to_string_lossy().into_owned());
    args.extend(cg.as_deref());
    let out = netns.output(&args)?;
    if !out.success() {
        anyhow::bail!("{}: {}", out.describe_status(), out.stderr_str().trim().lines().last().unwrap_or_default());
    }
    let text = out.stdout_str();
    let parsed = text.split_once(' ').and_then(|(server, peer)| {
        let (addr, port) = peer.trim().split_once(':')?;
        Some(Answer { server: server.to_string(), peer: (addr.parse().ok()?, port.parse().ok()?) })
    });
    parsed.ok_or_else(|| anyhow::anyhow!("unexpected answer {text:?}"))
}

enum Client<'a> {
    Pod(&'a Pod),
    /// The node's own namespace, from a process in the agent's socket-LB cgroup.
    Node {
        name: &'a str,
        netns: &'a NetNs,
        cgroup: &'a PathBuf,
    },
    External(&'a NetNs),
}

impl Client<'_> {
    fn describe(&self) -> String {
        match self {
            Client::Pod(p) => format!("pod {}/{}", p.node, p.name),
            Client::Node { name, .. } => format!("node {name}"),
            Client::External(_) => "external host".into(),
        }
    }

    fn ask(&self, proto: &str, host: Ipv4Addr, port: u16, msg: &str) -> anyhow::Result<Answer> {
        match self {
            Client::Pod(p) => ask(&p.netns, None, proto, host, port, msg),
            Client::Node { netns, cgroup, .. } => ask(netns, Some(cgroup), proto, host, port, msg),
            Client::External(ns) => ask(ns, None, proto, host, port, msg),
        }
    }
}

/// One path: who asks, which frontend, over what, with which message.
struct Path<'a> {
    client: &'a Client<'a>,
    frontend: (Ipv4Addr, u16),
    what: &'static str,
    proto: &'static str,
    msg: String,
}

#[derive(Default)]
struct Outcome {
    tries: usize,
    servers: BTreeSet<String>,
    wrong_peers: Vec<Answer>,
    errors: Vec<String>,
}

impl Path<'_> {
    fn name(&self) -> String {
        let (addr, port) = self.frontend;
        let size = if self.msg.len() > 100 { format!(", {} bytes", self.msg.len()) } else { String::new() };
        format!("{} -> {} {addr}:{port}/{}{size}", self.client.describe(), self.what, self.proto)
    }

    fn run(&self, endpoints: &BTreeSet<String>) -> Outcome {
        let (addr, port) = self.frontend;
        let mut out = Outcome::default();
        while out.tries < MAX_TRIES && out.servers != *endpoints && out.errors.len() < MAX_ERRORS {
            out.tries += 1;
            match self.client.ask(self.proto, addr, port, &self.msg) {
                Ok(a) if a.peer != self.frontend => out.wrong_peers.push(a),
                Ok(a) => {
                    out.servers.insert(a.server);
                }
                Err(e) => out.errors.push(format!("{e:#}")),
            }
        }
        out
    }
}

/// Asks until the path answers once (the agents poll the manifest
/// directory): then that frontend is programmed.
fn wait_programmed(client: &Client, proto: &str, host: Ipv4Addr, port: u16) {
    let mut last = None;
    for _ in 0..80 {
        match client.ask(proto, host, port, "ready?") {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("{} -> {host}:{port}/{proto} never answered: {:#}", client.describe(), last.unwrap());
}

/// A cgroup per node for the node's own processes (the agent's socket-LB
/// cgroup), under the cgroup v2 mount.
fn host_cgroups(topo: &Topology) -> Vec<PathBuf> {
    let cg_root = weir_testbed::cleanup::cgroup2_mount().expect("a cgroup v2 mount (socket load balancing needs one)");
    topo.nodes()
        .iter()
        .map(|n| {
            let cg = cg_root.join(topo.prefix().child(&format!("{}-host", n.name)));
            std::fs::create_dir(&cg).unwrap();
            cg
        })
        .collect()
}

/// An agent per node, balancing connections from its node's cgroup; ready.
fn start_agents(topo: &Topology, cgroups: &[PathBuf]) -> Vec<Agent> {
    let mut agents: Vec<Agent> = topo
        .nodes()
        .iter()
        .zip(cgroups)
        .map(|(n, cg)| Agent::spawn_with(n, topo.manifest_dir(), Some(cg)).unwrap())
        .collect();
    for a in &mut agents {
        a.wait_ready(Agent::ready_timeout()).unwrap();
    }
    agents
}

/// The NodePort Service (http 80 -> 8083, udp 90 -> 8081) whose endpoints
/// are the nodes' own addresses.
fn publish_service(topo: &Topology) {
    let ports = [
        SvcPort {
            name: "http",
            protocol: "TCP",
            port: HTTP_PORT,
            target_port: HTTP_TARGET,
            node_port: Some(HTTP_NODE_PORT),
        },
        SvcPort {
            name: "udp",
            protocol: "UDP",
            port: UDP_PORT,
            target_port: UDP_TARGET,
            node_port: Some(UDP_NODE_PORT),
        },
    ];
    let endpoints: Vec<(Ipv4Addr, &str)> = topo.nodes().iter().map(|n| (n.ip, n.name.as_str())).collect();
    topo.write_manifest(
        "svc-hostnet.yaml",
        &[
            service_yaml("hostnet", VIP, &ports, false),
            endpoint_slice_yaml("hostnet", &[("http", "TCP", HTTP_TARGET), ("udp", "UDP", UDP_TARGET)], &endpoints),
        ],
    )
    .unwrap();
}

/// The clients inside the cluster: the pods (one per node), then the nodes.
fn cluster_clients<'a>(topo: &'a Topology, pods: &'a [Pod], cgroups: &'a [PathBuf]) -> Vec<Client<'a>> {
    let mut clients: Vec<Client> = pods.iter().map(Client::Pod).collect();
    clients.extend(topo.nodes().iter().zip(cgroups).map(|(n, cg)| Client::Node {
        name: n.name.as_str(),
        netns: &n.netns,
        cgroup: cg,
    }));
    clients
}

/// The frontends for `proto`: the ClusterIP, and the NodePort on each node.
fn frontends(topo: &Topology, proto: &str) -> Vec<(Ipv4Addr, u16, &'static str)> {
    let (port, node_port) = if proto == "tcp" { (HTTP_PORT, HTTP_NODE_PORT) } else { (UDP_PORT, UDP_NODE_PORT) };
    let mut f = vec![(VIP, port, "ClusterIP")];
    f.extend(topo.nodes().iter().map(|n| (n.ip, node_port, "NodePort")));
    f
}

/// Every client to every frontend it can reach (the external host: the
/// NodePorts only) over TCP and UDP, then the large requests from the pods.
fn paths<'a>(topo: &Topology, clients: &'a [Client<'a>], external: &'a Client<'a>) -> Vec<Path<'a>> {
    let mut paths: Vec<Path> = Vec::new();
    for client in clients.iter().chain([external]) {
        for proto in ["tcp", "udp"] {
            for (addr, port, what) in frontends(topo, proto) {
                if matches!(client, Client::External(_)) && what == "ClusterIP" {
                    continue;
                }
                paths.push(Path { client, frontend: (addr, port), what, proto, msg: "hello".into() });
            }
        }
    }
    // Large requests, as upstream: from the pods, through the ClusterIP.
    for client in &clients[..2] {
        paths.push(Path {
            client,
            frontend: (VIP, HTTP_PORT),
            what: "ClusterIP",
            proto: "tcp",
            msg: "42".repeat(1000),
        });
        paths.push(Path {
            client,
            frontend: (VIP, UDP_PORT),
            what: "ClusterIP",
            proto: "udp",
            msg: format!("n{}", "o".repeat(1999)),
        });
    }
    paths
}

/// Runs every path, prints a line for each, and returns the failed ones'.
fn run_paths(paths: &[Path], want: &BTreeSet<String>) -> Vec<String> {
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for path in paths {
        let out = path.run(want);
        let ok = out.servers == *want && out.wrong_peers.is_empty() && out.errors.is_empty();
        let mut line = format!(
            "{} {}: reached {:?} in {} tries",
            if ok { "ok  " } else { "FAIL" },
            path.name(),
            out.servers,
            out.tries
        );
        if !out.wrong_peers.is_empty() {
            line += &format!("; answers from the wrong address: {:?}", out.wrong_peers);
        }
        if let Some(last) = out.errors.last() {
            line += &format!("; {} failed tries, last: {last}", out.errors.len());
        }
        if !ok {
            failed.push(line.clone());
        }
        report.push(line);
    }
    eprintln!("{} paths:\n{}", report.len(), report.join("\n"));
    failed
}

#[test]
#[ignore = "privileged: needs root, bpffs and cgroup v2 (network namespaces, weir-cni, weir-agent)"]
fn host_network_endpoints_reachable_through_every_frontend_from_every_client() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("hostnet_be").nodes(2).build().unwrap();
    let cgroups = host_cgroups(&topo);
    let _agents = start_agents(&topo, &cgroups);

    // The endpoints: one server per node, in the node's own namespace,
    // answering with the node's name (upstream: the node's hostname).
    let _servers: Vec<ChildGuard> = topo.nodes().iter().map(serve_on_host).collect();
    let pods: Vec<Pod> =
        topo.nodes().iter().map(|n| Pod::create(n, "c", &n.agent_conflist().unwrap()).unwrap()).collect();
    let (ext_ns, _) = topo.external_host("ext", 100).unwrap();
    publish_service(&topo);

    let clients = cluster_clients(&topo, &pods, &cgroups);
    let external = Client::External(&ext_ns);

    // Every agent has programmed the Service once a pod on its node and the
    // outside reach its frontends.
    for (pod, node) in clients[..2].iter().zip(topo.nodes()) {
        wait_programmed(pod, "tcp", VIP, HTTP_PORT);
        wait_programmed(&external, "tcp", node.ip, HTTP_NODE_PORT);
    }

    let paths = paths(&topo, &clients, &external);
    let want: BTreeSet<String> = topo.nodes().iter().map(|n| n.name.clone()).collect();
    let failed = run_paths(&paths, &want);
    assert!(failed.is_empty(), "{} of {} paths failed:\n{}", failed.len(), paths.len(), failed.join("\n"));
}
