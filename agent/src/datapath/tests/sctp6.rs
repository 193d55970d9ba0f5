//! SCTP over IPv6 Services, per packet (`lb::tc6`, `netdev6`), on crafted
//! SCTP packets whose ports stay as they are: only the addresses change
//! (SCTP's CRC32c covers no pseudo-header), so the SCTP packet itself,
//! checksum included, must come out byte for byte as it went in. Changed
//! ports, over both families, are `sctp.rs`'s. A pod client's ClusterIP flow (DNAT, conntrack, reply
//! reversal, ICMPv6 port unreachable without backends), and uplink
//! clients of an externalIP with a local and a remote backend.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use weir_common::{DropReason, pin};

use crate::datapath::{
    lb::maps::LbMaps,
    lb::programmer::LbProgrammer,
    tests::{
        harness::{TC_ACT_OK, TestDatapath},
        lb::run,
        lb6::{self, ip, l4_csum},
        netdev6,
    },
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

const TC_ACT_REDIRECT: u32 = 7;
const SCTP: u8 = 132;
const ICMPV6: u8 = 58;
/// Diameter's port: an SCTP Service's port and its target are one.
const PORT: u16 = 3868;
const ETH_AND_IP6: usize = 14 + 40;

/// CRC32c (Castagnoli, reflected), as SCTP computes it over its packet
/// with the checksum field zero.
pub(super) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// Ethernet + IPv6 + an SCTP common header (verification tag `vtag`) and
/// one DATA chunk, with its CRC32c.
pub(super) fn packet(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, vtag: u32) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&vtag.to_be_bytes());
    l4.extend_from_slice(&[0; 4]);
    // DATA: type 0, flags (B|E), length 20, TSN, stream, sequence, PPID, 4 bytes of data.
    l4.extend_from_slice(&[0, 3, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, b'p', b'i', b'n', b'g']);
    let c = crc32c(&l4);
    l4[8..12].copy_from_slice(&c.to_le_bytes());
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[SCTP, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&l4);
    p
}

/// (source, destination) of an IPv6 SCTP packet, after checking that its
/// SCTP packet is `sent`'s with the ports `ports`, CRC32c valid.
fn parse(p: &[u8], sent: &[u8], ports: (u16, u16)) -> ([u8; 16], [u8; 16]) {
    assert_eq!(&p[12..14], &[0x86, 0xdd], "not IPv6");
    assert_eq!(p[20], SCTP);
    let l4 = &p[ETH_AND_IP6..];
    assert_eq!((u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])), ports);
    assert_eq!(&l4[4..], &sent[ETH_AND_IP6 + 4..], "the SCTP packet past its ports changed");
    let mut zeroed = l4.to_vec();
    zeroed[8..12].fill(0);
    assert_eq!(crc32c(&zeroed).to_le_bytes(), l4[8..12], "bad CRC32c");
    (p[22..38].try_into().unwrap(), p[38..54].try_into().unwrap())
}

