//! The pinned BPF objects weir-cni wires each pod into (docs/contracts.md):
//! the endpoint map entry for the pod's host veth, `weir_from_pod` on that
//! veth's tc ingress and `weir_to_pod` on its tc egress, each a cls_bpf
//! filter that lives with the veth.

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData};
use weir_common::{EndpointInfo, EndpointKey, pin};

use crate::netlink::{NetlinkSocket, link::Link, tc::Direction};

#[derive(Debug, thiserror::Error)]
#[error("{op}: {reason}")]
pub struct DatapathError {
    pub op: String,
    pub reason: String,
}

impl DatapathError {
    /// `reason` is the error with its whole source chain: aya's syscall
    /// errors only name the call, the errno is in the source.
    fn new(op: impl Into<String>, reason: impl std::error::Error) -> Self {
        let mut text = reason.to_string();
        let mut source = reason.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Self { op: op.into(), reason: text }
    }
}

/// Paths under the configured `bpfPinDir`.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    pub fn endpoints_map(&self) -> PathBuf {
        self.map_path(pin::MAP_ENDPOINTS)
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join(pin::MAPS_DIR).join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.root.join(pin::PROGS_DIR).join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join(pin::LINKS_DIR)
    }

    /// The tcx link pins a pod got from weir versions before cls_bpf:
    /// ingress (`_in`) and egress (`_out`). The agent migrates them at
    /// start; DEL and GC remove any left.
    pub fn link_pins(&self, host_veth: &str) -> [PathBuf; 2] {
        [
            self.links_dir().join(format!("{host_veth}{}", pin::LINK_SUFFIX_FROM_POD)),
            self.links_dir().join(format!("{host_veth}{}", pin::LINK_SUFFIX_TO_POD)),
        ]
    }

    /// The host veth a link pin belongs to.
    pub fn host_veth_of_pin(pin_name: &str) -> Option<&str> {
        pin_name.strip_suffix(pin::LINK_SUFFIX_FROM_POD).or_else(|| pin_name.strip_suffix(pin::LINK_SUFFIX_TO_POD))
    }

    /// The first of the agent's pins that is missing, if any: ADD cannot wire
    /// a pod into a datapath that is not loaded yet.
    pub fn first_missing(&self) -> Result<Option<PathBuf>, DatapathError> {
        for path in [self.endpoints_map(), self.program(pin::PROG_FROM_POD), self.program(pin::PROG_TO_POD)] {
            match path.try_exists() {
                Ok(true) => {}
                Ok(false) => return Ok(Some(path)),
                Err(e) => return Err(DatapathError::new(format!("stat {}", path.display()), e)),
            }
        }
        Ok(None)
    }

    pub fn endpoints_map_exists(&self) -> bool {
        self.endpoints_map().exists()
    }
}

/// The pinned `WEIR_ENDPOINTS` hash map, and beside it `WEIR_ENDPOINTS6`
/// (a pod's IPv6 address) where the agent has created it.
pub struct EndpointMap {
    map: HashMap<MapData, EndpointKey, EndpointInfo>,
    ipv6: Option<HashMap<MapData, EndpointKey, [u8; 16]>>,
}

impl EndpointMap {
    pub fn open(pins: &Pins) -> Result<Self, DatapathError> {
        let path = pins.endpoints_map();
        let op = || format!("open endpoint map {}", path.display());
        let data = MapData::from_pin(&path).map_err(|e| DatapathError::new(op(), e))?;
        let map = Map::from_map_data(data).map_err(|e| DatapathError::new(op(), e))?;
        let map = HashMap::try_from(map).map_err(|e| DatapathError::new(op(), e))?;
        // An agent older than the map has no IPv6 source check to feed.
        let path6 = pins.map_path(pin::MAP_ENDPOINTS6);
        let ipv6 = if path6.exists() {
            let op = || format!("open endpoint map {}", path6.display());
            let data = MapData::from_pin(&path6).map_err(|e| DatapathError::new(op(), e))?;
            let map = Map::from_map_data(data).map_err(|e| DatapathError::new(op(), e))?;
            Some(HashMap::try_from(map).map_err(|e| DatapathError::new(op(), e))?)
        } else {
            None
        };
        Ok(Self { map, ipv6 })
    }

