//! Table tests: Service + EndpointSlices -> frontends and backends.
use std::net::SocketAddr;

use super::*;
use crate::model::service::build::{service, service_dual, slice, slice6};

/// A dual-stack node (the Services below choose their families).
fn node() -> LbNode {
    LbNode {
        name: "n1".into(),
        addrs: vec!["172.30.0.11".parse().unwrap(), "fd00:172:30::11".parse().unwrap()],
        families: [Family::Ipv4, Family::Ipv6].into(),
    }
}

fn run(services: &[ServiceInfo], slices: &[EndpointSliceInfo]) -> LbPlan {
    plan(services, &by_service(slices), &node())
}

/// The slices grouped by the Service they belong to.
fn by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSliceInfo>,
) -> BTreeMap<ObjectKey, Vec<&'a EndpointSliceInfo>> {
    let mut by_svc: BTreeMap<ObjectKey, Vec<&EndpointSliceInfo>> = BTreeMap::new();
    for s in slices {
        by_svc.entry(s.service.clone()).or_default().push(s);
    }
    by_svc
}

/// ns/web's slice: target port `port` of a ready endpoint on each node
/// (10.244.1.5 on n1, 10.244.2.7 on n2).
fn web_slice(port: u16) -> EndpointSliceInfo {
    slice("ns/web-a", "ns/web").port("", port, Protocol::Tcp).ready("10.244.1.5", "n1").ready("10.244.2.7", "n2")
}

/// The plan of ns/web, a NodePort Service (port 80, node port 30080) as
/// `edit` leaves it, over `web_slice(8080)`.
fn web_node_port_plan(edit: impl FnOnce(&mut ServiceInfo)) -> LbPlan {
    let mut svc = service("ns/web", "10.96.0.10").node_port("", 80, 30080);
    edit(&mut svc);
    run(&[svc], &[web_slice(8080)])
}

/// `addr:port/proto[scope]` -> sorted `ip:port` backends.
fn table(p: &LbPlan) -> Vec<String> {
    p.frontends
        .iter()
        .map(|(f, s)| {
            let backends: Vec<String> =
                s.backends.iter().map(|b| SocketAddr::new(b.addr.addr, b.addr.port).to_string()).collect();
            let scope = if f.scope == Scope::Internal { "[int]" } else { "" };
            format!("{}/{}{} -> [{}]", SocketAddr::new(f.addr, f.port), f.proto.name(), scope, backends.join(" "))
        })
        .collect()
}

#[test]
fn cluster_ip_multi_port_with_named_target_ports() {
    let svc = service("ns/web", "10.96.0.10").port("http", 80, Protocol::Tcp).port("dns", 53, Protocol::Udp);
    // The slice carries the resolved target ports by port name.
    let sl = slice("ns/web-abc", "ns/web")
        .port("http", 8080, Protocol::Tcp)
        .port("dns", 5353, Protocol::Udp)
        .ready("10.244.1.5", "n1")
        .ready("10.244.2.7", "n2");
    let p = run(&[svc], &[sl]);
    assert_eq!(
        table(&p),
        [
            "10.96.0.10:53/UDP -> [10.244.1.5:5353 10.244.2.7:5353]",
            "10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]",
        ]
    );
    assert!(p.problems.is_empty());
}

#[test]
fn endpoints_split_over_slices_are_merged_and_deduplicated() {
    let svc = service("ns/web", "10.96.0.10").port("", 80, Protocol::Tcp);
    let a = slice("ns/web-a", "ns/web").port("", 8080, Protocol::Tcp).ready("10.244.1.5", "n1");
    let b =
        slice("ns/web-b", "ns/web").port("", 8080, Protocol::Tcp).ready("10.244.2.7", "n2").ready("10.244.1.5", "n1");
    let other = slice("ns/other-a", "ns/other").port("", 8080, Protocol::Tcp).ready("10.244.9.9", "n1");
    assert_eq!(table(&run(&[svc], &[a, b, other])), ["10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]"]);
}

