//! Traffic entering the node from its uplink: replies of flows this node
//! sent to remote backends, and new flows to NodePorts, external IPs and
//! load-balancer IPs (DNAT; SNAT to the node for a remote backend).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use weir_common::{
    DropReason,
    flow::FLOW_DIR_INGRESS,
    lb::{Backend, CtEntry, CtKey, MAX_SRC_RANGE_ENTRIES, SCOPE_EXTERNAL, ServiceKey, ServiceValue, SourceRangeKey},
};

use super::{choose, continue_flow, flow_is_over, rev_nat, service};
use crate::{
    conntrack, flow, nat, node,
    packet::{self, Flow},
};

#[map]
static WEIR_SRC_RANGE: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(MAX_SRC_RANGE_ENTRIES, BPF_F_NO_PREALLOC);

/// Source ports tried when translating a flow to a remote backend whose
/// reply tuple is already taken by another client.
const SNAT_TRIES: u32 = 8;
const SNAT_PORT_MIN: u32 = 32_768;
const SNAT_PORT_SPAN: u32 = 28_232;

/// What a packet from the uplink became.
pub enum Outcome {
    /// Not addressed to a Service, nor a reply of one.
    NotService,
    /// DNATed to a local backend.
    Translated,
    /// Translated, and the source is now a node address (SNATed to a remote
    /// backend, or a remote backend's reply reversed): the caller sends it
    /// back out of the uplink it came in on (see `packet::out_via`).
    TranslatedToUplink,
    /// A Service with no usable backend: the caller rejects the packet.
    NoBackend { frontend_addr: u32 },
}

#[inline(always)]
pub fn translate(ctx: &TcContext, flow: &Flow) -> Result<Outcome, DropReason> {
    if !flow.has_ports() {
        return Ok(Outcome::NotService);
    }
    if reply_of_remote(ctx, flow)? {
        return Ok(Outcome::TranslatedToUplink);
    }

    let key = ServiceKey::new(flow.daddr, flow.dport, flow.proto, SCOPE_EXTERNAL, 0);
    let Some(svc) = service(&key) else {
        return Ok(Outcome::NotService);
    };
    if svc.flags & ServiceValue::FLAG_SOURCE_RANGES != 0 && !source_allowed(&svc, flow) {
        return Err(DropReason::SourceRange);
    }
    if svc.count == 0 {
        if svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
            return Err(DropReason::NoLocalBackend);
        }
        return Ok(Outcome::NoBackend { frontend_addr: flow.daddr });
    }

    let ct_key = conntrack::original_key(flow);
    let now = conntrack::now_secs();
    if let Some(c) = continue_flow(ctx, flow, &ct_key, now)? {
        return Ok(if c.flags & CtEntry::FLAG_SNAT != 0 { Outcome::TranslatedToUplink } else { Outcome::Translated });
    }

    let (backend_id, b) = choose(&key, &svc, flow, now).ok_or(DropReason::NoBackend)?;
    let entry = CtEntry { backend_id, rev_nat_id: svc.rev_nat_id, created: now, ..CtEntry::default() };
    // Local backends (always the case under externalTrafficPolicy: Local)
    // see the client's address, and their replies pass this node anyway.
    let outcome = if b.flags & Backend::FLAG_LOCAL != 0 || svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
        conntrack::create(&ct_key, &conntrack::reply_key(&b, flow.saddr, flow.sport, flow.proto), &entry);
        nat::dnat(ctx, flow, b.addr, b.port)?;
        Outcome::Translated
    } else {
        to_remote(ctx, flow, &ct_key, entry, &b)?;
        // Towards the backend's node, back out of the uplink it came in on.
        Outcome::TranslatedToUplink
    };
    // A new flow (later packets take `continue_flow` above).
    flow::translated(flow, FLOW_DIR_INGRESS, packet::ifindex(ctx), b.addr, b.port);
    Ok(outcome)
}

/// A remote backend answering a flow this node SNATed: back to the client,
/// from the frontend. Whether it was one.
#[inline(always)]
fn reply_of_remote(ctx: &TcContext, flow: &Flow) -> Result<bool, DropReason> {
    if let Some(ct) = conntrack::lookup(&conntrack::as_reply(flow))
        && ct.flags & CtEntry::FLAG_SNAT != 0
        && let Some(rn) = rev_nat(ct.rev_nat_id)
        && !flow_is_over(ct.nat_addr, ct.nat_port, &rn, flow.proto)
    {
        nat::both(ctx, flow, (ct.nat_addr, ct.nat_port), (rn.addr, rn.port))?;
        return Ok(true);
    }
    Ok(false)
}

/// Whether the client is inside the Service's loadBalancerSourceRanges.
#[inline(always)]
fn source_allowed(svc: &ServiceValue, flow: &Flow) -> bool {
    let probe = Key::new(64, SourceRangeKey { rev_nat_id: svc.rev_nat_id, _pad: 0, addr: flow.saddr });
    WEIR_SRC_RANGE.get(&probe).is_some()
}

/// A remote backend: take the node's address as the source so the reply
/// comes back here.
#[inline(always)]
fn to_remote(ctx: &TcContext, flow: &Flow, ct_key: &CtKey, entry: CtEntry, b: &Backend) -> Result<(), DropReason> {
    let node_addr = node::addr();
    if node_addr == 0 {
        return Err(DropReason::SnatExhausted);
    }
    let (port, reply) = snat_port(flow, node_addr, b).ok_or(DropReason::SnatExhausted)?;
    let entry = CtEntry { flags: CtEntry::FLAG_SNAT, nat_addr: node_addr, nat_port: port, ..entry };
    let reply_entry = CtEntry { nat_addr: flow.saddr, nat_port: flow.sport, ..entry };
    conntrack::create_pair(ct_key, &entry, &reply, &reply_entry);
    nat::both(ctx, flow, (b.addr, b.port), (node_addr, port))
}

/// The source port for a flow SNATed to `node_addr`, and the reply key it
/// gives: the client's own port unless another client already holds that
/// reply tuple, else a few random ones.
#[inline(always)]
fn snat_port(flow: &Flow, node_addr: u32, b: &Backend) -> Option<(u16, CtKey)> {
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = if i == 0 {
            flow.sport
        } else {
            // Safety: helper without arguments.
            ((SNAT_PORT_MIN + unsafe { bpf_get_prandom_u32() } % SNAT_PORT_SPAN) as u16).to_be()
        };
        let reply = conntrack::reply_key(b, node_addr, port, flow.proto);
        if conntrack::lookup(&reply).is_none() {
            return Some((port, reply));
        }
        i += 1;
    }
    None
}
