//! A failed ADD leaves nothing behind: no reserved address, no host veth, no
//! pinned link, no endpoint map entry, nothing in the pod's namespace.

use std::fs;

use weir_testbed::{
    NetNs, Node, Pod, Topology,
    cni::{Attachment, Conflist, codes},
    pod::POD_IFNAME,
    tools,
    topology::NodeSnapshot,
};

/// Runs an ADD that must fail, and checks the node is exactly as before.
/// Returns the error code.
fn failing_add(node: &Node, list: &Conflist, netns: &NetNs, what: &str) -> u32 {
    let before: NodeSnapshot = node.snapshot("weir").unwrap();
    let links_before = netns.links().unwrap();
    let att = Attachment::new(format!("{}-cid", netns.name()), netns.path(), POD_IFNAME);
    let err = match node.runtime().add(list, &att) {
        Ok(r) => panic!("{what}: ADD succeeded: {}", r.raw),
        Err(e) => e,
    };
    let code = err.code().unwrap_or_else(|| panic!("{what}: no CNI error JSON: {err}"));
    let msg = &err.cni_error().unwrap().msg;
    assert!(!msg.trim().is_empty(), "{what}: the error says what went wrong");
    assert_eq!(node.snapshot("weir").unwrap(), before, "{what}: the node changed after a failed ADD ({err})");
    assert_eq!(netns.links().unwrap(), links_before, "{what}: the pod namespace changed ({err})");
    code
}

#[test]
fn add_with_an_existing_ifname_fails_and_leaks_nothing() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_failures-ifname");
    let node = topo.node("n1");

    let netns = NetNs::create(&node.pod_netns_name("taken")).unwrap();
    // A veth pair (this kernel may lack the dummy driver), both ends inside.
    netns.run(&["ip", "link", "add", POD_IFNAME, "type", "veth", "peer", "name", "other0"]).unwrap();
    failing_add(node, &node.weir_only_conflist().expect("the agent wrote its conflist"), &netns, "CNI_IFNAME exists");
    assert!(netns.ipv4_addrs(POD_IFNAME).unwrap().is_empty(), "the existing eth0 was left alone");
    assert!(netns.links().unwrap().contains(&"other0".to_string()));
}

#[test]
fn add_without_the_agent_pins_fails_with_try_again_and_leaks_nothing() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_failures-pins");
    let node = topo.node("n1");

    // A pin dir the agent never filled: no maps, no programs.
    let empty = node.pin_dir.with_file_name(format!("{}-empty", node.pin_dir.file_name().unwrap().to_string_lossy()));
    fs::create_dir_all(&empty).unwrap();
    let mut list = node.weir_only_conflist().expect("the agent wrote its conflist");
    list.plugin_mut("weir-cni").unwrap().set("bpfPinDir", serde_json::json!(empty));
    let netns = NetNs::create(&node.pod_netns_name("nopins")).unwrap();
    let code = failing_add(node, &list, &netns, "empty bpfPinDir");
    assert_eq!(code, codes::TRY_AGAIN_LATER, "missing pins mean the agent is not up yet: retry");
}

#[test]
fn add_with_maps_but_no_program_rolls_back_the_endpoint_entry() {
    weir_testbed::privileged(&[tools::IP, tools::BPFTOOL]);
    let topo = Topology::builder("cni_failures-noprog").nodes(1).build().unwrap();
    let _agent = topo.start_agent("n1").unwrap();
    let node = topo.node("n1");

    // The agent's real maps, pinned a second time in a dir with no program:
    // ADD gets as far as the endpoint entry and must undo it.
    let partial =
        node.pin_dir.with_file_name(format!("{}-partial", node.pin_dir.file_name().unwrap().to_string_lossy()));
    let maps = partial.join(weir_common::pin::MAPS_DIR);
    fs::create_dir_all(&maps).unwrap();
    let src = node.pin_dir.join(weir_common::pin::MAPS_DIR);
    for entry in fs::read_dir(&src).unwrap().flatten() {
        let (from, to) = (entry.path(), maps.join(entry.file_name()));
        weir_testbed::exec::run(
            std::process::Command::new("bpftool").args(["map", "pin", "pinned"]).arg(&from).arg(&to),
            weir_testbed::exec::DEFAULT_TIMEOUT,
        )
        .unwrap();
    }
    let mut list = node.weir_only_conflist().expect("the agent wrote its conflist");
    list.plugin_mut("weir-cni").unwrap().set("bpfPinDir", serde_json::json!(partial));
    let netns = NetNs::create(&node.pod_netns_name("noprog")).unwrap();
    // Snapshot compares the endpoint map of the real pin dir: the same map.
    failing_add(node, &list, &netns, "bpfPinDir without programs");
    assert_eq!(node.endpoint_entries().unwrap(), Some(0), "no endpoint entry left in the shared map");
}

#[test]
fn add_with_an_unusable_data_dir_fails_and_leaks_nothing() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_failures-datadir");
    let node = topo.node("n1");

    // dataDir below a regular file: nothing can be created there, even as root.
    let file = node.dirs.root.join("not-a-dir");
    fs::write(&file, "").unwrap();
    let mut list = node.weir_only_conflist().expect("the agent wrote its conflist");
    list.plugin_mut("weir-cni").unwrap().set("dataDir", serde_json::json!(file.join("data")));
    let netns = NetNs::create(&node.pod_netns_name("nodata")).unwrap();
    failing_add(node, &list, &netns, "unusable dataDir");
}

#[test]
fn a_second_add_of_the_same_attachment_fails_without_harming_the_first() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_failures-dup");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");
    let pod = Pod::create(node, "dup", &list).unwrap();
    let before = node.snapshot("weir").unwrap();

    let err = node.runtime().add(&list, &pod.attachment).expect_err("a second ADD of the same attachment succeeded");
    assert!(err.code().is_some(), "{err}");
    assert_eq!(node.snapshot("weir").unwrap(), before, "the failed ADD changed the node ({err})");
    pod.ping(node.ip).expect("the first attachment still works");
    pod.check().expect("and still passes CHECK");
}
