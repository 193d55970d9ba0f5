//! Route requests, IPv4 and IPv6 (main table only: that is all the plugin
//! touches).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};

use super::{NetlinkError, NetlinkSocket, link::Link};

/// A unicast route in the main table (the family is `dst`'s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// `true` for `scope link` (directly reachable on the link, no gateway).
    /// IPv4 only: IPv6 routes have no scope (the kernel reports universe).
    pub link_scope: bool,
}

impl Route {
    /// `ip/32` or `ip/128` straight down the link: a directly attached peer.
    pub fn to_host(ip: IpAddr) -> Self {
        let prefix_len = if ip.is_ipv6() { 128 } else { 32 };
        Self { dst: ip, prefix_len, gateway: None, oif: None, link_scope: !ip.is_ipv6() }
    }

    /// The default route of `gateway`'s family via it.
    pub fn default_via(gateway: IpAddr) -> Self {
        let dst = if gateway.is_ipv6() { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        Self { dst, prefix_len: 0, gateway: Some(gateway), oif: None, link_scope: false }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix_len)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if self.link_scope {
            write!(f, " scope link")?;
        }
        Ok(())
    }
}

impl NetlinkSocket {
    /// Adds `route` leaving through `link`.
    pub fn add_route(&mut self, link: &Link, route: &Route) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if route.dst.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.destination_prefix_length = route.prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // What `ip route add` uses: "installed by an administrator/tool".
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if route.link_scope { RouteScope::Link } else { RouteScope::Universe };
        msg.header.kind = RouteType::Unicast;
        if route.prefix_len > 0 {
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(route.dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(link.index));
        self.execute(
            &format!("add route {route} dev {}", link.name),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The unicast routes of the main table, of family `ipv6`.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let replies = self.dump("list routes", RouteNetlinkMessage::GetRoute(msg))?;
        let mut routes = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            let mut table = u32::from(msg.header.table);
            let mut route = Route {
                dst: if ipv6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
                prefix_len: msg.header.destination_prefix_length,
                gateway: None,
                oif: None,
                link_scope: msg.header.scope == RouteScope::Link,
            };
            for attr in msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.dst = ip.into(),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => route.dst = ip.into(),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(ip.into()),
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => route.gateway = Some(ip.into()),
                    RouteAttribute::Oif(index) => route.oif = Some(index),
                    RouteAttribute::Table(t) => table = t,
                    _ => {}
                }
            }
            if table == u32::from(RouteHeader::RT_TABLE_MAIN) && msg.header.kind == RouteType::Unicast {
                routes.push(route);
            }
        }
        Ok(routes)
    }
}
