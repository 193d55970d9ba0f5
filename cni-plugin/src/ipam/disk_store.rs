//! Reservations on disk, compatible in spirit with host-local:
//!
//! ```text
//! <dataDir>/ipam/<network>/10.244.1.7        "containerID\nifname"
//! <dataDir>/ipam/<network>/owner:<containerID>:<ifname> -> 10.244.1.7
//! <dataDir>/ipam/<network>/last_reserved_ip  round-robin cursor
//! <dataDir>/ipam/<network>/lock              flock()ed around every change
//! <dataDir>/ipam/<network>/ipv6/...          the same for IPv6 (fd00::7, ...)
//! ```
//!
//! A store holds one family; the IPv6 store's directory sits inside the
//! IPv4 one, where no listing of the IPv4 store takes it for a record.
//!
//! The `owner:` symlinks index the records by attachment, so an ADD, under
//! the lock, lists the directory and reads one link instead of every record
//! (at a hundred pods, reading them all was the longest hold of the lock).
//! The record stays the truth: a link is believed only when the record it
//! names holds the same attachment; DEL and GC read the records. Records of
//! versions before the index have no link: a second ADD of such an
//! attachment without DEL is then not refused here (the host veth, which
//! still exists, refuses it first).
//!
//! Writes are crash-safe: a record is written under a temporary name, then
//! hard-linked to its final name (atomic, and fails if the name exists), so
//! a reader never sees a half-written record; the cursor is replaced by
//! rename. Durability (fsync of the record and of the directory) is left to
//! `persist`, which runs after the lock is released: concurrent invocations
//! then wait for each other only for the few page-cache operations of the
//! allocation itself, and their disk flushes overlap. A crash before
//! `persist` returned can only lose a reservation whose ADD had not
//! succeeded yet, or leave an empty record, which keeps its address reserved
//! until GC. The cursor only orders the round robin and is never synced: a
//! lost or damaged cursor restarts it.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::{IpamError, Reservation, Store};
use crate::attachment::Attachment;

const LOCK_FILE: &str = "lock";
const CURSOR_FILE: &str = "last_reserved_ip";
const OWNER_PREFIX: &str = "owner:";

/// The index link of `owner`: neither container IDs nor interface names
/// contain `:` (see `attachment.rs`), so the name is unambiguous. `None`
/// when it would be longer than a file name may be.
fn owner_link(owner: &Attachment) -> Option<String> {
    let name = format!("{OWNER_PREFIX}{}:{}", owner.container_id, owner.ifname);
    (name.len() <= 255).then_some(name)
}

pub struct DiskStore {
    dir: PathBuf,
    /// What changed under the lock and `persist` still has to flush.
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// Records created since the last `persist`, still open.
    records: Vec<(PathBuf, File)>,
    /// Entries of the directory were added or removed.
    dir: bool,
    /// Files removed or replaced under the lock, held open so that freeing
    /// their blocks (which on a filesystem mounted with `discard` waits for
    /// the device) happens when `persist` closes them, not under the lock.
    doomed: Vec<File>,
}

impl DiskStore {
    /// Uses `dir`, creating it if needed.
    pub fn open(dir: &Path) -> Result<Self, IpamError> {
        fs::create_dir_all(dir).map_err(|source| IpamError::Store {
            path: dir.to_owned(),
            op: "create directory",
            source,
        })?;
        Ok(Self { dir: dir.to_owned(), pending: Mutex::default() })
    }

