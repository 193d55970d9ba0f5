//! IPv6 Service packets of pod clients behind extension headers
//! (`lb::parse6`), on crafted packets whose transport checksums are
//! verified over the pseudo-header: hop-by-hop and destination options
//! (and a routing header with no segments left) before TCP, UDP and SCTP
//! are translated at the real transport offset both ways, a fragmented
//! datagram fragment by fragment; a routing header with segments left is
//! left alone, and without backends such a packet is dropped unanswered.
use std::net::IpAddr;

use weir_common::{DropReason, pin};

use crate::datapath::tests::{
    harness::{TC_ACT_OK, TestDatapath},
    lb::run,
    lb6::{self, backend, client, l4_csum, vip},
    netdev6,
    sctp::{self, Crc},
};
use crate::model::{lb::FrontendKind, service::Protocol};

const TC_ACT_SHOT: u32 = 2;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const DEST_OPTS: u8 = 60;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const ETH_AND_IP6: usize = 14 + 40;

/// `p` with 8-byte extension headers of the given types (in order)
/// between its IPv6 header and what it carried: options headers hold a
/// PadN option; a routing header is of type 4 with `segments_left`.
fn with_ext(types: &[u8], segments_left: u8, mut p: Vec<u8>) -> Vec<u8> {
    for kind in types.iter().rev() {
        let inner = p[20];
        p[20] = *kind;
        let hdr =
            if *kind == ROUTING { [inner, 0, 4, segments_left, 0, 0, 0, 0] } else { [inner, 0, 1, 4, 0, 0, 0, 0] };
        p.splice(ETH_AND_IP6..ETH_AND_IP6, hdr);
    }
    let len = u16::from_be_bytes([p[18], p[19]]) + 8 * types.len() as u16;
    p[18..20].copy_from_slice(&len.to_be_bytes());
    p
}

/// (source, source port, destination, destination port) of an IPv6
/// packet whose transport header follows `ext` extension headers of 8
/// bytes, after checking its headers are still there and its TCP or UDP
/// checksum is right over the pseudo-header (the transport's length and
/// protocol, not the extension headers').
fn parse(p: &[u8], ext: &[u8]) -> ([u8; 16], u16, [u8; 16], u16) {
    let mut next = p[20];
    for (i, kind) in ext.iter().enumerate() {
        assert_eq!(next, *kind, "extension header {i} changed");
        next = p[ETH_AND_IP6 + 8 * i];
    }
    let l4 = &p[ETH_AND_IP6 + 8 * ext.len()..];
    let (src, dst): ([u8; 16], [u8; 16]) = (p[22..38].try_into().unwrap(), p[38..54].try_into().unwrap());
    if next != SCTP {
        assert_eq!(l4_csum(&src, &dst, next, l4), 0, "bad transport checksum over the pseudo-header");
    }
    (src, u16::from_be_bytes([l4[0], l4[1]]), dst, u16::from_be_bytes([l4[2], l4[3]]))
}

fn datapath(proto: Protocol, backends: &[[u8; 16]]) -> TestDatapath {
    let mut t = TestDatapath::load();
    lb6::client_endpoint(&mut t);
    lb6::program(&mut t, proto, backends);
    t
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_service_packets_behind_extension_headers_are_translated_at_their_transport_header() {
    let chains: [&[u8]; 4] = [&[HOP_BY_HOP], &[DEST_OPTS], &[HOP_BY_HOP, DEST_OPTS], &[HOP_BY_HOP, ROUTING, DEST_OPTS]];
    for (proto, num) in [(Protocol::Tcp, TCP), (Protocol::Udp, UDP)] {
        for ext in chains {
            let t = datapath(proto, &[backend()]);
            let what = format!("{proto:?} behind {ext:?}");
            let sent = with_ext(ext, 0, lb6::packet(num, client(), 40000, vip(), 80, SYN));
            let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
            assert_eq!(rc, TC_ACT_OK, "{what}");
            assert_eq!(out.len(), sent.len(), "{what}");
            assert_eq!(parse(&out, ext), (client(), 40000, backend(), 8080), "{what}: not DNATed to the backend");

            // The reply, behind the same headers, comes from the Service.
            let reply = with_ext(ext, 0, lb6::packet(num, backend(), 8080, client(), 40000, SYN | ACK));
            let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
            assert_eq!(rc, TC_ACT_OK, "{what}");
            assert_eq!(parse(&out, ext), (vip(), 80, client(), 40000), "{what}: reply not from the Service");

            // The flow's next packet, without them, keeps its backend.
            let (_, out) = run(&t, pin::PROG_FROM_POD, &lb6::packet(num, client(), 40000, vip(), 80, ACK));
            assert_eq!(lb6::parse(&out).2, backend(), "{what}");
        }
    }

    // SCTP behind a hop-by-hop header, to another target port: the CRC32c
    // updated for the SCTP packet past the header, both ways.
    let (vip, backend) = (IpAddr::from(vip()), IpAddr::from(backend()));
    let mut t = TestDatapath::load();
    sctp::program(&mut t, &[(vip, sctp::PORT, FrontendKind::ClusterIp, vec![(backend, false)])], sctp::TARGET);
    let pod = IpAddr::from(client());
    let sent = with_ext(&[HOP_BY_HOP], 0, sctp::packet(pod, 40000, vip, sctp::PORT, 7, Crc::Valid, 0));
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
    assert_eq!(rc, TC_ACT_OK);
    parse(&out, &[HOP_BY_HOP]);
    assert_eq!(sctp::parse_past(&out, &sent, 8), (pod, 40000, backend, sctp::TARGET), "SCTP: not DNATed");
    let reply = with_ext(&[HOP_BY_HOP], 0, sctp::packet(backend, sctp::TARGET, pod, 40000, 9, Crc::Valid, 0));
    let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
    assert_eq!(rc, TC_ACT_OK);
    parse(&out, &[HOP_BY_HOP]);
    assert_eq!(sctp::parse_past(&out, &reply, 8), (vip, sctp::PORT, pod, 40000), "SCTP: reply not reversed");
}

/// A routing header with segments left: the destination is a waypoint
/// (the transport checksum covers the final one), so the packet is no
/// Service's here and passes as it is.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_packets_with_segments_left_are_not_translated() {
    let t = datapath(Protocol::Tcp, &[backend()]);
    let sent = with_ext(&[ROUTING], 1, lb6::packet(TCP, client(), 40000, vip(), 80, SYN));
    assert_eq!(run(&t, pin::PROG_FROM_POD, &sent), (TC_ACT_OK, sent.clone()));
}

