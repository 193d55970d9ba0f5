//! Service load balancing for traffic from pods: frontend lookup (slot 0),
//! backend choice (conntrack, then affinity, then a random slot), DNAT.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, lpm_trie::Key},
    programs::TcContext,
};
use weir_common::{
    DropReason,
    lb::{
        AffinityKey, AffinityValue, Backend, CtEntry, CtKey, MAX_AFFINITY_ENTRIES, MAX_BACKENDS, MAX_REVNAT_ENTRIES,
        MAX_SRC_RANGE_ENTRIES, MAX_SVC_ENTRIES, RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL, ServiceKey, ServiceValue,
        SourceRangeKey,
    },
};

use crate::{conntrack, nat, node, packet::Flow};

#[map]
static WEIR_SVC: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SVC_ENTRIES, 0);
#[map]
static WEIR_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, 0);
#[map]
static WEIR_REVNAT: HashMap<u16, RevNat> = HashMap::pinned(MAX_REVNAT_ENTRIES, 0);
#[map]
static WEIR_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY_ENTRIES, 0);
#[map]
static WEIR_SRC_RANGE: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(MAX_SRC_RANGE_ENTRIES, BPF_F_NO_PREALLOC);

/// Source ports tried when translating a flow to a remote backend whose
/// reply tuple is already taken by another client.
const SNAT_TRIES: u32 = 8;
const SNAT_PORT_MIN: u32 = 32_768;
const SNAT_PORT_SPAN: u32 = 28_232;

pub enum SockOutcome {
    NotService,
    NoBackend,
    Backend { addr: u32, port: u16 },
}

/// Connect-time choice for a socket: sockets are clients inside the
/// cluster (internal scope), and affinity uses the node address as the
/// client (the source address is not chosen yet at connect time).
#[inline(always)]
pub fn for_socket(daddr: u32, dport: u16, proto: u8) -> SockOutcome {
    let flow = Flow { saddr: node::addr(), daddr, sport: 0, dport, proto, l4_off: 0, tcp_flags: 0 };
    let Some((key, svc)) = frontend_for_pod(&flow) else {
        return SockOutcome::NotService;
    };
    if svc.count == 0 {
        return SockOutcome::NoBackend;
    }
    match choose(&key, &svc, &flow, conntrack::now_secs()) {
        Some((_, b)) => SockOutcome::Backend { addr: b.addr, port: b.port },
        None => SockOutcome::NoBackend,
    }
}

pub enum Outcome {
    /// Not addressed to a Service.
    NotService,
    /// DNATed to a backend.
    Translated,
    /// Translated, and the source is now a node address: the caller sends
    /// it back out of the uplink it came in on (see `packet::out_via`).
    TranslatedToUplink,
    /// Translated back to the pod it came from: the caller sends it back out
    /// of the same veth (routing would drop it: its source is now an address
    /// of the node).
    Hairpin,
    /// A Service with no usable backend: the caller rejects the packet.
    NoBackend { frontend_addr: u32 },
}

#[inline(always)]
fn service(key: &ServiceKey) -> Option<ServiceValue> {
    // Safety: copied out at once.
    unsafe { WEIR_SVC.get(key) }.copied()
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    // Safety: copied out at once.
    unsafe { WEIR_BACKENDS.get(&id) }.copied()
}

/// Pods are internal clients: an `externalTrafficPolicy: Local` frontend
/// sends them to every backend (its internal scope), as kube-proxy does.
#[inline(always)]
fn frontend_for_pod(flow: &Flow) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey::new(flow.daddr, flow.dport, flow.proto, SCOPE_EXTERNAL, 0);
    let svc = service(&key)?;
    if svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
        let internal = ServiceKey::new(flow.daddr, flow.dport, flow.proto, SCOPE_INTERNAL, 0);
        if let Some(isvc) = service(&internal) {
            return Some((internal, isvc));
        }
    }
    Some((key, svc))
}

