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

use super::{Change, Update};

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
                    1 => events(vec![json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Expired", "message": "too old resource version", "code": 410}})]),
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
    let source = tokio::spawn(super::kube::run(client, tx));

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
            other => panic!("unexpected update {other:?}"),
        }
    }
    assert!(nodes_done_before_slices, "the slow EndpointSlice list held up the Node watch");
    // The 500 made the Service watch unreachable until its retry worked.
    assert_eq!(service_reachability, [false, true]);
    let names = |c: &Change<crate::model::NodeInfo>| match c {
        Change::Relisted(v) => format!("relist {}", v.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(",")),
        Change::Applied(n) => format!("apply {}", n.name),
        Change::Deleted(k) => format!("delete {k}"),
    };
    let seen: Vec<String> = node_updates.iter().map(names).collect();
    // 410 Gone on the watch: a full relist (which also drops whatever was
    // deleted meanwhile), then the watch goes on.
    assert_eq!(seen, ["relist n1", "relist n1,n2", "apply n3"]);
    source.abort();
}
