//! The kube source against a fake API server at the HTTP level (kube-rs's
//! tower-test style): lists and watches are answered by a mock service, with
//! the failures real API servers produce: a watch that says 410 Gone (the
//! resourceVersion is too old: relist), a 500 on a list (retry with
//! backoff), a watch stream that ends (re-watch).
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::json;
use tokio::sync::mpsc;

use crate::sources::{Change, Update};

fn node(name: &str, cidr: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "resourceVersion": "1"},
           "spec": {"podCIDR": cidr},
           "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.11"}]}})
}

fn list(kind: &str, rv: &str, items: Vec<serde_json::Value>) -> Response<Body> {
    let body = json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items});
    Response::builder().status(200).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

/// A watch response: one JSON event per line, then the stream ends.
fn events(lines: Vec<serde_json::Value>) -> Response<Body> {
    let mut body = Vec::new();
    for l in lines {
        body.extend(serde_json::to_vec(&l).unwrap());
        body.push(b'\n');
    }
    Response::builder().status(200).body(Body::from(body)).unwrap()
}

fn status(code: StatusCode, reason: &str) -> Response<Body> {
    let body = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": reason, "reason": reason, "code": code.as_u16()});
    Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

/// The fake API server: answers by path and by how many times that kind was
/// asked before.
async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>) {
    let (mut node_lists, mut node_watches, mut svc_lists) = (0, 0, 0);
    while let Some((req, send)) = handle.next_request().await {
        let path = req.uri().path().to_string();
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        // A quiet watch: answered (with an empty stream) only much later.
        let mut delay = Duration::ZERO;
        let response = match (path.as_str(), watch) {
            ("/api/v1/nodes", false) => {
                node_lists += 1;
                match node_lists {
                    1 => list("NodeList", "10", vec![node("n1", "10.244.1.0/24")]),
                    // After the 410: the relist finds n2 too.
                    _ => list("NodeList", "20", vec![node("n1", "10.244.1.0/24"), node("n2", "10.244.2.0/24")]),
                }
            }
            ("/api/v1/nodes", true) => {
                node_watches += 1;
                match node_watches {
                    // The resourceVersion expired while we were away.
                    1 => events(vec![
                        json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Expired", "message": "too old resource version", "code": 410}}),
                    ]),
                    2 => events(vec![json!({"type": "ADDED", "object": node("n3", "10.244.3.0/24")})]),
                    // Then the stream ends; later watches stay quiet.
                    _ => {
                        delay = Duration::from_secs(30);
                        events(vec![])
                    }
                }
            }
            ("/api/v1/services", false) => {
                svc_lists += 1;
                if svc_lists == 1 {
                    status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
                } else {
                    list("ServiceList", "5", vec![])
                }
            }
            // A slow list: must not hold up the other kinds.
            ("/apis/discovery.k8s.io/v1/endpointslices", false) => {
                delay = Duration::from_secs(3);
                list("EndpointSliceList", "5", vec![])
            }
            // The policy kinds: empty here (their own tests below).
            ("/api/v1/pods" | "/api/v1/namespaces" | "/apis/networking.k8s.io/v1/networkpolicies", false) => {
                list("List", "5", vec![])
            }
            (_, true) => {
                delay = Duration::from_secs(30);
                events(vec![])
            }
            (other, _) => status(StatusCode::NOT_FOUND, &format!("no {other} here")),
        };
        // One task per request: a quiet watch must not hold up the others.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send.send_response(response);
        });
    }
}

async fn next(rx: &mut mpsc::Receiver<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("an update in time").expect("source alive")
}

