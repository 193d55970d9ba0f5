//! NetworkPolicy truth tables in network namespaces, in the style of the
//! upstream netpol e2e suite: Kubernetes namespaces x, y, z (labelled
//! `ns=<name>`), pods a, b, c in each (`pod=<name>`) spread over two nodes
//! with agents, every pod serving TCP and UDP on ports 80 and 81 (named
//! container ports `serve-80-tcp` ...). Each scenario writes Namespaces,
//! Pods and NetworkPolicies to the agents' manifest directory and probes
//! the 9x9 matrix per (port, protocol) until what answers equals what the
//! oracle expects, or a deadline passes.
//!
//! The oracle is the agent's own policy model (`weir_agent::model::policy`)
//! fed the very YAML the agents read, so the two cannot drift; a pod always
//! reaches itself (upstream's AllowLoopback: the traffic never leaves the
//! pod).
//!
//! Every scenario runs even when one fails; the test fails at the end with
//! the list. `WEIR_NETPOL_SCENARIOS=name,name` runs only scenarios whose
//! name contains one of the words; `WEIR_NETPOL_DEADLINE_SECS` (10) is how
//! long a step may take to converge.
//!
//! The cluster, the probing and the matrices are the test bed's
//! `policy_cluster` harness; this file holds the scenarios, the oracle and
//! the tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};
use serde_json::{Value, json};
use weir_agent::model::{
    policy::{
        evaluate::{Family, Peer, PolicyView, evaluate},
        types::{NamespaceInfo, NetworkPolicyInfo, PodInfo},
    },
    service::Protocol,
};
use weir_agent::sources::convert::policy as convert;
use weir_agent::sources::pod_view::PodView;
use weir_testbed::{
    Agent, NetNs, Node, Pod, Topology,
    cni::Conflist,
    echo,
    manifest::{self, PodObject},
    policy_cluster::{
        Cluster as Harness, NAMESPACES, PORTS, PROBE_TIMEOUT, PROTOS, PolicyOracle, Scenario, State, deadline, labels,
        pod_keys, pod_object,
    },
    probe::{self, Outcome, Probe, Proto, SourcePorts},
    process::ChildGuard,
    tools,
};

const CLUSTER_CIDR: &str = weir_testbed::topology::CLUSTER_CIDR;
const CLUSTER_CIDR_V6: &str = weir_testbed::topology::CLUSTER_CIDR_V6;

/// The privileged tests share the 2-core machine badly: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The cluster harness (`weir_testbed::policy_cluster`) with the agent's
/// policy model as its oracle.
type Cluster = Harness<Oracle>;

// ---------------------------------------------------------------------------
// Scenarios: a name, what it shows, and steps; each step changes the state
// of the step before (the first, the baseline).

fn ns_is(ns: &str) -> Value {
    json!({"matchLabels": {"ns": ns}})
}

fn pod_is(pod: &str) -> Value {
    json!({"matchLabels": {"pod": pod}})
}

fn deny_ingress() -> Value {
    json!({"podSelector": {}})
}

