//! ADD, CHECK and DEL of weir-cni in every supported cniVersion, the result's
//! shape per version, and DEL's idempotence (twice, and after the pod's
//! namespace is gone).

use std::net::Ipv4Addr;

use weir_testbed::{
    Node, Pod, Topology, bpffs, cleanup,
    cni::CniResult,
    pod::POD_IFNAME,
    topology::{VETH_PREFIX, cidr_contains},
};

const VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The agent's conflist reduced to weir-cni (portmap is covered by its own test).
/// What docs/contracts.md says an ADD result holds, in the version asked for.
fn assert_result_shape(result: &CniResult, version: &str, node: &Node, pod: &Pod) {
    let gateway = node.gateway().unwrap();
    assert_eq!(result.cni_version, version, "answers in the requested version: {}", result.raw);

    let host = result.host_interface().unwrap_or_else(|| panic!("no host interface in {}", result.raw));
    assert!(host.name.starts_with(VETH_PREFIX) && host.name.len() <= 15, "host veth name {:?}", host.name);
    let sandbox = result.sandbox_interface().unwrap_or_else(|| panic!("no sandbox interface in {}", result.raw));
    assert_eq!(sandbox.name, POD_IFNAME);
    assert_eq!(sandbox.sandbox.as_deref(), Some(pod.netns.path().to_str().unwrap()));
    assert!(sandbox.mac.as_deref().is_some_and(|m| m.len() == 17), "sandbox mac {:?}", sandbox.mac);

    assert_eq!(result.ips.len(), 1, "one IPv4 address: {}", result.raw);
    let ip = &result.ips[0];
    let (addr, len) = ip.ipv4().unwrap_or_else(|| panic!("not IPv4/len: {}", ip.address));
    assert_eq!(len, 32, "ptp style: the pod holds a /32");
    assert!(cidr_contains(&node.pod_cidr, addr), "{addr} outside {}", node.pod_cidr);
    assert_ne!(addr, gateway, "the gateway is never a pod address");
    assert_eq!(ip.gateway.as_deref(), Some(gateway.to_string().as_str()));
    let idx = ip.interface.expect("ips[].interface is set");
    assert_eq!(result.interfaces[idx].name, POD_IFNAME, "the address belongs to the pod's interface");
    match version {
        "0.4.0" => assert_eq!(ip.version.as_deref(), Some("4"), "0.4.0 results carry ips[].version"),
        _ => assert_eq!(ip.version, None, "ips[].version was removed in 1.0.0"),
    }
    assert!(
        result.routes.iter().any(|r| r.dst == "0.0.0.0/0" && r.gw.as_deref() == Some(gateway.to_string().as_str())),
        "default route via the gateway in {}",
        result.raw
    );
}

/// The state the result describes is really there.
fn assert_plumbed(node: &Node, pod: &Pod) {
    let gateway = node.gateway().unwrap();
    assert_eq!(pod.netns.ipv4_addrs(POD_IFNAME).unwrap(), vec![(pod.ip, 32)]);
    let pod_routes = pod.netns.routes().unwrap();
    assert!(
        pod_routes.iter().any(|r| r.starts_with(&format!("default via {gateway} dev {POD_IFNAME}"))),
        "{pod_routes:#?}"
    );
    let host = pod.result.host_interface().unwrap().name.clone();
    assert!(node.host_veths().unwrap().contains(&host), "host veth {host} exists");
    let node_routes = node.netns.routes().unwrap();
    assert!(node_routes.iter().any(|r| r.starts_with(&format!("{} dev {host}", pod.ip))), "{node_routes:#?}");
    // Both programs the agent pinned, as cls_bpf filters at the contract's
    // priority and handle; no tcx link pins any more.
    assert_eq!(node.tc_filters(&host).unwrap(), node.expected_pod_filters(&host).unwrap(), "filters on {host}");
    for egress in [false, true] {
        let tcx = bpffs::tcx_prog_count(node.netns.path(), &host, egress).unwrap();
        assert_eq!(tcx, 0, "no tcx programs on {host} (egress: {egress})");
    }
    let legacy = node.legacy_link_pins();
    assert!(!legacy.iter().any(|p| p.starts_with(&host)), "no tcx link pins for {host}: {legacy:?}");
    let reserved: Vec<_> = node.reservations("weir").unwrap();
    assert!(
        reserved.iter().any(|r| r.ip == pod.ip && r.container_id == pod.container_id() && r.ifname == POD_IFNAME),
        "reservation of {} for {}: {reserved:?}",
        pod.ip,
        pod.container_id()
    );
}

