//! The pinned BPF objects weir-cni wires each pod into (docs/contracts.md):
//! the endpoint map entry for the pod's host veth, `weir_from_pod` on that
//! veth's tc ingress and `weir_to_pod` on its tc egress, each held by a
//! pinned tcx link.

use std::{
    fs, io,
    net::Ipv4Addr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::KernelVersion,
};
use weir_common::{EndpointInfo, EndpointKey, pin};

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
        self.root.join(pin::MAPS_DIR).join(pin::MAP_ENDPOINTS)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.root.join(pin::PROGS_DIR).join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join(pin::LINKS_DIR)
    }

    /// The link pins of one pod: ingress (`_in`) and egress (`_out`).
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

/// The pinned `WEIR_ENDPOINTS` hash map.
pub struct EndpointMap {
    map: HashMap<MapData, EndpointKey, EndpointInfo>,
}

impl EndpointMap {
    pub fn open(pins: &Pins) -> Result<Self, DatapathError> {
        let path = pins.endpoints_map();
        let op = || format!("open endpoint map {}", path.display());
        let data = MapData::from_pin(&path).map_err(|e| DatapathError::new(op(), e))?;
        let map = Map::from_map_data(data).map_err(|e| DatapathError::new(op(), e))?;
        let map = HashMap::try_from(map).map_err(|e| DatapathError::new(op(), e))?;
        Ok(Self { map })
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

    /// Removes the entry of `ifindex`; `Ok(false)` when there was none.
    pub fn remove(&mut self, ifindex: u32) -> Result<bool, DatapathError> {
        match self.map.remove(&EndpointKey { ifindex }) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
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

/// How the program ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A tcx link (kernel 6.6+), alive as long as its pin at this path.
    TcxLink(PathBuf),
    /// A cls_bpf filter under clsact (older kernels): it lives as long as the
    /// veth and needs no pin.
    ClsBpf,
}

/// Attaches `weir_from_pod` (tc ingress: what the pod sends) and
/// `weir_to_pod` (tc egress: what it receives) to `host_veth` (interface
/// index `ifindex`), pinning each tcx link; every pin made is pushed to
/// `pinned` as soon as it exists, so a failure halfway leaves the caller a
/// complete list to undo.
///
/// On tcx kernels this talks to the kernel directly (get the pinned program,
/// create the link, pin it: three syscalls per program) rather than through
/// aya, whose first program handle runs a dozen feature probes (BTF and
/// program loads) that weir-cni has no use for. Each link creation still
/// waits for an RCU grace period in the kernel (`tcx_entry_sync`), which is
/// most of the time ADD takes.
pub fn attach_programs(
    pins: &Pins,
    host_veth: &str,
    ifindex: u32,
    pinned: &mut Vec<PathBuf>,
) -> Result<(), DatapathError> {
    let [pin_in, pin_out] = pins.link_pins(host_veth);
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if tcx {
        let links_dir = pins.links_dir();
        fs::create_dir_all(&links_dir).map_err(|e| DatapathError::new(format!("create {}", links_dir.display()), e))?;
    }
    for (prog, attach_type, pin_path) in
        [(pin::PROG_FROM_POD, TcAttachType::Ingress, pin_in), (pin::PROG_TO_POD, TcAttachType::Egress, pin_out)]
    {
        let attached = if tcx {
            attach_tcx(pins, prog, attach_type, host_veth, ifindex, pin_path)?
        } else {
            attach_cls_bpf(pins, prog, attach_type, host_veth)?
        };
        if let Attached::TcxLink(path) = attached {
            pinned.push(path);
        }
    }
    Ok(())
}

fn attach_op(pins: &Pins, prog_name: &str, attach_type: TcAttachType, host_veth: &str) -> String {
    format!("attach {} to {host_veth} {attach_type:?}", pins.program(prog_name).display())
}

fn attach_tcx(
    pins: &Pins,
    prog_name: &str,
    attach_type: TcAttachType,
    host_veth: &str,
    ifindex: u32,
    pin_path: PathBuf,
) -> Result<Attached, DatapathError> {
    let op = || attach_op(pins, prog_name, attach_type, host_veth);
    let prog = sys::obj_get(&pins.program(prog_name)).map_err(|e| DatapathError::new(op(), e))?;
    // The veth was just created, so a pin under its name is a leftover of an
    // earlier attachment with the same (containerID, ifname).
    remove_pin(&pin_path)?;
    let egress = matches!(attach_type, TcAttachType::Egress);
    let link = sys::tcx_link_create(prog.as_fd(), ifindex, egress)
        .map_err(|e| DatapathError::new(format!("{} (tcx link)", op()), e))?;
    // On failure the unpinned link is closed, which detaches it.
    sys::obj_pin(link.as_fd(), &pin_path)
        .map_err(|e| DatapathError::new(format!("pin tcx link at {}", pin_path.display()), e))?;
    Ok(Attached::TcxLink(pin_path))
}

/// Kernels without tcx: a cls_bpf filter under the clsact qdisc, through
/// aya's netlink support.
fn attach_cls_bpf(
    pins: &Pins,
    prog_name: &str,
    attach_type: TcAttachType,
    host_veth: &str,
) -> Result<Attached, DatapathError> {
    let op = attach_op(pins, prog_name, attach_type, host_veth);
    let mut prog = SchedClassifier::from_pin(pins.program(prog_name)).map_err(|e| DatapathError::new(&op, e))?;
    // "Already there" is fine; any other problem shows up in attach.
    let _ = tc::qdisc_add_clsact(host_veth);
    let id = prog
        .attach_with_options(host_veth, attach_type, TcAttachOptions::Netlink(NlOptions::default()))
        .map_err(|e| DatapathError::new(&op, e))?;
    let link = prog.take_link(id).map_err(|e| DatapathError::new(&op, e))?;
    // A netlink filter: dropping the handle would detach it, and it is
    // removed with the veth anyway, so let it go without a destructor.
    std::mem::forget(link);
    Ok(Attached::ClsBpf)
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

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;

    /// `union bpf_attr`, as zeroed 8-byte words: the kernel accepts any size
    /// up to a page as long as what it does not know is zero.
    type Attr = [u64; 16];

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size
        // passed; the kernel reads (and for some commands writes) only it.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of::<Attr>() as libc::c_uint)
        };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
    }