/// The scenarios, for a cluster whose pods have `ips` (`ns/pod` -> IP, of
/// the family probed: the ipBlocks are of that family).
fn scenarios(ips: &BTreeMap<String, IpAddr>) -> Vec<Scenario> {
    let v6 = ips.values().any(IpAddr::is_ipv6);
    let cluster_cidr = if v6 { CLUSTER_CIDR_V6 } else { CLUSTER_CIDR };
    let host = |k: &str| format!("{}/{}", ips[k], if v6 { 128 } else { 32 });
    vec![
        Scenario::one("no-policy", "nothing isolated: every pod reaches every pod", |_| {}),
        Scenario::one(
            "deny-ingress-x",
            "default-deny ingress in x; x's own connections out still work, so their replies, which enter x through the \
             denied direction, pass (stateful)",
            |s| s.policy("x", "deny-ingress", deny_ingress()),
        ),
        Scenario::one(
            "deny-egress-x",
            "default-deny egress in x; connections into x still work, so their replies, which leave x through the denied \
             direction, pass (stateful)",
            |s| s.policy("x", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]})),
        ),
        Scenario::one("deny-all-x", "default-deny ingress and egress in x", |s| {
            s.policy("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
        }),
        Scenario::one("deny-ingress-x+allow-all-ingress", "an empty ingress rule allows everything, whatever else denies", |s| {
            s.policy("x", "deny-ingress", deny_ingress());
            s.policy("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}));
        }),
        Scenario::one("deny-egress-x+allow-all-egress", "an empty egress rule allows everything", |s| {
            s.policy("x", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
            s.policy("x", "allow-all-egress", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}));
        }),
        Scenario::one("allow-from-namespace-y", "x accepts only namespace y (namespaceSelector)", |s| {
            s.policy("x", "from-y", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}))
        }),
        Scenario::one("allow-from-y/b-one-peer", "both selectors in one peer: pod b of namespace y only (AND)", |s| {
            s.policy(
                "x",
                "from-y-b",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("b")}]}]}),
            )
        }),
        Scenario::one(
            "allow-from-namespace-y-or-pod-b-two-peers",
            "two peers (OR): all of namespace y, and pod b of x itself (a podSelector alone means the policy's namespace)",
            |s| {
                s.policy(
                    "x",
                    "from-y-or-b",
                    json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("y")}, {"podSelector": pod_is("b")}]}]}),
                )
            },
        ),
        Scenario::one("allow-from-pods-in-a-b", "matchExpressions In: pods a and b of every namespace", |s| {
            s.policy(
                "x",
                "from-a-b",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {},
                    "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]}}]}]}),
            )
        }),
        Scenario::one("allow-from-namespaces-not-in-y", "matchExpressions NotIn: namespaces x and z", |s| {
            s.policy(
                "x",
                "from-not-y",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector":
                    {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}),
            )
        }),
        Scenario::one("allow-from-namespaces-with-team", "matchExpressions Exists: only y has a team label", |s| {
            s.policy(
                "x",
                "from-team",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector":
                    {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}]}]}),
            )
        }),
        Scenario::one(
            "allow-to-x/a-from-namespaces-without-team",
            "matchExpressions DoesNotExist (x and z), on a policy selecting x/a only",
            |s| {
                s.policy(
                    "x",
                    "a-from-no-team",
                    json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector":
                        {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}}]}]}),
                )
            },
        ),
        Scenario::one(
            "allow-to-x/b-from-pods-without-pod-label",
            "a peer that selects no pod (pod DoesNotExist): x/b accepts nobody",
            |s| {
                s.policy(
                    "x",
                    "b-from-nobody",
                    json!({"podSelector": pod_is("b"), "ingress": [{"from": [{"namespaceSelector": {},
                        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}}]}]}),
                )
            },
        ),
        Scenario::one(
            "allow-from-pod-a-same-namespace-only",
            "a podSelector-only peer: x/a, not y/a or z/a",
            |s| s.policy("x", "from-a", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": pod_is("a")}]}]})),
        ),
        Scenario::one("allow-from-pods-c-all-namespaces", "an empty namespaceSelector with a podSelector: pods c anywhere", |s| {
            s.policy(
                "x",
                "from-c",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": pod_is("c")}]}]}),
            )
        }),
        Scenario::one("ingress-tcp-80-only", "x accepts TCP 80 from anyone, nothing else", |s| {
            s.policy("x", "tcp-80", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}))
        }),
        Scenario::one("ingress-named-port-serve-81-tcp", "a named port: the target's container port serve-81-tcp", |s| {
            s.policy("x", "named-81", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}))
        }),
        Scenario::one("ingress-udp-only", "a port entry with a protocol and no port: every UDP port", |s| {
            s.policy("x", "udp", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}))
        }),
        Scenario::one(
            "ingress-named-port-protocol-mismatch",
            "port serve-81-udp with protocol TCP names no container port: nothing allowed",
            |s| {
                s.policy(
                    "x",
                    "named-mismatch",
                    json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": "serve-81-udp"}]}]}),
                )
            },
        ),
        Scenario::one("ingress-tcp-port-range-80-81", "endPort: TCP 80-81", |s| {
            s.policy(
                "x",
                "tcp-80-81",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]}),
            )
        }),
        Scenario::one("ingress-udp-port-range-81-90", "endPort: UDP 81-90 (81 only of the served ports)", |s| {
            s.policy(
                "x",
                "udp-81-90",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 81, "endPort": 90}]}]}),
            )
        }),
        Scenario::one("ingress-empty-from-udp-80", "an empty `from` list is every peer; with a port: UDP 80", |s| {
            s.policy("x", "udp-80", json!({"podSelector": {}, "ingress": [{"from": [], "ports": [{"protocol": "UDP", "port": 80}]}]}))
        }),
        Scenario::one(
            "ingress-ipblock-cluster-except-y/b",
            "x/a accepts the cluster CIDR except y/b's own address",
            |s| {
                s.policy(
                    "x",
                    "a-ipblock",
                    json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"ipBlock":
                        {"cidr": cluster_cidr, "except": [host("y/b")]}}]}]}),
                )
            },
        ),
        Scenario::one("egress-ipblock-cluster-except-z/c", "x sends to the cluster CIDR except z/c's own address", |s| {
            s.policy(
                "x",
                "egress-ipblock",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock":
                    {"cidr": cluster_cidr, "except": [host("z/c")]}}]}]}),
            )
        }),
        Scenario::one("egress-to-namespace-y-only", "x sends only to namespace y", |s| {
            s.policy(
                "x",
                "to-y",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns_is("y")}]}]}),
            )
        }),
        Scenario::one("egress-to-pods-a-all-namespaces", "x sends only to pods a, in every namespace", |s| {
            s.policy(
                "x",
                "to-a",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {}, "podSelector": pod_is("a")}]}]}),
            )
        }),
        Scenario::one("egress-to-namespace-y-tcp-81", "x sends only TCP 81 to namespace y", |s| {
            s.policy(
                "x",
                "to-y-81",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": ns_is("y")}], "ports": [{"port": 81}]}]}),
            )
        }),
        Scenario::one("ingress-and-egress-in-one-policy", "x talks to namespace y only, both ways", |s| {
            s.policy(
                "x",
                "y-only",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}],
                    "egress": [{"to": [{"namespaceSelector": ns_is("y")}]}]}),
            )
        }),
        Scenario::one("two-policies-union-on-x/a", "x/a: from namespace y (one policy) or TCP 81 from z (another)", |s| {
            s.policy("x", "a-from-y", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}));
            s.policy(
                "x",
                "a-from-z-81",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("z")}], "ports": [{"port": 81}]}]}),
            );
        }),
        Scenario::one("policy-selects-only-x/a", "deny ingress to x/a; x/b and x/c are not isolated", |s| {
            s.policy("x", "deny-a", json!({"podSelector": pod_is("a")}))
        }),
        Scenario::one(
            "policy-in-y-applies-to-y-only",
            "a policy of namespace y selecting pod=a isolates y/a only (x/a and z/a carry the same label); its \
             podSelector-only peer admits y's pods a",
            |s| s.policy("y", "a-from-a", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("a")}]}]})),
        ),
        Scenario::one(
            "policy-types-egress-ignores-ingress-rules",
            "policyTypes [Egress] with ingress rules: ingress is not enforced, egress goes to x only",
            |s| {
                s.policy(
                    "x",
                    "egress-only",
                    json!({"podSelector": {}, "policyTypes": ["Egress"],
                        "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}],
                        "egress": [{"to": [{"namespaceSelector": ns_is("x")}]}]}),
                )
            },
        ),
        Scenario::one(
            "policy-types-ingress-ignores-egress-rules",
            "policyTypes [Ingress] with an empty egress list: egress is not enforced, ingress from x only",
            |s| {
                s.policy(
                    "x",
                    "ingress-only",
                    json!({"podSelector": {}, "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"namespaceSelector": ns_is("x")}]}], "egress": []}),
                )
            },
        ),
        Scenario::new("update-policy-in-place", "one policy rewritten under the same name, then deleted")
            .step("x from namespace y", |s| {
                s.policy("x", "allow", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}))
            })
            .step("changed: x from namespace z", |s| {
                s.policy("x", "allow", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("z")}]}]}))
            })
            .step("changed: x from namespace z on UDP only", |s| {
                s.policy(
                    "x",
                    "allow",
                    json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("z")}], "ports": [{"protocol": "UDP"}]}]}),
                )
            })
            .step("deleted", |s| s.remove_policy("x", "allow")),
        Scenario::new("delete-one-of-two-policies", "the union shrinks, then isolation ends")
            .step("deny ingress in x + allow from y", |s| {
                s.policy("x", "deny-ingress", deny_ingress());
                s.policy("x", "from-y", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}));
            })
            .step("allow from y deleted", |s| s.remove_policy("x", "from-y"))
            .step("deny deleted", |s| s.remove_policy("x", "deny-ingress")),
        Scenario::new("pod-label-change", "labels of a peer and of a selected pod change under a policy")
            .step("x/a accepts pods b", |s| {
                s.policy(
                    "x",
                    "a-from-b",
                    json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": pod_is("b")}]}]}),
                )
            })
            .step("z/c relabelled pod=b: now a peer", |s| s.pod_labels("z/c", &[("pod", "b")]))
            .step("x/a relabelled pod=a2: no longer selected", |s| s.pod_labels("x/a", &[("pod", "a2")]))
            .step("x/b relabelled pod=a: now selected", |s| s.pod_labels("x/b", &[("pod", "a")])),
        Scenario::new("namespace-label-change", "namespace labels change under a namespaceSelector")
            .step("x accepts ns=y", |s| {
                s.policy("x", "from-y", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}))
            })
            .step("z relabelled ns=y", |s| s.namespace_labels("z", &[("ns", "y")]))
            .step("y relabelled ns=other", |s| s.namespace_labels("y", &[("ns", "other"), ("team", "red")])),
        Scenario::new(
            "service-backend-egress",
            "a ClusterIP over x/a (column svc): policies see the backend, not the ClusterIP (translation first)",
        )
        .step("Service, no policy", |s| s.service = true)
        .step("y sends only to pods a, z only to pods b", |s| {
            s.policy(
                "y",
                "to-a",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {}, "podSelector": pod_is("a")}]}]}),
            );
            s.policy(
                "z",
                "to-b",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {}, "podSelector": pod_is("b")}]}]}),
            );
        })
        .step("instead x/a accepts only namespace z", |s| {
            s.remove_policy("y", "to-a");
            s.remove_policy("z", "to-b");
            s.policy("x", "a-from-z", json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("z")}]}]}));
        }),
    ]
}

