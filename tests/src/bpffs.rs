//! The BPF filesystem, where the agent pins maps and programs (weir-cni
//! attaches the pinned programs to pod veths as cls_bpf filters; weir
//! versions before that pinned a tcx link per veth and direction, which
//! `pin_tcx_link` recreates for the upgrade tests).

use std::{fs, os::fd::AsRawFd, path::Path, process::Command};

use anyhow::{Context, Result};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions};

use crate::{
    cleanup::{self, BPFFS},
    exec,
};

pub fn is_mounted() -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    Ok(cleanup::parse_mounts_with_type(&info).iter().any(|(p, t)| p == Path::new(BPFFS) && t == "bpf"))
}

/// Mounts bpffs on /sys/fs/bpf unless it is there; true if it mounted it.
pub fn ensure_mounted() -> Result<bool> {
    if is_mounted()? {
        return Ok(false);
    }
    exec::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]), exec::DEFAULT_TIMEOUT)
        .context("mount bpffs on /sys/fs/bpf")?;
    Ok(true)
}

/// The ID of the program pinned at `path`.
pub fn pinned_prog_id(path: &Path) -> Result<u32> {
    let prog = SchedClassifier::from_pin(path).with_context(|| format!("open pinned program {}", path.display()))?;
    Ok(prog.info().with_context(|| format!("info of pinned program {}", path.display()))?.id())
}

fn attach_type(egress: bool) -> TcAttachType {
    if egress { TcAttachType::Egress } else { TcAttachType::Ingress }
}

/// What weir-cni did before pods moved to cls_bpf: attaches the program
/// pinned at `prog_pin` to `ifname` (in the network namespace bound at
/// `netns`) as a tcx link, on tc ingress or egress, and pins the link at
/// `link_pin` (the link lives as long as the pin).
pub fn pin_tcx_link(netns: &Path, ifname: &str, egress: bool, prog_pin: &Path, link_pin: &Path) -> Result<()> {
    let mut prog =
        SchedClassifier::from_pin(prog_pin).with_context(|| format!("open pinned program {}", prog_pin.display()))?;
    let link = in_netns(netns, || {
        let id = prog
            .attach_with_options(ifname, attach_type(egress), TcAttachOptions::TcxOrder(LinkOrder::default()))
            .with_context(|| format!("tcx link of {} on {ifname}", prog_pin.display()))?;
        Ok(prog.take_link(id)?)
    })?;
    // A bpffs path: the same whatever the network namespace.
    let link = FdLink::try_from(link).context("a tcx link is an fd link")?;
    link.pin(link_pin).with_context(|| format!("pin tcx link at {}", link_pin.display()))?;
    Ok(())
}

/// How many programs run on `ifname`'s tcx ingress or egress (in the
/// network namespace bound at `netns`).
pub fn tcx_prog_count(netns: &Path, ifname: &str, egress: bool) -> Result<u32> {
    in_netns(netns, || {
        let (_, programs) = SchedClassifier::query_tcx(ifname, attach_type(egress))
            .with_context(|| format!("query tcx programs of {ifname}"))?;
        Ok(programs.len() as u32)
    })
}

/// Runs `f` on a thread inside the network namespace bound at `netns`
/// (setns changes the calling thread's namespace only; the thread ends
/// with `f`), so interface names resolve there.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = fs::File::open(netns).with_context(|| format!("open network namespace {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a plain syscall on a valid fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {} panicked", netns.display()))?
    })
}
