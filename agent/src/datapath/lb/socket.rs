//! Attaching connect-time load balancing to a cgroup (v2). Every socket of a
//! process in that cgroup or below is translated at connect/sendmsg; on a
//! real node that is the root cgroup, which holds pods and host processes.
use std::path::Path;

use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use weir_common::pin;

use crate::datapath::Datapath;

const PROGRAMS: [&str; 8] = [
    pin::PROG_SOCK_CONNECT4,
    pin::PROG_SOCK_SENDMSG4,
    pin::PROG_SOCK_RECVMSG4,
    pin::PROG_SOCK_GETPEERNAME4,
    pin::PROG_SOCK_CONNECT6,
    pin::PROG_SOCK_SENDMSG6,
    pin::PROG_SOCK_RECVMSG6,
    pin::PROG_SOCK_GETPEERNAME6,
];

#[derive(Debug, thiserror::Error)]
pub enum SocketLbError {
    #[error(
        "{path} is not a cgroup v2 mount or directory; socket load balancing needs cgroup v2 (host processes cannot reach Services without it)"
    )]
    NotCgroup2 { path: String },
    #[error("{prog} on {path}: {reason}")]
    Attach { prog: &'static str, path: String, reason: String },
}

impl Datapath {
    /// Loads the socket programs and attaches them to `cgroup`, swapping in
    /// new pinned links atomically (new program attached first, old link's
    /// pin replaced after), so sockets are never untranslated across an
    /// agent restart.
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<(), SocketLbError> {
        let shown = cgroup.display().to_string();
        match statfs(cgroup) {
            Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
            _ => return Err(SocketLbError::NotCgroup2 { path: shown }),
        }
        let links = self.pin_dir.join(pin::LINKS_DIR);
        for prog in PROGRAMS {
            let fail = |reason: String| SocketLbError::Attach { prog, path: shown.clone(), reason };
            let dir = std::fs::File::open(cgroup).map_err(|e| fail(e.to_string()))?;
            let p: &mut CgroupSockAddr = self
                .ebpf_mut()
                .program_mut(prog)
                .ok_or_else(|| fail("not in the object".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| fail(e.to_string()))?;
            if p.fd().is_err() {
                p.load().map_err(|e| fail(e.to_string()))?;
            }
            // bpf_link_create takes no attach flags: cgroup links always
            // coexist with other links (that is what lets the next agent
            // attach before this one's links go).
            let id =
                p.attach(&dir, CgroupAttachMode::Single).map_err(|e| fail(crate::datapath::loader::error_chain(&e)))?;
            let link = p.take_link(id).map_err(|e| fail(e.to_string()))?;
            let fd_link = FdLink::try_from(link).map_err(|e| fail(e.to_string()))?;
            let tmp = links.join(format!("{prog}_new"));
            let path = links.join(prog);
            let _ = std::fs::remove_file(&tmp);
            fd_link.pin(&tmp).map_err(|e| fail(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }
}
