//! The sandbox's NetworkPolicy demo: pod n1/a becomes `role=db`, n2/a
//! `role=web`, and a policy lets only `role=web` reach the db pod on TCP
//! 80. Every other pod, and the other node, are refused; the db pod's own
//! node still reaches it (kubelet probes). Then `weir-agent inspect verdict`
//! explains one refusal from the live maps, and the policy is removed again.

use std::{thread, time::Duration};

use anyhow::{Context, Result};
use weir_testbed::{
    Pod, Topology, bins, manifest::network_policy_yaml, pod::HTTP_PORT, policy_cluster::inspect_verdict,
};

const POLICY_FILE: &str = "sandbox-policy.yaml";
const POLICY: &str = "podSelector: {matchLabels: {role: db}}\npolicyTypes: [Ingress]\ningress:\n- from:\n  - podSelector: {matchLabels: {role: web}}\n  ports:\n  - {protocol: TCP, port: 80}\n";

/// Applies the policy, probes, prints a table; true when every probe saw
/// what the policy says.
pub fn demo(topo: &Topology, pods: &mut [Pod]) -> Result<bool> {
    let db = pods.iter().position(|p| p.node == "n1" && p.name == "a").context("pod n1/a")?;
    let web = pods.iter().position(|p| p.node == "n2" && p.name == "a").context("pod n2/a")?;
    pods[db].set_labels([("role", "db")])?;
    pods[web].set_labels([("role", "web")])?;
    topo.write_manifest(POLICY_FILE, &[network_policy_yaml("default", "db-from-web", POLICY)])?;
    let db_ip = pods[db].ip;
    let url = format!("http://{db_ip}:{HTTP_PORT}/");
    println!(
        "\nNetworkPolicy default/db-from-web: pod n1/a ({db_ip}, role=db) accepts TCP 80 only from role=web (n2/a)"
    );

    // Expected: (who, allowed). The agents poll their manifests: retry
    // until the picture is as expected or 15 s pass.
    let mut expected: Vec<(String, bool)> = pods
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != db)
        .map(|(i, p)| (format!("pod {}/{}", p.node, p.name), i == web))
        .collect();
    expected.push(("node n1 (the pod's own node)".into(), true));
    expected.push(("node n2".into(), false));
    let mut seen = Vec::new();
    for _ in 0..15 {
        seen = probe(topo, pods, db, &url);
        if seen.iter().zip(&expected).all(|(s, (_, want))| s == want) {
            break;
        }
        thread::sleep(Duration::from_secs(1));
    }
    let mut ok = true;
    println!("{:<32} {:<10} EXPECTED", "FROM", "SEEN");
    for ((who, want), got) in expected.iter().zip(&seen) {
        let word = |b: bool| if b { "answers" } else { "refused" };
        let mark = if want == got { "" } else { "   <-- WRONG" };
        ok &= want == got;
        println!("{who:<32} {:<10} {}{mark}", word(*got), word(*want));
    }
    let outsider = pods.iter().position(|p| p.node == "n1" && p.name == "b").context("pod n1/b")?;
    explain(topo, &pods[outsider], &pods[db]);
    topo.remove_manifest(POLICY_FILE)?;
    pods[db].set_labels([])?;
    pods[web].set_labels([])?;
    Ok(ok)
}

/// Whether each other pod, then each node, gets the db pod's page.
fn probe(topo: &Topology, pods: &[Pod], db: usize, url: &str) -> Vec<bool> {
    let mut seen: Vec<bool> =
        pods.iter().enumerate().filter(|(i, _)| *i != db).map(|(_, p)| p.curl(url).is_ok()).collect();
    for node in topo.nodes() {
        seen.push(node.netns.curl(url).is_ok());
    }
    seen
}

/// `weir-agent inspect verdict` on the db pod's node, as an operator would.
fn explain(topo: &Topology, from: &Pod, to: &Pod) {
    let node = topo.node(&to.node);
    if bins::weir_agent().is_err() {
        return;
    }
    let (f, t) = (from.ip.to_string(), to.ip.to_string());
    println!(
        "\nwhy is {}/{} refused? weir-agent inspect verdict --from {f} --to {t} --port 80/tcp (on {}):",
        from.node, from.name, to.node
    );
    match inspect_verdict(node, from.ip, to.ip, "80/tcp", false) {
        Ok(out) if out.success() => print!("{}", out.stdout_str()),
        Ok(out) => println!("  (inspect failed: {})", out.stderr_str().trim()),
        Err(e) => println!("  (inspect failed: {e:#})"),
    }
}
