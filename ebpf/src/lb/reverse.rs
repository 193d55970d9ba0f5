//! Replies of translated flows get their frontend back as their source,
//! at the one hook each kind of reply passes (replies of flows SNATed to a
//! remote backend excepted: `netdev` reverses those as they come back).
use aya_ebpf::programs::TcContext;
use weir_common::{
    DropReason,
    lb::{CtEntry, RevNat},
};

use super::{flow_is_over, rev_nat};
use crate::{conntrack, nat, node, packet::Flow};

/// A packet leaving a backend pod (tc ingress of its veth).
pub enum FromBackend {
    /// Not a reply this hook reverses.
    NotReply,
    /// A reply to a pod client of a live flow from the frontend at this
    /// address and port: reversed as it enters the client's veth, unless it
    /// is delivered straight to the client (`local::deliver` reverses it
    /// then). Going to a pod, never to a Service.
    ToPodClient {
        frontend_addr: u32,
        frontend_port: u16,
    },
    Reversed,
    /// Reversed to come from a node address (a NodePort reply): out of
    /// the uplink, past the routing input check (`node::uplink_ifindex`).
    ToUplink,
    /// A hairpinned flow's reply: back into the pod it came from.
    Hairpin,
}

/// Which replies each hook reverses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// Leaving a backend pod: replies to external clients of local
    /// backends, and hairpinned flows.
    FromBackend,
    /// Entering the client pod (tc egress of its veth): replies to pods.
    ToClient,
    /// Leaving the node by its uplink (tc egress): replies to external
    /// clients of backends on the node's own network stack (endpoints whose
    /// address is the node's: hostNetwork pods), which cross no veth.
    FromHost,
}

/// A reply to reverse: its flow's reply entry and the frontend to put back.
struct Reply {
    ct: CtEntry,
    frontend: RevNat,
}

/// What `find` made of a packet.
enum Found {
    /// Not a reply of a live translated flow that the hook reverses.
    No,
    /// A reply of a pod client's live flow, leaving its backend.
    PodClient(Reply),
    Reply(Reply),
}

/// A reply of a translated flow at a pod's veth on its way out: to an
/// external client of a local backend, or of a hairpinned flow.
#[inline(always)]
pub fn from_backend(ctx: &TcContext, flow: &Flow) -> Result<FromBackend, DropReason> {
    let reply = match find(flow, Hook::FromBackend) {
        Found::No => return Ok(FromBackend::NotReply),
        Found::PodClient(reply) => {
            return Ok(FromBackend::ToPodClient {
                frontend_addr: reply.frontend.addr,
                frontend_port: reply.frontend.port,
            });
        }
        Found::Reply(reply) => reply,
    };
    if rewrite(ctx, flow, &reply)? {
        return Ok(FromBackend::Hairpin);
    }
    if node::addr() == reply.frontend.addr {
        return Ok(FromBackend::ToUplink);
    }
    Ok(FromBackend::Reversed)
}

/// A reply entering a client pod's veth: whether it was one (and is now
/// reversed).
#[inline(always)]
pub fn to_client(ctx: &TcContext, flow: &Flow) -> Result<bool, DropReason> {
    let Found::Reply(reply) = find(flow, Hook::ToClient) else { return Ok(false) };
    rewrite(ctx, flow, &reply)?;
    Ok(true)
}

/// A reply of a backend on the node's own stack leaving by the uplink:
/// whether it was one (and is now reversed). Routed already (the client is
/// reached through this interface, the source stays a node address).
#[inline(always)]
pub fn from_host(ctx: &TcContext, flow: &Flow) -> Result<bool, DropReason> {
    // Never a hairpinned flow here (`find` leaves them out).
    let Found::Reply(reply) = find(flow, Hook::FromHost) else { return Ok(false) };
    rewrite(ctx, flow, &reply)?;
    Ok(true)
}

/// The reply of a live translated flow that `hook` reverses, if `flow` is
/// one.
#[inline(always)]
fn find(flow: &Flow, hook: Hook) -> Found {
    if !flow.has_ports() {
        return Found::No;
    }
    let Some(ct) = conntrack::lookup(&conntrack::as_reply(flow)) else { return Found::No };
    if ct.flags & CtEntry::FLAG_SNAT != 0 {
        return Found::No;
    }
    // Pod clients get their replies translated at their own veth; a
    // hairpinned flow never leaves the node.
    let pod_client = ct.flags & CtEntry::FLAG_POD_CLIENT != 0;
    let hairpin = ct.flags & CtEntry::FLAG_HAIRPIN != 0;
    if hook == Hook::FromHost && (pod_client || hairpin) {
        return Found::No;
    }
    let Some(frontend) = rev_nat(ct.rev_nat_id) else { return Found::No };
    // Only while the flow lives: a later connection that reuses the tuple
    // (a direct one to the same backend, say) must not be rewritten. The
    // client's FIN or RST marks this entry too (`conntrack::observe_client`):
    // until then the flow lives, without a lookup of its original entry.
    let (client, client_port) = if hairpin { (ct.nat_addr, ct.nat_port) } else { (flow.daddr, flow.dport) };
    if ct.flags & (CtEntry::FLAG_CLOSING | CtEntry::FLAG_RESET) != 0
        && flow_is_over(client, client_port, &frontend, flow.proto)
    {
        conntrack::remove(&conntrack::as_reply(flow));
        return Found::No;
    }
    let reply = Reply { ct, frontend };
    if hook == Hook::FromBackend && pod_client { Found::PodClient(reply) } else { Found::Reply(reply) }
}

/// Puts the frontend back as the source; a hairpinned flow's reply also
/// goes back to the pod itself. Whether it was hairpinned.
#[inline(always)]
fn rewrite(ctx: &TcContext, flow: &Flow, reply: &Reply) -> Result<bool, DropReason> {
    let rn = &reply.frontend;
    if reply.ct.flags & CtEntry::FLAG_HAIRPIN != 0 {
        nat::both(ctx, flow, (reply.ct.nat_addr, reply.ct.nat_port), (rn.addr, rn.port))?;
        return Ok(true);
    }
    nat::snat(ctx, flow, rn.addr, rn.port)?;
    Ok(false)
}
