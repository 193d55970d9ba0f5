//! The pinned BPF objects weir-cni wires each pod into (docs/contracts.md):
//! the endpoint map entry for the pod's host veth, `weir_from_pod` on that
//! veth's tc ingress and `weir_to_pod` on its tc egress, each held by a
//! pinned tcx link.

use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TcAttachType, links::FdLink, tc},
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
        Self {
            op: op.into(),
            reason: text,
        }
    }
}

/// Paths under the configured `bpfPinDir`.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
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
        pin_name
            .strip_suffix(pin::LINK_SUFFIX_FROM_POD)
            .or_else(|| pin_name.strip_suffix(pin::LINK_SUFFIX_TO_POD))
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

    pub fn insert(&mut self, ifindex: u32, ip: Ipv4Addr) -> Result<(), DatapathError> {
        let value = EndpointInfo::new(ip.octets(), EndpointInfo::FLAG_VERIFY_SOURCE);
        self.map
            .insert(EndpointKey { ifindex }, value, 0)
            .map_err(|e| {
                DatapathError::new(format!("insert endpoint ifindex {ifindex} -> {ip}"), e)
            })
    }

    pub fn get(&self, ifindex: u32) -> Result<Option<EndpointInfo>, DatapathError> {
        match self.map.get(&EndpointKey { ifindex }, 0) {
            Ok(info) => Ok(Some(info)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::new(
                format!("look up endpoint ifindex {ifindex}"),
                e,
            )),
        }
    }

    /// Removes the entry of `ifindex`; `Ok(false)` when there was none.
    pub fn remove(&mut self, ifindex: u32) -> Result<bool, DatapathError> {
        match self.map.remove(&EndpointKey { ifindex }) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(DatapathError::new(
                format!("remove endpoint ifindex {ifindex}"),
                e,
            )),
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
        let stale: Vec<u32> = self
            .entries()?
            .into_iter()
            .filter(|(_, v)| *v == ip)
            .map(|(k, _)| k)
            .collect();
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
/// `weir_to_pod` (tc egress: what it receives) to `host_veth`, pinning each
/// tcx link; every pin made is pushed to `pinned` as soon as it exists, so a
/// failure halfway leaves the caller a complete list to undo.
pub fn attach_programs(pins: &Pins, host_veth: &str, pinned: &mut Vec<PathBuf>) -> Result<(), DatapathError> {
    let [pin_in, pin_out] = pins.link_pins(host_veth);
    for (prog, attach_type, pin_path) in
        [(pin::PROG_FROM_POD, TcAttachType::Ingress, pin_in), (pin::PROG_TO_POD, TcAttachType::Egress, pin_out)]
    {
        if let Attached::TcxLink(path) = attach(pins, prog, attach_type, host_veth, pin_path)? {
            pinned.push(path);
        }
    }
    Ok(())
}

fn attach(
    pins: &Pins,
    prog_name: &str,
    attach_type: TcAttachType,
    host_veth: &str,
    pin_path: PathBuf,
) -> Result<Attached, DatapathError> {
    let prog_path = pins.program(prog_name);
    let op = format!("attach {} to {host_veth} {attach_type:?}", prog_path.display());
    let mut prog = SchedClassifier::from_pin(&prog_path).map_err(|e| DatapathError::new(&op, e))?;

    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx {
        // aya falls back to netlink cls_bpf, which needs the clsact qdisc.
        // "Already there" is fine; any other problem shows up in attach.
        let _ = tc::qdisc_add_clsact(host_veth);
    }
    let id = prog
        .attach(host_veth, attach_type)
        .map_err(|e| DatapathError::new(&op, e))?;
    let link = prog.take_link(id).map_err(|e| DatapathError::new(&op, e))?;

    if <&FdLink>::try_from(&link).is_err() {
        // A netlink filter: dropping the handle would detach it, and it is
        // removed with the veth anyway, so let it go without a destructor.
        std::mem::forget(link);
        return Ok(Attached::ClsBpf);
    }
    let fd_link = FdLink::try_from(link).map_err(|e| DatapathError::new(&op, e))?;
    let links_dir = pins.links_dir();
    fs::create_dir_all(&links_dir)
        .map_err(|e| DatapathError::new(format!("create {}", links_dir.display()), e))?;
    // The veth was just created, so a pin under its name is a leftover of an
    // earlier attachment with the same (containerID, ifname).
    remove_pin(&pin_path)?;
    // On failure the unpinned link is closed, which detaches it.
    fd_link
        .pin(&pin_path)
        .map_err(|e| DatapathError::new(format!("pin tcx link at {}", pin_path.display()), e))?;
    Ok(Attached::TcxLink(pin_path))
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
        assert_eq!(
            pins.endpoints_map(),
            PathBuf::from("/sys/fs/bpf/weir/maps/WEIR_ENDPOINTS")
        );
        assert_eq!(
            pins.program(pin::PROG_FROM_POD),
            PathBuf::from("/sys/fs/bpf/weir/progs/weir_from_pod")
        );
        assert_eq!(
            pins.link_pins("weirabc"),
            [
                PathBuf::from("/sys/fs/bpf/weir/links/weirabc_in"),
                PathBuf::from("/sys/fs/bpf/weir/links/weirabc_out")
            ]
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
