//! IPv4 route requests (main table only: that is all the plugin touches).

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
};

use super::{NetlinkError, NetlinkSocket, link::Link};

/// An IPv4 unicast route in the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// `true` for `scope link` (directly reachable on the link, no gateway).
    pub link_scope: bool,
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
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // What `ip route add` uses: "installed by an administrator/tool".
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if route.link_scope { RouteScope::Link } else { RouteScope::Universe };
        msg.header.kind = RouteType::Unicast;
        if route.prefix_len > 0 {
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(route.dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(link.index));
        self.execute(
            &format!("add route {route} dev {}", link.name),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The IPv4 unicast routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self.dump("list routes", RouteNetlinkMessage::GetRoute(msg))?;
        let mut routes = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            let mut table = u32::from(msg.header.table);
            let mut route = Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: msg.header.destination_prefix_length,
                gateway: None,
                oif: None,
                link_scope: msg.header.scope == RouteScope::Link,
            };
            for attr in msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.dst = ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(ip),
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
