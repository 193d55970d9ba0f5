//! IPv6 Service traffic entering a node through its uplink (issue #12), on
//! a dual-stack two-node cluster in namespaces, with kube-proxy's
//! semantics (upstream e2e "should be able to create a functioning
//! NodePort service", "should be able to change the type and ports of a
//! service" for externalIPs, "should only allow access from service
//! loadbalancer source ranges", "should be rejected when no endpoints
//! exist", ESIPP "should work for type=NodePort"), over IPv6:
//! - a host outside the cluster reaches the NodePort on each node's IPv6
//!   address over TCP and UDP, landing on the local backend (DNAT) and the
//!   remote one (SNAT to the node, the reply reversed as it comes back),
//!   every answer from the address it asked; a pod of the other node
//!   does too; large UDP requests and replies (fragmented) as well;
//! - the same for backends on the nodes' own network stacks (hostNetwork
//!   endpoints: the endpoint address is the node's IPv6 address), whose
//!   replies are reversed on the uplink's egress;
//! - an IPv6 externalIP; a load-balancer IP whose source ranges admit one
//!   external host and not another (which still reaches the NodePort:
//!   source ranges are the load balancer's);
//! - `externalTrafficPolicy: Local`: the local endpoint sees the client's
//!   own address; a node without one drops the traffic;
//! - a Service without endpoints refuses a TCP connect at once (ICMPv6 port
//!   unreachable), not after a timeout;
//! - on IPv6-only nodes, the NodePort from outside (the uplink found by the
//!   node's IPv6 InternalIP alone).
//!
//! ULA and documentation addresses, inside the test's namespaces only.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
    thread,
    time::Duration,
};

use weir_testbed::{
    NetNs, Pod, Topology,
    echo::{self, AnswerIp},
    manifest::endpoint_slice_yaml6,
    process::ChildGuard,
    tools,
    topology::Families,
};

const PORT: u16 = 9000;
const NODE_PORT: u16 = 30096;
/// The nodes' own echo servers (hostNetwork endpoints).
const HOST_PORT: u16 = 9100;
const HOST_NODE_PORT: u16 = 30097;
/// The server that tells the client's address (`externalTrafficPolicy:
/// Local`).
const PEER_PORT: u16 = 9200;
const LOCAL_NODE_PORT: u16 = 30098;
const EMPTY_NODE_PORT: u16 = 30099;
const ECONNREFUSED: &str = "ConnectionRefusedError: [Errno 111]";
/// Tries per path: two backends chosen at random, both reached but for 1
/// chance in 2^11.
const TRIES: usize = 12;

/// An IPv6 Service as YAML: `type_`, its cluster IP, TCP and UDP on
/// `port` -> `port` with node port `node_port`, and extra spec lines
/// (externalIPs, source ranges, traffic policy) and a status.
fn service6(name: &str, type_: &str, vip: &str, port: u16, node_port: u16, extra: &str, status: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: {type_}\n  \
         clusterIP: \"{vip}\"\n  clusterIPs: [\"{vip}\"]\n  ipFamilies: [\"IPv6\"]\n  ipFamilyPolicy: SingleStack\n{extra}  \
         ports:\n  - name: tcp\n    protocol: TCP\n    port: {port}\n    targetPort: {port}\n    nodePort: {node_port}\n  \
         - name: udp\n    protocol: UDP\n    port: {port}\n    targetPort: {port}\n    nodePort: {node_port}\n{status}"
    )
}

/// Answers each TCP connection with `<label> <the client's address>`.
const PEER_SERVER: &str = r#"
import socket, sys
label, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port)); s.listen(16)
print("ready", flush=True)
while True:
    c, a = s.accept()
    with c:
        c.recv(100); c.sendall((label + " " + a[0]).encode())
"#;

/// Connects to `[host]:port` and prints the answer.
const PEER_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); s.sendall(b"who")
print(s.recv(200).decode())
"#;

