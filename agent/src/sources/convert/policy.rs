//! Kubernetes Pods, Namespaces and NetworkPolicies -> the policy model.
//! What cannot be expressed is reported with the object's name; a policy
//! with an unusable part is never read more permissively than written.
use std::{
    net::IpAddr,
    sync::{Arc, LazyLock},
};

use ipnetwork::IpNetwork;

use k8s_openapi::{
    api::{
        core::v1::Namespace,
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec},
    },
    apimachinery::pkg::{apis::meta::v1 as meta, util::intstr::IntOrString},
};

use crate::model::{
    intern::Interner,
    policy::{
        selector::{LabelSelector, Labels, Requirement},
        types::{NamedPort, NamespaceInfo, NetworkPolicyInfo, PodInfo, PolicyPeer, PolicyPort, PolicyRule, PortRef},
    },
    service::Protocol,
};
use crate::sources::pod_view::PodView;

fn labels(meta: &meta::ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default().into_iter().collect()
}

/// The label the API server sets on every Namespace (1.21+), which
/// policies use to select a namespace by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The API server's own `kubernetes.io/metadata.name` label is added when
/// missing (a manifest directory may omit it), so namespaceSelectors on it
/// match as they do in a cluster.
pub fn namespace(ns: &Namespace) -> NamespaceInfo {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut labels = labels(&ns.metadata);
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    NamespaceInfo { name, labels }
}

/// Pods' label sets and named ports: a workload's pods share theirs.
static POD_LABELS: LazyLock<Interner<Labels>> = LazyLock::new(Interner::new);
static POD_PORTS: LazyLock<Interner<Vec<NamedPort>>> = LazyLock::new(Interner::new);

fn pod_labels(meta: &meta::ObjectMeta) -> Arc<Labels> {
    match &meta.labels {
        Some(labels) => POD_LABELS.intern_ref(labels),
        None => POD_LABELS.intern(Labels::new()),
    }
}

pub fn pod(pod: &PodView) -> PodInfo {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let status = pod.status.as_ref();
    // The first address of each family (podIPs, then podIP for servers
    // that fill in only that).
    let (mut ip, mut ip6) = (None, None);
    let pod_ips = status.and_then(|s| s.pod_ips.as_deref()).unwrap_or_default().iter().map(|p| &p.ip);
    for raw in pod_ips.chain(status.and_then(|s| s.pod_ip.as_ref())) {
        match raw.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => _ = ip.get_or_insert(a),
            Ok(IpAddr::V6(a)) => _ = ip6.get_or_insert(a),
            Err(_) => {}
        }
    }
    let spec = pod.spec.as_ref();
    let mut named_ports: Vec<NamedPort> = spec
        .map(|s| s.containers.iter().flat_map(|c| c.ports.clone().unwrap_or_default()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let name = p.name?;
            let proto = Protocol::parse(p.protocol.as_deref())?;
            Some((name, proto, u16::try_from(p.container_port).ok()?))
        })
        .collect();
    // Sorted, as identities keep them, so an identity shares the pod's.
    named_ports.sort();
    named_ports.dedup();
    PodInfo {
        key: format!("{namespace}/{}", pod.metadata.name.as_deref().unwrap_or_default()).into(),
        namespace,
        labels: pod_labels(&pod.metadata),
        ip,
        ip6,
        node: spec.and_then(|s| s.node_name.clone()),
        named_ports: POD_PORTS.intern(named_ports),
    }
}

fn selector(sel: &meta::LabelSelector) -> Result<LabelSelector, String> {
    let mut out = LabelSelector {
        match_labels: sel.match_labels.clone().unwrap_or_default().into_iter().collect(),
        expressions: vec![],
    };
    for e in sel.match_expressions.clone().unwrap_or_default() {
        let values = e.values.unwrap_or_default();
        out.expressions.push(match e.operator.as_str() {
            "In" => Requirement::In(e.key, values),
            "NotIn" => Requirement::NotIn(e.key, values),
            "Exists" => Requirement::Exists(e.key),
            "DoesNotExist" => Requirement::DoesNotExist(e.key),
            other => return Err(format!("label selector operator {other:?} is not valid")),
        });
    }
    Ok(out)
}

