//! A fast connectivity prober for truth tables (NetworkPolicy tests): one
//! python process per client namespace probes every target at once (a
//! thread each), TCP connect + one request/answer or UDP request/answer,
//! each with its own timeout, and prints one line per probe. `Prober` keeps
//! that process running and feeds it one batch per round (python's start
//! costs 0.2 s on a busy 2-core machine, nine of them a second);
//! `run_batches` drives several at once, so a whole matrix takes about one
//! timeout when something is blocked and a few milliseconds otherwise.
//! `run` is the one-shot form.
//!
//! Servers are `echo::serve_ports`: they answer `<label> <request>`, so a
//! probe knows which server answered (a Service's backend, say).

use std::{
    collections::BTreeMap,
    fmt,
    io::{Read, Write},
    net::IpAddr,
    os::fd::AsRawFd,
    process::{ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{exec, netns::NetNs, process::ChildGuard};

/// Every probe in its own thread; output: `<index> ok <label>`,
/// `<index> fail <why>` or `<index> bad <what came>`. With probes as
/// arguments (`<timeout> <spec>...`) it runs them once; without, it reads
/// one batch per line (`<timeout> <spec>...`) and ends each batch's output
/// with `done`.
const PROBER: &str = r#"
import errno, socket, sys, threading
def one(out, i, spec, timeout):
    proto, host, port, sport = spec.split(",")
    s = None
    try:
        v6 = ":" in host
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if v6 else "0.0.0.0", int(sport)))
        s.settimeout(timeout)
        msg = b"probe %d" % i
        if proto == "tcp":
            s.connect((host, int(port))); s.sendall(msg); d = s.recv(4096)
        else:
            s.sendto(msg, (host, int(port))); d, _ = s.recvfrom(4096)
        w = d.decode(errors="replace").split()
        out[i] = ("ok " + w[0]) if len(w) == 3 and w[1:] == ["probe", str(i)] else ("bad " + repr(d))
    except socket.timeout:
        out[i] = "fail timeout"
    except OSError as e:
        out[i] = "fail " + errno.errorcode.get(e.errno, str(e))
    finally:
        if s is not None: s.close()
def batch(timeout, specs):
    out = ["fail notrun"] * len(specs)
    ts = [threading.Thread(target=one, args=(out, i, sp, timeout)) for i, sp in enumerate(specs)]
    for t in ts: t.start()
    for t in ts: t.join()
    return "".join("%d %s\n" % (i, o) for i, o in enumerate(out))
if len(sys.argv) > 1:
    sys.stdout.write(batch(float(sys.argv[1]), sys.argv[2:])); sys.stdout.flush()
else:
    while True:
        line = sys.stdin.readline()
        if not line: break
        words = line.split()
        if words:
            sys.stdout.write(batch(float(words[0]), words[1:]) + "done\n"); sys.stdout.flush()
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// As Kubernetes spells it.
    pub fn k8s(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One probe from a client namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// IPv4 or IPv6: the probe's socket is of the same family.
    pub dst: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// The client's source port; 0 lets the kernel choose.
    pub src_port: u16,
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server labelled so answered.
    Answered(String),
    /// No answer: timeout, refused, reset, unreachable.
    Blocked(String),
    /// The probe itself could not run (a local error, a garbled answer):
    /// neither allowed nor blocked, a harness problem.
    Broken(String),
}

impl Outcome {
    pub fn answered_by(&self) -> Option<&str> {
        match self {
            Outcome::Answered(l) => Some(l),
            _ => None,
        }
    }
}

/// Local errors of the probing process, not verdicts of the network.
const LOCAL_ERRORS: &[&str] = &["EADDRINUSE", "EADDRNOTAVAIL", "EMFILE", "ENFILE", "ENOBUFS", "EINVAL", "notrun"];

fn parse(line: &str) -> Option<(usize, Outcome)> {
    let mut words = line.splitn(3, ' ');
    let index = words.next()?.parse().ok()?;
    let kind = words.next()?;
    let rest = words.next().unwrap_or_default().to_string();
    let outcome = match kind {
        "ok" => Outcome::Answered(rest),
        "fail" if LOCAL_ERRORS.contains(&rest.as_str()) => Outcome::Broken(rest),
        "fail" => Outcome::Blocked(rest),
        _ => Outcome::Broken(format!("{kind} {rest}")),
    };
    Some((index, outcome))
}

/// Runs `probes` from `netns`, all at once; `timeout` is per socket
/// operation (connect, then answer). One outcome per probe, in order.
pub fn run(netns: &NetNs, probes: &[Probe], timeout: Duration) -> Result<Vec<Outcome>> {
    if probes.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = netns.command("python3")?;
    cmd.arg("-c").arg(PROBER).arg(format!("{}", timeout.as_secs_f64())).args(specs(probes));
    // Two socket operations per probe at most, plus python's start.
    let out = exec::output(&mut cmd, None, timeout * 2 + Duration::from_secs(20))?;
    if !out.success() {
        bail!("prober in {} failed ({}): {}", netns.name(), out.describe_status(), out.stderr_str().trim());
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; probes.len()];
    for line in out.stdout_str().lines() {
        let (i, o) = parse(line).with_context(|| format!("prober in {}: unexpected line {line:?}", netns.name()))?;
        let slot = outcomes.get_mut(i).with_context(|| format!("prober in {}: no probe {i}", netns.name()))?;
        *slot = Some(o);
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| o.with_context(|| format!("prober in {}: no outcome for probe {i}", netns.name())))
        .collect()
}

