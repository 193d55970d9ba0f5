//! Address requests, IPv4 and IPv6.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
};

use super::{NetlinkError, NetlinkSocket, link::Link};

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet }
}

impl NetlinkSocket {
    /// Adds `ip/prefix_len` to `link` (fails if it is already there). An
    /// IPv6 address skips duplicate address detection (`IFA_F_NODAD`): it
    /// is usable at once instead of tentative for a second or more, and the
    /// IPAM already guarantees it is unique (the gateway address is on
    /// every host veth on purpose, each its own link).
    pub fn add_address(&mut self, link: &Link, ip: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(ip);
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = link.index;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv6() {
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.execute(
            &format!("add address {ip}/{prefix_len} to {}", link.name),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The addresses (with prefix length) of family `ipv6` configured on
    /// `link` (IPv6 link-local ones included).
    pub fn addresses(&mut self, link: &Link, ipv6: bool) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.index = link.index;
        let replies = self.dump(&format!("list addresses of {}", link.name), RouteNetlinkMessage::GetAddress(msg))?;
        let mut found = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                continue;
            };
            // Filter here too: strict dump filtering is best effort.
            if msg.header.index != link.index {
                continue;
            }
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) if ip.is_ipv6() == ipv6 => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) if ip.is_ipv6() == ipv6 => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                found.push((ip, msg.header.prefix_len));
            }
        }
        Ok(found)
    }
}
