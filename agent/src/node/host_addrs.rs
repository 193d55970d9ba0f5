//! The node's own addresses.
use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::warn;

/// Every IPv4 address of the node's own namespace: traffic from these is
/// the pod's own node (kubelet probes), which always reaches it.
///
/// Asked on every policy pass, including the one each new pod's hand-off
/// waits for, so it dumps IPv4 addresses only: `getifaddrs` also dumps
/// every link with its statistics, which on a node with a hundred pod veths
/// was the largest part of that pass.
pub fn ipv4() -> Vec<Ipv4Addr> {
    match dump_ipv4() {
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

fn dump_ipv4() -> std::io::Result<Vec<Ipv4Addr>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
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
                    out.extend(addr.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    }));
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
        let mut want: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
            .unwrap()
            .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip())))
            .collect();
        want.sort();
        want.dedup();
        assert_eq!(ipv4(), want);
        assert!(ipv4().contains(&Ipv4Addr::LOCALHOST));
    }
}
