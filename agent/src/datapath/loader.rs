use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, ProgramArray},
    programs::SchedClassifier,
};
use tracing::info;
use weir_common::{DropReason, pin};

use crate::datapath::pinned;

/// The kernel programs, built by build.rs for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create pin directory {path}: {source} (is bpffs mounted there?)")]
    PinDir { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot load the eBPF object: {source} (an existing pinned map with another layout? run `weir-agent cleanup`)"
    )]
    Load { source: aya::EbpfError },
    #[error("program {name} missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("cannot pin program {name} at {path}: {reason}")]
    Pin { name: &'static str, path: PathBuf, reason: String },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("cannot open pinned map {path}: {source} (is the agent installed on this node?)")]
    Pinned { path: PathBuf, source: aya::maps::MapError },
}

pub struct Datapath {
    ebpf: Ebpf,
    pub(super) pin_dir: PathBuf,
}

impl Datapath {
    /// Loads the object, reusing pinned maps, and pins the programs for
    /// weir-cni.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        for sub in [pin::MAPS_DIR, pin::PROGS_DIR, pin::LINKS_DIR] {
            let path = pin_dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| DatapathError::PinDir { path, source })?;
        }
        raise_memlock();
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir.join(pin::MAPS_DIR))
            .load(OBJECT)
            .map_err(|source| DatapathError::Load { source })?;
        let mut dp = Self { ebpf, pin_dir: pin_dir.to_path_buf() };
        // Programs loaded, maps created or reopened; the pin dir is the
        // hand-off to weir-cni.
        dp.pin_classifier(pin::PROG_FROM_POD)?;
        dp.pin_classifier(pin::PROG_TO_POD)?;
        dp.pin_classifier(pin::PROG_FROM_NETDEV)?;
        dp.pin_classifier(pin::PROG_TO_NETDEV)?;
        dp.fill_tail_calls()?;
        info!(pin_dir = %pin_dir.display(), "datapath loaded and pinned");
        Ok(dp)
    }

    /// Loads a tc program and swaps it into its pin atomically (pin to a
    /// temp name, rename over the old pin), so a concurrent CNI ADD always
    /// finds a program. Pods attached earlier keep the program they have.
    fn pin_classifier(&mut self, name: &'static str) -> Result<(), DatapathError> {
        let dir = self.pin_dir.join(pin::PROGS_DIR);
        let prog = self.load_classifier(name)?;
        // bpffs refuses names with dots (reserved by the kernel).
        let tmp = dir.join(format!("{name}_new"));
        let path = dir.join(name);
        let _ = std::fs::remove_file(&tmp);
        prog.pin(&tmp).map_err(|e| DatapathError::Pin { name, path: tmp.clone(), reason: error_chain(&e) })?;
        std::fs::rename(&tmp, &path).map_err(|e| DatapathError::Pin {
            name,
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// The tc program `name` of the object, loaded into the kernel.
    fn load_classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram { name })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })?;
        prog.load().map_err(|source| DatapathError::Program { name, source })?;
        Ok(prog)
    }
}

impl Datapath {
    /// Loads the IPv6 programs the pod programs tail-call (`ebpf/src/pod6.rs`:
    /// Service translation, then policy) and puts them in `WEIR_TAIL6`;
    /// until then a pod's IPv6 is judged by its policy untranslated. The
    /// same for the uplink programs' IPv6 path, in `WEIR_NETDEV6`.
    /// Overwrites what a previous agent put there: pods still on its
    /// programs reach these through the same pinned array.
    fn fill_tail_calls(&mut self) -> Result<(), DatapathError> {
        // The egress step first: once `weir_from_pod6` is reachable, so is
        // the policy it hands its packets to.
        let programs = [
            (pin::TAIL_EGRESS6, pin::PROG_EGRESS6),
            (pin::TAIL_TO_POD6, pin::PROG_TO_POD6),
            (pin::TAIL_FROM_POD6, pin::PROG_FROM_POD6),
        ];
        self.fill_program_array(pin::MAP_TAIL6, &programs)?;
        // The uplink's IPv6 path (`ebpf/src/netdev6.rs`): until filled, an
        // IPv6 packet through the uplink goes to the node's stack as it is.
        let uplink = [(pin::NETDEV6_TO, pin::PROG_TO_NETDEV6), (pin::NETDEV6_FROM, pin::PROG_FROM_NETDEV6)];
        self.fill_program_array(pin::MAP_NETDEV6, &uplink)?;
        // Veth-to-veth delivery of what `weir_from_pod6` lets go unjudged
        // (`ebpf/src/local6.rs`): until filled, those packets go the
        // kernel's way.
        self.fill_program_array(pin::MAP_DELIVER6, &[(pin::DELIVER6_SLOT, pin::PROG_DELIVER6)])
    }

    /// Loads each (slot, program) and puts it in the program array `name`,
    /// in the order given.
    fn fill_program_array(
        &mut self,
        name: &'static str,
        programs: &[(u32, &'static str)],
    ) -> Result<(), DatapathError> {
        let mut fds = Vec::new();
        for &(slot, prog_name) in programs {
            let prog = self.load_classifier(prog_name)?;
            let fd = prog.fd().map_err(|source| DatapathError::Program { name: prog_name, source })?;
            let fd = fd.try_clone().map_err(|e| DatapathError::Program { name: prog_name, source: e.into() })?;
            fds.push((slot, fd));
        }
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        let mut array: ProgramArray<_> =
            ProgramArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        for (slot, fd) in &fds {
            array.set(*slot, fd, 0).map_err(|source| DatapathError::Map { name, source })?;
        }
        Ok(())
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

/// Packets seen by the datapath per verdict, summed over CPUs, read from
/// the pinned counters (works while the agent is down too). A counter array
/// pinned by an older version has no slot for a newer reason: that one
/// reads 0 (the programs skip a missing slot too) until `weir-agent
/// cleanup` lets the array be made again.
pub fn verdict_counts(pin_dir: &Path) -> Result<Vec<(DropReason, u64)>, DatapathError> {
    let name = pin::MAP_DROPS;
    let drops: PerCpuArray<MapData, u64> = pinned::open(pin_dir, name)?;
    let slots = drops.len();
    DropReason::ALL
        .iter()
        .map(|r| {
            if *r as u32 >= slots {
                return Ok((*r, 0));
            }
            let per_cpu = drops.get(&(*r as u32), 0).map_err(|source| DatapathError::Map { name, source })?;
            Ok((*r, per_cpu.iter().sum()))
        })
        .collect()
}

impl Datapath {
    /// The local endpoint map (weir-cni writes it; tests and benchmarks
    /// write it too).
    #[cfg(test)]
    pub fn endpoints(
        &mut self,
    ) -> Result<aya::maps::HashMap<&mut MapData, weir_common::EndpointKey, weir_common::EndpointInfo>, DatapathError>
    {
        self.endpoints_map()
    }

    pub fn endpoints_map(
        &mut self,
    ) -> Result<aya::maps::HashMap<&mut MapData, weir_common::EndpointKey, weir_common::EndpointInfo>, DatapathError>
    {
        let name = pin::MAP_ENDPOINTS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
        aya::maps::HashMap::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    pub(super) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub(super) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // Safety: plain syscall with a valid pointer; failure only matters on old kernels.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
