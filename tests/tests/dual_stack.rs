//! Dual-stack and IPv6-only pods across two nodes (issue #12): the agents
//! write both families into the conflist and route each peer's IPv6 pod
//! CIDR via its IPv6 InternalIP; weir-cni gives every pod an address of each
//! configured family (IPv6 without a tentative delay); pods ping each other
//! over both families (`ping -6`), CHECK passes, DEL and GC release both;
//! NetworkPolicy judges IPv6 as IPv4, and an ipBlock of one family never
//! admits the other. ULA addresses, inside the test's namespaces only.

use std::net::IpAddr;

use serde_json::json;
use weir_testbed::{
    Pod, Topology,
    cni::Conflist,
    tools,
    topology::{CLUSTER_CIDR_V6, Families, Node},
};

/// `conflist` with its weir-cni entry narrowed to IPv6: what an IPv6-only
/// node's agent writes.
fn ipv6_only(conflist: &Conflist, node: &Node) -> Conflist {
    let mut list = conflist.clone();
    let weir = list.plugin_mut("weir-cni").expect("weir-cni in the conflist");
    weir.raw.remove("podCIDR");
    weir.raw.remove("clusterCIDR");
    weir.set("podCIDRs", json!([node.pod_cidr_v6.clone().unwrap()]));
    weir.set("clusterCIDRs", json!([CLUSTER_CIDR_V6]));
    list
}

/// The pod's IPv6 address is usable at once: not tentative.
fn assert_not_tentative(pod: &Pod) {
    let addrs = pod.netns.run(&["ip", "-6", "addr", "show", "dev", "eth0"]).unwrap();
    let ip = pod.ipv6.unwrap().to_string();
    let line = addrs.lines().find(|l| l.contains(&ip)).unwrap_or_else(|| panic!("{ip} not on eth0: {addrs}"));
    assert!(!line.contains("tentative"), "{line}");
}

