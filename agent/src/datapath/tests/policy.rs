//! NetworkPolicy verdicts in the kernel, with BPF_PROG_TEST_RUN on crafted
//! packets: the pending state, identity and port lookups, wildcard peers,
//! port-range prefixes, stateful replies, counters, and egress judged on
//! the Service backend.
use std::net::Ipv4Addr;

use weir_common::{
    DropReason, EndpointInfo, EndpointKey,
    policy::{DIR_EGRESS, DIR_INGRESS, IDENTITY_ANY, PolicyKey},
};

use crate::datapath::{
    policy::maps::PolicyMaps as _,
    policy::stats,
    tests::harness::{LOOPBACK, TC_ACT_OK, TestDatapath},
    tests::lb::{from_pod, packet, packet_with_flags, to_pod},
};

const TC_ACT_SHOT: u32 = 2;
const POD: [u8; 4] = [10, 244, 1, 5];
const FRIEND: [u8; 4] = [10, 244, 2, 7];
const STRANGER: [u8; 4] = [10, 244, 2, 8];
const ID_FRIEND: u32 = 300;
const ID_STRANGER: u32 = 301;
const ID_WORLD: u32 = 256;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn endpoint(t: &mut TestDatapath, flags: u32) {
    t.dp.endpoints()
        .unwrap()
        .insert(EndpointKey { ifindex: LOOPBACK }, EndpointInfo::new(POD, EndpointInfo::FLAG_VERIFY_SOURCE | flags), 0)
        .unwrap();
}

fn identities(t: &mut TestDatapath) {
    for (addr, id) in [("0.0.0.0/0", ID_WORLD), ("10.244.2.7/32", ID_FRIEND), ("10.244.2.8/32", ID_STRANGER)] {
        t.dp.set_identity(addr.parse::<ipnetwork::IpNetwork>().unwrap(), id).unwrap();
    }
}

