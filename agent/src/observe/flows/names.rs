//! The names behind a flow's numbers, in one table the reconcile loop
//! rebuilds after each pass and swaps in whole; the reader names every
//! flow from the table it holds, without locks or recomputation per flow.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use crate::model::by_family::ByFamily;
use weir_common::{
    DropReason,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS, FlowEvent, FlowVerdict},
};

use super::flow::{Clock, Flow, Peer, direction_name, protocol_name, reason_name, rfc3339, verdict_name};
use crate::model::{ClusterIndex, policy::types::PodInfo};

/// The policies isolating a pod for ingress and for egress.
type Isolating = (Arc<[String]>, Arc<[String]>);

#[derive(Clone, Debug, Default)]
pub struct NameTable {
    pub node: String,
    /// Pod address -> `namespace/name` (pods of every node), shared.
    pods_by_ip: Arc<ByFamily<Arc<str>>>,
    /// Local endpoint (host veth ifindex) -> `namespace/name`.
    endpoints: BTreeMap<u32, String>,
    /// Node address -> node name.
    nodes_by_ip: HashMap<IpAddr, String>,
    /// (frontend address, port, protocol) -> Service `namespace/name`.
    frontends: HashMap<(IpAddr, u16, u8), String>,
    /// (nodePort, protocol) -> Service.
    node_ports: HashMap<(u16, u8), String>,
    /// Policy slot -> policy `namespace/name`.
    slots: BTreeMap<u32, String>,
    /// Local pod -> (policies isolating it for ingress, for egress), shared
    /// with every flow that names them.
    isolating: HashMap<String, Isolating>,
    /// Policy slot -> the same name, shared with the flows it allowed.
    slot_names: HashMap<u32, Arc<[String]>>,
}

/// Pod address -> `namespace/name` for every pod of the cluster, updated
/// change by change by the reconcile loop and shared by every name table
/// built from it (until it changes again). Copying every pod's name into
/// each table was most of the agent's CPU under pod churn at 15,000 pods.
#[derive(Clone, Debug, Default)]
pub struct PodAddresses(Arc<ByFamily<Arc<str>>>);

impl PodAddresses {
    pub fn of(index: &ClusterIndex) -> Self {
        let mut out = Self::default();
        for pod in index.pods.iter() {
            out.change(None, Some(pod));
        }
        out
    }

    /// A pod came, went or changed (its addresses of both families). Two
    /// pods claiming one address (a stale status): the one that claimed it
    /// last.
    pub fn change(&mut self, old: Option<&PodInfo>, new: Option<&PodInfo>) {
        let map = Arc::make_mut(&mut self.0);
        if let Some(old) = old {
            for ip in old.addrs() {
                if map.get(&ip).is_some_and(|k| **k == *old.key) {
                    map.remove(&ip);
                }
            }
        }
        if let Some(new) = new {
            for ip in new.addrs() {
                map.insert(ip, new.key.clone());
            }
        }
    }
}

impl NameTable {
    /// The table for `index`: `slots` and `endpoints` as the policy sync
    /// knows them (`PolicySync::names`).
    pub fn build(
        index: &ClusterIndex,
        node: &str,
        slots: BTreeMap<u32, String>,
        endpoints: BTreeMap<u32, String>,
    ) -> Self {
        Self::build_with(index, &PodAddresses::of(index), node, slots, endpoints)
    }

