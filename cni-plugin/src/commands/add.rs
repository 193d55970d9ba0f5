//! ADD: veth pair, address from the podCIDR, routes, datapath hookup.
//!
//! Order matters: the pod's interface is brought up last, after its endpoint
//! entry and the datapath programs are in place, so the pod never sends a
//! packet the datapath does not know about. A failure at any step undoes
//! everything done so far (the address through the IPAM lease guard, the rest
//! through `Teardown`), so a failed ADD leaves nothing behind.
//!
//! Where the time goes: a dozen netlink round trips (the veth, addresses,
//! routes, the clsact qdisc and two cls_bpf filters), none of which waits
//! for an RCU grace period (tcx links did, twice per pod, under RTNL: see
//! docs/design.md); the IPAM reservation is made under its lock without
//! touching the disk, and flushed to disk on another thread meanwhile.

use std::{fs, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use crate::{
    attachment::Attachment,
    config::NetConf,
    datapath::{self, EndpointMap, Pins},
    error::CniError,
    ipam::{Allocator, DiskStore, PodRange},
    log,
    netlink::{NetlinkSocket, link::Link, route::Route},
    netns::Netns,
    policy_handoff::{self, PodRef},
    result::{AddResult, Interface, IpConfig, RouteConfig},
    veth,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

pub fn add(
    conf: &NetConf,
    attachment: &Attachment,
    netns: &Netns,
    k8s_pod: Option<&PodRef>,
) -> Result<AddResult, CniError> {
    let host_name = veth::host_veth_name(&conf.veth_prefix, attachment);
    let pins = conf.bpf_pin_dir.as_deref().map(Pins::new);
    let (mut host, mut pod) = check_preconditions(attachment, netns, &host_name, pins.as_ref())?;
    log::step("preconditions");

    let allocator = super::allocator(conf)?;
    // From here on every failed path gives the address back: explicitly
    // below, or through the lease's drop on a panic.
    let lease = allocator.lease(attachment)?;
    log::step("ipam reserve");
    let mut teardown = Teardown::new(pins.clone());
    let setup = Setup {
        conf,
        attachment,
        netns,
        host_name: &host_name,
        pins: pins.as_ref(),
        policy_pending: k8s_pod.is_some(),
    };
    // The hand-off runs while the reservation is flushed (both wait on
    // others: the agent, the disk); a failed flush still rolls back, and
    // the agent forgets the pod when its endpoint entry goes.
    let hand_off = |ifindex: Option<u32>, ip: Ipv4Addr| {
        if let (Some(pod), Some(ifindex)) = (k8s_pod, ifindex) {
            hand_off_policy(conf, attachment, pod, ifindex, ip);
        }
    };
    match setup.run_alongside_flush(&allocator, &mut host, &mut pod, lease.ip(), &mut teardown, hand_off) {
        Ok(result) => {
            teardown.disarm();
            let ip = lease.keep();
            log::info(format_args!("got {ip} on host veth {host_name}"));
            Ok(result)
        }
        Err(cause) => {
            let mut rollback_problems = teardown.run();
            if let Err(e) = lease.release() {
                rollback_problems.push(e.to_string());
            }
            Err(CniError::RolledBack { cause: Box::new(cause), rollback_problems })
        }
    }
}

/// Opens the node's and the pod's netlink sockets and checks, before
/// anything is changed, that the datapath is ready and that neither end of
/// the veth pair exists yet.
fn check_preconditions(
    attachment: &Attachment,
    netns: &Netns,
    host_name: &str,
    pins: Option<&Pins>,
) -> Result<(NetlinkSocket, NetlinkSocket), CniError> {
    if let Some(pins) = pins
        && let Some(path) = pins.first_missing()?
    {
        return Err(CniError::DatapathNotReady { path });
    }
    let mut host = NetlinkSocket::open()?;
    let mut pod = netns.netlink()?;
    if pod.link_by_name(&attachment.ifname)?.is_some() {
        return Err(CniError::InterfaceExists { ifname: attachment.ifname.clone(), netns: netns.path().to_owned() });
    }
    if host.link_by_name(host_name)?.is_some() {
        return Err(CniError::HostVethExists { name: host_name.to_owned(), attachment: attachment.clone() });
    }
    Ok((host, pod))
}

/// Asks weir-agent to put the new pod's NetworkPolicy in place (see
/// `policy_handoff`). Never fails ADD: at worst the pod starts isolated.
fn hand_off_policy(conf: &NetConf, attachment: &Attachment, pod: &PodRef, ifindex: u32, ip: Ipv4Addr) {
    match policy_handoff::request(&conf.run_dir, ifindex, ip, pod, &attachment.container_id, policy_handoff::WAIT) {
        policy_handoff::Outcome::Ready => log::step("policy in place"),
        // The pod is wired and isolated; the agent opens it once
        // its policy is in place. Not a failure of ADD.
        policy_handoff::Outcome::Pending(why) => log::warn(format_args!(
            "pod {}/{} starts isolated until weir-agent puts its NetworkPolicy in place: {why}",
            pod.namespace, pod.name
        )),
    }
}

struct Setup<'a> {
    conf: &'a NetConf,
    attachment: &'a Attachment,
    netns: &'a Netns,
    host_name: &'a str,
    pins: Option<&'a Pins>,
    policy_pending: bool,
}

impl Setup<'_> {
    /// Runs the kernel steps, then `hand_off` (with the host veth's ifindex
    /// once wired), while the IPAM reservation is flushed to disk. The
    /// reservation must be on disk before ADD succeeds, not before the
    /// kernel work starts: the flush runs alongside.
    fn run_alongside_flush(
        &self,
        allocator: &Allocator<DiskStore>,
        host: &mut NetlinkSocket,
        pod: &mut NetlinkSocket,
        ip: Ipv4Addr,
        teardown: &mut Teardown,
        hand_off: impl FnOnce(Option<u32>, Ipv4Addr),
    ) -> Result<AddResult, CniError> {
        std::thread::scope(|scope| {
            let flush = scope.spawn(|| allocator.persist());
            let result = self.run(host, pod, ip, teardown);
            if result.is_ok() {
                hand_off(teardown.endpoint, ip);
            }
            let flushed = flush.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            log::step("ipam flush joined");
            result.and_then(|r| flushed.map(|()| r).map_err(CniError::from))
        })
    }

    /// The kernel steps, in the order the module comment explains; what they
    /// create is recorded in `teardown`.
    fn run(
        &self,
        host: &mut NetlinkSocket,
        pod: &mut NetlinkSocket,
        ip: Ipv4Addr,
        teardown: &mut Teardown,
    ) -> Result<AddResult, CniError> {
        let conf = self.conf;
        let ifname = &self.attachment.ifname;
        let gateway = PodRange::new(conf.pod_cidr).gateway();

        veth::create_pair(host, self.host_name, ifname, self.netns.fd(), conf.mtu)?;
        log::step("create veth");
        let host_link = lookup(host, self.host_name, "the host veth just created")?;
        teardown.host_veth = Some(host_link.clone());

        // Node side: the gateway address answers the pod's ARP for its
        // default gateway; the /32 route sends the pod's traffic down its veth.
        host.add_address(&host_link, gateway, 32)?;
        host.set_link_up(&host_link)?;
        host.add_route(&host_link, &link_route(ip))?;
        enable_ip_forwarding()?;
        log::step("host side");

        if let Some(pins) = self.pins {
            let mut endpoints = EndpointMap::open(pins)?;
            endpoints.insert(host_link.index, ip, self.policy_pending)?;
            teardown.endpoint = Some(host_link.index);
            log::step("endpoint entry");
            datapath::attach_programs(pins, host, &host_link)?;
            log::step("attach programs");
        }

        // Pod side, last: addresses and routes, up only once all is ready.
        let pod_link = self.pod_side(pod, ip, gateway)?;
        log::step("pod side");
        Ok(self.result(&host_link, &pod_link, ip, gateway))
    }

    /// Addresses, link up and routes on the pod's interface.
    fn pod_side(&self, pod: &mut NetlinkSocket, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<Link, CniError> {
        let pod_link = lookup(pod, &self.attachment.ifname, "the pod interface just created")?;
        pod.add_address(&pod_link, ip, 32)?;
        pod.set_link_up(&pod_link)?;
        let default_route =
            Route { dst: Ipv4Addr::UNSPECIFIED, prefix_len: 0, gateway: Some(gateway), oif: None, link_scope: false };
        for route in [link_route(gateway), default_route] {
            pod.add_route(&pod_link, &route).map_err(|mut e| {
                if e.errno() == Some(libc::EEXIST) {
                    e.op.push_str(
                        " (the pod namespace already has this route: is another interface of this network in it?)",
                    );
                }
                e
            })?;
        }
        Ok(pod_link)
    }

    /// The CNI result describing what `run` created.
    fn result(&self, host_link: &Link, pod_link: &Link, ip: Ipv4Addr, gateway: Ipv4Addr) -> AddResult {
        let mtu = self.conf.mtu;
        let network = |addr: Ipv4Addr, prefix: u8| Ipv4Network::new(addr, prefix).expect("prefix is at most 32");
        AddResult {
            interfaces: vec![
                Interface { name: host_link.name.clone(), mac: host_link.mac.clone(), mtu, sandbox: None },
                Interface {
                    name: pod_link.name.clone(),
                    mac: pod_link.mac.clone(),
                    mtu,
                    sandbox: Some(self.netns.path().display().to_string()),
                },
            ],
            ips: vec![IpConfig { address: network(ip, 32), gateway, interface: 1 }],
            routes: vec![
                RouteConfig { dst: network(gateway, 32), gw: None, link_scope: true },
                RouteConfig { dst: network(Ipv4Addr::UNSPECIFIED, 0), gw: Some(gateway), link_scope: false },
            ],
        }
    }
}

/// `ip/32 scope link`: a directly attached peer.
fn link_route(ip: Ipv4Addr) -> Route {
    Route { dst: ip, prefix_len: 32, gateway: None, oif: None, link_scope: true }
}

fn lookup(sock: &mut NetlinkSocket, name: &str, what: &str) -> Result<Link, CniError> {
    sock.link_by_name(name)?.ok_or_else(|| {
        CniError::Netlink(crate::netlink::NetlinkError {
            op: format!("look up {what} ({name})"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
            kernel_msg: None,
        })
    })
}

/// Pods reach each other and the outside through the node, as with the ptp
/// plugin, so the node namespace must forward IPv4.
fn enable_ip_forwarding() -> Result<(), CniError> {
    let io_err = |source| CniError::Io { what: IP_FORWARD, source };
    if fs::read_to_string(IP_FORWARD).map_err(io_err)?.trim() == "1" {
        return Ok(());
    }
    fs::write(IP_FORWARD, "1").map_err(io_err)
}

/// What a failed ADD has to undo, in reverse order of creation. Also runs on
/// drop, so a panic midway does not leak interfaces or pins.
struct Teardown {
    pins: Option<Pins>,
    host_veth: Option<Link>,
    endpoint: Option<u32>,
    disarmed: bool,
}

impl Teardown {
    fn new(pins: Option<Pins>) -> Self {
        Self { pins, host_veth: None, endpoint: None, disarmed: false }
    }

    fn disarm(&mut self) {
        self.disarmed = true;
    }

    /// Undoes everything recorded; returns what could not be undone.
    fn run(&mut self) -> Vec<String> {
        self.disarmed = true;
        let mut problems = Vec::new();
        if let (Some(ifindex), Some(pins)) = (self.endpoint.take(), &self.pins)
            && let Err(e) = EndpointMap::open(pins).and_then(|mut m| m.remove(ifindex))
        {
            problems.push(e.to_string());
        }
        if let Some(link) = self.host_veth.take() {
            // Deleting the host end removes the pod end, with its addresses
            // and routes, the routes via the host end and its filters.
            let deleted = NetlinkSocket::open().and_then(|mut s| s.delete_link(&link));
            match deleted {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.disarmed {
            for problem in self.run() {
                log::warn(format_args!("cleaning up after failed ADD: {problem}"));
            }
        }
    }
}
