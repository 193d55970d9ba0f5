//! Kubernetes API objects -> model types.
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::{
    core::v1::{Node, Service, ServiceSpec},
    discovery::v1::EndpointSlice,
};

pub mod policy;

// A NetworkPolicy that cannot be read in full arrives as its deny-all
// reading, never dropped.
use crate::model::{
    NodeInfo,
    policy::types::PodInfo,
    service::{EndpointSliceInfo, Family, Protocol, ServiceInfo, ServicePort, ServiceType, SliceEndpoint, SlicePort},
};
use crate::sources::pod_view::PodView;
pub use policy::{namespace, network_policy_or_deny};

/// `namespace/name` of any object.
pub fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or_default())
}

/// When the change behind an EndpointSlice's current version happened
/// (RFC 3339), set by the EndpointSlice controller.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Services (and their EndpointSlices, which carry the Service's labels)
/// that the default Service proxy leaves alone, as kube-proxy selects its
/// informers (cmd/kube-proxy/app/server.go): `service.kubernetes.io/headless`
/// marks a headless Service, `service.kubernetes.io/service-proxy-name`
/// hands a Service to another proxy. Either label, whatever its value.
pub const NOT_PROXIED_LABELS: [&str; 2] =
    ["service.kubernetes.io/headless", "service.kubernetes.io/service-proxy-name"];

/// The label selector of the Service watch: `!headless,!service-proxy-name`.
/// The API server then sends DELETED when a Service gains either label and
/// ADDED when it loses it, so the frontends follow at run time.
pub fn proxied_selector() -> String {
    NOT_PROXIED_LABELS.iter().map(|l| format!("!{l}")).collect::<Vec<_>>().join(",")
}

/// Whether the default proxy serves objects with this metadata (the
/// sources check it too: the manifest-dir source has no selectors, and a
/// watch's selector is only as good as the server applying it).
pub fn is_proxied(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels.as_ref().is_none_or(|labels| !NOT_PROXIED_LABELS.iter().any(|l| labels.contains_key(*l)))
}
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

