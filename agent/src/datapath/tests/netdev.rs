//! The uplink program: NodePort / external traffic, SNAT to the node for
//! remote backends and the reply path, source ranges, traffic policy Local.
use std::{collections::BTreeMap, net::Ipv4Addr};

use weir_common::{DropReason, pin};

use crate::datapath::{
    lb::maps::LbMaps,
    lb::programmer::LbProgrammer,
    tests::harness::{LOOPBACK, TC_ACT_OK, TestDatapath, add_endpoint},
    tests::lb::{packet, parse, run},
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

const TC_ACT_SHOT: u32 = 2;
/// Handed to the uplink directly: the source is now a node address, which
/// the routing input check would drop as a martian.
const TC_ACT_REDIRECT: u32 = 7;
const NODE: [u8; 4] = [172, 30, 0, 11];
const CLIENT: [u8; 4] = [172, 30, 0, 100];
const LOCAL_POD: [u8; 4] = [10, 244, 1, 5];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 7];

struct Fe {
    addr: [u8; 4],
    port: u16,
    kind: FrontendKind,
    backends: Vec<([u8; 4], bool)>,
    ranges: Vec<&'static str>,
    local_only: bool,
}

fn program(t: &mut TestDatapath, fes: &[Fe]) {
    let want: BTreeMap<Frontend, FrontendState> = fes
        .iter()
        .map(|f| {
            (
                Frontend {
                    addr: Ipv4Addr::from(f.addr).into(),
                    port: f.port,
                    proto: Protocol::Tcp,
                    scope: Scope::Default,
                },
                FrontendState {
                    service: "ns/web".into(),
                    kind: f.kind,
                    backends: f
                        .backends
                        .iter()
                        .map(|(a, local)| BackendRef {
                            addr: BackendAddr { addr: Ipv4Addr::from(*a).into(), port: 8080, proto: Protocol::Tcp },
                            local: *local,
                            terminating: false,
                        })
                        .collect(),
                    affinity_timeout: 0,
                    source_ranges: f.ranges.iter().map(|r| r.parse().unwrap()).collect(),
                    local_only: f.local_only,
                },
            )
        })
        .collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    maps.set_node_addrs(Ipv4Addr::from(NODE), "10.244.1.0/24".parse().unwrap(), 1).unwrap();
    let report = LbProgrammer::default().apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

fn node_port(backends: Vec<([u8; 4], bool)>) -> Fe {
    Fe { addr: NODE, port: 30080, kind: FrontendKind::NodePort, backends, ranges: vec![], local_only: false }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn node_port_to_local_backend_keeps_client_address() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, LOCAL_POD);
    program(&mut t, &[node_port(vec![(LOCAL_POD, true)])]);

    let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, CLIENT, 50000, NODE, 30080));
    assert_eq!(rc, TC_ACT_OK);
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (CLIENT, 50000, LOCAL_POD, 8080));

    // The backend pod's reply is translated as it leaves the pod, and goes
    // straight to the uplink.
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(6, LOCAL_POD, 8080, CLIENT, 50000));
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (NODE, 30080, CLIENT, 50000));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn node_port_to_remote_backend_snats_to_the_node_and_reverses_the_reply() {
    let mut t = TestDatapath::load();
    program(&mut t, &[node_port(vec![(REMOTE_POD, false)])]);

    let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, CLIENT, 50000, NODE, 30080));
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (NODE, 50000, REMOTE_POD, 8080));

    // The same flow again: same translation.
    let (_, again) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, CLIENT, 50000, NODE, 30080));
    assert_eq!(again, out);

    // Reply from the other node: back to the client, from the NodePort.
    let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, REMOTE_POD, 8080, NODE, 50000));
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (NODE, 30080, CLIENT, 50000));

    // Another client with the same source port gets another SNAT port, and
    // each reply finds its own client.
    let other = [172, 30, 0, 101];
    let p2 = parse(&run(&t, pin::PROG_FROM_NETDEV, &packet(6, other, 50000, NODE, 30080)).1);
    assert_eq!(p2.src, NODE);
    assert_ne!(p2.sport, 50000);
    let back = parse(&run(&t, pin::PROG_FROM_NETDEV, &packet(6, REMOTE_POD, 8080, NODE, p2.sport)).1);
    assert_eq!((back.dst, back.dport), (other, 50000));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn load_balancer_source_ranges_are_enforced() {
    let mut t = TestDatapath::load();
    let lb_ip = [198, 51, 100, 7];
    program(
        &mut t,
        &[Fe {
            addr: lb_ip,
            port: 80,
            kind: FrontendKind::LoadBalancer,
            backends: vec![(REMOTE_POD, false)],
            ranges: vec!["203.0.113.0/24"],
            local_only: false,
        }],
    );
    let (rc, _) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, [203, 0, 113, 9], 50000, lb_ip, 80));
    assert_eq!(rc, TC_ACT_REDIRECT, "allowed: on to the remote backend");
    let (rc, _) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, [198, 18, 0, 1], 50000, lb_ip, 80));
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::SourceRange), 1);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn traffic_policy_local_without_local_backend_drops() {
    let mut t = TestDatapath::load();
    program(&mut t, &[Fe { local_only: true, ..node_port(vec![]) }]);
    let (rc, _) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, CLIENT, 50000, NODE, 30080));
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::NoLocalBackend), 1);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn uplink_leaves_other_traffic_alone() {
    let mut t = TestDatapath::load();
    program(&mut t, &[node_port(vec![(REMOTE_POD, false)])]);
    for pkt in [packet(6, CLIENT, 50000, NODE, 22), packet(17, [10, 244, 2, 9], 53, LOCAL_POD, 40000)] {
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &pkt);
        assert_eq!((rc, out), (TC_ACT_OK, pkt));
    }
}