/// DEL left nothing of the attachment behind.
fn assert_released(node: &Node, ip: Ipv4Addr, container_id: &str, host_veth: &str) {
    let snap = node.snapshot("weir").unwrap();
    assert!(!snap.reservations.iter().any(|r| r.ip == ip || r.container_id == container_id), "{snap:?}");
    assert!(!snap.host_veths.iter().any(|v| v == host_veth), "{snap:?}");
    // The filters went with the veth.
    assert!(!snap.pod_filters.iter().any(|f| f.veth == host_veth), "{snap:?}");
    assert!(!snap.legacy_link_pins.iter().any(|v| v.starts_with(host_veth)), "{snap:?}");
    let routes = node.netns.routes().unwrap();
    assert!(!routes.iter().any(|r| r.starts_with(&format!("{ip} "))), "route to {ip} left: {routes:#?}");
}

#[test]
fn add_check_del_in_every_cni_version() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_lifecycle-versions");
    let node = topo.node("n1");
    let base = node.weir_only_conflist().expect("the agent wrote its conflist");

    for version in VERSIONS {
        let list = base.with_version(version);
        let mut pod = Pod::create(node, &format!("v{}", version.replace('.', "")), &list).unwrap();
        assert_result_shape(&pod.result, version, node, &pod);
        assert_plumbed(node, &pod);
        pod.check().unwrap_or_else(|e| panic!("CHECK {version}: {e}"));
        pod.ping(node.ip).unwrap();

        let (ip, cid, host) =
            (pod.ip, pod.container_id().to_string(), pod.result.host_interface().unwrap().name.clone());
        pod.delete().unwrap_or_else(|e| panic!("DEL {version}: {e}"));
        assert_released(node, ip, &cid, &host);
        assert!(pod.netns.links().unwrap().iter().all(|l| l == "lo"), "the pod's eth0 went with DEL");
    }
}

#[test]
fn check_reports_what_is_missing() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_lifecycle-check");
    let node = topo.node("n1");
    let pod = Pod::create(node, "c", &node.weir_only_conflist().expect("the agent wrote its conflist")).unwrap();
    pod.check().unwrap();

    // Someone removes the pod's address: CHECK must say so, naming it.
    pod.netns.run(&["ip", "addr", "del", &format!("{}/32", pod.ip), "dev", POD_IFNAME]).unwrap();
    let err = pod.check().expect_err("CHECK passes with the pod's address gone");
    let e = err.cni_error().unwrap_or_else(|| panic!("no CNI error JSON: {err}"));
    assert!(e.msg.contains(&pod.ip.to_string()), "CHECK's message names the missing address: {e}");
}

#[test]
fn del_twice_and_del_without_netns_succeed() {
    let (topo, _agent) = Topology::one_node_with_agent("cni_lifecycle-del");
    let node = topo.node("n1");
    let list = node.weir_only_conflist().expect("the agent wrote its conflist");

    let mut twice = Pod::create(node, "twice", &list).unwrap();
    let (ip, cid, host) =
        (twice.ip, twice.container_id().to_string(), twice.result.host_interface().unwrap().name.clone());
    twice.delete().unwrap();
    twice.delete().expect("a second DEL of the same attachment succeeds");
    assert_released(node, ip, &cid, &host);

    let mut orphan = Pod::create(node, "orphan", &list).unwrap();
    let (ip, cid, host) =
        (orphan.ip, orphan.container_id().to_string(), orphan.result.host_interface().unwrap().name.clone());
    // The runtime already removed the sandbox (kubelet after a crash does this).
    cleanup::delete_netns(orphan.netns.name()).unwrap();
    assert!(!orphan.netns.path().exists());
    orphan.delete().expect("DEL succeeds when the netns is gone");
    assert_released(node, ip, &cid, &host);

    // DEL of something never added is fine too.
    let never = weir_testbed::cni::Attachment::new("never-added", "/run/netns/does-not-exist", POD_IFNAME);
    node.runtime().del(&list, &never).expect("DEL of an unknown attachment succeeds");
}