    /// Records the IPv6 address the pod behind `ifindex` may send from, or
    /// that it has none (an earlier pod on the same ifindex may have left
    /// its own). Written before the pod's entry in `WEIR_ENDPOINTS`, which
    /// lets its packets through.
    pub fn set_ipv6(&mut self, ifindex: u32, ip: Option<Ipv6Addr>) -> Result<(), DatapathError> {
        let Some(map) = &mut self.ipv6 else { return Ok(()) };
        let key = EndpointKey { ifindex };
        match ip {
            Some(ip) => map
                .insert(key, ip.octets(), 0)
                .map_err(|e| DatapathError::new(format!("insert endpoint ifindex {ifindex} -> {ip}"), e)),
            None => match map.remove(&key) {
                Ok(()) => Ok(()),
                Err(e) if is_missing(&e) => Ok(()),
                Err(e) => Err(DatapathError::new(format!("remove IPv6 of endpoint ifindex {ifindex}"), e)),
            },
        }
    }

    /// The IPv6 address recorded for `ifindex` (None: none, or no map).
    pub fn ipv6(&self, ifindex: u32) -> Result<Option<Ipv6Addr>, DatapathError> {
        let Some(map) = &self.ipv6 else { return Ok(None) };
        match map.get(&EndpointKey { ifindex }, 0) {
            Ok(octets) => Ok(Some(Ipv6Addr::from(octets))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::new(format!("look up IPv6 of endpoint ifindex {ifindex}"), e)),
        }
    }

    /// `policy_pending`: the pod passes nothing but ARP until the agent has
    /// put its NetworkPolicy in place (see `policy_handoff`).
    pub fn insert(&mut self, ifindex: u32, ip: Ipv4Addr, policy_pending: bool) -> Result<(), DatapathError> {
        let pending = if policy_pending { EndpointInfo::FLAG_POLICY_PENDING } else { 0 };
        let value = EndpointInfo::new(ip.octets(), EndpointInfo::FLAG_VERIFY_SOURCE | pending);
        self.map
            .insert(EndpointKey { ifindex }, value, 0)
            .map_err(|e| DatapathError::new(format!("insert endpoint ifindex {ifindex} -> {ip}"), e))
    }

    pub fn get(&self, ifindex: u32) -> Result<Option<EndpointInfo>, DatapathError> {
        match self.map.get(&EndpointKey { ifindex }, 0) {
            Ok(info) => Ok(Some(info)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::new(format!("look up endpoint ifindex {ifindex}"), e)),
        }
    }

    /// Removes the entry of `ifindex` (and its IPv6 address); `Ok(false)`
    /// when there was none.
    pub fn remove(&mut self, ifindex: u32) -> Result<bool, DatapathError> {
        self.set_ipv6(ifindex, None)?;
        match self.map.remove(&EndpointKey { ifindex }) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(DatapathError::new(format!("remove endpoint ifindex {ifindex}"), e)),
        }
    }

    pub fn entries(&self) -> Result<Vec<(u32, Ipv4Addr)>, DatapathError> {
        self.map
            .iter()
            .map(|entry| {
                entry
                    .map(|(key, info)| (key.ifindex, Ipv4Addr::from(info.ipv4_octets())))
                    .map_err(|e| DatapathError::new("list endpoint map", e))
            })
            .collect()
    }

    /// Removes every entry for `ip`, whatever its ifindex: after a host veth
    /// is gone its ifindex is unknown, but the address still identifies the
    /// pod's entry while the address is reserved.
    pub fn remove_ip(&mut self, ip: Ipv4Addr) -> Result<usize, DatapathError> {
        let stale: Vec<u32> = self.entries()?.into_iter().filter(|(_, v)| *v == ip).map(|(k, _)| k).collect();
        for ifindex in &stale {
            self.remove(*ifindex)?;
        }
        Ok(stale.len())
    }
}

