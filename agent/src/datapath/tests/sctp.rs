//! SCTP Services per packet, over IPv4 and IPv6, on crafted SCTP packets
//! whose CRC32c every check recomputes (over the SCTP packet as its IP
//! header bounds it). SCTP's CRC covers its ports but no pseudo-header:
//! where only addresses change (a ClusterIP on its own port, an externalIP
//! through the uplink) the SCTP packet must come out as it went in; where a
//! port changes (a targetPort other than the port, a NodePort, the SNAT
//! port a second client on the same source port gets, hairpin) its CRC must
//! be updated (`ebpf/src/sctp.rs`), as kube-proxy's NAT does; a CRC the
//! kernel left to the device (field 0) must stay 0. Without backends: ICMP
//! or ICMPv6 port unreachable, quoting the ports and verification tag.
//!
//! Upstream's `[Feature:SCTPConnectivity]` tests in
//! `test/e2e/network/networking.go` ("should function for pod-Service:
//! sctp", "... node-Service: sctp") dial a ClusterIP on port 95 whose
//! endpoints listen on 8082 (`e2enetwork.ClusterSCTPPort`,
//! `EndpointSCTPPort`), then its NodePort: both change the port, and the
//! ports here are theirs.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use weir_common::{DropReason, pin};

use crate::datapath::{
    lb::maps::LbMaps,
    lb::programmer::LbProgrammer,
    tests::{
        harness::{TC_ACT_OK, TestDatapath},
        lb::run,
        lb6,
    },
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

const TC_ACT_REDIRECT: u32 = 7;
const SCTP: u8 = 132;
/// The Service's port, and its pods' where they are one.
pub(super) const PORT: u16 = 95;
/// The pods' port where it differs.
pub(super) const TARGET: u16 = 8082;
const NODE_PORT: u16 = 30095;

/// One family's addresses. The pod on the test's veth is both the client
/// of ClusterIP flows and the local backend of NodePort ones.
struct Family {
    pod: IpAddr,
    vip: IpAddr,
    remote: IpAddr,
    node: IpAddr,
    gateway: IpAddr,
    outside: IpAddr,
    other: IpAddr,
}

/// CRC32c (Castagnoli, reflected), as SCTP computes it over its packet
/// with the checksum field zero.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

fn v4(a: [u8; 4]) -> IpAddr {
    Ipv4Addr::from(a).into()
}

fn v6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().unwrap().into()
}

fn families() -> [Family; 2] {
    [
        Family {
            pod: v4([10, 244, 1, 5]),
            vip: v4([10, 96, 0, 10]),
            remote: v4([10, 244, 2, 7]),
            node: v4([172, 30, 0, 11]),
            gateway: v4([10, 244, 1, 1]),
            outside: v4([172, 30, 0, 100]),
            other: v4([172, 30, 0, 101]),
        },
        Family {
            pod: v6("fd00:10:244:1::5"),
            vip: v6("fd00:10:96::a"),
            remote: v6("fd00:10:244:2::7"),
            node: v6("fd00:172:30::11"),
            gateway: v6("fd00:10:244:1::1"),
            outside: v6("fd00:172:30::100"),
            other: v6("fd00:172:30::101"),
        },
    ]
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What the CRC field of a crafted packet holds.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Crc {
    /// Computed, as a packet from a wire carries it.
    Valid,
    /// 0: the sender's kernel left it to the device (`CHECKSUM_PARTIAL`).
    Deferred,
}

/// Ethernet + IPv4 or IPv6 (by `src`'s family) + an SCTP common header
/// (verification tag `vtag`) and one DATA chunk, then `pad` bytes of
/// Ethernet padding past the datagram.
pub(super) fn packet(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, vtag: u32, crc: Crc, pad: usize) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&vtag.to_be_bytes());
    l4.extend_from_slice(&[0; 4]);
    // DATA: type 0, flags (B|E), length 20, TSN, stream, sequence, PPID, 4 bytes of data.
    l4.extend_from_slice(&[0, 3, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, b'p', b'i', b'n', b'g']);
    if crc == Crc::Valid {
        let c = crc32c(&l4);
        l4[8..12].copy_from_slice(&c.to_le_bytes());
    }
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, SCTP, 0, 0];
            ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[SCTP, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("one family per packet"),
    }
    p.extend_from_slice(&l4);
    p.extend(std::iter::repeat_n(0, pad));
    p
}

/// (source, source port, destination, destination port) of a translated
/// SCTP packet, after checking that the rest of its SCTP packet is
/// `sent`'s and that its CRC is valid (or still 0, if `sent`'s was).
fn parse(p: &[u8], sent: &[u8]) -> (IpAddr, u16, IpAddr, u16) {
    parse_past(p, sent, 0)
}

