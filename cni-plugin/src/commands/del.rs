//! DEL: remove what ADD created. Idempotent: whatever is already gone (the
//! namespace, the interfaces, the reservation) is simply skipped, and every
//! step is attempted even when an earlier one failed.
//!
//! Where the time goes: deleting the veth. The kernel unregisters it in
//! well under a millisecond, then waits for an RCU grace period
//! (`rcu_barrier`, 13-20 ms) before freeing it and answering. DEL returns
//! once the veth is unregistered (its name, address and routes are free
//! then) and leaves the wait to a detached child (`delete_link_detached`).
//! The programs go with the veth (cls_bpf filters, nothing to detach); tcx
//! link pins of older weir versions are removed if any are left.

use std::net::IpAddr;

use crate::{
    attachment::Attachment,
    config::NetConf,
    datapath::{self, EndpointMap, Pins},
    error::CniError,
    ipam::{DiskStore, FamilyIpam},
    log,
    netlink::{NetlinkSocket, link::Link},
    veth,
};

pub fn del(conf: &NetConf, attachment: &Attachment) -> Result<(), CniError> {
    let host_name = veth::host_veth_name(&conf.veth_prefix, attachment);
    let mut problems = Vec::new();
    let pins = conf.bpf_pin_dir.as_deref().map(Pins::new);

    let mut host = HostVeth::look_up(&host_name, &mut problems);
    log::step("host veth lookup");

    if let Some(pins) = &pins {
        unpin_links(pins, &host_name, &mut problems);
    }
    log::step("unpin links");

    let ipam = super::ipam_all(conf);
    let ips = reserved_ips(&ipam, attachment, &mut problems);
    log::step("ipam lookup");

    // No map means the agent has not (re)created the datapath: there is no
    // entry to remove.
    if let Some(pins) = pins.as_ref().filter(|p| p.endpoints_map_exists()) {
        remove_endpoint_entry(pins, host.link.as_ref(), &ips, &mut problems);
    }
    log::step("endpoint entry");

    host.delete(&host_name, &mut problems);
    log::step("delete veth");

    if let Ok(ipam) = &ipam {
        release_addresses(ipam, attachment, &host, &ips, &host_name, &mut problems);
    }
    log::step("ipam release");

    if problems.is_empty() { Ok(()) } else { Err(CniError::Cleanup { command: "DEL", problems }) }
}

/// The host end of the pod's veth pair, as DEL finds it.
struct HostVeth {
    /// The node namespace's netlink socket; `None` if it could not be opened.
    sock: Option<NetlinkSocket>,
    link: Option<Link>,
    /// Whether the host veth is known to be gone (or never existed) by the
    /// end: only then may its address go back to the pool.
    gone: bool,
}

impl HostVeth {
    /// Looks the host veth up by name. A failure to ask (no socket, a failed
    /// lookup) is a problem, and the veth then counts as possibly present.
    fn look_up(host_name: &str, problems: &mut Vec<String>) -> Self {
        let mut gone = true;
        let mut sock = NetlinkSocket::open().map_err(|e| problems.push(e.to_string())).ok();
        if sock.is_none() {
            gone = false;
        }
        let link = sock.as_mut().and_then(|sock| match sock.link_by_name(host_name) {
            Ok(link) => link,
            Err(e) => {
                gone = false;
                problems.push(e.to_string());
                None
            }
        });
        Self { sock, link, gone }
    }

    /// Deletes the host veth (which takes the pod end with it), if it is one.
    fn delete(&mut self, host_name: &str, problems: &mut Vec<String>) {
        let (Some(sock), Some(link)) = (self.sock.as_mut(), &self.link) else {
            return;
        };
        if !link.is_veth() {
            // Not ours: failing DEL for it would block the pod's removal forever.
            log::warn(format_args!(
                "{host_name} is not a veth ({:?}); weir-cni did not create it and leaves it alone",
                link.kind
            ));
            return;
        }
        match sock.delete_link_detached(link) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                self.gone = false;
                problems.push(e.to_string());
            }
        }
    }
}

/// Removes tcx link pins an older weir version made for the host veth (the
/// agent migrates them at start; one may be left if the pod went first).
fn unpin_links(pins: &Pins, host_name: &str, problems: &mut Vec<String>) {
    for pin in pins.link_pins(host_name) {
        if let Err(e) = datapath::remove_pin(&pin) {
            problems.push(e.to_string());
        }
    }
}

/// The addresses reserved for the attachment (any family), as far as they
/// can be read.
fn reserved_ips(
    ipam: &Result<FamilyIpam<DiskStore>, CniError>,
    attachment: &Attachment,
    problems: &mut Vec<String>,
) -> Vec<IpAddr> {
    match ipam {
        Ok(a) => a.lookup(attachment).unwrap_or_else(|e| {
            problems.push(e.to_string());
            Vec::new()
        }),
        Err(e) => {
            problems.push(e.to_string());
            Vec::new()
        }
    }
}

/// Removes the endpoint entry, by the host veth's ifindex and by the pod's
/// IPv4 address, whichever of the two is known. (An IPv6-only pod's entry
/// holds 0.0.0.0, shared by every such pod: only its ifindex names it.)
fn remove_endpoint_entry(pins: &Pins, host_link: Option<&Link>, ips: &[IpAddr], problems: &mut Vec<String>) {
    let ipv4 = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(*v4),
        _ => None,
    });
    let removed = EndpointMap::open(pins).and_then(|mut map| {
        if let Some(link) = host_link {
            map.remove(link.index)?;
        }
        if let Some(ip) = ipv4 {
            map.remove_ip(ip)?;
        }
        Ok(())
    });
    if let Err(e) = removed {
        problems.push(e.to_string());
    }
}

/// Gives the attachment's addresses (every family) back to the pool, once
/// the host veth is known to be gone.
fn release_addresses(
    ipam: &FamilyIpam<DiskStore>,
    attachment: &Attachment,
    host: &HostVeth,
    ips: &[IpAddr],
    host_name: &str,
    problems: &mut Vec<String>,
) {
    // While the old veth still routes the address, handing it to another pod
    // would break both: keep the reservation until a DEL removes the veth.
    if host.gone {
        match ipam.release(attachment) {
            Ok(released) if !released.is_empty() => {
                log::info(format_args!("released {released:?}"));
            }
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
    } else {
        for ip in ips {
            problems.push(format!("{ip} stays reserved until {host_name} can be deleted"));
        }
    }
}
