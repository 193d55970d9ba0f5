//! `weir-agent cleanup` leaves the node as it was before weir: no CNI
//! config, no ready marker, nothing pinned, no peer routes, no masquerade
//! chain; and it is idempotent.

use weir_testbed::{Pod, Topology, bins, tools};

#[test]
fn cleanup_removes_everything_the_agent_made() {
    weir_testbed::privileged(&[tools::IP, tools::IPTABLES]);
    let topo = Topology::builder("cleanup").nodes(2).build().unwrap();
    let agents = topo.start_agents().unwrap();
    let node = topo.node("n1");
    let pod = Pod::create(node, "a", &node.agent_conflist().unwrap()).unwrap();

    // What the agent made, before cleanup.
    assert!(node.conflist_path().exists());
    assert!(node.routes_of_weir().unwrap().iter().any(|r| r.starts_with("10.244.2.0/24 via 172.30.0.12")));
    assert!(node.netns.run(&["iptables", "-t", "nat", "-S"]).unwrap().contains("WEIR-MASQUERADE"));
    assert!(node.pin_dir.join("maps").exists());

    drop(pod);
    drop(agents);
    let agent = bins::weir_agent().unwrap();
    let cleanup = |label: &str| {
        let out = node
            .netns
            .output(&[
                agent.to_str().unwrap(),
                "cleanup",
                "--cni-conf-dir",
                node.dirs.cni_conf.to_str().unwrap(),
                "--run-dir",
                node.dirs.run.to_str().unwrap(),
                "--bpf-pin-dir",
                node.pin_dir.to_str().unwrap(),
            ])
            .unwrap();
        assert!(out.success(), "{label} cleanup failed: {}{}", out.stdout_str(), out.stderr_str());
    };
    cleanup("first");

    assert!(!node.conflist_path().exists(), "CNI config left behind");
    assert!(!node.dirs.run.join("agent-ready").exists(), "ready marker left behind");
    assert!(!node.pin_dir.exists(), "pinned maps, programs or links left behind");
    assert_eq!(node.routes_of_weir().unwrap(), Vec::<String>::new(), "peer routes left behind");
    let nat = node.netns.run(&["iptables", "-t", "nat", "-S"]).unwrap();
    assert!(!nat.contains("WEIR"), "masquerade rules left behind:\n{nat}");

    // Nothing left to remove is not an error.
    cleanup("second");
}
