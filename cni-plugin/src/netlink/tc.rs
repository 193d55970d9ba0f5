//! Traffic-control requests: the clsact qdisc and direct-action cls_bpf
//! filters on it, which is how a pod's host veth runs the datapath.
//!
//! cls_bpf rather than tcx links: creating or releasing a tcx link makes the
//! kernel wait for an RCU grace period while holding RTNL (5-25 ms, twice per
//! pod, serialising every netlink user on the node); a filter is added
//! without waiting. See docs/design.md, "Pod wiring".

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};

use super::{NetlinkError, NetlinkSocket, link::Link};

/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// Which side of the interface a filter runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// What the interface receives (for a host veth: what the pod sends).
    Ingress,
    /// What the interface transmits (for a host veth: what the pod receives).
    Egress,
}

impl Direction {
    fn parent(self) -> TcHandle {
        let minor = match self {
            Direction::Ingress => TcHandle::MIN_INGRESS,
            Direction::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle { major: TcHandle::CLSACT.major, minor }
    }
}

/// A cls_bpf filter as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    pub prog_id: Option<u32>,
    pub name: Option<String>,
    pub direct_action: bool,
}

/// `TCA_INFO` of a filter: priority in the upper half, protocol (network
/// order) in the lower.
fn filter_info(priority: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be())
}

impl NetlinkSocket {
    /// Adds the clsact qdisc to `link`; one already there is fine.
    pub fn add_clsact(&mut self, link: &Link) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle { major: TcHandle::CLSACT.major, minor: 0 };
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        let op = format!("add clsact qdisc to {}", link.name);
        match self.execute(&op, RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Runs `prog` as a direct-action cls_bpf filter at (`priority`,
    /// `handle`) on `link`'s `direction`, for every protocol: creates the
    /// filter, or replaces the program of the one there (atomically: a
    /// packet sees the old program or the new one).
    pub fn attach_bpf_filter(
        &mut self,
        link: &Link,
        direction: Direction,
        priority: u16,
        handle: u32,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header = TcHeader {
            index: link.index as i32,
            handle: handle.into(),
            parent: direction.parent(),
            info: filter_info(priority),
            ..Default::default()
        };
        msg.attributes.push(TcAttribute::Kind(TcFilterBpf::KIND.into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let op = format!("attach {name} to {} {direction:?} (cls_bpf prio {priority} handle {handle})", link.name);
        self.execute(&op, RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
    }

    /// The cls_bpf filters on `link`'s `direction` (none without clsact).
    pub fn bpf_filters(&mut self, link: &Link, direction: Direction) -> Result<Vec<BpfFilter>, NetlinkError> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = direction.parent();
        let op = format!("list tc filters of {} {direction:?}", link.name);
        let replies = match self.dump(&op, RouteNetlinkMessage::GetTrafficFilter(msg)) {
            // No clsact qdisc: no filters.
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT)) => return Ok(Vec::new()),
            other => other?,
        };
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewTrafficFilter(msg) => bpf_filter(msg),
                _ => None,
            })
            .collect())
    }
}

/// The cls_bpf filter a dump entry describes; `None` for other kinds and
/// for the chain's header entry (no handle).
fn bpf_filter(msg: TcMessage) -> Option<BpfFilter> {
    let handle = u32::from(msg.header.handle);
    let is_bpf = msg.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == TcFilterBpf::KIND));
    if !is_bpf || handle == 0 {
        return None;
    }
    let mut filter =
        BpfFilter { priority: (msg.header.info >> 16) as u16, handle, prog_id: None, name: None, direct_action: false };
    for attr in msg.attributes {
        let TcAttribute::Options(options) = attr else { continue };
        for option in options {
            match option {
                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = Some(id),
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => filter.name = Some(name),
                TcOption::Bpf(TcFilterBpfOption::Flags(flags)) => {
                    filter.direct_action = flags.contains(TcBpfFlags::DirectAction);
                }
                _ => {}
            }
        }
    }
    Some(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_carries_priority_and_protocol_like_tc_and_aya() {
        // `tc filter add ... prio 1 protocol all`: 0x0001_0300 on little endian.
        assert_eq!(filter_info(1), (1 << 16) | u32::from(0x0003u16.to_be()));
        assert_eq!(Direction::Ingress.parent(), TcHandle::from(0xFFFF_FFF2));
        assert_eq!(Direction::Egress.parent(), TcHandle::from(0xFFFF_FFF3));
    }
}
