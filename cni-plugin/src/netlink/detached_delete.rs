//! Deleting an interface without waiting for the kernel to free it.
//!
//! `RTM_DELLINK` answers only once the device is freed: after the
//! unregistration proper (under RTNL, well under a millisecond) the deleting
//! task runs `netdev_run_todo`, whose `rcu_barrier()` waits for a normal RCU
//! grace period (13-20 ms measured here, most of a DEL). By then the
//! interface is already gone for every purpose a CNI plugin has: unlisted,
//! its name and index free, its addresses and routes flushed, and the
//! `RTM_DELLINK` notification sent. So a short-lived child process sends the
//! request and sits out the wait, and DEL returns as soon as it sees that
//! notification (or the child's error).

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::Duration,
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::{
    fcntl::OFlag,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    unistd::{ForkResult, fork, pipe2},
};

use super::{NetlinkError, NetlinkSocket, link::Link};

/// How long DEL waits for the unregistration (not the freeing) before it
/// reports the interface as possibly still there.
const WAIT: Duration = Duration::from_secs(30);

impl NetlinkSocket {
    /// Deletes `link` like `delete_link`, but returns once the kernel has
    /// unregistered it rather than once it has freed it. Falls back to
    /// `delete_link` if no child can be started.
    pub fn delete_link_detached(&mut self, link: &Link) -> Result<(), NetlinkError> {
        let op = format!("delete link {}", link.name);
        let Ok(events) = link_events() else {
            return self.delete_link(link);
        };
        let Ok((report_read, report_write)) = pipe2(OFlag::O_CLOEXEC) else {
            return self.delete_link(link);
        };
        // SAFETY: weir-cni's DEL is single-threaded, so the child may do
        // anything the parent could; it only closes descriptors, opens a
        // netlink socket, sends one request and exits.
        match unsafe { fork() } {
            Err(_) => self.delete_link(link),
            Ok(ForkResult::Child) => {
                drop(events);
                drop(report_read);
                delete_in_child(link, report_write)
            }
            Ok(ForkResult::Parent { .. }) => {
                drop(report_write);
                wait_for_unregister(&op, &events, report_read, link.index)
            }
        }
    }
}

/// A socket subscribed to link notifications of this namespace.
fn link_events() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(libc::RTNLGRP_LINK)?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// The child: detached from the runtime (its own session, no inherited
/// descriptor but the report pipe, so the runtime's pipes see EOF when the
/// parent exits and no lock the parent held stays held), deletes `link` on
/// a socket of its own and reports a failure as errno + message.
fn delete_in_child(link: &Link, report: OwnedFd) -> ! {
    let _ = nix::unistd::setsid();
    // SAFETY: plain syscalls on descriptors this process owns; nothing in
    // this process uses the closed descriptors afterwards.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        let keep = report.as_raw_fd() as libc::c_uint;
        libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
    }
    let result = NetlinkSocket::open().and_then(|mut sock| sock.delete_link(link));
    if let Err(e) = result {
        let mut report = File::from(report);
        let errno = e.errno().unwrap_or(libc::EIO);
        let mut message = errno.to_ne_bytes().to_vec();
        message.extend_from_slice(e.kernel_msg.unwrap_or_default().as_bytes());
        let _ = report.write_all(&message);
    }
    // SAFETY: ends this process without running the parent's exit handlers
    // or destructors a second time.
    unsafe { libc::_exit(0) }
}

/// Waits for the `RTM_DELLINK` notification of `ifindex`, or for the child
/// to report (an error, or EOF: it finished without our seeing the
/// notification, e.g. after the event socket overflowed).
fn wait_for_unregister(op: &str, events: &Socket, report: OwnedFd, ifindex: u32) -> Result<(), NetlinkError> {
    let mut buf = vec![0u8; 32 * 1024];
    let timeout = PollTimeout::try_from(WAIT).unwrap_or(PollTimeout::MAX);
    loop {
        // SAFETY: the socket's descriptor lives as long as `events`, which
        // outlives this borrow.
        let events_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(events.as_raw_fd()) };
        let mut fds = [PollFd::new(events_fd, PollFlags::POLLIN), PollFd::new(report.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                return Err(NetlinkError::io(
                    op,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "the interface was not unregistered in 30 s"),
                ));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(NetlinkError::io(op, e.into())),
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (events_ready, report_ready) = (ready(0), ready(1));
        if events_ready && drain_events(events, &mut buf, ifindex) {
            return Ok(());
        }
        if report_ready {
            return child_report(op, report);
        }
    }
}

/// Reads what is queued on the event socket; `true` once the deletion of
/// `ifindex` is among it. Read errors (ENOBUFS after an overflow) leave the
/// answer to the child's report.
fn drain_events(events: &Socket, buf: &mut [u8], ifindex: u32) -> bool {
    loop {
        let len = match events.recv(&mut &mut buf[..], 0) {
            Ok(len) if len > 0 => len,
            _ => return false,
        };
        let mut offset = 0;
        while offset + 16 <= len {
            let msg_len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().expect("4 bytes")) as usize;
            if msg_len < 16 || offset + msg_len > len {
                break;
            }
            if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..offset + msg_len])
                && let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = msg.payload
                && link.header.index == ifindex
            {
                return true;
            }
            offset += (msg_len + 3) & !3;
        }
    }
}

/// The child's verdict: nothing written means the deletion succeeded.
fn child_report(op: &str, report: OwnedFd) -> Result<(), NetlinkError> {
    let mut bytes = Vec::new();
    let _ = File::from(report).read_to_end(&mut bytes);
    if bytes.len() < 4 {
        return Ok(());
    }
    let errno = i32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
    let kernel_msg = String::from_utf8_lossy(&bytes[4..]).into_owned();
    Err(NetlinkError {
        op: op.to_owned(),
        source: std::io::Error::from_raw_os_error(errno),
        kernel_msg: (!kernel_msg.is_empty()).then_some(kernel_msg),
    })
}
