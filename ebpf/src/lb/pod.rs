//! Packets from pods to Services (tc ingress of the pod's host veth): new
//! flows get a backend and are DNATed to it; a pod that is its own backend
//! is hairpinned.
use aya_ebpf::programs::TcContext;
use weir_common::{
    DropReason,
    flow::FLOW_DIR_EGRESS,
    lb::{Backend, CtEntry, CtKey, ServiceKey, ServiceValue},
};

use super::{choose, continue_flow, internal_frontend};
use crate::{
    conntrack, flow, local, nat, node,
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

/// A pod's packet, as far as the Service maps know it.
pub enum Lookup {
    /// Not addressed to a Service.
    NotService,
    /// A packet of a live Service flow, translated as the flow was.
    Continued(Outcome),
    /// Addressed to this frontend, with no live flow: `start` one (or
    /// reject it, without backends).
    New { key: ServiceKey, svc: ServiceValue },
}

/// The Service maps' part for a pod's packet, done first: the frontend,
/// then the flow's conntrack entry. A packet of a live Service flow goes
/// on translated; only the others need `reverse::from_backend`'s lookup
/// (a reply entry for the same tuple would be a backend answering a client
/// whose address and port are a Service frontend's). That lookup missed on
/// every packet a pod sent to a Service: a cold conntrack bucket each.
#[inline(always)]
pub fn lookup(ctx: &TcContext, flow: &Flow, local: &mut local::Kind) -> Result<Lookup, DropReason> {
    if !flow.has_ports() {
        return Ok(Lookup::NotService);
    }
    let Some((key, svc)) = internal_frontend(flow) else {
        return Ok(Lookup::NotService);
    };
    if svc.count != 0
        && let Some(c) = continue_flow(ctx, flow, &conntrack::original_key(flow), conntrack::now_secs())?
    {
        let outcome = if c.flags & CtEntry::FLAG_HAIRPIN != 0 {
            Outcome::Hairpin
        } else {
            if c.local {
                *local = local::Kind::service(c.addr, c.port);
            }
            Outcome::Translated
        };
        return Ok(Lookup::Continued(outcome));
    }
    Ok(Lookup::New { key, svc })
}

/// A new flow to the frontend `key`: a backend chosen, DNAT (and hairpin)
/// and conntrack entries; or, without backends, `NoBackend`.
#[inline(always)]
pub fn start(
    ctx: &TcContext,
    flow: &Flow,
    key: &ServiceKey,
    svc: &ServiceValue,
    local: &mut local::Kind,
) -> Result<Outcome, DropReason> {
    if svc.count == 0 {
        return Ok(Outcome::NoBackend { frontend_addr: flow.daddr });
    }
    let ct_key = conntrack::original_key(flow);
    let now = conntrack::now_secs();
    let (backend_id, b) = choose(key, svc, flow, now).ok_or(DropReason::NoBackend)?;
    let entry = CtEntry { backend_id, rev_nat_id: svc.rev_nat_id, created: now, ..CtEntry::default() };
    let outcome = if b.addr == flow.saddr {
        hairpin(ctx, flow, &ct_key, entry, &b)?;
        Outcome::Hairpin
    } else {
        let entry = CtEntry { flags: CtEntry::FLAG_POD_CLIENT, ..entry };
        conntrack::create(&ct_key, &conntrack::reply_key(&b, flow.saddr, flow.sport, flow.proto), &entry);
        nat::dnat(ctx, flow, b.addr, b.port)?;
        {
            if b.flags & Backend::FLAG_LOCAL != 0 {
                *local = local::Kind::service(b.addr, b.port);
            }
            Outcome::Translated
        }
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
    nat::both(ctx, flow, (b.addr, b.port), (gateway, flow.sport))
}
