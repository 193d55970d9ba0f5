//! IPv6 at a pod's veth, with BPF_PROG_TEST_RUN on crafted packets: the
//! source check and NetworkPolicy as for IPv4 (the IPv6 ipcache and policy
//! conntrack), ports behind extension headers and in later fragments, and
//! what always passes (neighbour discovery, link-local, Packet Too Big).
use weir_common::{
    DropReason, EndpointInfo, EndpointKey, pin,
    policy::{DIR_EGRESS, DIR_INGRESS, PolicyKey},
};

use crate::datapath::{
    policy::maps::PolicyMaps as _,
    tests::{
        harness::{LOOPBACK, TC_ACT_OK, TestDatapath},
        lb::{from_pod, to_pod},
    },
};

const TC_ACT_SHOT: u32 = 2;
const POD_V4: [u8; 4] = [10, 244, 1, 5];
pub(super) const POD: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5];
pub(super) const PEER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];
pub(super) const STRANGER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 8];
/// In no ipCache entry but `::/0`.
const OUTSIDE: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub(super) const ID_FRIEND: u32 = 300;
const ID_STRANGER: u32 = 301;
const ID_WORLD: u32 = 256;
pub(super) const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const HOP_BY_HOP: u8 = 0;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
pub(super) const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PACKET_TOO_BIG: u8 = 2;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const ETH_AND_IP6: usize = 14 + 40;

/// Ethernet + IPv6 + a transport header: TCP (20 bytes, `flags`), UDP or
/// ICMPv6 (8 bytes; for ICMPv6, `flags` is the type). Checksums are not
/// read by the programs.
fn packet(proto: u8, flags: u8, src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    match proto {
        TCP => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
            l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        }
        ICMPV6 => l4.extend_from_slice(&[flags, 0, 0, 0, 0, 0, 0, 0]),
        _ => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0, 8, 0, 0]);
        }
    }
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&0x86ddu16.to_be_bytes());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[proto, 255]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&l4);
    p
}

fn udp(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    packet(UDP, 0, src, 12345, dst, 53)
}

pub(super) fn tcp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, flags: u8) -> Vec<u8> {
    packet(TCP, flags, src, sport, dst, dport)
}

fn icmp(icmp_type: u8, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    packet(ICMPV6, icmp_type, src, 0, dst, 0)
}

/// An echo request or reply (`icmp_type`) with identifier `id`.
fn echo(icmp_type: u8, id: u16, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut p = icmp(icmp_type, src, dst);
    p[ETH_AND_IP6 + 4..ETH_AND_IP6 + 6].copy_from_slice(&id.to_be_bytes());
    p
}

/// Inserts 8-byte option headers of the given types (in order) between the
/// IPv6 header and what `p` carried.
fn with_ext(types: &[u8], mut p: Vec<u8>) -> Vec<u8> {
    for kind in types.iter().rev() {
        let inner = p[ETH_AND_IP6 - 34];
        p[ETH_AND_IP6 - 34] = *kind;
        // Next header, length 0 (8 bytes), a PadN option filling the rest.
        p.splice(ETH_AND_IP6..ETH_AND_IP6, [inner, 0, 1, 4, 0, 0, 0, 0]);
    }
    grow_payload(&mut p, 8 * types.len());
    p
}

/// `p` as fragment `index` (8-byte units) of datagram `id`; a later
/// fragment keeps only the bytes past the transport header's first 8.
fn fragment(id: u32, index: u16, more: bool, mut p: Vec<u8>) -> Vec<u8> {
    let inner = p[ETH_AND_IP6 - 34];
    p[ETH_AND_IP6 - 34] = FRAGMENT;
    let offset = (index << 3) | u16::from(more);
    let mut hdr = vec![inner, 0];
    hdr.extend_from_slice(&offset.to_be_bytes());
    hdr.extend_from_slice(&id.to_be_bytes());
    p.splice(ETH_AND_IP6..ETH_AND_IP6, hdr);
    grow_payload(&mut p, 8);
    if index > 0 {
        // What follows the first fragment: arbitrary payload.
        let at = ETH_AND_IP6 + 8;
        p.truncate(at);
        p.extend_from_slice(&[0xab; 16]);
        let len = (p.len() - ETH_AND_IP6) as u16;
        p[18..20].copy_from_slice(&len.to_be_bytes());
    }
    p
}

