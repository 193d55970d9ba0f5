//! Service translation in the kernel, with BPF_PROG_TEST_RUN on crafted
//! packets: DNAT, reverse NAT, conntrack stickiness, affinity, reject.
use std::{collections::BTreeMap, net::Ipv4Addr};

use weir_common::pin;

use crate::datapath::{
    lb::maps::LbMaps,
    lb::programmer::LbProgrammer,
    prog_test_run,
    tests::harness::{LOOPBACK, TC_ACT_OK, TestDatapath, add_endpoint},
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

const TC_ACT_REDIRECT: u32 = 7;
const CLIENT: [u8; 4] = [10, 244, 1, 5];
const VIP: [u8; 4] = [10, 96, 0, 10];

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word =
            if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + TCP SYN or UDP datagram with valid checksums.
pub fn packet(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    packet_with_flags(proto, src, sport, dst, dport, 0x02)
}

/// Like `packet`, with these TCP flags.
pub fn packet_with_flags(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, tcp_flags: u8) -> Vec<u8> {
    let l4: Vec<u8> = if proto == 6 {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
        t
    } else {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&12u16.to_be_bytes());
        u.extend_from_slice(&[0, 0, b'p', b'i', b'n', b'g']);
        u
    };
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = l4;
    let c = l4_csum(&ip, &l4);
    let off = if proto == 6 { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

fn l4_csum(ip: &[u8], l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    csum(&pseudo)
}

pub struct Parsed {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Parses and checks both checksums.
pub fn parse(p: &[u8]) -> Parsed {
    let ip = &p[14..34];
    assert_eq!(csum(ip), 0, "bad IPv4 checksum");
    let len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = &p[34..14 + len];
    if ip[9] != 1 {
        assert_eq!(l4_csum(ip, l4), 0, "bad L4 checksum");
    } else {
        assert_eq!(csum(l4), 0, "bad ICMP checksum");
    }
    Parsed {
        src: ip[12..16].try_into().unwrap(),
        dst: ip[16..20].try_into().unwrap(),
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        proto: ip[9],
    }
}

fn program(t: &mut TestDatapath, proto: Protocol, backends: &[([u8; 4], u16)], affinity: u32) -> LbProgrammer {
    let mut p = LbProgrammer::default();
    apply(t, &mut p, proto, backends, affinity);
    p
}

fn apply(t: &mut TestDatapath, p: &mut LbProgrammer, proto: Protocol, backends: &[([u8; 4], u16)], affinity: u32) {
    let fe = Frontend { addr: Ipv4Addr::from(VIP).into(), port: 80, proto, scope: Scope::Default };
    let state = FrontendState {
        service: "ns/web".into(),
        kind: FrontendKind::ClusterIp,
        backends: backends
            .iter()
            .map(|(a, port)| BackendRef {
                addr: BackendAddr { addr: Ipv4Addr::from(*a).into(), port: *port, proto },
                local: false,
                terminating: false,
            })
            .collect(),
        affinity_timeout: affinity,
        source_ranges: vec![],
        local_only: false,
    };
    let want: BTreeMap<_, _> = [(fe, state)].into_iter().collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    let report = p.apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

pub fn run(t: &TestDatapath, prog: &str, packet: &[u8]) -> (u32, Vec<u8>) {
    let out = prog_test_run::run(&t.dp, prog, packet, LOOPBACK).expect("BPF_PROG_TEST_RUN");
    (out.retval, out.packet)
}

/// `weir_from_pod`'s verdict on `p`.
pub fn from_pod(t: &TestDatapath, p: &[u8]) -> u32 {
    run(t, pin::PROG_FROM_POD, p).0
}

/// `weir_to_pod`'s verdict on `p`.
pub fn to_pod(t: &TestDatapath, p: &[u8]) -> u32 {
    run(t, pin::PROG_TO_POD, p).0
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn cluster_ip_dnat_and_reverse_nat_for_tcp_and_udp() {
    for (proto, num) in [(Protocol::Tcp, 6u8), (Protocol::Udp, 17u8)] {
        let mut t = TestDatapath::load();
        add_endpoint(&mut t, LOOPBACK, CLIENT);
        program(&mut t, proto, &[([10, 244, 2, 7], 8080)], 0);

        let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(num, CLIENT, 40000, VIP, 80));
        assert_eq!(rc, TC_ACT_OK);
        let p = parse(&out);
        assert_eq!((p.src, p.sport, p.dst, p.dport, p.proto), (CLIENT, 40000, [10, 244, 2, 7], 8080, num));

        // Leaving the backend (same node), the reply is left alone: it is
        // translated at the client's veth, after the node's netfilter saw
        // both directions of one flow.
        // (test-run always uses one interface: make it the backend's.)
        add_endpoint(&mut t, LOOPBACK, [10, 244, 2, 7]);
        let reply = packet(num, [10, 244, 2, 7], 8080, CLIENT, 40000);
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &reply);
        assert_eq!(rc, TC_ACT_OK);
        assert_eq!(out, reply, "a pod client's reply must not be translated as it leaves the backend");
        add_endpoint(&mut t, LOOPBACK, CLIENT);

        // The backend's reply, on its way into the client pod.
        let (rc, out) = run(&t, pin::PROG_TO_POD, &packet(num, [10, 244, 2, 7], 8080, CLIENT, 40000));
        assert_eq!(rc, TC_ACT_OK);
        let p = parse(&out);
        assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 80, CLIENT, 40000));

        // Traffic that is not a reply of a translated flow is untouched.
        let unrelated = packet(num, [10, 244, 2, 8], 8080, CLIENT, 40000);
        let (_, out) = run(&t, pin::PROG_TO_POD, &unrelated);
        assert_eq!(out, unrelated);
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn flows_keep_their_backend_and_new_flows_spread() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    let backends = [([10, 244, 2, 7], 8080), ([10, 244, 3, 7], 8080), ([10, 244, 4, 7], 8080)];
    program(&mut t, Protocol::Tcp, &backends, 0);

    let first = parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, 40000, VIP, 80)).1).dst;
    for _ in 0..20 {
        assert_eq!(parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, 40000, VIP, 80)).1).dst, first);
    }
    let mut seen = std::collections::BTreeSet::new();
    for sport in 41000..41060 {
        seen.insert(parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, sport, VIP, 80)).1).dst);
    }
    assert_eq!(seen.len(), 3, "60 new flows should reach all 3 backends: {seen:?}");
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn session_affinity_pins_a_client_to_one_backend() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    let backends = [([10, 244, 2, 7], 8080), ([10, 244, 3, 7], 8080), ([10, 244, 4, 7], 8080)];
    program(&mut t, Protocol::Tcp, &backends, 10800);
    let first = parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, 40000, VIP, 80)).1).dst;
    for sport in 41000..41030 {
        assert_eq!(parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, sport, VIP, 80)).1).dst, first);
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn removed_backend_moves_its_udp_flow_to_a_live_one() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    let mut p = program(&mut t, Protocol::Udp, &[([10, 244, 2, 7], 53)], 0);
    let pkt = packet(17, CLIENT, 5353, VIP, 80);
    assert_eq!(parse(&run(&t, pin::PROG_FROM_POD, &pkt).1).dst, [10, 244, 2, 7]);
    apply(&mut t, &mut p, Protocol::Udp, &[([10, 244, 3, 7], 53)], 0);
    assert_eq!(parse(&run(&t, pin::PROG_FROM_POD, &pkt).1).dst, [10, 244, 3, 7]);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn service_without_backends_answers_icmp_port_unreachable() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    program(&mut t, Protocol::Tcp, &[], 0);
    let syn = packet(6, CLIENT, 40000, VIP, 80);
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT, "sent back towards the pod");
    let p = parse(&out);
    assert_eq!((p.src, p.dst, p.proto), (VIP, CLIENT, 1));
    assert_eq!(&out[34..36], &[3, 3], "ICMP destination unreachable / port unreachable");
    assert_eq!(&out[42..62], &syn[14..34], "quotes the original IP header");
    assert_eq!(&out[62..70], &syn[34..42], "and its first 8 transport bytes");
    assert_eq!(&out[0..6], &syn[6..12], "addressed to the pod's MAC");
    assert_eq!(t.count(weir_common::DropReason::NoBackend), 1);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn hairpin_pod_reaches_itself_through_its_service() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    let gateway = [10, 244, 1, 1];
    {
        let maps: &mut dyn LbMaps = &mut t.dp;
        maps.set_node_addrs(Ipv4Addr::new(172, 30, 0, 11), "10.244.1.0/24".parse().unwrap(), 1).unwrap();
    }
    program(&mut t, Protocol::Tcp, &[(CLIENT, 8080)], 0);

    // Out: to itself, from the gateway (a pod drops its own address as
    // source), sent straight back out of its veth (routing would drop a
    // packet whose source is the node's own gateway address).
    let syn = packet(6, CLIENT, 40000, VIP, 80);
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &syn);
    assert_eq!(rc, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&syn[6..12], &syn[0..6]), "MACs swapped");
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (gateway, 40000, CLIENT, 8080));
    // Its reply to the gateway leaves the pod and goes back in as VIP -> pod.
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, 8080, gateway, 40000));
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = parse(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 80, CLIENT, 40000));
    // Later packets of the flow keep both translations.
    let p = parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, 40000, VIP, 80)).1);
    assert_eq!((p.src, p.dst), (gateway, CLIENT));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn replies_stop_being_translated_once_the_client_resets_the_flow() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    program(&mut t, Protocol::Tcp, &[([10, 244, 2, 7], 8080)], 0);
    let reply = packet_with_flags(6, [10, 244, 2, 7], 8080, CLIENT, 40000, 0x12);

    run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, 40000, VIP, 80));
    // FIN from the client: the closing handshake is still translated.
    run(&t, pin::PROG_FROM_POD, &packet_with_flags(6, CLIENT, 40000, VIP, 80, 0x11));
    assert_eq!(parse(&run(&t, pin::PROG_TO_POD, &reply).1).src, VIP, "replies within the close grace period");

    // RST: the flow is over. A later connection on the same tuple (a
    // direct one to the backend) must see the backend's own address.
    run(&t, pin::PROG_FROM_POD, &packet_with_flags(6, CLIENT, 40000, VIP, 80, 0x04));
    let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(out, reply, "a reply of a finished flow must not be rewritten");
    // A new connection through the Service on the same tuple works again.
    let p = parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, 40000, VIP, 80)).1);
    assert_eq!((p.dst, p.dport), ([10, 244, 2, 7], 8080));
    assert_eq!(parse(&run(&t, pin::PROG_TO_POD, &reply).1).src, VIP);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_syn_reusing_a_closing_flows_port_is_balanced_afresh() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    let first = ([10, 244, 2, 7], 8080);
    let mut p = program(&mut t, Protocol::Tcp, &[first], 0);
    let ports = 41000..41040;
    for sport in ports.clone() {
        run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, sport, VIP, 80));
        // The client's FIN: the flow is closing, within its grace period.
        run(&t, pin::PROG_FROM_POD, &packet_with_flags(6, CLIENT, sport, VIP, 80, 0x11));
    }
    apply(&mut t, &mut p, Protocol::Tcp, &[first, ([10, 244, 3, 7], 8080), ([10, 244, 4, 7], 8080)], 0);
    // The closing handshake's last ACK still goes to the flow's backend.
    let ack = parse(&run(&t, pin::PROG_FROM_POD, &packet_with_flags(6, CLIENT, 41000, VIP, 80, 0x10)).1);
    assert_eq!(ack.dst, first.0);
    // A new connection on each tuple: spread over the three backends (40
    // in a row on the old one would be chance with odds of 3^-40).
    let mut seen = std::collections::BTreeSet::new();
    for sport in ports {
        seen.insert(parse(&run(&t, pin::PROG_FROM_POD, &packet(6, CLIENT, sport, VIP, 80)).1).dst);
    }
    assert_eq!(seen.len(), 3, "SYNs on closing tuples must be balanced afresh: {seen:?}");
}

