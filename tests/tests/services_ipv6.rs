//! Services over IPv6 on a dual-stack two-node cluster in namespaces
//! (issue #12): a pod's sockets reach an IPv6 ClusterIP over TCP and UDP
//! through connect-time balancing (connect6/sendmsg6/recvmsg6), its replies
//! seen from the Service address, backends on both nodes; a node's own
//! processes reach the NodePort on its IPv6 InternalIP; a dual-stack
//! Service answers on both of its cluster IPs; an IPv6 Service without
//! endpoints refuses at once; an IPv4 single-stack Service is never served
//! over IPv6, even with an IPv6 address it should not have. ULA addresses,
//! inside the test's namespaces only.
//!
//! The client pod's process joins its node agent's socket-LB cgroup (on a
//! real node that is the root cgroup, which holds every pod): IPv6 has no
//! per-packet Service path yet.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use weir_testbed::{
    Agent, NetNs, Pod, Topology,
    echo::{self, AnswerIp},
    manifest::{SvcPort, endpoint_slice_yaml, endpoint_slice_yaml6, service_yaml_families},
    process::ChildGuard,
    tools,
    topology::Families,
};

const PORT: u16 = 9000;
const ECONNREFUSED: &str = "ConnectionRefusedError: [Errno 111]";

fn ports() -> [SvcPort; 2] {
    [
        SvcPort { name: "tcp", protocol: "TCP", port: PORT, target_port: PORT, node_port: None },
        SvcPort { name: "udp", protocol: "UDP", port: PORT, target_port: PORT, node_port: None },
    ]
}

const NODE_PORT: u16 = 30096;

/// `ports()`, TCP on a node port too.
fn node_port_ports() -> [SvcPort; 2] {
    let [tcp, udp] = ports();
    [SvcPort { node_port: Some(NODE_PORT), ..tcp }, udp]
}

const SLICE_PORTS: [(&str, &str, u16); 2] = [("tcp", "TCP", PORT), ("udp", "UDP", PORT)];