#[tokio::test]
async fn relists_after_410_retries_after_500_and_rewatches_after_a_stream_ends() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(serve(handle));
    let client = Client::new(service, "default");
    let (tx, mut rx) = mpsc::channel(64);
    let source = tokio::spawn(crate::sources::kube::run(client, tx));

    let mut node_updates = Vec::new();
    let (mut services_listed, mut slices_listed) = (false, false);
    let mut nodes_done_before_slices = false;
    let mut service_reachability = Vec::new();
    while node_updates.len() < 3 || !services_listed || !slices_listed {
        match next(&mut rx).await {
            Update::Nodes(c) => node_updates.push(c),
            Update::Services(Change::Relisted(v)) => services_listed = v.is_empty(),
            Update::Reachable { kind, ok } if kind == "Service" => service_reachability.push(ok),
            Update::EndpointSlices(Change::Relisted(v)) => {
                slices_listed = v.is_empty();
                nodes_done_before_slices = node_updates.len() == 3;
            }
            Update::Pods(Change::Relisted(v)) if v.is_empty() => {}
            Update::Namespaces(Change::Relisted(v)) if v.is_empty() => {}
            Update::NetworkPolicies(Change::Relisted(v)) if v.is_empty() => {}
            other => panic!("unexpected update {other:?}"),
        }
    }
    assert!(nodes_done_before_slices, "the slow EndpointSlice list held up the Node watch");
    // The 500 made the Service watch unreachable until its retry worked.
    assert_eq!(service_reachability, [false, true]);
    let names = |c: &Change<crate::model::NodeInfo>| change_summary(c, |n| n.name.clone());
    let seen: Vec<String> = node_updates.iter().map(names).collect();
    // 410 Gone on the watch: a full relist (which also drops whatever was
    // deleted meanwhile), then the watch goes on.
    assert_eq!(seen, ["relist n1", "relist n1,n2", "apply n3"]);
    source.abort();
}

/// One kind's part in a scripted fake API server: its list, then the
/// events of its first watch (later watches stay quiet).
struct Script {
    path: &'static str,
    items: Vec<serde_json::Value>,
    events: Vec<serde_json::Value>,
}

/// A fake API server that plays `scripts` and lists every other kind as
/// empty; records each request's path and query.
async fn serve_scripts(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    scripts: Vec<Script>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut watched = std::collections::BTreeSet::new();
    while let Some((req, send)) = handle.next_request().await {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        requests.lock().unwrap().push(format!("{path}?{query}"));
        let watch = query.contains("watch=true");
        let script = scripts.iter().find(|s| s.path == path);
        let mut delay = Duration::ZERO;
        let response = match (script, watch) {
            (Some(s), false) => list("List", "10", s.items.clone()),
            (Some(s), true) if watched.insert(path.clone()) => events(s.events.clone()),
            (None, false) => list("List", "10", vec![]),
            (_, true) => {
                delay = Duration::from_secs(30);
                events(vec![])
            }
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send.send_response(response);
        });
    }
}

/// Runs the kube source against the scripted server; returns the updates
/// `pick` keeps (others are dropped) once `want` of them arrived, and the
/// requests made.
async fn run_scripted<T>(
    scripts: Vec<Script>,
    want: usize,
    pick: impl Fn(Update) -> Option<T>,
) -> (Vec<T>, Vec<String>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    tokio::spawn(serve_scripts(handle, scripts, requests.clone()));
    let (tx, mut rx) = mpsc::channel(64);
    let source = tokio::spawn(crate::sources::kube::run(Client::new(service, "default"), tx));
    let mut out = Vec::new();
    while out.len() < want {
        match next(&mut rx).await {
            Update::Reachable { kind, ok } => panic!("{kind} reachable={ok}: the fake server answers every kind"),
            u => out.extend(pick(u)),
        }
    }
    source.abort();
    let requests = requests.lock().unwrap().clone();
    (out, requests)
}

fn event(type_: &str, object: serde_json::Value) -> serde_json::Value {
    json!({"type": type_, "object": object})
}

fn pod(
    ns: &str,
    name: &str,
    rv: &str,
    labels: serde_json::Value,
    node: &str,
    phase: &str,
    ip: Option<&str>,
) -> serde_json::Value {
    let mut status = json!({"phase": phase});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": status})
}

fn change_summary<T>(c: &Change<T>, key: impl Fn(&T) -> String) -> String {
    match c {
        Change::Relisted(v) => format!("relist {}", v.iter().map(&key).collect::<Vec<_>>().join(",")),
        Change::RelistedKeeping { objects, keep } => {
            format!("relist {} keep {}", objects.iter().map(&key).collect::<Vec<_>>().join(","), keep.join(","))
        }
        Change::Applied(x) => format!("apply {}", key(x)),
        Change::Deleted(k) => format!("delete {k}"),
    }
}