#[test]
fn dual_stack_and_ipv6_only_pods_on_two_nodes_ping_over_both_families() {
    weir_testbed::privileged(tools::BASE);
    let topo = Topology::builder("dual_stack").nodes(2).families(Families::DualStack).build().unwrap();
    let _agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));

    // Each agent routes the peer's IPv6 pod CIDR via its IPv6 InternalIP,
    // as it does for IPv4, and forwards IPv6.
    for (node, peer) in [(n1, n2), (n2, n1)] {
        let routes = node.netns.routes6().unwrap();
        let want = format!("{} via {}", peer.pod_cidr_v6.as_deref().unwrap(), peer.ip6.unwrap());
        assert!(
            routes.iter().any(|r| r.starts_with(&want) && r.contains("proto 87")),
            "{}: no `{want}` in {routes:#?}",
            node.name
        );
        let fwd = node.netns.run(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).unwrap();
        assert_eq!(fwd.trim(), "1", "{}", node.name);
        // Pod IPv6 leaving the IPv6 cluster CIDR is masqueraded, as IPv4 is.
        let rules = node.netns.run(&["ip6tables", "-w", "-t", "nat", "-S", "WEIR-MASQUERADE"]).unwrap();
        let want = format!("-A WEIR-MASQUERADE -s {CLUSTER_CIDR_V6} -j MASQUERADE");
        assert!(rules.contains(&want), "{}: no `{want}` in {rules}", node.name);
    }

    let c1 = n1.agent_conflist().unwrap().only(&["weir-cni"]);
    let c2 = n2.agent_conflist().unwrap().only(&["weir-cni"]);
    let weir = c1.plugin("weir-cni").unwrap();
    assert_eq!(weir.raw["podCIDRs"], json!([n1.pod_cidr, n1.pod_cidr_v6.clone().unwrap()]), "{}", c1.to_json_pretty());
    assert_eq!(weir.get_str("podCIDR"), Some(n1.pod_cidr.as_str()));

    // Dual-stack pods on both nodes; an IPv6-only pod on n1.
    let a = Pod::create(n1, "a", &c1).unwrap();
    let b = Pod::create(n2, "b", &c2).unwrap();
    let v6 = ipv6_only(&c1, n1);
    let c = Pod::create(n1, "c", &v6).unwrap();
    for pod in [&a, &b] {
        assert!(!pod.ip.is_unspecified(), "{}: {}", pod.name, pod.result.raw);
        assert!(pod.ipv6.is_some(), "{}: {}", pod.name, pod.result.raw);
        assert_eq!(pod.result.ips.len(), 2, "{}", pod.result.raw);
    }
    assert!(c.ip.is_unspecified() && c.ipv6.is_some(), "{}", c.result.raw);
    assert_eq!(c.result.ips.len(), 1, "{}", c.result.raw);
    for pod in [&a, &b, &c] {
        assert_not_tentative(pod);
        pod.check().unwrap();
    }

    let (a6, b6, c6) = (a.ipv6.unwrap().into(), b.ipv6.unwrap().into(), c.ipv6.unwrap().into());
    // Across nodes over both families, and the IPv6-only pod both ways.
    for (from, to) in [(&a, b.ip.into()), (&b, a.ip.into()), (&a, b6), (&b, a6), (&c, b6), (&b, c6), (&c, a6)] {
        from.ping_ip(to).unwrap_or_else(|e| panic!("{} -> {to}: {e:#}", from.name));
    }
    // A pod reaches the other node's IPv6 InternalIP too.
    a.ping_ip(IpAddr::V6(n2.ip6.unwrap())).unwrap();

    // CHECK covers the IPv6 side too: a pod that lost its IPv6 default
    // route, or its IPv6 address, is reported.
    let gw6 = format!("{}1", n1.pod_cidr_v6.as_deref().unwrap().trim_end_matches("/64"));
    a.netns.run(&["ip", "-6", "route", "del", "default", "via", &gw6, "dev", "eth0"]).unwrap();
    let failure = a.check().expect_err("CHECK must see the missing IPv6 default route");
    assert_eq!(failure.code(), Some(108), "{failure:?}");
    let msg = &failure.cni_error().unwrap().msg;
    assert!(msg.contains(&format!("default route via {gw6} dev eth0 is missing")), "{msg}");
    c.netns.run(&["ip", "-6", "addr", "del", &format!("{c6}/128"), "dev", "eth0"]).unwrap();
    let msg = c.check().expect_err("CHECK must see the missing IPv6 address").cni_error().unwrap().msg.clone();
    assert!(msg.contains(&format!("address {c6}/128 is not on eth0")), "{msg}");

    // DEL releases both families.
    let (mut a, mut c) = (a, c);
    a.delete().unwrap();
    c.delete().unwrap();
    let v6_dir = n1.ipam_dir("weir").join("ipv6");
    let left: Vec<_> = std::fs::read_dir(&v6_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(':') && !n.starts_with("owner:"))
        .collect();
    assert!(left.is_empty(), "IPv6 reservations left on n1: {left:?}");
    assert!(n1.reservations("weir").unwrap().is_empty());
}

