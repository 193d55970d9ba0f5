//! Where connect-time Service load balancing attaches: the node's cgroup v2
//! root. Hosts differ: on a unified host `/sys/fs/cgroup` is cgroup2; on a
//! hybrid (cgroup v1) host it is a tmpfs holding the v1 hierarchies, with
//! cgroup2 at `/sys/fs/cgroup/unified`; a legacy host may have no cgroup2
//! mount at all, though the kernel always has the hierarchy (every socket
//! belongs to a cgroup v2 cgroup, the root one when nothing uses v2).
//!
//! In order, the first that is cgroup2 wins:
//! 1. the configured path (`--socket-lb-cgroup`), which must exist: a
//!    wrong path is a configuration error, not a reason to go looking;
//! 2. `<configured>/unified` (hybrid host);
//! 3. a cgroup2 mount of the whole hierarchy (root `/`) in our mountinfo;
//! 4. `<run_dir>/cgroupv2`, mounted there if it is not already (as Cilium
//!    does under /run/cilium/cgroupv2).
//!
//! A cgroup2 mount's root is relative to the cgroup namespace of whoever
//! mounted it: 3 and 4 reach the node's root cgroup only when the agent
//! runs in the host's cgroup namespace (the runtimes' default on cgroup v1
//! hosts, the only ones that get that far). 1 and 2 go through a bind of
//! the host's hierarchy, whatever the namespace.
use std::{
    fmt, io,
    path::{Path, PathBuf},
};

/// The directory under the run dir where the agent mounts cgroup2 itself.
pub const MOUNT_DIR: &str = "cgroupv2";

/// How the cgroup2 root was found (step 1 to 4 above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Configured,
    Unified,
    Mountinfo,
    /// Our own mount under the run dir, already there (an earlier agent).
    Reused,
    /// Mounted by us just now, under the run dir.
    Mounted,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Found::Configured => "the configured path is cgroup v2",
            Found::Unified => "the configured path is not cgroup v2 (a hybrid cgroup v1 host); its unified/ is",
            Found::Mountinfo => {
                "neither the configured path nor its unified/ is cgroup v2; this is a cgroup v2 mount of the whole hierarchy"
            }
            Found::Reused => "no cgroup v2 mount at the configured path; reusing the agent's own mount",
            Found::Mounted => "no cgroup v2 mount anywhere (a cgroup v1 host); mounted one",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Root {
    pub path: PathBuf,
    pub found: Found,
}

#[derive(Debug, thiserror::Error)]
pub enum Cgroup2Error {
    #[error("{path} does not exist (--socket-lb-cgroup): {source}")]
    Missing { path: String, source: io::Error },
    #[error(
        "no cgroup v2 at {configured} or its unified/, none mounted, and mounting one at {target} failed: {source}"
    )]
    Mount { configured: String, target: String, source: io::Error },
    #[error("mounted cgroup2 at {target}, but it does not read back as cgroup v2")]
    NotAfterMount { target: String },
}

/// What the decision needs from the machine (a seam for unit tests).
pub trait CgroupFs {
    fn exists(&self, path: &Path) -> io::Result<()>;
    /// Whether `path` is on a cgroup2 filesystem (statfs magic).
    fn is_cgroup2(&self, path: &Path) -> bool;
    /// The text of our mountinfo.
    fn mountinfo(&self) -> io::Result<String>;
    /// Creates `target` if needed and mounts cgroup2 on it.
    fn mount_cgroup2(&self, target: &Path) -> io::Result<()>;
}

/// The real machine, as seen by the calling thread.
pub struct HostFs;

impl CgroupFs for HostFs {
    fn exists(&self, path: &Path) -> io::Result<()> {
        std::fs::metadata(path).map(|_| ())
    }

    fn is_cgroup2(&self, path: &Path) -> bool {
        use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
        statfs(path).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
    }

    fn mountinfo(&self) -> io::Result<String> {
        // thread-self: the mount namespace of this thread (a test may have
        // unshared one), not the process leader's.
        std::fs::read_to_string("/proc/thread-self/mountinfo")
    }

