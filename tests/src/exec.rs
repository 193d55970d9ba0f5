//! Running commands, optionally inside a network namespace, always with a
//! deadline, so a hung plugin or tool fails a test instead of hanging CI.
//!
//! Entering a namespace is done in the child between fork and exec with
//! `setns(CLONE_NEWNET)`: exactly what `nsenter --net=/run/netns/<name>` does,
//! minus one extra exec per command (which the CNI benchmark would otherwise
//! measure). `ip netns exec` is not used: it also remounts /sys, which hides
//! /sys/fs/bpf and the cgroup mounts from the command.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Deadline for commands that have no reason to take long (`ip`, `ping -W1`, plugins).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when the deadline passed and the command was killed.
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// "exit code 1", "killed by signal 9", "timed out".
    pub fn describe_status(&self) -> String {
        if self.timed_out {
            "timed out and was killed".to_string()
        } else if let Some(code) = self.status.code() {
            format!("exit code {code}")
        } else {
            format!("killed by signal {}", self.status.signal().unwrap_or(0))
        }
    }
}

/// A command line as a human would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains(char::is_whitespace) { format!("'{s}'") } else { s.into_owned() }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes `cmd` join the network namespace bound at `netns` before it execs.
pub fn enter_netns(cmd: &mut Command, netns: &Path) -> Result<()> {
    // Opened in the parent (O_CLOEXEC, so the program never inherits it); the
    // closure owns the file, which closes when `cmd` is dropped.
    let ns = File::open(netns).with_context(|| format!("open network namespace {}", netns.display()))?;
    // SAFETY: setns is a plain syscall, async-signal-safe, and touches no
    // memory of the (single-threaded) forked child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Makes the kernel SIGKILL the child when the thread that spawned it exits:
/// if a test process is killed outright (no Drop runs), its agents and
/// servers do not outlive it. Not used for processes a kept sandbox leaves
/// running on purpose.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is a plain syscall.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Puts the child in a session of its own, so a Ctrl-C typed later in the
/// terminal that started a kept sandbox does not reach its processes.
pub fn detach(cmd: &mut Command) {
    // SAFETY: setsid is a plain syscall.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `cmd.spawn()`, tried again a few times on ETXTBSY: a program written
/// just before (a test's fake plugin) is "busy" while another thread's
/// child, between its fork and exec, still holds the writer's descriptor
/// (Go's os/exec and containerd retry the same way).
fn spawn_retrying(cmd: &mut Command) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10 * tries));
            }
            other => return other,
        }
    }
}

/// Runs `cmd` to completion: writes `stdin` (small: it must fit the pipe
/// buffer, which CNI configs do), collects stdout and stderr, and kills the
/// command when `timeout` passes.
pub fn output(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_retrying(cmd).with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A child that exits without reading its stdin is not our error.
        match pipe.write_all(data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(e).context("write command stdin"),
        }
    }
    collect(child, timeout).with_context(|| format!("running `{}`", describe(cmd)))
}

/// Like `output`, but a non-zero exit is an error that quotes stderr.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = output(cmd, None, timeout)?;
    if !out.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.describe_status(),
            out.stderr_str().trim(),
            if out.stderr.is_empty() { out.stdout_str() } else { String::new() }
        );
    }
    Ok(out.stdout_str())
}

/// One loop over stdout, stderr and a pidfd of the child. The pidfd tells
/// when the child itself exited, so a grandchild that kept a pipe open (a
/// daemon) cannot make us wait for it.
fn collect(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let pidfd = pidfd_open(child.id())?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let mut exited = false;
    let mut timed_out = false;
    loop {
        if exited && !(out_open || err_open) {
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Once the child is gone, only drain what is already in the pipes.
        let wait_ms = if exited { 0 } else { remaining.as_millis().min(i32::MAX as u128) as i32 };
        let mut fds = [
            pollfd(if out_open { stdout.as_raw_fd() } else { -1 }),
            pollfd(if err_open { stderr.as_raw_fd() } else { -1 }),
            pollfd(if exited { -1 } else { pidfd.as_raw_fd() }),
        ];
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if n == 0 {
            if exited {
                break; // drained; whatever still holds the pipes is not the child
            }
            if Instant::now() >= deadline {
                timed_out = true;
                // The child is not reaped yet, so its pid cannot have been reused.
                let _ = child.kill();
                break;
            }
            continue;
        }
        if fds[0].revents != 0 {
            out_open = read_some(&mut stdout, &mut out)?;
        }
        if fds[1].revents != 0 {
            err_open = read_some(&mut stderr, &mut err)?;
        }
        if fds[2].revents != 0 {
            exited = true;
        }
    }
    let status = child.wait().context("wait for command")?;
    Ok(Output { status, stdout: out, stderr: err, timed_out })
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// Reads what is available; false at end of file.
fn read_some(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read command output"),
        }
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("pidfd_open (needs Linux 5.3+)");
    }
    // SAFETY: the fd was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_stdout_stderr_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = output(&mut cmd, Some(b"hello"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
        assert!(!out.timed_out);
    }

    #[test]
    fn kills_at_the_deadline() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let out = output(&mut cmd, None, Duration::from_millis(200)).unwrap();
        assert!(out.timed_out);
        assert!(!out.success());
        assert_eq!(out.describe_status(), "timed out and was killed");
    }

    #[test]
    fn a_daemonized_grandchild_holding_the_pipe_does_not_block() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 3 & echo started"]);
        let out = output(&mut cmd, None, Duration::from_secs(20)).unwrap();
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout_str(), "started\n");
    }

    #[test]
    fn run_quotes_stderr_on_failure() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 1"]), DEFAULT_TIMEOUT).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("boom") && msg.contains("exit code 1"), "{msg}");
    }
}
