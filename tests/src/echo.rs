//! TCP and UDP echo servers that name themselves, and one-shot clients: the
//! Service tests ask "which backend answered, over which protocol".

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    thread,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{NetNs, process::ChildGuard};

/// Answers every TCP line and UDP datagram with `<label> <what came>`, on
/// `0.0.0.0`, or on the address given third (`::` serves both families:
/// a fresh namespace has `bindv6only` off).
const SERVER: &str = r#"
import socket, sys, threading
label, port = sys.argv[1].encode(), int(sys.argv[2])
host = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
def tcp():
    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(64)
    def serve(c):
        with c:
            while True:
                d = c.recv(4096)
                if not d: return
                c.sendall(label + b" " + d)
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp():
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((host, port))
    while True:
        d, a = u.recvfrom(4096); u.sendto(label + b" " + d, a)
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;

/// One request, one answer; prints the answer and where it came from (the
/// address the client's socket saw).
const CLIENT: &str = r#"
import socket, sys
proto, host, port, msg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
if len(sys.argv) > 5:
    # Join a cgroup first (connect-time load balancing is per cgroup).
    open(sys.argv[5] + "/cgroup.procs", "w").write("0")
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=3); s.sendall(msg)
    print(s.recv(4096).decode(), s.getpeername()[0])
else:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(3); u.sendto(msg, (host, port))
    d, a = u.recvfrom(4096); print(d.decode(), a[0])
"#;

/// Like SERVER, on every port given, in one process; says `ready` once every
/// socket listens. UDP binds `$ECHO_UDP_ADDR` when set (see
/// `serve_host_network`).
const MULTI_SERVER: &str = r#"
import os, socket, sys, threading
label, ports = sys.argv[1].encode(), [int(p) for p in sys.argv[2:]]
udp_addr = os.environ.get("ECHO_UDP_ADDR", "0.0.0.0")
def tcp(s):
    def serve(c):
        try:
            with c:
                c.settimeout(30)
                while True:
                    d = c.recv(4096)
                    if not d: return
                    c.sendall(label + b" " + d)
        except OSError:
            pass
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp(u):
    while True:
        d, a = u.recvfrom(65535)
        try: u.sendto(label + b" " + d, a)
        except OSError: pass
threads = []
for port in ports:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(512)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((udp_addr, port))
    threads += [threading.Thread(target=tcp, args=(s,), daemon=True), threading.Thread(target=udp, args=(u,), daemon=True)]
    if udp_addr == "0.0.0.0":
        # IPv6 too, on sockets of its own (an IPv4 peer keeps its plain
        # address); where the namespace has no IPv6, IPv4 only.
        try:
            s6 = socket.socket(socket.AF_INET6); s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); s6.bind(("::", port)); s6.listen(512)
            u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); u6.bind(("::", port))
            threads += [threading.Thread(target=tcp, args=(s6,), daemon=True), threading.Thread(target=udp, args=(u6,), daemon=True)]
        except OSError:
            pass
for t in threads: t.start()
print("ready", label.decode(), flush=True)
threading.Event().wait()
"#;

/// Starts one echo server answering TCP and UDP on every port of `ports`
/// (`<label> <what came>`), and waits until it listens on all of them.
pub fn serve_ports(netns: &NetNs, label: &str, ports: &[u16], log: &Path, detached: bool) -> Result<ChildGuard> {
    let mut all = serve_ports_many(&[(netns, label, log)], ports, detached)?;
    Ok(all.remove(0))
}

/// `serve_ports` for several (namespace, label, log) at once: all are
/// started, then waited for. Call it from the thread that keeps the
/// guards: a server dies with the thread that started it (see
/// `exec::die_with_parent`).
pub fn serve_ports_many(servers: &[(&NetNs, &str, &Path)], ports: &[u16], detached: bool) -> Result<Vec<ChildGuard>> {
    start_multi(servers, ports, &[], detached)
}

/// An endpoint on a node's host network, as upstream's netexec runs there:
/// TCP on every address, UDP on `udp_addr` only
/// (`--udp-listen-addresses=$(HOST_IP)`: a socket bound to 0.0.0.0 answers a
/// pod from the pod gateway's address, the local route's source, not the
/// address it was asked on).
pub fn serve_host_network(
    netns: &NetNs,
    label: &str,
    udp_addr: std::net::Ipv4Addr,
    ports: &[u16],
    log: &Path,
) -> Result<ChildGuard> {
    let addr = udp_addr.to_string();
    let mut all = start_multi(&[(netns, label, log)], ports, &[("ECHO_UDP_ADDR", addr.as_str())], false)?;
    Ok(all.remove(0))
}

