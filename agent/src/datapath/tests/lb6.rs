//! The per-packet Service path for IPv6 pod clients, with
//! BPF_PROG_TEST_RUN on crafted IPv6 packets whose transport checksums are
//! verified over the pseudo-header (UDP's included: mandatory over IPv6):
//! DNAT and reverse NAT, a flow keeping its backend, a reset flow's
//! replies left alone, and ICMPv6 port unreachable without backends.
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
    },
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;

pub(super) fn ip(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

pub(super) fn client() -> [u8; 16] {
    ip("fd00:10:244:1::5")
}
pub(super) fn vip() -> [u8; 16] {
    ip("fd00:10:96::a")
}
pub(super) fn backend() -> [u8; 16] {
    ip("fd00:10:244:2::7")
}

/// One's complement sum of `data` (16-bit big-endian words), not inverted.
fn sum(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    for chunk in data.chunks(2) {
        s += u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u32;
    }
    s
}

/// The transport checksum over the IPv6 pseudo-header and `l4` (with its
/// checksum field as it is): 0 when `l4`'s checksum is right.
pub(super) fn l4_csum(src: &[u8; 16], dst: &[u8; 16], next_header: u8, l4: &[u8]) -> u16 {
    let mut s = sum(src) + sum(dst) + l4.len() as u32 + next_header as u32 + sum(l4);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Ethernet + IPv6 + TCP (with `flags`) or UDP (a 4-byte payload), with a
/// valid checksum.
pub(super) fn packet(proto: u8, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&12u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, b'p', b'i', b'n', b'g']);
    }
    let off = if proto == TCP { 16 } else { 6 };
    let c = l4_csum(&src, &dst, proto, &l4);
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[proto, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&l4);
    p
}

/// (source, source port, destination, destination port) of an IPv6
/// packet, after checking its transport checksum.
pub(super) fn parse(p: &[u8]) -> ([u8; 16], u16, [u8; 16], u16) {
    assert_eq!(&p[12..14], &[0x86, 0xdd], "not IPv6");
    let len = u16::from_be_bytes([p[18], p[19]]) as usize;
    let src: [u8; 16] = p[22..38].try_into().unwrap();
    let dst: [u8; 16] = p[38..54].try_into().unwrap();
    let l4 = &p[54..54 + len];
    assert_eq!(l4_csum(&src, &dst, p[20], l4), 0, "bad transport checksum over the pseudo-header");
    if p[20] == UDP {
        assert_ne!(&l4[6..8], &[0, 0], "a UDP checksum is mandatory over IPv6");
    }
    (src, u16::from_be_bytes([l4[0], l4[1]]), dst, u16::from_be_bytes([l4[2], l4[3]]))
}

/// The client pod on the test's veth (IPv4 and IPv6), under no policy.
pub(super) fn client_endpoint(t: &mut TestDatapath) {
    let map = t.dp.ebpf_mut().map_mut(pin::MAP_ENDPOINTS6).unwrap();
    let mut map: aya::maps::HashMap<_, EndpointKey, [u8; 16]> = aya::maps::HashMap::try_from(map).unwrap();
    map.insert(EndpointKey { ifindex: LOOPBACK }, client(), 0).unwrap();
    t.dp.endpoints()
        .unwrap()
        .insert(
            EndpointKey { ifindex: LOOPBACK },
            EndpointInfo::new([10, 244, 1, 5], EndpointInfo::FLAG_VERIFY_SOURCE),
            0,
        )
        .unwrap();
}