#[inline(always)]
pub fn from_pod(ctx: &TcContext, flow: &Flow) -> Result<Outcome, DropReason> {
    if !flow.has_ports() {
        return Ok(Outcome::NotService);
    }
    let Some((key, svc)) = frontend_for_pod(flow) else {
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
    let mut entry = CtEntry { backend_id, rev_nat_id: svc.rev_nat_id, created: now, ..CtEntry::default() };
    if b.addr == flow.saddr {
        // Hairpin: the pod is its own backend.
        let gateway = node::gateway();
        if gateway == 0 {
            return Err(DropReason::RewriteFailed);
        }
        entry.flags = CtEntry::FLAG_HAIRPIN;
        entry.nat_addr = gateway;
        entry.nat_port = flow.sport;
        let reply = conntrack::reply_key(&b, gateway, flow.sport, flow.proto);
        let reply_entry = CtEntry { nat_addr: flow.saddr, ..entry };
        conntrack::create_pair(&ct_key, &entry, &reply, &reply_entry);
        nat::dnat(ctx, flow, b.addr, b.port)?;
        nat::snat(ctx, flow, gateway, flow.sport)?;
        return Ok(Outcome::Hairpin);
    }
    entry.flags = CtEntry::FLAG_POD_CLIENT;
    conntrack::create(&ct_key, &conntrack::reply_key(&b, flow.saddr, flow.sport, flow.proto), &entry);
    nat::dnat(ctx, flow, b.addr, b.port)?;
    Ok(Outcome::Translated)
}

/// An existing, live flow keeps its backend while that backend exists:
/// DNAT to it, plus the source translation the flow was given (hairpin,
/// SNAT to the node). Returns the flow's flags, or None for a new flow.
#[inline(always)]
fn continue_flow(ctx: &TcContext, flow: &Flow, ct_key: &CtKey, now: u32) -> Result<Option<u16>, DropReason> {
    let Some(ct) = conntrack::lookup(ct_key) else { return Ok(None) };
    if ct.is_over(now) {
        return Ok(None);
    }
    let Some(b) = backend(ct.backend_id) else { return Ok(None) };
    conntrack::observe_client(ct_key, &ct, flow, now);
    nat::dnat(ctx, flow, b.addr, b.port)?;
    if ct.flags & (CtEntry::FLAG_HAIRPIN | CtEntry::FLAG_SNAT) != 0 {
        nat::snat(ctx, flow, ct.nat_addr, ct.nat_port)?;
    }
    Ok(Some(ct.flags))
}

#[inline(always)]
fn choose(key: &ServiceKey, svc: &ServiceValue, flow: &Flow, now: u32) -> Option<(u32, Backend)> {
    let aff_key = AffinityKey { client: flow.saddr, rev_nat_id: svc.rev_nat_id, _pad: 0 };
    if svc.affinity_timeout != 0 {
        // Safety: copied out at once.
        if let Some(a) = unsafe { WEIR_AFFINITY.get(&aff_key) }.copied()
            && now.wrapping_sub(a.last_seen) <= svc.affinity_timeout
            && let Some(b) = backend(a.backend_id)
        {
            let _ = WEIR_AFFINITY.insert(&aff_key, &AffinityValue { backend_id: a.backend_id, last_seen: now }, 0);
            return Some((a.backend_id, b));
        }
    }
    // Safety: helper without arguments.
    let slot = (unsafe { bpf_get_prandom_u32() } % svc.count as u32) as u16 + 1;
    let id = service(&key.with_slot(slot))?.backend_id;
    let b = backend(id)?;
    if svc.affinity_timeout != 0 {
        let _ = WEIR_AFFINITY.insert(&aff_key, &AffinityValue { backend_id: id, last_seen: now }, 0);
    }
    Some((id, b))
}

#[inline(always)]
fn rev_nat(id: u16) -> Option<RevNat> {
    // Safety: copied out at once.
    unsafe { WEIR_REVNAT.get(&id) }.copied()
}

pub enum Reversed {
    No,
    Yes,
    /// Reversed to come from a node address (a NodePort reply): out of
    /// the uplink, past the routing input check (`uplink_ifindex`).
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

/// Traffic entering the node from its uplink: replies of flows this node
/// sent to remote backends, and new flows to NodePorts, external IPs and
/// load-balancer IPs.
#[inline(always)]
pub fn from_netdev(ctx: &TcContext, flow: &Flow) -> Result<Outcome, DropReason> {
    if !flow.has_ports() {
        return Ok(Outcome::NotService);
    }
    // A remote backend answering: back to the client, from the frontend.
    if let Some(ct) = conntrack::lookup(&conntrack::as_reply(flow))
        && ct.flags & CtEntry::FLAG_SNAT != 0
        && let Some(rn) = rev_nat(ct.rev_nat_id)
        && !flow_is_over(ct.nat_addr, ct.nat_port, &rn, flow.proto)
    {
        nat::dnat(ctx, flow, ct.nat_addr, ct.nat_port)?;
        nat::snat(ctx, flow, rn.addr, rn.port)?;
        return Ok(Outcome::TranslatedToUplink);
    }

    let key = ServiceKey::new(flow.daddr, flow.dport, flow.proto, SCOPE_EXTERNAL, 0);
    let Some(svc) = service(&key) else {
        return Ok(Outcome::NotService);
    };
    if svc.flags & ServiceValue::FLAG_SOURCE_RANGES != 0 {
        let probe = Key::new(64, SourceRangeKey { rev_nat_id: svc.rev_nat_id, _pad: 0, addr: flow.saddr });
        if WEIR_SRC_RANGE.get(&probe).is_none() {
            return Err(DropReason::SourceRange);
        }
    }
    if svc.count == 0 {
        if svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
            return Err(DropReason::NoLocalBackend);
        }
        return Ok(Outcome::NoBackend { frontend_addr: flow.daddr });
    }

    let ct_key = conntrack::original_key(flow);
    let now = conntrack::now_secs();
    if let Some(flags) = continue_flow(ctx, flow, &ct_key, now)? {
        return Ok(if flags & CtEntry::FLAG_SNAT != 0 { Outcome::TranslatedToUplink } else { Outcome::Translated });
    }

    let (backend_id, b) = choose(&key, &svc, flow, now).ok_or(DropReason::NoBackend)?;
    let mut entry = CtEntry { backend_id, rev_nat_id: svc.rev_nat_id, created: now, ..CtEntry::default() };
    // Local backends (always the case under externalTrafficPolicy: Local)
    // see the client's address, and their replies pass this node anyway.
    if b.flags & Backend::FLAG_LOCAL != 0 || svc.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
        conntrack::create(&ct_key, &conntrack::reply_key(&b, flow.saddr, flow.sport, flow.proto), &entry);
        nat::dnat(ctx, flow, b.addr, b.port)?;
        return Ok(Outcome::Translated);
    }

    // A remote backend: take the node's address as the source so the reply
    // comes back here, keeping the client's port unless another client
    // already holds that reply tuple.
    let node_addr = node::addr();
    if node_addr == 0 {
        return Err(DropReason::SnatExhausted);
    }
    let mut chosen = None;
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = if i == 0 {
            flow.sport
        } else {
            // Safety: helper without arguments.
            ((SNAT_PORT_MIN + unsafe { bpf_get_prandom_u32() } % SNAT_PORT_SPAN) as u16).to_be()
        };
        let reply = conntrack::reply_key(&b, node_addr, port, flow.proto);
        match conntrack::lookup(&reply) {
            None => {
                chosen = Some((port, reply));
                break;
            }
            Some(_) => {}
        }
        i += 1;
    }
    let Some((port, reply)) = chosen else {
        return Err(DropReason::SnatExhausted);
    };
    entry.flags = CtEntry::FLAG_SNAT;
    entry.nat_addr = node_addr;
    entry.nat_port = port;
    let reply_entry = CtEntry { nat_addr: flow.saddr, nat_port: flow.sport, ..entry };
    conntrack::create_pair(&ct_key, &entry, &reply, &reply_entry);
    nat::dnat(ctx, flow, b.addr, b.port)?;
    nat::snat(ctx, flow, node_addr, port)?;
    // Towards the backend's node, back out of the uplink it came in on.
    Ok(Outcome::TranslatedToUplink)
}

/// Whether the flow from `client` to frontend `rn` is over (its original
/// entry is gone, reset, or closed for longer than the grace period): then
/// its reply entry must not translate.
#[inline(always)]
fn flow_is_over(client: u32, client_port: u16, rn: &RevNat, proto: u8) -> bool {
    let original = CtKey::original(client, client_port, rn.addr, rn.port, proto);
    let now = conntrack::now_secs();
    match conntrack::lookup(&original) {
        Some(ct) if ct.is_over(now) => true,
        Some(ct) => {
            // A half-closed flow (the client sent FIN, the server still
            // sends): the grace counts from the last reply.
            if ct.flags & CtEntry::FLAG_CLOSING != 0 {
                conntrack::refresh(&original, &ct, now);
            }
            false
        }
        None => true,
    }
}