#[test]
fn ready_endpoints_only_then_serving_terminating_fallback() {
    let svc = service("ns/web", "10.96.0.10").port("", 80, Protocol::Tcp);
    let mixed = slice("ns/web-a", "ns/web")
        .port("", 80, Protocol::Tcp)
        .ready("10.244.1.5", "n1")
        .endpoint("10.244.1.6", "n1", false, true, true) // serving, terminating
        .endpoint("10.244.1.7", "n1", false, false, false); // not ready
    assert_eq!(table(&run(std::slice::from_ref(&svc), &[mixed])), ["10.96.0.10:80/TCP -> [10.244.1.5:80]"]);

    let draining = slice("ns/web-a", "ns/web")
        .port("", 80, Protocol::Tcp)
        .endpoint("10.244.1.6", "n1", false, true, true)
        .endpoint("10.244.1.8", "n1", false, false, true) // terminating, not serving
        .endpoint("10.244.1.7", "n1", false, false, false);
    let p = run(std::slice::from_ref(&svc), &[draining]);
    assert_eq!(table(&p), ["10.96.0.10:80/TCP -> [10.244.1.6:80]"]);
    assert!(p.frontends.values().next().unwrap().backends[0].terminating);

    // No usable endpoint: the frontend exists with no backends, so the
    // datapath rejects instead of letting traffic hit the VIP.
    let dead =
        slice("ns/web-a", "ns/web").port("", 80, Protocol::Tcp).endpoint("10.244.1.7", "n1", false, false, false);
    assert_eq!(table(&run(&[svc], &[dead])), ["10.96.0.10:80/TCP -> []"]);
}

#[test]
fn headless_and_external_name_are_left_alone() {
    let mut headless = service("ns/h", "10.96.0.11").port("", 80, Protocol::Tcp);
    headless.cluster_ips.clear();
    headless.headless = true;
    let mut ext = service("ns/e", "10.96.0.12").port("", 80, Protocol::Tcp);
    ext.type_ = ServiceType::ExternalName;
    let sl = slice("ns/h-a", "ns/h").port("", 80, Protocol::Tcp).ready("10.244.1.5", "n1");
    assert!(run(&[headless, ext], &[sl]).frontends.is_empty());
}

#[test]
fn node_port_external_ips_and_load_balancer() {
    let p = web_node_port_plan(|svc| {
        svc.type_ = ServiceType::LoadBalancer;
        svc.external_ips = vec!["192.0.2.10".parse().unwrap()];
        svc.lb_ingress_ips = vec!["198.51.100.7".parse().unwrap()];
        svc.lb_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    });
    assert_eq!(
        table(&p),
        [
            "10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]",
            "172.30.0.11:30080/TCP -> [10.244.1.5:8080 10.244.2.7:8080]",
            "192.0.2.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]",
            "198.51.100.7:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]",
        ]
    );
    let ranges: Vec<_> = p.frontends.values().map(|s| s.source_ranges.len()).collect();
    assert_eq!(ranges, [0, 0, 0, 1], "source ranges apply to the load-balancer IP only");
}

#[test]
fn external_traffic_policy_local_uses_local_endpoints_and_keeps_internal_scope() {
    let p = web_node_port_plan(|svc| {
        svc.external_traffic_local = true;
        svc.health_check_node_port = Some(32000);
    });
    assert_eq!(
        table(&p),
        [
            "10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]",
            "172.30.0.11:30080/TCP -> [10.244.1.5:8080]",
            "172.30.0.11:30080/TCP[int] -> [10.244.1.5:8080 10.244.2.7:8080]",
        ]
    );
    let np = p.frontends.iter().find(|(f, _)| f.port == 30080 && f.scope == Scope::Default).unwrap().1;
    assert!(np.local_only);
    assert_eq!(p.health_checks.get(&32000), Some(&("ns/web".to_string(), 1)));
}

/// Upstream e2e `test/e2e/network/service.go` "should fail health check
/// node port if there are only terminating endpoints" and kube-proxy's
/// `EndpointsMap.LocalReadyEndpoints` (pkg/proxy): the healthCheckNodePort
/// counts ready local endpoints, by address; a node whose only local
/// endpoint is terminating (still serving) reports 0 (503), while the
/// NodePort keeps sending what still arrives to that endpoint.
#[test]
fn health_check_counts_ready_local_endpoints_only() {
    let mut svc = service("ns/web", "10.96.0.10").node_port("", 80, 30080).port("alt", 81, Protocol::Tcp);
    svc.external_traffic_local = true;
    svc.health_check_node_port = Some(32000);
    let terminating = slice("ns/web-a", "ns/web")
        .port("", 8080, Protocol::Tcp)
        .port("alt", 8081, Protocol::Tcp)
        .endpoint("10.244.1.6", "n1", false, true, true) // serving, terminating
        .ready("10.244.2.7", "n2");
    let p = run(std::slice::from_ref(&svc), &[terminating]);
    assert_eq!(p.health_checks.get(&32000), Some(&("ns/web".to_string(), 0)));
    let np = p.frontends.iter().find(|(f, _)| f.port == 30080 && f.scope == Scope::Default).unwrap().1;
    assert_eq!(np.backends.len(), 1, "traffic that still arrives goes to the terminating endpoint");
    assert!(np.backends[0].terminating);

    // One ready local pod serving two ports is one endpoint, not two.
    let ready = slice("ns/web-a", "ns/web")
        .port("", 8080, Protocol::Tcp)
        .port("alt", 8081, Protocol::Tcp)
        .ready("10.244.1.5", "n1")
        .endpoint("10.244.1.6", "n1", false, true, true);
    let p = run(&[svc], &[ready]);
    assert_eq!(p.health_checks.get(&32000), Some(&("ns/web".to_string(), 1)));
}