/// The IPv6 frontend `[vip]:80` of `proto` over `backends` (port 8080).
pub(super) fn program(t: &mut TestDatapath, proto: Protocol, backends: &[[u8; 16]]) {
    let fe = Frontend { addr: IpAddr::from(vip()), port: 80, proto, scope: Scope::Default };
    let state = FrontendState {
        service: "ns/web".into(),
        kind: FrontendKind::ClusterIp,
        backends: backends
            .iter()
            .map(|a| BackendRef {
                addr: BackendAddr { addr: IpAddr::from(*a), port: 8080, proto },
                local: false,
                terminating: false,
            })
            .collect(),
        affinity_timeout: 0,
        source_ranges: vec![],
        local_only: false,
    };
    let want: BTreeMap<_, _> = [(fe, state)].into_iter().collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    let report = LbProgrammer::default().apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_cluster_ip_dnat_and_reverse_nat_with_valid_checksums() {
    for (proto, num) in [(Protocol::Tcp, TCP), (Protocol::Udp, UDP)] {
        let mut t = TestDatapath::load();
        client_endpoint(&mut t);
        program(&mut t, proto, &[backend()]);

        let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(num, client(), 40000, vip(), 80, SYN));
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(parse(&out), (client(), 40000, backend(), 8080), "{proto:?}: not DNATed to the backend");

        // The reply, entering the client's veth, comes from the Service.
        let reply = packet(num, backend(), 8080, client(), 40000, SYN | ACK);
        let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(parse(&out), (vip(), 80, client(), 40000), "{proto:?}: reply not from the Service");

        // The flow's next packet keeps its backend.
        let (_, out) = run(&t, pin::PROG_FROM_POD, &packet(num, client(), 40000, vip(), 80, ACK));
        assert_eq!(parse(&out).2, backend());

        // Traffic to an address no Service has passes untouched.
        let other = packet(num, client(), 40001, backend(), 8080, SYN);
        assert_eq!(run(&t, pin::PROG_FROM_POD, &other), (TC_ACT_OK, other.clone()));
    }
}

/// Once the client resets its flow, the backend's late replies are not
/// rewritten to the Service any more (as for IPv4).
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_replies_stop_being_translated_once_the_client_resets() {
    let mut t = TestDatapath::load();
    client_endpoint(&mut t);
    program(&mut t, Protocol::Tcp, &[backend()]);
    run(&t, pin::PROG_FROM_POD, &packet(TCP, client(), 40000, vip(), 80, SYN));
    let late = packet(TCP, backend(), 8080, client(), 40000, ACK);
    let (_, before) = run(&t, pin::PROG_TO_POD, &late);
    assert_eq!(parse(&before).0, vip(), "a reply of the live flow is translated");
    run(&t, pin::PROG_FROM_POD, &packet(TCP, client(), 40000, vip(), 80, RST | ACK));
    assert_eq!(run(&t, pin::PROG_TO_POD, &late), (TC_ACT_OK, late.clone()));
}

/// No backend: the packet comes back to the pod as an ICMPv6 port
/// unreachable from the Service address, quoting the packet, with a valid
/// ICMPv6 checksum (connect() fails at once with ECONNREFUSED).
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_service_without_backends_answers_icmpv6_port_unreachable() {
    for (proto, num) in [(Protocol::Tcp, TCP), (Protocol::Udp, UDP)] {
        let mut t = TestDatapath::load();
        client_endpoint(&mut t);
        program(&mut t, proto, &[]);
        let sent = packet(num, client(), 40000, vip(), 80, SYN);
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
        assert_eq!(rc, TC_ACT_REDIRECT, "{proto:?}: back out of the veth");
        assert_eq!(out.len(), 14 + 40 + 8 + 48);
        assert_eq!((&out[0..6], &out[6..12]), (&sent[6..12], &sent[0..6]), "Ethernet addresses swapped");
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        assert_eq!(u16::from_be_bytes([out[18], out[19]]), 56, "payload length");
        assert_eq!(out[20], ICMPV6);
        let (src, dst): ([u8; 16], [u8; 16]) = (out[22..38].try_into().unwrap(), out[38..54].try_into().unwrap());
        assert_eq!((src, dst), (vip(), client()));
        let icmp = &out[54..];
        assert_eq!((icmp[0], icmp[1]), (1, 4), "destination unreachable, port unreachable");
        assert_eq!(l4_csum(&src, &dst, ICMPV6, icmp), 0, "bad ICMPv6 checksum");
        assert_eq!(&icmp[8..], &sent[14..14 + 48], "quotes the IPv6 header and the ports");
        assert_eq!(t.count(DropReason::NoBackend), 1);
    }
}

