//! Pods on two nodes reach each other (ping and HTTP) through the routes the
//! agents program to each other's podCIDR.

use weir_testbed::{Pod, Topology, tools};

#[test]
fn pods_on_two_nodes_ping_and_fetch_http_from_each_other() {
    weir_testbed::privileged(tools::BASE);
    let topo = Topology::builder("cross_node").nodes(2).build().unwrap();
    let _agents = topo.start_agents().unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));

    // Each agent routes the peer's podCIDR via the peer's InternalIP.
    for (node, peer) in [(n1, n2), (n2, n1)] {
        let routes = node.netns.routes().unwrap();
        let want = format!("{} via {}", peer.pod_cidr, peer.ip);
        assert!(routes.iter().any(|r| r.starts_with(&want)), "{}: no `{want}` in {routes:#?}", node.name);
    }

    // weir-cni alone: chaining is chaining_portmap's subject.
    let mut a = Pod::create(n1, "a", &n1.agent_conflist().unwrap().only(&["weir-cni"])).unwrap();
    let mut b = Pod::create(n2, "b", &n2.agent_conflist().unwrap().only(&["weir-cni"])).unwrap();
    assert!(weir_testbed::topology::cidr_contains(&n1.pod_cidr, a.ip), "{} not in {}", a.ip, n1.pod_cidr);
    assert!(weir_testbed::topology::cidr_contains(&n2.pod_cidr, b.ip), "{} not in {}", b.ip, n2.pod_cidr);
    a.serve_http().unwrap();
    b.serve_http().unwrap();

    for (from, to) in [(&a, &b), (&b, &a)] {
        from.ping(to.ip).unwrap();
        assert_eq!(from.curl(&to.url()).unwrap(), to.http_body(), "{} -> {}", from.name, to.name);
    }
    // And each pod reaches the other node itself.
    a.ping(n2.ip).unwrap();
    b.ping(n1.ip).unwrap();
}