fn specs(probes: &[Probe]) -> Vec<String> {
    probes.iter().map(|p| format!("{},{},{},{}", p.proto, p.dst, p.port, p.src_port)).collect()
}

/// A prober process kept running in a client namespace (killed on drop).
/// Start it from the thread that keeps it: it dies with the thread that
/// started it (`exec::die_with_parent`).
pub struct Prober {
    stdin: ChildStdin,
    stdout: ChildStdout,
    pending: Vec<u8>,
    what: String,
    guard: ChildGuard,
}

impl Prober {
    pub fn start(netns: &NetNs) -> Result<Self> {
        let mut cmd = netns.command("python3")?;
        cmd.arg("-c").arg(PROBER).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        exec::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("start the prober in {}", netns.name()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let what = format!("prober in {}", netns.name());
        Ok(Self { stdin, stdout, pending: Vec::new(), guard: ChildGuard::new(child, what.clone()), what })
    }

    /// Hands over a batch; the process starts probing at once.
    pub fn send(&mut self, probes: &[Probe], timeout: Duration) -> Result<()> {
        let line = format!("{} {}\n", timeout.as_secs_f64(), specs(probes).join(" "));
        self.stdin.write_all(line.as_bytes()).with_context(|| format!("{}: write a batch", self.what))?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The outcomes of the batch sent last (`n` probes), or an error after
    /// `deadline`.
    pub fn receive(&mut self, n: usize, deadline: Instant) -> Result<Vec<Outcome>> {
        let text = loop {
            if let Some(end) = find(&self.pending, b"done\n") {
                let text = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                self.pending.drain(..end + 5);
                break text;
            }
            if let Some(status) = self.guard.try_wait() {
                bail!("{} exited ({status})", self.what);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: no answer by the deadline", self.what);
            }
            let mut fds = [libc::pollfd { fd: self.stdout.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis().min(1000) as i32) };
            if ready > 0 {
                let mut chunk = [0u8; 16 * 1024];
                let got = self.stdout.read(&mut chunk).with_context(|| format!("{}: read", self.what))?;
                if got == 0 {
                    bail!("{} closed its output", self.what);
                }
                self.pending.extend_from_slice(&chunk[..got]);
            }
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        for line in text.lines() {
            let (i, o) = parse(line).with_context(|| format!("{}: unexpected line {line:?}", self.what))?;
            *outcomes.get_mut(i).with_context(|| format!("{}: no probe {i}", self.what))? = Some(o);
        }
        outcomes
            .into_iter()
            .enumerate()
            .map(|(i, o)| o.with_context(|| format!("{}: no outcome for probe {i}", self.what)))
            .collect()
    }

    pub fn run(&mut self, probes: &[Probe], timeout: Duration) -> Result<Vec<Outcome>> {
        self.send(probes, timeout)?;
        self.receive(probes.len(), Instant::now() + timeout * 2 + Duration::from_secs(20))
    }
}

/// One batch per prober, all probing at once; outcomes per prober.
pub fn run_batches(batches: &mut [(&mut Prober, Vec<Probe>)], timeout: Duration) -> Result<Vec<Vec<Outcome>>> {
    for (prober, probes) in batches.iter_mut() {
        prober.send(probes, timeout)?;
    }
    let deadline = Instant::now() + timeout * 2 + Duration::from_secs(20);
    batches.iter_mut().map(|(prober, probes)| prober.receive(probes.len(), deadline)).collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // At a line start: "done\n" alone on its line.
    haystack
        .windows(needle.len())
        .enumerate()
        .find(|(i, w)| *w == needle && (*i == 0 || haystack[i - 1] == b'\n'))
        .map(|(i, _)| i)
}

/// Source ports that are never reused within a run (per client: 55,000
/// before wrapping), so a probe never matches the connection-tracking
/// state of an earlier probe, and a verdict is always a new flow's.
#[derive(Debug, Default)]
pub struct SourcePorts {
    next: BTreeMap<String, u32>,
}

impl SourcePorts {
    pub const FIRST: u16 = 10_000;
    pub const LAST: u16 = 65_000;

    pub fn new() -> Self {
        Self::default()
    }

    /// The next port for `client` (any key naming the client's address).
    pub fn next(&mut self, client: &str) -> u16 {
        let n = self.next.entry(client.to_string()).or_insert(0);
        let span = u32::from(Self::LAST - Self::FIRST) + 1;
        let port = Self::FIRST + (*n % span) as u16;
        *n += 1;
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prober_lines_parse() {
        assert_eq!(parse("3 ok x/a"), Some((3, Outcome::Answered("x/a".into()))));
        assert_eq!(parse("0 fail timeout"), Some((0, Outcome::Blocked("timeout".into()))));
        assert_eq!(parse("1 fail ECONNREFUSED"), Some((1, Outcome::Blocked("ECONNREFUSED".into()))));
        assert_eq!(parse("2 fail EADDRINUSE"), Some((2, Outcome::Broken("EADDRINUSE".into()))));
        assert!(matches!(parse("4 bad b'junk'"), Some((4, Outcome::Broken(_)))));
        assert_eq!(parse("nonsense"), None);
    }

    #[test]
    fn source_ports_are_not_reused_per_client() {
        let mut ports = SourcePorts::new();
        let a: Vec<u16> = (0..1000).map(|_| ports.next("a")).collect();
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
        assert_eq!(ports.next("b"), SourcePorts::FIRST);
        assert!(a.iter().all(|p| (SourcePorts::FIRST..=SourcePorts::LAST).contains(p)));
    }
}
