//! The uplink programs over IPv6 (`ebpf/src/netdev6.rs`), on crafted IPv6
//! packets whose transport checksums are verified over the pseudo-header:
//! a NodePort to a local pod backend (the client's address kept, the
//! pod's reply reversed as it leaves the pod and handed to the uplink) and
//! to a remote one (SNAT to the node's IPv6 address, another client on the
//! same port given another port, each reply back to its client),
//! loadBalancerSourceRanges, `externalTrafficPolicy: Local`, ICMPv6 port
//! unreachable without endpoints, and a hostNetwork backend whose replies
//! are reversed on the uplink's egress.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use weir_common::{DropReason, EndpointInfo, EndpointKey, pin};

use crate::datapath::{
    lb::maps::LbMaps,
    lb::programmer::LbProgrammer,
    tests::{
        harness::{LOOPBACK, TC_ACT_OK, TestDatapath},
        lb::run,
        lb6::{ip, l4_csum, packet, parse},
    },
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

const TC_ACT_SHOT: u32 = 2;
/// Handed to the uplink directly: the source is now a node address.
const TC_ACT_REDIRECT: u32 = 7;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

pub(super) fn node() -> [u8; 16] {
    ip("fd00:172:30::11")
}
pub(super) fn client() -> [u8; 16] {
    ip("fd00:172:30::100")
}
pub(super) fn local_pod() -> [u8; 16] {
    ip("fd00:10:244:1::5")
}
pub(super) fn remote_pod() -> [u8; 16] {
    ip("fd00:10:244:2::7")
}

/// An IPv6 frontend: address, port, kind, backends (address, local) on
/// port 8080, source ranges, `externalTrafficPolicy: Local`.
pub(super) struct Fe {
    addr: [u8; 16],
    port: u16,
    kind: FrontendKind,
    backends: Vec<([u8; 16], bool)>,
    ranges: Vec<&'static str>,
    local_only: bool,
}

pub(super) fn node_port(port: u16, backends: Vec<([u8; 16], bool)>) -> Fe {
    Fe { addr: node(), port, kind: FrontendKind::NodePort, backends, ranges: vec![], local_only: false }
}

/// Programs `fes` for `proto`, with the node's IPv6 address and uplink
/// (ifindex 1) written as the agent does.
pub(super) fn program(t: &mut TestDatapath, proto: Protocol, fes: &[Fe]) {
    let want: BTreeMap<Frontend, FrontendState> = fes
        .iter()
        .map(|f| {
            let fe = Frontend { addr: IpAddr::from(f.addr), port: f.port, proto, scope: Scope::Default };
            let backends = f
                .backends
                .iter()
                .map(|(a, local)| BackendRef {
                    addr: BackendAddr { addr: IpAddr::from(*a), port: 8080, proto },
                    local: *local,
                    terminating: false,
                })
                .collect();
            let state = FrontendState {
                service: "ns/web".into(),
                kind: f.kind,
                backends,
                affinity_timeout: 0,
                source_ranges: f.ranges.iter().map(|r| r.parse().unwrap()).collect(),
                local_only: f.local_only,
            };
            (fe, state)
        })
        .collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    maps.set_uplink6(Ipv6Addr::from(node()), 1).unwrap();
    let report = LbProgrammer::default().apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

/// The local backend pod on the test's veth, under no policy.
fn backend_endpoint(t: &mut TestDatapath) {
    let map = t.dp.ebpf_mut().map_mut(pin::MAP_ENDPOINTS6).unwrap();
    let mut map: aya::maps::HashMap<_, EndpointKey, [u8; 16]> = aya::maps::HashMap::try_from(map).unwrap();
    map.insert(EndpointKey { ifindex: LOOPBACK }, local_pod(), 0).unwrap();
    t.dp.endpoints()
        .unwrap()
        .insert(
            EndpointKey { ifindex: LOOPBACK },
            EndpointInfo::new([10, 244, 1, 5], EndpointInfo::FLAG_VERIFY_SOURCE),
            0,
        )
        .unwrap();
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_node_port_reaches_local_and_remote_backends_with_valid_checksums() {
    for (proto, num) in [(Protocol::Tcp, TCP), (Protocol::Udp, UDP)] {
        let mut t = TestDatapath::load();
        backend_endpoint(&mut t);
        program(
            &mut t,
            proto,
            &[node_port(30080, vec![(local_pod(), true)]), node_port(30081, vec![(remote_pod(), false)])],
        );

        // A local backend: DNAT only, the client's address kept.
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(num, client(), 50000, node(), 30080, SYN));
        assert_eq!(rc, TC_ACT_OK, "{proto:?}");
        assert_eq!(parse(&out), (client(), 50000, local_pod(), 8080), "{proto:?}: not DNATed to the local pod");
        // Its reply, leaving the pod, comes from the NodePort, straight to
        // the uplink (its source is now the node's).
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(num, local_pod(), 8080, client(), 50000, SYN | ACK));
        assert_eq!(rc, TC_ACT_REDIRECT, "{proto:?}");
        assert_eq!(parse(&out), (node(), 30080, client(), 50000), "{proto:?}: reply not from the NodePort");

        // A remote backend: SNAT to the node, back out of the uplink.
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(num, client(), 50000, node(), 30081, SYN));
        assert_eq!(rc, TC_ACT_REDIRECT, "{proto:?}");
        assert_eq!(parse(&out), (node(), 50000, remote_pod(), 8080), "{proto:?}: not SNATed to the node");
        let (_, again) = run(&t, pin::PROG_FROM_NETDEV, &packet(num, client(), 50000, node(), 30081, ACK));
        assert_eq!(parse(&again), (node(), 50000, remote_pod(), 8080), "{proto:?}: the flow keeps its translation");
        // Its reply, coming back through the uplink: to the client, from
        // the NodePort.
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(num, remote_pod(), 8080, node(), 50000, SYN | ACK));
        assert_eq!(rc, TC_ACT_REDIRECT, "{proto:?}");
        assert_eq!(parse(&out), (node(), 30081, client(), 50000), "{proto:?}: remote reply not reversed");

        // Another client on the same source port gets another SNAT port;
        // each reply finds its own client.
        let other = ip("fd00:172:30::101");
        let p2 = parse(&run(&t, pin::PROG_FROM_NETDEV, &packet(num, other, 50000, node(), 30081, SYN)).1);
        assert_eq!(p2.0, node());
        assert_ne!(p2.1, 50000, "{proto:?}: the reply tuple is taken");
        let back = parse(&run(&t, pin::PROG_FROM_NETDEV, &packet(num, remote_pod(), 8080, node(), p2.1, ACK)).1);
        assert_eq!((back.2, back.3), (other, 50000), "{proto:?}");
        let back = parse(&run(&t, pin::PROG_FROM_NETDEV, &packet(num, remote_pod(), 8080, node(), 50000, ACK)).1);
        assert_eq!((back.2, back.3), (client(), 50000), "{proto:?}");
    }
}