/// Asks until the agent has programmed the Service (it polls the manifest
/// directory), then returns that first answer.
fn first_answer(ns: &NetNs, cgroup: &Path, proto: &str, host: IpAddr) -> AnswerIp {
    let mut last = None;
    for _ in 0..60 {
        match echo::ask_ip_from(ns, Some(cgroup), proto, host, PORT, "hello") {
            Ok(a) => return a,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("{proto} [{host}]:{PORT} never answered: {:#}", last.unwrap());
}

#[test]
fn ipv6_cluster_ip_and_node_port_through_connect_time_balancing() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("svc_ipv6").nodes(2).families(Families::DualStack).build().unwrap();
    // A socket-LB cgroup per node: one shared by both agents would run
    // both nodes' programs on every client.
    let cg_root = weir_testbed::cleanup::cgroup2_mount().expect("a cgroup v2 mount (socket load balancing needs one)");
    let cgroups: Vec<PathBuf> = topo
        .nodes()
        .iter()
        .map(|n| {
            let cg = cg_root.join(topo.prefix().child(&format!("{}-clients", n.name)));
            std::fs::create_dir(&cg).unwrap();
            cg
        })
        .collect();
    let mut agents: Vec<Agent> = topo
        .nodes()
        .iter()
        .zip(&cgroups)
        .map(|(n, cg)| Agent::spawn_with(n, topo.manifest_dir(), Some(cg)).unwrap())
        .collect();
    for a in &mut agents {
        a.wait_ready(Agent::ready_timeout()).unwrap();
    }
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    let (c1, c2) = (n1.agent_conflist().unwrap(), n2.agent_conflist().unwrap());
    let client = Pod::create(n1, "client", &c1).unwrap();
    let b1 = Pod::create(n1, "b", &c1).unwrap();
    let b2 = Pod::create(n2, "b", &c2).unwrap();
    let _servers: Vec<ChildGuard> = [(n1, &b1), (n2, &b2)]
        .iter()
        .map(|(node, pod)| {
            let log = node.dirs.logs.join("echo-b.log");
            echo::serve_dual_stack(&pod.netns, &format!("{}/b", node.name), PORT, &log).unwrap()
        })
        .collect();
    fn v6(p: &Pod) -> (Ipv6Addr, &str) {
        (p.ipv6.expect("a dual-stack pod has IPv6"), p.node.as_str())
    }
    let both6 = [v6(&b1), v6(&b2)];
    let both4 = [(b1.ip, b1.node.as_str()), (b2.ip, b2.node.as_str())];

    let vip6: Ipv6Addr = "fd00:10:96::10".parse().unwrap();
    let dual4 = Ipv4Addr::new(10, 96, 0, 20);
    let dual6: Ipv6Addr = "fd00:10:96::20".parse().unwrap();
    let empty6: Ipv6Addr = "fd00:10:96::30".parse().unwrap();
    let only4 = Ipv4Addr::new(10, 96, 0, 40);
    let stray6: Ipv6Addr = "fd00:10:96::40".parse().unwrap();
    topo.write_manifest(
        "svc-ipv6.yaml",
        &[
            service_yaml_families("echo6", &[vip6.into()], &["IPv6"], "SingleStack", &node_port_ports()),
            endpoint_slice_yaml6("echo6", &SLICE_PORTS, &both6),
            service_yaml_families(
                "dual",
                &[dual4.into(), dual6.into()],
                &["IPv4", "IPv6"],
                "RequireDualStack",
                &ports(),
            ),
            endpoint_slice_yaml("dual", &SLICE_PORTS, &both4),
            endpoint_slice_yaml6("dual", &SLICE_PORTS, &both6),
            service_yaml_families("empty6", &[empty6.into()], &["IPv6"], "SingleStack", &ports()),
            endpoint_slice_yaml6("empty6", &SLICE_PORTS, &[]),
            // Bad input: an IPv4 single-stack Service listing an IPv6
            // address too, with IPv6 endpoints around. Only its IPv4
            // cluster IP may answer.
            service_yaml_families("only4", &[only4.into(), stray6.into()], &["IPv4"], "SingleStack", &ports()),
            endpoint_slice_yaml("only4", &SLICE_PORTS, &both4),
            endpoint_slice_yaml6("only4", &SLICE_PORTS, &both6),
        ],
    )
    .unwrap();

    let (ns, cg) = (&client.netns, cgroups[0].as_path());
    // TCP and UDP over IPv6, answered by backends on both nodes, always
    // from the Service address (recvmsg6/getpeername6).
    first_answer(ns, cg, "tcp", vip6.into());
    let mut answers = Vec::new();
    for proto in ["tcp", "udp"] {
        for _ in 0..12 {
            answers.push(echo::ask_ip_from(ns, Some(cg), proto, vip6.into(), PORT, "x").unwrap());
        }
    }
    assert!(answers.iter().all(|a| a.peer == IpAddr::from(vip6)), "replies not from the Service: {answers:?}");
    let servers: BTreeSet<&str> = answers.iter().map(|a| a.server.as_str()).collect();
    // 24 flows over two backends: both reached but for 1 chance in 2^23.
    assert_eq!(servers, BTreeSet::from(["n1/b", "n2/b"]), "{answers:?}");

    // The dual-stack Service answers on its cluster IP of each family.
    for vip in [IpAddr::from(dual4), dual6.into()] {
        first_answer(ns, cg, "tcp", vip);
        for proto in ["tcp", "udp"] {
            let a = echo::ask_ip_from(ns, Some(cg), proto, vip, PORT, "d").unwrap();
            assert_eq!(a.peer, vip, "{proto} to {vip}: {a:?}");
        }
    }

    // No endpoints: connect() and sendto() fail at once with ECONNREFUSED.
    let mut last = String::new();
    for _ in 0..40 {
        match echo::ask_ip_from(ns, Some(cg), "tcp", empty6.into(), PORT, "e") {
            Ok(a) => panic!("an IPv6 Service without endpoints answered: {a:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        if last.contains(ECONNREFUSED) {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(last.contains(ECONNREFUSED), "TCP connect to [{empty6}]: want ECONNREFUSED, got: {last}");
    let udp = format!("{:#}", echo::ask_ip_from(ns, Some(cg), "udp", empty6.into(), PORT, "e").unwrap_err());
    assert!(udp.contains(ECONNREFUSED), "UDP sendto [{empty6}]: want ECONNREFUSED, got: {udp}");

    // The IPv4 single-stack Service: its IPv4 cluster IP answers (so its
    // manifest was read), its stray IPv6 address never does.
    assert_eq!(first_answer(ns, cg, "tcp", only4.into()).peer, IpAddr::from(only4));
    for proto in ["tcp", "udp"] {
        let r = echo::ask_ip_from(ns, Some(cg), proto, stray6.into(), PORT, "s");
        assert!(r.is_err(), "{proto} to the IPv4-only Service's stray [{stray6}] answered: {r:?}");
    }

    // The NodePort on each node's IPv6 InternalIP, from a process on that
    // node (in its agent's cgroup), seen from the address it asked.
    for (node, cg) in topo.nodes().iter().zip(&cgroups) {
        let addr = IpAddr::from(node.ip6.expect("a dual-stack node has an IPv6 InternalIP"));
        let mut last = None;
        for _ in 0..40 {
            match echo::ask_ip_from(&node.netns, Some(cg), "tcp", addr, NODE_PORT, "n") {
                Ok(a) => {
                    assert_eq!(a.peer, addr, "{}: {a:?}", node.name);
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            thread::sleep(Duration::from_millis(250));
        }
        assert!(last.is_none(), "[{addr}]:{NODE_PORT} from {} never answered: {:#}", node.name, last.unwrap());
    }

    // inspect shows the IPv6 frontends with their IPv6 backends, and none
    // for the IPv4-only Service.
    let agent_bin = weir_testbed::bins::weir_agent().unwrap();
    let pin_dir = n1.pin_dir.to_str().unwrap();
    let shown = n1.netns.run(&[agent_bin.to_str().unwrap(), "inspect", "services", "--bpf-pin-dir", pin_dir]).unwrap();
    let line = shown.lines().find(|l| l.starts_with(&format!("[{vip6}]:{PORT} ")) && l.contains("TCP"));
    let line = line.unwrap_or_else(|| panic!("no [{vip6}]:{PORT} TCP in inspect services:\n{shown}"));
    for (ip, _) in both6 {
        assert!(line.contains(&format!("[{ip}]:{PORT}")), "{line}");
    }
    assert!(!shown.contains(&stray6.to_string()), "the IPv4-only Service has an IPv6 frontend:\n{shown}");
    drop(agents);
}

/// The per-packet path: agents without connect-time balancing, so a pod's
/// IPv6 packets to a Service are translated at its veth (weir_from_pod6,
/// reversed by weir_to_pod6): TCP and UDP to an IPv6 ClusterIP reach
/// backends on both nodes with every reply from the Service address, a
/// backend reaches itself through its Service (hairpin), and a
/// TCP connect to an IPv6 Service without endpoints is refused at once by
/// the in-kernel ICMPv6 port unreachable.
#[test]
fn ipv6_cluster_ip_through_the_per_packet_path() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::PORTMAP]);
    let topo = Topology::builder("svc_ipv6_tc").nodes(2).families(Families::DualStack).build().unwrap();
    let mut agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    let (c1, c2) = (n1.agent_conflist().unwrap(), n2.agent_conflist().unwrap());
    let client = Pod::create(n1, "client", &c1).unwrap();
    let b1 = Pod::create(n1, "b", &c1).unwrap();
    let b2 = Pod::create(n2, "b", &c2).unwrap();
    let _servers: Vec<ChildGuard> = [(n1, &b1), (n2, &b2)]
        .iter()
        .map(|(node, pod)| {
            let log = node.dirs.logs.join("echo-b.log");
            echo::serve_dual_stack(&pod.netns, &format!("{}/b", node.name), PORT, &log).unwrap()
        })
        .collect();
    let both6 = [(b1.ipv6.unwrap(), b1.node.as_str()), (b2.ipv6.unwrap(), b2.node.as_str())];
    let vip6: Ipv6Addr = "fd00:10:96::10".parse().unwrap();
    let empty6: Ipv6Addr = "fd00:10:96::30".parse().unwrap();
    topo.write_manifest(
        "svc-ipv6.yaml",
        &[
            service_yaml_families("echo6", &[vip6.into()], &["IPv6"], "SingleStack", &ports()),
            endpoint_slice_yaml6("echo6", &SLICE_PORTS, &both6),
            service_yaml_families("empty6", &[empty6.into()], &["IPv6"], "SingleStack", &ports()),
            endpoint_slice_yaml6("empty6", &SLICE_PORTS, &[]),
        ],
    )
    .unwrap();

    let ns = &client.netns;
    answered_per_packet(ns, vip6);
    let mut answers = Vec::new();
    for proto in ["tcp", "udp"] {
        for _ in 0..12 {
            answers.push(echo::ask_ip_from(ns, None, proto, vip6.into(), PORT, "x").unwrap());
        }
    }
    assert!(answers.iter().all(|a| a.peer == IpAddr::from(vip6)), "replies not from the Service: {answers:?}");
    let servers: BTreeSet<&str> = answers.iter().map(|a| a.server.as_str()).collect();
    assert_eq!(servers, BTreeSet::from(["n1/b", "n2/b"]), "{answers:?}");

    // Hairpin: a backend reaches itself through its Service (it answers
    // the pod gateway the request came from; the reply comes from the
    // Service). 16 tries over two backends: itself but for 1 in 65,536.
    let own: Vec<AnswerIp> =
        (0..16).map(|_| echo::ask_ip_from(&b1.netns, None, "tcp", vip6.into(), PORT, "h").unwrap()).collect();
    assert!(own.iter().all(|a| a.peer == IpAddr::from(vip6)), "replies not from the Service: {own:?}");
    assert!(own.iter().any(|a| a.server == "n1/b"), "n1/b never reached itself through its Service: {own:?}");

    // inspect conntrack shows the IPv6 flows with their frontend.
    let agent_bin = weir_testbed::bins::weir_agent().unwrap();
    let pin_dir = n1.pin_dir.to_str().unwrap();
    let shown = n1.netns.run(&[agent_bin.to_str().unwrap(), "inspect", "conntrack", "--bpf-pin-dir", pin_dir]).unwrap();
    assert!(shown.contains(&format!("[{vip6}]:{PORT}")), "no IPv6 flow in inspect conntrack:\n{shown}");

    // No endpoints: the connect is refused by the ICMPv6 error at once (an
    // unconnected UDP socket hears nothing of ICMP, so TCP only).
    let mut last = String::new();
    for _ in 0..40 {
        match echo::ask_ip_from(ns, None, "tcp", empty6.into(), PORT, "e") {
            Ok(a) => panic!("an IPv6 Service without endpoints answered: {a:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        if last.contains(ECONNREFUSED) {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(last.contains(ECONNREFUSED), "TCP connect to [{empty6}]: want ECONNREFUSED, got: {last}");

    // An established IPv6 connection keeps its backend across a restart of
    // the client node's agent (the conntrack and tail-call maps are pinned;
    // the new agent's programs take over the pod's filters).
    let dir = n1.dirs.root.clone();
    let (connected, go, out) = (dir.join("connected6"), dir.join("go6"), dir.join("client6.out"));
    let args = [vip6.to_string(), PORT.to_string(), path(&connected), path(&go)];
    let mut long =
        ns.spawn(&["python3", "-c", LONG_CLIENT6, &args[0], &args[1], &args[2], &args[3]], &[], &out, false).unwrap();
    for _ in 0..100 {
        if connected.exists() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(connected.exists(), "client never connected: {}", std::fs::read_to_string(&out).unwrap_or_default());
    let index = agents.iter().position(|a| a.node() == "n1").unwrap();
    agents.remove(index).stop();
    let mut agent = topo.start_agent("n1").unwrap();
    agent.wait_ready(Agent::ready_timeout()).unwrap();
    agents.push(agent);
    std::fs::write(&go, "go").unwrap();
    let mut status = None;
    for _ in 0..200 {
        status = long.try_wait();
        if status.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "client failed or hung after the restart: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], lines[1], "the connection changed backend across the restart");
}

/// Between pods of one node, the IPv6 flows weir owns (a Service flow to a
/// local backend and its replies, a TCP connection weir saw open) go from
/// veth to veth (bpf_redirect_peer) past the host's routing and netfilter,
/// while the pods see what routing would give them (the Service's address,
/// one hop less); direct UDP, which weir does not track, still takes the
/// host's way.
#[test]
fn ipv6_local_flows_go_from_veth_to_veth_past_the_host() {
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::IPTABLES, tools::PORTMAP]);
    let topo = Topology::builder("svc_ipv6_local").nodes(1).families(Families::DualStack).build().unwrap();
    let _agents = topo.start_agents().unwrap();
    let n1 = topo.node("n1");
    let conflist = n1.agent_conflist().unwrap();
    let (a, b) = (Pod::create(n1, "a", &conflist).unwrap(), Pod::create(n1, "b", &conflist).unwrap());
    let _server = echo::serve_dual_stack(&b.netns, "n1/b", PORT, &n1.dirs.logs.join("echo-b.log")).unwrap();
    let (a6, b6) = (a.ipv6.unwrap(), b.ipv6.unwrap());
    let vip6: Ipv6Addr = "fd00:10:96::10".parse().unwrap();
    topo.write_manifest(
        "svc-ipv6-local.yaml",
        &[
            service_yaml_families("echo6", &[vip6.into()], &["IPv6"], "SingleStack", &ports()),
            endpoint_slice_yaml6("echo6", &SLICE_PORTS, &[(b6, "n1")]),
        ],
    )
    .unwrap();
    // Until the Service answers; and the host's neighbour entries for both
    // pods, which the shortcut needs (until then the kernel forwards and
    // resolves them).
    answered_per_packet(&a.netns, vip6);
    echo::ask_ip_from(&a.netns, None, "tcp", b6.into(), PORT, "hello").unwrap();

    let (ab, ba) = (
        ["-s", &format!("{a6}/128"), "-d", &format!("{b6}/128")],
        ["-s", &format!("{b6}/128"), "-d", &format!("{a6}/128")],
    );
    let rules: [Vec<&str>; 3] = [
        [&["-p", "tcp"][..], &ab[..]].concat(),
        [&["-p", "tcp"][..], &ba[..]].concat(),
        [&["-p", "udp"][..], &ab[..]].concat(),
    ];
    for rule in rules.iter().rev() {
        let mut args = vec!["ip6tables", "-w", "-I", "FORWARD", "1"];
        args.extend_from_slice(rule);
        n1.netns.run(&args).unwrap();
    }
    n1.netns.run(&["ip6tables", "-w", "-Z", "FORWARD"]).unwrap();
    for _ in 0..20 {
        let direct = echo::ask_ip_from(&a.netns, None, "tcp", b6.into(), PORT, "d").unwrap();
        assert_eq!((direct.server.as_str(), direct.peer), ("n1/b", IpAddr::from(b6)));
        let via = echo::ask_ip_from(&a.netns, None, "tcp", vip6.into(), PORT, "s").unwrap();
        assert_eq!((via.server.as_str(), via.peer), ("n1/b", IpAddr::from(vip6)), "the client must see the Service");
    }
    for _ in 0..10 {
        let udp = echo::ask_ip_from(&a.netns, None, "udp", b6.into(), PORT, "u").unwrap();
        assert_eq!(udp.server, "n1/b");
        let via = echo::ask_ip_from(&a.netns, None, "udp", vip6.into(), PORT, "v").unwrap();
        assert_eq!((via.server.as_str(), via.peer), ("n1/b", IpAddr::from(vip6)));
    }
    let listing = n1.netns.run(&["ip6tables", "-w", "-L", "FORWARD", "-v", "-x", "-n"]).unwrap();
    // Rows after the two header lines, in rule order: packets first.
    let counts: Vec<u64> =
        listing.lines().skip(2).take(3).map(|row| row.split_whitespace().next().unwrap().parse().unwrap()).collect();
    // 40 connections are some 400 packets on the host's way.
    assert!(
        counts[0] + counts[1] < 10,
        "TCP between n1/a and n1/b over IPv6, direct and through the Service, crossed the host's FORWARD chain: \
         {} packets a->b, {} b->a",
        counts[0],
        counts[1]
    );
    assert!(counts[2] >= 10, "direct UDP should take the host's way (the counting rules work): {} packets", counts[2]);
    // One router hop, as the host's way gives: the hop limit a reply
    // through the Service arrives with (the echo server sends with 64).
    let out = a.netns.run(&["python3", "-c", REPLY_HOP_LIMIT, &vip6.to_string(), &PORT.to_string()]).unwrap();
    assert_eq!(out.trim(), "63", "a reply sent from veth to veth must lose one hop");
}

/// The hop limit of the reply to one UDP datagram sent to `[host]:port`
/// (IPV6_RECVHOPLIMIT = 51, IPV6_HOPLIMIT = 52 on Linux).
const REPLY_HOP_LIMIT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 51, 1)
s.settimeout(5)
s.sendto(b"hop", (sys.argv[1], int(sys.argv[2])))
data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(4))
print([int.from_bytes(d[:4], sys.byteorder) for (l, t, d) in anc if l == socket.IPPROTO_IPV6 and t == 52][0])
"#;

/// Asks over TCP (the per-packet path: no socket-LB cgroup) until the
/// agent has programmed the Service.
fn answered_per_packet(ns: &NetNs, vip6: Ipv6Addr) {
    let mut last = None;
    for _ in 0..60 {
        match echo::ask_ip_from(ns, None, "tcp", vip6.into(), PORT, "hello") {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("tcp [{vip6}]:{PORT} never answered: {:#}", last.unwrap());
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Connects to `[vip]:port`, asks once, says so in the `connected` file,
/// waits for the `go` file, asks again on the same connection; prints the
/// server of each answer.
const LONG_CLIENT6: &str = r#"
import os, socket, sys, time
host, port, connected, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"one\n"); print(s.recv(4096).decode().split()[0], flush=True)
open(connected, "w").write("1")
while not os.path.exists(go): time.sleep(0.05)
s.sendall(b"two\n"); print(s.recv(4096).decode().split()[0], flush=True)
"#;