    fn mount_cgroup2(&self, target: &Path) -> io::Result<()> {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(target)?;
        mount(
            Some("cgroup2"),
            target,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(io::Error::from)
    }
}

/// Mount points of cgroup2 mounts that show the whole hierarchy (root `/`),
/// in mountinfo order.
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let fstype = right.split(' ').next()?;
            let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
            (fstype == "cgroup2" && *root == "/").then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
            && let Ok(v) = u8::from_str_radix(&field[i + 1..=i + 3], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 root to attach to (see the module doc for the order).
pub fn resolve(configured: &Path, run_dir: &Path, fs: &dyn CgroupFs) -> Result<Cgroup2Root, Cgroup2Error> {
    let found = |path: PathBuf, found| Ok(Cgroup2Root { path, found });
    fs.exists(configured).map_err(|source| Cgroup2Error::Missing { path: configured.display().to_string(), source })?;
    if fs.is_cgroup2(configured) {
        return found(configured.to_path_buf(), Found::Configured);
    }
    let unified = configured.join("unified");
    if fs.is_cgroup2(&unified) {
        return found(unified, Found::Unified);
    }
    let target = run_dir.join(MOUNT_DIR);
    // Unreadable mountinfo: as if it listed nothing; mounting is next.
    let mounts = fs.mountinfo().map(|t| parse_mountinfo(&t)).unwrap_or_default();
    if let Some(path) = mounts.into_iter().find(|p| fs.is_cgroup2(p)) {
        let how = if path == target { Found::Reused } else { Found::Mountinfo };
        return found(path, how);
    }
    if fs.is_cgroup2(&target) {
        return found(target, Found::Reused);
    }
    fs.mount_cgroup2(&target).map_err(|source| Cgroup2Error::Mount {
        configured: configured.display().to_string(),
        target: target.display().to_string(),
        source,
    })?;
    if !fs.is_cgroup2(&target) {
        return Err(Cgroup2Error::NotAfterMount { target: target.display().to_string() });
    }
    found(target, Found::Mounted)
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::BTreeSet};

    use super::*;

    /// /proc/self/mountinfo of a hybrid host (cgroup v1 hierarchies on a
    /// tmpfs at /sys/fs/cgroup, cgroup2 at /sys/fs/cgroup/unified): the
    /// machine these tests were written on, plus systemd's usual options.
    const HYBRID: &str = "\
22 27 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
31 22 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:15 - cgroup2 cgroup2 rw,nsdelegate
45 22 0:40 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700
";

    /// A unified host (Debian 12), plus a container runtime's bind of one
    /// pod's cgroup (root not `/`: not the whole hierarchy) and a mount
    /// point with a space in it.
    const UNIFIED: &str = "\
22 27 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
27 1 254:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 22 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
912 27 0:26 /kubepods.slice/kubepods-pod1.slice /run/containerd/x/rootfs/sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
913 27 0:26 / /mnt/my\\040cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_lists_whole_hierarchy_cgroup2_mounts_only() {
        assert_eq!(parse_mountinfo(HYBRID), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        assert_eq!(parse_mountinfo(UNIFIED), vec![PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/mnt/my cgroup")]);
        assert!(parse_mountinfo("").is_empty());
        assert!(parse_mountinfo("garbage\n1 2 3\n").is_empty());
        // Optional fields of any number before the separator.
        let tagged = "41 31 0:38 / /cg rw shared:15 master:3 propagate_from:2 - cgroup2 cgroup2 rw";
        assert_eq!(parse_mountinfo(tagged), vec![PathBuf::from("/cg")]);
    }

    /// A machine described by its cgroup2 paths and mountinfo; mounts are
    /// recorded and make their target cgroup2.
    struct Fake {
        dirs: BTreeSet<PathBuf>,
        cgroup2: RefCell<BTreeSet<PathBuf>>,
        mountinfo: Option<&'static str>,
        mount_fails: bool,
        mounted: RefCell<Vec<PathBuf>>,
    }

    impl Fake {
        fn new(dirs: &[&str], cgroup2: &[&str], mountinfo: Option<&'static str>) -> Self {
            Fake {
                dirs: dirs.iter().map(PathBuf::from).collect(),
                cgroup2: RefCell::new(cgroup2.iter().map(PathBuf::from).collect()),
                mountinfo,
                mount_fails: false,
                mounted: RefCell::default(),
            }
        }
    }

    impl CgroupFs for Fake {
        fn exists(&self, path: &Path) -> io::Result<()> {
            if self.dirs.contains(path) || self.cgroup2.borrow().contains(path) {
                Ok(())
            } else {
                Err(io::ErrorKind::NotFound.into())
            }
        }
        fn is_cgroup2(&self, path: &Path) -> bool {
            self.cgroup2.borrow().contains(path)
        }
        fn mountinfo(&self) -> io::Result<String> {
            self.mountinfo.map(str::to_string).ok_or_else(|| io::ErrorKind::PermissionDenied.into())
        }
        fn mount_cgroup2(&self, target: &Path) -> io::Result<()> {
            if self.mount_fails {
                return Err(io::ErrorKind::PermissionDenied.into());
            }
            self.mounted.borrow_mut().push(target.to_path_buf());
            self.cgroup2.borrow_mut().insert(target.to_path_buf());
            Ok(())
        }
    }

    fn root(path: &str, found: Found) -> Cgroup2Root {
        Cgroup2Root { path: path.into(), found }
    }

    const RUN: &str = "/run/weir";

    #[test]
    fn a_unified_host_uses_the_configured_path() {
        let fs = Fake::new(&[], &["/sys/fs/cgroup"], Some(UNIFIED));
        assert_eq!(
            resolve(Path::new("/sys/fs/cgroup"), Path::new(RUN), &fs).unwrap(),
            root("/sys/fs/cgroup", Found::Configured)
        );
        // A cgroup below the root (the test bed's private ones) is as good.
        let fs = Fake::new(&[], &["/sys/fs/cgroup/unified/t1"], Some(HYBRID));
        let got = resolve(Path::new("/sys/fs/cgroup/unified/t1"), Path::new(RUN), &fs).unwrap();
        assert_eq!(got, root("/sys/fs/cgroup/unified/t1", Found::Configured));
        assert!(fs.mounted.borrow().is_empty());
    }

    #[test]
    fn a_hybrid_host_uses_unified_below_the_configured_path() {
        // The DaemonSet's view: the host's /sys/fs/cgroup (a tmpfs) bound
        // at /run/weir/cgroupv2, its submounts with it.
        let fs =
            Fake::new(&["/run/weir/cgroupv2"], &["/run/weir/cgroupv2/unified", "/sys/fs/cgroup/unified"], Some(HYBRID));
        let got = resolve(Path::new("/run/weir/cgroupv2"), Path::new(RUN), &fs).unwrap();
        assert_eq!(got, root("/run/weir/cgroupv2/unified", Found::Unified));
        assert!(fs.mounted.borrow().is_empty());
    }

    #[test]
    fn otherwise_a_whole_hierarchy_mount_from_mountinfo() {
        let fs = Fake::new(&["/host/cgroup"], &["/sys/fs/cgroup/unified"], Some(HYBRID));
        let got = resolve(Path::new("/host/cgroup"), Path::new(RUN), &fs).unwrap();
        assert_eq!(got, root("/sys/fs/cgroup/unified", Found::Mountinfo));
        // A listed mount that does not read as cgroup2 (gone since) is skipped.
        let fs = Fake::new(&["/host/cgroup"], &["/mnt/my cgroup"], Some(UNIFIED));
        let got = resolve(Path::new("/host/cgroup"), Path::new(RUN), &fs).unwrap();
        assert_eq!(got, root("/mnt/my cgroup", Found::Mountinfo));
        assert!(fs.mounted.borrow().is_empty());
    }

    #[test]
    fn a_legacy_host_gets_our_own_mount_once() {
        let legacy = "27 1 254:0 / / rw - ext4 /dev/vda rw\n31 22 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n";
        let fs = Fake::new(&["/sys/fs/cgroup"], &[], Some(legacy));
        let got = resolve(Path::new("/sys/fs/cgroup"), Path::new(RUN), &fs).unwrap();
        assert_eq!(got, root("/run/weir/cgroupv2", Found::Mounted));
        assert_eq!(*fs.mounted.borrow(), vec![PathBuf::from("/run/weir/cgroupv2")]);
        // The next agent finds it (in mountinfo, or, unreadable, by statfs).
        let again = Fake::new(
            &["/sys/fs/cgroup"],
            &["/run/weir/cgroupv2"],
            Some("50 27 0:38 / /run/weir/cgroupv2 rw - cgroup2 cgroup2 rw\n"),
        );
        assert_eq!(
            resolve(Path::new("/sys/fs/cgroup"), Path::new(RUN), &again).unwrap(),
            root("/run/weir/cgroupv2", Found::Reused)
        );
        let again = Fake::new(&["/sys/fs/cgroup"], &["/run/weir/cgroupv2"], None);
        assert_eq!(
            resolve(Path::new("/sys/fs/cgroup"), Path::new(RUN), &again).unwrap(),
            root("/run/weir/cgroupv2", Found::Reused)
        );
        assert!(again.mounted.borrow().is_empty());
    }

    #[test]
    fn failures_say_what_was_tried() {
        let fs = Fake::new(&[], &["/sys/fs/cgroup/unified"], Some(HYBRID));
        let e = resolve(Path::new("/nope"), Path::new(RUN), &fs).unwrap_err();
        assert!(matches!(e, Cgroup2Error::Missing { .. }), "a wrong path is not a reason to look elsewhere: {e}");
        let mut fs = Fake::new(&["/sys/fs/cgroup"], &[], None);
        fs.mount_fails = true;
        let e = resolve(Path::new("/sys/fs/cgroup"), Path::new(RUN), &fs).unwrap_err().to_string();
        assert!(e.contains("/sys/fs/cgroup") && e.contains("/run/weir/cgroupv2") && e.contains("mounting"), "{e}");
    }

    /// In a private mount namespace (this thread's own): a tmpfs standing
    /// for a hybrid host's /sys/fs/cgroup, cgroup2 mounted at its unified/;
    /// the resolver picks unified/. Then, with mountinfo hidden and no
    /// unified/, it mounts cgroup2 under the run dir, and reuses it.
    #[test]
    #[ignore = "privileged: needs root (mount namespaces, cgroup2 mounts); `cargo xtask test` runs it as root"]
    fn in_a_private_mount_namespace_the_resolver_finds_and_mounts_cgroup2() {
        use nix::{
            mount::{MntFlags, MsFlags, mount, umount2},
            sched::{CloneFlags, unshare},
        };
        /// HostFs with nothing in mountinfo.
        struct NoMountinfo;
        impl CgroupFs for NoMountinfo {
            fn exists(&self, p: &Path) -> io::Result<()> {
                HostFs.exists(p)
            }
            fn is_cgroup2(&self, p: &Path) -> bool {
                HostFs.is_cgroup2(p)
            }
            fn mountinfo(&self) -> io::Result<String> {
                Ok(String::new())
            }
            fn mount_cgroup2(&self, t: &Path) -> io::Result<()> {
                HostFs.mount_cgroup2(t)
            }
        }

        let tmp = tempfile::tempdir().unwrap();
        let (fake_root, run, other) = (tmp.path().join("cgroup"), tmp.path().join("run"), tmp.path().join("v1"));
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            // A thread may unshare its mount namespace (it gets its own
            // fs_struct); the namespace goes with the thread.
            unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| e.to_string())?;
            for d in [&fake_root, &run, &other] {
                std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
            }
            mount(Some("tmpfs"), &fake_root, Some("tmpfs"), MsFlags::empty(), Some("mode=755"))
                .map_err(|e| e.to_string())?;
            let unified = fake_root.join("unified");
            std::fs::create_dir(&unified).map_err(|e| e.to_string())?;
            HostFs.mount_cgroup2(&unified).map_err(|e| format!("mounting cgroup2: {e}"))?;
            let got = resolve(&fake_root, &run, &HostFs).map_err(|e| e.to_string())?;
            if got != (Cgroup2Root { path: unified.clone(), found: Found::Unified }) {
                return Err(format!("hybrid: {got:?}"));
            }
            // Found in this thread's mountinfo, not the process's.
            if !parse_mountinfo(&HostFs.mountinfo().map_err(|e| e.to_string())?).contains(&unified) {
                return Err("the thread's mountinfo does not list the private mount".into());
            }

            // A legacy host: nothing cgroup2 anywhere we look.
            mount(Some("tmpfs"), &other, Some("tmpfs"), MsFlags::empty(), None::<&str>).map_err(|e| e.to_string())?;
            let got = resolve(&other, &run, &NoMountinfo).map_err(|e| e.to_string())?;
            let ours = run.join(MOUNT_DIR);
            if got != (Cgroup2Root { path: ours.clone(), found: Found::Mounted }) {
                return Err(format!("legacy: {got:?}"));
            }
            let again = resolve(&other, &run, &NoMountinfo).map_err(|e| e.to_string())?;
            if again != (Cgroup2Root { path: ours.clone(), found: Found::Reused }) {
                return Err(format!("legacy, second agent: {again:?}"));
            }
            for m in [&ours, &other, &unified, &fake_root] {
                let _ = umount2(m.as_path(), MntFlags::MNT_DETACH);
            }
            Ok(())
        })
        .join()
        .unwrap();
        outcome.unwrap();
    }
}
