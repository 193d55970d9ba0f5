//! The uplink program: NodePort / external traffic, SNAT to the node for
//! remote backends and the reply path, source ranges, traffic policy Local.
use std::{collections::BTreeMap, net::Ipv4Addr};

use weir_common::{DropReason, pin};

use super::{
    lb_maps::LbMaps,
    lb_programmer::LbProgrammer,
    tests::{LOOPBACK, TC_ACT_OK, TestDatapath, add_endpoint},
    tests_lb::{packet, parse, run},
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
                Frontend { addr: Ipv4Addr::from(f.addr), port: f.port, proto: Protocol::Tcp, scope: Scope::Default },
                FrontendState {
                    service: "ns/web".into(),
                    kind: f.kind,
                    backends: f
                        .backends
                        .iter()
                        .map(|(a, local)| BackendRef {
                            addr: BackendAddr { addr: Ipv4Addr::from(*a), port: 8080, proto: Protocol::Tcp },
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
    maps.set_node_addrs(Ipv4Addr::from(NODE), Ipv4Addr::new(10, 244, 1, 1), 1).unwrap();
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
        &[Fe { addr: lb_ip, port: 80, kind: FrontendKind::LoadBalancer, backends: vec![(REMOTE_POD, false)], ranges: vec!["203.0.113.0/24"], local_only: false }],
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
