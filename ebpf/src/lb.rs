//! Service load balancing for traffic from pods: frontend lookup (slot 0),
//! backend choice (conntrack, then affinity, then a random slot), DNAT.
use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};
use weir_common::{
    DropReason,
    lb::{AffinityKey, AffinityValue, Backend, CtEntry, RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL, ServiceKey, ServiceValue},
};

use crate::{conntrack, nat, packet::Flow};

#[map]
static WEIR_SVC: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(262_144, 0);
#[map]
static WEIR_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(131_072, 0);
#[map]
static WEIR_REVNAT: HashMap<u16, RevNat> = HashMap::pinned(65_536, 0);
#[map]
static WEIR_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65_536, 0);

pub enum Outcome {
    /// Not addressed to a Service.
    NotService,
    /// DNATed to a backend.
    Translated,
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

    // An existing flow keeps its backend while that backend exists.
    if let Some(ct) = conntrack::lookup(&ct_key)
        && let Some(b) = backend(ct.backend_id)
    {
        nat::dnat(ctx, flow, b.addr, b.port)?;
        return Ok(Outcome::Translated);
    }

    let (backend_id, b) = choose(&key, &svc, flow, now).ok_or(DropReason::NoBackend)?;
    let entry = CtEntry { backend_id, rev_nat_id: svc.rev_nat_id, flags: 0, last_seen: now, _pad: 0 };
    conntrack::create(&ct_key, &conntrack::reply_key(flow, b.addr, b.port), &entry);
    nat::dnat(ctx, flow, b.addr, b.port)?;
    Ok(Outcome::Translated)
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

/// Reply of a translated flow, on its way to the client pod: put the
/// frontend back as the source.
#[inline(always)]
pub fn reverse(ctx: &TcContext, flow: &Flow) -> Result<(), DropReason> {
    if !flow.has_ports() {
        return Ok(());
    }
    let Some(ct) = conntrack::lookup(&conntrack::as_reply(flow)) else {
        return Ok(());
    };
    // Safety: copied out at once.
    let Some(rn) = (unsafe { WEIR_REVNAT.get(&ct.rev_nat_id) }).copied() else {
        return Ok(());
    };
    nat::snat(ctx, flow, rn.addr, rn.port)
}
