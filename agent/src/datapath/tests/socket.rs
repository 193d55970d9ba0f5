//! Connect-time load balancing through a real cgroup: a child process in a
//! test-only cgroup v2 directory talks to a ClusterIP whose backends listen
//! on loopback in the test process. Not BPF_PROG_TEST_RUN: the kernel has
//! no test run for cgroup sock_addr programs (their prog ops are empty:
//! `bpf(BPF_PROG_TEST_RUN)` answers ENOTSUPP), so the verdicts, and the
//! errno a refused connect()/sendmsg() returns, are seen from a real
//! socket.
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket},
    path::PathBuf,
    process::Command,
};

use crate::datapath::{lb::maps::LbMaps, lb::programmer::LbProgrammer, tests::harness::TestDatapath};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::Protocol,
};

/// A cgroup v2 directory of our own, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| PathBuf::from(f[1]))
            .expect("no cgroup v2 mount: the socket load-balancing test needs one");
        // One per test: tests run in parallel in one process, and a cgroup
        // shared by two would run both tests' programs on each client.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!("weir-unit-sock-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn frontend(proto: Protocol, port: u16, backends: &[u16]) -> (Frontend, FrontendState) {
    (
        Frontend { addr: Ipv4Addr::new(10, 96, 0, 10).into(), port, proto, scope: Scope::Default },
        FrontendState {
            service: "ns/web".into(),
            kind: FrontendKind::ClusterIp,
            backends: backends
                .iter()
                .map(|p| BackendRef {
                    addr: BackendAddr { addr: Ipv4Addr::LOCALHOST.into(), port: *p, proto },
                    local: true,
                    terminating: false,
                })
                .collect(),
            affinity_timeout: 0,
            source_ranges: vec![],
            local_only: false,
        },
    )
}

const CLIENT: &str = r#"
import os, socket, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
s = socket.create_connection(("10.96.0.10", 80), timeout=3)
print("tcp", s.recv(5).decode(), s.getpeername())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"ping", ("10.96.0.10", 53))
data, src = u.recvfrom(16)
print("udp", data.decode(), src)
try:
    socket.create_connection(("10.96.0.10", 81), timeout=3)
    print("empty connected")
except OSError as e:
    print("empty refused", e.errno)
try:
    u.sendto(b"ping", ("10.96.0.10", 81))
    print("empty udp sent")
except OSError as e:
    print("empty udp refused", e.errno)
"#;

#[test]
#[ignore = "privileged: needs root, bpffs and cgroup v2; `cargo xtask test` runs it as root"]
fn sockets_in_the_cgroup_reach_services_and_see_the_service_address() {
    let mut t = TestDatapath::load();
    let cg = TestCgroup::new();
    t.dp.attach_socket_lb(&cg.0).unwrap();

    // Why this test uses a real socket: no test run for these programs.
    let err = crate::datapath::prog_test_run::errno_of(&mut t.dp, weir_common::pin::PROG_SOCK_CONNECT4);
    assert_eq!(err, Some(524), "BPF_PROG_TEST_RUN on a cgroup sock_addr program: want ENOTSUPP");

    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp_port, udp_port) = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
    let want: BTreeMap<_, _> = [
        frontend(Protocol::Tcp, 80, &[tcp_port]),
        frontend(Protocol::Udp, 53, &[udp_port]),
        frontend(Protocol::Tcp, 81, &[]),
        frontend(Protocol::Udp, 81, &[]),
    ]
    .into_iter()
    .collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    assert!(LbProgrammer::default().apply(&want, true, maps).errors.is_empty());

    let server = std::thread::spawn(move || {
        let (mut c, _) = tcp.accept().unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = udp.recv_from(&mut buf).unwrap();
        udp.send_to(b"pong", from).unwrap();
    });
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(&cg.0)
        .output()
        .expect("python3 (cargo xtask setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    server.join().unwrap();
    assert!(stdout.contains("tcp hello ('10.96.0.10', 80)"), "{stdout}");
    assert!(stdout.contains("udp pong ('10.96.0.10', 53)"), "{stdout}");
    // ECONNREFUSED (111) from connect() and from an unconnected sendto(),
    // as kube-proxy gives: at once, not a timeout, and not the EPERM a
    // bare rejecting verdict would give.
    assert!(stdout.contains("empty refused 111\n"), "{stdout}");
    assert!(stdout.contains("empty udp refused 111\n"), "{stdout}");
}

/// A frontend of any family with backends on loopback of its family.
fn frontend_at(addr: IpAddr, proto: Protocol, port: u16, backends: &[u16], affinity: u32) -> (Frontend, FrontendState) {
    let backend_addr = if addr.is_ipv6() { IpAddr::from(Ipv6Addr::LOCALHOST) } else { Ipv4Addr::LOCALHOST.into() };
    let (fe, mut state) = frontend(proto, port, backends);
    for b in &mut state.backends {
        b.addr.addr = backend_addr;
    }
    state.affinity_timeout = affinity;
    (Frontend { addr, ..fe }, state)
}

/// Accepts TCP connections forever, greeting each with `greeting` (the
/// thread ends with the test process).
fn greeter(listener: TcpListener, greeting: &'static [u8]) {
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(greeting);
        }
    });
}

const CLIENT6: &str = r#"
import os, socket, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
s = socket.create_connection(("fd00:10:96::a", 80), timeout=3)
print("tcp", s.recv(5).decode(), s.getpeername()[:2])
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"ping", ("fd00:10:96::a", 53))
data, src = u.recvfrom(16)
print("udp", data.decode(), src[:2])
try:
    socket.create_connection(("fd00:10:96::a", 81), timeout=3)
    print("empty connected")
