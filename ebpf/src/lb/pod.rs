//! Packets from pods to Services (tc ingress of the pod's host veth): new
//! flows get a backend and are DNATed to it; a pod that is its own backend
//! is hairpinned.
use aya_ebpf::programs::TcContext;
use weir_common::{
    DropReason,
    flow::FLOW_DIR_EGRESS,
    lb::{Backend, CtEntry, CtKey},
};

use super::{choose, continue_flow, internal_frontend};
use crate::{
    conntrack, flow, nat, node,
    packet::{self, Flow},
};

/// What a pod's packet became.
pub enum Outcome {
    /// Not addressed to a Service.
    NotService,
    /// DNATed to a backend.
    Translated,
    /// Translated back to the pod it came from: the caller sends it back out
    /// of the same veth (routing would drop it: its source is now an address
    /// of the node).
    Hairpin,
    /// A Service with no usable backend: the caller rejects the packet.
    NoBackend { frontend_addr: u32 },
}

#[inline(always)]
pub fn translate(ctx: &TcContext, flow: &Flow) -> Result<Outcome, DropReason> {
    if !flow.has_ports() {
        return Ok(Outcome::NotService);
    }
    let Some((key, svc)) = internal_frontend(flow) else {
        return Ok(Outcome::NotService);
    };
    if svc.count == 0 {
        return Ok(Outcome::NoBackend { frontend_addr: flow.daddr });
    }
    let ct_key = conntrack::original_key(flow);
    let now = conntrack::now_secs();

    if let Some(flags) = continue_flow(ctx, flow, &ct_key, now)? {
        return Ok(if flags & CtEntry::FLAG_HAIRPIN != 0 { Outcome::Hairpin } else { Outcome::Translated });
    }

    let (backend_id, b) = choose(&key, &svc, flow, now).ok_or(DropReason::NoBackend)?;
    let entry = CtEntry { backend_id, rev_nat_id: svc.rev_nat_id, created: now, ..CtEntry::default() };
    let outcome = if b.addr == flow.saddr {
        hairpin(ctx, flow, &ct_key, entry, &b)?;
        Outcome::Hairpin
    } else {
        let entry = CtEntry { flags: CtEntry::FLAG_POD_CLIENT, ..entry };
        conntrack::create(&ct_key, &conntrack::reply_key(&b, flow.saddr, flow.sport, flow.proto), &entry);
        nat::dnat(ctx, flow, b.addr, b.port)?;
        Outcome::Translated
    };
    // A new flow (later packets take `continue_flow` above).
    flow::translated(flow, FLOW_DIR_EGRESS, packet::ifindex(ctx), b.addr, b.port);
    Ok(outcome)
}

/// The pod is its own backend: its source becomes the pod gateway (a pod
/// drops packets that claim its own address as source).
#[inline(always)]
fn hairpin(ctx: &TcContext, flow: &Flow, ct_key: &CtKey, entry: CtEntry, b: &Backend) -> Result<(), DropReason> {
    let gateway = node::gateway();
    if gateway == 0 {
        return Err(DropReason::RewriteFailed);
    }
    let entry = CtEntry { flags: CtEntry::FLAG_HAIRPIN, nat_addr: gateway, nat_port: flow.sport, ..entry };
    let reply = conntrack::reply_key(b, gateway, flow.sport, flow.proto);
    let reply_entry = CtEntry { nat_addr: flow.saddr, ..entry };
    conntrack::create_pair(ct_key, &entry, &reply, &reply_entry);
    nat::dnat(ctx, flow, b.addr, b.port)?;
    nat::snat(ctx, flow, gateway, flow.sport)
}