#[test]
fn ipv6_only_cluster_pods_ping_across_nodes() {
    weir_testbed::privileged(tools::BASE);
    let topo = Topology::builder("ipv6_only").nodes(2).families(Families::Ipv6).build().unwrap();
    let agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));

    let c1 = n1.agent_conflist().unwrap().only(&["weir-cni"]);
    let c2 = n2.agent_conflist().unwrap().only(&["weir-cni"]);
    let weir = c1.plugin("weir-cni").unwrap();
    assert_eq!(weir.get_str("podCIDR"), None, "{}", c1.to_json_pretty());
    assert_eq!(weir.raw["podCIDRs"], json!([n1.pod_cidr_v6.clone().unwrap()]));
    // No IPv4 route to the peer: the cluster has no IPv4.
    assert!(n1.routes_of_weir().unwrap().is_empty());

    let a = Pod::create(n1, "a", &c1).unwrap();
    let b = Pod::create(n2, "b", &c2).unwrap();
    for pod in [&a, &b] {
        assert!(pod.ip.is_unspecified(), "{}", pod.result.raw);
        assert_not_tentative(pod);
        pod.check().unwrap();
        // Only IPv6 on eth0 (besides nothing of IPv4).
        assert!(pod.netns.ipv4_addrs("eth0").unwrap().is_empty());
    }
    a.ping_ip(b.ipv6.unwrap().into()).unwrap();
    b.ping_ip(a.ipv6.unwrap().into()).unwrap();

    // n1's agent restarts: it finds its IPv6-only pod (no IPv4 address to
    // find it by) in the names the previous agent left, so the pod stays
    // open, and a policy selecting it applies to it: denied by the policy
    // (not held as an unknown pod), then allowed by the next.
    let mut agents = agents;
    drop(agents.remove(0));
    let _n1_agent = topo.start_agent("n1").unwrap();
    b.ping_ip(a.ipv6.unwrap().into()).unwrap();
    let before = (drops(n1, "policy-denied-ingress"), drops(n1, "policy-pending"));
    let deny_all = weir_testbed::manifest::network_policy_yaml(
        "default",
        "deny-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]\n",
    );
    topo.write_manifest("netpol.yaml", &[deny_all]).unwrap();
    eventually("IPv6 denied by the policy", || b.ping_ip(a.ipv6.unwrap().into()).is_err());
    assert!(drops(n1, "policy-denied-ingress") > before.0);
    assert_eq!(drops(n1, "policy-pending"), before.1);
    let allow_all = weir_testbed::manifest::network_policy_yaml(
        "default",
        "deny-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress:\n- {}\n",
    );
    topo.write_manifest("netpol.yaml", &[allow_all]).unwrap();
    eventually("IPv6 allowed by the policy", || b.ping_ip(a.ipv6.unwrap().into()).is_ok());
}

/// Packets `node`'s datapath dropped as `verdict`, from `weir-agent inspect
/// drops --json`, as an operator reads them.
fn drops(node: &Node, verdict: &str) -> u64 {
    let agent = weir_testbed::bins::weir_agent().unwrap().display().to_string();
    let pins = node.pin_dir.display().to_string();
    let json = node.netns.run(&[&agent, "inspect", "drops", "--bpf-pin-dir", &pins, "--json"]).unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["verdict"] == verdict);
    row.map_or(0, |r| r["packets"].as_u64().unwrap())
}

/// Retries `f` for up to 10 s (policy changes reach the datapath after the
/// agents see the manifest).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn an_ipv6_ip_block_admits_its_addresses_over_ipv6_only() {
    weir_testbed::privileged(tools::BASE);
    let topo = Topology::builder("dual_stack_policy").nodes(2).families(Families::DualStack).build().unwrap();
    let _agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    let a = Pod::create(n1, "a", &n1.agent_conflist().unwrap().only(&["weir-cni"])).unwrap();
    let c = Pod::create(n1, "c", &n1.agent_conflist().unwrap().only(&["weir-cni"])).unwrap();
    let b = Pod::create(n2, "b", &n2.agent_conflist().unwrap().only(&["weir-cni"])).unwrap();
    let (b4, b6): (IpAddr, IpAddr) = (b.ip.into(), b.ipv6.unwrap().into());
    a.ping_ip(b6).unwrap();

    // Every pod accepts only a's IPv6 address: a reaches b over IPv6, not
    // over IPv4 (the same pod, but no IPv4 block), and c reaches b over
    // neither.
    let a6 = a.ipv6.unwrap();
    let only_a6 = weir_testbed::manifest::network_policy_yaml(
        "default",
        "from-a6",
        &format!("podSelector: {{}}\npolicyTypes: [Ingress]\ningress:\n- from:\n  - ipBlock: {{cidr: '{a6}/128'}}\n"),
    );
    topo.write_manifest("netpol.yaml", &[only_a6]).unwrap();
    eventually("IPv4 from a denied", || a.ping_ip(b4).is_err());
    eventually("IPv6 from a allowed", || a.ping_ip(b6).is_ok());
    assert!(c.ping_ip(b6).is_err() && c.ping_ip(b4).is_err());
    assert!(drops(n2, "policy-denied-ingress") >= 3);
    // An IPv4 block of everything admits every IPv4 peer and no IPv6 one.
    let all_v4 = weir_testbed::manifest::network_policy_yaml(
        "default",
        "from-a6",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress:\n- from:\n  - ipBlock: {cidr: 0.0.0.0/0}\n",
    );
    topo.write_manifest("netpol.yaml", &[all_v4]).unwrap();
    eventually("IPv4 from c allowed", || c.ping_ip(b4).is_ok());
    assert!(c.ping_ip(b6).is_err() && a.ping_ip(b6).is_err());

    // No policy any more: IPv6 flows again.
    topo.remove_manifest("netpol.yaml").unwrap();
    eventually("IPv6 back once no policy selects the pods", || c.ping_ip(b6).is_ok());
}