/// A lookup or delete of a key the map does not hold: aya reports a
/// lookup's as `KeyNotFound` but a delete's as the syscall's ENOENT.
fn is_missing(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Attaches `weir_from_pod` (tc ingress: what the pod sends) and
/// `weir_to_pod` (tc egress: what it receives) to the host veth `link` as
/// direct-action cls_bpf filters under its clsact qdisc, at the priority and
/// handle of the contract (`pin::POD_FILTER_*`). The filters live as long as
/// the veth: nothing to pin, nothing for DEL to detach.
///
/// This talks to the kernel directly (get the pinned program, one netlink
/// request per filter) rather than through aya, whose first program handle
/// runs a dozen feature probes (BTF and program loads) that weir-cni has no
/// use for. No step waits for an RCU grace period, unlike tcx links.
///
/// An agent starting meanwhile pins new programs and then moves every pod
/// in the endpoint map to them (this pod's entry is written before this
/// call); if it re-pinned after we opened the old program, we would attach
/// a program about to be replaced, so the attachment is checked against
/// the pins afterwards and redone with the new programs when they changed.
pub fn attach_programs(pins: &Pins, host: &mut NetlinkSocket, link: &Link) -> Result<(), DatapathError> {
    let op = |what: &str| format!("{what} {} on {}", pins.root.join(pin::PROGS_DIR).display(), link.name);
    host.add_clsact(link).map_err(|e| DatapathError::new(op("add clsact for"), e))?;
    // Twice at most: a second agent start within one ADD is not a thing.
    for _ in 0..2 {
        let mut attached = Vec::with_capacity(POD_PROGRAMS.len());
        for (name, direction) in POD_PROGRAMS {
            let path = pins.program(name);
            let prog = sys::obj_get(&path).map_err(|e| DatapathError::new(format!("open {}", path.display()), e))?;
            host.attach_bpf_filter(
                link,
                direction,
                pin::POD_FILTER_PRIORITY,
                pin::POD_FILTER_HANDLE,
                prog.as_fd(),
                name,
            )
            .map_err(|e| DatapathError::new(op("attach"), e))?;
            attached.push((name, sys::prog_id(prog.as_fd()).map_err(|e| DatapathError::new(op("read id of"), e))?));
        }
        let mut current = true;
        for (name, id) in attached {
            current &= pinned_prog_id(pins, name)? == id;
        }
        if current {
            break;
        }
    }
    Ok(())
}

/// The pod programs and where each runs on the host veth.
const POD_PROGRAMS: [(&str, Direction); 2] =
    [(pin::PROG_FROM_POD, Direction::Ingress), (pin::PROG_TO_POD, Direction::Egress)];

/// The kernel's ID of the program pinned as `name`.
pub fn pinned_prog_id(pins: &Pins, name: &str) -> Result<u32, DatapathError> {
    let path = pins.program(name);
    let op = || format!("read id of {}", path.display());
    let prog = sys::obj_get(&path).map_err(|e| DatapathError::new(op(), e))?;
    sys::prog_id(prog.as_fd()).map_err(|e| DatapathError::new(op(), e))
}

/// What CHECK verifies on the host veth: on each side, our filter, running
/// the program pinned now. Returns the problems found.
pub fn check_programs(pins: &Pins, host: &mut NetlinkSocket, link: &Link) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, direction) in POD_PROGRAMS {
        let want = match pinned_prog_id(pins, name) {
            Ok(id) => id,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let filters = match host.bpf_filters(link, direction) {
            Ok(filters) => filters,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let ours =
            filters.iter().find(|f| f.priority == pin::POD_FILTER_PRIORITY && f.handle == pin::POD_FILTER_HANDLE);
        match ours {
            None => problems.push(format!(
                "{} {direction:?} has no cls_bpf filter at prio {} handle {}: {name} is not attached",
                link.name,
                pin::POD_FILTER_PRIORITY,
                pin::POD_FILTER_HANDLE
            )),
            Some(f) if f.prog_id != Some(want) || !f.direct_action => problems.push(format!(
                "{} {direction:?} runs program {:?} (direct action: {}), not {name} (id {want})",
                link.name, f.prog_id, f.direct_action
            )),
            Some(_) => {}
        }
    }
    problems
}

/// The few bpf(2) commands ADD needs, without a library in between.
mod sys {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
            unix::ffi::OsStrExt,
        },
        path::Path,
    };

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

    /// `union bpf_attr`, as zeroed 8-byte words: the kernel accepts any size
    /// up to a page as long as what it does not know is zero.
    type Attr = [u64; 16];

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size
        // passed; the kernel reads (and for some commands writes) only it
        // and the buffers it points to, which outlive the call.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of::<Attr>() as libc::c_uint)
        };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
    }

    fn path_cstring(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// `BPF_OBJ_GET`: the object pinned at `path`.
    pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
        let path = path_cstring(path)?;
        let mut attr = Attr::default();
        attr[0] = path.as_ptr() as u64; // pathname
        // bpf_fd = 0, file_flags = 0 (read-write)
        // SAFETY: the kernel just returned this fd to us and nobody else owns it.
        bpf(BPF_OBJ_GET, &mut attr).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// `BPF_OBJ_GET_INFO_BY_FD` on a program: its ID (the second field of
    /// `struct bpf_prog_info`; the kernel fills only as much as asked).
    pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
        let mut info = [0u32; 2]; // type, id
        let mut attr = Attr::default();
        // bpf_fd, info_len; info
        attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(std::mem::size_of_val(&info) as u32) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info[1])
    }
}

