//! CHECK: is the attachment still as ADD left it? Every problem found is
//! reported, not just the first, so an operator sees the whole picture.

use std::net::Ipv4Addr;

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
    let gateway = PodRange::new(conf.pod_cidr).gateway();

    // What prevResult says about our interface and its address.
    let pod_iface = prev.interfaces.iter().position(|i| i.name == attachment.ifname && i.sandbox.is_some());
    if pod_iface.is_none() {
        problems.push(format!("prevResult lists no interface {} with a sandbox", attachment.ifname));
    }
    let ips: Vec<_> = prev.ips.iter().filter(|ip| ip.interface == pod_iface && pod_iface.is_some()).collect();
    if pod_iface.is_some() && ips.is_empty() {
        problems.push(format!("prevResult lists no IPv4 address for {}", attachment.ifname));
    }
    let pod_ip: Option<Ipv4Addr> = ips.first().map(|ip| ip.address.ip());

    // IPAM reservation.
    match super::allocator(conf).and_then(|a| a.lookup(attachment).map_err(CniError::from)) {
        Ok(Some(held)) if Some(held) == pod_ip || pod_ip.is_none() => {}
        Ok(Some(held)) => problems.push(format!(
            "IPAM reservation of {attachment} is {held}, but prevResult says {}",
            pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
        )),
        Ok(None) => problems.push(format!("{attachment} holds no IPAM reservation")),
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
            let addrs = host.addresses(link)?;
            if !addrs.contains(&(gateway, 32)) {
                problems.push(format!("host veth {host_name} lacks the gateway address {gateway}/32"));
            }
            if let Some(ip) = pod_ip {
                let routes = host.routes()?;
                let want = Route { dst: ip, prefix_len: 32, gateway: None, oif: Some(link.index), link_scope: true };
                if !routes.contains(&want) {
                    problems.push(format!("node route {ip}/32 dev {host_name} scope link is missing"));
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
            let addrs = pod.addresses(&link)?;
            for ip in &ips {
                if !addrs.contains(&(ip.address.ip(), ip.address.prefix())) {
                    problems.push(format!("address {} is not on {}", ip.address, link.name));
                }
            }
            check_pod_routes(&mut pod, &link, gateway, prev, &mut problems)?;
        }
    }

    // Datapath.
    if let Some(pins) = conf.bpf_pin_dir.as_deref().map(Pins::new) {
        check_datapath(&pins, &host_name, host_link.as_ref(), pod_ip, &mut problems);
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

/// The routes ADD created (whatever version the result was in), plus any
/// other IPv4 route listed in prevResult (chained plugins may add routes;
/// those can leave through any interface).
fn check_pod_routes(
    pod: &mut NetlinkSocket,
    link: &Link,
    gateway: Ipv4Addr,
    prev: &PrevResult,
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    let routes = pod.routes()?;
    let on_link = |r: &Route| r.oif == Some(link.index);
    if !routes
        .iter()
        .any(|r| on_link(r) && r.dst == gateway && r.prefix_len == 32 && r.gateway.is_none() && r.link_scope)
    {
        problems.push(format!("route {gateway}/32 dev {} scope link is missing", link.name));
    }
    if !routes.iter().any(|r| on_link(r) && r.prefix_len == 0 && r.gateway == Some(gateway)) {
        problems.push(format!("default route via {gateway} dev {} is missing", link.name));
    }
    let ours = |want: &&crate::result::PrevRoute| {
        let dst = (want.dst.network(), want.dst.prefix());
        dst == (gateway, 32) || (dst == (Ipv4Addr::UNSPECIFIED, 0) && want.gw == Some(gateway))
    };
    for want in prev.routes.iter().filter(|w| !ours(w)) {
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
    pod_ip: Option<Ipv4Addr>,
    problems: &mut Vec<String>,
) {
    let Some(link) = host_link else { return };
    match EndpointMap::open(pins).and_then(|m| m.get(link.index)) {
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
    match NetlinkSocket::open() {
        Ok(mut host) => problems.extend(datapath::check_programs(pins, &mut host, link)),
        Err(e) => problems.push(e.to_string()),
    }
}