#[test]
fn internal_traffic_policy_local_restricts_cluster_ip() {
    let mut svc = service("ns/web", "10.96.0.10").port("", 80, Protocol::Tcp);
    svc.internal_traffic_local = true;
    assert_eq!(table(&run(&[svc], &[web_slice(80)])), ["10.96.0.10:80/TCP -> [10.244.1.5:80]"]);
}

#[test]
fn session_affinity_timeout_is_carried() {
    let mut svc = service("ns/web", "10.96.0.10").port("", 80, Protocol::Tcp);
    svc.affinity_timeout = Some(600);
    let p = run(&[svc], &[]);
    assert_eq!(p.frontends.values().next().unwrap().affinity_timeout, 600);
}

#[test]
fn sctp_ports_map_to_other_target_ports_as_tcp_ones_do() {
    // The datapath keeps SCTP's CRC32c valid through a port change
    // (`weir_common::crc32c`): no port is refused for it.
    let svc = service("ns/s", "10.96.0.20").port("a", 3868, Protocol::Sctp).port("b", 9999, Protocol::Sctp);
    let sl = slice("ns/s-a", "ns/s")
        .port("a", 3869, Protocol::Sctp)
        .port("b", 9999, Protocol::Sctp)
        .ready("10.244.1.5", "n1");
    let p = run(&[svc], &[sl]);
    assert_eq!(table(&p), ["10.96.0.20:3868/SCTP -> [10.244.1.5:3869]", "10.96.0.20:9999/SCTP -> [10.244.1.5:9999]"]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
}

#[test]
fn conflicting_frontends_keep_the_first_and_report_the_second() {
    let mut a = service("ns/a", "10.96.0.10").port("", 80, Protocol::Tcp);
    a.external_ips = vec!["192.0.2.1".parse().unwrap()];
    let mut b = service("ns/b", "10.96.0.11").port("", 80, Protocol::Tcp);
    b.external_ips = vec!["192.0.2.1".parse().unwrap()];
    let p = run(&[a, b], &[]);
    assert_eq!(p.frontends.len(), 3);
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].object, "Service/ns/b");
}

/// The incremental plan equals the whole plan after any sequence of changes.
#[test]
fn incremental_plan_matches_full_plan() {
    let mut services: BTreeMap<String, ServiceInfo> = BTreeMap::new();
    let mut slices: BTreeMap<String, EndpointSliceInfo> = BTreeMap::new();
    let mut desired = DesiredLb::default();
    let node = node();

    let check = |desired: &DesiredLb,
                 services: &BTreeMap<String, ServiceInfo>,
                 slices: &BTreeMap<String, EndpointSliceInfo>| {
        let full = plan(services.values(), &by_service(slices.values()), &node);
        assert_eq!(desired.frontends, full.frontends);
        assert_eq!(desired.health_checks(), &full.health_checks);
    };
    let step = |desired: &mut DesiredLb,
                services: &BTreeMap<String, ServiceInfo>,
                slices: &BTreeMap<String, EndpointSliceInfo>,
                dirty: &[&str]| {
        let changed = desired.update(
            dirty.iter().map(|s| s.to_string()).collect(),
            |k| services.get(k),
            |k| slices.values().filter(|s| s.service == k).collect(),
            &node,
        );
        check(desired, services, slices);
        changed
    };

    services.insert("ns/a".into(), service("ns/a", "10.96.0.10").port("", 80, Protocol::Tcp));
    slices.insert("ns/a-1".into(), slice("ns/a-1", "ns/a").port("", 8080, Protocol::Tcp).ready("10.244.1.5", "n1"));
    assert_eq!(step(&mut desired, &services, &slices, &["ns/a"]).len(), 1);

    let mut b = service("ns/b", "10.96.0.11").port("", 53, Protocol::Udp);
    b.external_ips = vec!["192.0.2.1".parse().unwrap()];
    services.insert("ns/b".into(), b);
    let changed = step(&mut desired, &services, &slices, &["ns/b"]);
    assert_eq!(changed.len(), 2, "only b's frontends change");

    // An endpoint change in a's slice touches a's frontend only.
    slices.insert("ns/a-1".into(), slice("ns/a-1", "ns/a").port("", 8080, Protocol::Tcp).ready("10.244.1.6", "n1"));
    let changed = step(&mut desired, &services, &slices, &["ns/a"]);
    assert_eq!(changed.into_iter().map(|f| f.port).collect::<Vec<_>>(), [80]);

    // c wants b's external IP:port: it waits, and gets it once b is gone.
    let mut c = service("ns/c", "10.96.0.12").port("", 53, Protocol::Udp);
    c.external_ips = vec!["192.0.2.1".parse().unwrap()];
    services.insert("ns/c".into(), c);
    step(&mut desired, &services, &slices, &["ns/c"]);
    assert_eq!(desired.problems().count(), 1);
    services.remove("ns/b");
    step(&mut desired, &services, &slices, &["ns/b"]);
    assert_eq!(desired.problems().count(), 0);

    // A healthCheckNodePort comes and goes with its Service.
    let mut h = service("ns/h", "10.96.0.13").node_port("", 80, 30080);
    h.external_traffic_local = true;
    h.health_check_node_port = Some(32000);
    services.insert("ns/h".into(), h);
    step(&mut desired, &services, &slices, &["ns/h"]);
    assert_eq!(desired.health_checks().len(), 1);
    services.remove("ns/h");
    step(&mut desired, &services, &slices, &["ns/h"]);
    assert!(desired.health_checks().is_empty());
    assert!(desired.frontends.values().any(|s| s.service == "ns/c" && s.kind == FrontendKind::ExternalIp));
}

