//! A synthetic cluster as a real API server would serve it: Nodes with
//! images and conditions, Pods with owner references, managed fields,
//! probes and container statuses (about 3.5 KB of JSON each, as kubectl
//! shows a plain Deployment's pod), Services with one EndpointSlice each,
//! Namespaces and NetworkPolicies. Pods of one workload share their labels,
//! as ReplicaSet pods do; 30 pods per node.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::{Value, json};

use crate::fake_api::{Resource, store::Key};

/// What to generate.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Shape {
    pub nodes: usize,
    pub pods: usize,
    pub services: usize,
    pub policies: usize,
}

/// The bench node (the agent's own) and where every other node is.
#[derive(Clone, Debug)]
pub struct Layout {
    pub own_node: String,
    pub own_ip: Ipv4Addr,
    /// Peer nodes' InternalIPs are 172.31.0.0/16, on the bench node's link.
    pub peer_network: Ipv4Addr,
}

pub const CLUSTER_CIDR: &str = "10.128.0.0/9";
const POD_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
const SERVICE_BASE: u32 = u32::from_be_bytes([10, 96, 0, 10]);
const STAMP: &str = "2026-12-01T10:00:00Z";

/// Node `n`'s /24 of the cluster CIDR.
pub fn node_cidr(n: usize) -> String {
    let base = Ipv4Addr::from(POD_BASE + ((n as u32) << 8));
    format!("{base}/24")
}

/// The address of the `slot`-th pod on node `n` (slot < 250).
pub fn pod_ip(n: usize, slot: usize) -> Ipv4Addr {
    Ipv4Addr::from(POD_BASE + ((n as u32) << 8) + 2 + slot as u32)
}

pub fn node_name(layout: &Layout, n: usize) -> String {
    if n == 0 { layout.own_node.clone() } else { format!("node-{n:05}") }
}

fn namespaces(shape: &Shape) -> usize {
    (shape.services / 100).clamp(10, 200)
}

pub fn namespace_name(i: usize) -> String {
    format!("team-{i:03}")
}

/// Workload `a` (one Deployment, one Service): its namespace.
fn app_namespace(shape: &Shape, a: usize) -> String {
    namespace_name(a % namespaces(shape))
}

fn tier(a: usize) -> &'static str {
    ["frontend", "backend", "db"][a % 3]
}

fn hash(seed: usize) -> String {
    // Ten characters from the alphabet ReplicaSet hashes use.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..10)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ALPHABET[(x >> 33) as usize % ALPHABET.len()] as char
        })
        .collect()
}

fn uid(kind: u8, i: usize) -> String {
    format!("{kind:02x}{:06x}-5f1e-4c2a-9b7d-{:012x}", i & 0xff_ffff, i)
}

/// Every object of the cluster, keyed as the fake API's store keys them.
pub fn generate(shape: &Shape, layout: &Layout) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    let mut put = |resource: Resource, ns: &str, name: &str, v: Value| {
        out.insert((resource, ns.to_string(), name.to_string()), v);
    };
    for i in 0..namespaces(shape) {
        let name = namespace_name(i);
        put(Resource::Namespace, "", &name, namespace(&name, i));
    }
    for n in 0..shape.nodes {
        let name = node_name(layout, n);
        put(Resource::Node, "", &name, node(layout, n));
    }
    // Endpoints per workload, filled as pods are placed.
    let mut endpoints: Vec<Vec<(usize, usize)>> = vec![Vec::new(); shape.services.max(1)];
    for p in 0..shape.pods {
        let (n, slot) = (p % shape.nodes, p / shape.nodes);
        let a = p % shape.services.max(1);
        let pod = PodSpec { shape, layout, app: a, node: n, slot, generation: 0, replica: p };
        let v = pod.to_json();
        put(Resource::Pod, &app_namespace(shape, a), &pod.name(), v);
        endpoints[a].push((n, slot));
    }
    for (a, pods) in endpoints.iter().enumerate().take(shape.services) {
        let ns = app_namespace(shape, a);
        put(Resource::Service, &ns, &format!("app-{a}"), service(a, &ns));
        put(Resource::EndpointSlice, &ns, &format!("app-{a}-{}", &hash(a)[..5]), endpoint_slice(layout, a, &ns, pods));
    }
    for k in 0..shape.policies {
        let ns_index = k % namespaces(shape);
        put(Resource::NetworkPolicy, &namespace_name(ns_index), &format!("policy-{k}"), policy(shape, k, ns_index));
    }
    out
}

