//! Address allocation under concurrency and at exhaustion.

use std::{collections::BTreeSet, thread};

use weir_testbed::{Pod, Topology, cni::Attachment, netns::NetNs, pod::POD_IFNAME, tools, topology::cidr_contains};

/// weir-cni's own code for "no free address left in podCIDR" (cni-plugin/src/error.rs).
const IPAM_EXHAUSTED: u32 = 100;

#[test]
fn fifty_parallel_adds_get_distinct_addresses_and_all_reach_the_node() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_ipam-parallel");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");

    let pods: Vec<Pod> = thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let list = &list;
                s.spawn(move || Pod::create(node, &format!("p{i}"), list))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });

    let ips: BTreeSet<_> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), 50, "50 ADDs, {} distinct addresses", ips.len());
    let gateway = node.gateway().unwrap();
    for p in &pods {
        assert!(cidr_contains(&node.pod_cidr, p.ip) && p.ip != gateway, "{} for {}", p.ip, p.name);
    }
    let reservations = node.reservations("weir").unwrap();
    assert_eq!(reservations.len(), 50, "{reservations:?}");
    for p in &pods {
        assert!(reservations.iter().any(|r| r.ip == p.ip && r.container_id == p.container_id()), "{}", p.name);
    }
    let veths: BTreeSet<_> = pods.iter().map(|p| p.result.host_interface().unwrap().name.clone()).collect();
    assert_eq!(veths.len(), 50, "distinct host veths");
    assert_eq!(node.host_veths().unwrap().len(), 50);

    thread::scope(|s| {
        for chunk in pods.chunks(10) {
            s.spawn(move || {
                for p in chunk {
                    p.ping(node.ip).unwrap_or_else(|e| panic!("{}: {e:#}", p.name));
                }
            });
        }
    });
}

#[test]
fn a_full_pod_cidr_answers_the_exhaustion_error_and_recovers_after_a_del() {
    weir_testbed::privileged(tools::BASE);
    // A /28: .0 network, .1 gateway, .15 broadcast: 13 pod addresses.
    let topo = Topology::builder("cni_ipam-exhaustion").nodes(1).pod_cidr(1, "10.244.1.0/28").build().unwrap();
    let _agent = topo.start_agent("n1").unwrap();
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");
    assert_eq!(list.plugin("weir-cni").unwrap().get_str("podCIDR"), Some("10.244.1.0/28"));

    let mut pods: Vec<Pod> = (0..13).map(|i| Pod::create(node, &format!("f{i}"), &list).unwrap()).collect();
    let before = node.snapshot("weir").unwrap();

    let netns = NetNs::create(&node.pod_netns_name("extra")).unwrap();
    let att = Attachment::new(netns.name(), netns.path(), POD_IFNAME);
    let err = node.runtime().add(&list, &att).expect_err("a 14th pod got an address in a /28");
    let e = err.cni_error().unwrap_or_else(|| panic!("no CNI error JSON: {err}"));
    assert_eq!(e.code, IPAM_EXHAUSTED, "{e}");
    assert!(e.msg.contains("10.244.1.0/28"), "the message names the podCIDR: {e}");
    assert_eq!(node.snapshot("weir").unwrap(), before, "the failed ADD changed the node");
    assert!(netns.links().unwrap().iter().all(|l| l == "lo"));

    let freed = pods[4].ip;
    pods[4].delete().unwrap();
    let result = node.runtime().add(&list, &att).expect("an address is free again after a DEL");
    assert_eq!(result.pod_ipv4(), Some(freed), "the only free address");
    node.runtime().del(&list, &att).unwrap();
}

#[test]
fn a_released_address_is_not_handed_out_again_at_once() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_ipam-reuse");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");

    let mut first = Pod::create(node, "first", &list).unwrap();
    let released = first.ip;
    first.delete().unwrap();
    let second = Pod::create(node, "second", &list).unwrap();
    assert_ne!(second.ip, released, "round-robin: the address just released is not reused first");
}
