//! The sandbox's NetworkPolicy demo: pod n1/a becomes `role=db`, n2/a
//! `role=web`, and a policy lets only `role=web` reach the db pod on TCP
//! 80. Every other pod, and the other node, are refused; the db pod's own
//! node still reaches it (kubelet probes). Then one refused connection is
//! shown twice: as it happened (`weir-agent observe`, the agent's flow log)
//! and as the live maps explain it (`weir-agent inspect verdict`); and the
//! policy is removed again. In a dual-stack run it also shows the same
//! policy deciding over IPv6 (`sandbox_policy_v6`).

use std::{
    thread,
    time::{Duration, Instant},
};

use crate::sandbox_policy_v6;
use anyhow::{Context, Result};
use weir_testbed::{
    Node, Pod, Topology, bins, manifest::network_policy_yaml, pod::HTTP_PORT, policy_cluster::inspect_verdict,
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
    ok &= explain(topo, &pods[outsider], &pods[db], &url);
    let dual = pods[db].ipv6.is_some();
    if dual {
        ok &= sandbox_policy_v6::same_over_ipv6(topo, &pods[web], &pods[outsider], &pods[db]);
    }
    topo.remove_manifest(POLICY_FILE)?;
    pods[db].set_labels([])?;
    pods[web].set_labels([])?;
    if dual {
        ok &= sandbox_policy_v6::back_after_policy(&pods[outsider], &pods[db]);
    }
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

/// One more refused connection from `from` to `to`, then, on `to`'s node
/// as an operator would: what happened (`weir-agent observe`) and what
/// would happen (`weir-agent inspect verdict`). True when the flow log
/// shows the refusal (`from`'s pod, `to`'s pod, a policy drop reason).
fn explain(topo: &Topology, from: &Pod, to: &Pod, url: &str) -> bool {
    let node = topo.node(&to.node);
    if bins::weir_agent().is_err() {
        println!("\n(no weir-agent binary: cannot show the refused flow)");
        return false;
    }
    let (Some(src), Some(dst)) = (k8s_name(from), k8s_name(to)) else {
        println!("\n(the pods have no Pod objects: cannot show the refused flow)");
        return false;
    };
    let refused = from.curl(url).is_err();
    println!(
        "\n{}/{} ({src}) connects to {}/{} ({dst}) on 80/tcp: {}",
        from.node,
        from.name,
        to.node,
        to.name,
        if refused { "refused" } else { "ANSWERED" }
    );

    // The flow reaches the agent's history within about a second.
    let args = ["--last", "5", "--verdict", "dropped", "--pod", dst.as_str()];
    println!("\nwhat happened (weir-agent observe {} on {}):", args.join(" "), to.node);
    let deadline = Instant::now() + Duration::from_secs(3);
    let (out, seen) = loop {
        let out = observe(node, &args);
        let seen = out.as_ref().is_ok_and(|o| {
            o.lines().any(|l| l.contains(&src) && l.contains(&dst) && l.contains("DROPPED policy-denied"))
        });
        if seen || Instant::now() > deadline {
            break (out, seen);
        }
        thread::sleep(Duration::from_millis(200));
    };
    match out {
        Ok(o) if o.trim().is_empty() => println!("  (no dropped flows)"),
        Ok(o) => o.lines().for_each(|l| println!("  {l}")),
        Err(e) => println!("  (observe failed: {e:#})"),
    }
    if !seen {
        println!("  <-- WRONG: no policy drop of {src} -> {dst} in the flow log");
    }

    let (f, t) = (from.ip.to_string(), to.ip.to_string());
    println!("\nwhat would happen (weir-agent inspect verdict --from {f} --to {t} --port 80/tcp on {}):", to.node);
    match inspect_verdict(node, from.ip.into(), to.ip.into(), "80/tcp", false) {
        Ok(out) if out.success() => print!("{}", out.stdout_str()),
        Ok(out) => println!("  (inspect failed: {})", out.stderr_str().trim()),
        Err(e) => println!("  (inspect failed: {e:#})"),
    }
    refused && seen
}

/// `namespace/name` of the pod's Pod object, as the flow log names it.
pub(crate) fn k8s_name(pod: &Pod) -> Option<String> {
    pod.object.as_ref().map(|o| format!("{}/{}", o.namespace, o.name))
}

/// `weir-agent observe <args>` in the node's namespace, against its agent's
/// run dir: its stdout.
pub(crate) fn observe(node: &Node, args: &[&str]) -> Result<String> {
    let agent = bins::weir_agent()?.display().to_string();
    let run = node.dirs.run.display().to_string();
    let mut argv = vec![agent.as_str(), "observe", "--run-dir", run.as_str()];
    argv.extend_from_slice(args);
    let out = node.netns.output(&argv)?;
    anyhow::ensure!(out.success(), "{}", out.stderr_str().trim());
    Ok(out.stdout_str().to_string())
}
