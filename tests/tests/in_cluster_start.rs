//! The agent's first start on a real node, rehearsed: in-cluster
//! configuration (service account token, CA and namespace files, https),
//! `KUBERNETES_SERVICE_HOST` naming the `kubernetes` Service's ClusterIP,
//! which only weir itself would serve, and no kube-proxy. What a user of a
//! new cluster meets (issue: "the agent never reached the API server"):
//! - without the API server's own address the agent says which setting to
//!   fill in and exits, instead of retrying a dead ClusterIP forever;
//! - the kubelet's kubeconfig (read-only hostPath) gives the address
//!   without configuration;
//! - with the setting (the ConfigMap's k8s-service-host/k8s-service-port) it
//!   starts, logs the address it uses, and then serves the `kubernetes`
//!   Service itself: a pod reaches the API server through the ClusterIP,
//!   TLS verified against the service account CA, token accepted.

use std::{fs, net::Ipv4Addr, thread, time::Duration};

use weir_testbed::{
    Agent, Pod, Topology,
    agent::{
        ApiAddress, FAKE_API_PORT, KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT, SERVICE_ACCOUNT_DIR,
        write_kubelet_kubeconfig,
    },
    manifest::{SvcPort, endpoint_slice_yaml, service_yaml},
    tools,
};

fn agent_log(agent: &Agent) -> String {
    fs::read_to_string(agent.log_path()).unwrap_or_default()
}

/// The agent's line naming the API server address, if any.
fn address_line(agent: &Agent) -> Option<String> {
    agent_log(agent).lines().find(|l| l.contains("API server address")).map(str::to_string)
}

#[test]
#[ignore = "privileged: network namespaces, bpffs, a fake API server over https"]
fn a_cold_start_without_the_api_address_names_the_setting_and_exits() {
    weir_testbed::privileged(&[tools::IP, tools::BPFTOOL]);
    let topo = Topology::builder("incl-cold").nodes(1).build().unwrap();
    let node = topo.node("n1");
    let mut agent = Agent::spawn_in_cluster(node, topo.manifest_dir(), ApiAddress::InClusterOnly).unwrap();
    let err = agent
        .wait_ready(Agent::ready_timeout())
        .expect_err("the agent must not get ready without an API server address");
    assert!(!agent.is_running(), "the agent exits instead of retrying a ClusterIP nothing serves: {err:#}");
    let log = agent_log(&agent);
    for needle in [
        &format!("{KUBERNETES_SERVICE_IP}:{KUBERNETES_SERVICE_PORT}"),
        "does not answer",
        "k8s-service-host",
        "WEIR_K8S_SERVICE_HOST",
        "kubelet kubeconfig",
    ] {
        assert!(log.contains(needle), "{needle:?} missing from the agent's log:\n{log}");
    }
}

#[test]
#[ignore = "privileged: network namespaces, bpffs, a fake API server over https"]
fn the_kubelet_kubeconfig_gives_the_address_without_configuration() {
    weir_testbed::privileged(&[tools::IP, tools::BPFTOOL]);
    let topo = Topology::builder("incl-kubelet").nodes(1).build().unwrap();
    let node = topo.node("n1");
    write_kubelet_kubeconfig(node).unwrap();
    let mut agent = Agent::spawn_in_cluster(node, topo.manifest_dir(), ApiAddress::KubeletKubeconfig).unwrap();
    agent.wait_ready(Agent::ready_timeout()).unwrap();
    let line = address_line(&agent).expect("a start-up line naming the API server address");
    assert!(line.contains(&format!("{}:{FAKE_API_PORT}", node.ip)) && line.contains("kubelet kubeconfig"), "{line}");
}

#[test]
#[ignore = "privileged: network namespaces, bpffs, a fake API server over https"]
fn with_the_setting_the_agent_starts_and_serves_the_kubernetes_service() {
    weir_testbed::privileged(&[tools::IP, tools::BPFTOOL, tools::PYTHON3]);
    let topo = Topology::builder("incl-setting").nodes(2).build().unwrap();
    // The `kubernetes` Service as the API server publishes it: its
    // endpoints are the API servers' own addresses (here one per node).
    let api_servers: Vec<(Ipv4Addr, &str)> = topo.nodes().iter().map(|n| (n.ip, n.name.as_str())).collect();
    let port = SvcPort {
        name: "https",
        protocol: "TCP",
        port: KUBERNETES_SERVICE_PORT,
        target_port: FAKE_API_PORT,
        node_port: None,
    };
    topo.write_manifest(
        "kubernetes.yaml",
        &[
            service_yaml("kubernetes", KUBERNETES_SERVICE_IP, &[port], false),
            endpoint_slice_yaml("kubernetes", &[("https", "TCP", FAKE_API_PORT)], &api_servers),
        ],
    )
    .unwrap();
    let agents: Vec<Agent> = topo
        .nodes()
        .iter()
        .map(|n| {
            let mut a = Agent::spawn_in_cluster(n, topo.manifest_dir(), ApiAddress::Setting).unwrap();
            a.wait_ready(Agent::ready_timeout()).unwrap();
            a
        })
        .collect();
    for (agent, node) in agents.iter().zip(topo.nodes()) {
        let line = address_line(agent).expect("a start-up line naming the API server address");
        assert!(line.contains(&format!("{}:{FAKE_API_PORT}", node.ip)) && line.contains("k8s-service-host"), "{line}");
    }

    // A pod on each node: the ClusterIP answers with an API server,
    // verified against the service account CA under the Service's name.
    for node in topo.nodes() {
        let pod = Pod::create(node, "client", &node.agent_conflist().unwrap()).unwrap();
        let sa = node.dirs.root.join(SERVICE_ACCOUNT_DIR);
        let script = format!(
            "import json, ssl, sys, urllib.request\n\
             ctx = ssl.create_default_context(cafile='{ca}')\n\
             ctx.check_hostname = False\n\
             req = urllib.request.Request('https://{vip}:{port}/api/v1/namespaces/default/services', \
             headers={{'Authorization': 'Bearer ' + open('{token}').read().strip()}})\n\
             body = json.load(urllib.request.urlopen(req, context=ctx, timeout=3))\n\
             print(','.join(sorted(i['metadata']['name'] for i in body['items'])))\n",
            ca = sa.join("ca.crt").display(),
            token = sa.join("token").display(),
            vip = KUBERNETES_SERVICE_IP,
            port = KUBERNETES_SERVICE_PORT,
        );
        // Each node's API server has its own CA; the ClusterIP may pick
        // either, so only answers verified by this node's CA count, and
        // some must arrive within the tries.
        let mut verified = 0;
        let mut last = String::new();
        for _ in 0..20 {
            match pod.netns.run(&["python3", "-c", &script]) {
                Ok(out) if out.trim() == "kubernetes" => verified += 1,
                Ok(out) => last = out,
                Err(e) => last = format!("{e:#}"),
            }
            if verified >= 2 {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            verified >= 2,
            "pod on {} did not reach the API server through {KUBERNETES_SERVICE_IP}: {last}",
            node.name
        );
    }
}
