//! IPv6 at a pod's veth, with BPF_PROG_TEST_RUN on crafted packets: policy
//! is enforced for IPv4 only so far, so a pod under policy (or pending it)
//! gets no IPv6 but neighbour discovery, and a pod under none gets all of
//! it (issue #12: fail closed).
use weir_common::{DropReason, EndpointInfo, EndpointKey, pin};

use crate::datapath::tests::{
    harness::{LOOPBACK, TC_ACT_OK, TestDatapath},
    lb::{from_pod, to_pod},
};

const TC_ACT_SHOT: u32 = 2;
const POD_V4: [u8; 4] = [10, 244, 1, 5];
const POD: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5];
const PEER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const ECHO_REQUEST: u8 = 128;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// Ethernet + IPv6 + 8 bytes of `next_header` payload (a UDP header, or an
/// ICMPv6 header of `icmp_type`); checksums are not read by the programs.
fn packet(next_header: u8, icmp_type: u8, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&0x86ddu16.to_be_bytes());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&8u16.to_be_bytes());
    p.extend_from_slice(&[next_header, 255]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    if next_header == ICMPV6 {
        p.extend_from_slice(&[icmp_type, 0, 0, 0, 0, 0, 0, 0]);
    } else {
        p.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
    }
    p
}

fn udp(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    packet(UDP, 0, src, dst)
}

fn icmp(icmp_type: u8, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    packet(ICMPV6, icmp_type, src, dst)
}

/// The pod (IPv4 and `POD`) on the test's veth, as weir-cni's ADD leaves it.
fn endpoint(t: &mut TestDatapath, flags: u32) {
    set_ipv6(t, Some(POD));
    t.dp.endpoints()
        .unwrap()
        .insert(
            EndpointKey { ifindex: LOOPBACK },
            EndpointInfo::new(POD_V4, EndpointInfo::FLAG_VERIFY_SOURCE | flags),
            0,
        )
        .unwrap();
}

