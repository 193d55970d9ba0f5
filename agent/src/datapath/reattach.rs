//! After an upgrade (or any restart) the pods' veths still run the programs
//! of the agent that was running when weir-cni wired them: weir-cni attaches
//! whatever `<pin dir>/progs/` held at ADD. On start the agent moves every
//! pod to the programs it just loaded and pinned, both directions.
//!
//! weir-cni attaches `weir_from_pod` / `weir_to_pod` as a direct-action
//! cls_bpf filter under the host veth's clsact qdisc, at
//! (`pin::POD_FILTER_PRIORITY`, `pin::POD_FILTER_HANDLE`). Moving a pod is
//! one netlink request that changes that filter's program in place: the
//! kernel swaps the program under RCU, so every packet sees either the old
//! program or the new one, never neither. The filter belongs to the veth,
//! not to the agent: it is never detached when the agent exits.
//!
//! Pods come from the endpoint map (an entry for every pod weir-cni wired,
//! keyed by host veth ifindex) and from legacy tcx link pins
//! (`<pin dir>/links/<veth>_in` / `_out`, weir versions before cls_bpf). A
//! pod without the filter gets one (see `replace_filter`). A legacy pod
//! gets its cls_bpf filter first (it runs only once tcx stops
//! answering: a tcx program's verdict ends tc processing), and only then
//! is its link pin removed, which detaches the tcx program: no packet
//! passes unprocessed in between. Pins of veths that no longer exist are
//! removed.
use std::{collections::BTreeMap, path::PathBuf};

use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};
use tracing::{info, warn};
use weir_common::{EndpointInfo, EndpointKey, pin};

use super::Datapath;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reattached {
    /// Pod attachments (one per veth and direction) now running this
    /// agent's program.
    pub moved: usize,
    /// Legacy tcx link pins replaced by a cls_bpf filter and removed.
    pub legacy: usize,
    /// Pins of veths that no longer exist, removed.
    pub stale: usize,
    pub errors: Vec<String>,
}

/// The two attach points of a pod's host veth.
const DIRECTIONS: [(&str, TcAttachType, &str); 2] = [
    (pin::PROG_FROM_POD, TcAttachType::Ingress, pin::LINK_SUFFIX_FROM_POD),
    (pin::PROG_TO_POD, TcAttachType::Egress, pin::LINK_SUFFIX_TO_POD),
];

/// What is known of one pod veth: its legacy link pins, per direction
/// (index into `DIRECTIONS`).
#[derive(Debug, Default)]
struct PodVeth {
    legacy_pins: [Option<PathBuf>; 2],
}

impl Datapath {
    pub fn reattach_pods(&mut self) -> Reattached {
        let mut out = Reattached::default();
        let mut pods: BTreeMap<String, PodVeth> = BTreeMap::new();
        self.pods_from_endpoints(&mut pods, &mut out);
        self.pods_from_legacy_pins(&mut pods, &mut out);

        for (veth, pod) in &pods {
            for (i, (prog, attach_type, _)) in DIRECTIONS.iter().enumerate() {
                let legacy = pod.legacy_pins[i].as_deref();
                match self.replace_filter(prog, *attach_type, veth) {
                    Ok(()) => out.moved += 1,
                    // Deleted meanwhile (a DEL or GC running).
                    Err(_) if nix::net::if_::if_nametoindex(veth.as_str()).is_err() => break,
                    Err(e) => {
                        // A legacy pod keeps its tcx link (and its program).
                        out.errors.push(format!("{veth} {attach_type:?}: {e}"));
                        continue;
                    }
                }
                if let Some(path) = legacy {
                    match std::fs::remove_file(path) {
                        Ok(()) => out.legacy += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => out.errors.push(format!("{}: {e}", path.display())),
                    }
                }
            }
        }
        if out.moved + out.stale > 0 {
            info!(
                moved = out.moved,
                legacy_tcx_links = out.legacy,
                stale = out.stale,
                "pods moved to this agent's programs"
            );
        }
        for e in &out.errors {
            warn!(error = %e, "pod attachment not moved; it keeps the previous program");
        }
        out
    }

