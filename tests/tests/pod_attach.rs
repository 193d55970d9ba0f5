//! How pods' programs are attached and carried across agent restarts:
//! weir-cni attaches the pinned `weir_from_pod` / `weir_to_pod` as cls_bpf
//! filters on the host veth, which outlive any agent; a starting agent
//! moves every pod to the programs it just loaded, including pods wired by
//! weir versions that pinned a tcx link per veth and direction.

use std::{
    thread,
    time::{Duration, Instant},
};

use weir_testbed::{
    Node, Pod, Topology, bpffs,
    topology::{Direction, PodFilter},
};

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

fn host_veth(pod: &Pod) -> String {
    pod.result.host_interface().expect("a host interface in the result").name.clone()
}

/// The filters on `veth` are the contract's, running the programs pinned now.
fn assert_filters_run_pinned_programs(node: &Node, veth: &str, when: &str) {
    let filters: Vec<PodFilter> = node.tc_filters(veth).unwrap();
    assert_eq!(filters, node.expected_pod_filters(veth).unwrap(), "{when}: filters on {veth}");
}

/// Rewires a pod the way weir-cni did before cls_bpf: the pinned programs
/// as tcx links pinned at `<pin dir>/links/<veth>_in|_out`, no clsact qdisc
/// (so no filter).
fn make_legacy(node: &Node, veth: &str) {
    for d in DIRECTIONS {
        bpffs::pin_tcx_link(node.netns.path(), veth, d.is_egress(), &node.prog_pin(d), &node.legacy_link_pin(veth, d))
            .unwrap_or_else(|e| panic!("legacy tcx link on {veth} {d:?}: {e:#}"));
    }
    node.netns.run(&["tc", "qdisc", "del", "dev", veth, "clsact"]).unwrap();
    assert_eq!(node.tc_filters(veth).unwrap(), vec![], "{veth} has no filter left");
}

/// Programs on the veth's tcx ingress and egress.
fn tcx_counts(node: &Node, veth: &str) -> [u32; 2] {
    DIRECTIONS.map(|d| bpffs::tcx_prog_count(node.netns.path(), veth, d.is_egress()).unwrap())
}

fn pinned_ids(node: &Node) -> Vec<u32> {
    DIRECTIONS.iter().map(|d| node.pinned_prog_id(*d).unwrap()).collect()
}

/// The pod's filters stay while no agent runs, and a new agent moves them
/// to its programs in place: the same filters, new program IDs; the pods
/// answer throughout.
#[test]
fn filters_outlive_the_agent_and_move_to_the_next_ones_programs() {
    let (topo, agent) = Topology::one_node_with_agent("pod_attach-restart");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");
    let a = Pod::create(node, "a", &list).unwrap();
    let b = Pod::create(node, "b", &list).unwrap();
    let (va, vb) = (host_veth(&a), host_veth(&b));
    assert_filters_run_pinned_programs(node, &va, "after ADD");
    assert_filters_run_pinned_programs(node, &vb, "after ADD");
    let first = pinned_ids(node);

    agent.stop();
    // No agent: the filters (and the pinned programs) stay.
    assert_filters_run_pinned_programs(node, &va, "agent stopped");
    assert_filters_run_pinned_programs(node, &vb, "agent stopped");
    assert_eq!(pinned_ids(node), first);
    a.ping(node.ip).expect("pod -> node with no agent running");
    a.ping(b.ip).expect("pod -> pod with no agent running");

    let agent = topo.start_agent("n1").unwrap();
    let second = pinned_ids(node);
    assert!(
        second.iter().zip(&first).all(|(s, f)| s != f),
        "the new agent pinned new programs: {first:?} -> {second:?}"
    );
    assert_filters_run_pinned_programs(node, &va, "new agent");
    assert_filters_run_pinned_programs(node, &vb, "new agent");
    a.ping(b.ip).expect("pod -> pod after the restart");
    b.ping(node.ip).expect("pod -> node after the restart");

    // The filters the agent moved are not the agent's: they stay when it goes.
    agent.stop();
    assert_filters_run_pinned_programs(node, &va, "after the agent that moved them stopped");
    assert_filters_run_pinned_programs(node, &vb, "after the agent that moved them stopped");
    assert_eq!(pinned_ids(node), second);
    b.ping(a.ip).expect("pod -> pod after the agent stopped again");
}

/// An upgrade from weir versions that pinned a tcx link per pod veth and
/// direction: the new agent gives each such pod its cls_bpf filters, then
/// removes the link pins (which detaches the tcx programs), and removes the
/// pins of veths that are gone.
#[test]
fn an_agent_moves_legacy_tcx_pods_to_cls_bpf_filters() {
    let (topo, agent) = Topology::one_node_with_agent("pod_attach-legacy");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");
    let current = Pod::create(node, "current", &list).unwrap();
    let legacy = Pod::create(node, "legacy", &list).unwrap();
    let gone = Pod::create(node, "gone", &list).unwrap();
    let (vc, vl, vg) = (host_veth(&current), host_veth(&legacy), host_veth(&gone));

    make_legacy(node, &vl);
    make_legacy(node, &vg);
    let pins = node.legacy_link_pins();
    for veth in [&vl, &vg] {
        for d in DIRECTIONS {
            let pin = format!("{veth}{}", d.link_suffix());
            assert!(pins.contains(&pin), "{pin} pinned: {pins:?}");
        }
    }
    assert_eq!(tcx_counts(node, &vl), [1, 1], "the legacy pod runs tcx programs, both ways");
    legacy.ping(node.ip).expect("the legacy pod answers through its tcx links");
    legacy.ping(current.ip).expect("legacy pod -> current pod");

    agent.stop();
    // The pod went while no agent ran; only its link pins are left.
    node.netns.run(&["ip", "link", "del", &vg]).unwrap();

    let agent = topo.start_agent("n1").unwrap();
    assert_eq!(node.legacy_link_pins(), Vec::<String>::new(), "legacy pins moved or (veth gone) removed");
    assert_filters_run_pinned_programs(node, &vl, "legacy pod after the upgrade");
    // Removing the pin released the link; the kernel detaches it from a
    // work queue, so shortly after.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcx_counts(node, &vl) != [0, 0] && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tcx_counts(node, &vl), [0, 0], "the legacy tcx programs are detached");
    assert_filters_run_pinned_programs(node, &vc, "current pod after the upgrade");
    legacy.ping(node.ip).expect("legacy pod -> node after the upgrade");
    legacy.ping(current.ip).expect("legacy pod -> current pod after the upgrade");
    current.ping(legacy.ip).expect("current pod -> legacy pod after the upgrade");
    let log = agent.log_tail(400);
    // Two pods' filters moved (current and legacy), two link pins replaced,
    // two of a veth that is gone removed.
    assert!(
        log.lines().any(|l| l.contains("moved=4") && l.contains("legacy_tcx_links=2") && l.contains("stale=2")),
        "the agent reports what it moved:\n{log}"
    );
    assert!(!log.contains("not moved"), "the agent moved every pod:\n{log}");

    agent.stop();
    assert_filters_run_pinned_programs(node, &vl, "after the agent stopped");
    legacy.ping(node.ip).expect("legacy pod -> node with the agent stopped");
}