fn namespace(name: &str, i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": name, "uid": uid(1, i), "creationTimestamp": STAMP,
            "labels": {"kubernetes.io/metadata.name": name, "team": format!("t{}", i % 10), "env": if i.is_multiple_of(4) { "staging" } else { "prod" }},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn node(layout: &Layout, n: usize) -> Value {
    let name = node_name(layout, n);
    let ip = if n == 0 {
        layout.own_ip
    } else {
        let base = u32::from(layout.peer_network);
        Ipv4Addr::from(base + 1 + n as u32)
    };
    let cidr = node_cidr(n);
    let images: Vec<Value> = (0..12)
        .map(|i| {
            json!({"names": [format!("registry.k8s.io/image-{i}@sha256:{:064x}", i * 7919 + 1), format!("registry.k8s.io/image-{i}:v1.{i}.0")], "sizeBytes": 10_000_000 + i * 1_234_567})
        })
        .collect();
    let condition = |t: &str, status: &str, reason: &str| json!({"type": t, "status": status, "lastHeartbeatTime": STAMP, "lastTransitionTime": STAMP, "reason": reason, "message": format!("kubelet has {reason}")});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": uid(2, n), "creationTimestamp": STAMP,
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": format!("zone-{}", n % 3), "topology.kubernetes.io/region": "region-1",
                "node.kubernetes.io/instance-type": "m5.xlarge",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": format!("aws:///zone-{}/i-{n:017x}", n % 3)},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "4", "memory": "16078428Ki", "pods": "110", "ephemeral-storage": "101445540Ki"},
            "allocatable": {"cpu": "3920m", "memory": "15336028Ki", "pods": "110", "ephemeral-storage": "93492209510"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{n:032x}"), "systemUUID": uid(3, n), "bootID": uid(4, n),
                "kernelVersion": "6.8.0-1019-aws", "osImage": "Ubuntu 24.04.1 LTS", "containerRuntimeVersion": "containerd://1.7.22",
                "kubeletVersion": "v1.34.0", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
            "images": images,
        },
    })
}

/// One pod of workload `app`, the `slot`-th on node `node`.
pub struct PodSpec<'a> {
    pub shape: &'a Shape,
    pub layout: &'a Layout,
    pub app: usize,
    pub node: usize,
    pub slot: usize,
    /// Bumped by each change the bench makes (status only).
    pub generation: usize,
    /// Distinguishes the pod's name within its workload.
    pub replica: usize,
}

impl PodSpec<'_> {
    pub fn name(&self) -> String {
        format!("app-{}-{}-{}", self.app, hash(self.app), &hash(self.replica + 1_000_003)[..5])
    }

    pub fn namespace(&self) -> String {
        app_namespace(self.shape, self.app)
    }

    pub fn ip(&self) -> Ipv4Addr {
        pod_ip(self.node, self.slot)
    }

    pub fn to_json(&self) -> Value {
        let (a, name, ns) = (self.app, self.name(), self.namespace());
        let rs = format!("app-{a}-{}", hash(a));
        let ip = self.ip().to_string();
        let host_ip = match self.node {
            0 => self.layout.own_ip,
            n => Ipv4Addr::from(u32::from(self.layout.peer_network) + 1 + n as u32),
        }
        .to_string();
        let condition =
            |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": STAMP});
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "uid": uid(5, self.replica), "creationTimestamp": STAMP,
                "generateName": format!("{rs}-"),
                "labels": {"app": format!("app-{a}"), "pod-template-hash": hash(a), "tier": tier(a), "version": if a % 2 == 0 { "v1" } else { "v2" }},
                "annotations": {"kubectl.kubernetes.io/restartedAt": STAMP},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uid(6, a), "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": STAMP, "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}, "f:tier": {}, "f:version": {}}, "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}},
                                  "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}}, "f:dnsPolicy": {}, "f:restartPolicy": {}}}},
                    {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": STAMP, "fieldsType": "FieldsV1", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}},
                ],
            },
            "spec": {
                "nodeName": node_name(self.layout, self.node),
                "containers": [{
                    "name": "app", "image": format!("registry.example.com/team/app-{a}:1.{}.0", a % 17), "imagePullPolicy": "IfNotPresent",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                    "env": [{"name": "APP_NAME", "value": format!("app-{a}")}, {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                }],
                "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                ]}}],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default", "serviceAccount": "default", "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                ],
                "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            },
            "status": {
                "phase": "Running",
                "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
                "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip, "podIPs": [{"ip": ip}], "startTime": STAMP,
                "containerStatuses": [{
                    "name": "app", "ready": true, "started": true, "restartCount": self.generation,
                    "image": format!("registry.example.com/team/app-{a}:1.{}.0", a % 17),
                    "imageID": format!("registry.example.com/team/app-{a}@sha256:{:064x}", a),
                    "containerID": format!("containerd://{:064x}", self.replica * 31 + self.generation),
                    "state": {"running": {"startedAt": STAMP}}, "lastState": {},
                }],
                "qosClass": "Burstable",
            },
        })
    }
}

