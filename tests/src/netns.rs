//! A network namespace guard with helpers to run commands inside it.

use std::{
    ffi::OsStr,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{
    cleanup::{self, NETNS_DIR},
    exec::{self, DEFAULT_TIMEOUT, Output},
    process::ChildGuard,
};

/// A named namespace (`/run/netns/<name>`), deleted on drop together with
/// whatever still runs inside it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    owned: bool,
}

impl NetNs {
    /// `ip netns add <name>`, then brings `lo` up (what a runtime's loopback
    /// plugin does for a pod).
    pub fn create(name: &str) -> Result<Self> {
        exec::run(Command::new("ip").args(["netns", "add", name]), DEFAULT_TIMEOUT)
            .with_context(|| format!("create network namespace {name}"))?;
        let ns = Self { name: name.to_string(), path: Path::new(NETNS_DIR).join(name), owned: true };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what CNI_NETNS and `nsenter --net=` take.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The prefix a human types to run something in here.
    pub fn nsenter(&self) -> String {
        format!("nsenter --net={}", self.path.display())
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut cmd = Command::new(program);
        exec::enter_netns(&mut cmd, &self.path)?;
        Ok(cmd)
    }

    fn argv(&self, args: &[&str]) -> Result<Command> {
        let (program, rest) = args.split_first().context("empty command")?;
        let mut cmd = self.command(program)?;
        cmd.args(rest);
        Ok(cmd)
    }

    /// Runs `args` inside the namespace; whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        exec::output(&mut self.argv(args)?, None, DEFAULT_TIMEOUT)
    }

    /// Runs `args` inside the namespace; a non-zero exit is an error.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        exec::run(&mut self.argv(args)?, DEFAULT_TIMEOUT).with_context(|| format!("in network namespace {}", self.name))
    }

    /// Starts a long-running command inside the namespace, output appended
    /// to `log`, with `env` added to the environment.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)], log: &Path, detached: bool) -> Result<ChildGuard> {
        let mut cmd = self.argv(args)?;
        cmd.envs(env.iter().copied());
        // Appended to: an agent restarted within a test keeps one log.
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        if detached {
            exec::detach(&mut cmd);
        } else {
            exec::die_with_parent(&mut cmd);
        }
        let child = cmd.spawn().with_context(|| format!("start `{}` in {}", exec::describe(&cmd), self.name))?;
        Ok(ChildGuard::new(child, format!("{} in {}", args.join(" "), self.name)))
    }

    /// Interface names (`ip -j link show`).
    pub fn links(&self) -> Result<Vec<String>> {
        Ok(self.links_detail()?.into_iter().map(|l| l.ifname).collect())
    }

    pub fn links_detail(&self) -> Result<Vec<Link>> {
        let json = self.run(&["ip", "-j", "link", "show"])?;
        serde_json::from_str(&json).context("parse `ip -j link show`")
    }

    /// IPv4 addresses with prefix length on `dev`.
    pub fn ipv4_addrs(&self, dev: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
        let json = self.run(&["ip", "-j", "-4", "addr", "show", "dev", dev])?;
        let ifaces: Vec<AddrIface> = serde_json::from_str(&json).context("parse `ip -j addr show`")?;
        Ok(ifaces
            .into_iter()
            .flat_map(|i| i.addr_info)
            .filter_map(|a| Some((a.local.parse().ok()?, a.prefixlen)))
            .collect())
    }

    /// `ip -4 route show` lines, for assertions and failure messages.
    pub fn routes(&self) -> Result<Vec<String>> {
        Ok(self.run(&["ip", "-4", "route", "show"])?.lines().map(|l| l.trim().to_string()).collect())
    }

    /// `ip -6 route show` lines.
    pub fn routes6(&self) -> Result<Vec<String>> {
        Ok(self.run(&["ip", "-6", "route", "show"])?.lines().map(|l| l.trim().to_string()).collect())
    }

    /// One `ping -c1 -W1`, tried up to three times (the first packet of a
    /// fresh path may wait on neighbour resolution).
    pub fn ping(&self, dst: Ipv4Addr) -> Result<()> {
        self.ping_ip(dst.into())
    }

    /// `ping` for either family (`ping -6` for IPv6).
    pub fn ping_ip(&self, dst: std::net::IpAddr) -> Result<()> {
        let family = if dst.is_ipv6() { "-6" } else { "-4" };
        let dst = dst.to_string();
        let mut last = None;
        for _ in 0..3 {
            let out = self.output(&["ping", family, "-n", "-c1", "-W1", &dst])?;
            if out.success() {
                return Ok(());
            }
            last = Some(out);
        }
        let out = last.expect("tried at least once");
        bail!("ping {dst} from {} failed 3 times: {}{}", self.name, out.stdout_str().trim(), out.stderr_str().trim())
    }

    /// An HTTP GET with short timeouts; the body on success.
    pub fn curl(&self, url: &str) -> Result<String> {
        let out = self.output(&["curl", "-sS", "--connect-timeout", "2", "--max-time", "4", url])?;
        if !out.success() {
            bail!("curl {url} from {} failed ({}): {}", self.name, out.describe_status(), out.stderr_str().trim());
        }
        Ok(out.stdout_str())
    }

    /// Serves `docroot` with busybox httpd on `port` and waits until it answers.
    pub fn start_httpd(&self, docroot: &Path, port: u16, log: &Path, detached: bool) -> Result<ChildGuard> {
        let root = docroot.to_str().context("docroot path is not UTF-8")?;
        let port_s = port.to_string();
        let mut guard = self.spawn(&["busybox", "httpd", "-f", "-p", &port_s, "-h", root], &[], log, detached)?;
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = guard.try_wait() {
                bail!("busybox httpd in {} exited at once ({status}); see {}", self.name, log.display());
            }
            match self.output(&["curl", "-sS", "--max-time", "1", &url]) {
                Ok(out) if out.success() => return Ok(guard),
                _ if Instant::now() > deadline => {
                    bail!("busybox httpd in {} does not answer on {url}", self.name)
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Leaves the namespace in place past this guard (a kept sandbox).
    pub fn disown(&mut self) {
        self.owned = false;
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            cleanup::kill_processes_in(&self.path);
            if let Err(e) = cleanup::delete_netns(&self.name) {
                eprintln!("weir-testbed: {e:#}");
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub ifindex: u32,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub operstate: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub flags: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AddrIface {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: String,
    prefixlen: u8,
}