fn port(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// `None` for a Service the default proxy must not serve (`is_proxied`).
///
/// What cannot be read as written is skipped and said in `problems`, in
/// the order of the fields below.
pub fn service(svc: &Service) -> Option<ServiceInfo> {
    if !is_proxied(&svc.metadata) {
        return None;
    }
    let key = key(&svc.metadata);
    let mut problems = Vec::new();
    let spec = svc.spec.clone().unwrap_or_default();
    let type_ = service_type(spec.type_.as_deref(), &mut problems);
    let (cluster_ips, headless) = cluster_ips(&spec, &mut problems);
    let ports = service_ports(spec.ports.clone().unwrap_or_default(), &mut problems);
    let external_ips = ip_list(spec.external_ips.clone(), "externalIP", &mut problems);
    let lb_ingress_ips = ip_list(lb_ingress_addresses(svc), "load-balancer ingress IP", &mut problems);
    let lb_source_ranges = source_ranges(spec.load_balancer_source_ranges.clone(), &mut problems);
    let external = matches!(type_, ServiceType::NodePort | ServiceType::LoadBalancer) || !external_ips.is_empty();
    Some(ServiceInfo {
        key,
        type_,
        cluster_ips,
        headless,
        ports,
        external_ips,
        lb_ingress_ips,
        lb_source_ranges,
        affinity_timeout: affinity_timeout(&spec),
        external_traffic_local: external && spec.external_traffic_policy.as_deref() == Some("Local"),
        internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        health_check_node_port: spec.health_check_node_port.and_then(port),
        problems,
    })
}

/// `spec.type`; an unknown one is served as ClusterIP.
fn service_type(raw: Option<&str>, problems: &mut Vec<String>) -> ServiceType {
    match raw.unwrap_or("ClusterIP") {
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::ExternalName,
        "ClusterIP" => ServiceType::ClusterIp,
        other => {
            problems.push(format!("unknown type {other:?}; treated as ClusterIP"));
            ServiceType::ClusterIp
        }
    }
}

/// The cluster IPs (from `clusterIPs`, else `clusterIP`), at most one per
/// family, and whether the Service is headless (`None`).
///
/// `ipFamilies[i]` names the family of `clusterIPs[i]` (the API server
/// keeps them in step); an address of the other family there is reported
/// and skipped, never served as the family it claims. `ipFamilyPolicy:
/// SingleStack` keeps the primary (first) cluster IP only. Which families
/// the cluster has is the plan's to check (`model::lb`).
fn cluster_ips(spec: &ServiceSpec, problems: &mut Vec<String>) -> (Vec<IpAddr>, bool) {
    let raw_ips: Vec<String> = match spec.cluster_ips.clone().filter(|ips| !ips.is_empty()) {
        Some(ips) => ips,
        None => spec.cluster_ip.clone().into_iter().collect(),
    };
    let headless = raw_ips.iter().any(|ip| ip == "None");
    if headless {
        return (Vec::new(), true);
    }
    let families = spec.ip_families.clone().unwrap_or_default();
    let single_stack = spec.ip_family_policy.as_deref() == Some("SingleStack");
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    for (i, raw) in raw_ips.iter().enumerate().filter(|(_, ip)| !ip.is_empty()) {
        let Ok(ip) = raw.parse::<IpAddr>() else {
            problems.push(format!("clusterIP {raw:?} is not an IP address; skipped"));
            continue;
        };
        let family = Family::of(&ip);
        if let Some(named) = families.get(i)
            && Family::parse(named) != Some(family)
        {
            problems
                .push(format!("clusterIPs[{i}] {ip} is {} but ipFamilies[{i}] is {named:?}; skipped", family.name()));
            continue;
        }
        if cluster_ips.contains(&ip) {
            continue;
        }
        if cluster_ips.iter().any(|c| Family::of(c) == family) {
            problems.push(format!("clusterIPs has a second {} address {ip}; skipped", family.name()));
            continue;
        }
        if single_stack && !cluster_ips.is_empty() {
            problems.push(format!("ipFamilyPolicy is SingleStack: secondary clusterIP {ip} skipped"));
            continue;
        }
        cluster_ips.push(ip);
    }
    (cluster_ips, headless)
}

fn service_ports(raw: Vec<k8s_openapi::api::core::v1::ServicePort>, problems: &mut Vec<String>) -> Vec<ServicePort> {
    raw.into_iter().filter_map(|sp| service_port(sp, problems)).collect()
}

/// One port; `None` (and a problem) for an unsupported protocol or an
/// invalid port. An invalid nodePort drops only the NodePort.
fn service_port(sp: k8s_openapi::api::core::v1::ServicePort, problems: &mut Vec<String>) -> Option<ServicePort> {
    let name = sp.name.clone().unwrap_or_default();
    let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
        problems.push(format!("port {name:?}: protocol {:?} is not supported; port skipped", sp.protocol));
        return None;
    };
    let Some(p) = port(sp.port) else {
        problems.push(format!("port {name:?}: {} is not a valid port; port skipped", sp.port));
        return None;
    };
    let node_port = match sp.node_port {
        None => None,
        Some(np) => match port(np) {
            Some(np) => Some(np),
            None => {
                problems.push(format!("port {name:?}: nodePort {np} is not a valid port; NodePort skipped"));
                None
            }
        },
    };
    Some(ServicePort { name, port: p, protocol, node_port })
}

/// The addresses of a list of `what`, of both families (each family's
/// frontends take their own); anything else is skipped with a problem.
fn ip_list(list: Option<Vec<String>>, what: &str, problems: &mut Vec<String>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for raw in list.unwrap_or_default() {
        match raw.trim().parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => problems.push(format!("{what} {raw:?} is not an IP address; skipped")),
        }
    }
    out
}

/// The `ip`s of `status.loadBalancer.ingress` (hostname-only entries have
/// none).
fn lb_ingress_addresses(svc: &Service) -> Option<Vec<String>> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| ing.iter().filter_map(|i| i.ip.clone()).collect())
}

/// `loadBalancerSourceRanges`: CIDRs of both families (trimmed: the API's
/// validation lets padding through, as kube-proxy notes).
fn source_ranges(list: Option<Vec<String>>, problems: &mut Vec<String>) -> Vec<IpNetwork> {
    let mut ranges = Vec::new();
    for raw in list.unwrap_or_default() {
        match raw.trim().parse::<IpNetwork>() {
            Ok(net) => ranges.push(net),
            Err(_) => problems.push(format!("loadBalancerSourceRanges entry {raw:?} is not a CIDR; skipped")),
        }
    }
    ranges
}

/// The ClientIP affinity timeout in seconds, `None` without ClientIP
/// affinity; a missing or non-positive timeout is the API's default.
fn affinity_timeout(spec: &ServiceSpec) -> Option<u32> {
    (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    })
}