/// loadBalancerSourceRanges over IPv6, `externalTrafficPolicy: Local`
/// without a local endpoint, no endpoints at all (ICMPv6 port unreachable
/// back out of the uplink), and other traffic left alone.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_uplink_source_ranges_local_policy_and_rejection() {
    let mut t = TestDatapath::load();
    let lb_ip = ip("2001:db8:100::7");
    program(
        &mut t,
        Protocol::Tcp,
        &[
            Fe {
                addr: lb_ip,
                port: 80,
                kind: FrontendKind::LoadBalancer,
                backends: vec![(remote_pod(), false)],
                ranges: vec!["fd00:172:30::100/127"],
                local_only: false,
            },
            Fe { local_only: true, ..node_port(30082, vec![]) },
            node_port(30083, vec![]),
        ],
    );
    let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(TCP, client(), 50000, lb_ip, 80, SYN));
    assert_eq!(rc, TC_ACT_REDIRECT, "allowed: on to the remote backend");
    assert_eq!(parse(&out), (node(), 50000, remote_pod(), 8080));
    let refused = ip("fd00:172:30::102");
    let (rc, _) = run(&t, pin::PROG_FROM_NETDEV, &packet(TCP, refused, 50000, lb_ip, 80, SYN));
    assert_eq!(rc, TC_ACT_SHOT, "outside the source ranges");
    assert_eq!(t.count(DropReason::SourceRange), 1);

    let (rc, _) = run(&t, pin::PROG_FROM_NETDEV, &packet(TCP, client(), 50000, node(), 30082, SYN));
    assert_eq!(rc, TC_ACT_SHOT, "externalTrafficPolicy: Local without a local endpoint");
    assert_eq!(t.count(DropReason::NoLocalBackend), 1);

    let sent = packet(TCP, client(), 50000, node(), 30083, SYN);
    let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &sent);
    assert_eq!(rc, TC_ACT_REDIRECT, "back out of the uplink");
    assert_eq!((&out[0..6], &out[6..12]), (&sent[6..12], &sent[0..6]), "Ethernet addresses swapped");
    assert_eq!(out[20], ICMPV6);
    let (src, dst): ([u8; 16], [u8; 16]) = (out[22..38].try_into().unwrap(), out[38..54].try_into().unwrap());
    assert_eq!((src, dst), (node(), client()));
    let icmp = &out[54..];
    assert_eq!((icmp[0], icmp[1]), (1, 4), "destination unreachable, port unreachable");
    assert_eq!(l4_csum(&src, &dst, ICMPV6, icmp), 0, "bad ICMPv6 checksum");
    assert_eq!(&icmp[8..], &sent[14..14 + 48], "quotes the IPv6 header and the ports");
    assert_eq!(t.count(DropReason::NoBackend), 1);

    // Not a frontend, not a reply: the node's stack decides.
    for pkt in [packet(TCP, client(), 50000, node(), 22, SYN), packet(UDP, remote_pod(), 53, local_pod(), 40000, 0)] {
        assert_eq!(run(&t, pin::PROG_FROM_NETDEV, &pkt), (TC_ACT_OK, pkt.clone()));
        assert_eq!(run(&t, pin::PROG_TO_NETDEV, &pkt), (TC_ACT_OK, pkt.clone()));
    }
}