    fn path_cstring(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    fn owned(fd: libc::c_long) -> OwnedFd {
        // SAFETY: the kernel just returned this fd to us and nobody else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// `BPF_OBJ_GET`: the object pinned at `path`.
    pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
        let path = path_cstring(path)?;
        let mut attr = Attr::default();
        attr[0] = path.as_ptr() as u64; // pathname
        // bpf_fd = 0, file_flags = 0 (read-write)
        bpf(BPF_OBJ_GET, &mut attr).map(owned)
    }

    /// `BPF_OBJ_PIN`: pins `fd` at `path`.
    pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let path = path_cstring(path)?;
        let mut attr = Attr::default();
        attr[0] = path.as_ptr() as u64; // pathname
        attr[1] = fd.as_raw_fd() as u32 as u64; // bpf_fd; file_flags = 0
        bpf(BPF_OBJ_PIN, &mut attr).map(drop)
    }

    /// `BPF_LINK_CREATE` of a tcx link: `prog` last on the interface's tc
    /// ingress or egress.
    pub fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: u32, egress: bool) -> io::Result<OwnedFd> {
        let attach_type = if egress { BPF_TCX_EGRESS } else { BPF_TCX_INGRESS };
        let mut attr = Attr::default();
        // prog_fd, target_ifindex; attach_type, flags (0: append, no
        // relative program, any revision).
        attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(ifindex) << 32);
        attr[1] = u64::from(attach_type);
        bpf(BPF_LINK_CREATE, &mut attr).map(owned)
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