/// `None` for slices weir does not use (FQDN, not owned by a Service, or of
/// a Service the default proxy leaves alone). An IPv4 slice feeds the IPv4
/// frontends, an IPv6 slice the IPv6 ones; an address not of the slice's
/// `addressType` is reported and skipped.
pub fn endpoint_slice(slice: &EndpointSlice) -> Option<EndpointSliceInfo> {
    let family = Family::parse(&slice.address_type)?;
    if !is_proxied(&slice.metadata) {
        return None;
    }
    let mut problems = Vec::new();
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let ports = slice
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(SlicePort {
                name: p.name.unwrap_or_default(),
                port: port(p.port?)?,
                protocol: Protocol::parse(p.protocol.as_deref())?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .map(|ep| {
            let c = ep.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let mut addresses = Vec::new();
            for raw in &ep.addresses {
                match raw.parse::<IpAddr>() {
                    Ok(ip) if Family::of(&ip) == family => addresses.push(ip),
                    _ => problems.push(format!(
                        "endpoint address {raw:?} is not an {} address (addressType); skipped",
                        family.name()
                    )),
                }
            }
            SliceEndpoint {
                addresses,
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                node_name: ep.node_name.clone(),
            }
        })
        .collect();
    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAST_CHANGE_TRIGGER_TIME))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(std::time::SystemTime::from);
    Some(EndpointSliceInfo {
        key: key(&slice.metadata),
        service: format!("{namespace}/{service}"),
        family,
        ports,
        endpoints,
        trigger_time,
        problems,
    })
}

/// Pod phases after which the pod's address is gone (and may be reused).
const FINISHED_PHASES: [&str; 2] = ["Succeeded", "Failed"];

/// Leaves finished Pods out on the API server's side (the watch then says
/// DELETED when a pod finishes); `pod` checks again.
pub const POD_FIELD_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// A Pod as the policy model sees it, or `None` for those it must not see:
/// - finished Pods (Succeeded, Failed) keep `status.podIP` after the CNI
///   released the address, which another pod may already have;
/// - host-network Pods: their address is the node's, so to policies they
///   are the node (as in Cilium and Calico), and they have no pod veth to
///   enforce at.
///
/// Pods without an address yet are kept: the agent knows a pod's policy by
/// name before weir-cni gives it an address.
pub fn pod(pod: &PodView) -> Option<PodInfo> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase.is_some_and(|p| FINISHED_PHASES.contains(&p)) {
        return None;
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    Some(policy::pod(pod))
}

