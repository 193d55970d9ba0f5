//! Service load balancing, one module per path:
//! - `socket`: connect-time choice for sockets in the node's cgroup;
//! - `pod`: packets from pods (DNAT, hairpin);
//! - `netdev`: packets entering through the uplink (NodePorts, external
//!   and load-balancer IPs: DNAT, SNAT to remote backends, their replies);
//! - `reverse`: replies of translated flows get their frontend back;
//! - `v6`: the IPv6 maps, frontend lookup and backend choice;
//! - `parse6`: what the IPv6 paths read of a packet (past extension
//!   headers, fragments);
//! - `tc6`, `reject6`: the per-packet path of IPv6 pod clients (DNAT,
//!   reverse NAT, ICMPv6 port unreachable).
//!
//! Shared here: the Service maps, frontend lookup (slot 0), backend choice
//! (conntrack, then affinity, then a random slot), and whether a flow is over.
use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};
use weir_common::{
    DropReason,
    lb::{
        AffinityKey, AffinityValue, Backend, CtEntry, CtKey, MAX_AFFINITY_ENTRIES, MAX_BACKENDS, MAX_REVNAT_ENTRIES,
        MAX_SVC_ENTRIES, RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL, ServiceKey, ServiceValue,
    },
};

use crate::{
    conntrack, nat,
    packet::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

pub mod netdev;
pub mod parse6;
pub mod pod;
pub mod reject6;
pub mod reverse;
pub mod socket;
pub mod tc6;
pub mod v6;

#[map]
static WEIR_SVC: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SVC_ENTRIES, 0);
#[map]
static WEIR_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, 0);
#[map]
static WEIR_REVNAT: HashMap<u16, RevNat> = HashMap::pinned(MAX_REVNAT_ENTRIES, 0);
#[map]
static WEIR_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY_ENTRIES, 0);

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

#[inline(always)]
fn rev_nat(id: u16) -> Option<RevNat> {
    // Safety: copied out at once.
    unsafe { WEIR_REVNAT.get(&id) }.copied()
}

/// Pods (and sockets) are internal clients: an `externalTrafficPolicy:
/// Local` frontend sends them to every backend (its internal scope), as
/// kube-proxy does.
#[inline(always)]
fn internal_frontend(flow: &Flow) -> Option<(ServiceKey, ServiceValue)> {
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

/// A live flow's packet as `continue_flow` sent it on: its flags and the
/// backend it now goes to (network order).
#[derive(Clone, Copy)]
pub struct Continued {
    pub flags: u16,
    pub addr: u32,
    pub port: u16,
    /// The backend is a pod on this node (`Backend::FLAG_LOCAL`).
    pub local: bool,
}

/// An existing, live flow keeps its backend while that backend exists:
/// DNAT to it, plus the source translation the flow was given (hairpin,
/// SNAT to the node). None for a new flow.
#[inline(always)]
fn continue_flow(ctx: &TcContext, flow: &Flow, ct_key: &CtKey, now: u32) -> Result<Option<Continued>, DropReason> {
    let Some(ct) = conntrack::lookup(ct_key) else { return Ok(None) };
    if ct.is_over(now) || reopens(flow, &ct) {
        return Ok(None);
    }
    let Some(b) = backend(ct.backend_id) else { return Ok(None) };
    if flow.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // The reply entry: the backend answers the client, or the address
        // and port its source was translated to.
        let client = if ct.flags & (CtEntry::FLAG_HAIRPIN | CtEntry::FLAG_SNAT) != 0 {
            (ct.nat_addr, ct.nat_port)
        } else {
            (flow.saddr, flow.sport)
        };
        let reply = conntrack::reply_key(&b, client.0, client.1, flow.proto);
        conntrack::observe_client(ct_key, &reply, &ct, flow, now);
    }
    if ct.flags & (CtEntry::FLAG_HAIRPIN | CtEntry::FLAG_SNAT) != 0 {
        nat::both(ctx, flow, (b.addr, b.port), (ct.nat_addr, ct.nat_port))?;
    } else {
        nat::dnat(ctx, flow, b.addr, b.port)?;
    }
    Ok(Some(Continued { flags: ct.flags, addr: b.addr, port: b.port, local: b.flags & Backend::FLAG_LOCAL != 0 }))
}

/// A SYN on the tuple of a closing flow: the client reused its port within
/// the close grace period (within seconds at a few thousand connections a
/// second) for a new connection, which is balanced afresh, as netfilter
/// reopens a conntrack entry in TIME_WAIT. Continuing the old flow pinned
/// every such connection to the old backend.
#[inline(always)]
fn reopens(flow: &Flow, ct: &CtEntry) -> bool {
    ct.flags & CtEntry::FLAG_CLOSING != 0 && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A new flow's backend: the client's affinity while it lasts, else a
/// random slot.
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
