//! The pod's network namespace, opened once and validated before any change.
//!
//! Namespace membership is per thread. Rather than moving the main thread into
//! the pod namespace (and risking leaving it there on an error path), a
//! short-lived thread enters the namespace and opens a netlink socket there:
//! the socket keeps talking to the namespace it was created in after the
//! thread is gone.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sched::{CloneFlags, setns},
    sys::statfs::{NSFS_MAGIC, fstatfs},
};

use crate::netlink::{NetlinkError, NetlinkSocket};

/// `NS_GET_NSTYPE` from `linux/nsfs.h`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace: {reason}")]
    NotANetns { path: PathBuf, reason: String },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: Errno },
    #[error("network namespace {path}: {source}")]
    Netlink { path: PathBuf, source: NetlinkError },
}

#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens `path` and checks that it really is a network namespace, so a
    /// wrong `CNI_NETNS` is reported before anything is changed.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NetnsError::NotFound { path: path.to_owned() },
            _ => NetnsError::Open { path: path.to_owned(), source },
        })?;
        let not_netns = |reason: String| NetnsError::NotANetns { path: path.to_owned(), reason };
        let fs = fstatfs(&file).map_err(|e| not_netns(format!("fstatfs: {e}")))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(not_netns(
                "it is not a namespace file (expected /proc/<pid>/ns/net or a bind mount of it)".into(),
            ));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype < 0 {
            return Err(not_netns(format!("NS_GET_NSTYPE: {}", Errno::last())));
        }
        if nstype != libc::CLONE_NEWNET {
            return Err(not_netns(format!("it is a namespace of another type ({nstype:#x})")));
        }
        Ok(Self { path: path.to_owned(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A netlink socket bound to this namespace.
    pub fn netlink(&self) -> Result<NetlinkSocket, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(|source| NetnsError::Enter { path: self.path.clone(), source })?;
                    NetlinkSocket::open().map_err(|source| NetnsError::Netlink { path: self.path.clone(), source })
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}