// ---------------------------------------------------------------------------
// The oracle: the agent's policy model over the YAML the agents read.

struct Oracle {
    pods: BTreeMap<String, PodInfo>,
    namespaces: BTreeMap<String, NamespaceInfo>,
    policies: Vec<NetworkPolicyInfo>,
    nodes: BTreeMap<String, Vec<IpAddr>>,
    /// What connections are made over.
    family: Family,
}

impl Oracle {
    /// From manifests (multi-document strings allowed), as the API would
    /// have them; kinds other than Pod, Namespace and NetworkPolicy are
    /// skipped.
    fn new(docs: &[String], nodes: BTreeMap<String, Vec<IpAddr>>, family: Family) -> Result<Self, String> {
        use serde::Deserialize;
        let mut o = Oracle { pods: BTreeMap::new(), namespaces: BTreeMap::new(), policies: Vec::new(), nodes, family };
        for text in docs {
            for doc in serde_yaml::Deserializer::from_str(text) {
                o.add(serde_yaml::Value::deserialize(doc).map_err(|e| format!("{e}: {text}"))?, text)?;
            }
        }
        Ok(o)
    }

    fn add(&mut self, value: serde_yaml::Value, doc: &str) -> Result<(), String> {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Pod") => {
                let pod: PodView = serde_yaml::from_value(value).map_err(|e| format!("Pod: {e}: {doc}"))?;
                let info = convert::pod(&pod);
                self.pods.insert(info.key.to_string(), info);
            }
            Some("Namespace") => {
                let ns: Namespace = serde_yaml::from_value(value).map_err(|e| format!("Namespace: {e}: {doc}"))?;
                let info = convert::namespace(&ns);
                self.namespaces.insert(info.name.clone(), info);
            }
            Some("NetworkPolicy") => {
                let np: NetworkPolicy =
                    serde_yaml::from_value(value).map_err(|e| format!("NetworkPolicy: {e}: {doc}"))?;
                self.policies.push(convert::network_policy(&np).map_err(|e| format!("NetworkPolicy: {e}: {doc}"))?);
            }
            _ => {}
        }
        Ok(())
    }

    fn view(&self) -> PolicyView<'_> {
        PolicyView { policies: &self.policies, namespaces: &self.namespaces, node_addrs: &self.nodes }
    }

    fn protocol(proto: Proto) -> Protocol {
        match proto {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
        }
    }

    fn pod(&self, key: &str) -> &PodInfo {
        self.pods.get(key).unwrap_or_else(|| panic!("oracle: no pod {key}"))
    }

    /// Pod to pod (through a Service: to its backend). A pod reaches
    /// itself without leaving its namespace: always allowed.
    fn allowed(&self, src: &str, dst: &str, proto: Proto, port: u16, direct: bool) -> bool {
        if direct && src == dst {
            return true;
        }
        let (src, dst) = (Peer::Pod(self.pod(src)), Peer::Pod(self.pod(dst)));
        evaluate(&self.view(), self.family, src, dst, Self::protocol(proto), port).allowed
    }

    /// From an address that is not a pod (a node) to a pod.
    fn allowed_from_address(&self, src: IpAddr, dst: &str, proto: Proto, port: u16) -> bool {
        let dst = Peer::Pod(self.pod(dst));
        evaluate(&self.view(), Family::of(src), Peer::Address(src), dst, Self::protocol(proto), port).allowed
    }

    fn reason(&self, src: &str, dst: &str, proto: Proto, port: u16) -> String {
        let (src, dst) = (Peer::Pod(self.pod(src)), Peer::Pod(self.pod(dst)));
        let d = evaluate(&self.view(), self.family, src, dst, Self::protocol(proto), port);
        let mut parts = Vec::new();
        if let Some(e) = d.egress {
            parts.push(format!("egress: {}", e.reason));
        }
        if let Some(i) = d.ingress {
            parts.push(format!("ingress: {}", i.reason));
        }
        parts.join("; ")
    }
}