    /// Every interface the endpoint map names that still exists.
    fn pods_from_endpoints(&self, pods: &mut BTreeMap<String, PodVeth>, out: &mut Reattached) {
        let entries: Vec<(EndpointKey, EndpointInfo)> = match self.hash_dump(pin::MAP_ENDPOINTS) {
            Ok(e) => e,
            Err(e) => {
                out.errors.push(format!("reading {}: {e}", pin::MAP_ENDPOINTS));
                return;
            }
        };
        for (key, _) in entries {
            // Gone: weir-cni's DEL or GC removes the entry.
            if let Ok(name) = nix::net::if_::if_indextoname(key.ifindex)
                && let Ok(name) = name.into_string()
            {
                pods.entry(name).or_default();
            }
        }
    }

    /// Legacy tcx link pins (`<veth>_in` / `_out`); those of veths that no
    /// longer exist are removed.
    fn pods_from_legacy_pins(&self, pods: &mut BTreeMap<String, PodVeth>, out: &mut Reattached) {
        let dir = self.pin_dir.join(pin::LINKS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        for name in names {
            // The agent's own links (uplink_<if>, uplink_<if>_egress, the
            // socket programs') share the directory.
            if name.starts_with("uplink_") {
                continue;
            }
            let Some((i, veth)) =
                DIRECTIONS.iter().enumerate().find_map(|(i, (_, _, suffix))| Some((i, name.strip_suffix(suffix)?)))
            else {
                continue;
            };
            let path = dir.join(&name);
            if nix::net::if_::if_nametoindex(veth).is_err() {
                // The pod went while no agent ran; its DEL or the runtime's
                // GC would remove this too.
                match std::fs::remove_file(&path) {
                    Ok(()) => out.stale += 1,
                    Err(e) => out.errors.push(format!("{}: {e}", path.display())),
                }
                continue;
            }
            pods.entry(veth.to_string()).or_default().legacy_pins[i] = Some(path);
        }
    }

    /// Points the veth's pod filter at this agent's `prog`, in place, or
    /// creates it when there is none: a legacy tcx pod; a pod weir-cni is
    /// wiring right now (it writes the endpoint entry first, then creates or
    /// replaces the filter with the pinned program, and checks it attached
    /// the program pinned last); or a pod of a weir version that attached
    /// cls_bpf at another priority on kernels without tcx (the new filter
    /// runs first and its verdict ends classification).
    fn replace_filter(&mut self, prog: &'static str, attach_type: TcAttachType, veth: &str) -> Result<(), String> {
        let classifier: &mut SchedClassifier = self
            .ebpf_mut()
            .program_mut(prog)
            .ok_or("program missing")?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        let handle = TcHandle::from(pin::POD_FILTER_HANDLE);
        let replace = |classifier: &mut SchedClassifier| {
            let existing = SchedClassifierLink::attached(veth, attach_type, pin::POD_FILTER_PRIORITY, handle, None)
                .map_err(ProgramError::from)?;
            // Without NLM_F_CREATE: the kernel changes the program of the
            // filter at that priority and handle, or answers ENOENT (no such
            // filter) or EINVAL (no clsact qdisc at all).
            classifier.attach_to_link(existing)
        };
        let id = match replace(classifier) {
            Ok(id) => id,
            Err(e) if errno(&e).is_some_and(|e| e == libc::ENOENT || e == libc::EINVAL) => {
                // "Exists" is fine; any other problem shows up in attach.
                let _ = tc::qdisc_add_clsact(veth);
                let options = NlOptions { priority: pin::POD_FILTER_PRIORITY, handle, ..Default::default() };
                match classifier.attach_with_options(veth, attach_type, TcAttachOptions::Netlink(options)) {
                    Ok(id) => id,
                    // weir-cni created it meanwhile (an ADD in flight).
                    Err(e) if errno(&e) == Some(libc::EEXIST) => replace(classifier)
                        .map_err(|e| format!("replacing the cls_bpf program: {}", super::loader::error_chain(&e)))?,
                    Err(e) => return Err(format!("creating the cls_bpf filter: {}", super::loader::error_chain(&e))),
                }
            }
            Err(e) => return Err(format!("replacing the cls_bpf program: {}", super::loader::error_chain(&e))),
        };
        // aya detaches the netlink filters a program still owns when it is
        // dropped (agent exit): the filter belongs to the veth, let it go.
        let link = classifier.take_link(id).map_err(|e| e.to_string())?;
        std::mem::forget(link);
        Ok(())
    }
}

/// The errno of a failed netlink request.
fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(e)) | ProgramError::NetlinkError(e) => e.raw_os_error(),
        _ => None,
    }
}
