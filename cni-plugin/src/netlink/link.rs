//! Link (network interface) requests.

use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};

use super::{NetlinkError, NetlinkSocket};

/// What the plugin needs to know about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address as `aa:bb:cc:dd:ee:ff`, when the link has one.
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub kind: Option<InfoKind>,
}

impl Link {
    pub fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
    }

    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(bytes) if !bytes.is_empty() => {
                    link.mac = Some(format_mac(&bytes));
                }
                LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl NetlinkSocket {
    /// Looks an interface up by name; `None` when there is no such interface.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.get(&format!("get link {name}"), RouteNetlinkMessage::GetLink(msg)) {
            Ok(replies) => Ok(replies.into_iter().find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(msg) => Some(Link::from_message(msg)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every interface of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.dump("list links", RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(msg) => Some(Link::from_message(msg)),
                _ => None,
            })
            .collect())
    }

    pub fn set_link_up(&mut self, link: &Link) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.execute(&format!("set {} up", link.name), RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes an interface by index. Deleting one end of a veth pair deletes
    /// both ends, wherever the peer lives.
    pub fn delete_link(&mut self, link: &Link) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        self.execute(&format!("delete link {}", link.name), RouteNetlinkMessage::DelLink(msg), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_lowercase_colon_separated() {
        assert_eq!(format_mac(&[0x0a, 0xBC, 0, 1, 2, 0xff]), "0a:bc:00:01:02:ff");
    }
}