impl PolicyOracle for Oracle {
    fn from_docs(docs: &[String], nodes: BTreeMap<String, Vec<IpAddr>>, ipv6: bool) -> Result<Self, String> {
        Oracle::new(docs, nodes, if ipv6 { Family::Ipv6 } else { Family::Ipv4 })
    }

    fn allowed(&self, src: &str, dst: &str, proto: Proto, port: u16, direct: bool) -> bool {
        Oracle::allowed(self, src, dst, proto, port, direct)
    }

    fn reason(&self, src: &str, dst: &str, proto: Proto, port: u16) -> String {
        Oracle::reason(self, src, dst, proto, port)
    }
}

// ---------------------------------------------------------------------------
// The truth tables, and agent restarts.

fn selected(name: &str) -> bool {
    match std::env::var("WEIR_NETPOL_SCENARIOS") {
        Ok(filter) if !filter.trim().is_empty() => filter.split(',').any(|w| name.contains(w.trim())),
        _ => true,
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs (network namespaces, weir-cni, weir-agent)"]
fn network_policy_truth_tables() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    truth_tables(Cluster::new("netpol"), |_| true);
}

/// The scenarios run over IPv6 too: ipBlocks, pod and namespace
/// selectors, ports and protocols, both directions.
const IPV6_SCENARIOS: [&str; 13] = [
    "deny-ingress-x",
    "deny-egress-x",
    "allow-from-namespace-y",
    "allow-from-y/b-one-peer",
    "allow-from-pods-in-a-b",
    "ingress-tcp-80-only",
    "ingress-named-port-serve-81-tcp",
    "ingress-udp-only",
    "ingress-tcp-port-range-80-81",
    "ingress-ipblock-cluster-except-y/b",
    "egress-ipblock-cluster-except-z/c",
    "egress-to-namespace-y-tcp-81",
    "pod-label-change",
];

/// The truth tables over IPv6: a dual-stack cluster, every probe to a
/// pod's IPv6 address, the ipBlocks of IPv6 (`IPV6_SCENARIOS`).
#[test]
#[ignore = "privileged: needs root and bpffs (network namespaces, weir-cni, weir-agent)"]
fn network_policy_truth_tables_over_ipv6() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    truth_tables(Cluster::new_ipv6("netpol6"), |name| IPV6_SCENARIOS.contains(&name));
}

/// Runs every scenario `chosen` (and `selected`) on `cluster`; fails at
/// the end with the list of failed steps.
fn truth_tables(mut cluster: Cluster, chosen: impl Fn(&str) -> bool) {
    let t0 = Instant::now();
    let all = scenarios(&cluster.ips());
    let mut failed = Vec::new();
    let mut ran = 0;
    for scenario in all.iter().filter(|s| chosen(&s.name) && selected(&s.name)) {
        ran += 1;
        failed.extend(cluster.run(scenario));
    }
    let s = &cluster.stats;
    eprintln!(
        "netpol: {ran} scenarios, {} probe rounds ({} probes), mean round {:.2?}, slowest {:.2?}; total {:.1?}",
        s.rounds,
        s.probes,
        s.round_time / s.rounds.max(1) as u32,
        s.slowest_round,
        t0.elapsed()
    );
    assert!(ran > 0, "WEIR_NETPOL_SCENARIOS selects no scenario");
    if !failed.is_empty() {
        let mut msg = format!("{} of the scenario steps failed:\n", failed.len());
        for (name, _) in &failed {
            let _ = writeln!(msg, "  {name}");
        }
        msg.push_str("(the matrices of each are printed above)");
        panic!("{msg}");
    }
}

