//! weir-cni chained with the reference `portmap` plugin, exactly as the agent
//! writes the conflist: a hostPort on node n1 reaches the pod's HTTP server
//! from another node's namespace, and DEL through the chain removes it.

use weir_testbed::{Pod, Topology, tools};

const HOST_PORT: u16 = 8080;

#[test]
fn a_host_port_reaches_the_pod_from_another_node() {
    weir_testbed::privileged(&[tools::IP, tools::CURL, tools::BUSYBOX, tools::PORTMAP, tools::IPTABLES]);
    let topo = Topology::builder("chaining_portmap").nodes(2).build().unwrap();
    let _agent = topo.start_agent("n1").unwrap();
    let (n1, n2) = (topo.node("n1"), topo.node("n2"));
    let list = n1.agent_conflist().unwrap();
    let types: Vec<_> = list.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
    assert_eq!(types, ["weir-cni", "portmap"], "the agent chains portmap after weir-cni");

    let mut pod = Pod::create_with(n1, "web", &list, |a| a.with_port_mapping(HOST_PORT, 80, "tcp")).unwrap();
    pod.serve_http().unwrap();
    let url = format!("http://{}:{HOST_PORT}/", n1.ip);
    assert_eq!(n2.netns.curl(&url).unwrap(), pod.http_body(), "hostPort {HOST_PORT} on n1 -> pod port 80");
    // No CHECK through the chain: Debian's portmap 1.1.1 fails CHECK on
    // IPv4-only pods ("could not check ipv6 dnat: chain ... not found"),
    // whatever the first plugin. weir-cni's CHECK is covered in cni_lifecycle.
    let dnat = || n1.netns.run(&["iptables-save", "-t", "nat"]).unwrap();
    let rule = format!("--dport {HOST_PORT} ");
    assert!(dnat().contains(&rule), "portmap's DNAT rule is in n1:\n{}", dnat());

    pod.delete().expect("DEL through the chain");
    assert!(!dnat().contains(&rule), "DEL reached portmap: its rule is gone:\n{}", dnat());
}
