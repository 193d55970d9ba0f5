//! The fake API server: its store (lists, changes as events, 410 Gone,
//! selectors, paging), its HTTP side, and the agent's real kube source
//! running against it.
use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{
    store::{self, EventType, Filter, Key, Resource, Store},
    *,
};
use weir_agent::sources::{Change, Update};

const NODES: &str = "
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 172.30.0.11}]}
---
kind: Node
metadata: {name: n2, resourceVersion: \"77\"}
spec: {podCIDR: 10.244.2.0/24}
";

const PODS: &str = "
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, labels: {app: web}}
  spec: {nodeName: n1, containers: [{name: c}]}
  status: {phase: Running, podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: done, namespace: x}
  spec: {nodeName: n2, containers: [{name: c}]}
  status: {phase: Succeeded, podIP: 10.244.2.9}
";

fn objects(texts: &[&str]) -> BTreeMap<Key, Value> {
    texts.iter().flat_map(|t| store::parse_manifests(t).unwrap()).collect()
}

fn loaded(texts: &[&str]) -> Store {
    let mut s = Store::new(1000, store::DEFAULT_LOG_CAPACITY);
    s.replace_all(objects(texts));
    s
}

fn names(items: &[std::sync::Arc<Value>]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            format!("{}/{}", i["metadata"]["namespace"].as_str().unwrap_or(""), i["metadata"]["name"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn lists_have_the_api_server_shape() {
    let s = loaded(&[NODES, PODS]);
    let page = s.list(Resource::Node, &Filter::default(), None, false, Some(500), None).unwrap();
    let list = page.to_json(Resource::Node);
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"]["resourceVersion"], json!(s.resource_version().to_string()));
    assert!(list["metadata"].get("continue").is_none());
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        // Stamped by the server (n2's own "77" is replaced), kind and
        // apiVersion filled in.
        let rv: u64 = item["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        assert!(rv > 1000 && rv <= s.resource_version(), "{item}");
        assert_eq!((item["kind"].as_str(), item["apiVersion"].as_str()), (Some("Node"), Some("v1")));
        // Cluster-scoped: no namespace.
        assert!(item["metadata"].get("namespace").is_none());
    }
    // Namespaced kinds get `default`; served in the group's apiVersion.
    let pods = s.list(Resource::Pod, &Filter::default(), Some("0"), false, None, None).unwrap();
    assert_eq!(names(&pods.items), ["default/a", "x/done"]);
    assert_eq!(pods.to_json(Resource::Pod)["kind"], "PodList");
    assert_eq!(Resource::EndpointSlice.api_version(), "discovery.k8s.io/v1");
    // A namespace in the URL.
    let in_x = Filter::parse(Some("x"), None, None).unwrap();
    assert_eq!(names(&s.list(Resource::Pod, &in_x, None, false, None, None).unwrap().items), ["x/done"]);
    assert_eq!(s.get(Resource::Pod, "x", "done").unwrap()["status"]["phase"], "Succeeded");
}

#[test]
fn manifests_are_read_as_the_dir_source_reads_them() {
    let objs = store::parse_manifests(
        "kind: ConfigMap\nmetadata: {name: other-tools-object}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: calico}\n---\n\
         apiVersion: v1\nkind: NamespaceList\nitems: [{kind: Namespace, metadata: {name: x, labels: {team: a}}}]\n---\n",
    )
    .unwrap();
    let keys: Vec<_> = objs.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, [(Resource::Namespace, String::new(), "x".to_string())]);
    // A served kind that does not read as that kind fails the file.
    let err =
        store::parse_manifests("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: [1]}\n").unwrap_err();
    assert!(err.contains("invalid Node n"), "{err}");
    assert!(store::parse_manifests("metadata: {name: n}\n").unwrap_err().contains("no `kind`"));
    assert!(store::parse_manifests("kind: Pod\nmetadata: {}\n").unwrap_err().contains("without metadata.name"));
}

#[test]
fn changes_are_events_with_their_own_resource_versions() {
    let mut s = loaded(&[NODES, PODS]);
    let start = s.resource_version();
    // The initial contents are no events: a watch from `start` has nothing to replay.
    assert!(s.events_since(Resource::Node, start).unwrap().0.is_empty());

    // n1 changes, n2 goes, n3 comes; the pods stay as they are.
    let nodes = NODES.replace("10.244.1.0/24", "10.244.11.0/24").replace("name: n2", "name: n3");
    assert_eq!(s.replace_all(objects(&[&nodes, PODS])), 3);
    let (events, rv) = s.events_since(Resource::Node, start).unwrap();
    assert_eq!(rv, start + 3);
    let seen: Vec<_> = events.iter().map(|e| (e.event, e.object["metadata"]["name"].as_str().unwrap(), e.rv)).collect();
    assert_eq!(
        seen,
        [
            (EventType::Deleted, "n2", start + 1),
            (EventType::Modified, "n1", start + 2),
            (EventType::Added, "n3", start + 3)
        ]
    );
    for e in &events {
        assert_eq!(e.object["metadata"]["resourceVersion"], json!(e.rv.to_string()), "{:?}", e.event);
    }
    assert_eq!(events[1].previous.as_ref().unwrap()["spec"]["podCIDR"], "10.244.1.0/24");
    assert!(s.events_since(Resource::Pod, start).unwrap().0.is_empty(), "unchanged objects make no events");
    // Resuming from the middle replays only what came after.
    let (later, _) = s.events_since(Resource::Node, start + 2).unwrap();
    assert_eq!(later.len(), 1);
    // The same contents again: nothing.
    assert_eq!(s.replace_all(objects(&[&nodes, PODS])), 0);
}

#[test]
fn watches_from_too_old_or_unknown_resource_versions_get_410() {
    let mut s = Store::new(1000, 2);
    s.replace_all(objects(&[NODES]));
    let start = s.resource_version();
    for cidr in ["10.244.21.0/24", "10.244.22.0/24", "10.244.23.0/24"] {
        s.replace_all(objects(&[&NODES.replace("10.244.1.0/24", cidr)]));
    }
    // The log keeps 2 changes: from `start` it would need 3.
    let gone = s.events_since(Resource::Node, start).unwrap_err();
    assert_eq!((gone.code, gone.reason), (410, "Expired"));
    assert_eq!(gone.status()["kind"], "Status");
    assert_eq!(gone.status()["code"], 410);
    assert_eq!(s.events_since(Resource::Node, start + 1).unwrap().0.len(), 2);
    // A number this server never gave out (an earlier process's): relist.
    assert_eq!(s.events_since(Resource::Node, s.resource_version() + 5).unwrap_err().code, 410);
    // An exact list of an old version is gone too; a newer one is a 504.
    let all = Filter::default();
    assert_eq!(s.list(Resource::Node, &all, Some(&start.to_string()), true, None, None).unwrap_err().code, 410);
    assert_eq!(
        s.list(Resource::Node, &all, Some(&(start + 100).to_string()), false, None, None).unwrap_err().code,
        504
    );
    assert!(s.list(Resource::Node, &all, Some(&start.to_string()), false, None, None).is_ok());
}

#[test]
fn selectors_filter_lists_and_turn_changes_into_adds_and_deletes() {
    let s = loaded(&[PODS]);
    let running = Filter::parse(None, None, Some("status.phase!=Succeeded,status.phase!=Failed")).unwrap();
    assert_eq!(names(&s.list(Resource::Pod, &running, None, false, None, None).unwrap().items), ["default/a"]);
    let on_n2 = Filter::parse(None, None, Some("spec.nodeName==n2")).unwrap();
    assert_eq!(names(&s.current(Resource::Pod, &on_n2)), ["x/done"]);
    for (selector, want) in [
        ("app", vec!["default/a"]),
        ("!app", vec!["x/done"]),
        ("app=web", vec!["default/a"]),
        ("app!=web", vec!["x/done"]),
        ("app in (db, web)", vec!["default/a"]),
        ("app notin (web)", vec!["x/done"]),
        ("app,app=db", vec![]),
    ] {
        let f = Filter::parse(None, Some(selector), None).unwrap();
        assert_eq!(names(&s.current(Resource::Pod, &f)), want, "{selector}");
    }
    assert_eq!(Filter::parse(None, Some("app in web"), None).unwrap_err().code, 400);
    assert_eq!(Filter::parse(None, None, Some("status.phase")).unwrap_err().code, 400);

    // A pod that finishes leaves the selection: DELETED for that watch,
    // MODIFIED for one without selector; one that comes back: ADDED.
    let mut s = s;
    let start = s.resource_version();
    s.replace_all(objects(&[&PODS.replace("phase: Running", "phase: Failed")]));
    s.replace_all(objects(&[PODS]));
    let (events, _) = s.events_since(Resource::Pod, start).unwrap();
    let through =
        |f: &Filter| -> Vec<EventType> { events.iter().filter_map(|e| e.seen_through(f).map(|(t, _)| t)).collect() };
    assert_eq!(through(&running), [EventType::Deleted, EventType::Added]);
    assert_eq!(through(&Filter::default()), [EventType::Modified, EventType::Modified]);
    assert_eq!(through(&on_n2), []);
}

#[test]
fn lists_page_with_limit_and_continue() {
    let mut s = loaded(&[NODES, "kind: Node\nmetadata: {name: n3}\n"]);
    let all = Filter::default();
    let first = s.list(Resource::Node, &all, None, false, Some(2), None).unwrap();
    assert_eq!(names(&first.items), ["/n1", "/n2"]);
    let token = first.continue_token.clone().expect("a next page");
    let second = s.list(Resource::Node, &all, None, false, Some(2), Some(&token)).unwrap();
    assert_eq!(names(&second.items), ["/n3"]);
    assert_eq!(second.continue_token, None);
    assert_eq!(first.to_json(Resource::Node)["metadata"]["continue"], json!(token));
    // Exactly `limit` left: no empty last page.
    assert_eq!(s.list(Resource::Node, &all, None, false, Some(3), None).unwrap().continue_token, None);
    // After a change the token has expired: 410, relist from scratch.
    s.replace_all(objects(&[NODES]));
    assert_eq!(s.list(Resource::Node, &all, None, false, Some(2), Some(&token)).unwrap_err().code, 410);
}

#[test]
fn paths_name_collections_namespaces_and_objects() {
    let t = |p: &str| parse_path(p).map(|t| (t.resource, t.namespace, t.name));
    assert_eq!(t("/api/v1/nodes"), Some((Resource::Node, None, None)));
    assert_eq!(t("/api/v1/namespaces"), Some((Resource::Namespace, None, None)));
    assert_eq!(t("/api/v1/namespaces/x"), Some((Resource::Namespace, None, Some("x".into()))));
    assert_eq!(t("/api/v1/namespaces/x/pods"), Some((Resource::Pod, Some("x".into()), None)));
    assert_eq!(t("/api/v1/namespaces/x/pods/a"), Some((Resource::Pod, Some("x".into()), Some("a".into()))));
    assert_eq!(t("/apis/discovery.k8s.io/v1/endpointslices"), Some((Resource::EndpointSlice, None, None)));
    assert_eq!(
        t("/apis/networking.k8s.io/v1/namespaces/x/networkpolicies"),
        Some((Resource::NetworkPolicy, Some("x".into()), None))
    );
    assert_eq!(t("/api/v1/namespaces/x/nodes"), None, "cluster-scoped");
    assert_eq!(t("/apis/apps/v1/deployments"), None);
    assert_eq!(percent_decode("status.phase%21%3DSucceeded+x%2"), "status.phase!=Succeeded x%2");
}

// ------------------------------------------------------------ over the wire

fn write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// Starts the server on a free port over `dir`; returns its kubeconfig.
async fn start(dir: &Path) -> std::path::PathBuf {
    let kubeconfig = dir.parent().unwrap().join(format!("{}.kubeconfig", dir.file_name().unwrap().to_string_lossy()));
    let args = Args {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        poll_ms: 50,
        write_kubeconfig: Some(kubeconfig.clone()),
        service_account_dir: None,
        tls_san: vec![],
    };
    tokio::spawn(async move { run(args).await.unwrap() });
    for _ in 0..200 {
        if kubeconfig.exists() {
            return kubeconfig;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no kubeconfig written");
}

fn server_addr(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with("server:")).unwrap();
    line.trim().trim_start_matches("server: http://").to_string()
}

/// One GET with `Connection: close`; the raw response.
async fn get(addr: &str, target: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await.expect("response in time").unwrap();
    String::from_utf8(out).unwrap()
}

/// The JSON lines of a chunked watch body.
fn watch_lines(response: &str) -> Vec<Value> {
    let (head, mut body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            break;
        }
        data.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    data.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn http_lists_watches_and_410s() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "nodes.yaml", NODES);
    let addr = server_addr(&start(&dir).await);

    let response = get(&addr, "/api/v1/nodes?limit=500").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let list: Value = serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(list["kind"], "NodeList");
    let rv: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();

    // A change while nobody watches is replayed to a watch from `rv`; the
    // watch ends after timeoutSeconds.
    write(&dir, "nodes.yaml", &NODES.replace("name: n2", "name: n3"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response =
        get(&addr, &format!("/api/v1/nodes?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion={rv}"))
            .await;
    let events: Vec<(String, String)> = watch_lines(&response)
        .iter()
        .map(|e| {
            (e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(events, [("DELETED".into(), "n2".into()), ("ADDED".into(), "n3".into())]);

    // From a version this server never had: ERROR 410 inside a 200 stream.
    let response = get(&addr, "/api/v1/nodes?watch=true&timeoutSeconds=5&resourceVersion=5").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let lines = watch_lines(&response);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["type"], "ERROR");
    assert_eq!(lines[0]["object"]["code"], 410);

    // Streaming lists: the objects, then the end-of-initial-events bookmark.
    let response = get(&addr, "/api/v1/nodes?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0").await;
    let lines = watch_lines(&response);
    assert_eq!(lines.iter().map(|l| l["type"].as_str().unwrap()).collect::<Vec<_>>(), ["ADDED", "ADDED", "BOOKMARK"]);
    assert_eq!(lines[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");

    assert!(get(&addr, "/apis/apps/v1/deployments").await.starts_with("HTTP/1.1 404"));
    assert!(get(&addr, "/api/v1/nodes/n9").await.starts_with("HTTP/1.1 404"));
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"DELETE /api/v1/nodes/n1 HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
- addresses: [10.244.2.7]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orphan, namespace: default}
addressType: IPv4
endpoints: []
";

const POLICY: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

async fn next(rx: &mut mpsc::Receiver<Update>) -> Update {
    match tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an update in time")
        .expect("source alive")
    {
        Update::Reachable { kind, ok } => panic!("{kind} reachable={ok}: the fake API server answers every kind"),
        u => u,
    }
}

/// The agent's kube source, unchanged, against the fake server: every
/// kind listed, then manifest changes arrive through the watches.
#[tokio::test]
async fn the_kube_source_lists_and_watches_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "nodes.yaml", NODES);
    write(&dir, "pods.yaml", PODS);
    write(&dir, "web.yaml", SERVICE);
    write(&dir, "policy.yaml", POLICY);
    let kubeconfig = start(&dir).await;
    // Built in a task of its own to tell one known failure apart.
    let client =
        match tokio::spawn(
            async move { weir_agent::sources::kube::client(Some(&kubeconfig), &Default::default()).await },
        )
        .await
        {
            Ok(client) => client.unwrap(),
            Err(e) if e.is_panic() => panic!(
                "building the kube client panicked (see above). If rustls could not pick a CryptoProvider: kube is \
             built without one (its `ring` or `aws-lc-rs` feature), so `weir-agent run --source kube` panics \
             the same way against any API server; `cargo test -p weir-devtools --features kube/ring` runs this test"
            ),
            Err(e) => panic!("{e}"),
        };
    let (tx, mut rx) = mpsc::channel(64);
    let source = tokio::spawn(weir_agent::sources::kube::run(client, tx));

    let mut listed = BTreeMap::new();
    while listed.len() < 6 {
        let (kind, summary) = match next(&mut rx).await {
            Update::Nodes(Change::Relisted(v)) => (
                "nodes",
                v.iter().map(|n| format!("{}@{:?}", n.name, n.pod_cidr.map(|c| c.to_string()))).collect::<Vec<_>>(),
            ),
            Update::Services(Change::Relisted(v)) => {
                ("services", v.iter().map(|s| format!("{}@{:?}", s.key, s.cluster_ips)).collect())
            }
            Update::EndpointSlices(Change::Relisted(v)) => {
                ("slices", v.iter().map(|s| format!("{}:{}", s.key, s.endpoints.len())).collect())
            }
            Update::Pods(Change::Relisted(v)) => ("pods", v.iter().map(|p| p.key.to_string()).collect()),
            Update::Namespaces(Change::Relisted(v)) => ("namespaces", v.iter().map(|n| n.name.clone()).collect()),
            Update::NetworkPolicies(Change::Relisted(v)) => ("policies", v.iter().map(|p| p.key.clone()).collect()),
            Update::Problems { count: 0, .. } => continue,
            other => panic!("before every list: {other:?}"),
        };
        assert!(listed.insert(kind, summary).is_none(), "{kind} listed twice");
    }
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(listed["nodes"], want(&["n1@Some(\"10.244.1.0/24\")", "n2@Some(\"10.244.2.0/24\")"]));
    assert_eq!(listed["services"], want(&["default/web@[10.96.0.10]"]));
    // The orphan slice is left out by the label selector.
    assert_eq!(listed["slices"], want(&["default/web-1:2"]));
    // The finished pod is left out by the field selector.
    assert_eq!(listed["pods"], want(&["default/a"]));
    assert_eq!(listed["namespaces"], want(&["default"]));
    assert_eq!(listed["policies"], want(&["default/deny"]));

    // A backend leaves the EndpointSlice; the pod goes.
    write(&dir, "web.yaml", &SERVICE.replace("- addresses: [10.244.2.7]\n  conditions: {ready: true}\n", ""));
    std::fs::remove_file(dir.join("pods.yaml")).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut rx).await {
            Update::EndpointSlices(Change::Applied(s)) => seen.push(format!("slice {}:{}", s.key, s.endpoints.len())),
            Update::Pods(Change::Deleted(key)) => seen.push(format!("pod deleted {key}")),
            Update::Problems { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["pod deleted default/a", "slice default/web-1:1"]);
    source.abort();
}

/// The agent's client as a DaemonSet pod builds it (in-cluster files:
/// token, ca.crt, namespace; https; the address from the
/// k8s-service-host setting) against the server in its secure mode; a
/// wrong token is refused with 401.
#[tokio::test]
async fn in_cluster_configuration_over_https_with_a_token() {
    use k8s_openapi::api::core::v1::Node;

    use weir_agent::sources::{api_server::HostPort, kube::InClusterSettings};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "nodes.yaml", NODES);
    let sa = tmp.path().join("serviceaccount");
    let kubeconfig = tmp.path().join("kubeconfig");
    let args = Args {
        dir: dir.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        poll_ms: 50,
        write_kubeconfig: Some(kubeconfig.clone()),
        service_account_dir: Some(sa.clone()),
        tls_san: vec!["10.96.0.1".parse().unwrap()],
    };
    tokio::spawn(async move { run(args).await.unwrap() });
    for _ in 0..500 {
        if kubeconfig.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig written");
    let server =
        text.lines().find_map(|l| l.trim().strip_prefix("server: https://")).expect("https server").to_string();
    let (host, port) = server.rsplit_once(':').unwrap();
    for file in ["token", "ca.crt", "namespace"] {
        assert!(sa.join(file).is_file(), "{file} written");
    }
    let settings = InClusterSettings {
        setting: Some(HostPort { host: host.into(), port: port.parse().unwrap() }),
        kubelet_kubeconfig: tmp.path().join("no-kubelet.conf"),
        service_account_dir: sa.clone(),
    };
    let client = weir_agent::sources::kube::client(None, &settings).await.unwrap();
    let nodes = kube::Api::<Node>::all(client).list(&Default::default()).await.unwrap();
    assert_eq!(nodes.items.len(), 2);

    // The same, with a token the server did not issue.
    let wrong = tmp.path().join("wrong-sa");
    std::fs::create_dir(&wrong).unwrap();
    for file in ["ca.crt", "namespace"] {
        std::fs::copy(sa.join(file), wrong.join(file)).unwrap();
    }
    std::fs::write(wrong.join("token"), "not-the-token").unwrap();
    let client = weir_agent::sources::kube::client(None, &InClusterSettings { service_account_dir: wrong, ..settings })
        .await
        .unwrap();
    match kube::Api::<Node>::all(client).list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
}