    /// `build`, with the pods' addresses as the reconcile loop keeps them.
    pub fn build_with(
        index: &ClusterIndex,
        pods: &PodAddresses,
        node: &str,
        slots: BTreeMap<u32, String>,
        endpoints: BTreeMap<u32, String>,
    ) -> Self {
        let nodes_by_ip: HashMap<_, _> = index
            .nodes()
            .flat_map(|n| {
                let v4 = n.internal_ip.map(IpAddr::V4);
                v4.into_iter().chain(n.internal_ip_v6.map(IpAddr::V6)).map(|ip| (ip, n.name.clone()))
            })
            .collect();
        let pods_by_ip = pods.0.clone();
        let mut frontends = HashMap::new();
        let mut node_ports = HashMap::new();
        for svc in index.services.iter() {
            for port in &svc.ports {
                let proto = port.protocol.number();
                for ip in svc.cluster_ips.iter().chain(&svc.external_ips).chain(&svc.lb_ingress_ips) {
                    frontends.insert((*ip, port.port, proto), svc.key.clone());
                }
                if let Some(np) = port.node_port {
                    node_ports.insert((np, proto), svc.key.clone());
                }
            }
        }
        let mut isolating = HashMap::new();
        for key in endpoints.values() {
            let Some(pod) = index.pods.get(key) else { continue };
            let (mut ingress, mut egress) = (Vec::new(), Vec::new());
            for policy in index.policies.iter().filter(|p| p.selects(pod)) {
                if policy.ingress_enabled {
                    ingress.push(policy.key.clone());
                }
                if policy.egress_enabled {
                    egress.push(policy.key.clone());
                }
            }
            isolating.insert(key.clone(), (Arc::from(ingress), Arc::from(egress)));
        }
        let slot_names = slots.iter().map(|(slot, name)| (*slot, Arc::from([name.clone()]))).collect();
        Self {
            node: node.to_string(),
            pods_by_ip,
            endpoints,
            nodes_by_ip,
            frontends,
            node_ports,
            slots,
            isolating,
            slot_names,
        }
    }

    /// Whether the table is recent enough for `ev`: it names the policy
    /// slot, and for a drop by policy it knows policies isolating the pod
    /// in that direction. A flow allowed or dropped under a policy the
    /// reconcile loop has just written reaches the agent before the table
    /// naming it is swapped in.
    pub fn knows(&self, ev: &FlowEvent) -> bool {
        if ev.policy_slot != 0 && !self.slots.contains_key(&ev.policy_slot) {
            return false;
        }
        if ev.verdict != FlowVerdict::Dropped as u8 {
            return true;
        }
        let isolated = |egress: bool| {
            self.endpoints
                .get(&ev.ifindex)
                .and_then(|pod| self.isolating.get(pod))
                .is_some_and(|(i, e)| !if egress { e } else { i }.is_empty())
        };
        match ev.reason {
            r if r == DropReason::PolicyIngress as u8 => isolated(false),
            r if r == DropReason::PolicyEgress as u8 => isolated(true),
            _ => true,
        }
    }

    /// `ip:port`, named by address.
    fn peer(&self, ip: IpAddr, port: u16) -> Peer {
        // A host-network pod has its node's address: that names the node.
        let pod = if self.nodes_by_ip.contains_key(&ip) { None } else { self.pods_by_ip.get(&ip) };
        let mut peer = Peer::new(ip, port).with_pod(pod.map(|p| &**p));
        if peer.pod.is_none() {
            peer.node = self.nodes_by_ip.get(&ip).cloned();
        }
        peer
    }

    /// The local endpoint's peer: named by its interface when the datapath
    /// saw the packet on a pod's veth, else by address.
    fn local_peer(&self, ip: IpAddr, port: u16, ifindex: u32) -> Peer {
        match self.endpoints.get(&ifindex) {
            Some(pod) => Peer::new(ip, port).with_pod(Some(pod)),
            None => self.peer(ip, port),
        }
    }

    /// The Service of a translated frontend.
    fn service(&self, addr: IpAddr, port: u16, proto: u8) -> Option<String> {
        self.frontends.get(&(addr, port, proto)).or_else(|| self.node_ports.get(&(port, proto))).cloned()
    }

