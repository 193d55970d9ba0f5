//! GC (CNI 1.1) releases what is not in `cni.dev/valid-attachments`; STATUS
//! answers 50 until the agent has set the node up.

use weir_testbed::{Agent, Pod, Topology, cni::codes, tools};

#[test]
fn gc_releases_attachments_that_are_not_valid_and_keeps_the_rest() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_gc");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");

    let keep = Pod::create(node, "keep", &list).unwrap();
    let mut stale: Vec<Pod> = ["stale1", "stale2"].iter().map(|n| Pod::create(node, n, &list).unwrap()).collect();
    let keep_veth = keep.result.host_interface().unwrap().name.clone();
    let endpoints_before = node.endpoint_entries().unwrap();

    node.runtime()
        .gc(&list, &[(keep.container_id().to_string(), keep.attachment.ifname.clone())])
        .expect("GC succeeds");

    let snap = node.snapshot("weir").unwrap();
    let reserved: Vec<_> = snap.reservations.iter().map(|r| r.container_id.as_str()).collect();
    assert_eq!(reserved, [keep.container_id()], "only the valid attachment keeps its address");
    assert_eq!(snap.host_veths, std::slice::from_ref(&keep_veth), "stale host veths removed");
    // The stale veths' filters went with them; the valid one keeps its own.
    assert_eq!(snap.pod_filters, node.expected_pod_filters(&keep_veth).unwrap(), "only the valid pod's filters left");
    assert!(snap.legacy_link_pins.is_empty(), "no tcx link pins: {:?}", snap.legacy_link_pins);
    if let Some(before) = endpoints_before {
        assert_eq!(snap.endpoint_entries, Some(before - 2), "stale endpoint entries removed");
    }
    keep.ping(node.ip).expect("the valid attachment still works");
    keep.check().expect("and passes CHECK");
    for p in &mut stale {
        p.delete().expect("DEL after GC succeeds");
    }
}

#[test]
fn status_is_not_ready_before_the_agent_and_ready_after() {
    weir_testbed::privileged(tools::BASE);
    let topo = Topology::builder("cni_status").nodes(1).build().unwrap();
    let node = topo.node("n1");
    // What the agent will write, written by hand: runDir has no agent-ready yet.
    let list = node.contract_conflist().only(&["weir-cni"]);
    let err = node.runtime().status(&list).expect_err("STATUS is ready before the agent ran");
    assert_eq!(err.code(), Some(codes::NOT_READY), "{err}");

    let mut agent = Agent::spawn(node, topo.manifest_dir()).unwrap();
    agent.wait_ready(Agent::ready_timeout()).unwrap();
    node.runtime().status(&list).expect("STATUS once the agent is ready");
    node.runtime()
        .status(&node.weir_only_conflist().expect("the agent wrote its conflist"))
        .expect("STATUS with the agent's own conflist");
}
