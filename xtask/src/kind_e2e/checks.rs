//! The checks on the cluster: pod to pod (over IPv6 too on a dual-stack
//! cluster), Services (ClusterIP, DNS, NodePort), then NetworkPolicy. Every check is tried and collected; a
//! setup step among them (applying a policy) failing stops the run.

use std::{
    collections::BTreeSet,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use weir_testbed::exec;

use super::{HTTP_PORT, NAMESPACE, SETTLE, SHORT, Steps, cluster::Cluster, family, objects, setup::OnCluster};

/// Pods on two nodes reach each other, the ClusterIP reaches both
/// backends (by address and by DNS name), the NodePort answers from other
/// nodes.
pub fn connectivity(cluster: &Cluster, on: &OnCluster, checks: &mut Vec<Check>) -> Result<()> {
    pod_to_pod(cluster, on, checks);
    checks.push(Check::new(&format!("ClusterIP {}:80 from client reaches both backends", on.cluster_ip), || {
        both_backends_answer(cluster, on)
    }));
    let dns_name = format!("web.{NAMESPACE}.svc.cluster.local");
    checks.push(Check::new(&format!("ClusterIP by DNS name {dns_name} (CoreDNS through its own Service)"), || {
        eventually(SETTLE, || expect_one_of(cluster.http_get("client", &dns_name, 80), &on.web_bodies))
    }));
    node_ports(on, checks);
    Ok(())
}

/// Placement, then ping and HTTP from client to the pods on its node and
/// the other.
fn pod_to_pod(cluster: &Cluster, on: &OnCluster, checks: &mut Vec<Check>) {
    let (pods, web_a, web_b) = (&on.pods, &on.web_a, &on.web_b);
    checks.push(Check::new("web-a and web-b run on different nodes, client beside web-a", || {
        let (a, b, c) = (pods.node("web-a")?, pods.node("web-b")?, pods.node("client")?);
        if a != b && a == c {
            Ok(format!("web-a on {a}, web-b on {b}, client on {c}"))
        } else {
            bail!("web-a on {a}, web-b on {b}, client on {c}")
        }
    }));
    checks.push(Check::new(&format!("ping client -> web-b {web_b} (across nodes)"), || {
        eventually(SETTLE, || cluster.exec_in("client", &["ping", "-c", "3", "-W", "2", web_b]))
    }));
    checks.push(Check::new(&format!("ping client -> web-a {web_a} (same node)"), || {
        eventually(SETTLE, || cluster.exec_in("client", &["ping", "-c", "3", "-W", "2", web_a]))
    }));
    checks.push(Check::new(&format!("HTTP client -> web-b {web_b}:{HTTP_PORT} (across nodes)"), || {
        eventually(SETTLE, || expect_body(cluster.http_get("client", web_b, HTTP_PORT), "web-b"))
    }));
    if let Some((web_a6, web_b6)) = &on.ipv6 {
        pod_to_pod_v6(cluster, web_a6, web_b6, checks);
    }
}

/// A dual-stack cluster: the same paths over IPv6 (client's own IPv6
/// address is the source, as the kernel picks the family of the target).
fn pod_to_pod_v6(cluster: &Cluster, web_a6: &str, web_b6: &str, checks: &mut Vec<Check>) {
    for (target, addr, path) in [("web-b", web_b6, "across nodes"), ("web-a", web_a6, "same node")] {
        checks.push(Check::new(&format!("IPv6: ping client -> {target} {addr} ({path})"), || {
            eventually(SETTLE, || cluster.exec_in("client", &["ping", "-6", "-c", "3", "-W", "2", addr]))
        }));
        let host = family::url_host(addr);
        checks.push(Check::new(&format!("IPv6: HTTP client -> {target} {host}:{HTTP_PORT} ({path})"), || {
            eventually(SETTLE, || expect_body(cluster.http_get("client", &host, HTTP_PORT), target))
        }));
    }
}

/// The ClusterIP, asked until both backends have answered or SETTLE
/// passes.
fn both_backends_answer(cluster: &Cluster, on: &OnCluster) -> Result<String> {
    let deadline = Instant::now() + SETTLE;
    let mut seen = BTreeSet::new();
    let mut last_error = String::from("no attempt");
    while Instant::now() < deadline && seen != on.web_bodies {
        match cluster.http_get("client", &on.cluster_ip, 80) {
            Ok(body) if on.web_bodies.contains(body.trim()) => {
                seen.insert(body.trim().to_string());
            }
            Ok(body) => last_error = format!("unexpected answer {body:?}"),
            Err(e) => {
                last_error = format!("{e:#}");
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
    if seen == on.web_bodies {
        Ok(format!("answered by {}", seen.into_iter().collect::<Vec<_>>().join(" and ")))
    } else {
        bail!("answered by {seen:?} only; last problem: {last_error}")
    }
}

/// The NodePort from the host network of one node to another node's
/// address.
fn node_ports(on: &OnCluster, checks: &mut Vec<Check>) {
    let nodes = &on.nodes;
    let np_cases = [
        (&nodes.control_plane, &nodes.workers[1]),
        (&nodes.workers[1], &nodes.workers[0]),
        (&nodes.workers[0], &nodes.control_plane),
    ];
    for (from, to) in np_cases {
        let url = format!("http://{}:{}/", to.1, on.node_port);
        checks.push(Check::new(&format!("NodePort {url} from node {} (host network)", from.0), || {
            eventually(SETTLE, || {
                expect_one_of(
                    exec::run(
                        Command::new("docker").args(["exec", &from.0, "curl", "-sS", "--max-time", "3", &url]),
                        SHORT,
                    ),
                    &on.web_bodies,
                )
            })
        }));
    }
}

/// Default-deny ingress in the namespace blocks (also through the
/// ClusterIP); an allow policy for role=client opens for client only.
pub fn network_policy(cluster: &Cluster, on: &OnCluster, steps: &mut Steps, checks: &mut Vec<Check>) -> Result<()> {
    let (web_a, web_b, cluster_ip) = (&on.web_a, &on.web_b, &on.cluster_ip);
    steps.next(&format!("NetworkPolicy: default-deny ingress in {NAMESPACE}"));
    cluster.apply_stdin(&objects::deny_all_ingress())?;
    checks.push(Check::new("default-deny blocks client -> web-b", || {
        eventually_blocked(SETTLE, || cluster.http_get("client", web_b, HTTP_PORT))
    }));
    checks.push(Check::new("default-deny blocks client -> ClusterIP (policy sees the backend)", || {
        still_blocked(|| cluster.http_get("client", cluster_ip, 80))
    }));

    steps.next("NetworkPolicy: allow role=client -> app=web on TCP 8080");
    cluster.apply_stdin(&objects::allow_client())?;
    checks.push(Check::new("allow policy opens client -> web-b (across nodes)", || {
        eventually(SETTLE, || expect_body(cluster.http_get("client", web_b, HTTP_PORT), "web-b"))
    }));
    checks.push(Check::new("allow policy opens client -> web-a (same node)", || {
        eventually(SETTLE, || expect_body(cluster.http_get("client", web_a, HTTP_PORT), "web-a"))
    }));
    checks.push(Check::new("allow policy opens client -> ClusterIP", || {
        eventually(SETTLE, || expect_one_of(cluster.http_get("client", cluster_ip, 80), &on.web_bodies))
    }));
    checks.push(Check::new("pod without role=client stays blocked: other -> web-a (across nodes)", || {
        still_blocked(|| cluster.http_get("other", web_a, HTTP_PORT))
    }));
    if let Some((web_a6, web_b6)) = &on.ipv6 {
        // The same policy over IPv6: client admitted, other not.
        let (a6, b6) = (family::url_host(web_a6), family::url_host(web_b6));
        checks.push(Check::new(&format!("over IPv6 too: client -> web-b {b6} (across nodes)"), || {
            eventually(SETTLE, || expect_body(cluster.http_get("client", &b6, HTTP_PORT), "web-b"))
        }));
        checks.push(Check::new(&format!("over IPv6 too: other -> web-a {a6} stays blocked"), || {
            still_blocked(|| cluster.http_get("other", &a6, HTTP_PORT))
        }));
    }
    Ok(())
}

// ---------------------------------------------------------------- one check

/// One check's name and whether it passed.
pub struct Check {
    pub name: String,
    pub ok: bool,
}

impl Check {
    /// Runs one check and prints its outcome as it happens.
    fn new(name: &str, f: impl FnOnce() -> Result<String>) -> Self {
        println!("    ... {name}");
        let started = Instant::now();
        let outcome = f();
        let took = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(detail) => println!("    PASS {name} ({took:.1} s){}", detail_suffix(detail)),
            Err(e) => println!("    FAIL {name} ({took:.1} s): {e:#}"),
        }
        Self { name: name.to_string(), ok: outcome.is_ok() }
    }
}

fn detail_suffix(detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() || detail.contains('\n') { String::new() } else { format!(": {detail}") }
}

/// Retries `f` until it succeeds or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> Result<String>) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {} s", within.as_secs())));
            }
            Err(_) => thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Why an HTTP probe counts as blocked: wget itself ran and reported the
/// failure. Anything else (kubectl could not exec, the pod is gone) proves
/// nothing about the policy and is an error.
fn blocked(probe: Result<String>) -> Result<std::result::Result<String, String>> {
    match probe {
        Ok(answer) => Ok(Err(answer)),
        Err(e) => {
            let text = format!("{e:#}");
            match text.lines().find_map(|l| l.find("wget: ").map(|at| &l[at..])) {
                Some(line) => Ok(Ok(line.trim().to_string())),
                None => Err(e.context("the probe itself failed")),
            }
        }
    }
}

/// Waits until `f` is blocked twice in a row (a policy taking effect); a
/// single failure may be a hiccup.
fn eventually_blocked(within: Duration, mut f: impl FnMut() -> Result<String>) -> Result<String> {
    let deadline = Instant::now() + within;
    let mut failures = 0;
    loop {
        match blocked(f())? {
            Err(answer) => {
                failures = 0;
                if Instant::now() >= deadline {
                    bail!("still open after {} s (answered {:?})", within.as_secs(), answer.trim());
                }
                thread::sleep(Duration::from_secs(1));
            }
            Ok(why) => {
                failures += 1;
                if failures == 2 {
                    return Ok(format!("blocked twice in a row ({why})"));
                }
            }
        }
    }
}

/// `f` must be blocked on every one of three tries.
fn still_blocked(mut f: impl FnMut() -> Result<String>) -> Result<String> {
    let mut why = String::new();
    for _ in 0..3 {
        match blocked(f())? {
            Err(answer) => bail!("open: answered {:?}", answer.trim()),
            Ok(w) => why = w,
        }
    }
    Ok(format!("blocked three times ({why})"))
}

fn expect_body(got: Result<String>, want: &str) -> Result<String> {
    let body = got?;
    if body.trim() == want {
        Ok(format!("answered {want:?}"))
    } else {
        bail!("answered {:?}, expected {want:?}", body.trim())
    }
}

fn expect_one_of(got: Result<String>, want: &BTreeSet<String>) -> Result<String> {
    let body = got?;
    if want.contains(body.trim()) {
        Ok(format!("answered {:?}", body.trim()))
    } else {
        bail!("answered {:?}, expected one of {want:?}", body.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wget_reporting_a_failure_counts_as_blocked() {
        let err = |text: &str| Err(anyhow::anyhow!("{text}"));
        let timed_out =
            "`kubectl exec` failed (exit code 1): wget: download timed out\ncommand terminated with exit code 1";
        assert_eq!(blocked(err(timed_out)).unwrap(), Ok("wget: download timed out".to_string()));
        assert_eq!(blocked(Ok("web-a\n".into())).unwrap(), Err("web-a\n".to_string()));
        assert!(blocked(err("`kubectl exec` failed (exit code 1): error: pod client not found")).is_err());
        assert!(still_blocked(|| err(timed_out)).is_ok());
        assert!(still_blocked(|| Ok("web-a".into())).is_err());
    }
}