/// A UDP datagram of `payload` bytes with its checksum, in two IPv4
/// fragments (ID `id`): the first with the UDP header and 24 bytes, the
/// second (offset 32 bytes) with the rest.
fn udp_fragments(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, id: u16, payload: usize) -> (Vec<u8>, Vec<u8>) {
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend((0..payload).map(|i| b'a' + (i % 26) as u8));
    let mut pseudo_ip = vec![0u8; 20];
    pseudo_ip[9] = 17;
    pseudo_ip[12..16].copy_from_slice(&src);
    pseudo_ip[16..20].copy_from_slice(&dst);
    let c = l4_csum(&pseudo_ip, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let frame = |flags_offset: u16, part: &[u8]| {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let c = csum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        p.extend_from_slice(&ip);
        p.extend_from_slice(part);
        p
    };
    (frame(0x2000, &udp[..32]), frame(4, &udp[32..]))
}

/// Puts two fragments back together as the receiver would: both IPv4
/// checksums valid, the same addresses and ID (or the receiver never joins
/// them), the UDP checksum valid over the whole datagram. Returns the
/// datagram's addresses and ports.
fn reassemble(first: &[u8], second: &[u8]) -> Parsed {
    let (ip1, ip2) = (&first[14..34], &second[14..34]);
    assert_eq!(csum(ip1), 0, "bad IPv4 checksum, first fragment");
    assert_eq!(csum(ip2), 0, "bad IPv4 checksum, second fragment");
    assert_eq!(
        (&ip1[4..6], &ip1[12..20]),
        (&ip2[4..6], &ip2[12..20]),
        "fragments of one datagram must agree on ID and addresses"
    );
    let mut udp = first[34..].to_vec();
    udp.extend_from_slice(&second[34..]);
    assert_eq!(l4_csum(ip1, &udp), 0, "bad UDP checksum over the datagram");
    Parsed {
        src: ip1[12..16].try_into().unwrap(),
        dst: ip1[16..20].try_into().unwrap(),
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        proto: 17,
    }
}

/// A large UDP request to a Service (upstream's "should be able to handle
/// large requests: udp": 2,000 bytes, more than a pod's MTU) arrives in
/// fragments, and only the first carries the ports: every fragment must go
/// to the same backend, and every fragment of the reply must come from the
/// Service, or the datagram is never put together again.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn fragmented_udp_datagrams_are_translated_whole_both_ways() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, CLIENT);
    let backend = [10, 244, 2, 7];
    program(&mut t, Protocol::Udp, &[(backend, 8080)], 0);

    let (first, second) = udp_fragments(CLIENT, 40000, VIP, 80, 0x1234, 100);
    let (rc, out1) = run(&t, pin::PROG_FROM_POD, &first);
    assert_eq!(rc, TC_ACT_OK);
    let (rc, out2) = run(&t, pin::PROG_FROM_POD, &second);
    assert_eq!(rc, TC_ACT_OK);
    let p = reassemble(&out1, &out2);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (CLIENT, 40000, backend, 8080));
    assert_eq!(&out2[34..], &second[34..], "a later fragment's payload is left as it is");

    // The reply, fragmented too, on its way into the client.
    let (first, second) = udp_fragments(backend, 8080, CLIENT, 40000, 0x4321, 100);
    let out1 = run(&t, pin::PROG_TO_POD, &first).1;
    let out2 = run(&t, pin::PROG_TO_POD, &second).1;
    let p = reassemble(&out1, &out2);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 80, CLIENT, 40000));

    // A later fragment whose first fragment this hook never saw (another
    // ID) is not guessed at.
    let (_, stray) = udp_fragments(CLIENT, 40000, VIP, 80, 0x7777, 100);
    assert_eq!(run(&t, pin::PROG_FROM_POD, &stray), (TC_ACT_OK, stray));
}