except OSError as e:
    print("empty refused", e.errno)
try:
    u.sendto(b"ping", ("fd00:10:96::a", 81))
    print("empty udp sent")
except OSError as e:
    print("empty udp refused", e.errno)
m = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
m.settimeout(3)
m.connect(("::ffff:10.96.0.10", 80))
print("mapped", m.recv(5).decode(), m.getpeername()[:2])
seen = set()
for _ in range(12):
    a = socket.create_connection(("fd00:10:96::a", 90), timeout=3)
    seen.add(a.recv(2).decode())
print("affinity", sorted(seen))
"#;

/// connect6/sendmsg6/recvmsg6/getpeername6 with the IPv4 hooks' semantics:
/// an IPv6 ClusterIP reached over TCP and UDP shows the Service address,
/// one without endpoints refuses at once (ECONNREFUSED), ClientIP affinity
/// keeps a client on one backend, and a dual-stack socket reaching an IPv4
/// Service through an IPv4-mapped address is balanced by the IPv4 maps.
#[test]
#[ignore = "privileged: needs root, bpffs and cgroup v2; `cargo xtask test` runs it as root"]
fn ipv6_sockets_in_the_cgroup_reach_services_and_see_the_service_address() {
    let mut t = TestDatapath::load();
    let cg = TestCgroup::new();
    t.dp.attach_socket_lb(&cg.0).unwrap();

    let tcp = TcpListener::bind("[::1]:0").unwrap();
    let udp = UdpSocket::bind("[::1]:0").unwrap();
    let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let (one, two) = (TcpListener::bind("[::1]:0").unwrap(), TcpListener::bind("[::1]:0").unwrap());
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    let vip6: IpAddr = "fd00:10:96::a".parse().unwrap();
    let vip4: IpAddr = Ipv4Addr::new(10, 96, 0, 10).into();
    let want: BTreeMap<_, _> = [
        frontend_at(vip6, Protocol::Tcp, 80, &[port(&tcp)], 0),
        frontend_at(vip6, Protocol::Udp, 53, &[udp.local_addr().unwrap().port()], 0),
        frontend_at(vip6, Protocol::Tcp, 81, &[], 0),
        frontend_at(vip6, Protocol::Udp, 81, &[], 0),
        frontend_at(vip6, Protocol::Tcp, 90, &[port(&one), port(&two)], 600),
        frontend_at(vip4, Protocol::Tcp, 80, &[port(&tcp4)], 0),
    ]
    .into_iter()
    .collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    let report = LbProgrammer::default().apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{report:?}");

    greeter(tcp, b"hello");
    greeter(tcp4, b"hell4");
    greeter(one, b"b1");
    greeter(two, b"b2");
    std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(b"pong", from);
        }
    });
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT6)
        .arg(&cg.0)
        .output()
        .expect("python3 (cargo xtask setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tcp hello ('fd00:10:96::a', 80)"), "{stdout}");
    assert!(stdout.contains("udp pong ('fd00:10:96::a', 53)"), "{stdout}");
    assert!(stdout.contains("empty refused 111\n"), "{stdout}");
    assert!(stdout.contains("empty udp refused 111\n"), "{stdout}");
    assert!(stdout.contains("mapped hell4 ('::ffff:10.96.0.10', 80)"), "{stdout}");
    // Twelve connections, one backend of two: by chance 1 in 2,048.
    assert!(stdout.contains("affinity ['b1']") || stdout.contains("affinity ['b2']"), "{stdout}");
}

/// The IPv6 maps round-trip through the real pinned maps: what the
/// programmer wrote is read back by a restarted agent (`dump`, `restore`)
/// with every ID kept and nothing rewritten, source ranges included.
#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn ipv6_service_maps_survive_a_restart() {
    let mut t = TestDatapath::load();
    let vip6: IpAddr = "2001:db8::7".parse().unwrap();
    let (fe6, mut st6) = frontend_at(vip6, Protocol::Tcp, 443, &[8443, 8444], 0);
    st6.kind = FrontendKind::LoadBalancer;
    st6.source_ranges = vec!["2001:db8:1::/48".parse().unwrap()];
    let want: BTreeMap<_, _> =
        [(fe6, st6), frontend_at(Ipv4Addr::new(10, 96, 0, 10).into(), Protocol::Tcp, 80, &[8080], 0)]
            .into_iter()
            .collect();
    let maps: &mut dyn LbMaps = &mut t.dp;
    let report = LbProgrammer::default().apply(&want, true, maps);
    assert!(report.errors.is_empty(), "{report:?}");
    let dump = maps.dump().unwrap();
    assert_eq!((dump.services6.len(), dump.backends6.len(), dump.rev_nats6.len()), (3, 2, 1));
    assert_eq!((dump.services.len(), dump.backends.len(), dump.rev_nats.len()), (2, 1, 1));
    let ranges: Vec<String> = dump.source_ranges.values().flatten().map(|r| r.to_string()).collect();
    assert_eq!(ranges, ["2001:db8:1::/48"]);

    let mut restarted = LbProgrammer::restore(&dump);
    let report = restarted.apply(&want, true, maps);
    assert_eq!(report, Default::default(), "a restart rewrites nothing");
    assert_eq!(maps.dump().unwrap(), dump);
    // And pruning removes the IPv6 entries, ranges included.
    let report = restarted.apply(&BTreeMap::new(), true, maps);
    assert!(report.errors.is_empty(), "{report:?}");
    let empty = maps.dump().unwrap();
    assert_eq!(empty, Default::default());
}
