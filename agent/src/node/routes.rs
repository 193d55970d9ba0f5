//! Routes to peer nodes' pod CIDRs, via their InternalIP (native routing, as
//! kindnet does on kind's flat node network). Our routes carry their own
//! routing protocol number, so the agent can tell them from everyone else's
//! and prune only its own.
use std::{collections::BTreeMap, net::Ipv4Addr};

use futures::TryStreamExt as _;
use ipnetwork::Ipv4Network;
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
    Replace { cidr: Ipv4Network, via: Ipv4Addr, source: rtnetlink::Error },
    #[error("cannot delete route {cidr}: {source}")]
    Delete { cidr: Ipv4Network, source: rtnetlink::Error },
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

    /// The routes this agent made (main table, our protocol).
    pub async fn owned(&self) -> Result<BTreeMap<Ipv4Network, (Ipv4Addr, RouteMessage)>, RouteError> {
        let mut out = BTreeMap::new();
        let mut dump = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) = dump.try_next().await.map_err(|source| RouteError::List { source })? {
            if msg.header.protocol != RouteProtocol::Other(PROTO_WEIR) {
                continue;
            }
            let mut dst = None;
            let mut via = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(*a),
                    _ => {}
                }
            }
            let (Some(dst), Some(via)) = (dst, via) else { continue };
            if let Ok(cidr) = Ipv4Network::new(dst, msg.header.destination_prefix_length) {
                out.insert(cidr, (via, msg));
            }
        }
        Ok(out)
    }

    pub async fn replace(&self, cidr: Ipv4Network, via: Ipv4Addr) -> Result<(), RouteError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix())
            .gateway(via)
            .protocol(RouteProtocol::Other(PROTO_WEIR))
            .build();
        self.handle.route().add(msg).replace().execute().await.map_err(|source| RouteError::Replace {
            cidr,
            via,
            source,
        })
    }

    pub async fn delete(&self, cidr: Ipv4Network, msg: RouteMessage) -> Result<(), RouteError> {
        self.handle.route().del(msg).execute().await.map_err(|source| RouteError::Delete { cidr, source })
    }

    /// Makes our routes equal `desired`. With `prune` false (before every
    /// Node has been listed) routes are only added or changed, never removed.
    /// Every route is attempted; all errors are returned.
    pub async fn sync(
        &self,
        desired: &BTreeMap<Ipv4Network, Ipv4Addr>,
        prune: bool,
    ) -> Result<SyncStats, Vec<RouteError>> {
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
