//! The hidden subcommands `bench services-load` (the load generator of one
//! cell) and `bench services-echo` (one backend's server), re-executed by
//! the parent inside the pods' namespaces.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::REQUEST;

/// `bench services-load` (hidden): the load generator of one cell.
#[derive(Args)]
pub struct LoadArgs {
    /// Where to connect (IPv4 or `[IPv6]:port`); several (comma-separated)
    /// are taken in turn, one per connection.
    #[arg(long, value_delimiter = ',', required = true)]
    target: Vec<SocketAddr>,
    #[arg(long)]
    secs: f64,
    #[arg(long)]
    warmup: f64,
    #[arg(long)]
    streams: usize,
    #[arg(long)]
    cpu: usize,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    nice: i32,
    /// A cgroup v2 directory to join before opening any socket.
    #[arg(long)]
    cgroup: Option<PathBuf>,
}

/// `bench services-echo` (hidden): one backend's server.
#[derive(Args)]
pub struct EchoArgs {
    #[arg(long)]
    label: String,
    #[arg(long)]
    port: u16,
    #[arg(long)]
    cpu: usize,
    #[arg(long)]
    threads: usize,
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    nice: i32,
}

/// Pins the calling thread (and the threads it starts later) to `cpu` and
/// sets the process's nice value.
fn pin(cpu: usize, nice: i32) -> Result<()> {
    if nice != 0 {
        // SAFETY: setpriority on this process.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("nice {nice}"));
        }
    }
    pin_to_cpu(cpu)
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0)
    // applies to the calling thread, whose children inherit it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("pin to CPU {cpu}"));
        }
    }
    Ok(())
}

/// A blocking TCP connect with send and receive timeouts set before it (one
/// setsockopt each: no non-blocking connect + poll dance per connection).
fn connect(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: all-zero is a valid sockaddr_storage; the family's own
    // struct is written into it below.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let (family, len) = match target {
        SocketAddr::V4(t) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: t.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*t.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (libc::AF_INET, std::mem::size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(t) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: t.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: t.ip().octets() },
                sin6_scope_id: t.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (libc::AF_INET6, std::mem::size_of::<libc::sockaddr_in6>())
        }
    };
    // SAFETY: plain socket syscalls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let rc = libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len as libc::socklen_t);
        if rc != 0 {
            let e = io::Error::last_os_error();
            // A blocking connect that hit SO_SNDTIMEO.
            if e.raw_os_error() == Some(libc::EINPROGRESS) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            return Err(e);
        }
        Ok(TcpStream::from(sock))
    }
}

/// connect, request, reply, close: the latency to the reply's first byte and
/// the reply's length in `buf` (read to EOF: the server closes first).
pub(super) fn exchange(target: SocketAddr, timeout: Duration, buf: &mut [u8]) -> io::Result<(Duration, usize)> {
    let start = Instant::now();
    let mut s = connect(target, timeout)?;
    s.write_all(REQUEST)?;
    let mut len = s.read(buf)?;
    let latency = start.elapsed();
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a reply"));
    }
    loop {
        match s.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
        if len == buf.len() {
            return Err(io::Error::other("reply too long"));
        }
    }
    Ok((latency, len))
}

#[derive(Default)]
struct StreamOut {
    samples: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    backends: Vec<(Vec<u8>, u64)>,
}

fn stream(targets: &[SocketAddr], stop: &AtomicBool, keep: bool) -> StreamOut {
    let mut out = StreamOut { samples: Vec::with_capacity(if keep { 1 << 17 } else { 0 }), ..Default::default() };
    let mut buf = [0u8; 256];
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let target = targets[next % targets.len()];
        next += 1;
        match exchange(target, Duration::from_secs(2), &mut buf) {
            Ok((latency, len)) => {
                if !keep {
                    continue;
                }
                out.samples.push(latency);
                let label = buf[..len].split(|b| *b == b' ').next().unwrap_or_default();
                match out.backends.iter_mut().find(|(l, _)| l == label) {
                    Some((_, n)) => *n += 1,
                    None => out.backends.push((label.to_vec(), 1)),
                }
            }
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(e.to_string());
                }
            }
        }
    }
    out
}

/// `streams` threads for `secs`; their outputs and the wall time.
fn phase(targets: &[SocketAddr], streams: usize, secs: f64, keep: bool) -> (Vec<StreamOut>, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let outs = thread::scope(|s| {
        let handles: Vec<_> = (0..streams).map(|_| s.spawn(|| stream(targets, &stop, keep))).collect();
        thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().expect("load thread panicked")).collect()
    });
    (outs, start.elapsed())
}

/// The load generator: prints one JSON object.
pub fn load(args: LoadArgs) -> Result<()> {
    if let Some(cg) = &args.cgroup {
        // Before any socket exists: socket LB applies per cgroup at connect.
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", cg.display()))?;
    }
    pin(args.cpu, args.nice)?;
    if args.warmup > 0.0 {
        phase(&args.target, args.streams, args.warmup, false);
    }
    let (outs, elapsed) = phase(&args.target, args.streams, args.secs, true);
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    for o in outs {
        samples.extend(o.samples);
        errors += o.errors;
        first_error = first_error.or(o.first_error);
        for (l, n) in o.backends {
            *backends.entry(String::from_utf8_lossy(&l).into_owned()).or_default() += n;
        }
    }
    let samples_ns: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
    println!(
        "{}",
        json!({
            "errors": errors,
            "first_error": first_error,
            "elapsed_s": elapsed.as_secs_f64(),
            "samples_ns": samples_ns,
            "backends": backends,
        })
    );
    Ok(())
}

/// The echo server: answers `<label> <request>` and closes (first, so the
/// TIME_WAIT lands here and not on the client's ephemeral ports).
pub fn echo(args: EchoArgs) -> Result<()> {
    pin(args.cpu, args.nice)?;
    // Both families on one socket (`[::]` takes IPv4 too, as v4-mapped);
    // IPv4 alone where the kernel has no IPv6.
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, args.port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port)))
        .with_context(|| format!("bind :{}", args.port))?;
    println!("listening: {} on :{}", args.label, args.port);
    io::stdout().flush()?;
    let label = Arc::new(args.label.into_bytes());
    let workers: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let listener = listener.try_clone()?;
            let label = Arc::clone(&label);
            Ok(thread::spawn(move || serve(&listener, &label)))
        })
        .collect::<io::Result<_>>()?;
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn serve(listener: &TcpListener, label: &[u8]) {
    let mut buf = [0u8; 512];
    let mut reply = Vec::with_capacity(600);
    loop {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let Ok(n) = s.read(&mut buf) else { continue };
        reply.clear();
        reply.extend_from_slice(label);
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        let _ = s.write_all(&reply);
    }
}