fn start_multi(
    servers: &[(&NetNs, &str, &Path)],
    ports: &[u16],
    env: &[(&str, &str)],
    detached: bool,
) -> Result<Vec<ChildGuard>> {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut started = Vec::new();
    for (netns, label, log) in servers {
        let mut args = vec!["python3", "-c", MULTI_SERVER, label];
        args.extend(ports.iter().map(String::as_str));
        let ready = format!("ready {label}");
        let already = std::fs::read_to_string(log).map(|t| t.matches(&ready).count()).unwrap_or(0);
        started.push((netns.spawn(&args, env, log, detached)?, ready, already));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut guards = Vec::new();
    for ((mut guard, ready, already), (netns, _, log)) in started.into_iter().zip(servers) {
        loop {
            if let Some(status) = guard.try_wait() {
                bail!("echo server in {} exited at once ({status}); see {}", netns.name(), log.display());
            }
            if std::fs::read_to_string(log).is_ok_and(|t| t.matches(&ready).count() > already) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("echo server in {} not listening on {ports:?} after 20 s; see {}", netns.name(), log.display());
            }
            thread::sleep(Duration::from_millis(20));
        }
        guards.push(guard);
    }
    Ok(guards)
}

/// Starts the echo server on `port` (TCP and UDP) and waits until it answers.
pub fn serve(netns: &NetNs, label: &str, port: u16, log: &Path, detached: bool) -> Result<ChildGuard> {
    serve_on(netns, label, port, log, detached, "0.0.0.0")
}

/// Like `serve`, over IPv4 and IPv6 (bound to `::`).
pub fn serve_dual_stack(netns: &NetNs, label: &str, port: u16, log: &Path) -> Result<ChildGuard> {
    serve_on(netns, label, port, log, false, "::")
}

fn serve_on(netns: &NetNs, label: &str, port: u16, log: &Path, detached: bool, bind: &str) -> Result<ChildGuard> {
    let port_s = port.to_string();
    let mut guard = netns.spawn(&["python3", "-c", SERVER, label, &port_s, bind], &[], log, detached)?;
    for _ in 0..100 {
        if let Some(status) = guard.try_wait() {
            bail!("echo server in {} exited at once ({status}); see {}", netns.name(), log.display());
        }
        if ask(netns, "tcp", Ipv4Addr::LOCALHOST, port, "ping").is_ok() {
            return Ok(guard);
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("echo server in {} does not answer on port {port}", netns.name())
}

/// What the server said and the peer address the client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The label of the server that answered.
    pub server: String,
    pub peer: Ipv4Addr,
}

/// One round trip over `proto` ("tcp" or "udp").
pub fn ask(netns: &NetNs, proto: &str, host: Ipv4Addr, port: u16, msg: &str) -> Result<Answer> {
    ask_from(netns, None, proto, host, port, msg)
}

/// Like `ask`, from a process that first joins `cgroup` (a cgroup v2
/// directory).
pub fn ask_from(
    netns: &NetNs,
    cgroup: Option<&Path>,
    proto: &str,
    host: Ipv4Addr,
    port: u16,
    msg: &str,
) -> Result<Answer> {
    let (server, peer) = ask_raw(netns, cgroup, proto, &host.to_string(), port, msg)?;
    Ok(Answer { server, peer: peer.parse()? })
}

/// An answer over either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerIp {
    pub server: String,
    pub peer: IpAddr,
}

/// `ask_from` to an address of either family.
pub fn ask_ip_from(
    netns: &NetNs,
    cgroup: Option<&Path>,
    proto: &str,
    host: IpAddr,
    port: u16,
    msg: &str,
) -> Result<AnswerIp> {
    let (server, peer) = ask_raw(netns, cgroup, proto, &host.to_string(), port, msg)?;
    Ok(AnswerIp { server, peer: peer.parse()? })
}

/// (server label, peer address as the client's socket saw it).
fn ask_raw(
    netns: &NetNs,
    cgroup: Option<&Path>,
    proto: &str,
    host: &str,
    port: u16,
    msg: &str,
) -> Result<(String, String)> {
    let (host, port) = (host.to_string(), port.to_string());
    let mut args = vec!["python3", "-c", CLIENT, proto, &host, &port, msg];
    let cg = cgroup.map(|c| c.to_string_lossy().into_owned());
    if let Some(cg) = &cg {
        args.push(cg);
    }
    let out = netns.output(&args)?;
    if !out.success() {
        bail!(
            "{proto} {host}:{port} from {} failed ({}): {}",
            netns.name(),
            out.describe_status(),
            out.stderr_str().trim().lines().last().unwrap_or_default()
        );
    }
    let text = out.stdout_str();
    let mut words = text.split_whitespace();
    let (Some(server), Some(_echo), Some(peer)) = (words.next(), words.next(), words.next()) else {
        bail!("unexpected echo answer {text:?}");
    };
    Ok((server.to_string(), peer.to_string()))
}