fn grow_payload(p: &mut [u8], by: usize) {
    let len = u16::from_be_bytes([p[18], p[19]]) + by as u16;
    p[18..20].copy_from_slice(&len.to_be_bytes());
}

/// The ipcache of both families: `PEER` a friend, `STRANGER` not,
/// everything else `world` (an identity of its own here).
pub(super) fn identities(t: &mut TestDatapath) {
    for (net, id) in [
        ("0.0.0.0/0", ID_WORLD),
        ("::/0", ID_WORLD),
        ("fd00:0:0:2::7/128", ID_FRIEND),
        ("fd00:0:0:2::8/128", ID_STRANGER),
    ] {
        t.dp.set_identity(net.parse().unwrap(), id).unwrap();
    }
}

pub(super) fn rule(t: &mut TestDatapath, dir: u8, identity: u32, proto: u8, port: u16, slot: u32) {
    let key = PolicyKey { ifindex: LOOPBACK, identity, dir, proto, port: port.to_be() };
    t.dp.set_rule((PolicyKey::PREFIX_FULL, key), slot).unwrap();
}

/// The pod (IPv4 and `POD`) on the test's veth, as weir-cni's ADD leaves it.
pub(super) fn endpoint(t: &mut TestDatapath, flags: u32) {
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
fn ipv6_is_judged_by_the_pods_policy_as_ipv4_is() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_INGRESS_ENFORCED);
    identities(&mut t);
    rule(&mut t, DIR_INGRESS, ID_FRIEND, TCP, 80, 1);
    // A new connection from a friend to port 80: in, and its flow is
    // tracked both ways.
    assert_eq!(to_pod(&t, &tcp(PEER, 40000, POD, 80, SYN)), TC_ACT_OK);
    assert_eq!(from_pod(&t, &tcp(POD, 80, PEER, 40000, SYN | ACK)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &tcp(PEER, 40000, POD, 80, ACK)), TC_ACT_OK);
    // Another port, another peer, a peer the ipcache does not know
    // (`world`), a protocol no rule names: out.
    assert_eq!(to_pod(&t, &tcp(PEER, 40001, POD, 81, SYN)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &tcp(STRANGER, 40002, POD, 80, SYN)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &tcp(OUTSIDE, 40003, POD, 80, SYN)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &udp(PEER, POD)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &icmp(ECHO_REQUEST, PEER, POD)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyIngress), 5);
    // A non-SYN packet of a flow never allowed is judged as new.
    assert_eq!(to_pod(&t, &tcp(STRANGER, 40004, POD, 80, ACK)), TC_ACT_SHOT);
    // The pod may still send (egress is not isolated); the reply comes
    // back on the flow.
    assert_eq!(from_pod(&t, &udp(POD, STRANGER)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(UDP, 0, STRANGER, 53, POD, 12345)), TC_ACT_OK);
    assert_eq!(t.count(DropReason::PolicyIngress), 6);
    // Neighbour discovery passes whatever the policy.
    assert_eq!(from_pod(&t, &icmp(NEIGHBOUR_SOLICITATION, POD, STRANGER)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &icmp(NEIGHBOUR_ADVERTISEMENT, STRANGER, POD)), TC_ACT_OK);
    assert_eq!(t.count(DropReason::Ipv6UnderPolicy), 0);
}

