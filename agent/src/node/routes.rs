//! Routes to peer nodes' pod CIDRs, via their InternalIP (native routing, as
//! kindnet does on kind's flat node network). Our routes carry their own
//! routing protocol number, so the agent can tell them from everyone else's
//! and prune only its own. Both families: an IPv6 pod CIDR goes via the
//! peer's IPv6 InternalIP.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

/// `ip route` shows it as `proto 87`.
pub const PROTO_WEIR: u8 = 0x57;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot open a netlink socket: {source}")]
    Socket { source: std::io::Error },
    #[error("cannot list routes: {source}")]
    List { source: rtnetlink::Error },
    #[error("cannot set route {cidr} via {via}: {source}")]
    Replace { cidr: IpNetwork, via: IpAddr, source: rtnetlink::Error },
    #[error("cannot set route {cidr} via {via}: the gateway is not of the route's family")]
    Family { cidr: IpNetwork, via: IpAddr },
    #[error("cannot delete route {cidr}: {source}")]
    Delete { cidr: IpNetwork, source: rtnetlink::Error },
}

pub struct Routes {
    handle: Handle,
}

impl Routes {
    /// Opens a netlink connection in the current network namespace.
    pub fn connect() -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| RouteError::Socket { source })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The routes this agent made (main table, our protocol), both families.
    pub async fn owned(&self) -> Result<BTreeMap<IpNetwork, (IpAddr, RouteMessage)>, RouteError> {
        let mut out = BTreeMap::new();
        for query in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
            self.owned_of(query, &mut out).await?;
        }
        Ok(out)
    }

    async fn owned_of(
        &self,
        query: RouteMessage,
        out: &mut BTreeMap<IpNetwork, (IpAddr, RouteMessage)>,
    ) -> Result<(), RouteError> {
        let mut dump = self.handle.route().get(query).execute();
        while let Some(msg) = dump.try_next().await.map_err(|source| RouteError::List { source })? {
            if msg.header.protocol != RouteProtocol::Other(PROTO_WEIR) {
                continue;
            }
            let mut dst = None;
            let mut via = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(IpAddr::V4(*a)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => via = Some(IpAddr::V6(*a)),
                    _ => {}
                }
            }
            let (Some(dst), Some(via)) = (dst, via) else { continue };
            if let Ok(cidr) = IpNetwork::new(dst, msg.header.destination_prefix_length) {
                out.insert(cidr, (via, msg));
            }
        }
        Ok(())
    }

    pub async fn replace(&self, cidr: IpNetwork, via: IpAddr) -> Result<(), RouteError> {
        let msg = match (cidr, via) {
            (IpNetwork::V4(net), IpAddr::V4(gw)) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix())
                .gateway(gw)
                .protocol(RouteProtocol::Other(PROTO_WEIR))
                .build(),
            (IpNetwork::V6(net), IpAddr::V6(gw)) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix())
                .gateway(gw)
                .protocol(RouteProtocol::Other(PROTO_WEIR))
                .build(),
            _ => return Err(RouteError::Family { cidr, via }),
        };
        self.handle.route().add(msg).replace().execute().await.map_err(|source| RouteError::Replace {
            cidr,
            via,
            source,
        })
    }

    pub async fn delete(&self, cidr: IpNetwork, msg: RouteMessage) -> Result<(), RouteError> {
        self.handle.route().del(msg).execute().await.map_err(|source| RouteError::Delete { cidr, source })
    }

    /// Makes our routes equal `desired`. With `prune` false (before every
    /// Node has been listed) routes are only added or changed, never removed.
    /// Every route is attempted; all errors are returned.
    pub async fn sync(&self, desired: &BTreeMap<IpNetwork, IpAddr>, prune: bool) -> Result<SyncStats, Vec<RouteError>> {
        let current = self.owned().await.map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut stats = SyncStats::default();
        for (cidr, via) in desired {
            if current.get(cidr).map(|(v, _)| v) == Some(via) {
                continue;
            }
            match self.replace(*cidr, *via).await {
                Ok(()) => stats.set += 1,
                Err(e) => errors.push(e),
            }
        }
        if prune {
            for (cidr, (_, msg)) in current {
                if desired.contains_key(&cidr) {
                    continue;
                }
                match self.delete(cidr, msg).await {
                    Ok(()) => stats.deleted += 1,
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() { Ok(stats) } else { Err(errors) }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub set: usize,
    pub deleted: usize,
}