/// Removes a pin (a tcx link pin detaches its program); `Ok(false)` if there
/// was none.
pub fn remove_pin(path: &Path) -> Result<bool, DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DatapathError::new(format!("remove {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_paths_follow_the_contract() {
        let pins = Pins::new(Path::new("/sys/fs/bpf/weir"));
        assert_eq!(pins.endpoints_map(), PathBuf::from("/sys/fs/bpf/weir/maps/WEIR_ENDPOINTS"));
        assert_eq!(pins.program(pin::PROG_FROM_POD), PathBuf::from("/sys/fs/bpf/weir/progs/weir_from_pod"));
        assert_eq!(
            pins.link_pins("weirabc"),
            [PathBuf::from("/sys/fs/bpf/weir/links/weirabc_in"), PathBuf::from("/sys/fs/bpf/weir/links/weirabc_out")]
        );
        assert_eq!(Pins::host_veth_of_pin("weirabc_out"), Some("weirabc"));
        assert_eq!(Pins::host_veth_of_pin("uplink_eth0"), None);
    }

    #[test]
    fn first_missing_names_the_absent_pin() {
        let tmp = tempfile::tempdir().unwrap();
        let pins = Pins::new(tmp.path());
        assert_eq!(pins.first_missing().unwrap(), Some(pins.endpoints_map()));
        fs::create_dir_all(tmp.path().join("maps")).unwrap();
        fs::write(pins.endpoints_map(), "").unwrap();
        assert_eq!(pins.first_missing().unwrap(), Some(pins.program(pin::PROG_FROM_POD)));
        fs::create_dir_all(tmp.path().join("progs")).unwrap();
        fs::write(pins.program(pin::PROG_FROM_POD), "").unwrap();
        assert_eq!(pins.first_missing().unwrap(), Some(pins.program(pin::PROG_TO_POD)));
        fs::write(pins.program(pin::PROG_TO_POD), "").unwrap();
        assert_eq!(pins.first_missing().unwrap(), None);
    }

    #[test]
    fn remove_pin_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("weirabc");
        fs::write(&path, "").unwrap();
        assert!(remove_pin(&path).unwrap());
        assert!(!remove_pin(&path).unwrap());
    }
}