fn rule(t: &mut TestDatapath, dir: u8, identity: u32, proto: u8, port: u16, prefix: u32, slot: u32) {
    let key = PolicyKey { ifindex: LOOPBACK, identity, dir, proto, port: port.to_be() };
    t.dp.set_rule((prefix, key), slot).unwrap();
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_pending_pod_passes_nothing_either_way() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_POLICY_PENDING);
    assert_eq!(from_pod(&t, &packet(UDP, POD, 40000, FRIEND, 53)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &packet(TCP, FRIEND, 40000, POD, 80)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyPending), 2);
    // Once the agent clears the bit (nothing enforced), traffic flows.
    endpoint(&mut t, 0);
    assert_eq!(from_pod(&t, &packet(UDP, POD, 40000, FRIEND, 53)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(TCP, FRIEND, 40000, POD, 80)), TC_ACT_OK);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ingress_allows_by_identity_protocol_and_port() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_INGRESS_ENFORCED);
    identities(&mut t);
    rule(&mut t, DIR_INGRESS, ID_FRIEND, TCP, 80, PolicyKey::PREFIX_FULL, 1);
    // Ports 8000-8001 as one 15-bit prefix, for everyone.
    rule(&mut t, DIR_INGRESS, IDENTITY_ANY, UDP, 8000, PolicyKey::PREFIX_ANY_PORT + 15, 2);

    assert_eq!(to_pod(&t, &packet(TCP, FRIEND, 40000, POD, 80)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(TCP, FRIEND, 40001, POD, 81)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &packet(UDP, FRIEND, 40002, POD, 80)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &packet(TCP, STRANGER, 40003, POD, 80)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &packet(TCP, [192, 0, 2, 1], 40004, POD, 80)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &packet(UDP, STRANGER, 40005, POD, 8000)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(UDP, [192, 0, 2, 1], 40006, POD, 8001)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(UDP, STRANGER, 40007, POD, 8002)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyIngress), 5);
    // Egress is not enforced: the pod sends anywhere.
    assert_eq!(from_pod(&t, &packet(TCP, POD, 40008, STRANGER, 9999)), TC_ACT_OK);

    let hits = stats::policy_hits(t.pin_dir(), [0, 1, 2, 3]).unwrap();
    assert_eq!(hits.get(&1), Some(&1));
    assert_eq!(hits.get(&2), Some(&2));
    let eps = stats::endpoint_stats(t.pin_dir()).unwrap();
    let s = eps[&LOOPBACK];
    assert_eq!((s.ingress_allowed, s.ingress_denied, s.egress_allowed, s.egress_denied), (3, 5, 0, 0));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn any_protocol_rule_covers_icmp() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_EGRESS_ENFORCED);
    identities(&mut t);
    rule(&mut t, DIR_EGRESS, ID_FRIEND, 0, 0, PolicyKey::PREFIX_ANY_PROTO, 1);
    let mut ping = packet(UDP, POD, 0, FRIEND, 0);
    ping[23] = 1; // ICMP (ports are not read)
    assert_eq!(from_pod(&t, &ping), TC_ACT_OK);
    ping[30..34].copy_from_slice(&STRANGER);
    assert_eq!(from_pod(&t, &ping), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyEgress), 1);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn replies_of_allowed_flows_pass_and_new_connections_are_always_checked() {
    let mut t = TestDatapath::load();
    // Isolated both ways; may only open TCP 443 to FRIEND.
    endpoint(&mut t, EndpointInfo::FLAGS_ENFORCED);
    identities(&mut t);
    rule(&mut t, DIR_EGRESS, ID_FRIEND, TCP, 443, PolicyKey::PREFIX_FULL, 1);

    assert_eq!(from_pod(&t, &packet_with_flags(TCP, POD, 40000, FRIEND, 443, SYN)), TC_ACT_OK);
    // The reply passes ingress, though no ingress rule exists.
    assert_eq!(to_pod(&t, &packet_with_flags(TCP, FRIEND, 443, POD, 40000, SYN | ACK)), TC_ACT_OK);
    assert_eq!(from_pod(&t, &packet_with_flags(TCP, POD, 40000, FRIEND, 443, ACK)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet_with_flags(TCP, FRIEND, 443, POD, 40000, ACK)), TC_ACT_OK);
    // The peer cannot open a connection of its own, not even on the
    // tracked tuple reversed (a SYN is always judged).
    assert_eq!(to_pod(&t, &packet_with_flags(TCP, FRIEND, 443, POD, 40000, SYN)), TC_ACT_SHOT);
    assert_eq!(to_pod(&t, &packet_with_flags(TCP, FRIEND, 5000, POD, 80, SYN)), TC_ACT_SHOT);
    // Nor does a mid-stream packet of an unknown flow get in.
    assert_eq!(to_pod(&t, &packet_with_flags(TCP, FRIEND, 5001, POD, 80, ACK)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyIngress), 3);
    let eps = stats::endpoint_stats(t.pin_dir()).unwrap();
    assert_eq!(eps[&LOOPBACK].egress_allowed, 1, "one new flow judged; the rest rode on conntrack");
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn an_ingress_only_pod_still_tracks_what_it_opens() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_INGRESS_ENFORCED);
    identities(&mut t);
    // Deny all ingress; egress is open.
    assert_eq!(from_pod(&t, &packet(UDP, POD, 40000, STRANGER, 53)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(UDP, STRANGER, 53, POD, 40000)), TC_ACT_OK);
    assert_eq!(to_pod(&t, &packet(UDP, STRANGER, 53, POD, 40001)), TC_ACT_SHOT);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn egress_is_judged_on_the_service_backend() {
    use crate::datapath::{lb::maps::LbMaps, lb::programmer::LbProgrammer};
    use crate::model::{
        lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
        service::Protocol,
    };
    let vip = [10, 96, 0, 10];
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_EGRESS_ENFORCED);
    identities(&mut t);
    let mut lb = LbProgrammer::default();
    let program = |t: &mut TestDatapath, lb: &mut LbProgrammer, backend: [u8; 4]| {
        let fe = Frontend { addr: Ipv4Addr::from(vip).into(), port: 80, proto: Protocol::Tcp, scope: Scope::Default };
        let state = FrontendState {
            service: "ns/web".into(),
            kind: FrontendKind::ClusterIp,
            backends: vec![BackendRef {
                addr: BackendAddr { addr: Ipv4Addr::from(backend).into(), port: 8080, proto: Protocol::Tcp },
                local: false,
                terminating: false,
            }],
            affinity_timeout: 0,
            source_ranges: vec![],
            local_only: false,
        };
        let maps: &mut dyn LbMaps = &mut t.dp;
        let report = lb.apply(&[(fe, state)].into_iter().collect(), true, maps);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    };
    // Allowed: FRIEND on the backend's port (8080), not the Service's.
    rule(&mut t, DIR_EGRESS, ID_FRIEND, TCP, 8080, PolicyKey::PREFIX_FULL, 1);
    program(&mut t, &mut lb, FRIEND);
    assert_eq!(from_pod(&t, &packet(TCP, POD, 40000, vip, 80)), TC_ACT_OK);
    program(&mut t, &mut lb, STRANGER);
    assert_eq!(from_pod(&t, &packet(TCP, POD, 40001, vip, 80)), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::PolicyEgress), 1);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn counters_of_deleted_pods_are_pruned() {
    let mut t = TestDatapath::load();
    endpoint(&mut t, EndpointInfo::FLAG_INGRESS_ENFORCED);
    identities(&mut t);
    assert_eq!(to_pod(&t, &packet(TCP, FRIEND, 40000, POD, 80)), TC_ACT_SHOT);
    assert!(stats::endpoint_stats(t.pin_dir()).unwrap().contains_key(&LOOPBACK));
    let live = t.dp.local_endpoints().unwrap();
    assert_eq!(t.dp.prune_endpoint_stats(&live).unwrap(), 0, "a live endpoint keeps its counters");
    assert_eq!(t.dp.prune_endpoint_stats(&Default::default()).unwrap(), 1);
    assert!(stats::endpoint_stats(t.pin_dir()).unwrap().is_empty());
}
