//! Processes of this run as the benches watch them: paused, CPU time,
//! resident memory; the machine's load average.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

/// SIGSTOPs a process this run started until dropped (SIGCONT).
pub(in crate::bench) struct Paused(u32);

impl Paused {
    pub(in crate::bench) fn new(pid: u32) -> Self {
        // SAFETY: kill with the pid of our own child (the agent).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        Self(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// CPU time (user + system) of `pid` over `window`, in % of one core.
pub(in crate::bench) fn cpu_percent(pid: u32, window: Duration) -> Option<f64> {
    let ticks = || -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat; `rest` starts at field 3.
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, start) = (ticks()?, Instant::now());
    thread::sleep(window);
    let used = (ticks()? - t0) as f64 / hz;
    Some(used / start.elapsed().as_secs_f64() * 100.0)
}

pub(super) fn rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

pub(in crate::bench) fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
