//! Flow events (issue #13) in the kernel, with BPF_PROG_TEST_RUN on crafted
//! packets: one event per drop (with its reason), per new flow a policy
//! allows, and per new Service flow, none for the later packets of a flow;
//! the per-CPU rate limit and what it holds back.
use std::net::Ipv4Addr;

use aya::maps::{MapData, PerCpuArray, PerCpuValues, RingBuf};
use weir_common::{
    DropReason, EndpointInfo, EndpointKey,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS, FlowEvent, FlowRate, FlowVerdict},
    pin,
    policy::{DIR_EGRESS, PolicyKey},
};

use crate::datapath::{
    lb::maps::LbMaps,
    lb::programmer::LbProgrammer,
    pinned,
    policy::maps::PolicyMaps as _,
    tests::harness::{LOOPBACK, TC_ACT_OK, TestDatapath},
    tests::lb::{packet, packet_with_flags, parse, run},
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const POD: [u8; 4] = [10, 244, 1, 5];
const FRIEND: [u8; 4] = [10, 244, 2, 7];
const STRANGER: [u8; 4] = [10, 244, 2, 8];
const VIP: [u8; 4] = [10, 96, 0, 10];
const NODE: [u8; 4] = [172, 30, 0, 11];
const CLIENT: [u8; 4] = [172, 30, 0, 100];
const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// `FlowRate` as aya writes it (the user-space `Pod` impls live with the
/// agent's reader; a local wrapper keeps the test independent of them).
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Rate(FlowRate);
// Safety: plain `#[repr(C)]` integers, no padding.
unsafe impl aya::Pod for Rate {}

/// The datapath plus a reader of its flow events.
struct Flows {
    t: TestDatapath,
    ring: RingBuf<MapData>,
}

impl Flows {
    /// A fresh datapath with events on (a rate no test reaches), or off
    /// (`None`: the agent never wrote a rate).
    fn load(rate: Option<FlowRate>) -> Self {
        let mut t = TestDatapath::load();
        if let Some(rate) = rate {
            set_rate(&mut t, rate);
        }
        let ring = pinned::open(t.pin_dir(), pin::MAP_FLOWS).expect("flow ring buffer pinned");
        Self { t, ring }
    }

    fn on() -> Self {
        Self::load(Some(FlowRate { ns_per_token: 1, burst: 1_000_000, credit_ns: 0, last_ns: 0 }))
    }

    /// Every event emitted since the last call.
    fn events(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            assert_eq!(item.len(), size_of::<FlowEvent>());
            // Safety: a `FlowEvent` the program wrote, possibly unaligned here.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
        }
        out
    }

    /// The one event emitted since the last call.
    fn one(&mut self) -> FlowEvent {
        let events = self.events();
        assert_eq!(events.len(), 1, "{events:#?}");
        events[0]
    }

    fn none(&mut self) {
        let events = self.events();
        assert!(events.is_empty(), "{events:#?}");
    }

    fn lost(&self) -> Vec<u64> {
        let lost: PerCpuArray<MapData, u64> = pinned::open(self.t.pin_dir(), pin::MAP_FLOW_LOST).unwrap();
        lost.get(&0, 0).unwrap().to_vec()
    }

    /// `weir_from_pod`'s verdict on a packet the pod sends.
    fn pod_sends(&self, p: &[u8]) -> u32 {
        run(&self.t, pin::PROG_FROM_POD, p).0
    }

    /// `weir_to_pod`'s verdict on a packet for the pod.
    fn pod_gets(&self, p: &[u8]) -> u32 {
        run(&self.t, pin::PROG_TO_POD, p).0
    }
}

/// The same rate (and a full bucket) on every CPU.
fn set_rate(t: &mut TestDatapath, rate: FlowRate) {
    let cpus = aya::util::nr_cpus().unwrap();
    let mut map: PerCpuArray<&mut MapData, Rate> = t.dp.map_as_mut(pin::MAP_FLOW_RATE).unwrap();
    map.set(0, PerCpuValues::try_from(vec![Rate(rate); cpus]).unwrap(), 0).unwrap();
}

fn endpoint(t: &mut TestDatapath, flags: u32) {
    t.dp.endpoints()
        .unwrap()
        .insert(EndpointKey { ifindex: LOOPBACK }, EndpointInfo::new(POD, EndpointInfo::FLAG_VERIFY_SOURCE | flags), 0)
        .unwrap();
}

