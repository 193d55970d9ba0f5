//! IPv4 address requests.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
};

use super::{NetlinkError, NetlinkSocket, link::Link};

impl NetlinkSocket {
    /// Adds `ip/prefix_len` to `link` (fails if it is already there).
    pub fn add_address(&mut self, link: &Link, ip: Ipv4Addr, prefix_len: u8) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = link.index;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        msg.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.execute(
            &format!("add address {ip}/{prefix_len} to {}", link.name),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The IPv4 addresses (with prefix length) configured on `link`.
    pub fn addresses(&mut self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
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
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                found.push((ip, msg.header.prefix_len));
            }
        }
        Ok(found)
    }
}