/// An established connection the policy allows lives through a restart of
/// both agents, and an isolated pod stays isolated all along: the maps are
/// pinned, the new agent picks them up and only rewrites what changed.
#[test]
#[ignore = "privileged: needs root and bpffs (network namespaces, weir-cni, weir-agent)"]
fn policy_and_allowed_connections_survive_agent_restarts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new("netpol-restart");
    // Taken out now; stopped and replaced while the pods are probed.
    let old_agents = std::mem::take(&mut cluster.agents);
    let mut state = State::baseline();
    state.policy("x", "from-y", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}));
    cluster.check("from-y before the restart", &state).unwrap_or_else(|r| panic!("{r}"));

    let flag = cluster.topo.root().join("restart-done");
    let log = cluster.topo.root().join("held-connection.log");
    let mut held = hold_connection(&cluster, &flag, &log);
    let (leaks, new_agents) = restart_agents_while_denied_probes(&cluster, old_agents);
    cluster.agents = new_agents;
    let said = finish_held_connection(&mut held, &flag, &log);
    assert!(
        said.contains("before") && said.contains("after"),
        "the allowed connection did not survive the restart: {said:?}"
    );
    assert!(leaks.1 >= 3, "the denied client probed only {} times during the restart", leaks.1);
    assert_eq!(
        leaks.0, 0,
        "{} of {} probes from a denied pod got through while the agents restarted",
        leaks.0, leaks.1
    );
    eprintln!(
        "netpol-restart: {} denied probes during the restart, none answered; the held connection carried on",
        leaks.1
    );

    // The new agents enforce the same, and follow changes.
    cluster.check("from-y after the restart", &state).unwrap_or_else(|r| panic!("{r}"));
    state.remove_policy("x", "from-y");
    state.policy("x", "from-z", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": ns_is("z")}]}]}));
    cluster.check("from-z after the restart", &state).unwrap_or_else(|r| panic!("{r}"));
}

/// y/a holds a TCP connection to x/a open across the restart: it says
/// "before" now (waited for) and "after" once `flag` exists.
fn hold_connection(cluster: &Cluster, flag: &Path, log: &Path) -> ChildGuard {
    let (client, server) = (cluster.pod("y/a"), cluster.pod("x/a"));
    let script = format!(
        "import socket, os, time\ns = socket.create_connection(('{}', 80), timeout=5)\ns.sendall(b'before\\n'); print(s.recv(100).decode().strip(), flush=True)\nwhile not os.path.exists('{}'): time.sleep(0.05)\ns.sendall(b'after\\n'); print(s.recv(100).decode().strip(), flush=True)\n",
        server.ip,
        flag.display()
    );
    let held = client.netns.spawn(&["python3", "-c", &script], &[], log, false).unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(log).unwrap_or_default().contains("before") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "held connection never answered: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
    held
}

/// Stops `old_agents`, leaves the nodes without an agent for a while (the
/// pinned maps alone enforce), starts new ones, while z/a, denied, keeps
/// trying x/a. ((answered, tries), the new agents).
fn restart_agents_while_denied_probes(cluster: &Cluster, old_agents: Vec<Agent>) -> ((usize, usize), Vec<Agent>) {
    let server_ip = cluster.pod("x/a").ip;
    let denied = cluster.pod("z/a");
    let stop = AtomicBool::new(false);
    let topo = &cluster.topo;
    thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let mut leaks = 0;
            let mut tries = 0;
            let mut ports = SourcePorts::new();
            while !stop.load(Ordering::Relaxed) {
                let probes =
                    [Probe { dst: server_ip.into(), port: 80, proto: Proto::Tcp, src_port: ports.next("z/a") }];
                if let Ok(out) = probe::run(&denied.netns, &probes, Duration::from_millis(300)) {
                    tries += 1;
                    leaks += out.iter().filter(|o| matches!(o, Outcome::Answered(_))).count();
                }
            }
            (leaks, tries)
        });
        for a in old_agents {
            a.stop();
        }
        // No agent at all for a while: the pinned maps alone enforce.
        thread::sleep(Duration::from_millis(1500));
        let agents = topo.start_agents().unwrap();
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (prober.join().unwrap(), agents)
    })
}

/// Lets the held connection send its second line; what it printed.
fn finish_held_connection(held: &mut ChildGuard, flag: &Path, log: &Path) -> String {
    std::fs::write(flag, "").unwrap();
    let started = Instant::now();
    while held.try_wait().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "held connection hangs after the restart");
        thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(log).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Pod start and the node.

/// A client that probes an address that is not known yet: it waits for
/// `<file>` to hold it (so it is running before the pod exists), then
/// connects to it over TCP and UDP, each time from a new port, for
/// `seconds`, and prints every answer.
const WATCHER: &str = r#"
import os, socket, sys, time
path, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while not os.path.exists(path) or not open(path).read().strip():
    time.sleep(0.0005)
