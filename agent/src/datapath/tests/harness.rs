//! Verdict tests for the kernel programs, run in the kernel with
//! BPF_PROG_TEST_RUN on crafted packets. Privileged (root + bpffs):
//! `cargo xtask test` runs them with `--include-ignored` when it is root.
use weir_common::{DropReason, EndpointInfo, EndpointKey, lb, pin, policy};

use crate::datapath::{Datapath, prog_test_run};

pub const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
pub const LOOPBACK: u32 = 1;

/// A datapath pinned in a private bpffs directory, removed on drop.
pub struct TestDatapath {
    // Dropped before the directory guard: maps and programs close, then the
    // pins go.
    pub dp: Datapath,
    dir: PinDir,
}

/// Removes the pin directory on drop, panics included; made before loading,
/// so a failed load leaves nothing either.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestDatapath {
    pub fn load() -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "privileged datapath test run without root: use `cargo xtask test` as root"
        );
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/weir-unit-{}-{}",
            std::process::id(),
            std::thread::current().name().unwrap_or("t").replace("::", "-")
        ));
        let dir = PinDir(dir);
        let _ = std::fs::remove_dir_all(&dir.0);
        let dp = Datapath::load(&dir.0).unwrap_or_else(|e| {
            panic!("loading datapath into {}: {e} (bpffs mounted on /sys/fs/bpf? `cargo xtask setup`)", dir.0.display())
        });
        Self { dp, dir }
    }

    fn run(&self, packet: &[u8]) -> u32 {
        prog_test_run::run(&self.dp, pin::PROG_FROM_POD, packet, LOOPBACK).expect("BPF_PROG_TEST_RUN").retval
    }

    pub fn pin_dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    pub fn count(&self, reason: DropReason) -> u64 {
        crate::datapath::loader::verdict_counts(&self.dir.0).unwrap().into_iter().find(|(r, _)| *r == reason).unwrap().1
    }
}

/// Ethernet + IPv4 + UDP, checksums not needed by the program.
fn udp_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // dst mac
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // src mac
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    p.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
    p
}

fn arp_packet() -> Vec<u8> {
    let mut p = vec![0xff; 6];
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&0x0806u16.to_be_bytes());
    p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 10, 244, 1, 5, 0, 0, 0, 0, 0, 0, 10, 244, 1, 1]);
    p
}