/// ns/web's IPv6 slice: the IPv6 addresses of `web_slice`'s pods.
fn web_slice6(port: u16) -> EndpointSliceInfo {
    slice6("ns/web-v6", "ns/web")
        .port("", port, Protocol::Tcp)
        .ready("fd00:10:244:1::5", "n1")
        .ready("fd00:10:244:2::7", "n2")
}

/// A dual-stack Service gets frontends of both families, each with the
/// endpoints of its family's slices (kube-proxy: one proxier per family).
#[test]
fn dual_stack_service_gets_frontends_of_both_families() {
    let svc = service_dual("ns/web", "10.96.0.10", "fd00:10:96::a").port("", 80, Protocol::Tcp);
    let p = run(&[svc], &[web_slice(8080), web_slice6(8080)]);
    assert_eq!(
        table(&p),
        [
            "10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]",
            "[fd00:10:96::a]:80/TCP -> [[fd00:10:244:1::5]:8080 [fd00:10:244:2::7]:8080]",
        ]
    );
    assert!(p.problems.is_empty(), "{:?}", p.problems);
}

/// A single-stack Service takes its own family's slices only, whatever
/// slices exist: an IPv6 slice never feeds an IPv4 frontend, nor the
/// reverse.
#[test]
fn single_stack_services_take_their_family_of_slices_only() {
    let v4 = service("ns/web", "10.96.0.10").port("", 80, Protocol::Tcp);
    let p = run(&[v4], &[web_slice(8080), web_slice6(8080)]);
    assert_eq!(table(&p), ["10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]"]);

    let v6 = service("ns/web", "fd00:10:96::a").port("", 80, Protocol::Tcp);
    let p = run(std::slice::from_ref(&v6), &[web_slice(8080), web_slice6(8080)]);
    assert_eq!(table(&p), ["[fd00:10:96::a]:80/TCP -> [[fd00:10:244:1::5]:8080 [fd00:10:244:2::7]:8080]"]);
    // With only an IPv4 slice, the IPv6 Service has no endpoint (rejects).
    let p = run(&[v6], &[web_slice(8080)]);
    assert_eq!(table(&p), ["[fd00:10:96::a]:80/TCP -> []"]);
}

