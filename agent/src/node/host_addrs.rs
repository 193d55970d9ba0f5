//! The node's own addresses.
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::warn;

/// Every address (IPv4 and IPv6) of the node's own namespace: traffic
/// from these is the pod's own node (kubelet probes), which always reaches
/// it.
///
/// Asked on every policy pass, including the one each new pod's hand-off
/// waits for, so it dumps addresses only: `getifaddrs` also dumps every
/// link with its statistics, which on a node with a hundred pod veths was
/// the largest part of that pass.
pub fn all() -> Vec<IpAddr> {
    match dump() {
        Ok(mut out) => {
            out.sort();
            out.dedup();
            out
        }
        Err(e) => {
            warn!(error = %e, "cannot list the node's addresses");
            Vec::new()
        }
    }
}

fn dump() -> std::io::Result<Vec<IpAddr>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Unspec;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetAddress(msg)));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut out = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < datagram.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(addr)) => {
                    // IPv4 has `Local`; IPv6 only `Address` (a point-to-point
                    // IPv4 address has both: `Address` is then the peer's).
                    let local = addr.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let address = addr.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    out.extend(local.or(address));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same set `getifaddrs` reports (the agent's former source).
    #[test]
    fn matches_getifaddrs() {
        let mut want: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .unwrap()
            .filter_map(|a| {
                let s = a.address?;
                s.as_sockaddr_in()
                    .map(|sin| IpAddr::V4(sin.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|sin6| IpAddr::V6(sin6.ip())))
            })
            .collect();
        want.sort();
        want.dedup();
        assert_eq!(all(), want);
        assert!(all().contains(&IpAddr::from(std::net::Ipv4Addr::LOCALHOST)));
    }
}
