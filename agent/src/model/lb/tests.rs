//! Table tests: Service + EndpointSlices -> frontends and backends.
use super::*;
use crate::model::service::build::{service, slice};

fn node() -> LbNode {
    LbNode { name: "n1".into(), addrs: vec!["172.30.0.11".parse().unwrap()] }
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
            let backends: Vec<String> = s.backends.iter().map(|b| format!("{}:{}", b.addr.addr, b.addr.port)).collect();
            let scope = if f.scope == Scope::Internal { "[int]" } else { "" };
            format!("{}:{}/{}{} -> [{}]", f.addr, f.port, f.proto.name(), scope, backends.join(" "))
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
fn sctp_port_remap_is_reported_and_skipped() {
    let svc = service("ns/s", "10.96.0.20").port("a", 3868, Protocol::Sctp).port("b", 9999, Protocol::Sctp);
    let sl = slice("ns/s-a", "ns/s")
        .port("a", 3869, Protocol::Sctp)
        .port("b", 9999, Protocol::Sctp)
        .ready("10.244.1.5", "n1");
    let p = run(&[svc], &[sl]);
    assert_eq!(table(&p), ["10.96.0.20:9999/SCTP -> [10.244.1.5:9999]"]);
    assert_eq!(p.problems.len(), 1);
    assert!(p.problems[0].message.contains("targetPort"), "{:?}", p.problems);
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