/// Each ping is a flow of its own (its echo identifier): its replies pass,
/// and once the policy no longer allows the peer, a new ping is judged
/// anew while the old one's session lives on.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_pings_are_tracked_per_echo_identifier() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAGS_ENFORCED);
    identities(&mut t);
    let any = |identity, dir| PolicyKey { ifindex: LOOPBACK, identity, dir, proto: 0, port: 0 };
    t.dp.set_rule((PolicyKey::PREFIX_ANY_PROTO, any(ID_FRIEND, DIR_INGRESS)), 1).unwrap();
    assert_eq!(to_pod(&t, &echo(ECHO_REQUEST, 7, PEER, POD)), TC_ACT_OK);
    // The reply leaves the pod although egress allows nothing.
    assert_eq!(from_pod(&t, &echo(ECHO_REPLY, 7, POD, PEER)), TC_ACT_OK);
    t.dp.delete_rule((PolicyKey::PREFIX_ANY_PROTO, any(ID_FRIEND, DIR_INGRESS))).unwrap();
    assert_eq!(to_pod(&t, &echo(ECHO_REQUEST, 7, PEER, POD)), TC_ACT_OK, "the session lives on");
    assert_eq!(to_pod(&t, &echo(ECHO_REQUEST, 8, PEER, POD)), TC_ACT_SHOT, "a new ping is judged");
    // A reply nobody asked for is a new flow too.
    assert_eq!(from_pod(&t, &echo(ECHO_REPLY, 9, POD, PEER)), TC_ACT_SHOT);
    assert_eq!((t.count(DropReason::PolicyIngress), t.count(DropReason::PolicyEgress)), (1, 1));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_egress_and_the_families_never_mix() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_EGRESS_ENFORCED);
    identities(&mut t);
    rule(&mut t, DIR_EGRESS, ID_FRIEND, UDP, 53, 1);
    assert_eq!(from_pod(&t, &udp(POD, PEER)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(UDP, 0, PEER, 53, POD, 12345)), TC_ACT_OK);
    assert_eq!(from_pod(&t, &udp(POD, STRANGER)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyEgress), 1);
    // The IPv4 ipcache says everything is a friend; the IPv6 one still
    // knows OUTSIDE as nothing (`world`), and the reverse.
    t.dp.set_identity("0.0.0.0/0".parse().unwrap(), ID_FRIEND).unwrap();
    assert_eq!(from_pod(&t, &udp(POD, OUTSIDE)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyEgress), 2);
    t.dp.set_identity("::/0".parse().unwrap(), ID_FRIEND).unwrap();
    assert_eq!(from_pod(&t, &udp(POD, OUTSIDE)), TC_ACT_OK);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_ports_are_found_behind_extension_headers_and_in_later_fragments() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_EGRESS_ENFORCED);
    identities(&mut t);
    rule(&mut t, DIR_EGRESS, ID_FRIEND, UDP, 53, 1);
    // Behind hop-by-hop and destination options headers.
    assert_eq!(from_pod(&t, &with_ext(&[HOP_BY_HOP, DEST_OPTS], udp(POD, PEER))), TC_ACT_OK);
    assert_eq!(from_pod(&t, &with_ext(&[DEST_OPTS], packet(UDP, 0, POD, 12345, PEER, 54))), TC_ACT_SHOT);
    // A fragmented datagram to the friend: its first fragment carries the
    // ports, the later ones get them from it and pass; a later fragment of
    // a datagram whose first fragment was denied does not.
    assert_eq!(from_pod(&t, &fragment(7, 0, true, packet(UDP, 0, POD, 12346, PEER, 53))), TC_ACT_OK);
    assert_eq!(from_pod(&t, &fragment(7, 1, false, packet(UDP, 0, POD, 12346, PEER, 53))), TC_ACT_OK);
    assert_eq!(from_pod(&t, &fragment(8, 0, true, packet(UDP, 0, POD, 12347, PEER, 54))), TC_ACT_SHOT);
    assert_eq!(from_pod(&t, &fragment(8, 1, false, packet(UDP, 0, POD, 12347, PEER, 54))), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyEgress), 3);
    // A Packet Too Big passes whatever the policy (path MTU discovery).
    assert_eq!(to_pod(&t, &icmp(PACKET_TOO_BIG, OUTSIDE, POD)), TC_ACT_OK);
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
    const MLD_REPORT: u8 = 143;
    const MLD_ALL_ROUTERS: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    const POD_LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    const HOST_LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const SITE_MULTICAST: [u8; 16] = [0xff, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAGS_ENFORCED);
    // What a pod's kernel sends on its own: an MLD report (behind a
    // hop-by-hop header) to a link-local group, link-local unicast.
    assert_eq!(from_pod(&t, &with_ext(&[HOP_BY_HOP], icmp(MLD_REPORT, POD_LINK_LOCAL, MLD_ALL_ROUTERS))), TC_ACT_OK);
    assert_eq!(from_pod(&t, &udp(POD_LINK_LOCAL, HOST_LINK_LOCAL)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &icmp(ECHO_REQUEST, HOST_LINK_LOCAL, POD_LINK_LOCAL)), TC_ACT_OK);
    assert_eq!(t.count(DropReason::PolicyEgress) + t.count(DropReason::PolicyIngress), 0);
    // A wider multicast scope is judged as any IPv6 (no rule allows it);
    // a routed address from a link-local source is not the pod's own
    // source.
    assert_eq!(from_pod(&t, &with_ext(&[HOP_BY_HOP], udp(POD, SITE_MULTICAST))), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyEgress), 1);
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
