//! Run prefixes and the sweep that removes a run's leftovers.
//!
//! Everything a run creates is named after its prefix `w<6 hex digits>`:
//! network namespaces `<prefix>-*`, bpffs pin dirs `/sys/fs/bpf/<prefix>-*`,
//! the scratch dir `<tmp>/<prefix>-bed`. A run can therefore be removed knowing
//! only its prefix, whatever state it died in: guards call `sweep` on drop,
//! a Ctrl-C/SIGTERM handler sweeps every live run of the process, and a new
//! run sweeps the runs whose owning process is gone (SIGKILL, OOM) unless they
//! were kept on purpose (`cargo xtask sandbox --keep`).

use std::{
    collections::BTreeSet,
    fs,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, Once},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::exec;

/// Where each live run records its owner, so a later run can tell a dead
/// run's leftovers from a parallel run's live namespaces.
pub const MARKER_DIR: &str = "/run/weir-testbed";
pub const NETNS_DIR: &str = "/run/netns";
pub const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunPrefix(String);

impl RunPrefix {
    pub fn random() -> Self {
        let mut bytes = [0u8; 3];
        fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
        Self(format!("w{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2]))
    }

    /// Accepts only the shape `random` makes, so a typo in
    /// `sandbox --down` cannot match someone else's namespaces.
    pub fn parse(s: &str) -> Result<Self> {
        let ok = s.len() == 7
            && s.starts_with('w')
            && s[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            bail!("`{s}` is not a run prefix (expected `w` and 6 lowercase hex digits, e.g. wa1b2c3)");
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Name of a namespace, pin dir, etc. belonging to this run.
    pub fn child(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.0)
    }

    fn owns(&self, name: &str) -> bool {
        name.strip_prefix(self.0.as_str()).is_some_and(|rest| rest.starts_with('-'))
    }

    pub fn scratch_dir(&self) -> PathBuf {
        std::env::temp_dir().join(self.child("bed"))
    }
}

impl std::fmt::Display for RunPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner record in `MARKER_DIR/<prefix>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Marker {
    pub pid: u32,
    /// Start time of `pid` (clock ticks since boot): tells a reused pid apart.
    pub start_time: u64,
    pub kept: bool,
    /// What created the run, for listings (`sandbox`, a test name, ...).
    pub label: String,
}

impl Marker {
    fn owner_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

static LIVE: Mutex<BTreeSet<RunPrefix>> = Mutex::new(BTreeSet::new());
static HANDLER: Once = Once::new();

/// Records a new run: owner marker, in-process registry, signal handler. Also
/// sweeps runs left behind by processes that died without cleaning up.
pub fn register(prefix: &RunPrefix, label: &str) -> Result<()> {
    install_signal_handler();
    sweep_stale();
    fs::create_dir_all(MARKER_DIR).with_context(|| format!("create {MARKER_DIR}"))?;
    let me = std::process::id();
    let marker = Marker {
        pid: me,
        start_time: process_start_time(me).context("read own start time")?,
        kept: false,
        label: label.to_string(),
    };
    write_marker(prefix, &marker)?;
    LIVE.lock().unwrap().insert(prefix.clone());
    Ok(())
}

/// The run is left running on purpose: no stale sweep, no Ctrl-C sweep.
pub fn mark_kept(prefix: &RunPrefix) -> Result<()> {
    let mut marker = read_marker(prefix).context("the run has no owner marker")?;
    marker.kept = true;
    write_marker(prefix, &marker)?;
    LIVE.lock().unwrap().remove(prefix);
    Ok(())
}

fn write_marker(prefix: &RunPrefix, marker: &Marker) -> Result<()> {
    let path = Path::new(MARKER_DIR).join(prefix.as_str());
    fs::write(&path, serde_json::to_vec(marker)?).with_context(|| format!("write {}", path.display()))
}

fn read_marker(prefix: &RunPrefix) -> Option<Marker> {
    let bytes = fs::read(Path::new(MARKER_DIR).join(prefix.as_str())).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Runs recorded on this machine (live, kept, or dead and not yet swept).
pub fn list_runs() -> Vec<(RunPrefix, Marker)> {
    let Ok(entries) = fs::read_dir(MARKER_DIR) else {
        return Vec::new();
    };
    let mut runs: Vec<_> = entries
        .flatten()
        .filter_map(|e| RunPrefix::parse(&e.file_name().to_string_lossy()).ok())
        .filter_map(|p| read_marker(&p).map(|m| (p, m)))
        .collect();
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    runs
}

/// Sweeps runs whose owner process is gone and that were not kept.
pub fn sweep_stale() {
    for (prefix, marker) in list_runs() {
        if !marker.kept && !marker.owner_alive() {
            let report = sweep(&prefix);
            eprintln!("weir-testbed: removed leftovers of dead run {prefix} ({}): {report}", marker.label);
        }
    }
}

fn install_signal_handler() {
    HANDLER.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            let live: Vec<RunPrefix> = LIVE.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default();
            for prefix in live {
                let report = sweep(&prefix);
                eprintln!("\nweir-testbed: interrupted, removed run {prefix}: {report}");
            }
            std::process::exit(130);
        });
        if let Err(e) = installed {
            // Another handler owns the signals; the stale sweep of the next
            // run still removes what this one leaves.
            eprintln!("weir-testbed: no Ctrl-C cleanup for this process: {e}");
        }
    });
}

/// What a sweep removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub killed: usize,
    pub namespaces: usize,
    pub pin_dirs: usize,
    /// cgroup v2 directories (the services benchmark's socket-LB cgroup).
    pub cgroups: usize,
    pub scratch: bool,
    pub errors: Vec<String>,
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} processes killed, {} namespaces, {} pin dirs, scratch dir {}",
            self.killed,
            self.namespaces,
            self.pin_dirs,
            if self.scratch { "removed" } else { "absent" }
        )?;
        if self.cgroups > 0 {
            write!(f, ", {} cgroups", self.cgroups)?;
        }
        if !self.errors.is_empty() {
            write!(f, "; errors: {}", self.errors.join("; "))?;
        }
        Ok(())
    }
}

/// Removes everything named after `prefix`: kills the processes inside its
/// namespaces, deletes the namespaces, the bpffs pin dirs (which also detaches
/// the tcx links pinned there), the scratch dir and the owner marker.
pub fn sweep(prefix: &RunPrefix) -> SweepReport {
    let mut report = SweepReport::default();
    let namespaces = netns_names(prefix);
    for ns in &namespaces {
        report.killed += kill_processes_in(&Path::new(NETNS_DIR).join(ns));
    }
    for ns in &namespaces {
        match delete_netns(ns) {
            Ok(()) => report.namespaces += 1,
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for entry in entries.flatten() {
            if prefix.owns(&entry.file_name().to_string_lossy()) {
                match fs::remove_dir_all(entry.path()) {
                    Ok(()) => report.pin_dirs += 1,
                    Err(e) => report.errors.push(format!("remove {}: {e}", entry.path().display())),
                }
            }
        }
    }
    if let Some(Ok(entries)) = cgroup2_mount().map(fs::read_dir) {
        for entry in entries.flatten() {
            if prefix.owns(&entry.file_name().to_string_lossy()) {
                match remove_cgroup(&entry.path()) {
                    Ok(()) => report.cgroups += 1,
                    Err(e) => report.errors.push(format!("remove cgroup {}: {e}", entry.path().display())),
                }
            }
        }
    }
    let scratch = prefix.scratch_dir();
    if scratch.exists() {
        unmount_under(&scratch);
        match fs::remove_dir_all(&scratch) {
            Ok(()) => report.scratch = true,
            Err(e) => report.errors.push(format!("remove {}: {e}", scratch.display())),
        }
    }
    let _ = fs::remove_file(Path::new(MARKER_DIR).join(prefix.as_str()));
    LIVE.lock().map(|mut l| l.remove(prefix)).ok();
    report
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mounts_with_type(&info).into_iter().find(|(_, t)| t == "cgroup2").map(|(p, _)| p)
}

/// rmdir of a (leaf) cgroup, retried while processes killed just before
/// are still on their way out (EBUSY).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => return other,
        }
    }
}

/// The run's namespaces, found by name in /run/netns.
pub fn netns_names(prefix: &RunPrefix) -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| prefix.owns(n)).collect();
    names.sort();
    names
}

pub fn delete_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    exec::run(Command::new("ip").args(["netns", "delete", name]), exec::DEFAULT_TIMEOUT)?;
    Ok(())
}

/// SIGKILLs every process whose network namespace is the one bound at
/// `netns`; returns how many. These are processes the run started (agents,
/// servers, containerd) or their children.
pub fn kill_processes_in(netns: &Path) -> usize {
    let Ok(target) = fs::metadata(netns) else {
        return 0;
    };
    let me = std::process::id();
    let mut killed = 0;
    let Ok(procs) = fs::read_dir("/proc") else {
        return 0;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(ns) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if ns.dev() == target.dev() && ns.ino() == target.ino() {
            // SAFETY: kill with a pid and a signal number.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

/// Lazily unmounts whatever is mounted below `dir` (deepest first), so the
/// directory can be removed (containerd's rootfs mounts, a stray bind mount).
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = parse_mount_points(&info).into_iter().filter(|p| p.starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Mount points (field 5) of /proc/self/mountinfo, with octal escapes decoded.
pub fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(|p| PathBuf::from(unescape_octal(p))).collect()
}

/// Filesystem type of each mount point in /proc/self/mountinfo.
pub fn parse_mounts_with_type(mountinfo: &str) -> Vec<(PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            let (_, after) = l.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            Some((PathBuf::from(unescape_octal(point)), fstype.to_string()))
        })
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Start time of a live process in clock ticks since boot (field 22 of
/// /proc/<pid>/stat), or None when there is no such process or it is a
/// zombie (killed, not reaped yet: as dead as it gets).
pub fn process_start_time(pid: u32) -> Option<u64> {
    parse_stat_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_strict() {
        let p = RunPrefix::random();
        assert_eq!(RunPrefix::parse(p.as_str()).unwrap(), p);
        for bad in ["", "w12345", "w1234567", "x123456", "w12345G", "wsmk103", "w../../"] {
            assert!(RunPrefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prefix_owns_only_its_dash_children() {
        let p = RunPrefix::parse("wabc123").unwrap();
        assert!(p.owns("wabc123-n1"));
        assert!(p.owns("wabc123-n1-pod"));
        assert!(!p.owns("wabc1234-n1"));
        assert!(!p.owns("wabc123"));
        assert!(!p.owns("xwabc123-n1"));
    }

    #[test]
    fn stat_start_time_skips_a_comm_with_spaces() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat_start_time(stat), Some(987654));
        let zombie = stat.replace(") S ", ") Z ");
        assert_eq!(parse_stat_start_time(&zombie), None, "a zombie owner counts as dead");
        assert!(process_start_time(std::process::id()).is_some());
    }

    #[test]
    fn mountinfo_points_and_types() {
        let info = "22 1 0:21 / /sys/fs/bpf rw,relatime shared:7 - bpf bpf rw\n\
                    30 22 8:1 / /tmp/with\\040space rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            parse_mounts_with_type(info),
            vec![(PathBuf::from("/sys/fs/bpf"), "bpf".into()), (PathBuf::from("/tmp/with space"), "ext4".into())]
        );
        assert_eq!(parse_mount_points(info)[1], PathBuf::from("/tmp/with space"));
    }
}
