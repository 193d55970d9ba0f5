//! The node's uplink: the interface holding its InternalIP carries NodePort,
//! external IP and load-balancer traffic, so `weir_from_netdev` sits on its
//! tc ingress, and `weir_to_netdev` on its tc egress for the replies of
//! backends on the node's own stack.
use std::net::IpAddr;

use aya::programs::{SchedClassifier, TcAttachType, links::FdLink};
use futures::TryStreamExt as _;
use netlink_packet_route::{address::AddressAttribute, link::LinkAttribute};
use weir_common::pin;

use super::Datapath;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("no interface holds the node address {addr}")]
    NotFound { addr: IpAddr },
    #[error("netlink: {reason}")]
    Netlink { reason: String },
    #[error("attaching {prog} to {ifname}: {reason}")]
    Attach { prog: &'static str, ifname: String, reason: String },
}

/// The name of the interface that has `addr` (either family).
pub async fn interface_with(addr: IpAddr) -> Result<String, UplinkError> {
    let nl = |e: &dyn std::fmt::Display| UplinkError::Netlink { reason: e.to_string() };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| nl(&e))?;
    let task = tokio::spawn(conn);
    let mut index = None;
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(|e| nl(&e))? {
        if msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr))
        {
            index = Some(msg.header.index);
            break;
        }
    }
    let index = index.ok_or(UplinkError::NotFound { addr })?;
    let mut links = handle.link().get().match_index(index).execute();
    let mut name = None;
    while let Some(msg) = links.try_next().await.map_err(|e| nl(&e))? {
        name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
    }
    task.abort();
    name.ok_or(UplinkError::NotFound { addr })
}

impl Datapath {
    /// Attaches `weir_from_netdev` to `ifname`'s tc ingress and
    /// `weir_to_netdev` to its tc egress (replies of backends on the node's
    /// own stack, which cross no veth), and swaps the pinned links in
    /// atomically: each new program is attached before the old link's pin
    /// is replaced (which detaches it), so the uplink is never without a
    /// program across agent restarts.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<(), UplinkError> {
        // Link pins: `uplink_<if>` and `uplink_<if>_egress` (never ending in
        // a pod link's suffix, so weir-cni's GC leaves them alone).
        self.attach_uplink_one(pin::PROG_FROM_NETDEV, ifname, TcAttachType::Ingress, &format!("uplink_{ifname}"))?;
        self.attach_uplink_one(pin::PROG_TO_NETDEV, ifname, TcAttachType::Egress, &format!("uplink_{ifname}_egress"))
    }

    fn attach_uplink_one(
        &mut self,
        prog: &'static str,
        ifname: &str,
        direction: TcAttachType,
        pin_name: &str,
    ) -> Result<(), UplinkError> {
        let fail = |reason: String| UplinkError::Attach { prog, ifname: ifname.to_string(), reason };
        let links = self.pin_dir.join(pin::LINKS_DIR);
        let classifier: &mut SchedClassifier = self
            .ebpf_mut()
            .program_mut(prog)
            .ok_or_else(|| fail("not in the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| fail(e.to_string()))?;
        let id = classifier.attach(ifname, direction).map_err(|e| fail(e.to_string()))?;
        let link = classifier.take_link(id).map_err(|e| fail(e.to_string()))?;
        // Kernels before 6.6 give a netlink filter, which persists by
        // itself; a tcx link lives only while pinned.
        if let Ok(fd_link) = FdLink::try_from(link) {
            // bpffs refuses dots in names.
            let tmp = links.join(format!("{pin_name}_new"));
            let path = links.join(pin_name);
            let _ = std::fs::remove_file(&tmp);
            fd_link.pin(&tmp).map_err(|e| fail(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }
}
