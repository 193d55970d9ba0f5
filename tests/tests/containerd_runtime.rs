//! A real runtime calls weir-cni: containerd + runc in node n1's namespace,
//! a locally built busybox image, `ctr run --cni`. The container gets its
//! address from weir, reaches the node, and `--rm` releases everything.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use weir_testbed::{
    Node, Topology, bins,
    containerd::{CTR_NAMESPACE, Containerd},
    exec, oci,
    pod::POD_IFNAME,
    tools,
    topology::{PodFilter, Reservation, cidr_contains},
};

const IMAGE: &str = "docker.io/library/weir-busybox:test";

/// Containerd in the node's namespace, with the busybox image imported.
fn containerd_with_busybox(node: &Node) -> Containerd {
    let containerd = Containerd::start(node).unwrap();
    let tar = node.dirs.root.join("busybox-image.tar");
    oci::write_busybox_image(Path::new(tools::BUSYBOX.binary), IMAGE, &tar).unwrap();
    containerd.import(&tar).unwrap();
    assert!(containerd.ctr(&["images", "ls", "-q"], Duration::from_secs(30)).unwrap().contains(IMAGE));
    containerd
}

/// ctr's CNI dirs (conf, bin): the agent's weir-cni entry as the only
/// network, and a bin dir with the plugins it may call. containerd 1.6's
/// libcni predates CNI 1.1 results, so the list is offered as 1.0.0
/// (weir-cni speaks both).
fn ctr_cni_dirs(node: &Node) -> (PathBuf, PathBuf) {
    let conf_dir = node.dirs.root.join("ctr-cni/net.d");
    let bin_dir = node.dirs.root.join("ctr-cni/bin");
    fs::create_dir_all(&conf_dir).unwrap();
    fs::create_dir_all(&bin_dir).unwrap();
    let list = node.agent_conflist().unwrap().only(&["weir-cni"]).with_version("1.0.0");
    fs::write(conf_dir.join("10-weir.conflist"), list.to_json_pretty()).unwrap();
    symlink(bins::weir_cni().unwrap(), bin_dir.join("weir-cni")).unwrap();
    (conf_dir, bin_dir)
}

/// What the container's script reports in /shared: its address, whether it
/// pinged the node; then it waits for "go".
fn container_script(node_ip: Ipv4Addr) -> String {
    format!(
        "ip -4 -o addr show dev {POD_IFNAME} > /shared/addr 2>&1; \
         if ping -c1 -W2 {node_ip} > /shared/ping 2>&1; then echo ok > /shared/ping-status; else echo fail > /shared/ping-status; fi; \
         touch /shared/ready; \
         i=0; while [ ! -e /shared/go ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done"
    )
}

/// The node's reservations, host veths, and their tc filters (what there
/// is, and what docs/contracts.md says there should be) while the
/// container ran.
type During = (Vec<Reservation>, Vec<String>, Vec<PodFilter>, Vec<PodFilter>);

/// Runs `ctr` to completion; once the container reported ready, looks at
/// the node (none if it never did), then lets it finish.
fn run_and_look(node: &Node, mut ctr: Command, shared: &Path) -> (anyhow::Result<exec::Output>, Option<During>) {
    thread::scope(|s| {
        let ctr_run = s.spawn(move || exec::output(&mut ctr, None, Duration::from_secs(300)));
        let deadline = Instant::now() + Duration::from_secs(240);
        while !shared.join("ready").exists() && !ctr_run.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let seen = shared.join("ready").exists();
        let during = seen.then(|| {
            let veths = node.host_veths().unwrap();
            let mut expected = Vec::new();
            for veth in &veths {
                expected.extend(node.expected_pod_filters(veth).unwrap());
            }
            (node.reservations("weir").unwrap(), veths, node.pod_filters().unwrap(), expected)
        });
        fs::write(shared.join("go"), "").unwrap();
        (ctr_run.join().unwrap(), during)
    })
}

/// The IPv4 address in `ip -4 -o addr show` output.
fn container_ip(addr: &str) -> Ipv4Addr {
    addr.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address on the container's {POD_IFNAME}: {addr:?}"))
}

#[test]
fn ctr_run_with_cni_gets_a_weir_address_and_reaches_the_node() {
    weir_testbed::privileged(&[tools::IP, tools::BUSYBOX, tools::CONTAINERD, tools::CTR, tools::RUNC, tools::UNSHARE]);
    let topo = Topology::builder("containerd_runtime").nodes(1).build().unwrap();
    let _agent = topo.start_agent("n1").unwrap();
    let node = topo.node("n1");
    let containerd = containerd_with_busybox(node);
    let (conf_dir, bin_dir) = ctr_cni_dirs(node);

    // The container reports through a bind mount, then waits for "go", so
    // the test can look at the node while the attachment exists.
    let shared = node.dirs.root.join("ctr-shared");
    fs::create_dir_all(&shared).unwrap();
    let script = container_script(node.ip);
    let id = format!("{}-c1", topo.prefix());
    let mount = format!("type=bind,src={},dst=/shared,options=rbind:rw", shared.display());
    let ctr = containerd
        .ctr_run_with_cni(&conf_dir, &bin_dir, &["--rm", "--mount", &mount, IMAGE, &id, "sh", "-c", &script])
        .unwrap();
    let cni_container_id = format!("{CTR_NAMESPACE}-{id}");

    let (out, during) = run_and_look(node, ctr, &shared);
    let out = out.unwrap();
    let diag = || {
        format!(
            "ctr {}: stdout {}\nstderr {}\ncontainerd log:\n{}",
            out.describe_status(),
            out.stdout_str(),
            out.stderr_str(),
            containerd.log_tail()
        )
    };
    let (reservations, veths, filters, expected_filters) =
        during.unwrap_or_else(|| panic!("the container never reported; {}", diag()));
    assert!(out.success(), "{}", diag());

    let ip = container_ip(&fs::read_to_string(shared.join("addr")).unwrap());
    assert!(cidr_contains(&node.pod_cidr, ip), "{ip} is not from {}", node.pod_cidr);
    assert!(
        reservations.iter().any(|r| r.ip == ip && r.container_id == cni_container_id),
        "weir reserved {ip} for {cni_container_id}: {reservations:?}"
    );
    assert_eq!(veths.len(), 1, "one host veth while the container ran: {veths:?}");
    assert_eq!(filters, expected_filters, "the pinned programs as cls_bpf filters on {veths:?}");
    assert_eq!(
        fs::read_to_string(shared.join("ping-status")).unwrap().trim(),
        "ok",
        "container -> node {}: {}",
        node.ip,
        fs::read_to_string(shared.join("ping")).unwrap_or_default()
    );

    // `--rm` ran DEL after the task (and its netns) went away.
    assert!(node.reservations("weir").unwrap().is_empty(), "address released after ctr run --rm");
    assert!(node.host_veths().unwrap().is_empty(), "host veth gone after ctr run --rm");
    assert!(node.pod_filters().unwrap().is_empty(), "filters gone with the veth after ctr run --rm");
    assert!(node.legacy_link_pins().is_empty(), "no tcx link pins");
}
