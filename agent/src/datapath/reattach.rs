//! After an upgrade the pods' veths still run the programs of the agent that
//! attached them (their tcx links are pinned). On start the agent moves every
//! pod to the programs it just loaded: the new program goes in first in the
//! veth's tcx chain (it ends the chain, so the old one stops seeing
//! packets), then its link replaces the old one's pin, which detaches the
//! old program. No packet passes unprocessed in between.
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions};
use tracing::{info, warn};
use weir_common::pin;

use super::Datapath;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reattached {
    pub links: usize,
    /// Pins of veths that no longer exist, removed.
    pub stale: usize,
    pub errors: Vec<String>,
}

impl Datapath {
    pub fn reattach_pods(&mut self) -> Reattached {
        let mut out = Reattached::default();
        let dir = self.pin_dir.join(pin::LINKS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else { return out };
        let mut pins: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        pins.sort();
        for name in pins {
            let (veth, prog, attach_type) = if let Some(v) = name.strip_suffix(pin::LINK_SUFFIX_FROM_POD) {
                (v, pin::PROG_FROM_POD, TcAttachType::Ingress)
            } else if let Some(v) = name.strip_suffix(pin::LINK_SUFFIX_TO_POD) {
                (v, pin::PROG_TO_POD, TcAttachType::Egress)
            } else {
                continue; // the uplink's and the sockets' own links
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
            match self.swap_link(prog, attach_type, veth, &path) {
                Ok(()) => out.links += 1,
                Err(e) => out.errors.push(format!("{veth} {attach_type:?}: {e}")),
            }
        }
        if out.links + out.stale > 0 {
            info!(links = out.links, stale = out.stale, "pods moved to this agent's programs");
        }
        for e in &out.errors {
            warn!(error = %e, "pod link not moved; it keeps the previous program");
        }
        out
    }

    fn swap_link(
        &mut self,
        prog: &'static str,
        attach_type: TcAttachType,
        veth: &str,
        pin_path: &std::path::Path,
    ) -> Result<(), String> {
        let classifier: &mut SchedClassifier = self
            .ebpf_mut()
            .program_mut(prog)
            .ok_or("program missing")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        let id = classifier
            .attach_with_options(veth, attach_type, TcAttachOptions::TcxOrder(LinkOrder::first()))
            .map_err(|e| super::loader::error_chain(&e))?;
        let link = classifier.take_link(id).map_err(|e| e.to_string())?;
        let fd_link = FdLink::try_from(link).map_err(|e| e.to_string())?;
        // bpffs refuses dots in names.
        let tmp =
            pin_path.with_file_name(format!("{}_new", pin_path.file_name().and_then(|n| n.to_str()).unwrap_or("link")));
        let _ = std::fs::remove_file(&tmp);
        fd_link.pin(&tmp).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, pin_path).map_err(|e| e.to_string())
    }
}
