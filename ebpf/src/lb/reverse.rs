//! Replies of translated flows get their frontend back as their source,
//! at the one hook each kind of reply passes.
use aya_ebpf::programs::TcContext;
use weir_common::{DropReason, lb::CtEntry};

use super::{flow_is_over, rev_nat};
use crate::{conntrack, nat, node, packet::Flow};

pub enum Reversed {
    No,
    Yes,
    /// Reversed to come from a node address (a NodePort reply): out of
    /// the uplink, past the routing input check (`node::uplink_ifindex`).
    ToUplink,
    /// A hairpinned flow's reply: back into the pod it came from.
    Hairpin,
}

/// Where a reply is reverse-translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReplyHook {
    /// Leaving a backend pod (tc ingress of its veth): replies to external
    /// clients of local backends, and hairpinned flows.
    FromBackend,
    /// Entering the client pod (tc egress of its veth): replies to pods.
    ToClient,
    /// Leaving the node by its uplink (tc egress): replies to external
    /// clients of backends on the node's own network stack (endpoints whose
    /// address is the node's: hostNetwork pods), which cross no veth.
    FromHost,
}

/// Reply of a translated flow that was not source-translated on the
/// uplink: put the frontend back as the source.
#[inline(always)]
pub fn reverse(ctx: &TcContext, flow: &Flow, hook: ReplyHook) -> Result<Reversed, DropReason> {
    if !flow.has_ports() {
        return Ok(Reversed::No);
    }
    let Some(ct) = conntrack::lookup(&conntrack::as_reply(flow)) else {
        return Ok(Reversed::No);
    };
    if ct.flags & CtEntry::FLAG_SNAT != 0 {
        return Ok(Reversed::No);
    }
    // Pod clients get their replies translated at their own veth; a
    // hairpinned flow never leaves the node.
    let pod_client = ct.flags & CtEntry::FLAG_POD_CLIENT != 0;
    let hairpin = ct.flags & CtEntry::FLAG_HAIRPIN != 0;
    match hook {
        ReplyHook::FromBackend if pod_client => return Ok(Reversed::No),
        ReplyHook::FromHost if pod_client || hairpin => return Ok(Reversed::No),
        _ => {}
    }
    let Some(rn) = rev_nat(ct.rev_nat_id) else {
        return Ok(Reversed::No);
    };
    // Only while the flow lives: a later connection that reuses the tuple
    // (a direct one to the same backend, say) must not be rewritten.
    let (client, client_port) = if hairpin {
        (ct.nat_addr, ct.nat_port)
    } else {
        (flow.daddr, flow.dport)
    };
    if flow_is_over(client, client_port, &rn, flow.proto) {
        conntrack::remove(&conntrack::as_reply(flow));
        return Ok(Reversed::No);
    }
    if hairpin {
        // Back to the pod itself, from the frontend.
        nat::dnat(ctx, flow, ct.nat_addr, ct.nat_port)?;
        nat::snat(ctx, flow, rn.addr, rn.port)?;
        return Ok(Reversed::Hairpin);
    }
    nat::snat(ctx, flow, rn.addr, rn.port)?;
    // Already routed out of the uplink: the caller lets it go.
    if hook == ReplyHook::FromHost {
        return Ok(Reversed::Yes);
    }
    if node::addr() == rn.addr {
        return Ok(Reversed::ToUplink);
    }
    Ok(Reversed::Yes)
}
