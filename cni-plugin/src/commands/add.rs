//! ADD: veth pair, an address from each family's pod range, routes,
//! datapath hookup.
//!
//! Order matters: the pod's interface is brought up last, after its endpoint
//! entry and the datapath programs are in place, so the pod never sends a
//! packet the datapath does not know about. A failure at any step undoes
//! everything done so far (the addresses through the IPAM lease guards, one
//! per family, the rest through `Teardown`), so a failed ADD leaves nothing
//! behind.
//!
//! IPv6 is wired like IPv4 (ptp style): the pod holds `ip/128`, the host
//! veth the range's gateway `/128`, the pod routes `gateway/128 dev eth0`
//! and `::/0 via gateway`. Addresses skip duplicate address detection, so
//! the pod is not left with a tentative address for its first seconds.
//!
//! Where the time goes: a dozen netlink round trips (the veth, addresses,
//! routes, the clsact qdisc and two cls_bpf filters), none of which waits
//! for an RCU grace period (tcx links did, twice per pod, under RTNL: see
//! docs/design.md); the IPAM reservation is made under its lock without
//! touching the disk, and flushed to disk on another thread meanwhile.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;

use crate::{
    attachment::Attachment,
    config::NetConf,
    datapath::{self, EndpointMap, Pins},
    error::CniError,
    ipam::{DiskStore, FamilyIpam, PodRange},
    log,
    netlink::{NetlinkSocket, link::Link, route::Route},
    netns::Netns,
    policy_handoff::{self, PodRef},
    result::{AddResult, Interface, IpConfig, RouteConfig},
    veth,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// One of the pod's addresses, with its family's gateway.
#[derive(Clone, Copy, Debug)]
struct PodAddr {
    ip: IpAddr,
    gateway: IpAddr,
    /// 32 or 128: the pod and the gateway each hold a single address.
    host_prefix: u8,
}

impl PodAddr {
    fn network(&self, ip: IpAddr) -> IpNetwork {
        IpNetwork::new(ip, self.host_prefix).expect("a host prefix is valid for its family")
    }
}

/// The pod's IPv4 address as the endpoint map and the policy hand-off carry
/// it; `0.0.0.0` for an IPv6-only pod (the map has no IPv6 field yet: such a
/// pod's IPv4, which it has none of, fails the source check).
fn endpoint_ipv6(addrs: &[PodAddr]) -> Option<Ipv6Addr> {
    addrs.iter().find_map(|a| match a.ip {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    })
}

fn endpoint_ipv4(addrs: &[PodAddr]) -> Ipv4Addr {
    addrs
        .iter()
        .find_map(|a| match a.ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

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

    let ipam = super::ipam(conf)?;
    // From here on every failed path gives the addresses back: explicitly
    // below, or through the leases' drop on a panic.
    let leases = ipam.lease(attachment)?;
    log::step("ipam reserve");
    let addrs: Vec<PodAddr> = conf
        .ranges
        .iter()
        .zip(leases.ips())
        .map(|(r, ip)| {
            let range = PodRange::new(r.pod);
            PodAddr { ip, gateway: range.gateway(), host_prefix: range.host_prefix() }
        })
        .collect();
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
    match setup.run_alongside_flush(&ipam, &mut host, &mut pod, &addrs, &mut teardown, hand_off) {
        Ok(result) => {
            teardown.disarm();
            let ips = leases.keep();
            log::info(format_args!("got {ips:?} on host veth {host_name}"));
            Ok(result)
        }
        Err(cause) => {
            let mut rollback_problems = teardown.run();
            rollback_problems.extend(leases.release().into_iter().map(|e| e.to_string()));
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
        ipam: &FamilyIpam<DiskStore>,
        host: &mut NetlinkSocket,
        pod: &mut NetlinkSocket,
        addrs: &[PodAddr],
        teardown: &mut Teardown,
        hand_off: impl FnOnce(Option<u32>, Ipv4Addr),
    ) -> Result<AddResult, CniError> {
        std::thread::scope(|scope| {
            let flush = scope.spawn(|| ipam.persist());
            let result = self.run(host, pod, addrs, teardown);
            if result.is_ok() {
                hand_off(teardown.endpoint, endpoint_ipv4(addrs));
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
        addrs: &[PodAddr],
        teardown: &mut Teardown,
    ) -> Result<AddResult, CniError> {
        let conf = self.conf;
        let ifname = &self.attachment.ifname;

        veth::create_pair(host, self.host_name, ifname, self.netns.fd(), conf.mtu)?;
        log::step("create veth");
        let host_link = lookup(host, self.host_name, "the host veth just created")?;
        teardown.host_veth = Some(host_link.clone());

        // Node side: the gateway address answers the pod's ARP (neighbour
        // solicitation) for its default gateway; the /32 (/128) route sends
        // the pod's traffic down its veth.
        for a in addrs {
            host.add_address(&host_link, a.gateway, a.host_prefix)?;
        }
        host.set_link_up(&host_link)?;
        for a in addrs {
            host.add_route(&host_link, &Route::to_host(a.ip))?;
        }
        enable_forwarding(addrs)?;
        log::step("host side");

        if let Some(pins) = self.pins {
            let mut endpoints = EndpointMap::open(pins)?;
            // Recorded first: a failed ADD removes the IPv6 address too.
            teardown.endpoint = Some(host_link.index);
            endpoints.set_ipv6(host_link.index, endpoint_ipv6(addrs))?;
            endpoints.insert(host_link.index, endpoint_ipv4(addrs), self.policy_pending)?;
            log::step("endpoint entry");
            datapath::attach_programs(pins, host, &host_link)?;
            log::step("attach programs");
        }

        // Pod side, last: addresses and routes, up only once all is ready.
        let pod_link = self.pod_side(pod, addrs)?;
        log::step("pod side");
        Ok(self.result(&host_link, &pod_link, addrs))
    }

    /// Addresses, link up and routes on the pod's interface.
    fn pod_side(&self, pod: &mut NetlinkSocket, addrs: &[PodAddr]) -> Result<Link, CniError> {
        let pod_link = lookup(pod, &self.attachment.ifname, "the pod interface just created")?;
        for a in addrs {
            pod.add_address(&pod_link, a.ip, a.host_prefix)?;
        }
        pod.set_link_up(&pod_link)?;
        let routes = addrs.iter().flat_map(|a| [Route::to_host(a.gateway), Route::default_via(a.gateway)]);
        for route in routes {
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
    fn result(&self, host_link: &Link, pod_link: &Link, addrs: &[PodAddr]) -> AddResult {
        let mtu = self.conf.mtu;
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
            ips: addrs
                .iter()
                .map(|a| IpConfig { address: a.network(a.ip), gateway: a.gateway, interface: 1 })
                .collect(),
            routes: addrs
                .iter()
                .flat_map(|a| {
                    let any: IpAddr =
                        if a.ip.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
                    let default = IpNetwork::new(any, 0).expect("/0 is valid");
                    [
                        // On-link (IPv6 routes have no scope, but "no
                        // gateway needed" is what the 1.1 scope says).
                        RouteConfig { dst: a.network(a.gateway), gw: None, link_scope: true },
                        RouteConfig { dst: default, gw: Some(a.gateway), link_scope: false },
                    ]
                })
                .collect(),
        }
    }
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
/// plugin, so the node namespace must forward every family pods have.
fn enable_forwarding(addrs: &[PodAddr]) -> Result<(), CniError> {
    if addrs.iter().any(|a| !a.ip.is_ipv6()) {
        enable_sysctl(IP_FORWARD)?;
    }
    if addrs.iter().any(|a| a.ip.is_ipv6()) {
        enable_sysctl(IPV6_FORWARDING)?;
    }
    Ok(())
}

fn enable_sysctl(path: &'static str) -> Result<(), CniError> {
    let io_err = |source| CniError::Io { what: path, source };
    if fs::read_to_string(path).map_err(io_err)?.trim() == "1" {
        return Ok(());
    }
    fs::write(path, "1").map_err(io_err)
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