/// A pod's fragmented UDP datagram to an IPv6 Service: every fragment is
/// DNATed alike (the later one by the ports its first recorded), and the
/// backend's fragmented reply is reversed alike as it enters the pod, the
/// datagram's checksum right both ways.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_fragmented_udp_of_a_pod_is_translated_fragment_by_fragment() {
    let t = datapath(Protocol::Udp, &[backend()]);
    let request = netdev6::fragments(client(), 40000, vip(), 80, 7).map(|p| {
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &p);
        assert_eq!(rc, TC_ACT_OK);
        out
    });
    assert_eq!(netdev6::reassemble(&request), (client(), 40000, backend(), 8080), "request not DNATed");
    let reply = netdev6::fragments(backend(), 8080, client(), 40000, 9).map(|p| {
        let (rc, out) = run(&t, pin::PROG_TO_POD, &p);
        assert_eq!(rc, TC_ACT_OK);
        out
    });
    assert_eq!(netdev6::reassemble(&reply), (vip(), 80, client(), 40000), "reply not reversed");
}

/// Without backends, a packet behind extension headers (or a fragment) is
/// dropped unanswered: an ICMPv6 error's quote would end before its ports.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_packets_behind_extension_headers_to_a_service_without_backends_are_dropped() {
    let t = datapath(Protocol::Tcp, &[]);
    let sent = with_ext(&[DEST_OPTS], 0, lb6::packet(TCP, client(), 40000, vip(), 80, SYN));
    assert_eq!(run(&t, pin::PROG_FROM_POD, &sent).0, TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::NoBackend), 1);
    let t = datapath(Protocol::Udp, &[]);
    let [first, _] = netdev6::fragments(client(), 40000, vip(), 80, 7);
    assert_eq!(run(&t, pin::PROG_FROM_POD, &first).0, TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::NoBackend), 1);
}

/// The uplink path reads packets with the same parser: a NodePort request
/// behind a hop-by-hop header is SNATed to a remote backend, and its reply
/// behind destination options comes back from the NodePort.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_node_port_packets_behind_extension_headers_are_translated() {
    use netdev6::{client, node, node_port, remote_pod};
    let mut t = TestDatapath::load();
    netdev6::program(&mut t, Protocol::Tcp, &[node_port(30081, vec![(remote_pod(), false)])]);
    let sent = with_ext(&[HOP_BY_HOP], 0, lb6::packet(TCP, client(), 50000, node(), 30081, SYN));
    let (_, out) = run(&t, pin::PROG_FROM_NETDEV, &sent);
    assert_eq!(parse(&out, &[HOP_BY_HOP]), (node(), 50000, remote_pod(), 8080), "not SNATed to the node");
    let reply = with_ext(&[DEST_OPTS], 0, lb6::packet(TCP, remote_pod(), 8080, node(), 50000, SYN | ACK));
    let (_, out) = run(&t, pin::PROG_FROM_NETDEV, &reply);
    assert_eq!(parse(&out, &[DEST_OPTS]), (node(), 30081, client(), 50000), "reply not reversed");
}

/// A local pod backend's fragmented reply to a NodePort client is
/// reversed fragment by fragment as it leaves the pod.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_fragmented_reply_of_a_local_backend_is_reversed_as_it_leaves_the_pod() {
    use netdev6::{client, local_pod, node, node_port};
    const TC_ACT_REDIRECT: u32 = 7;
    let mut t = TestDatapath::load();
    lb6::client_endpoint(&mut t);
    netdev6::program(&mut t, Protocol::Udp, &[node_port(30080, vec![(local_pod(), true)])]);
    let request = netdev6::fragments(client(), 50000, node(), 30080, 7).map(|p| run(&t, pin::PROG_FROM_NETDEV, &p).1);
    assert_eq!(netdev6::reassemble(&request), (client(), 50000, local_pod(), 8080));
    let reply = netdev6::fragments(local_pod(), 8080, client(), 50000, 9).map(|p| {
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &p);
        assert_eq!(rc, TC_ACT_REDIRECT, "from the node's address: straight to the uplink");
        out
    });
    assert_eq!(netdev6::reassemble(&reply), (node(), 30080, client(), 50000), "reply not from the NodePort");
}