/// A pod that is its own backend reaches itself through its IPv6 Service:
/// the request comes back out of its veth from the pod gateway, the reply
/// it sends the gateway comes back from the Service, checksums right.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_hairpin_pod_reaches_itself_through_its_service() {
    for (proto, num) in [(Protocol::Tcp, TCP), (Protocol::Udp, UDP)] {
        let mut t = TestDatapath::load();
        client_endpoint(&mut t);
        program(&mut t, proto, &[client()]);
        let gateway = ip("fd00:10:244:1::1");
        let maps: &mut dyn LbMaps = &mut t.dp;
        maps.set_node_gateway6(Ipv6Addr::from(gateway)).unwrap();

        let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(num, client(), 40000, vip(), 80, SYN));
        assert_eq!(rc, TC_ACT_REDIRECT, "{proto:?}: back out of the pod's veth");
        assert_eq!(parse(&out), (gateway, 40000, client(), 8080), "{proto:?}: request from the gateway");

        let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(num, client(), 8080, gateway, 40000, SYN | ACK));
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_eq!(parse(&out), (vip(), 80, client(), 40000), "{proto:?}: reply from the Service");

        let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(num, client(), 40000, vip(), 80, ACK));
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_eq!(parse(&out), (gateway, 40000, client(), 8080), "{proto:?}: the flow stays hairpinned");
    }
}

/// The pod's flags on the test's veth (as the agent writes them).
fn client_flags(t: &mut TestDatapath, flags: u32) {
    t.dp.endpoints()
        .unwrap()
        .insert(
            EndpointKey { ifindex: LOOPBACK },
            EndpointInfo::new([10, 244, 1, 5], EndpointInfo::FLAG_VERIFY_SOURCE | flags),
            0,
        )
        .unwrap();
}

/// Under policy, an IPv6 Service flow is judged as IPv4 ones are: egress
/// by the backend it was sent to (not the ClusterIP), and its replies pass
/// the client's ingress isolation (a reply of a flow it opened).
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_service_flows_meet_egress_policy_at_their_backend() {
    use weir_common::policy::{DIR_EGRESS, PolicyKey};

    use crate::datapath::policy::maps::PolicyMaps as _;
    let stranger = ip("fd00:10:244:2::8");
    let mut t = TestDatapath::load();
    client_endpoint(&mut t);
    client_flags(&mut t, EndpointInfo::FLAGS_ENFORCED);
    for (net, id) in [("::/0", 256), ("fd00:10:244:2::7/128", 300), ("fd00:10:244:2::8/128", 301)] {
        t.dp.set_identity(net.parse().unwrap(), id).unwrap();
    }
    // Egress to identity 300 (the backend) on TCP 8080, the backend's port.
    let key = PolicyKey { ifindex: LOOPBACK, identity: 300, dir: DIR_EGRESS, proto: TCP, port: 8080u16.to_be() };
    t.dp.set_rule((PolicyKey::PREFIX_FULL, key), 1).unwrap();
    program(&mut t, Protocol::Tcp, &[backend()]);

    let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(TCP, client(), 40000, vip(), 80, SYN));
    assert_eq!(rc, TC_ACT_OK, "allowed at its backend");
    assert_eq!(parse(&out), (client(), 40000, backend(), 8080));
    let reply = packet(TCP, backend(), 8080, client(), 40000, SYN | ACK);
    let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
    assert_eq!(rc, TC_ACT_OK, "the reply passes ingress isolation");
    assert_eq!(parse(&out), (vip(), 80, client(), 40000));
    assert_eq!(run(&t, pin::PROG_FROM_POD, &packet(TCP, client(), 40000, vip(), 80, ACK)).0, TC_ACT_OK);

    // The same Service over a backend the policy does not allow.
    program(&mut t, Protocol::Tcp, &[stranger]);
    let (rc, _) = run(&t, pin::PROG_FROM_POD, &packet(TCP, client(), 40001, vip(), 80, SYN));
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyEgress), 1);
    // Straight to the allowed backend, without the Service: allowed too.
    let direct = packet(TCP, client(), 40002, backend(), 8080, SYN);
    assert_eq!(run(&t, pin::PROG_FROM_POD, &direct).0, TC_ACT_OK);
}