fn set_ipv6(t: &mut TestDatapath, ip: Option<[u8; 16]>) {
    let map = t.dp.ebpf_mut().map_mut(pin::MAP_ENDPOINTS6).unwrap();
    let mut map: aya::maps::HashMap<_, EndpointKey, [u8; 16]> = aya::maps::HashMap::try_from(map).unwrap();
    match ip {
        Some(ip) => map.insert(EndpointKey { ifindex: LOOPBACK }, ip, 0).unwrap(),
        None => map.remove(&EndpointKey { ifindex: LOOPBACK }).unwrap(),
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_of_a_pod_under_no_policy_passes_both_ways() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, 0);
    assert_eq!(from_pod(&t, &udp(POD, PEER)), TC_ACT_OK);
    assert_eq!(from_pod(&t, &icmp(ECHO_REQUEST, POD, PEER)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &udp(PEER, POD)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &icmp(ECHO_REQUEST, PEER, POD)), TC_ACT_OK);
    assert_eq!(t.count(DropReason::Ipv6UnderPolicy), 0);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_of_a_pod_under_policy_is_dropped_with_its_own_reason() {
    for flags in [EndpointInfo::FLAG_INGRESS_ENFORCED, EndpointInfo::FLAG_EGRESS_ENFORCED, EndpointInfo::FLAGS_ENFORCED]
    {
        let mut t = TestDatapath::load();
        endpoint(&mut t, flags);
        // Whichever direction the policy isolates, IPv6 goes neither way:
        // replies of an unjudged flow would be as unjudged as the flow.
        assert_eq!(from_pod(&t, &udp(POD, PEER)), TC_ACT_SHOT, "flags {flags:#x}");
        assert_eq!(from_pod(&t, &icmp(ECHO_REQUEST, POD, PEER)), TC_ACT_SHOT);
        assert_eq!(to_pod(&t, &udp(PEER, POD)), TC_ACT_SHOT);
        assert_eq!(t.count(DropReason::Ipv6UnderPolicy), 3);
        // Neighbour discovery still passes: the pod reaches its gateway.
        assert_eq!(from_pod(&t, &icmp(NEIGHBOUR_SOLICITATION, POD, PEER)), TC_ACT_OK);
        assert_eq!(to_pod(&t, &icmp(NEIGHBOUR_ADVERTISEMENT, PEER, POD)), TC_ACT_OK);
        assert_eq!(t.count(DropReason::Ipv6UnderPolicy), 3);
    }
    assert_eq!(DropReason::Ipv6UnderPolicy.name(), "ipv6-under-policy");
    assert!(DropReason::Ipv6UnderPolicy.describe().starts_with("IPv6 under NetworkPolicy not supported yet"));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_fails_closed_while_pending_and_without_an_endpoint() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_POLICY_PENDING);
    assert_eq!(from_pod(&t, &udp(POD, PEER)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &udp(PEER, POD)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyPending), 2);
    assert_eq!(from_pod(&t, &icmp(NEIGHBOUR_SOLICITATION, POD, PEER)), TC_ACT_OK);

    // A veth without an endpoint entry: nothing leaves the pod but
    // neighbour discovery, as for IPv4 (nothing but ARP).
    t.dp.endpoints().unwrap().remove(&EndpointKey { ifindex: LOOPBACK }).unwrap();
    assert_eq!(from_pod(&t, &udp(POD, PEER)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::UnknownEndpoint), 1);
    assert_eq!(from_pod(&t, &icmp(NEIGHBOUR_SOLICITATION, POD, PEER)), TC_ACT_OK);
    // (A truncated IPv6 header, which the programs drop as malformed, cannot
    // be run here: BPF_PROG_TEST_RUN refuses one before the program runs.)
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_within_the_link_passes_under_policy_and_nothing_routed_does() {
    const HOP_BY_HOP: u8 = 0;
    const MLD_ALL_ROUTERS: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    const POD_LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    const HOST_LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const SITE_MULTICAST: [u8; 16] = [0xff, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAGS_ENFORCED);
    // What a pod's kernel sends on its own: an MLD report (behind a
    // hop-by-hop header) to a link-local group, link-local unicast.
    assert_eq!(from_pod(&t, &packet(HOP_BY_HOP, 0, POD_LINK_LOCAL, MLD_ALL_ROUTERS)), TC_ACT_OK);
    assert_eq!(from_pod(&t, &udp(POD_LINK_LOCAL, HOST_LINK_LOCAL)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &icmp(ECHO_REQUEST, HOST_LINK_LOCAL, POD_LINK_LOCAL)), TC_ACT_OK);
    assert_eq!(t.count(DropReason::Ipv6UnderPolicy), 0);
    // A wider multicast scope is judged as any IPv6; a routed address
    // from a link-local source is not the pod's own source.
    assert_eq!(from_pod(&t, &packet(HOP_BY_HOP, 0, POD, SITE_MULTICAST)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::Ipv6UnderPolicy), 1);
    assert_eq!(from_pod(&t, &udp(POD_LINK_LOCAL, PEER)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::SourceSpoofed), 1);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_pod_sends_ipv6_from_its_own_address_only() {
    const OTHER_POD: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 6];
    let mut t = TestDatapath::load();
    endpoint(&mut t, 0);
    assert_eq!(from_pod(&t, &udp(POD, PEER)), TC_ACT_OK);
    // Another pod's address as source: dropped, as a spoofed IPv4 source is.
    assert_eq!(from_pod(&t, &udp(OTHER_POD, PEER)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::SourceSpoofed), 1);
    // Replies to it are not the pod's to check.
    assert_eq!(to_pod(&t, &udp(PEER, POD)), TC_ACT_OK);
    // A pod with no IPv6 address (an IPv4-only node) sends none beyond
    // the link.
    set_ipv6(&mut t, None);
    assert_eq!(from_pod(&t, &udp(POD, PEER)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::SourceSpoofed), 2);
    assert_eq!(from_pod(&t, &icmp(NEIGHBOUR_SOLICITATION, POD, PEER)), TC_ACT_OK);
}
