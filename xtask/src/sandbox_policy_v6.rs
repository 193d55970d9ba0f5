//! IPv6 in the sandbox's NetworkPolicy demo (dual-stack runs): the same
//! policy decides over IPv6 as over IPv4. The pod it admits gets the db
//! pod's page at its IPv6 address, a pod it does not admit is refused
//! (the drop counted as `policy-denied-ingress` on the db pod's node), and
//! `inspect verdict` answers for the IPv6 pair; once no policy selects the
//! pod, its IPv6 answers everyone again.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use weir_testbed::{Pod, Topology, bins, pod::HTTP_PORT, policy_cluster::inspect_verdict};

use crate::sandbox_policy::{k8s_name, observe};

const REASON: &str = "policy-denied-ingress";

fn url6(pod: &Pod) -> Option<String> {
    pod.ipv6.map(|ip| format!("http://[{ip}]:{HTTP_PORT}/"))
}

/// While the policy selects `db`: `web` (admitted) gets its page over
/// IPv6, `outsider` (not admitted) is refused and the refusal is counted;
/// `inspect verdict` on `db`'s node says so for the IPv6 pair.
pub fn same_over_ipv6(topo: &Topology, web: &Pod, outsider: &Pod, db: &Pod) -> bool {
    let (Some(url), Some(db6), Some(out6)) = (url6(db), db.ipv6, outsider.ipv6) else {
        println!("✘ the pods have no IPv6 addresses");
        return false;
    };
    let before = drops(topo, &db.node);
    // The policy has reached the datapath (the IPv4 table above settled);
    // a short retry covers the IPv6 side of the same update.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (admitted, refused) = loop {
        let seen = (web.curl(&url).is_ok(), outsider.curl(&url).is_err());
        if seen == (true, true) || Instant::now() > deadline {
            break seen;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let after = drops(topo, &db.node);
    let counted = matches!((&before, &after), (Ok(b), Ok(a)) if a > b);
    let count = match (&before, &after) {
        (Ok(b), Ok(a)) => format!("{REASON} drops on {}: {b} -> {a}", db.node),
        (Err(e), _) | (_, Err(e)) => format!("inspect drops failed: {e:#}"),
    };
    let word = |b: bool| if b { "as expected" } else { "   <-- WRONG" };
    println!("\nThe same policy over IPv6 (db pod {}/{} at {db6}):", db.node, db.name);
    println!("  {}/{} (role=web) gets the page: {}", web.node, web.name, word(admitted));
    println!("  {}/{} is refused: {}; {count}", outsider.node, outsider.name, word(refused && counted));
    let node = topo.node(&db.node);
    let logged = logged_over_ipv6(topo, outsider, db);
    println!("\nweir-agent inspect verdict --from {out6} --to {db6} --port 80/tcp (on {}):", db.node);
    let verdict_denied = match inspect_verdict(node, out6.into(), db6.into(), "80/tcp", false) {
        Ok(out) if out.success() => {
            print!("{}", out.stdout_str());
            out.stdout_str().contains("DENIED")
        }
        Ok(out) => {
            println!("  (inspect failed: {})", out.stderr_str().trim());
            false
        }
        Err(e) => {
            println!("  (inspect failed: {e:#})");
            false
        }
    };
    admitted && refused && counted && logged && verdict_denied
}

/// The refusal in the flow log, with the pods' IPv6 addresses.
fn logged_over_ipv6(topo: &Topology, outsider: &Pod, db: &Pod) -> bool {
    let (Some(dst), Some(out6)) = (k8s_name(db), outsider.ipv6) else { return false };
    let args = ["--last", "50", "--verdict", "dropped", "--pod", dst.as_str()];
    let needle = format!("[{out6}]:");
    let deadline = Instant::now() + Duration::from_secs(3);
    let (out, seen) = loop {
        let out = observe(topo.node(&db.node), &args);
        let line = out.as_ref().ok().and_then(|o| {
            o.lines().rev().find(|l| l.contains(&needle) && l.contains("DROPPED policy-denied")).map(str::to_string)
        });
        if line.is_some() || Instant::now() > deadline {
            break (out, line);
        }
        thread::sleep(Duration::from_millis(200));
    };
    match (&seen, out) {
        (Some(line), _) => println!("  in the flow log: {line}"),
        (None, Ok(_)) => println!("  <-- WRONG: no policy drop from {out6} in the flow log"),
        (None, Err(e)) => println!("  <-- WRONG: observe failed: {e:#}"),
    }
    seen.is_some()
}

/// Once no policy selects `db`: `outsider` gets its page over IPv6 again
/// (up to 10 s for the agents to see the change).
pub fn back_after_policy(outsider: &Pod, db: &Pod) -> bool {
    let Some(url) = url6(db) else { return false };
    let deadline = Instant::now() + Duration::from_secs(10);
    let ok = loop {
        if outsider.curl(&url).is_ok() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(200));
    };
    println!(
        "{} policy removed: {}/{} -> {}/{} over IPv6 {}",
        if ok { '✔' } else { '✘' },
        outsider.node,
        outsider.name,
        db.node,
        db.name,
        if ok { "answers again" } else { "STILL REFUSED" }
    );
    ok
}

/// `policy-denied-ingress` packets counted on `node` (`weir-agent inspect drops
/// --json` in its namespace, against its pinned maps).
fn drops(topo: &Topology, node: &str) -> Result<u64> {
    let agent = bins::weir_agent()?.display().to_string();
    let node = topo.node(node);
    let pins = node.pin_dir.display().to_string();
    let json = node.netns.run(&[&agent, "inspect", "drops", "--bpf-pin-dir", &pins, "--json"])?;
    count_of(&json, REASON).with_context(|| format!("inspect drops on {}", node.name))
}

/// The packets of `reason` in `inspect drops --json` output (0 when absent).
fn count_of(json: &str, reason: &str) -> Result<u64> {
    let rows: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    let rows = rows.as_array().context("not a JSON array")?;
    Ok(rows.iter().filter(|r| r["verdict"] == reason).filter_map(|r| r["packets"].as_u64()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_reason_only() {
        let json =
            r#"[{"verdict":"policy-denied-ingress","packets":7},{"verdict":"policy-denied-egress","packets":3}]"#;
        assert_eq!(count_of(json, REASON).unwrap(), 7);
        assert_eq!(count_of("[]", REASON).unwrap(), 0);
        assert!(count_of("{}", REASON).is_err());
    }
}