pub fn add_endpoint(t: &mut TestDatapath, ifindex: u32, ip: [u8; 4]) {
    t.dp.endpoints()
        .unwrap()
        .insert(EndpointKey { ifindex }, EndpointInfo::new(ip, EndpointInfo::FLAG_VERIFY_SOURCE), 0)
        .unwrap();
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn from_pod_passes_own_source_and_drops_spoofed() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, [10, 244, 1, 5]);

    assert_eq!(t.run(&udp_packet([10, 244, 1, 5], [10, 244, 2, 9])), TC_ACT_OK);
    assert_eq!(t.count(DropReason::Passed), 1);

    assert_eq!(t.run(&udp_packet([10, 244, 1, 6], [10, 244, 2, 9])), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::SourceSpoofed), 1);
    assert_eq!(t.count(DropReason::Passed), 1);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn from_pod_fails_closed_without_endpoint_but_lets_arp_through() {
    let mut t = TestDatapath::load();
    // An endpoint for another interface only.
    add_endpoint(&mut t, 4242, [10, 244, 1, 5]);

    assert_eq!(t.run(&udp_packet([10, 244, 1, 5], [10, 244, 2, 9])), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::UnknownEndpoint), 1);
    assert_eq!(t.run(&arp_packet()), TC_ACT_OK);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn from_pod_drops_ipv4_with_bad_header_length() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, LOOPBACK, [10, 244, 1, 5]);
    let mut p = udp_packet([10, 244, 1, 5], [10, 244, 2, 9]);
    p[14] = 0x43; // version 4, IHL 3 words: shorter than the fixed header
    assert_eq!(t.run(&p), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::Malformed), 1);
    p[14] = 0x65; // version 6 in an IPv4 frame
    assert_eq!(t.run(&p), TC_ACT_SHOT);
    assert_eq!(t.count(DropReason::Malformed), 2);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn fill_levels_count_entries_and_show_capacity() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, 7, [10, 244, 1, 7]);
    add_endpoint(&mut t, 8, [10, 244, 1, 8]);
    let fill = crate::datapath::map_fill::fill_levels(t.pin_dir());
    assert_eq!(fill.len(), crate::datapath::map_fill::MAPS.len(), "{fill:?}");
    let endpoints = fill.iter().find(|(m, _, _)| *m == pin::MAP_ENDPOINTS).unwrap();
    assert_eq!((endpoints.1, endpoints.2), (2, pin::MAX_ENDPOINTS));
    assert!(
        fill.iter().filter(|(m, _, _)| *m != pin::MAP_ENDPOINTS).all(|(_, n, cap)| *n == 0 && *cap > 0),
        "{fill:?}"
    );
    // The capacities the kernel reports are the ones `weir_common` names.
    let named = [
        (pin::MAP_ENDPOINTS, pin::MAX_ENDPOINTS),
        (pin::MAP_SVC, lb::MAX_SVC_ENTRIES),
        (pin::MAP_BACKENDS, lb::MAX_BACKENDS),
        (pin::MAP_REVNAT, lb::MAX_REVNAT_ENTRIES),
        (pin::MAP_CT, lb::MAX_CT_ENTRIES),
        (pin::MAP_LOCAL_FLOWS, lb::MAX_LOCAL_FLOWS),
        (pin::MAP_LOCAL_FLOWS6, lb::MAX_LOCAL_FLOWS),
        (pin::MAP_AFFINITY, lb::MAX_AFFINITY_ENTRIES),
        (pin::MAP_SRC_RANGES, lb::MAX_SRC_RANGE_ENTRIES),
        (pin::MAP_SOCK_REVNAT, lb::MAX_SOCK_REV_ENTRIES),
        (pin::MAP_SVC6, lb::MAX_SVC_ENTRIES),
        (pin::MAP_BACKENDS6, lb::MAX_BACKENDS),
        (pin::MAP_REVNAT6, lb::MAX_REVNAT_ENTRIES),
        (pin::MAP_AFFINITY6, lb::MAX_AFFINITY_ENTRIES),
        (pin::MAP_SRC_RANGES6, lb::MAX_SRC_RANGE_ENTRIES),
        (pin::MAP_SOCK_REVNAT6, lb::MAX_SOCK_REV_ENTRIES),
        (pin::MAP_CT6, lb::MAX_CT_ENTRIES),
        (pin::MAP_SNAT6, lb::MAX_CT_ENTRIES),
        (pin::MAP_IPCACHE, policy::MAX_IPCACHE_ENTRIES),
        (pin::MAP_POLICY, policy::MAX_POLICY_ENTRIES),
        (pin::MAP_POLICY_CT, policy::MAX_POLICY_CT_ENTRIES),
        (pin::MAP_EP_POLICY_STATS, pin::MAX_ENDPOINTS),
        (pin::MAP_IPCACHE6, policy::MAX_IPCACHE6_ENTRIES),
        (pin::MAP_POLICY_CT6, policy::MAX_POLICY_CT6_ENTRIES),
    ];
    let caps: Vec<_> = fill.iter().map(|(m, _, cap)| (*m, *cap)).collect();
    assert_eq!(caps, named);
}

#[test]
#[ignore = "privileged: needs root and bpffs; `cargo xtask test` runs it as root"]
fn reload_reuses_pinned_maps() {
    let mut t = TestDatapath::load();
    add_endpoint(&mut t, 7, [10, 244, 1, 7]);
    // A second load (agent restart) finds the same map contents.
    let mut again = Datapath::load(&t.dir.0).unwrap();
    let got = again.endpoints().unwrap().get(&EndpointKey { ifindex: 7 }, 0).unwrap();
    assert_eq!(got.ipv4_octets(), [10, 244, 1, 7]);
}