/// One SCTP frontend `addr:PORT` of `kind` over `backends` (address,
/// local) on `PORT`, with the node's IPv6 uplink written.
pub(super) fn program(t: &mut TestDatapath, addr: [u8; 16], kind: FrontendKind, backends: &[([u8; 16], bool)]) {
    let proto = Protocol::Sctp;
    let fe = Frontend { addr: IpAddr::from(addr), port: PORT, proto, scope: Scope::Default };
    let state = FrontendState {
        service: "ns/diameter".into(),
        kind,
        backends: backends
            .iter()
            .map(|(a, local)| BackendRef {
                addr: BackendAddr { addr: IpAddr::from(*a), port: PORT, proto },
                local: *local,
                terminating: false,
            })
            .collect(),
        affinity_timeout: 0,
        source_ranges: vec![],
        local_only: false,
    };
    let want: BTreeMap<_, _> = [(fe, state)].into_iter().collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    maps.set_uplink6(Ipv6Addr::from(netdev6::node()), 1).unwrap();
    let report = LbProgrammer::default().apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_sctp_cluster_ip_dnat_and_reverse_nat_keep_the_crc32c() {
    let (client, vip, backend) = (lb6::client(), lb6::vip(), lb6::backend());
    let mut t = TestDatapath::load();
    lb6::client_endpoint(&mut t);
    program(&mut t, vip, FrontendKind::ClusterIp, &[(backend, false)]);

    let sent = packet(client, 40000, vip, PORT, 7);
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(parse(&out, &sent, (40000, PORT)), (client, backend), "not DNATed to the backend");

    // The reply, entering the client's veth, comes from the Service.
    let reply = packet(backend, PORT, client, 40000, 9);
    let (rc, out) = run(&t, pin::PROG_TO_POD, &reply);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(parse(&out, &reply, (PORT, 40000)), (vip, client), "reply not from the Service");

    // The flow's next packet keeps its backend; the association's
    // conntrack entries are there.
    let next = packet(client, 40000, vip, PORT, 7);
    assert_eq!(parse(&run(&t, pin::PROG_FROM_POD, &next).1, &next, (40000, PORT)).1, backend);

    // Without backends: ICMPv6 port unreachable from the Service, quoting
    // the ports and the verification tag.
    let mut t = TestDatapath::load();
    lb6::client_endpoint(&mut t);
    program(&mut t, vip, FrontendKind::ClusterIp, &[]);
    let (rc, out) = run(&t, pin::PROG_FROM_POD, &sent);
    assert_eq!(rc, TC_ACT_REDIRECT, "back out of the veth");
    assert_eq!(out[20], ICMPV6);
    let (src, dst): ([u8; 16], [u8; 16]) = (out[22..38].try_into().unwrap(), out[38..54].try_into().unwrap());
    assert_eq!((src, dst), (vip, client));
    let icmp = &out[ETH_AND_IP6..];
    assert_eq!((icmp[0], icmp[1]), (1, 4), "destination unreachable, port unreachable");
    assert_eq!(l4_csum(&src, &dst, ICMPV6, icmp), 0, "bad ICMPv6 checksum");
    assert_eq!(&icmp[8..], &sent[14..14 + 48]);
    assert_eq!(t.count(DropReason::NoBackend), 1);
}

/// Uplink clients of an IPv6 externalIP over SCTP: DNAT to a local pod
/// backend (its reply reversed as it leaves the pod), SNAT to the node for
/// a remote one on the client's own port (its reply reversed as it comes
/// back), every SCTP packet as it was.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_sctp_through_the_uplink_to_local_and_remote_backends() {
    let (client, node) = (netdev6::client(), netdev6::node());
    let external = ip("2001:db8:100::7");
    for (backend, local) in [(netdev6::local_pod(), true), (netdev6::remote_pod(), false)] {
        let mut t = TestDatapath::load();
        lb6::client_endpoint(&mut t);
        program(&mut t, external, FrontendKind::ExternalIp, &[(backend, local)]);
        let sent = packet(client, 50000, external, PORT, 11);
        let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &sent);
        let reply = if local {
            assert_eq!(rc, TC_ACT_OK);
            assert_eq!(parse(&out, &sent, (50000, PORT)), (client, backend), "not DNATed to the local pod");
            // Leaving the local pod: from the externalIP.
            let reply = packet(backend, PORT, client, 50000, 13);
            let (rc, out) = run(&t, pin::PROG_FROM_POD, &reply);
            assert_eq!(rc, TC_ACT_OK);
            (out, reply)
        } else {
            assert_eq!(rc, TC_ACT_REDIRECT, "back out of the uplink");
            assert_eq!(parse(&out, &sent, (50000, PORT)), (node, backend), "not SNATed to the node");
            // Coming back through the uplink: to the client.
            let reply = packet(backend, PORT, node, 50000, 13);
            let (rc, out) = run(&t, pin::PROG_FROM_NETDEV, &reply);
            assert_eq!(rc, TC_ACT_REDIRECT);
            (out, reply)
        };
        assert_eq!(parse(&reply.0, &reply.1, (PORT, 50000)), (external, client), "local {local}: reply not reversed");
    }
}
