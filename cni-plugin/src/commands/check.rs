//! CHECK: is the attachment still as ADD left it? Every problem found is
//! reported, not just the first, so an operator sees the whole picture.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weir_common::pin;

use crate::{
    attachment::Attachment,
    config::NetConf,
    datapath::{self, EndpointMap, Pins},
    error::CniError,
    ipam::PodRange,
    netlink::{NetlinkSocket, link::Link, route::Route},
    netns::Netns,
    result::PrevResult,
    veth,
};

pub fn check(conf: &NetConf, attachment: &Attachment, netns: &Netns, prev: &PrevResult) -> Result<(), CniError> {
    let mut problems = Vec::new();
    let host_name = veth::host_veth_name(&conf.veth_prefix, attachment);
    let ranges: Vec<PodRange> = conf.ranges.iter().map(|r| PodRange::new(r.pod)).collect();

    // What prevResult says about our interface and its addresses: one per
    // configured family.
    let pod_iface = prev.interfaces.iter().position(|i| i.name == attachment.ifname && i.sandbox.is_some());
    if pod_iface.is_none() {
        problems.push(format!("prevResult lists no interface {} with a sandbox", attachment.ifname));
    }
    let ips: Vec<_> = prev.ips.iter().filter(|ip| ip.interface == pod_iface && pod_iface.is_some()).collect();
    // The address of each configured family, as prevResult has it.
    let mut pod_ips: Vec<IpAddr> = Vec::new();
    for range in &ranges {
        match ips.iter().find(|ip| ip.address.is_ipv6() == range.is_ipv6()) {
            Some(ip) => pod_ips.push(ip.address.ip()),
            None if pod_iface.is_some() => problems.push(format!(
                "prevResult lists no {} address for {}",
                if range.is_ipv6() { "IPv6" } else { "IPv4" },
                attachment.ifname
            )),
            None => {}
        }
    }

    // IPAM reservations.
    match super::ipam(conf).and_then(|a| a.lookup(attachment).map_err(CniError::from)) {
        Ok(held) => {
            for range in &ranges {
                let held_here = held.iter().find(|ip| ip.is_ipv6() == range.is_ipv6());
                let listed = pod_ips.iter().find(|ip| ip.is_ipv6() == range.is_ipv6());
                match (held_here, listed) {
                    (None, _) => problems.push(format!("{attachment} holds no IPAM reservation in {}", range.cidr())),
                    (Some(held), Some(listed)) if held != listed => problems
                        .push(format!("IPAM reservation of {attachment} is {held}, but prevResult says {listed}")),
                    _ => {}
                }
            }
        }
        Err(e) => problems.push(e.to_string()),
    }

    // Host side.
    let mut host = NetlinkSocket::open()?;
    let host_link = host.link_by_name(&host_name)?;
    match &host_link {
        None => problems.push(format!("host veth {host_name} does not exist")),
        Some(link) => {
            check_link(link, conf.mtu, "host veth", &mut problems);
            if let Some(expected) = prev.interfaces.iter().find(|i| i.name == host_name) {
                check_mac(link, expected.mac.as_deref(), "host veth", &mut problems);
            }
            for range in &ranges {
                let (gateway, prefix) = (range.gateway(), range.host_prefix());
                if !host.addresses(link, range.is_ipv6())?.contains(&(gateway, prefix)) {
                    problems.push(format!("host veth {host_name} lacks the gateway address {gateway}/{prefix}"));
                }
                if let Some(ip) = pod_ips.iter().find(|ip| ip.is_ipv6() == range.is_ipv6()) {
                    let want = Route { oif: Some(link.index), ..Route::to_host(*ip) };
                    if !host.routes(range.is_ipv6())?.contains(&want) {
                        problems.push(format!("node route {ip}/{prefix} dev {host_name} is missing"));
                    }
                }
            }
        }
    }

    // Pod side.
    let mut pod = netns.netlink()?;
    match pod.link_by_name(&attachment.ifname)? {
        None => problems.push(format!("interface {} does not exist in {}", attachment.ifname, netns.path().display())),
        Some(link) => {
            check_link(&link, conf.mtu, "pod interface", &mut problems);
            if let Some(i) = pod_iface {
                check_mac(&link, prev.interfaces[i].mac.as_deref(), "pod interface", &mut problems);
            }
            for ipv6 in [false, true] {
                let listed: Vec<_> = ips.iter().filter(|ip| ip.address.is_ipv6() == ipv6).collect();
                if listed.is_empty() {
                    continue;
                }
                let addrs = pod.addresses(&link, ipv6)?;
                for ip in listed {
                    if !addrs.contains(&(ip.address.ip(), ip.address.prefix())) {
                        problems.push(format!("address {} is not on {}", ip.address, link.name));
                    }
                }
            }
            for range in &ranges {
                check_pod_routes(&mut pod, &link, range, prev, &mut problems)?;
            }
        }
    }

    // Datapath.
    if let Some(pins) = conf.bpf_pin_dir.as_deref().map(Pins::new) {
        let pod_ipv4 = pod_ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        // An IPv6-only pod's entry holds 0.0.0.0 (see ADD).
        let want = if conf.ipv4().is_some() { pod_ipv4 } else { Some(Ipv4Addr::UNSPECIFIED) };
        let pod_ipv6 = pod_ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        check_datapath(&pins, &host_name, host_link.as_ref(), (want, pod_ipv6), &mut problems);
    }

    if problems.is_empty() { Ok(()) } else { Err(CniError::CheckFailed { attachment: attachment.clone(), problems }) }
}