host = open(path).read().strip()
start, n, answers = time.monotonic(), 0, 0
while time.monotonic() - start < seconds:
    for proto in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, proto); s.settimeout(0.1)
        try:
            if proto == socket.SOCK_STREAM:
                s.connect((host, port)); s.sendall(b"early"); d = s.recv(100)
            else:
                s.sendto(b"early", (host, port)); d = s.recv(100)
            if d:
                answers += 1
                print("answer %.3f %s %s" % (time.monotonic() - start, "tcp" if proto == socket.SOCK_STREAM else "udp", d.decode()), flush=True)
        except OSError:
            pass
        finally:
            s.close()
        n += 1
print("probes %d answers %d" % (n, answers), flush=True)
"#;

/// Probes (fresh probes each round) until whether each answers is `want`,
/// or the deadline; the last outcomes.
fn converge(ns: &NetNs, mut probes: impl FnMut() -> Vec<Probe>, want: &[bool]) -> (bool, Vec<Outcome>) {
    let start = Instant::now();
    loop {
        let out = probe::run(ns, &probes(), PROBE_TIMEOUT).unwrap();
        let ok = out.iter().zip(want).all(|(o, w)| o.answered_by().is_some() == *w);
        if ok || start.elapsed() > deadline() {
            return (ok, out);
        }
        thread::sleep(Duration::from_millis(150));
    }
}

#[test]
#[ignore = "privileged: needs root and bpffs (network namespaces, weir-cni, weir-agent)"]
fn pods_start_isolated_and_their_own_node_reaches_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    weir_testbed::privileged(&[tools::IP, tools::PYTHON3, tools::BPFTOOL]);
    let topo = Topology::builder("netpol_start").nodes(2).build().unwrap();
    let _agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    let mut failures: Vec<String> = Vec::new();
    let mut docs: BTreeMap<String, String> = BTreeMap::new();
    for ns in ["x", "y"] {
        let yaml = manifest::namespace_yaml(ns, &labels(&[("ns", ns)]));
        topo.write_manifest(&State::namespace_file(ns), std::slice::from_ref(&yaml)).unwrap();
        docs.insert(State::namespace_file(ns), yaml);
    }
    let list1 = n1.agent_conflist().unwrap();
    let list2 = n2.agent_conflist().unwrap();
    let client = Pod::create_k8s(n2, "y-client", PodObject::new("y", "client").label("pod", "client"), &list2).unwrap();
    let old = Pod::create_k8s(n1, "x-old", pod_object("x/old", &labels(&[("pod", "old")])), &list1).unwrap();
    let _old_server = serve(&topo, &old, "x/old");
    let mut ports = SourcePorts::new();

    // 1. Default-deny ingress in x, seen in effect on n1 (x/old stops
    // answering y/client).
    deny_ingress_in_x(&topo, &mut docs, &client, &old, &mut ports, &mut failures);
    // 2. A pod created under that policy is isolated from its first packet.
    let (new, _new_server) = new_pod_isolated_from_first_packet(n1, n2, &client, &list1, &mut failures);
    // 3. Its own node reaches it (kubelet probes), the other node does not
    // (per the oracle), and neither does y/client.
    let pod_docs = [new.manifest_yaml().unwrap(), old.manifest_yaml().unwrap(), client.manifest_yaml().unwrap()];
    let all_docs: Vec<String> = docs.values().cloned().chain(pod_docs).collect();
    let nodes: BTreeMap<String, Vec<IpAddr>> =
        topo.nodes().iter().map(|n| (n.name.clone(), vec![n.ip.into()])).collect();
    let oracle = Oracle::new(&all_docs, nodes, Family::Ipv4).unwrap();
    nodes_reach_as_the_oracle_says(&topo, &oracle, &client, &new, &old, &mut ports, &mut failures);
    // 4. A pod whose Pod object the agent does not know stays isolated
    // (both ways, although no policy selects it) until the object appears.
    unknown_pod_isolated_until_published(&topo, &client, &list1, &mut ports, &mut failures);

    assert!(failures.is_empty(), "{} checks failed:\n{}", failures.len(), failures.join("\n"));
}

/// A server on port 80 in `pod`, logging on its node.
fn serve(topo: &Topology, pod: &Pod, label: &str) -> ChildGuard {
    let log = topo.node(&pod.node).dirs.logs.join(format!("serve-{}.log", pod.name));
    echo::serve_ports(&pod.netns, label, &[80], &log, false).unwrap()
}

/// A TCP and a UDP probe of `dst` port 80, from fresh source ports of
/// `ns` if `from_port` (else any).
fn tcp_udp(ports: &mut SourcePorts, ns: &str, dst: Ipv4Addr, from_port: bool) -> Vec<Probe> {
    PROTOS
        .iter()
        .map(|&proto| Probe { dst: dst.into(), port: 80, proto, src_port: if from_port { ports.next(ns) } else { 0 } })
        .collect()
}

/// Step 1: default-deny ingress in x; x/old stops answering y/client.
fn deny_ingress_in_x(
    topo: &Topology,
    docs: &mut BTreeMap<String, String>,
    client: &Pod,
    old: &Pod,
    ports: &mut SourcePorts,
    failures: &mut Vec<String>,
) {
    let deny = manifest::network_policy_yaml("x", "deny-ingress", "podSelector: {}\npolicyTypes: [Ingress]\n");
    topo.write_manifest("netpol_x_deny-ingress.yaml", std::slice::from_ref(&deny)).unwrap();
    docs.insert("netpol_x_deny-ingress.yaml".into(), deny);
    let (ok, out) = converge(&client.netns, || tcp_udp(ports, "client", old.ip, true), &[false, false]);
    if !ok {
        failures
            .push(format!("default-deny ingress in x never took effect: y/client -> x/old still answered: {out:?}"));
    }
}

