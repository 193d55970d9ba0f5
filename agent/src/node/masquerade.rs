//! Masquerade pod traffic that leaves the cluster CIDR (what kindnet does),
//! with iptables in the node's network namespace. The rules live in a chain
//! of our own, written in one `iptables-restore --noflush` transaction, so
//! other rules on the node are never touched and cleanup is one chain. IPv6
//! gets the same chain from ip6tables for the IPv6 cluster CIDR.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use ipnetwork::IpNetwork;

pub const CHAIN: &str = "WEIR-MASQUERADE";
const COMMENT: &str = "weir: masquerade pod traffic leaving the cluster CIDR";

#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error("cannot run {cmd}: {source} (is iptables installed?)")]
    Spawn { cmd: &'static str, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: &'static str, stderr: String },
}

/// The chain's contents. Declaring the chain in a restore flushes it, so the
/// result is exactly these rules however often it is applied.
pub fn rules(cluster_cidr: IpNetwork) -> String {
    format!(
        "*nat\n:{CHAIN} - [0:0]\n\
         -A {CHAIN} -d {cluster_cidr} -j RETURN\n\
         -A {CHAIN} -s {cluster_cidr} -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// The iptables and iptables-restore commands of `cidr`'s family.
fn tools(cidr: IpNetwork) -> (&'static str, &'static str) {
    if cidr.is_ipv6() { ("ip6tables", "ip6tables-restore") } else { ("iptables", "iptables-restore") }
}

pub fn ensure(cluster_cidr: IpNetwork) -> Result<(), MasqueradeError> {
    let (iptables, restore) = tools(cluster_cidr);
    run_with_stdin(restore, &["-w", "--noflush"], &rules(cluster_cidr))?;
    if run(iptables, &jump('C')).is_err() {
        run(iptables, &jump('A'))?;
    }
    Ok(())
}

/// Removes the jump and the chain, both families; missing pieces (or a
/// node without ip6tables) are not errors.
pub fn remove() -> Result<(), MasqueradeError> {
    for iptables in ["iptables", "ip6tables"] {
        while run(iptables, &jump('D')).is_ok() {}
        if run(iptables, &["-w", "-t", "nat", "-L", CHAIN, "-n"]).is_ok() {
            run(iptables, &["-w", "-t", "nat", "-F", CHAIN])?;
            run(iptables, &["-w", "-t", "nat", "-X", CHAIN])?;
        }
    }
    Ok(())
}

/// The POSTROUTING rule that jumps to our chain, for -C(heck), -A(ppend), -D(elete).
fn jump(op: char) -> Vec<&'static str> {
    let op = match op {
        'C' => "-C",
        'A' => "-A",
        _ => "-D",
    };
    vec!["-w", "-t", "nat", op, "POSTROUTING", "-m", "comment", "--comment", COMMENT, "-j", CHAIN]
}

fn run(cmd: &'static str, args: &[&str]) -> Result<(), MasqueradeError> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| MasqueradeError::Spawn { cmd, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MasqueradeError::Failed { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

fn run_with_stdin(cmd: &'static str, args: &[&str], input: &str) -> Result<(), MasqueradeError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MasqueradeError::Spawn { cmd, source })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .map_err(|source| MasqueradeError::Spawn { cmd, source })?;
    let out = child.wait_with_output().map_err(|source| MasqueradeError::Spawn { cmd, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MasqueradeError::Failed { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_return_in_cluster_and_masquerade_the_rest() {
        let r = rules("10.244.0.0/16".parse().unwrap());
        let lines: Vec<_> = r.lines().collect();
        assert_eq!(lines[1], ":WEIR-MASQUERADE - [0:0]");
        assert_eq!(lines[2], "-A WEIR-MASQUERADE -d 10.244.0.0/16 -j RETURN");
        assert_eq!(lines[3], "-A WEIR-MASQUERADE -s 10.244.0.0/16 -j MASQUERADE --random-fully");
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn ipv6_rules_use_the_ipv6_cluster_cidr_and_ip6tables() {
        let cidr: IpNetwork = "fd00:10:244::/56".parse().unwrap();
        let r = rules(cidr);
        assert!(r.contains("-A WEIR-MASQUERADE -d fd00:10:244::/56 -j RETURN\n"), "{r}");
        assert!(r.contains("-A WEIR-MASQUERADE -s fd00:10:244::/56 -j MASQUERADE --random-fully\n"), "{r}");
        assert_eq!(tools(cidr), ("ip6tables", "ip6tables-restore"));
        assert_eq!(tools("10.244.0.0/16".parse().unwrap()), ("iptables", "iptables-restore"));
    }
}