fn service(a: usize, ns: &str) -> Value {
    let ip = Ipv4Addr::from(SERVICE_BASE + a as u32).to_string();
    let mut port = json!({"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"});
    let node_port = a.is_multiple_of(10) && a / 10 < 2700;
    if node_port {
        port["nodePort"] = json!(30000 + a / 10);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("app-{a}"), "namespace": ns, "uid": uid(7, a), "creationTimestamp": STAMP, "labels": {"app": format!("app-{a}")}},
        "spec": {
            "type": if node_port { "NodePort" } else { "ClusterIP" },
            "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": format!("app-{a}")}, "ports": [port], "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    })
}

fn endpoint_slice(layout: &Layout, a: usize, ns: &str, pods: &[(usize, usize)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|&(n, slot)| {
            json!({
                "addresses": [pod_ip(n, slot).to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node_name(layout, n), "zone": format!("zone-{}", n % 3),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("pod-{n}-{slot}"), "uid": uid(5, n * 1000 + slot)},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("app-{a}-{}", &hash(a)[..5]), "namespace": ns, "uid": uid(8, a), "creationTimestamp": STAMP,
            "generateName": format!("app-{a}-"),
            "labels": {"kubernetes.io/service-name": format!("app-{a}"), "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": STAMP},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("app-{a}"), "uid": uid(7, a), "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

/// Policy `k` in namespace `ns_index`: a mix of what clusters run. Every
/// fourth is a namespace's default deny; the others admit an app's
/// frontends, a team's namespaces, and (every fifth) a CIDR, on its ports.
fn policy(shape: &Shape, k: usize, ns_index: usize) -> Value {
    let ns = namespace_name(ns_index);
    // An app that lives in this namespace.
    let nss = namespaces(shape);
    let app = (ns_index + nss * (k / nss)) % shape.services.max(1);
    let spec = if k.is_multiple_of(4) {
        json!({"podSelector": {}, "policyTypes": ["Ingress"]})
    } else {
        let mut from = vec![
            json!({"podSelector": {"matchLabels": {"tier": "frontend"}}}),
            json!({"namespaceSelector": {"matchLabels": {"team": format!("t{}", k % 10)}}, "podSelector": {"matchLabels": {"version": "v1"}}}),
        ];
        if k.is_multiple_of(5) {
            from.push(json!({"ipBlock": {"cidr": format!("192.168.{}.0/24", k % 256), "except": [format!("192.168.{}.128/25", k % 256)]}}));
        }
        json!({
            "podSelector": {"matchLabels": {"app": format!("app-{app}")}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": from, "ports": [{"protocol": "TCP", "port": "http"}, {"protocol": "TCP", "port": 9090}]}],
        })
    };
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("policy-{k}"), "namespace": ns, "uid": uid(9, k), "creationTimestamp": STAMP, "generation": 1},
        "spec": spec,
    })
}
