//! The two fast paths of weir-cni (issue #11): programs attached as cls_bpf
//! filters, which CHECK verifies; and DEL returning once the veth is
//! unregistered, leaving the kernel's final wait to a detached child. The
//! contract is docs/contracts.md ("the host veth's clsact qdisc") and
//! docs/design.md ("Pod wiring"). The CNI SPEC's CHECK: "The plugin must
//! return an error if the container's networking is not as expected" (here
//! the datapath programs); DEL: the attachment's resources are released, so
//! the runtime may ADD the same (containerID, ifname) again.

use std::{thread, time::Duration};

use weir_testbed::{Pod, Topology, pod::POD_IFNAME, topology::Direction};

/// CHECK fails, naming the program, when a pod's filter is gone or runs
/// something else than the program the agent pinned.
#[test]
fn check_reports_a_missing_or_foreign_pod_program() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_attach-check");
    let node = topo.node("n1");
    let pod = Pod::create(node, "c", &node.weir_only_conflist().expect("the agent wrote its conflist")).unwrap();
    pod.check().expect("a fresh pod passes CHECK");
    let host = pod.result.host_interface().unwrap().name.clone();

    // Someone runs weir_from_pod on the egress side instead of weir_to_pod.
    let from_pod = node.prog_pin(Direction::Ingress);
    node.netns
        .run(&[
            "tc",
            "filter",
            "replace",
            "dev",
            &host,
            "egress",
            "pref",
            "1",
            "handle",
            "1",
            "bpf",
            "object-pinned",
            from_pod.to_str().unwrap(),
            "da",
        ])
        .unwrap();
    let err = pod.check().expect_err("CHECK passes with a foreign program on egress");
    let e = err.cni_error().unwrap_or_else(|| panic!("no CNI error JSON: {err}"));
    assert!(e.msg.contains("weir_to_pod") && e.msg.contains("Egress"), "CHECK names the egress program: {e}");

    // And the ingress filter removed.
    node.netns.run(&["tc", "filter", "del", "dev", &host, "ingress", "pref", "1", "handle", "1", "bpf"]).unwrap();
    let err = pod.check().expect_err("CHECK passes without the ingress filter");
    let e = err.cni_error().unwrap_or_else(|| panic!("no CNI error JSON: {err}"));
    assert!(e.msg.contains("weir_from_pod") && e.msg.contains("not attached"), "CHECK names the missing filter: {e}");
}

/// DEL answers once the veth is gone (its name free: the same attachment
/// can be added again at once, and gets the same host veth name), and the
/// child that sat out the kernel's wait does not linger.
#[test]
fn the_same_attachment_can_be_added_again_right_after_del() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_attach-readd");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");
    let runtime = node.runtime();

    let pod = Pod::create(node, "again", &list).unwrap();
    let host = pod.result.host_interface().unwrap().name.clone();
    let attachment = pod.attachment.clone();
    for round in 0..5 {
        // Through the runtime, not `Pod::delete`, which would also remove
        // the Pod object: the re-added pod would then wait for its policy
        // (and start isolated), as a pod the API server does not know.
        runtime.del(&list, &attachment).unwrap_or_else(|e| panic!("DEL {round}: {e}"));
        assert!(!node.host_veths().unwrap().contains(&host), "{host} still listed when DEL returned");
        assert!(pod.netns.links().unwrap().iter().all(|l| l == "lo"), "the pod's {POD_IFNAME} went with DEL");
        // No pause: the name and the pod's interface name are free already.
        let result = runtime.add(&list, &attachment).unwrap_or_else(|e| panic!("ADD {round} right after DEL: {e}"));
        assert_eq!(result.host_interface().unwrap().name, host);
        assert_eq!(node.tc_filters(&host).unwrap(), node.expected_pod_filters(&host).unwrap());
        runtime.check(&list, &attachment).unwrap_or_else(|e| panic!("CHECK {round}: {e}"));
        pod.netns.ping(node.gateway().unwrap()).unwrap();
    }
    runtime.del(&list, &attachment).unwrap();

    // The detached children end with the kernel's wait (tens of ms).
    let weir_cni = weir_testbed::bins::bin_dir().join("weir-cni");
    let mut left = Vec::new();
    for _ in 0..50 {
        left = processes_running(&weir_cni);
        if left.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(left.is_empty(), "weir-cni processes still running 5 s after the last DEL: {left:?}");
}

/// PIDs whose executable is `exe`.
fn processes_running(exe: &std::path::Path) -> Vec<u32> {
    let Ok(exe) = exe.canonicalize() else { return Vec::new() };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .collect()
}