/// A Service frontend with these backends (local to the node or not).
fn service(t: &mut TestDatapath, addr: [u8; 4], port: u16, kind: FrontendKind, backends: &[([u8; 4], bool)]) {
    let fe = Frontend { addr: Ipv4Addr::from(addr).into(), port, proto: Protocol::Tcp, scope: Scope::Default };
    let state = FrontendState {
        service: "ns/web".into(),
        kind,
        backends: backends
            .iter()
            .map(|(a, local)| BackendRef {
                addr: BackendAddr { addr: Ipv4Addr::from(*a).into(), port: 8080, proto: Protocol::Tcp },
                local: *local,
                terminating: false,
            })
            .collect(),
        affinity_timeout: 0,
        source_ranges: vec![],
        local_only: false,
    };
    let maps: &mut dyn LbMaps = &mut t.dp;
    maps.set_node_addrs(Ipv4Addr::from(NODE), "10.244.1.0/24".parse().unwrap(), 1).unwrap();
    let report = LbProgrammer::default().apply(&[(fe, state)].into_iter().collect(), true, maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

/// (verdict, reason, direction, ifindex) of an event.
fn what(e: &FlowEvent) -> (Option<FlowVerdict>, u8, u8, u32) {
    (FlowVerdict::from_u8(e.verdict), e.reason, e.direction, e.ifindex)
}

/// (saddr, sport, daddr, dport, protocol) of an IPv4 event (an event of
/// no packet read has family 4 too: a drop before parsing).
fn tuple(e: &FlowEvent) -> ([u8; 4], u16, [u8; 4], u16, u8) {
    assert_eq!(e.family, weir_common::flow::FAMILY_IPV4, "{e:?}");
    let v4 = |a: [u8; 16]| {
        assert_eq!(a[4..], [0; 12], "{e:?}");
        [a[0], a[1], a[2], a[3]]
    };
    (v4(e.saddr), e.sport, v4(e.daddr), e.dport, e.protocol)
}

fn dropped(reason: DropReason, dir: u8) -> (Option<FlowVerdict>, u8, u8, u32) {
    (Some(FlowVerdict::Dropped), reason as u8, dir, LOOPBACK)
}

/// The clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: a valid pointer to a timespec.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn unknown_endpoint_spoofed_source_and_malformed_drops_are_reported() {
    let mut f = Flows::on();
    // No endpoint for the interface: fail closed.
    assert_eq!(f.pod_sends(&packet(UDP, POD, 40000, FRIEND, 53)), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::UnknownEndpoint, FLOW_DIR_EGRESS));
    assert_eq!(tuple(&e), (POD, 40000, FRIEND, 53, UDP));
    assert_eq!((e.policy_slot, e.xlate_addr, e.xlate_port), (0, [0; 16], 0));
    assert_ne!(e.timestamp_ns, 0);

    endpoint(&mut f.t, 0);
    assert_eq!(f.pod_sends(&packet(TCP, STRANGER, 40001, FRIEND, 80)), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::SourceSpoofed, FLOW_DIR_EGRESS));
    assert_eq!(tuple(&e), (STRANGER, 40001, FRIEND, 80, TCP));

    // Not even the addresses could be read: reported all the same.
    let mut p = packet(UDP, POD, 40002, FRIEND, 53);
    p[14] = 0x43;
    assert_eq!(f.pod_sends(&p), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::Malformed, FLOW_DIR_EGRESS));
    assert_eq!(tuple(&e), ([0; 4], 0, [0; 4], 0, 0));

    // What passes is not reported (no policy: nothing tracks new flows).
    assert_eq!(f.pod_sends(&packet(UDP, POD, 40003, FRIEND, 53)), TC_ACT_OK);
    f.none();
    assert_eq!(f.lost().iter().sum::<u64>(), 0);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn policy_drops_are_reported_with_their_direction() {
    let mut f = Flows::on();
    endpoint(&mut f.t, EndpointInfo::FLAG_POLICY_PENDING);
    assert_eq!(f.pod_sends(&packet(UDP, POD, 40000, FRIEND, 53)), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::PolicyPending, FLOW_DIR_EGRESS));
    assert_eq!(tuple(&e), (POD, 40000, FRIEND, 53, UDP));
    assert_eq!(f.pod_gets(&packet(TCP, FRIEND, 40001, POD, 80)), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::PolicyPending, FLOW_DIR_INGRESS));
    assert_eq!(tuple(&e), (FRIEND, 40001, POD, 80, TCP));

    // Isolated both ways, no rule: every new flow is denied.
    endpoint(&mut f.t, EndpointInfo::FLAGS_ENFORCED);
    assert_eq!(f.pod_gets(&packet(TCP, FRIEND, 40002, POD, 80)), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::PolicyIngress, FLOW_DIR_INGRESS));
    assert_eq!(tuple(&e), (FRIEND, 40002, POD, 80, TCP));
    assert_eq!(f.pod_sends(&packet(TCP, POD, 40003, STRANGER, 443)), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::PolicyEgress, FLOW_DIR_EGRESS));
    assert_eq!(tuple(&e), (POD, 40003, STRANGER, 443, TCP));
    // Each dropped packet is an event: a retransmission too.
    assert_eq!(f.pod_sends(&packet(TCP, POD, 40003, STRANGER, 443)), TC_ACT_SHOT);
    assert_eq!(what(&f.one()), dropped(DropReason::PolicyEgress, FLOW_DIR_EGRESS));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_new_flow_allowed_by_policy_is_reported_once_with_its_slot() {
    let mut f = Flows::on();
    endpoint(&mut f.t, EndpointInfo::FLAG_EGRESS_ENFORCED);
    f.t.dp.set_identity("10.244.2.7/32".parse::<ipnetwork::IpNetwork>().unwrap(), 300).unwrap();
    let key = PolicyKey { ifindex: LOOPBACK, identity: 300, dir: DIR_EGRESS, proto: TCP, port: 443u16.to_be() };
    f.t.dp.set_rule((PolicyKey::PREFIX_FULL, key), 7).unwrap();

    assert_eq!(f.pod_sends(&packet_with_flags(TCP, POD, 40000, FRIEND, 443, SYN)), TC_ACT_OK);
    let e = f.one();
    assert_eq!(what(&e), (Some(FlowVerdict::Allowed), 0, FLOW_DIR_EGRESS, LOOPBACK));
    assert_eq!(tuple(&e), (POD, 40000, FRIEND, 443, TCP));
    assert_eq!(e.policy_slot, 7);
    assert_eq!((e.xlate_addr, e.xlate_port), ([0; 16], 0));

    // The rest of the flow, both ways, rides on the policy conntrack.
    assert_eq!(f.pod_gets(&packet_with_flags(TCP, FRIEND, 443, POD, 40000, SYN | ACK)), TC_ACT_OK);
    assert_eq!(f.pod_sends(&packet_with_flags(TCP, POD, 40000, FRIEND, 443, ACK)), TC_ACT_OK);
    assert_eq!(f.pod_gets(&packet_with_flags(TCP, FRIEND, 443, POD, 40000, ACK)), TC_ACT_OK);
    f.none();

    // A new flow in the direction the pod is not isolated in: tracked (for
    // its replies), and reported with no slot.
    assert_eq!(f.pod_gets(&packet(UDP, STRANGER, 5353, POD, 53)), TC_ACT_OK);
    let e = f.one();
    assert_eq!(what(&e), (Some(FlowVerdict::Allowed), 0, FLOW_DIR_INGRESS, LOOPBACK));
    assert_eq!(tuple(&e), (STRANGER, 5353, POD, 53, UDP));
    assert_eq!(e.policy_slot, 0);
    assert_eq!(f.pod_sends(&packet(UDP, POD, 53, STRANGER, 5353)), TC_ACT_OK);
    f.none();
}