/// A family the cluster has no cluster CIDR of: reported, its frontends
/// skipped, the other family served.
#[test]
fn a_family_the_cluster_lacks_is_reported_and_skipped() {
    let v4_cluster = LbNode { families: [Family::Ipv4].into(), ..node() };
    let dual = service_dual("ns/web", "10.96.0.10", "fd00:10:96::a").port("", 80, Protocol::Tcp);
    let v6 = service("ns/v6", "fd00:10:96::b").port("", 80, Protocol::Tcp);
    let slices = [web_slice(8080), web_slice6(8080)];
    let p = plan([&dual, &v6], &by_service(&slices), &v4_cluster);
    assert_eq!(table(&p), ["10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]"]);
    let problems: Vec<_> = p.problems.iter().map(|p| format!("{}: {}", p.object, p.message)).collect();
    assert_eq!(
        problems,
        [
            "Service/ns/web: cluster IP fd00:10:96::a is IPv6, a family this cluster has no cluster CIDR of; its IPv6 frontends skipped",
            "Service/ns/v6: cluster IP fd00:10:96::b is IPv6, a family this cluster has no cluster CIDR of; its IPv6 frontends skipped",
        ]
    );
    // The IPv6-only cluster, the other way round.
    let v6_cluster = LbNode { families: [Family::Ipv6].into(), ..node() };
    let p = plan([&dual], &by_service(&slices), &v6_cluster);
    assert_eq!(table(&p), ["[fd00:10:96::a]:80/TCP -> [[fd00:10:244:1::5]:8080 [fd00:10:244:2::7]:8080]"]);
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
}

/// NodePorts on the node's address of each family the Service has;
/// external IPs, load-balancer IPs and source ranges each to the frontends
/// of their own family.
#[test]
fn external_frontends_of_a_dual_stack_service_per_family() {
    let mut svc = service_dual("ns/web", "10.96.0.10", "fd00:10:96::a").node_port("", 80, 30080);
    svc.type_ = ServiceType::LoadBalancer;
    svc.external_ips = vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()];
    svc.lb_ingress_ips = vec!["198.51.100.7".parse().unwrap(), "2001:db8::7".parse().unwrap()];
    svc.lb_source_ranges = vec!["203.0.113.0/24".parse().unwrap(), "2001:db8:1::/48".parse().unwrap()];
    let p = run(&[svc], &[web_slice(8080), web_slice6(8080)]);
    let fronts: Vec<String> = p
        .frontends
        .iter()
        .map(|(f, s)| {
            let ranges: Vec<String> = s.source_ranges.iter().map(|r| r.to_string()).collect();
            format!("{} {:?} {}", SocketAddr::new(f.addr, f.port), s.kind, ranges.join(","))
        })
        .collect();
    assert_eq!(
        fronts,
        [
            "10.96.0.10:80 ClusterIp ",
            "172.30.0.11:30080 NodePort ",
            "192.0.2.10:80 ExternalIp ",
            "198.51.100.7:80 LoadBalancer 203.0.113.0/24",
            "[2001:db8::7]:80 LoadBalancer 2001:db8:1::/48",
            "[2001:db8::10]:80 ExternalIp ",
            "[fd00:10:96::a]:80 ClusterIp ",
            "[fd00:172:30::11]:30080 NodePort ",
        ]
    );
    // Every IPv6 frontend has the IPv6 endpoints, every IPv4 one the IPv4.
    for (f, s) in &p.frontends {
        assert!(s.backends.iter().all(|b| b.addr.addr.is_ipv6() == f.addr.is_ipv6()), "{f:?}");
        assert_eq!(s.backends.len(), 2);
    }
}

/// Bad input: an external IP of a family the Service has no cluster IP of
/// (kube-proxy skips it silently), and a slice's address of the wrong
/// family (the converter skips it): both reported.
#[test]
fn external_ip_of_an_unserved_family_and_slice_problems_are_reported() {
    let mut svc = service("ns/web", "10.96.0.10").port("", 80, Protocol::Tcp);
    svc.external_ips = vec!["2001:db8::10".parse().unwrap()];
    let mut bad = web_slice6(8080);
    bad.problems.push("endpoint address \"10.244.1.9\" is not an IPv6 address (addressType); skipped".into());
    let p = run(&[svc], &[web_slice(8080), bad]);
    assert_eq!(table(&p), ["10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.2.7:8080]"]);
    let problems: Vec<_> = p.problems.iter().map(|p| format!("{}: {}", p.object, p.message)).collect();
    assert_eq!(
        problems,
        [
            "EndpointSlice/ns/web-v6: endpoint address \"10.244.1.9\" is not an IPv6 address (addressType); skipped",
            "Service/ns/web: externalIP 2001:db8::10 is IPv6, but the Service has no IPv6 cluster IP; skipped",
        ]
    );
}

/// A dual-stack pod is one local endpoint for the health check, not two.
#[test]
fn health_check_counts_a_dual_stack_endpoint_once() {
    let mut svc = service_dual("ns/web", "10.96.0.10", "fd00:10:96::a").node_port("", 80, 30080);
    svc.external_traffic_local = true;
    svc.health_check_node_port = Some(32000);
    let p = run(&[svc], &[web_slice(8080), web_slice6(8080)]);
    assert_eq!(p.health_checks[&32000], ("ns/web".to_string(), 1));
}
