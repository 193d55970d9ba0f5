//! A UDP flood from a pod, for `bench policy`: threads of this process
//! enter the pod's network namespace (setns on the thread alone), each with
//! a connected UDP socket, and send small datagrams with sendmmsg in
//! batches, paced to a target rate (as fast as they can when they fall
//! behind). What they managed is reported, not assumed.

use std::{
    fs::File,
    io,
    net::{SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Datagrams per sendmmsg call.
const BATCH: usize = 64;
/// UDP payload bytes.
const PAYLOAD: usize = 18;

/// What the senders did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Datagrams the kernel accepted from the sockets.
    pub packets: u64,
    /// sendmmsg calls that failed (ENOBUFS and the like).
    pub errors: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Starts `threads` senders in the network namespace bound at `netns`,
/// `pps` datagrams per second in all towards `target`, for `secs`; thread
/// `i` runs on CPU `i % CPUs`. Returns at once: join the handle.
pub fn start(
    netns: &Path,
    target: SocketAddrV4,
    pps: u64,
    threads: usize,
    secs: f64,
) -> Result<thread::JoinHandle<Result<Sent>>> {
    let ns = File::open(netns).with_context(|| format!("open network namespace {}", netns.display()))?;
    let threads = threads.max(1);
    let per_thread = (pps as f64 / threads as f64).max(1.0);
    let duration = Duration::from_secs_f64(secs);
    // SAFETY: sysconf has no preconditions.
    let cpus = (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize;
    let mut fds = Vec::new();
    for _ in 0..threads {
        fds.push(ns.try_clone()?);
    }
    Ok(thread::spawn(move || {
        let start = Instant::now();
        let handles: Vec<_> = fds
            .into_iter()
            .enumerate()
            .map(|(i, ns)| thread::spawn(move || sender(&ns, target, per_thread, duration, i % cpus)))
            .collect();
        let mut total = Sent::default();
        for h in handles {
            let s = h.join().map_err(|_| anyhow::anyhow!("a flood thread panicked"))??;
            total.packets += s.packets;
            total.errors += s.errors;
        }
        total.elapsed = start.elapsed();
        Ok(total)
    }))
}

/// One sender: enters the namespace, pins itself, sends until `duration`.
fn sender(ns: &File, target: SocketAddrV4, per_sec: f64, duration: Duration, cpu: usize) -> Result<Sent> {
    // SAFETY: setns on this thread only (CLONE_NEWNET), with an open
    // namespace file; this thread makes sockets and nothing else.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns into the client pod");
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it;
    // sched_setaffinity(0, ...) pins the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let sock = UdpSocket::bind("0.0.0.0:0").context("UDP socket in the client pod")?;
    sock.connect(target).context("connect the UDP socket")?;
    let fd = sock.as_raw_fd();
    let payload = [0x5au8; PAYLOAD];
    let mut iov: Vec<libc::iovec> =
        (0..BATCH).map(|_| libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: PAYLOAD }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: an all-zero msghdr is valid (no name, no control).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = v;
            hdr.msg_iovlen = 1;
            libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }
        })
        .collect();
    let mut sent = Sent::default();
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        // Ahead of the pace: wait for it.
        let due = per_sec * elapsed.as_secs_f64();
        if sent.packets as f64 > due + BATCH as f64 {
            let ahead = (sent.packets as f64 - due) / per_sec;
            thread::sleep(Duration::from_secs_f64(ahead.min(0.01)));
            continue;
        }
        // SAFETY: msgs holds BATCH headers whose iovecs point at `payload`,
        // all alive for the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0) };
        if n < 0 {
            sent.errors += 1;
        } else {
            sent.packets += n as u64;
        }
    }
    sent.elapsed = start.elapsed();
    Ok(sent)
}