/// A pod under no policy keeps no per-flow state: its new TCP connections
/// (a SYN without ACK), both ways, are reported allowed with no policy; the
/// rest of the connection and other protocols are not.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn new_tcp_connections_of_a_pod_without_policy_are_reported_once() {
    let mut f = Flows::on();
    endpoint(&mut f.t, 0);
    assert_eq!(f.pod_sends(&packet_with_flags(TCP, POD, 40000, FRIEND, 443, SYN)), TC_ACT_OK);
    let e = f.one();
    assert_eq!(what(&e), (Some(FlowVerdict::Allowed), 0, FLOW_DIR_EGRESS, LOOPBACK));
    assert_eq!(tuple(&e), (POD, 40000, FRIEND, 443, TCP));
    assert_eq!(e.policy_slot, 0);
    assert_eq!(f.pod_gets(&packet_with_flags(TCP, FRIEND, 443, POD, 40000, SYN | ACK)), TC_ACT_OK);
    assert_eq!(f.pod_sends(&packet_with_flags(TCP, POD, 40000, FRIEND, 443, ACK)), TC_ACT_OK);
    assert_eq!(f.pod_sends(&packet(UDP, POD, 40001, FRIEND, 53)), TC_ACT_OK);
    f.none();

    assert_eq!(f.pod_gets(&packet_with_flags(TCP, STRANGER, 50000, POD, 80, SYN)), TC_ACT_OK);
    let e = f.one();
    assert_eq!(what(&e), (Some(FlowVerdict::Allowed), 0, FLOW_DIR_INGRESS, LOOPBACK));
    assert_eq!(tuple(&e), (STRANGER, 50000, POD, 80, TCP));
    assert_eq!(f.pod_gets(&packet_with_flags(TCP, STRANGER, 50000, POD, 80, ACK)), TC_ACT_OK);
    f.none();
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_new_service_flow_is_reported_translated_once_with_its_backend() {
    let mut f = Flows::on();
    endpoint(&mut f.t, 0);
    service(&mut f.t, VIP, 80, FrontendKind::ClusterIp, &[(FRIEND, false)]);

    let (rc, out) = run(&f.t, pin::PROG_FROM_POD, &packet(TCP, POD, 40000, VIP, 80));
    assert_eq!(rc, TC_ACT_OK);
    let p = parse(&out);
    // The translation, then the new connection of a pod without policy.
    let events = f.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(what(&events[1]), (Some(FlowVerdict::Allowed), 0, FLOW_DIR_EGRESS, LOOPBACK));
    assert_eq!(tuple(&events[1]), (POD, 40000, VIP, 80, TCP));
    let e = events[0];
    assert_eq!(what(&e), (Some(FlowVerdict::Translated), 0, FLOW_DIR_EGRESS, LOOPBACK));
    assert_eq!(tuple(&e), (POD, 40000, VIP, 80, TCP), "the frontend, as the client asked");
    assert_eq!((e.xlate_addr, e.xlate_port), (FlowEvent::v4(p.dst), p.dport), "the backend the packet went to");
    assert_eq!((e.xlate_addr, e.xlate_port), (FlowEvent::v4(FRIEND), 8080));
    assert_eq!(e.policy_slot, 0);

    // Later packets of the flow, and its replies: nothing.
    assert_eq!(f.pod_sends(&packet_with_flags(TCP, POD, 40000, VIP, 80, ACK)), TC_ACT_OK);
    assert_eq!(f.pod_gets(&packet_with_flags(TCP, FRIEND, 8080, POD, 40000, SYN | ACK)), TC_ACT_OK);
    f.none();
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_service_without_backends_reports_the_drop() {
    let mut f = Flows::on();
    endpoint(&mut f.t, 0);
    service(&mut f.t, VIP, 80, FrontendKind::ClusterIp, &[]);
    // Answered with ICMP port unreachable, sent back into the pod.
    assert_eq!(f.pod_sends(&packet(TCP, POD, 40000, VIP, 80)), TC_ACT_REDIRECT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::NoBackend, FLOW_DIR_EGRESS));
    assert_eq!(tuple(&e), (POD, 40000, VIP, 80, TCP));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn node_port_flows_and_drops_are_reported_inbound() {
    let mut f = Flows::on();
    service(&mut f.t, NODE, 30080, FrontendKind::NodePort, &[(POD, true)]);
    let (rc, _) = run(&f.t, pin::PROG_FROM_NETDEV, &packet(TCP, CLIENT, 50000, NODE, 30080));
    assert_eq!(rc, TC_ACT_OK);
    let e = f.one();
    assert_eq!(what(&e), (Some(FlowVerdict::Translated), 0, FLOW_DIR_INGRESS, LOOPBACK));
    assert_eq!(tuple(&e), (CLIENT, 50000, NODE, 30080, TCP));
    assert_eq!((e.xlate_addr, e.xlate_port), (FlowEvent::v4(POD), 8080));
    let (rc, _) = run(&f.t, pin::PROG_FROM_NETDEV, &packet_with_flags(TCP, CLIENT, 50000, NODE, 30080, ACK));
    assert_eq!(rc, TC_ACT_OK);
    f.none();

    service(&mut f.t, NODE, 30081, FrontendKind::NodePort, &[]);
    let (rc, _) = run(&f.t, pin::PROG_FROM_NETDEV, &packet(TCP, CLIENT, 50001, NODE, 30081));
    assert_eq!(rc, TC_ACT_REDIRECT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::NoBackend, FLOW_DIR_INGRESS));
    assert_eq!(tuple(&e), (CLIENT, 50001, NODE, 30081, TCP));
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn nothing_is_emitted_or_counted_while_events_are_off() {
    for rate in [None, Some(FlowRate { ns_per_token: 0, burst: 1000, credit_ns: 1 << 40, last_ns: 0 })] {
        let mut f = Flows::load(rate);
        // A drop, a new allowed flow, a new Service flow.
        assert_eq!(f.pod_sends(&packet(UDP, POD, 40000, FRIEND, 53)), TC_ACT_SHOT);
        endpoint(&mut f.t, EndpointInfo::FLAG_INGRESS_ENFORCED);
        assert_eq!(f.pod_sends(&packet(UDP, POD, 40001, FRIEND, 53)), TC_ACT_OK);
        service(&mut f.t, VIP, 80, FrontendKind::ClusterIp, &[(FRIEND, false)]);
        assert_eq!(f.pod_sends(&packet(TCP, POD, 40002, VIP, 80)), TC_ACT_OK);
        assert_eq!(f.t.count(DropReason::UnknownEndpoint), 1);
        f.none();
        assert_eq!(f.lost().iter().sum::<u64>(), 0);
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_flood_is_held_to_the_burst_and_the_rest_counted_lost() {
    // Per-CPU buckets: stay on one CPU for the whole test.
    let cpu = nix::sched::sched_getcpu().unwrap();
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();

    // Three tokens, and one more every 1000 s.
    let cost = 1_000_000_000_000;
    let mut f =
        Flows::load(Some(FlowRate { ns_per_token: cost, burst: 3, credit_ns: 3 * cost, last_ns: monotonic_ns() }));
    for sport in 0..10 {
        assert_eq!(f.pod_sends(&packet(UDP, POD, 40000 + sport, FRIEND, 53)), TC_ACT_SHOT);
    }
    let events = f.events();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(events.iter().all(|e| what(e) == dropped(DropReason::UnknownEndpoint, FLOW_DIR_EGRESS)));
    assert_eq!(events.iter().map(|e| e.sport).collect::<Vec<_>>(), [40000, 40001, 40002], "the first three");
    let lost = f.lost();
    assert_eq!(lost[cpu], 7, "{lost:?}");
    assert_eq!(lost.iter().sum::<u64>(), 7, "{lost:?}");
    assert_eq!(f.t.count(DropReason::UnknownEndpoint), 10, "the rate limits events, not drops");
}

/// IPv6 flows are told with their IPv6 addresses (family 6): a new flow
/// the policy allows, and one it drops.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_flows_are_reported_with_their_addresses() {
    use super::ipv6::{self, ID_FRIEND, PEER, POD, STRANGER, SYN, TCP as TCP6};
    let mut f = Flows::on();
    ipv6::endpoint(&mut f.t, EndpointInfo::FLAG_INGRESS_ENFORCED);
    ipv6::identities(&mut f.t);
    ipv6::rule(&mut f.t, weir_common::policy::DIR_INGRESS, ID_FRIEND, TCP6, 80, 7);
    assert_eq!(f.pod_gets(&ipv6::tcp(PEER, 40000, POD, 80, SYN)), TC_ACT_OK);
    let e = f.one();
    assert_eq!(FlowVerdict::from_u8(e.verdict), Some(FlowVerdict::Allowed));
    assert_eq!((e.family, e.saddr, e.daddr), (weir_common::flow::FAMILY_IPV6, PEER, POD));
    assert_eq!((e.sport, e.dport, e.protocol, e.policy_slot), (40000, 80, TCP, 7));
    assert_eq!(e.source(), std::net::IpAddr::from(PEER));
    assert_eq!(f.pod_gets(&ipv6::tcp(STRANGER, 40001, POD, 80, SYN)), TC_ACT_SHOT);
    let e = f.one();
    assert_eq!(what(&e), dropped(DropReason::PolicyIngress, FLOW_DIR_INGRESS));
    assert_eq!(
        (e.family, e.saddr, e.daddr, e.sport, e.dport),
        (weir_common::flow::FAMILY_IPV6, STRANGER, POD, 40001, 80)
    );
}

/// (saddr, sport, daddr, dport, protocol) of an IPv6 event.
fn tuple6(e: &FlowEvent) -> ([u8; 16], u16, [u8; 16], u16, u8) {
    assert_eq!(e.family, weir_common::flow::FAMILY_IPV6, "{e:?}");
    (e.saddr, e.sport, e.daddr, e.dport, e.protocol)
}

/// A new IPv6 Service flow of a pod client (`lb::tc6`) is reported
/// translated once, as IPv4's: the frontend as asked, the backend's 16
/// bytes and port; later packets and replies are not.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn a_new_ipv6_service_flow_of_a_pod_is_reported_translated_once() {
    use super::lb6::{self, backend, client, vip};
    for (proto, num) in [(Protocol::Tcp, TCP), (Protocol::Udp, UDP)] {
        let mut f = Flows::on();
        lb6::client_endpoint(&mut f.t);
        lb6::program(&mut f.t, proto, &[backend()]);

        let (rc, out) = run(&f.t, pin::PROG_FROM_POD, &lb6::packet(num, client(), 40000, vip(), 80, SYN));
        assert_eq!(rc, TC_ACT_OK);
        let p = lb6::parse(&out);
        let events: Vec<_> = f.events().into_iter().filter(|e| e.verdict == FlowVerdict::Translated as u8).collect();
        assert_eq!(events.len(), 1, "{proto:?}: {events:#?}");
        let e = events[0];
        assert_eq!(what(&e), (Some(FlowVerdict::Translated), 0, FLOW_DIR_EGRESS, LOOPBACK), "{proto:?}");
        assert_eq!(tuple6(&e), (client(), 40000, vip(), 80, num), "the frontend, as the client asked");
        assert_eq!((e.xlate_addr, e.xlate_port), (p.2, p.3), "{proto:?}: the backend the packet went to");
        assert_eq!((e.xlate_addr, e.xlate_port), (backend(), 8080));
        assert_eq!(e.backend(), std::net::IpAddr::from(backend()));
        assert_eq!(e.policy_slot, 0);

        assert_eq!(f.pod_sends(&lb6::packet(num, client(), 40000, vip(), 80, ACK)), TC_ACT_OK);
        assert_eq!(f.pod_gets(&lb6::packet(num, backend(), 8080, client(), 40000, SYN | ACK)), TC_ACT_OK);
        f.none();
    }
}

/// A new IPv6 flow through the uplink (`netdev6`) is reported translated
/// inbound, to a local backend and to a remote one (SNATed), once each.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_node_port_flows_are_reported_translated_inbound() {
    use super::netdev6::{self, client, local_pod, node, node_port, remote_pod};
    let mut f = Flows::on();
    netdev6::program(
        &mut f.t,
        Protocol::Tcp,
        &[node_port(30080, vec![(local_pod(), true)]), node_port(30081, vec![(remote_pod(), false)])],
    );
    for (port, backend) in [(30080, local_pod()), (30081, remote_pod())] {
        let (_, out) = run(&f.t, pin::PROG_FROM_NETDEV, &super::lb6::packet(TCP, client(), 50000, node(), port, SYN));
        assert_eq!(super::lb6::parse(&out).2, backend);
        let e = f.one();
        assert_eq!(what(&e), (Some(FlowVerdict::Translated), 0, FLOW_DIR_INGRESS, LOOPBACK));
        assert_eq!(tuple6(&e), (client(), 50000, node(), port, TCP));
        assert_eq!((e.xlate_addr, e.xlate_port), (backend, 8080));
        run(&f.t, pin::PROG_FROM_NETDEV, &super::lb6::packet(TCP, client(), 50000, node(), port, ACK));
        f.none();
    }
}