/// A hostNetwork backend (the endpoint address is the node's IPv6
/// address): its replies cross no veth and leave by the uplink, whose
/// egress program puts the NodePort back, while the flow lives.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_node_port_to_a_host_network_backend_is_reversed_on_the_uplink_egress() {
    for (proto, num) in [(Protocol::Tcp, TCP), (Protocol::Udp, UDP)] {
        let mut t = TestDatapath::load();
        program(&mut t, proto, &[node_port(30080, vec![(node(), true)])]);
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &packet(num, client(), 50000, node(), 30080, SYN));
        assert_eq!(rc, TC_ACT_OK, "{proto:?}");
        assert_eq!(parse(&out), (client(), 50000, node(), 8080), "{proto:?}: on to the node's own stack");

        let reply = packet(num, node(), 8080, client(), 50000, SYN | ACK);
        let (rc, out) = run(&t, pin::PROG_TO_NETDEV, &reply);
        assert_eq!(rc, TC_ACT_OK, "{proto:?}: already routed, it goes on");
        assert_eq!(parse(&out), (node(), 30080, client(), 50000), "{proto:?}: reply not from the NodePort");

        // The node's own traffic passes as it is.
        let own = packet(num, node(), 8080, client(), 50001, ACK);
        assert_eq!(run(&t, pin::PROG_TO_NETDEV, &own), (TC_ACT_OK, own.clone()));

        if num == TCP {
            // Once the client resets the flow, a new connection on the
            // same tuple (to the host directly) is not rewritten.
            run(&t, pin::PROG_FROM_NETDEV, &packet(num, client(), 50000, node(), 30080, RST | ACK));
            assert_eq!(run(&t, pin::PROG_TO_NETDEV, &reply), (TC_ACT_OK, reply.clone()));
        }
    }
}

/// A 32-byte UDP datagram (valid checksum) in two fragments of 16 bytes
/// each: the first with the UDP header, the second at offset 16.
pub(super) fn fragments(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, id: u32) -> [Vec<u8>; 2] {
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&32u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(b"a large request, in two parts");
    udp.truncate(32);
    let c = l4_csum(&src, &dst, UDP, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    [(0u16, true, &udp[..16]), (16, false, &udp[16..])].map(|(offset, more, part)| {
        let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0];
        p.extend_from_slice(&((8 + part.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[44, 64]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[UDP, 0]);
        p.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(part);
        p
    })
}

/// The two fragments put back together: (source, source port,
/// destination, destination port), after checking that both carry the
/// same addresses and the datagram's checksum is right.
pub(super) fn reassemble(f: &[Vec<u8>; 2]) -> ([u8; 16], u16, [u8; 16], u16) {
    let addrs = |p: &[u8]| -> ([u8; 16], [u8; 16]) { (p[22..38].try_into().unwrap(), p[38..54].try_into().unwrap()) };
    assert_eq!(addrs(&f[0]), addrs(&f[1]), "fragments translated apart");
    let (src, dst) = addrs(&f[0]);
    let udp: Vec<u8> = [&f[0][62..], &f[1][62..]].concat();
    assert_eq!(l4_csum(&src, &dst, UDP, &udp), 0, "bad checksum of the reassembled datagram");
    (src, u16::from_be_bytes([udp[0], udp[1]]), dst, u16::from_be_bytes([udp[2], udp[3]]))
}

/// A fragmented UDP request to a NodePort whose backend is remote: every
/// fragment is SNATed alike (the later one by the ports its first
/// recorded), and the backend's fragmented reply is reversed alike, the
/// datagram's checksum right both ways.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_fragmented_udp_through_a_node_port_is_translated_fragment_by_fragment() {
    let mut t = TestDatapath::load();
    program(&mut t, Protocol::Udp, &[node_port(30081, vec![(remote_pod(), false)])]);
    let run_all = |t: &TestDatapath, f: [Vec<u8>; 2]| {
        f.map(|p| {
            let (rc, out) = run(t, pin::PROG_FROM_NETDEV, &p);
            assert_eq!(rc, TC_ACT_REDIRECT, "back out of the uplink");
            out
        })
    };
    let request = run_all(&t, fragments(client(), 50000, node(), 30081, 7));
    assert_eq!(reassemble(&request), (node(), 50000, remote_pod(), 8080), "request not SNATed");
    let reply = run_all(&t, fragments(remote_pod(), 8080, node(), 50000, 9));
    assert_eq!(reassemble(&reply), (node(), 30081, client(), 50000), "reply not reversed");
}
