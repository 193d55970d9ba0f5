//! Which cniVersion to write: the highest that every plugin of the chain
//! supports, asked of each plugin with the CNI VERSION command. Runtimes
//! call STATUS and GC only for 1.1.0 lists, but a chained plugin that only
//! knows 1.0.0 (Debian's portmap 1.1.1) fails a 1.1.0 list outright.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// What this release of weir-cni supports (it answers VERSION with this).
pub const WEIR_CNI_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The highest version weir writes.
pub const PREFERRED: &str = "1.1.0";

fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// The highest version in every list, at most `PREFERRED`.
pub fn negotiate(lists: &[Vec<String>]) -> Option<String> {
    let cap = parse(PREFERRED)?;
    let first = lists.first()?;
    first
        .iter()
        .filter(|v| parse(v).is_some_and(|p| p <= cap))
        .filter(|v| lists[1..].iter().all(|l| l.contains(v)))
        .max_by_key(|v| parse(v))
        .cloned()
}

pub fn find(bin_dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    bin_dirs.iter().map(|d| d.join(plugin)).find(|p| p.is_file())
}

/// Asks a plugin binary for its supported versions.
pub fn query(binary: &Path) -> Result<Vec<String>, String> {
    let mut child = Command::new(binary)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(br#"{"cniVersion":"1.0.0"}"#)
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let out = child.wait_with_output().map_err(|e| format!("{}: {e}", binary.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!("{} VERSION answered no JSON ({e}): {}", binary.display(), String::from_utf8_lossy(&out.stdout))
    })?;
    v["supportedVersions"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .ok_or_else(|| format!("{} VERSION answered without supportedVersions: {v}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_the_highest_common_version() {
        let weir = l(WEIR_CNI_VERSIONS);
        assert_eq!(negotiate(std::slice::from_ref(&weir)).as_deref(), Some("1.1.0"));
        let portmap = l(&["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
        assert_eq!(negotiate(&[weir.clone(), portmap]).as_deref(), Some("1.0.0"));
        assert_eq!(negotiate(&[weir.clone(), l(&["0.3.1", "0.4.0"])]).as_deref(), Some("0.4.0"));
        assert_eq!(negotiate(&[weir, l(&["0.2.0"])]), None);
        // Newer than weir writes: capped.
        assert_eq!(negotiate(&[l(&["1.1.0", "1.2.0"])]).as_deref(), Some("1.1.0"));
    }

    #[test]
    fn asks_the_reference_portmap_when_installed() {
        let Some(portmap) = find(&[PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")], "portmap") else {
            panic!("portmap not installed: run `cargo xtask setup` (containernetworking-plugins)");
        };
        let versions = query(&portmap).unwrap();
        assert!(versions.contains(&"1.0.0".to_string()), "{versions:?}");
    }
}