fn peer(p: &NetworkPolicyPeer) -> Result<PolicyPeer, String> {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("a peer with ipBlock may not have selectors".into());
        }
        let cidr: IpNetwork = block.cidr.parse().map_err(|_| format!("ipBlock cidr {:?} is not a CIDR", block.cidr))?;
        let except = block
            .except
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let net: IpNetwork = e.parse().map_err(|_| format!("ipBlock except {e:?} is not a CIDR"))?;
                // The API server refuses these; another source might not.
                if net.is_ipv4() != cidr.is_ipv4() {
                    return Err(format!("ipBlock except {e} is not of the family of its cidr {}", block.cidr));
                }
                Ok(net)
            })
            .collect::<Result<_, _>>()?;
        return Ok(PolicyPeer::IpBlock { cidr, except });
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err("an empty peer selects nothing valid: give podSelector, namespaceSelector or ipBlock".into());
    }
    Ok(PolicyPeer::Pods {
        namespaces: p.namespace_selector.as_ref().map(selector).transpose()?,
        pods: p.pod_selector.as_ref().map(selector).transpose()?,
    })
}

fn port(p: &NetworkPolicyPort) -> Result<PolicyPort, String> {
    let protocol =
        Protocol::parse(p.protocol.as_deref()).ok_or_else(|| format!("protocol {:?} is not supported", p.protocol))?;
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(
            u16::try_from(*n).ok().filter(|n| *n != 0).ok_or(format!("port {n} is out of range"))?,
        )),
        Some(IntOrString::String(name)) => Some(PortRef::Name(name.clone())),
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(end), Some(PortRef::Number(start))) => {
            let end = u16::try_from(end)
                .ok()
                .filter(|e| *e >= *start)
                .ok_or(format!("endPort {end} is not a port at or after {start}"))?;
            Some(end)
        }
        (Some(_), _) => return Err("endPort needs a numeric port".into()),
    };
    Ok(PolicyPort { protocol, port, end_port })
}