    fn err(&self, path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> IpamError + use<> {
        let path = path.to_owned();
        move |source| IpamError::Store { path, op, source }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `contents` to a temporary file next to `final_name` (not
    /// synced); the caller links or renames it into place.
    fn write_temp(&self, final_name: &str, contents: &[u8]) -> Result<(PathBuf, File), IpamError> {
        let tmp = self.dir.join(format!(".{final_name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(self.err(&tmp, "create"))?;
        file.write_all(contents).map_err(self.err(&tmp, "write"))?;
        Ok((tmp, file))
    }

    /// Points `owner`'s index link at `ip_name`, replacing a stale one.
    fn link_owner(&self, owner: &Attachment, ip_name: &str) -> Result<(), IpamError> {
        let Some(name) = owner_link(owner) else { return Ok(()) };
        let link = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(ip_name, &tmp).map_err(self.err(&tmp, "create owner link"))?;
        fs::rename(&tmp, &link).map_err(self.err(&link, "create owner link"))
    }

    /// Makes directory entry changes durable.
    fn sync_dir(&self) -> Result<(), IpamError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(self.err(&self.dir, "fsync directory"))
    }
}

/// Parses a record: `containerID`, newline, `ifname` (host-local writes
/// `\r\n`; tolerate it and trailing whitespace).
fn parse_record(contents: &str) -> Option<Attachment> {
    let mut lines = contents.lines().map(str::trim);
    let container_id = lines.next().filter(|s| !s.is_empty())?;
    let ifname = lines.next().filter(|s| !s.is_empty())?;
    Some(Attachment::new(container_id, ifname))
}

impl Store for DiskStore {
    fn locked<T>(&self, f: impl FnOnce(&Self) -> Result<T, IpamError>) -> Result<T, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(self.err(&path, "open lock file"))?;
        let mut file = file;
        // Blocks until no other weir-cni process holds the lock.
        let _lock = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => break lock,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => {
                    return Err(IpamError::Store { path, op: "flock", source: errno.into() });
                }
            }
        };
        f(self)
    }

    fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(self.err(&self.dir, "list"))? {
            let entry = entry.map_err(self.err(&self.dir, "list"))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let owner = match fs::read_to_string(&path) {
                Ok(contents) => parse_record(&contents),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(IpamError::Store { path, op: "read", source: e });
                }
            };
            if owner.is_none() {
                crate::log::warn(format_args!(
                    "IPAM record {} is unreadable; keeping {ip} reserved until GC",
                    path.display()
                ));
            }
            found.push(Reservation { ip, owner });
        }
        found.sort_by_key(|r| r.ip);
        Ok(found)
    }

    fn taken(&self) -> Result<HashSet<IpAddr>, IpamError> {
        let mut taken = HashSet::new();
        for entry in fs::read_dir(&self.dir).map_err(self.err(&self.dir, "list"))? {
            let entry = entry.map_err(self.err(&self.dir, "list"))?;
            taken.extend(entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()));
        }
        Ok(taken)
    }

    fn held_by(&self, owner: &Attachment) -> Result<Option<IpAddr>, IpamError> {
        let Some(name) = owner_link(owner) else {
            return Ok(self.reservations()?.into_iter().find(|r| r.owner.as_ref() == Some(owner)).map(|r| r.ip));
        };
        let link = self.dir.join(name);
        let target = match fs::read_link(&link) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IpamError::Store { path: link, op: "read link", source: e }),
        };
        let Some(ip) = target.to_str().and_then(|t| t.parse::<IpAddr>().ok()) else {
            return Ok(None);
        };
        match fs::read_to_string(self.dir.join(ip.to_string())) {
            Ok(record) if parse_record(&record).as_ref() == Some(owner) => Ok(Some(ip)),
            // A link left by a release or a crash: not a reservation.
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::Store { path: self.dir.join(ip.to_string()), op: "read", source: e }),
        }
    }

    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError> {
        let name = ip.to_string();
        let record = format!("{}\n{}", owner.container_id, owner.ifname);
        let (tmp, file) = self.write_temp(&name, record.as_bytes())?;
        let path = self.dir.join(&name);
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                let mut pending = self.pending();
                pending.records.push((path, file));
                pending.dir = true;
                drop(pending);
                self.link_owner(owner, &name)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::Store { path, op: "create reservation", source: e }),
        }
    }

    fn release(&self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        if let Some(link) = fs::read_to_string(&path).ok().and_then(|r| parse_record(&r)).and_then(|o| owner_link(&o)) {
            let link = self.dir.join(link);
            if fs::read_link(&link).is_ok_and(|t| t.as_os_str() == ip.to_string().as_str()) {
                fs::remove_file(&link).map_err(self.err(&link, "remove owner link"))?;
            }
        }
        let held = File::open(&path).ok();
        match fs::remove_file(&path) {
            Ok(()) => {
                let mut pending = self.pending();
                pending.dir = true;
                pending.doomed.extend(held);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IpamError::Store { path, op: "remove reservation", source: e }),
        }
    }

    fn last_reserved(&self) -> Result<Option<IpAddr>, IpamError> {
        let path = self.dir.join(CURSOR_FILE);
        match fs::read_to_string(&path) {
            // A damaged cursor only costs round-robin order: start over.
            Ok(contents) => Ok(contents.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IpamError::Store { path, op: "read", source: e }),
        }
    }

    fn set_last_reserved(&self, ip: IpAddr) -> Result<(), IpamError> {
        let (tmp, file) = self.write_temp(CURSOR_FILE, ip.to_string().as_bytes())?;
        drop(file);
        let path = self.dir.join(CURSOR_FILE);
        let old = File::open(&path).ok();
        fs::rename(&tmp, &path).map_err(self.err(&path, "replace cursor"))?;
        self.pending().doomed.extend(old);
        Ok(())
    }

    fn persist(&self) -> Result<(), IpamError> {
        let pending = std::mem::take(&mut *self.pending());
        for (path, file) in &pending.records {
            file.sync_data().map_err(self.err(path, "fsync"))?;
        }
        if pending.dir {
            self.sync_dir()?;
        }
        // Closing `pending.doomed` frees what the lock holders replaced.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        process::{Command, Stdio},
        sync::Arc,
        thread,
    };

    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::from([a, b, c, d])
    }
    use crate::ipam::{Allocator, PodRange};

    const CHILD_DIR_ENV: &str = "WEIR_CNI_TEST_IPAM_DIR";
    const CHILD_ID_ENV: &str = "WEIR_CNI_TEST_IPAM_CHILD";
    const PER_CHILD: usize = 5;

    fn allocator(dir: &Path) -> Allocator<DiskStore> {
        Allocator::new(PodRange::new("10.244.1.0/24".parse().unwrap()), DiskStore::open(dir).unwrap())
    }

    #[test]
    fn records_have_the_contract_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let a = allocator(tmp.path());
        let ip = a.allocate(&Attachment::new("abc", "eth0")).unwrap();
        assert_eq!(ip, v4(10, 244, 1, 2));
        assert_eq!(fs::read_to_string(tmp.path().join("10.244.1.2")).unwrap(), "abc\neth0");
        assert_eq!(fs::read_to_string(tmp.path().join("last_reserved_ip")).unwrap(), "10.244.1.2");
        assert!(tmp.path().join("lock").exists());
        // No temporary files left behind.
        let names: HashSet<String> =
            fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["10.244.1.2", "last_reserved_ip", "lock", "owner:abc:eth0"].map(String::from).into());
        assert_eq!(fs::read_link(tmp.path().join("owner:abc:eth0")).unwrap(), Path::new("10.244.1.2"));
    }

    /// The owner index: a second ADD is refused through it, a release
    /// removes it, and a link that does not match its record (left by a
    /// crash, or pointing at another attachment's record) is not believed.
    #[test]
    fn the_owner_index_follows_the_records() {
        let tmp = tempfile::tempdir().unwrap();
        let a = allocator(tmp.path());
        let (abc, def) = (Attachment::new("abc", "eth0"), Attachment::new("def", "eth0"));
        let ip = a.allocate(&abc).unwrap();
        assert!(matches!(a.allocate(&abc), Err(IpamError::AlreadyReserved { ip: held, .. }) if held == ip));
        a.release(&abc).unwrap();
        assert!(!tmp.path().join("owner:abc:eth0").exists(), "release removes the link");

        // def now holds some address; a stale link claims abc holds it.
        let def_ip = a.allocate(&def).unwrap();
        std::os::unix::fs::symlink(def_ip.to_string(), tmp.path().join("owner:abc:eth0")).unwrap();
        let again = a.allocate(&abc).expect("a link to another attachment's record is not a reservation");
        assert_ne!(again, def_ip);
        assert_eq!(fs::read_link(tmp.path().join("owner:abc:eth0")).unwrap(), Path::new(&again.to_string()));
        // A link to a record that is gone, likewise.
        a.release(&def).unwrap();
        std::os::unix::fs::symlink("10.244.1.200", tmp.path().join("owner:def:eth0")).unwrap();
        assert!(a.allocate(&def).is_ok());
    }

    /// Records written before the index (no link) still count as taken, and
    /// DEL still finds and releases them.
    #[test]
    fn records_without_a_link_are_taken_and_released() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("10.244.1.2"), "old\neth0").unwrap();
        let a = allocator(tmp.path());
        assert_eq!(a.allocate(&Attachment::new("new", "eth0")).unwrap(), v4(10, 244, 1, 3));
        assert_eq!(a.release(&Attachment::new("old", "eth0")).unwrap(), vec![v4(10, 244, 1, 2)]);
    }

    #[test]
    fn state_survives_reopening_and_release_deletes_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let owner = Attachment::new("abc", "eth0");
        let ip = allocator(tmp.path()).allocate(&owner).unwrap();
        let again = allocator(tmp.path());
        assert_eq!(again.lookup(&owner).unwrap(), Some(ip));
        // The cursor persisted too: the next pod does not get .2 back.
        again.release(&owner).unwrap();
        assert!(!tmp.path().join(ip.to_string()).exists());
        assert_eq!(again.allocate(&Attachment::new("def", "eth0")).unwrap(), v4(10, 244, 1, 3));
    }

    #[test]
    fn host_local_style_and_damaged_records() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("10.244.1.2"), "abc\r\neth0").unwrap();
        fs::write(tmp.path().join("10.244.1.3"), "").unwrap();
        fs::write(tmp.path().join("last_reserved_ip"), "garbage").unwrap();
        let a = allocator(tmp.path());
        assert_eq!(a.lookup(&Attachment::new("abc", "eth0")).unwrap(), Some(v4(10, 244, 1, 2)));
        // The unreadable record still blocks its address.
        assert_eq!(a.allocate(&Attachment::new("x", "eth0")).unwrap(), v4(10, 244, 1, 4));
        // GC with nothing valid removes both, unreadable included.
        let released = a.release_all_except(&HashSet::new()).unwrap();
        assert_eq!(released.len(), 3);
        assert!(released.iter().any(|r| r.owner.is_none()));
    }

    #[test]
    fn a_lease_is_visible_at_once_and_flushed_by_persist() {
        let tmp = tempfile::tempdir().unwrap();
        let a = allocator(tmp.path());
        let lease = a.lease(&Attachment::new("abc", "eth0")).unwrap();
        // Another process sees the reservation before it is flushed.
        let other = allocator(tmp.path());
        assert_eq!(other.allocate(&Attachment::new("def", "eth0")).unwrap(), v4(10, 244, 1, 3));
        assert_eq!(fs::read_to_string(tmp.path().join("10.244.1.2")).unwrap(), "abc\neth0");
        assert_eq!(a.store().pending().records.len(), 1);
        a.persist().unwrap();
        let pending = a.store().pending();
        assert!(pending.records.is_empty() && !pending.dir);
        drop(pending);
        assert_eq!(lease.keep(), v4(10, 244, 1, 2));
    }

    #[test]
    fn unwritable_store_reports_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let err = DiskStore::open(&file.join("ipam")).err().unwrap();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn concurrent_threads_get_distinct_addresses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(tmp.path().to_owned());
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let dir = dir.clone();
                // Each thread opens its own store (and lock file description),
                // as separate plugin processes would.
                thread::spawn(move || allocator(&dir).allocate(&Attachment::new(format!("t{i}"), "eth0")))
            })
            .collect();
        let ips: HashSet<IpAddr> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        assert_eq!(ips.len(), 50);
        assert_eq!(allocator(&dir).release_all_except(&HashSet::new()).unwrap().len(), 50);
    }

    /// Runs in two roles: as the test, it starts 10 copies of the test
    /// binary filtered to itself, with the store directory in the
    /// environment; as such a copy, it allocates and exits.
    #[test]
    fn concurrent_processes_get_distinct_addresses() {
        if let (Some(dir), Some(id)) = (std::env::var_os(CHILD_DIR_ENV), std::env::var_os(CHILD_ID_ENV)) {
            let id = id.into_string().unwrap();
            for n in 0..PER_CHILD {
                allocator(Path::new(&dir)).allocate(&Attachment::new(format!("p{id}-{n}"), "eth0")).unwrap();
            }
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        // Spawn every child before waiting on any, so they really race.
        let mut running: Vec<_> = (0..10)
            .map(|i| {
                Command::new(&exe)
                    .args(["--exact", "ipam::disk_store::tests::concurrent_processes_get_distinct_addresses"])
                    .args(["--test-threads", "1", "--quiet"])
                    .env(CHILD_DIR_ENV, tmp.path())
                    .env(CHILD_ID_ENV, i.to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in running.drain(..) {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "child failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let reservations = DiskStore::open(tmp.path()).unwrap().locked(|s| s.reservations()).unwrap();
        let owners: HashSet<_> = reservations.iter().map(|r| r.owner.clone().unwrap()).collect();
        let ips: HashSet<_> = reservations.iter().map(|r| r.ip).collect();
        assert_eq!(reservations.len(), 10 * PER_CHILD);
        assert_eq!(owners.len(), 10 * PER_CHILD);
        assert_eq!(ips.len(), 10 * PER_CHILD);
    }
}