/// Step 2: x/new, created under default-deny ingress, never answers
/// y/client: its server listens before ADD, a watcher in y/client is
/// already running and learns the address the moment ADD returns. The pod
/// and its server.
fn new_pod_isolated_from_first_packet(
    n1: &Node,
    n2: &Node,
    client: &Pod,
    list1: &Conflist,
    failures: &mut Vec<String>,
) -> (Pod, Option<ChildGuard>) {
    let target = n1.dirs.root.join("new-pod-ip");
    let watch_log = n2.dirs.logs.join("watcher.log");
    let mut watcher = client
        .netns
        .spawn(&["python3", "-c", WATCHER, target.to_str().unwrap(), "80", "3"], &[], &watch_log, false)
        .unwrap();
    let mut new_server = None;
    let t_add = Instant::now();
    let new = Pod::builder(n1, "x-new")
        .object(pod_object("x/new", &labels(&[("pod", "new")])))
        .before_add(|netns| {
            let log = n1.dirs.logs.join("serve-x-new.log");
            new_server = Some(echo::serve_ports(netns, "x/new", &[80], &log, false)?);
            Ok(())
        })
        .create(list1)
        .unwrap();
    let add_took = t_add.elapsed();
    std::fs::write(&target, new.ip.to_string()).unwrap();
    eprintln!("netpol: x/new ADD (server already listening) took {add_took:.1?}");
    let mut status = None;
    for _ in 0..200 {
        status = watcher.try_wait();
        if status.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let watched = std::fs::read_to_string(&watch_log).unwrap_or_default();
    eprintln!("netpol: watcher: {}", watched.trim());
    if !status.is_some_and(|s| s.success()) || !watched.contains("probes ") {
        failures.push(format!("the watcher did not finish: {watched}"));
    } else if watched.lines().any(|l| l.starts_with("answer")) {
        failures.push(format!(
            "x/new, created under default-deny ingress, answered y/client right after ADD (must never):\n{watched}"
        ));
    }
    (new, new_server)
}

/// Step 3: each node reaches x/new and x/old as the oracle says (its own
/// node does, for kubelet probes), and y/client reaches x/new as it says.
fn nodes_reach_as_the_oracle_says(
    topo: &Topology,
    oracle: &Oracle,
    client: &Pod,
    new: &Pod,
    old: &Pod,
    ports: &mut SourcePorts,
    failures: &mut Vec<String>,
) {
    for node in [topo.node("n1"), topo.node("n2")] {
        for pod in ["x/new", "x/old"] {
            let ip = if pod == "x/new" { new.ip } else { old.ip };
            let want: Vec<bool> =
                PROTOS.iter().map(|&p| oracle.allowed_from_address(node.ip.into(), pod, p, 80)).collect();
            let (ok, out) = converge(&node.netns, || tcp_udp(ports, &node.name, ip, false), &want);
            eprintln!("netpol: node {} -> {pod}: expected {want:?}, {}", node.name, if ok { "ok" } else { "MISMATCH" });
            if !ok {
                failures
                    .push(format!("node {} -> {pod} (tcp, udp): expected answers {want:?}, saw {out:?}", node.name));
            }
        }
    }
    let want: Vec<bool> = PROTOS.iter().map(|&p| oracle.allowed("y/client", "x/new", p, 80, true)).collect();
    let (ok, out) = converge(&client.netns, || tcp_udp(ports, "client", new.ip, true), &want);
    if !ok {
        failures.push(format!("y/client -> x/new: expected answers {want:?}, saw {out:?}"));
    }
}

/// Step 4: y/ghost, added without its Pod object, passes no traffic either
/// way for 2 s; once published, it reaches y/client and y/client reaches it.
fn unknown_pod_isolated_until_published(
    topo: &Topology,
    client: &Pod,
    list1: &Conflist,
    ports: &mut SourcePorts,
    failures: &mut Vec<String>,
) {
    let t_add = Instant::now();
    let mut ghost = Pod::builder(topo.node("n1"), "y-ghost")
        .object(pod_object("y/ghost", &labels(&[("pod", "ghost")])))
        .unpublished()
        .create(list1)
        .unwrap();
    eprintln!("netpol: y/ghost ADD without its Pod object took {:.1?}", t_add.elapsed());
    let _ghost_server = serve(topo, &ghost, "y/ghost");
    let client_server = serve(topo, client, "y/client");
    let t_watch = Instant::now();
    while t_watch.elapsed() < Duration::from_secs(2) {
        let into = probe::run(&client.netns, &tcp_udp(ports, "client", ghost.ip, true), PROBE_TIMEOUT).unwrap();
        let from = probe::run(&ghost.netns, &tcp_udp(ports, "ghost", client.ip, true), PROBE_TIMEOUT).unwrap();
        if into.iter().chain(&from).any(|o| o.answered_by().is_some()) {
            failures.push(format!(
                "y/ghost, whose Pod object the agent does not know, passed traffic: into it {into:?}, out of it {from:?}"
            ));
            break;
        }
    }
    ghost.publish().unwrap();
    let (ok, out) = converge(&client.netns, || tcp_udp(ports, "client", ghost.ip, true), &[true, true]);
    if !ok {
        failures.push(format!("y/ghost never answered once its Pod object was published: {out:?}"));
    }
    let (ok, out) = converge(&ghost.netns, || tcp_udp(ports, "ghost", client.ip, true), &[true, true]);
    if !ok {
        failures.push(format!("y/ghost never reached y/client once its Pod object was published: {out:?}"));
    }
    drop(client_server);
}

// ---------------------------------------------------------------------------
// Without privileges: the scenarios themselves.

/// Nine pods on two nodes at made-up addresses.
/// Nine dual-stack pods on two nodes at made-up addresses: the pods'
/// addresses of `family`, and every node's.
fn paper_cluster(family: Family) -> (BTreeMap<String, IpAddr>, BTreeMap<String, Vec<IpAddr>>) {
    let ips = pod_keys().into_iter().enumerate().map(|(i, k)| (k, paper_pod(i, family))).collect();
    let nodes = (0..2u8)
        .map(|n| {
            let v6: std::net::Ipv6Addr = format!("fd00:172:30::{}", 11 + n).parse().unwrap();
            (format!("n{}", n + 1), vec![Ipv4Addr::new(172, 30, 0, 11 + n).into(), v6.into()])
        })
        .collect();
    (ips, nodes)
}

/// Pod `i`'s address of `family`.
fn paper_pod(i: usize, family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => Ipv4Addr::new(10, 244, (i % 2 + 1) as u8, (i + 2) as u8).into(),
        Family::Ipv6 => format!("fd00:10:244:{}::{}", i % 2 + 1, i + 2).parse::<std::net::Ipv6Addr>().unwrap().into(),
    }
}