fn check_link(link: &Link, mtu: u32, what: &str, problems: &mut Vec<String>) {
    if !link.is_veth() {
        problems.push(format!("{what} {} is not a veth", link.name));
    }
    if !link.up {
        problems.push(format!("{what} {} is down", link.name));
    }
    if link.mtu != Some(mtu) {
        let actual = link.mtu.map(|m| m.to_string()).unwrap_or_else(|| "unknown".into());
        problems.push(format!("{what} {} has MTU {actual}, expected {mtu}", link.name));
    }
}

fn check_mac(link: &Link, expected: Option<&str>, what: &str, problems: &mut Vec<String>) {
    if let Some(expected) = expected
        && link.mac.as_deref().map(str::to_ascii_lowercase) != Some(expected.to_ascii_lowercase())
    {
        problems.push(format!(
            "{what} {} has MAC {}, prevResult says {expected}",
            link.name,
            link.mac.as_deref().unwrap_or("none")
        ));
    }
}

/// The routes ADD created for `range`'s family (whatever version the
/// result was in), plus any other route of that family listed in
/// prevResult (chained plugins may add routes; those can leave through any
/// interface).
fn check_pod_routes(
    pod: &mut NetlinkSocket,
    link: &Link,
    range: &PodRange,
    prev: &PrevResult,
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    let gateway = range.gateway();
    let host_prefix = range.host_prefix();
    let routes = pod.routes(range.is_ipv6())?;
    let on_link = |r: &Route| r.oif == Some(link.index);
    let to_gateway = Route { oif: Some(link.index), ..Route::to_host(gateway) };
    if !routes.contains(&to_gateway) {
        problems.push(format!("route {gateway}/{host_prefix} dev {} is missing", link.name));
    }
    if !routes.iter().any(|r| on_link(r) && r.prefix_len == 0 && r.gateway == Some(gateway)) {
        problems.push(format!("default route via {gateway} dev {} is missing", link.name));
    }
    let ours = |want: &&crate::result::PrevRoute| {
        let dst = (want.dst.network(), want.dst.prefix());
        dst == (gateway, host_prefix) || (want.dst.prefix() == 0 && want.gw == Some(gateway))
    };
    let family = prev.routes.iter().filter(|w| w.dst.is_ipv6() == range.is_ipv6());
    for want in family.filter(|w| !ours(w)) {
        let found = routes.iter().any(|r| {
            r.dst == want.dst.network()
                && r.prefix_len == want.dst.prefix()
                && (want.gw.is_none() || r.gateway == want.gw)
        });
        if !found {
            let via = want.gw.map(|gw| format!(" via {gw}")).unwrap_or_default();
            problems.push(format!("route {}{via} from prevResult is missing", want.dst));
        }
    }
    Ok(())
}

fn check_datapath(
    pins: &Pins,
    host_name: &str,
    host_link: Option<&Link>,
    pod_addrs: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    problems: &mut Vec<String>,
) {
    let Some(link) = host_link else { return };
    match EndpointMap::open(pins) {
        Ok(map) => check_endpoint_entries(&map, pins, host_name, link, pod_addrs, problems),
        Err(e) => problems.push(e.to_string()),
    }
    match NetlinkSocket::open() {
        Ok(mut host) => problems.extend(datapath::check_programs(pins, &mut host, link)),
        Err(e) => problems.push(e.to_string()),
    }
}

/// The pod's entries in the endpoint maps hold its addresses.
fn check_endpoint_entries(
    map: &EndpointMap,
    pins: &Pins,
    host_name: &str,
    link: &Link,
    (pod_ip, pod_ipv6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
    problems: &mut Vec<String>,
) {
    // The IPv6 source the datapath lets the pod send from (where the
    // agent's programs check it).
    if pins.map_path(pin::MAP_ENDPOINTS6).exists() {
        match map.ipv6(link.index) {
            Ok(have) if have == pod_ipv6 => {}
            Ok(have) => problems.push(format!(
                "IPv6 endpoint entry of {host_name} holds {}, not {}",
                have.map_or("nothing".to_string(), |a| a.to_string()),
                pod_ipv6.map_or("nothing".to_string(), |a| a.to_string())
            )),
            Err(e) => problems.push(e.to_string()),
        }
    }
    match map.get(link.index) {
        Ok(Some(info)) => {
            let ip = Ipv4Addr::from(info.ipv4_octets());
            if pod_ip.is_some_and(|want| want != ip) {
                problems.push(format!("endpoint map entry of {host_name} holds {ip}"));
            }
        }
        Ok(None) => problems.push(format!(
            "endpoint map {} has no entry for {host_name} (ifindex {})",
            pins.endpoints_map().display(),
            link.index
        )),
        Err(e) => problems.push(e.to_string()),
    }
}