/// (ingress, egress) enforced. Upstream default when policyTypes is absent
/// or empty (the API server fills it in the same way): Ingress always,
/// Egress when there is an egress section.
fn directions(spec: &NetworkPolicySpec) -> Result<(bool, bool), String> {
    match spec.policy_types.as_deref() {
        None | Some([]) => Ok((true, spec.egress.is_some())),
        Some(types) => {
            if let Some(other) = types.iter().find(|t| *t != "Ingress" && *t != "Egress") {
                return Err(format!("policyType {other:?} is not Ingress or Egress"));
            }
            Ok((types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")))
        }
    }
}

/// The policy, or what makes it unusable. A policy that cannot be read in
/// full is not applied partially: the caller reports it and keeps the pods
/// it selects isolated with no rule (deny), the only reading that never
/// allows more than written.
pub fn network_policy(np: &NetworkPolicy) -> Result<NetworkPolicyInfo, String> {
    let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let key = format!("{namespace}/{}", np.metadata.name.as_deref().unwrap_or_default());
    let spec = np.spec.clone().unwrap_or_default();
    let (ingress_enabled, egress_enabled) = directions(&spec)?;
    let rules =
        |peers: Vec<Vec<NetworkPolicyPeer>>, ports: Vec<Vec<NetworkPolicyPort>>| -> Result<Vec<PolicyRule>, String> {
            peers
                .into_iter()
                .zip(ports)
                .map(|(pe, po)| {
                    Ok(PolicyRule {
                        peers: pe.iter().map(peer).collect::<Result<_, _>>()?,
                        ports: po.iter().map(port).collect::<Result<_, _>>()?,
                    })
                })
                .collect()
        };
    let ingress = spec.ingress.clone().unwrap_or_default();
    let egress = spec.egress.clone().unwrap_or_default();
    Ok(NetworkPolicyInfo {
        key,
        namespace,
        pod_selector: selector(&spec.pod_selector.clone().unwrap_or_default())?,
        ingress_enabled,
        egress_enabled,
        ingress: rules(
            ingress.iter().map(|r| r.from.clone().unwrap_or_default()).collect(),
            ingress.iter().map(|r| r.ports.clone().unwrap_or_default()).collect(),
        )?,
        egress: rules(
            egress.iter().map(|r| r.to.clone().unwrap_or_default()).collect(),
            egress.iter().map(|r| r.ports.clone().unwrap_or_default()).collect(),
        )?,
    })
}

/// `network_policy`, failing closed: a policy that cannot be read in full
/// is not dropped (that would open the pods it selects to everything) but
/// read as deny-all: the pods it selects are isolated, with no rule, in the
/// directions it declares. Returns the problem with it, for the source to
/// report.
///
/// The deny-all reading selects by the policy's podSelector when that
/// parses, and otherwise every pod of its namespace: a selector matching
/// nothing would leave the pods it meant to isolate open. Likewise both
/// directions are enforced when the policyTypes themselves are unreadable.
pub fn network_policy_or_deny(np: &NetworkPolicy) -> (NetworkPolicyInfo, Option<String>) {
    match network_policy(np) {
        Ok(p) => (p, None),
        Err(problem) => {
            let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let key = format!("{namespace}/{}", np.metadata.name.as_deref().unwrap_or_default());
            let spec = np.spec.clone().unwrap_or_default();
            let (ingress_enabled, egress_enabled) = directions(&spec).unwrap_or((true, true));
            let pod_selector = selector(&spec.pod_selector.clone().unwrap_or_default()).unwrap_or_default();
            let deny = NetworkPolicyInfo {
                key,
                namespace,
                pod_selector,
                ingress_enabled,
                egress_enabled,
                ingress: vec![],
                egress: vec![],
            };
            (deny, Some(format!("{problem}; enforced as deny-all for the pods it selects until fixed")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn policy_types_default_per_upstream() {
        let p = network_policy(&np(json!({"podSelector": {}}))).unwrap();
        assert!(p.ingress_enabled && !p.egress_enabled);
        assert!(p.ingress.is_empty(), "no rules: deny all ingress");
        let p = network_policy(&np(json!({"podSelector": {}, "egress": []}))).unwrap();
        assert!(p.ingress_enabled && p.egress_enabled);
        let p = network_policy(&np(json!({"podSelector": {}, "policyTypes": ["Egress"]}))).unwrap();
        assert!(!p.ingress_enabled && p.egress_enabled);
    }

    #[test]
    fn peers_ports_and_selectors() {
        let p = network_policy(&np(json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [
                    {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]},
                     "podSelector": {"matchLabels": {"pod": "b"}}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}}
                 ],
                 "ports": [{"port": 80}, {"protocol": "UDP", "port": "dns"}, {"port": 8000, "endPort": 8080}]},
                {}
            ]
        })))
        .unwrap();
        assert_eq!(p.ingress.len(), 2);
        let r = &p.ingress[0];
        assert!(matches!(&r.peers[0], PolicyPeer::Pods { namespaces: Some(_), pods: Some(_) }));
        assert!(matches!(&r.peers[1], PolicyPeer::IpBlock { except, .. } if except.len() == 1));
        assert!(
            matches!(&r.peers[2], PolicyPeer::IpBlock { cidr, except } if cidr.is_ipv6() && except[0].prefix() == 32)
        );
        assert_eq!(r.ports[0], PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Number(80)), end_port: None });
        assert_eq!(r.ports[1].port, Some(PortRef::Name("dns".into())));
        assert_eq!(r.ports[2].end_port, Some(8080));
        assert_eq!(p.ingress[1], PolicyRule::default(), "an empty rule allows everything");
    }

    #[test]
    fn unusable_parts_are_errors_not_guesses() {
        for spec in [
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]}),
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/8"]}}]}]}),
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
        ] {
            assert!(network_policy(&np(spec.clone())).is_err(), "{spec}");
        }
    }

    #[test]
    fn empty_or_unknown_policy_types() {
        // Empty is absent: the API server defaults it.
        let p = network_policy(&np(json!({"podSelector": {}, "policyTypes": []}))).unwrap();
        assert!(p.ingress_enabled && !p.egress_enabled);
        assert!(network_policy(&np(json!({"podSelector": {}, "policyTypes": ["ingress"]}))).is_err());
    }

    #[test]
    fn readable_policies_pass_through_the_fail_closed_reading() {
        let spec = json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80}]}]});
        let (p, problem) = network_policy_or_deny(&np(spec.clone()));
        assert_eq!(problem, None);
        assert_eq!(p, network_policy(&np(spec)).unwrap());
    }

    #[test]
    fn unreadable_policies_deny_what_they_select() {
        // A bad rule: the pods the selector picks are isolated, no rule.
        let (p, problem) = network_policy_or_deny(&np(json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": 70000}]}],
            "egress": [{}]
        })));
        let problem = problem.expect("a problem");
        assert!(problem.contains("70000") && problem.contains("deny-all"), "{problem}");
        assert_eq!(p.key, "x/p");
        assert_eq!(p.namespace, "x");
        assert_eq!(p.pod_selector.match_labels.get("pod").map(String::as_str), Some("a"));
        assert!(p.ingress_enabled && p.egress_enabled);
        assert!(p.ingress.is_empty() && p.egress.is_empty(), "no rule may survive: {p:?}");

        // Only the declared directions (the upstream default here: Ingress).
        let (p, problem) = network_policy_or_deny(&np(json!({
            "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]
        })));
        assert!(problem.is_some());
        assert!(p.ingress_enabled && !p.egress_enabled);

        // The selector itself is unreadable: every pod of the namespace,
        // never none.
        let (p, problem) = network_policy_or_deny(&np(json!({
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            "policyTypes": ["Egress"],
            "egress": [{}]
        })));
        assert!(problem.unwrap().contains("Near"));
        assert_eq!(p.pod_selector, LabelSelector::default());
        let pod = |ns: &str, labels: &[(&str, &str)]| PodInfo {
            key: format!("{ns}/q").into(),
            namespace: ns.into(),
            labels: Arc::new(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ip: None,
            ip6: None,
            node: None,
            named_ports: vec![].into(),
        };
        assert!(p.selects(&pod("x", &[])) && p.selects(&pod("x", &[("a", "b")])));
        assert!(!p.selects(&pod("y", &[])), "other namespaces are not this policy's");
        assert!(!p.ingress_enabled && p.egress_enabled && p.egress.is_empty());

        // Unreadable policyTypes: both directions.
        let (p, _) = network_policy_or_deny(&np(json!({"podSelector": {}, "policyTypes": ["Sideways"]})));
        assert!(p.ingress_enabled && p.egress_enabled);
    }

    #[test]
    fn pods_and_namespaces() {
        let p: PodView = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                {"name": "serve-80-tcp", "containerPort": 80},
                {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
                {"containerPort": 9000}
            ]}]},
            "status": {"podIP": "fd00::1", "podIPs": [{"ip": "fd00::1"}, {"ip": "10.244.1.5"}]}
        }))
        .unwrap();
        let info = pod(&p);
        assert_eq!(&*info.key, "x/a");
        assert_eq!(info.ip, Some(std::net::Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(info.ip6, Some("fd00::1".parse().unwrap()));
        assert_eq!(info.node.as_deref(), Some("n1"));
        assert_eq!(
            *info.named_ports,
            [("serve-80-tcp".to_string(), Protocol::Tcp, 80), ("serve-81-udp".to_string(), Protocol::Udp, 81)]
        );
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"ns": "x"}}})).unwrap();
        assert_eq!(namespace(&ns).labels.get("ns").map(String::as_str), Some("x"));
        assert_eq!(namespace(&ns).labels.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("x"));
    }
}