    /// The flow of `ev`, named.
    pub fn enrich(&self, ev: &FlowEvent, clock: &Clock) -> Flow {
        let (saddr, daddr) = (ev.source(), ev.destination());
        let verdict = FlowVerdict::from_u8(ev.verdict);
        let translated = verdict == Some(FlowVerdict::Translated);
        let source = match ev.direction {
            FLOW_DIR_EGRESS => self.local_peer(saddr, ev.sport, ev.ifindex),
            _ => self.peer(saddr, ev.sport),
        };
        let destination = match ev.direction {
            FLOW_DIR_INGRESS if !translated => self.local_peer(daddr, ev.dport, ev.ifindex),
            _ if translated => Peer::new(daddr, ev.dport),
            _ => self.peer(daddr, ev.dport),
        };
        let (service, backend) = if translated {
            (self.service(daddr, ev.dport, ev.protocol), Some(self.peer(ev.backend(), ev.xlate_port)))
        } else {
            (None, None)
        };
        let none = || Arc::from([]);
        let isolating = |peer: &Peer, egress: bool| -> Arc<[String]> {
            peer.name()
                .and_then(|key| self.isolating.get(&key))
                .map_or_else(none, |(i, e)| if egress { e.clone() } else { i.clone() })
        };
        let (reason, policies) = match verdict {
            Some(FlowVerdict::Dropped) => {
                let policies = if ev.reason == DropReason::PolicyIngress as u8 {
                    isolating(&destination, false)
                } else if ev.reason == DropReason::PolicyEgress as u8 {
                    isolating(&source, true)
                } else {
                    none()
                };
                (Some(reason_name(ev.reason).to_string()), policies)
            }
            Some(FlowVerdict::Allowed) if ev.policy_slot != 0 => (
                None,
                self.slot_names
                    .get(&ev.policy_slot)
                    .cloned()
                    .unwrap_or_else(|| Arc::from([format!("policy slot {}", ev.policy_slot)])),
            ),
            _ => (None, none()),
        };
        let time_unix_ns = clock.wall(ev.timestamp_ns);
        Flow {
            time: rfc3339(time_unix_ns),
            time_unix_ns,
            node: self.node.clone(),
            verdict: verdict_name(ev.verdict).into(),
            reason,
            direction: direction_name(ev.direction).into(),
            protocol: protocol_name(ev.protocol),
            source,
            destination,
            service,
            backend,
            policies,
            ifindex: ev.ifindex,
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_common::flow::FLOW_DIR_UNKNOWN;

    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{
        NodeInfo,
        index::Change,
        policy::{
            selector::{LabelSelector, labels},
            types::{NetworkPolicyInfo, PodInfo},
        },
        service::{Protocol, ServiceInfo, ServicePort, ServiceType},
    };

    fn pod(key: &str, ip: [u8; 4], app: &str) -> PodInfo {
        PodInfo {
            key: key.into(),
            namespace: key.split_once('/').unwrap().0.into(),
            labels: labels(&[("app", app)]).into(),
            ip: Some(Ipv4Addr::from(ip)),
            ip6: None,
            node: None,
            named_ports: vec![].into(),
        }
    }

    fn index() -> ClusterIndex {
        let mut idx = ClusterIndex::default();
        idx.nodes.change(Change::Relisted(vec![NodeInfo {
            name: "n1".into(),
            pod_cidr: None,
            internal_ip: Some(Ipv4Addr::new(172, 18, 0, 2)),
            pod_cidr_v6: None,
            internal_ip_v6: Some("fd00:172:18::2".parse().unwrap()),
        }]));
        let mut a = pod("x/a", [10, 244, 1, 5], "a");
        a.ip6 = Some("fd00:10:244:1::5".parse().unwrap());
        let mut b = pod("y/b", [10, 244, 2, 7], "web");
        b.ip6 = Some("fd00:10:244:2::7".parse().unwrap());
        idx.pods.change(Change::Relisted(vec![a, b, pod("kube-system/agent", [172, 18, 0, 2], "agent")]));
        let mut svc = ServiceInfo::cluster_ip("y/web", Ipv4Addr::new(10, 96, 0, 10).into());
        svc.cluster_ips.push("fd00:10:96::a".parse().unwrap());
        svc.type_ = ServiceType::NodePort;
        svc.ports =
            vec![ServicePort { name: String::new(), port: 80, protocol: Protocol::Tcp, node_port: Some(30080) }];
        idx.change_services(Change::Relisted(vec![svc]));
        idx.policies.change(Change::Relisted(vec![NetworkPolicyInfo {
            key: "y/deny-all".into(),
            namespace: "y".into(),
            pod_selector: LabelSelector::default(),
            ingress_enabled: true,
            egress_enabled: false,
            ingress: vec![],
            egress: vec![],
        }]));
        idx
    }

    fn table() -> NameTable {
        NameTable::build(
            &index(),
            "n1",
            BTreeMap::from([(3, "y/allow-web".into())]),
            BTreeMap::from([(21, "y/b".into()), (20, "x/a".into())]),
        )
    }

    fn event(verdict: FlowVerdict, direction: u8) -> FlowEvent {
        FlowEvent {
            timestamp_ns: 2_000,
            saddr: FlowEvent::v4([10, 244, 1, 5]),
            daddr: FlowEvent::v4([10, 244, 2, 7]),
            family: weir_common::flow::FAMILY_IPV4,
            sport: 40000,
            dport: 80,
            protocol: 6,
            verdict: verdict as u8,
            direction,
            ifindex: 21,
            ..Default::default()
        }
    }

    const CLOCK: Clock = Clock::from_pair(1_000, 1_796_509_474_000_000_000);

    #[test]
    fn ipv6_flows_are_named_by_the_pods_and_nodes_ipv6_addresses() {
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut ev = event(FlowVerdict::Dropped, FLOW_DIR_INGRESS);
        (ev.family, ev.saddr, ev.daddr) = (weir_common::flow::FAMILY_IPV6, v6("fd00:10:244:1::5"), v6("fd00::9"));
        ev.reason = DropReason::PolicyIngress as u8;
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(f.source.name().as_deref(), Some("x/a"));
        assert_eq!(f.source.address(), "[fd00:10:244:1::5]:40000");
        // The local end by its interface, as for IPv4.
        assert_eq!(f.destination.name().as_deref(), Some("y/b"));
        ev.saddr = v6("fd00:172:18::2");
        assert_eq!(table().enrich(&ev, &CLOCK).source.name().as_deref(), Some("node/n1"));
        // An address nobody has is not named.
        ev.saddr = v6("2001:db8::1");
        assert_eq!(table().enrich(&ev, &CLOCK).source.name(), None);
    }

    #[test]
    fn a_policy_drop_names_both_pods_and_the_isolating_policy() {
        let mut ev = event(FlowVerdict::Dropped, FLOW_DIR_INGRESS);
        ev.reason = DropReason::PolicyIngress as u8;
        assert!(table().knows(&ev));
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(f.time, "2026-12-05T22:24:34.000001000Z");
        assert_eq!((f.verdict.as_str(), f.direction.as_str(), f.protocol.as_str()), ("dropped", "ingress", "TCP"));
        assert_eq!(f.reason.as_deref(), Some("policy-denied-ingress"));
        assert_eq!(f.source.name().as_deref(), Some("x/a"));
        assert_eq!(f.destination.name().as_deref(), Some("y/b"));
        assert_eq!(*f.policies, ["y/deny-all"]);
        assert_eq!(f.node, "n1");
        assert_eq!(
            f.line(),
            "22:24:34.000 x/a 10.244.1.5:40000 -> y/b 10.244.2.7:80 TCP DROPPED policy-denied-ingress (policy: y/deny-all)"
        );
        // Egress drops name the source's egress policies: none here.
        ev.reason = DropReason::PolicyEgress as u8;
        ev.direction = FLOW_DIR_EGRESS;
        ev.ifindex = 20;
        assert!(!table().knows(&ev), "x/a is isolated for egress by no policy the table knows: too old");
        assert!(table().enrich(&ev, &CLOCK).policies.is_empty());
        ev.reason = DropReason::SourceSpoofed as u8;
        assert!(table().knows(&ev));
    }

    #[test]
    fn an_allowed_flow_names_its_policy_slot_and_the_local_pod_by_interface() {
        let mut ev = event(FlowVerdict::Allowed, FLOW_DIR_INGRESS);
        ev.policy_slot = 3;
        // The address is unknown, the interface is y/b's.
        ev.daddr = FlowEvent::v4([10, 244, 2, 99]);
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(*f.policies, ["y/allow-web"]);
        assert_eq!(f.destination.name().as_deref(), Some("y/b"));
        assert!(f.reason.is_none());
        ev.policy_slot = 0;
        assert!(table().enrich(&ev, &CLOCK).policies.is_empty());
        assert!(table().knows(&ev));
        ev.policy_slot = 77;
        assert!(!table().knows(&ev));
        assert_eq!(*table().enrich(&ev, &CLOCK).policies, ["policy slot 77"]);
    }

    #[test]
    fn a_translated_flow_names_the_service_and_the_backend() {
        let mut ev = event(FlowVerdict::Translated, FLOW_DIR_EGRESS);
        ev.ifindex = 20;
        ev.daddr = FlowEvent::v4([10, 96, 0, 10]);
        ev.xlate_addr = FlowEvent::v4([10, 244, 2, 7]);
        ev.xlate_port = 8080;
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(f.service.as_deref(), Some("y/web"));
        assert_eq!(f.backend.as_ref().and_then(Peer::name).as_deref(), Some("y/b"));
        assert_eq!(f.destination.name(), None);
        assert_eq!(
            f.line(),
            "22:24:34.000 x/a 10.244.1.5:40000 -> service y/web 10.96.0.10:80 => y/b 10.244.2.7:8080 TCP TRANSLATED"
        );
        // NodePort, on the uplink: any node address, the nodePort.
        ev.direction = FLOW_DIR_INGRESS;
        ev.ifindex = 2;
        ev.saddr = FlowEvent::v4([192, 168, 1, 1]);
        ev.daddr = FlowEvent::v4([172, 18, 0, 2]);
        ev.dport = 30080;
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(f.service.as_deref(), Some("y/web"));
        assert_eq!(f.destination.node.as_deref(), None, "the frontend is not named");
        assert_eq!(f.source.name(), None);
    }

    /// An IPv6 translation (`lb::tc6`, `netdev6`) reads as an IPv4 one:
    /// the client pod, the Service by its IPv6 frontend, the backend pod by
    /// its IPv6 address.
    #[test]
    fn an_ipv6_translated_flow_names_the_service_and_the_backend() {
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut ev = event(FlowVerdict::Translated, FLOW_DIR_EGRESS);
        ev.family = weir_common::flow::FAMILY_IPV6;
        (ev.ifindex, ev.saddr, ev.daddr) = (20, v6("fd00:10:244:1::5"), v6("fd00:10:96::a"));
        (ev.xlate_addr, ev.xlate_port) = (v6("fd00:10:244:2::7"), 8080);
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(f.service.as_deref(), Some("y/web"));
        assert_eq!(f.backend.as_ref().and_then(Peer::name).as_deref(), Some("y/b"));
        assert_eq!(
            f.line(),
            "22:24:34.000 x/a [fd00:10:244:1::5]:40000 -> service y/web [fd00:10:96::a]:80 => y/b [fd00:10:244:2::7]:8080 TCP TRANSLATED"
        );
        // Through the uplink: a NodePort on the node's IPv6 address.
        (ev.direction, ev.ifindex) = (FLOW_DIR_INGRESS, 2);
        (ev.saddr, ev.daddr, ev.dport) = (v6("2001:db8::1"), v6("fd00:172:18::2"), 30080);
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(f.service.as_deref(), Some("y/web"));
        assert_eq!(f.backend.as_ref().and_then(Peer::name).as_deref(), Some("y/b"));
        assert_eq!(f.source.name(), None);
    }

    #[test]
    fn node_addresses_name_the_node_not_host_network_pods() {
        let mut ev = event(FlowVerdict::Dropped, FLOW_DIR_UNKNOWN);
        ev.saddr = FlowEvent::v4([172, 18, 0, 2]);
        ev.protocol = 1;
        ev.sport = 0;
        ev.reason = DropReason::SourceSpoofed as u8;
        let f = table().enrich(&ev, &CLOCK);
        assert_eq!(f.source.name().as_deref(), Some("node/n1"));
        assert_eq!(f.source.address(), "172.18.0.2");
        assert_eq!((f.direction.as_str(), f.protocol.as_str()), ("unknown", "ICMP"));
        assert_eq!(f.reason.as_deref(), Some("source-spoofed"));
        assert!(f.policies.is_empty());
    }
}