/// A backend on the node's own stack: a hostNetwork endpoint, whose address
/// is the node's. Its replies cross no veth; they leave by the uplink, whose
/// egress program puts the NodePort back.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn node_port_to_a_host_network_backend_is_reversed_on_the_uplink_egress() {
    let mut t = TestDatapath::load();
    program(&mut t, &[node_port(vec![(NODE, true), (REMOTE_POD, false)])]);

    // Until one flow lands on the host backend (the other is remote).
    let mut sport = 50000;
    let out = loop {
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(6, CLIENT, sport, NODE, 30080));
        if rc == TC_ACT_OK {
            break out;
        }
        assert_eq!(rc, TC_ACT_REDIRECT, "the remote backend, through SNAT");
        sport += 1;
        assert!(sport < 50064, "64 flows never chose the host backend");
    };
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (CLIENT, sport, NODE, 8080), "on to the node's own stack");

    // The node's reply, leaving by the uplink, comes from the NodePort.
    let (rc, out) = run(&t, pin::PROG_TO_NETDEV, &packet(6, NODE, 8080, CLIENT, sport));
    assert_eq!(rc, TC_ACT_OK, "already routed: it goes on");
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (NODE, 30080, CLIENT, sport));

    // The node's own traffic, and replies translated earlier, pass as they are.
    for pkt in [
        packet(6, NODE, 8080, CLIENT, sport + 100),
        packet(6, NODE, 30080, CLIENT, sport),
        packet(17, NODE, 53, CLIENT, 40000),
    ] {
        assert_eq!(run(&t, pin::PROG_TO_NETDEV, &pkt), (TC_ACT_OK, pkt));
    }

    // Once the client resets the flow, a new connection on the same tuple
    // (to the host directly) is not rewritten.
    run(&t, pin::PROG_FROM_NETDEV, &crate::datapath::tests::lb::packet_with_flags(6, CLIENT, sport, NODE, 30080, 0x04));
    let reply = packet(6, NODE, 8080, CLIENT, sport);
    assert_eq!(run(&t, pin::PROG_TO_NETDEV, &reply), (TC_ACT_OK, reply));
}

/// Replies that are someone else's to translate are left alone on the
/// uplink: a local pod's flow to a host-network backend (translated at the
/// pod's veth) and a NodePort flow to a local pod (translated as it left
/// the pod).
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn uplink_egress_leaves_pod_client_and_pod_backend_replies_alone() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, LOCAL_POD);
    let vip = [10, 96, 0, 10];
    program(
        &mut t,
        &[
            Fe {
                addr: vip,
                port: 80,
                kind: FrontendKind::ClusterIp,
                backends: vec![(NODE, true)],
                ranges: vec![],
                local_only: false,
            },
            node_port(vec![(LOCAL_POD, true)]),
        ],
    );

    // A pod on this node to the ClusterIP, whose backend is the node.
    let p = parse(&run(&t, pin::PROG_FROM_POD, &packet(6, LOCAL_POD, 40000, vip, 80)).1);
    assert_eq!((p.dst, p.dport), (NODE, 8080));
    let reply = packet(6, NODE, 8080, LOCAL_POD, 40000);
    assert_eq!(
        run(&t, pin::PROG_TO_NETDEV, &reply),
        (TC_ACT_OK, reply.clone()),
        "a pod client's reply is translated at its veth"
    );
    let p = parse(&run(&t, pin::PROG_TO_POD, &reply).1);
    assert_eq!((p.src, p.sport), (vip, 80));

    // An external client to the NodePort, whose backend is the local pod:
    // reversed as it leaves the pod, then untouched on the uplink.
    run(&t, pin::PROG_FROM_NETDEV, &packet(6, CLIENT, 50000, NODE, 30080));
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(6, LOCAL_POD, 8080, CLIENT, 50000));
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!(run(&t, pin::PROG_TO_NETDEV, &out), (TC_ACT_OK, out.clone()));
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (NODE, 30080, CLIENT, 50000));
}