pub fn node(node: &Node) -> NodeInfo {
    let name = node.metadata.name.clone().unwrap_or_default();
    let spec = node.spec.as_ref();
    // Dual-stack nodes list both families in podCIDRs: the first of each.
    let pod_cidrs: Vec<ipnetwork::IpNetwork> = spec
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .filter_map(|c| c.parse().ok())
        .collect();
    let internal_ips: Vec<std::net::IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    use ipnetwork::IpNetwork::{V4, V6};
    use std::net::IpAddr;
    NodeInfo {
        name,
        pod_cidr: pod_cidrs.iter().find_map(|c| if let V4(n) = c { Some(*n) } else { None }),
        internal_ip: internal_ips.iter().find_map(|a| if let IpAddr::V4(a) = a { Some(*a) } else { None }),
        pod_cidr_v6: pod_cidrs.iter().find_map(|c| if let V6(n) = c { Some(*n) } else { None }),
        internal_ip_v6: internal_ips.iter().find_map(|a| if let IpAddr::V6(a) = a { Some(*a) } else { None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_ipv4_pod_cidr_and_internal_ip() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "w1"},
            "spec": {"podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.244.4.0/24"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "w1"},
                {"type": "InternalIP", "address": "fc00::4"},
                {"type": "InternalIP", "address": "172.18.0.4"}
            ]}
        }))
        .unwrap();
        let info = node(&n);
        assert_eq!(info.name, "w1");
        assert_eq!(info.pod_cidr.unwrap().to_string(), "10.244.4.0/24");
        assert_eq!(info.internal_ip.unwrap().to_string(), "172.18.0.4");
        // And the IPv6 family of the dual-stack node.
        assert_eq!(info.pod_cidr_v6.unwrap().to_string(), "fd00::/64");
        assert_eq!(info.internal_ip_v6.unwrap().to_string(), "fc00::4");
    }

    #[test]
    fn service_with_everything() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "bad", "port": 70000}
                ],
                "externalIPs": ["192.0.2.1", "nope"],
                "loadBalancerSourceRanges": ["203.0.113.0/24", "junk"],
                "sessionAffinity": "ClientIP",
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example"}]}}
        }))
        .unwrap();
        let info = service(&s).unwrap();
        assert_eq!(info.key, "shop/web");
        assert_eq!(info.type_, ServiceType::LoadBalancer);
        assert_eq!(info.cluster_ips, ["10.96.0.10".parse::<IpAddr>().unwrap(), "fd00::10".parse().unwrap()]);
        assert_eq!(info.ports.len(), 2);
        assert_eq!(info.ports[0].node_port, Some(30080));
        assert_eq!(info.ports[1].protocol, Protocol::Udp);
        assert_eq!(info.external_ips.len(), 1);
        assert_eq!(info.lb_ingress_ips, ["198.51.100.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(info.lb_source_ranges.len(), 1);
        assert_eq!(info.affinity_timeout, Some(10_800));
        assert!(info.external_traffic_local);
        assert_eq!(info.health_check_node_port, Some(32000));
        assert_eq!(info.problems.len(), 3, "{:?}", info.problems);
    }

    fn service_spec(spec: serde_json::Value) -> ServiceInfo {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "x"},
            "spec": spec,
        }))
        .unwrap();
        service(&s).unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    /// `clusterIPs` of both families, as a dual-stack Service has them
    /// (either primary), and every address list of both families.
    #[test]
    fn dual_stack_service_keeps_both_families() {
        let info = service_spec(serde_json::json!({
            "type": "LoadBalancer",
            "clusterIP": "fd00:10:96::a", "clusterIPs": ["fd00:10:96::a", "10.96.0.10"],
            "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"port": 80}],
            "externalIPs": ["192.0.2.1", "2001:db8::1"],
            "loadBalancerSourceRanges": [" 203.0.113.0/24", "2001:db8:1::/48"]
        }));
        assert_eq!(info.cluster_ips, ips(&["fd00:10:96::a", "10.96.0.10"]));
        assert_eq!(info.external_ips, ips(&["192.0.2.1", "2001:db8::1"]));
        assert_eq!(
            info.lb_source_ranges,
            ["203.0.113.0/24".parse::<IpNetwork>().unwrap(), "2001:db8:1::/48".parse().unwrap()]
        );
        assert!(info.problems.is_empty(), "{:?}", info.problems);
        // An IPv6-only Service.
        let info = service_spec(serde_json::json!({
            "clusterIP": "fd00:10:96::b", "clusterIPs": ["fd00:10:96::b"], "ipFamilies": ["IPv6"],
            "ports": [{"port": 80}]
        }));
        assert_eq!(info.cluster_ips, ips(&["fd00:10:96::b"]));
    }

    /// Bad input: an address of the other family where `ipFamilies` names
    /// one, two of one family, a secondary IP on a SingleStack Service:
    /// each reported and skipped, never served as the family it claims.
    #[test]
    fn cluster_ips_of_the_wrong_family_are_reported_and_skipped() {
        let info = service_spec(serde_json::json!({
            "clusterIPs": ["10.96.0.10", "10.96.0.11"], "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 80}]
        }));
        assert_eq!(info.cluster_ips, ips(&["10.96.0.10"]));
        assert_eq!(info.problems, ["clusterIPs[1] 10.96.0.11 is IPv4 but ipFamilies[1] is \"IPv6\"; skipped"]);

        let info = service_spec(serde_json::json!({
            "clusterIPs": ["fd00::a"], "ipFamilies": ["IPv4"], "ports": [{"port": 80}]
        }));
        assert!(info.cluster_ips.is_empty());
        assert_eq!(info.problems.len(), 1, "{:?}", info.problems);

        let info = service_spec(serde_json::json!({
            "clusterIPs": ["10.96.0.10", "10.96.0.11", "bogus"], "ports": [{"port": 80}]
        }));
        assert_eq!(info.cluster_ips, ips(&["10.96.0.10"]));
        assert_eq!(info.problems.len(), 2, "{:?}", info.problems);

        let info = service_spec(serde_json::json!({
            "clusterIPs": ["10.96.0.10", "fd00::a"], "ipFamilyPolicy": "SingleStack", "ports": [{"port": 80}]
        }));
        assert_eq!(info.cluster_ips, ips(&["10.96.0.10"]));
        assert_eq!(info.problems.len(), 1, "{:?}", info.problems);
    }

    /// An IPv6 slice is read as IPv6 (it feeds the IPv6 frontends); an
    /// address of the other family in a slice is reported and skipped.
    #[test]
    fn endpoint_slices_carry_their_family() {
        let es: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-v6", "namespace": "x", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv6",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["fd00:10:244:1::5"]}, {"addresses": ["10.244.1.5"]}]
        }))
        .unwrap();
        let info = endpoint_slice(&es).unwrap();
        assert_eq!(info.family, Family::Ipv6);
        assert_eq!(info.endpoints[0].addresses, ips(&["fd00:10:244:1::5"]));
        assert!(info.endpoints[1].addresses.is_empty());
        assert_eq!(info.problems, ["endpoint address \"10.244.1.5\" is not an IPv6 address (addressType); skipped"]);
    }

    #[test]
    fn headless_service() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "namespace": "x"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }))
        .unwrap();
        let info = service(&s).unwrap();
        assert!(info.headless && info.cluster_ips.is_empty());
    }

    /// Upstream e2e `test/e2e/network/service.go` "should implement
    /// service.kubernetes.io/headless" and "... service-proxy-name": a
    /// Service (and its slices) carrying either label, whatever its value,
    /// is not the default proxy's.
    #[test]
    fn labelled_services_and_slices_are_not_proxied() {
        for label in NOT_PROXIED_LABELS {
            for value in ["", "foo-bar"] {
                let s: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "web", "namespace": "x", "labels": {label: value, "app": "web"}},
                    "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
                }))
                .unwrap();
                assert_eq!(service(&s), None, "{label}={value:?}");
                let es: EndpointSlice = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "web-a", "namespace": "x", "labels": {SERVICE_NAME_LABEL: "web", label: value}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.244.1.5"]}]
                }))
                .unwrap();
                assert_eq!(endpoint_slice(&es), None, "{label}={value:?}");
            }
        }
        let plain: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "x", "labels": {"service.kubernetes.io/other": "x"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }))
        .unwrap();
        assert!(service(&plain).is_some());
        assert_eq!(proxied_selector(), "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name");
    }

    #[test]
    fn endpoint_slice_conditions_default_per_api() {
        let es: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T19:13:07Z"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "n1"},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }))
        .unwrap();
        let info = endpoint_slice(&es).unwrap();
        assert_eq!(info.service, "shop/web");
        let t = info.trigger_time.unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(t, 1_796_497_987, "2026-12-05T19:13:07Z");
        assert_eq!(info.ports[0].port, 8080);
        assert_eq!(info.ports[0].protocol, Protocol::Tcp);
        let e = &info.endpoints;
        assert!(e[0].ready && e[0].serving && !e[0].terminating);
        assert!(!e[1].ready && e[1].serving && e[1].terminating);

        let mut fqdn = es.clone();
        fqdn.address_type = "FQDN".into();
        assert!(endpoint_slice(&fqdn).is_none());
        let mut orphan = es;
        orphan.metadata.labels = None;
        assert!(endpoint_slice(&orphan).is_none());
    }

    #[test]
    fn finished_and_host_network_pods_are_not_policy_pods() {
        let p = |extra: serde_json::Value| -> PodView {
            let mut v = serde_json::json!({
                "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": "10.244.1.5"}
            });
            for (k, val) in extra.as_object().unwrap() {
                v[k].as_object_mut().unwrap().extend(val.as_object().unwrap().clone());
            }
            serde_json::from_value(v).unwrap()
        };
        let running = pod(&p(serde_json::json!({}))).unwrap();
        assert_eq!((&*running.key, running.ip), ("x/a", Some(std::net::Ipv4Addr::new(10, 244, 1, 5))));
        // Pending, no address yet: known by name already.
        let pending = pod(&p(serde_json::json!({"status": {"phase": "Pending", "podIP": null}}))).unwrap();
        assert_eq!(pending.ip, None);
        assert!(pod(&p(serde_json::json!({"status": {"phase": "Succeeded"}}))).is_none());
        assert!(pod(&p(serde_json::json!({"status": {"phase": "Failed"}}))).is_none());
        assert!(pod(&p(serde_json::json!({"spec": {"hostNetwork": true}}))).is_none());
        assert!(pod(&p(serde_json::json!({"spec": {"hostNetwork": false}}))).is_some());
    }

    #[test]
    fn missing_fields_are_none() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}
        }))
        .unwrap();
        let info = node(&n);
        assert_eq!((info.pod_cidr, info.internal_ip), (None, None));
    }
}