#[tokio::test]
async fn pods_of_every_node_are_listed_and_watched() {
    use crate::model::policy::types::PodInfo;
    let mut host = pod("kube-system", "h", "3", json!({}), "n1", "Running", Some("172.30.0.11"));
    host["spec"]["hostNetwork"] = json!(true);
    let scripts = vec![Script {
        path: "/api/v1/pods",
        items: vec![
            pod("x", "a", "1", json!({"app": "a"}), "n1", "Running", Some("10.244.1.5")),
            // Another node's pod: a policy peer all the same.
            pod("x", "b", "2", json!({"app": "b"}), "n2", "Running", Some("10.244.2.7")),
            host,
        ],
        events: vec![
            event("MODIFIED", pod("x", "a", "11", json!({"app": "a", "v": "2"}), "n1", "Running", Some("10.244.1.5"))),
            // Finished: its address may go to another pod.
            event("MODIFIED", pod("x", "b", "12", json!({"app": "b"}), "n2", "Succeeded", Some("10.244.2.7"))),
            // Known by name before it has an address.
            event("ADDED", pod("y", "c", "13", json!({"app": "c"}), "n1", "Pending", None)),
            event("DELETED", pod("x", "a", "14", json!({"app": "a"}), "n1", "Running", Some("10.244.1.5"))),
        ],
    }];
    let (updates, requests) = run_scripted(scripts, 5, |u| match u {
        Update::Pods(c) => Some(c),
        _ => None,
    })
    .await;
    let summary = |p: &PodInfo| format!("{}@{}", p.key, p.ip.map(|ip| ip.to_string()).unwrap_or_default());
    let seen: Vec<_> = updates.iter().map(|c| change_summary(c, summary)).collect();
    assert_eq!(
        seen,
        ["relist x/a@10.244.1.5,x/b@10.244.2.7", "apply x/a@10.244.1.5", "delete x/b", "apply y/c@", "delete x/a"]
    );
    let Change::Applied(a) = &updates[1] else { unreachable!() };
    assert_eq!(a.labels.get("v").map(String::as_str), Some("2"));
    assert_eq!(a.node.as_deref(), Some("n1"));
    assert_eq!(a.named_ports.len(), 1);
    // All namespaces, finished pods left out by the server, the list from
    // its watch cache.
    let list =
        requests.iter().find(|r| r.starts_with("/api/v1/pods?") && !r.contains("watch=true")).expect("a pod list");
    assert!(list.contains("fieldSelector=status.phase"), "{list}");
    assert!(list.contains("resourceVersion=0"), "{list}");
}

#[tokio::test]
async fn namespaces_are_listed_and_watched() {
    let ns = |name: &str, rv: &str, labels: serde_json::Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "resourceVersion": rv, "labels": labels}});
    let scripts = vec![Script {
        path: "/api/v1/namespaces",
        items: vec![ns("x", "1", json!({"team": "a"}))],
        events: vec![event("ADDED", ns("y", "11", json!({"team": "b"}))), event("DELETED", ns("x", "12", json!({})))],
    }];
    let (updates, _) = run_scripted(scripts, 3, |u| match u {
        Update::Namespaces(c) => Some(c),
        _ => None,
    })
    .await;
    let seen: Vec<_> = updates.iter().map(|c| change_summary(c, |n| n.name.clone())).collect();
    assert_eq!(seen, ["relist x", "apply y", "delete x"]);
    let Change::Relisted(v) = &updates[0] else { unreachable!() };
    assert_eq!(v[0].labels.get("team").map(String::as_str), Some("a"));
}

