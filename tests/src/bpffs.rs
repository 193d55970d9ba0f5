//! The BPF filesystem, where the agent pins maps and programs (weir-cni
//! attaches the pinned programs to pod veths as cls_bpf filters; weir
//! versions before that pinned a tcx link per veth and direction, which
//! `pin_tcx_link` recreates for the upgrade tests).

use std::{
    fs,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    process::Command,
};

use anyhow::{Context, Result};

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

/// The ID of the program pinned at `path` (`BPF_OBJ_GET`, then
/// `BPF_OBJ_GET_INFO_BY_FD`).
pub fn pinned_prog_id(path: &Path) -> Result<u32> {
    let fd = sys::obj_get(path).with_context(|| format!("open pinned program {}", path.display()))?;
    sys::prog_id(fd.as_fd()).with_context(|| format!("info of pinned program {}", path.display()))
}

/// What weir-cni did before pods moved to cls_bpf: attaches the program
/// pinned at `prog_pin` to `ifname` (in the network namespace bound at
/// `netns`) as a tcx link, on tc ingress or egress, and pins the link at
/// `link_pin` (the link lives as long as the pin).
pub fn pin_tcx_link(netns: &Path, ifname: &str, egress: bool, prog_pin: &Path, link_pin: &Path) -> Result<()> {
    let prog = sys::obj_get(prog_pin).with_context(|| format!("open pinned program {}", prog_pin.display()))?;
    let link = in_netns(netns, ifname, |ifindex| {
        sys::tcx_link_create(prog.as_fd(), ifindex, egress)
            .with_context(|| format!("tcx link of {} on {ifname}", prog_pin.display()))
    })?;
    // A bpffs path: the same whatever the network namespace.
    sys::obj_pin(link.as_fd(), link_pin).with_context(|| format!("pin tcx link at {}", link_pin.display()))
}

/// How many programs run on `ifname`'s tcx ingress or egress (in the
/// network namespace bound at `netns`).
pub fn tcx_prog_count(netns: &Path, ifname: &str, egress: bool) -> Result<u32> {
    in_netns(netns, ifname, |ifindex| {
        sys::tcx_prog_count(ifindex, egress).with_context(|| format!("query tcx programs of {ifname}"))
    })
}

/// Runs `f` with the index of `ifname` on a thread inside the network
/// namespace bound at `netns` (setns changes the calling thread's
/// namespace only; the thread ends with `f`).
fn in_netns<T: Send>(netns: &Path, ifname: &str, f: impl FnOnce(u32) -> Result<T> + Send) -> Result<T> {
    let ns = fs::File::open(netns).with_context(|| format!("open network namespace {}", netns.display()))?;
    let ifname_c = std::ffi::CString::new(ifname).context("interface name")?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscalls on a valid fd and a NUL-terminated name.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            let ifindex = unsafe { libc::if_nametoindex(ifname_c.as_ptr()) };
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {ifname}"));
            }
            f(ifindex)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {} panicked", netns.display()))?
    })
}

/// The few bpf(2) commands the test bed needs, without a library.
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
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;

    /// `union bpf_attr` as zeroed 8-byte words: the kernel accepts any size
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
        // SAFETY: the kernel just returned this fd and nobody else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
        let path = path_cstring(path)?;
        let mut attr = Attr::default();
        attr[0] = path.as_ptr() as u64; // pathname; bpf_fd, file_flags 0
        bpf(BPF_OBJ_GET, &mut attr).map(owned)
    }

    pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let path = path_cstring(path)?;
        let mut attr = Attr::default();
        attr[0] = path.as_ptr() as u64; // pathname
        attr[1] = fd.as_raw_fd() as u32 as u64; // bpf_fd; file_flags 0
        bpf(BPF_OBJ_PIN, &mut attr).map(drop)
    }

    /// `bpf_prog_info.id` (the second u32 of the struct).
    pub fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
        let mut info = [0u32; 64];
        let mut attr = Attr::default();
        // info.bpf_fd, info.info_len; info.info (pointer)
        attr[0] = u64::from(fd.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info[1])
    }

    /// `BPF_LINK_CREATE` of a tcx link: `prog` last on the interface's tc
    /// ingress or egress.
    pub fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: u32, egress: bool) -> io::Result<OwnedFd> {
        let attach_type = if egress { BPF_TCX_EGRESS } else { BPF_TCX_INGRESS };
        let mut attr = Attr::default();
        // prog_fd, target_ifindex; attach_type, flags 0 (append)
        attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(ifindex) << 32);
        attr[1] = u64::from(attach_type);
        bpf(BPF_LINK_CREATE, &mut attr).map(owned)
    }

    /// `BPF_PROG_QUERY` of the interface's tcx ingress or egress: how many
    /// programs are attached (no IDs asked for, only the count).
    pub fn tcx_prog_count(ifindex: u32, egress: bool) -> io::Result<u32> {
        let attach_type = if egress { BPF_TCX_EGRESS } else { BPF_TCX_INGRESS };
        let mut attr = Attr::default();
        // target_ifindex, attach_type; query_flags, attach_flags; prog_ids
        // (none); prog_cnt (the kernel writes the count)
        attr[0] = u64::from(ifindex) | (u64::from(attach_type) << 32);
        bpf(BPF_PROG_QUERY, &mut attr)?;
        Ok(attr[3] as u32)
    }
}