/// Asks until the frontend answers (the agents poll the manifest
/// directory), then returns that first answer.
fn first_answer(ns: &NetNs, proto: &str, host: IpAddr, port: u16) -> AnswerIp {
    let mut last = None;
    for _ in 0..60 {
        match echo::ask_ip_from(ns, None, proto, host, port, "hello") {
            Ok(a) => return a,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("{proto} [{host}]:{port} from {} never answered: {:#}", ns.name(), last.unwrap());
}

/// `TRIES` asks over each of TCP and UDP to `[host]:port`: every answer
/// comes from `host` (the frontend asked), and `want` are the servers
/// that answered.
fn reaches(ns: &NetNs, host: IpAddr, port: u16, want: &[&str]) {
    first_answer(ns, "tcp", host, port);
    for proto in ["tcp", "udp"] {
        let answers: Vec<AnswerIp> = (0..TRIES)
            .map(|_| {
                echo::ask_ip_from(ns, None, proto, host, port, "x")
                    .unwrap_or_else(|e| panic!("{proto} [{host}]:{port} from {}: {e:#}", ns.name()))
            })
            .collect();
        assert!(
            answers.iter().all(|a| a.peer == host),
            "{proto} [{host}]:{port} from {}: replies not from the frontend: {answers:?}",
            ns.name()
        );
        let servers: BTreeSet<&str> = answers.iter().map(|a| a.server.as_str()).collect();
        assert_eq!(servers, want.iter().copied().collect(), "{proto} [{host}]:{port} from {}", ns.name());
    }
}

/// An external host on the node network with an IPv6 address of
/// `fd00:172:30::/64` and routes to `routes` (address, node it is routed
/// through), as a router would have.
fn external_host6(topo: &Topology, name: &str, host: u8, routes: &[(Ipv6Addr, Ipv6Addr)]) -> (NetNs, Ipv6Addr) {
    let (ns, _) = topo.external_host(name, host).unwrap();
    let ip: Ipv6Addr = format!("{}{host}", weir_testbed::topology::NODE_NETWORK_V6).parse().unwrap();
    ns.run(&["ip", "-6", "addr", "add", &format!("{ip}/64"), "dev", "eth0", "nodad"]).unwrap();
    for (dst, via) in routes {
        ns.run(&["ip", "-6", "route", "add", &format!("{dst}/128"), "via", &via.to_string()]).unwrap();
    }
    (ns, ip)
}

#[test]
fn ipv6_node_port_external_and_load_balancer_ips_from_outside() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("svc6_uplink").nodes(2).families(Families::DualStack).build().unwrap();
    let agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    let (ip1, ip2) = (n1.ip6.unwrap(), n2.ip6.unwrap());
    let (c1, c2) = (n1.agent_conflist().unwrap(), n2.agent_conflist().unwrap());
    let b1 = Pod::create(n1, "b", &c1).unwrap();
    let b2 = Pod::create(n2, "b", &c2).unwrap();
    let client = Pod::create(n1, "client", &c1).unwrap();
    let mut servers: Vec<ChildGuard> = Vec::new();
    for (node, pod) in [(n1, &b1), (n2, &b2)] {
        let log = node.dirs.logs.join("echo-b.log");
        servers.push(echo::serve_dual_stack(&pod.netns, &format!("{}/b", node.name), PORT, &log).unwrap());
        let log = node.dirs.logs.join("echo-host.log");
        servers.push(echo::serve_dual_stack(&node.netns, &format!("{}/host", node.name), HOST_PORT, &log).unwrap());
    }
    let peer_log = n1.dirs.logs.join("peer.log");
    servers.push(
        b1.netns.spawn(&["python3", "-c", PEER_SERVER, "n1/b", &PEER_PORT.to_string()], &[], &peer_log, false).unwrap(),
    );

    let external_ip: Ipv6Addr = "2001:db8:7::1".parse().unwrap();
    let lb_ip: Ipv6Addr = "2001:db8:7::2".parse().unwrap();
    let routes = [(external_ip, ip1), (lb_ip, ip2)];
    let (ext, ext_ip) = external_host6(&topo, "ext", 100, &routes);
    let (other, _) = external_host6(&topo, "ext2", 101, &routes);

    let pods6 = [(b1.ipv6.unwrap(), "n1"), (b2.ipv6.unwrap(), "n2")];
    let slice = |name: &str, port: u16, eps: &[(Ipv6Addr, &str)]| {
        endpoint_slice_yaml6(name, &[("tcp", "TCP", port), ("udp", "UDP", port)], eps)
    };
    let extra = format!("  externalIPs: [\"{external_ip}\"]\n  loadBalancerSourceRanges: [\"{ext_ip}/128\"]\n");
    let status = format!("status:\n  loadBalancer:\n    ingress:\n    - ip: \"{lb_ip}\"\n");
    topo.write_manifest(
        "svc-ipv6-uplink.yaml",
        &[
            service6("web6", "LoadBalancer", "fd00:10:96::50", PORT, NODE_PORT, &extra, &status),
            slice("web6", PORT, &pods6),
            service6("host6", "NodePort", "fd00:10:96::51", HOST_PORT, HOST_NODE_PORT, "", ""),
            slice("host6", HOST_PORT, &[(ip1, "n1"), (ip2, "n2")]),
            service6(
                "local6",
                "NodePort",
                "fd00:10:96::52",
                PEER_PORT,
                LOCAL_NODE_PORT,
                "  externalTrafficPolicy: Local\n",
                "",
            ),
            slice("local6", PEER_PORT, &pods6[..1]),
            service6("empty6", "NodePort", "fd00:10:96::53", PORT, EMPTY_NODE_PORT, "", ""),
            slice("empty6", PORT, &[]),
        ],
    )
    .unwrap();

    // The NodePort on each node's IPv6 address, from outside and from a
    // pod of the other node: local and remote backends, TCP and UDP.
    let pods = ["n1/b", "n2/b"];
    for addr in [ip1, ip2] {
        reaches(&ext, addr.into(), NODE_PORT, &pods);
    }
    reaches(&client.netns, ip2.into(), NODE_PORT, &pods);
    // Large UDP requests and replies (2,000 bytes: fragmented both ways),
    // to the local backend and through SNAT to the remote one.
    let large = "l".repeat(2000);
    let answers: Vec<AnswerIp> =
        (0..TRIES).map(|_| echo::ask_ip_from(&ext, None, "udp", ip1.into(), NODE_PORT, &large).unwrap()).collect();
    assert!(answers.iter().all(|a| a.peer == IpAddr::from(ip1)), "large UDP: {answers:?}");
    let servers: BTreeSet<&str> = answers.iter().map(|a| a.server.as_str()).collect();
    assert_eq!(servers, pods.into_iter().collect(), "large UDP to [{ip1}]:{NODE_PORT}");
    // Backends on the nodes' own stacks.
    for addr in [ip1, ip2] {
        reaches(&ext, addr.into(), HOST_NODE_PORT, &["n1/host", "n2/host"]);
    }
    // The externalIP (routed through n1), the load-balancer IP (through
    // n2) from the host its source ranges admit.
    reaches(&ext, external_ip.into(), PORT, &pods);
    reaches(&ext, lb_ip.into(), PORT, &pods);
    // Another host: refused at the load-balancer IP (dropped, as kube-proxy
    // does), while the NodePort still answers it.
    for proto in ["tcp", "udp"] {
        let r = echo::ask_ip_from(&other, None, proto, lb_ip.into(), PORT, "r");
        assert!(r.is_err(), "{proto} to [{lb_ip}]:{PORT} from outside its source ranges answered: {r:?}");
    }
    echo::ask_ip_from(&other, None, "tcp", ip1.into(), NODE_PORT, "n").unwrap();

    // externalTrafficPolicy: Local: n1's endpoint sees the client's own
    // address; n2 has none and drops the traffic.
    let mut seen = String::new();
    for _ in 0..40 {
        let out = ext.output(&["python3", "-c", PEER_CLIENT, &ip1.to_string(), &LOCAL_NODE_PORT.to_string()]).unwrap();
        if out.success() {
            seen = out.stdout_str().trim().to_string();
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(seen, format!("n1/b {ext_ip}"), "the local endpoint must see the client's address");
    let out = ext.output(&["python3", "-c", PEER_CLIENT, &ip2.to_string(), &LOCAL_NODE_PORT.to_string()]).unwrap();
    assert!(!out.success(), "a node without a local endpoint answered: {}", out.stdout_str());

    // No endpoints: the connect is refused at once.
    let mut last = String::new();
    for _ in 0..40 {
        match echo::ask_ip_from(&ext, None, "tcp", ip1.into(), EMPTY_NODE_PORT, "e") {
            Ok(a) => panic!("an IPv6 NodePort without endpoints answered: {a:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        if last.contains(ECONNREFUSED) {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(last.contains(ECONNREFUSED), "TCP connect to [{ip1}]:{EMPTY_NODE_PORT}: want ECONNREFUSED, got: {last}");

    // inspect conntrack shows the external client's SNATed flows.
    let agent_bin = weir_testbed::bins::weir_agent().unwrap();
    let pin_dir = n1.pin_dir.to_str().unwrap();
    let shown = n1.netns.run(&[agent_bin.to_str().unwrap(), "inspect", "conntrack", "--bpf-pin-dir", pin_dir]).unwrap();
    let snat = shown.lines().any(|l| l.contains(&format!("[{ext_ip}]:")) && l.contains("snat"));
    assert!(snat, "no SNATed flow of [{ext_ip}] in inspect conntrack:\n{shown}");
    drop(servers);
    drop(agents);
}

/// IPv6-only nodes: the uplink programs are attached for the node's IPv6
/// InternalIP alone (there is no IPv4 one to find the uplink by), and the
/// NodePort on each node's address reaches the backends of both nodes.
#[test]
fn ipv6_only_nodes_serve_their_node_ports_from_outside() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("svc6_uplink_only").nodes(2).families(Families::Ipv6).build().unwrap();
    let agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    let (c1, c2) = (n1.agent_conflist().unwrap(), n2.agent_conflist().unwrap());
    let b1 = Pod::create(n1, "b", &c1).unwrap();
    let b2 = Pod::create(n2, "b", &c2).unwrap();
    let servers: Vec<ChildGuard> = [(n1, &b1), (n2, &b2)]
        .iter()
        .map(|(node, pod)| {
            let log = node.dirs.logs.join("echo-b.log");
            echo::serve_dual_stack(&pod.netns, &format!("{}/b", node.name), PORT, &log).unwrap()
        })
        .collect();
    let (ext, _) = external_host6(&topo, "ext", 100, &[]);
    let pods6 = [(b1.ipv6.unwrap(), "n1"), (b2.ipv6.unwrap(), "n2")];
    topo.write_manifest(
        "svc-ipv6-only.yaml",
        &[
            service6("web6", "NodePort", "fd00:10:96::50", PORT, NODE_PORT, "", ""),
            endpoint_slice_yaml6("web6", &[("tcp", "TCP", PORT), ("udp", "UDP", PORT)], &pods6),
        ],
    )
    .unwrap();
    for node in [n1, n2] {
        reaches(&ext, node.ip6.unwrap().into(), NODE_PORT, &["n1/b", "n2/b"]);
    }
    drop(servers);
    drop(agents);
}