/// `parse` for an IPv6 packet with `ext` bytes of extension headers
/// before its SCTP packet (not walked: the caller checks them).
pub(super) fn parse_past(p: &[u8], sent: &[u8], ext: usize) -> (IpAddr, u16, IpAddr, u16) {
    let (src, dst, proto, l4_off, len) = match u16::from_be_bytes([p[12], p[13]]) {
        0x0800 => {
            let ip = &p[14..34];
            assert_eq!(ipv4_checksum(ip), 0, "bad IPv4 header checksum");
            let src = IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
            let dst = IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
            (src, dst, ip[9], 34, usize::from(u16::from_be_bytes([ip[2], ip[3]])) - 20)
        }
        0x86dd => {
            let src = IpAddr::from(<[u8; 16]>::try_from(&p[22..38]).unwrap());
            let dst = IpAddr::from(<[u8; 16]>::try_from(&p[38..54]).unwrap());
            let len = usize::from(u16::from_be_bytes([p[18], p[19]])) - ext;
            (src, dst, if ext == 0 { p[20] } else { SCTP }, 54 + ext, len)
        }
        other => panic!("ethertype {other:#x}"),
    };
    assert_eq!(proto, SCTP, "not SCTP");
    let l4 = &p[l4_off..l4_off + len];
    let was = &sent[l4_off..l4_off + len];
    assert_eq!((&l4[4..8], &l4[12..]), (&was[4..8], &was[12..]), "the SCTP packet past its ports changed");
    assert_eq!(&p[l4_off + len..], &sent[l4_off + len..], "the padding changed");
    if was[8..12] == [0; 4] {
        assert_eq!(&l4[8..12], &[0; 4], "a CRC left to the device was written");
    } else {
        let mut zeroed = l4.to_vec();
        zeroed[8..12].fill(0);
        assert_eq!(u32::from_le_bytes(l4[8..12].try_into().unwrap()), crc32c(&zeroed), "bad CRC32c");
    }
    (src, u16::from_be_bytes([l4[0], l4[1]]), dst, u16::from_be_bytes([l4[2], l4[3]]))
}

/// `addr:port` of `kind` over `backends` (address, local).
type Fe = (IpAddr, u16, FrontendKind, Vec<(IpAddr, bool)>);