/// IPv6 reservation records left in `node`'s IPv6 IPAM store.
fn ipv6_reservations(node: &Node) -> Vec<String> {
    match std::fs::read_dir(node.ipam_dir("weir").join("ipv6")) {
        Err(_) => Vec::new(),
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.parse::<std::net::Ipv6Addr>().is_ok())
            .collect(),
    }
}

#[test]
fn a_failed_or_refused_dual_stack_add_leaves_nothing_behind() {
    weir_testbed::privileged(tools::BASE);
    let topo = Topology::builder("dual_stack_fail").nodes(1).families(Families::DualStack).build().unwrap();
    let _agent = topo.start_agent("n1").unwrap();
    let n1 = topo.node("n1");
    let conf = n1.agent_conflist().unwrap().only(&["weir-cni"]);
    let runtime = n1.runtime();
    let netns = weir_testbed::NetNs::create(&n1.pod_netns_name("x")).unwrap();
    let attachment = Pod::attachment_for(n1, "x", &netns);

    // IPv6 disabled in the pod's namespace: the IPv6 address cannot be
    // added after both families were reserved and the veth made. ADD
    // itself (no DEL after it) must give back both addresses.
    for key in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
        netns.run(&["sysctl", "-q", "-w", key]).unwrap();
    }
    let failure = runtime.add(&conf, &attachment).expect_err("ADD must fail without IPv6 in the pod");
    assert_eq!(failure.code(), Some(105), "{failure:?}");
    assert!(n1.reservations("weir").unwrap().is_empty(), "IPv4 address leaked");
    assert!(ipv6_reservations(n1).is_empty(), "IPv6 address leaked: {:?}", ipv6_reservations(n1));
    assert!(n1.host_veths().unwrap().is_empty(), "{:?}", n1.host_veths());

    // Bad input is refused before anything is touched, with code 7.
    let v6 = n1.pod_cidr_v6.clone().unwrap();
    let bad: [(&str, serde_json::Value); 3] = [
        ("podCIDR", json!(v6)),
        ("podCIDRs", json!([n1.pod_cidr, "10.244.99.0/24"])),
        ("podCIDRs", json!([n1.pod_cidr, "fd00:10:244:1::/127"])),
    ];
    for (key, value) in bad {
        let mut list = conf.clone();
        list.plugin_mut("weir-cni").unwrap().set(key, value.clone());
        let failure = runtime.add(&list, &attachment).err().unwrap_or_else(|| panic!("{key}={value} accepted"));
        assert_eq!(failure.code(), Some(7), "{key}={value}: {failure:?}");
        assert!(n1.reservations("weir").unwrap().is_empty() && ipv6_reservations(n1).is_empty());
        assert!(n1.host_veths().unwrap().is_empty());
    }

    // With IPv6 back, the same attachment gets both families.
    netns.run(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0"]).unwrap();
    drop(netns);
    let mut pod = Pod::create(n1, "y", &conf).unwrap();
    assert!(pod.ipv6.is_some() && !pod.ip.is_unspecified());
    assert_eq!(ipv6_reservations(n1).len(), 1);
    pod.delete().unwrap();
    assert!(ipv6_reservations(n1).is_empty());

    // GC releases both families of attachments the runtime no longer has.
    let pod = Pod::create(n1, "z", &conf).unwrap();
    assert_eq!((n1.reservations("weir").unwrap().len(), ipv6_reservations(n1).len()), (1, 1));
    pod.keep();
    runtime.gc(&conf.with_version("1.1.0"), &[]).unwrap();
    assert!(n1.reservations("weir").unwrap().is_empty());
    assert!(ipv6_reservations(n1).is_empty(), "{:?}", ipv6_reservations(n1));
    assert!(n1.host_veths().unwrap().is_empty());
}