#[tokio::test]
async fn network_policies_fail_closed_and_their_problems_are_counted() {
    let np = |name: &str, rv: &str, port: u32| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": "x", "resourceVersion": rv},
               "spec": {"podSelector": {"matchLabels": {"app": name}}, "ingress": [{"ports": [{"port": port}]}]}})
    };
    let scripts = vec![Script {
        path: "/apis/networking.k8s.io/v1/networkpolicies",
        // 70000 is no port: that policy must deny, not vanish.
        items: vec![np("allow", "1", 80), np("typo", "2", 70000)],
        events: vec![event("MODIFIED", np("typo", "11", 8080)), event("DELETED", np("allow", "12", 80))],
    }];
    let (updates, _) = run_scripted(scripts, 5, |u| match u {
        u @ (Update::NetworkPolicies(_) | Update::Problems { .. }) => Some(u),
        _ => None,
    })
    .await;
    let Update::NetworkPolicies(Change::Relisted(listed)) = &updates[0] else { panic!("{updates:?}") };
    let keys: Vec<_> = listed.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["x/allow", "x/typo"]);
    assert_eq!(listed[0].ingress.len(), 1);
    let typo = &listed[1];
    assert!(typo.ingress_enabled && typo.ingress.is_empty(), "deny-all for what it selects: {typo:?}");
    assert_eq!(typo.pod_selector.match_labels.get("app").map(String::as_str), Some("typo"));
    assert_eq!(updates[1], Update::Problems { kind: "NetworkPolicy".into(), count: 1 });
    let Update::NetworkPolicies(Change::Applied(fixed)) = &updates[2] else { panic!("{updates:?}") };
    assert_eq!((fixed.key.as_str(), fixed.ingress.len()), ("x/typo", 1));
    assert_eq!(updates[3], Update::Problems { kind: "NetworkPolicy".into(), count: 0 });
    assert_eq!(updates[4], Update::NetworkPolicies(Change::Deleted("x/allow".into())));
}

/// The Service watch as it met upstream's e2e suites: the Conformance test
/// "should complete a service status lifecycle" (test/e2e/network/
/// service.go) leaves a Service whose status condition has
/// `lastTransitionTime: null`, which the typed decoder refuses. Such an
/// object must neither fail the list nor the watch (each failure relisted,
/// and the watch error made the kind look unreachable): it is read for what
/// the agent uses, and one that still cannot be decoded is reported by name
/// and keeps its last readable version. The watch also asks only for the
/// Services the default proxy serves (`service.kubernetes.io/headless` and
/// `service.kubernetes.io/service-proxy-name` left out, as kube-proxy does).
#[tokio::test]
async fn unreadable_services_cost_only_themselves() {
    let svc = |name: &str, rv: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "x", "resourceVersion": rv},
               "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})
    };
    let mut lifecycle = svc("lifecycle", "2", "10.96.0.12");
    lifecycle["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]},
        "conditions": [{"type": "StatusUpdate", "status": "True", "lastTransitionTime": null, "reason": "E2E", "message": "Set from e2e test"}]});
    let mut broken = svc("odd", "3", "10.96.0.13");
    broken["spec"]["ports"] = json!("not a list");
    let mut broken_later = svc("web", "11", "10.96.0.99");
    broken_later["spec"]["ports"] = json!(7);
    let scripts = vec![Script {
        path: "/api/v1/services",
        items: vec![svc("web", "1", "10.96.0.11"), lifecycle, broken],
        events: vec![event("MODIFIED", broken_later), event("MODIFIED", svc("web", "12", "10.96.0.21"))],
    }];
    let (updates, requests) = run_scripted(scripts, 5, |u| match u {
        u @ (Update::Services(_) | Update::Problems { .. }) => Some(u),
        _ => None,
    })
    .await;
    let summaries: Vec<String> = updates
        .iter()
        .map(|u| match u {
            Update::Services(c) => change_summary(c, |s| format!("{}@{}", s.key, s.cluster_ips[0])),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summaries,
        [
            "relist x/web@10.96.0.11,x/lifecycle@10.96.0.12 keep x/odd",
            "Problems { kind: \"Service\", count: 1 }",
            // The unreadable MODIFIED of x/web: reported, nothing applied.
            "Problems { kind: \"Service\", count: 2 }",
            "apply x/web@10.96.0.21",
            "Problems { kind: \"Service\", count: 1 }",
        ]
    );
    let selector = "labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name";
    let service_requests: Vec<_> = requests.iter().filter(|r| r.starts_with("/api/v1/services?")).collect();
    assert!(
        !service_requests.is_empty() && service_requests.iter().all(|r| r.contains(selector)),
        "{service_requests:?}"
    );
    let slice_requests: Vec<_> = requests.iter().filter(|r| r.contains("endpointslices?")).collect();
    assert!(
        slice_requests.iter().all(|r| r.contains("kubernetes.io%2Fservice-name%2C%21service.kubernetes.io%2Fheadless")),
        "{slice_requests:?}"
    );
}