/// Programs `fes`, their backends on `target`, with the node's addresses
/// of both families, and the pod on the test's veth under no policy.
pub(super) fn program(t: &mut TestDatapath, fes: &[Fe], target: u16) {
    lb6::client_endpoint(t);
    let proto = Protocol::Sctp;
    let want: BTreeMap<Frontend, FrontendState> = fes
        .iter()
        .map(|(addr, port, kind, backends)| {
            let fe = Frontend { addr: *addr, port: *port, proto, scope: Scope::Default };
            let state = FrontendState {
                service: "ns/diameter".into(),
                kind: *kind,
                backends: backends
                    .iter()
                    .map(|(a, local)| BackendRef {
                        addr: BackendAddr { addr: *a, port: target, proto },
                        local: *local,
                        terminating: false,
                    })
                    .collect(),
                affinity_timeout: 0,
                source_ranges: vec![],
                local_only: false,
            };
            (fe, state)
        })
        .collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    let [f4, f6] = families();
    let (IpAddr::V4(node4), IpAddr::V6(node6), IpAddr::V6(gateway6)) = (f4.node, f6.node, f6.gateway) else {
        unreachable!()
    };
    maps.set_node_addrs(node4, "10.244.1.0/24".parse().unwrap(), 1).unwrap();
    maps.set_uplink6(node6, 1).unwrap();
    maps.set_node_gateway6(gateway6).unwrap();
    let report = LbProgrammer::default().apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn sctp_cluster_ip_to_another_target_port_keeps_the_crc32c_valid() {
    for f in families() {
        for (crc, pad) in [(Crc::Valid, 0), (Crc::Deferred, 0), (Crc::Valid, 10)] {
            let case = format!("{} {crc:?} pad {pad}", f.pod);
            let mut t = TestDatapath::load();
            program(&mut t, &[(f.vip, PORT, FrontendKind::ClusterIp, vec![(f.remote, false)])], TARGET);

            let sent = packet(f.pod, 40000, f.vip, PORT, 7, crc, pad);
            let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
            assert_eq!(rc, TC_ACT_OK, "{case}");
            assert_eq!(parse(&out, &sent), (f.pod, 40000, f.remote, TARGET), "{case}: not DNATed");

            // The reply, entering the client's veth, comes from the Service.
            let reply = packet(f.remote, TARGET, f.pod, 40000, 9, crc, pad);
            let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
            assert_eq!(rc, TC_ACT_OK, "{case}");
            assert_eq!(parse(&out, &reply), (f.vip, PORT, f.pod, 40000), "{case}: reply not from the Service");

            // The association's next packet, through its conntrack entry.
            let next = packet(f.pod, 40000, f.vip, PORT, 7, crc, pad);
            assert_eq!(parse(&run(&t, pin::PROG_FROM_POD, &next).1, &next).2, f.remote, "{case}");
        }
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn sctp_pod_reaching_itself_through_its_service_keeps_the_crc32c_valid() {
    for f in families() {
        let mut t = TestDatapath::load();
        program(&mut t, &[(f.vip, PORT, FrontendKind::ClusterIp, vec![(f.pod, true)])], TARGET);

        // Out: to itself on TARGET, from the gateway, back out of its veth.
        let sent = packet(f.pod, 40000, f.vip, PORT, 7, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
        assert_eq!(rc, TC_ACT_REDIRECT, "{}", f.pod);
        assert_eq!(parse(&out, &sent), (f.gateway, 40000, f.pod, TARGET), "{}", f.pod);
        // Its reply to the gateway goes back in from the Service.
        let reply = packet(f.pod, TARGET, f.gateway, 40000, 9, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &reply);
        assert_eq!(rc, TC_ACT_REDIRECT, "{}", f.pod);
        assert_eq!(parse(&out, &reply), (f.vip, PORT, f.pod, 40000), "{}", f.pod);
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn sctp_node_port_to_local_and_remote_backends_keeps_the_crc32c_valid() {
    for f in families() {
        let mut t = TestDatapath::load();
        program(
            &mut t,
            &[
                (f.node, NODE_PORT, FrontendKind::NodePort, vec![(f.pod, true)]),
                (f.node, NODE_PORT + 1, FrontendKind::NodePort, vec![(f.remote, false)]),
            ],
            TARGET,
        );

        // A local backend: the port changes with the address.
        let sent = packet(f.outside, 50000, f.node, NODE_PORT, 11, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &sent);
        assert_eq!(rc, TC_ACT_OK, "{}", f.pod);
        assert_eq!(parse(&out, &sent), (f.outside, 50000, f.pod, TARGET), "{}: not DNATed", f.pod);
        // Its reply, leaving the pod, comes from the NodePort.
        let reply = packet(f.pod, TARGET, f.outside, 50000, 13, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &reply);
        assert_eq!(rc, TC_ACT_REDIRECT, "{}", f.pod);
        assert_eq!(parse(&out, &reply), (f.node, NODE_PORT, f.outside, 50000), "{}: reply", f.pod);

        // A remote backend: SNAT to the node, and back.
        let sent = packet(f.outside, 50000, f.node, NODE_PORT + 1, 11, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &sent);
        assert_eq!(rc, TC_ACT_REDIRECT, "{}", f.pod);
        assert_eq!(parse(&out, &sent), (f.node, 50000, f.remote, TARGET), "{}: not SNATed", f.pod);
        let reply = packet(f.remote, TARGET, f.node, 50000, 13, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &reply);
        assert_eq!(rc, TC_ACT_REDIRECT, "{}", f.pod);
        assert_eq!(parse(&out, &reply), (f.node, NODE_PORT + 1, f.outside, 50000), "{}: remote reply", f.pod);

        // A second client on the same source port: its source port changes
        // too (the reply tuple is taken), both ports at once.
        let sent = packet(f.other, 50000, f.node, NODE_PORT + 1, 17, Crc::Valid, 0);
        let (src, sport, dst, dport) = parse(&run(&t, pin::PROG_FROM_NETDEV, &sent).1, &sent);
        assert_eq!((src, dst, dport), (f.node, f.remote, TARGET), "{}", f.pod);
        assert_ne!(sport, 50000, "{}: the reply tuple is taken", f.pod);
        let reply = packet(f.remote, TARGET, f.node, sport, 19, Crc::Valid, 0);
        let out = run(&t, pin::PROG_FROM_NETDEV, &reply).1;
        assert_eq!(parse(&out, &reply), (f.node, NODE_PORT + 1, f.other, 50000), "{}", f.pod);
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn sctp_cluster_ip_on_its_own_port_changes_only_addresses_and_rejects_without_backends() {
    for f in families() {
        let mut t = TestDatapath::load();
        program(&mut t, &[(f.vip, PORT, FrontendKind::ClusterIp, vec![(f.remote, false)])], PORT);
        let sent = packet(f.pod, 40000, f.vip, PORT, 7, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
        assert_eq!(rc, TC_ACT_OK, "{}", f.pod);
        assert_eq!(parse(&out, &sent), (f.pod, 40000, f.remote, PORT), "{}", f.pod);
        let sctp_at = if f.pod.is_ipv4() { 34 } else { 54 };
        assert_eq!(&out[sctp_at..], &sent[sctp_at..], "{}: more than the addresses changed", f.pod);
        let reply = packet(f.remote, PORT, f.pod, 40000, 9, Crc::Valid, 0);
        let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
        assert_eq!(rc, TC_ACT_OK, "{}", f.pod);
        assert_eq!(parse(&out, &reply), (f.vip, PORT, f.pod, 40000), "{}", f.pod);
        assert_eq!(&out[sctp_at..], &reply[sctp_at..], "{}: more than the addresses changed", f.pod);

        // Without backends: port unreachable from the Service, back out of
        // the veth, quoting the IP header, the ports and the verification tag.
        let mut t = TestDatapath::load();
        program(&mut t, &[(f.vip, PORT, FrontendKind::ClusterIp, vec![])], PORT);
        let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
        assert_eq!(rc, TC_ACT_REDIRECT, "{}: back out of the veth", f.pod);
        if f.pod.is_ipv4() {
            assert_eq!(out[23], 1, "ICMP");
            assert_eq!((&out[26..30], &out[30..34]), (&sent[30..34], &sent[26..30]), "from the Service to the pod");
            assert_eq!(&out[34..36], &[3, 3], "destination unreachable, port unreachable");
            assert_eq!(ipv4_checksum(&out[34..]), 0, "bad ICMP checksum");
            assert_eq!(&out[42..], &sent[14..14 + 28]);
        } else {
            assert_eq!(out[20], 58, "ICMPv6");
            let (src, dst): ([u8; 16], [u8; 16]) = (out[22..38].try_into().unwrap(), out[38..54].try_into().unwrap());
            assert_eq!((IpAddr::from(src), IpAddr::from(dst)), (f.vip, f.pod));
            assert_eq!((out[54], out[55]), (1, 4), "destination unreachable, port unreachable");
            assert_eq!(lb6::l4_csum(&src, &dst, 58, &out[54..]), 0, "bad ICMPv6 checksum");
            assert_eq!(&out[62..], &sent[14..14 + 48]);
        }
        assert_eq!(t.count(DropReason::NoBackend), 1, "{}", f.pod);
    }
}

/// Uplink clients of an externalIP on its own port: DNAT to a local pod
/// backend (its reply reversed as it leaves the pod), SNAT to the node for
/// a remote one on the client's own port (its reply reversed as it comes
/// back); the SCTP packets as they were.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn sctp_through_the_uplink_to_local_and_remote_backends_on_their_own_port() {
    for f in families() {
        let external = if f.pod.is_ipv4() { v4([192, 0, 2, 7]) } else { v6("2001:db8:100::7") };
        for (backend, local) in [(f.pod, true), (f.remote, false)] {
            let case = format!("{backend} local {local}");
            let mut t = TestDatapath::load();
            program(&mut t, &[(external, PORT, FrontendKind::ExternalIp, vec![(backend, local)])], PORT);
            let sent = packet(f.outside, 50000, external, PORT, 11, Crc::Valid, 0);
            let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &sent);
            let (rc_reply, out, reply) = if local {
                assert_eq!(rc, TC_ACT_OK, "{case}");
                assert_eq!(parse(&out, &sent), (f.outside, 50000, backend, PORT), "{case}: not DNATed");
                // Leaving the local pod: from the externalIP.
                let reply = packet(backend, PORT, f.outside, 50000, 13, Crc::Valid, 0);
                let (rc, out) = run(&t, pin::PROG_FROM_POD, &reply);
                (rc, out, reply)
            } else {
                assert_eq!(rc, TC_ACT_REDIRECT, "{case}: back out of the uplink");
                assert_eq!(parse(&out, &sent), (f.node, 50000, backend, PORT), "{case}: not SNATed");
                // Coming back through the uplink: to the client.
                let reply = packet(backend, PORT, f.node, 50000, 13, Crc::Valid, 0);
                let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &reply);
                (rc, out, reply)
            };
            // A remote backend's reply leaves by the uplink it came in by.
            assert_eq!(rc_reply, if local { TC_ACT_OK } else { TC_ACT_REDIRECT }, "{case}");
            assert_eq!(parse(&out, &reply), (external, PORT, f.outside, 50000), "{case}: reply not reversed");
        }
    }
}