fn paper_docs(state: &State) -> Vec<String> {
    let mut docs: Vec<String> = NAMESPACES.iter().map(|ns| state.namespace_yaml(ns)).collect();
    for (i, key) in pod_keys().iter().enumerate() {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let host_ip = Ipv4Addr::new(172, 30, 0, 11 + (i % 2) as u8);
        let ips = vec![paper_pod(i, Family::Ipv4), paper_pod(i, Family::Ipv6)];
        docs.push(pod_object(key, &state.pods[key]).yaml_ips(node, Some((host_ip, ips))));
    }
    docs.extend(state.policy_docs().into_values());
    docs
}

/// The 9x9 pod matrices a state expects over `family`, as text.
fn paper_matrix(state: &State, nodes: &BTreeMap<String, Vec<IpAddr>>, family: Family) -> String {
    let oracle = Oracle::new(&paper_docs(state), nodes.clone(), family).unwrap();
    let mut out = String::new();
    for port in PORTS {
        for proto in PROTOS {
            for c in pod_keys() {
                for d in pod_keys() {
                    out.push(if oracle.allowed(&c, &d, proto, port, true) { '.' } else { 'X' });
                }
            }
        }
    }
    out
}

/// Every object the scenarios write is a valid Kubernetes object (strict
/// API schema), converts in the agent's model without error, and every
/// step changes what is expected (or it would prove nothing); there are
/// enough scenarios.
#[test]
fn scenarios_are_valid_and_every_step_changes_the_expectation() {
    for family in [Family::Ipv4, Family::Ipv6] {
        scenarios_valid_over(family);
    }
}

fn scenarios_valid_over(family: Family) {
    let (ips, nodes) = paper_cluster(family);
    let all = scenarios(&ips);
    for name in IPV6_SCENARIOS {
        let s = all.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no scenario {name}"));
        assert!(s.steps.iter().all(|step| !step.state.service), "{name} has the IPv4 Service column");
    }
    let steps: usize = all.iter().map(|s| s.steps.len()).sum();
    assert!(all.len() >= 30, "only {} scenarios", all.len());
    let mut names = BTreeSet::new();
    let mut unique_docs = BTreeSet::new();
    let baseline = paper_matrix(&State::baseline(), &nodes, family);
    let mut policy_scenarios_all_allowed = Vec::new();
    for s in &all {
        assert!(names.insert(s.name.clone()), "two scenarios named {}", s.name);
        let mut previous = baseline.clone();
        for (i, step) in s.steps.iter().enumerate() {
            unique_docs.extend(paper_docs(&step.state));
            let m = paper_matrix(&step.state, &nodes, family);
            if i > 0 {
                assert_ne!(m, previous, "{} / {} expects what the step before expected", s.name, step.name);
            }
            if i == 0 && m == baseline && !step.state.policies.is_empty() {
                policy_scenarios_all_allowed.push(s.name.clone());
            }
            previous = m;
        }
    }
    eprintln!(
        "{family:?}: {} scenarios, {steps} steps; with policies yet all allowed: {policy_scenarios_all_allowed:?}",
        all.len()
    );
    assert!(
        policy_scenarios_all_allowed.len() <= 3,
        "too many policy scenarios expect everything allowed: {policy_scenarios_all_allowed:?}"
    );

    let dir = std::env::temp_dir().join(format!("weir-netpol-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("objects.yaml");
    std::fs::write(&file, manifest::documents(&unique_docs.into_iter().collect::<Vec<_>>())).unwrap();
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("kubernetes-validate is missing: run `cargo xtask setup` (pip install kubernetes-validate)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "scenario objects are not valid:\n{text}");
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
    for kind in ["pod", "namespace", "networkpolicy"] {
        assert!(text.contains(&format!("passed for resource {kind}")), "no {kind} validated:\n{text}");
    }
}
