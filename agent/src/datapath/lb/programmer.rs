//! Turns the desired frontends into map entries, touching only what changed.
//!
//! Write order keeps the datapath consistent at every instant: backends
//! first, then slots 1..n, then slot 0 (the count) last; when a frontend
//! shrinks, slot 0 first, then the extra slots; backends go once nothing
//! points at them. A failed write leaves the frontend marked dirty, and the
//! next pass rewrites it whole.
//!
//! Both families go through here: each frontend to its family's maps, with
//! backend IDs and rev-NAT IDs drawn from one space for both, so an ID
//! always names one thing and restoring after a restart needs no family
//! bookkeeping beyond which map an entry was found in.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;

use weir_common::lb::{
    Backend, Backend6, RevNat, RevNat6, SCOPE_EXTERNAL, SCOPE_INTERNAL, ServiceKey, ServiceKey6, ServiceValue,
    ip6_from_octets, ip6_octets,
};

use crate::datapath::{
    MapError,
    lb::maps::{BackendEntry, LbDump, LbMaps, RevNatEntry, SvcKey},
};
use crate::model::{
    lb::{BackendAddr, BackendRef, Frontend, FrontendKind, FrontendState, Scope},
    service::{Family, Protocol},
};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    value: ServiceValue,
    /// Backend ID per slot (index 0 is slot 1).
    slots: Vec<u32>,
    /// False when the map may differ from the above (failed write, or
    /// odd contents found at restore): rewrite everything next time.
    clean: bool,
}

#[derive(Debug, Default)]
pub struct LbProgrammer {
    backend_ids: BTreeMap<BackendAddr, (u32, BackendEntry)>,
    next_backend_id: u32,
    rev_nat_ids: BTreeMap<(IpAddr, u16), u16>,
    next_rev_nat_id: u16,
    /// Keyed by the slot-0 key.
    programmed: BTreeMap<SvcKey, Programmed>,
    /// loadBalancerSourceRanges in the LPM maps, per rev-NAT ID.
    ranges: BTreeMap<u16, BTreeSet<IpNetwork>>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub frontends_written: usize,
    pub frontends_deleted: usize,
    pub backends_written: usize,
    pub backends_deleted: usize,
    pub errors: Vec<MapError>,
}

pub fn service_key(fe: &Frontend) -> SvcKey {
    let scope = match fe.scope {
        Scope::Default => SCOPE_EXTERNAL,
        Scope::Internal => SCOPE_INTERNAL,
    };
    let (port, proto) = (fe.port.to_be(), fe.proto.number());
    match fe.addr {
        IpAddr::V4(a) => SvcKey::V4(ServiceKey::new(u32::from_ne_bytes(a.octets()), port, proto, scope, 0)),
        IpAddr::V6(a) => SvcKey::V6(ServiceKey6::new(ip6_from_octets(a.octets()), port, proto, scope, 0)),
    }
}

fn backend_value(b: &BackendRef) -> BackendEntry {
    let mut flags = 0;
    if b.local {
        flags |= Backend::FLAG_LOCAL;
    }
    if b.terminating {
        flags |= Backend::FLAG_TERMINATING;
    }
    let (port, proto) = (b.addr.port.to_be(), b.addr.proto.number());
    match b.addr.addr {
        IpAddr::V4(a) => BackendEntry::V4(Backend { addr: u32::from_ne_bytes(a.octets()), port, proto, flags }),
        IpAddr::V6(a) => BackendEntry::V6(Backend6 { addr: ip6_from_octets(a.octets()), port, proto, flags }),
    }
}

fn protocol(number: u8) -> Option<Protocol> {
    match number {
        weir_common::lb::PROTO_TCP => Some(Protocol::Tcp),
        weir_common::lb::PROTO_UDP => Some(Protocol::Udp),
        weir_common::lb::PROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

fn backend_addr(b: &BackendEntry) -> Option<BackendAddr> {
    let (addr, port, proto) = match b {
        BackendEntry::V4(b) => (IpAddr::from(Ipv4Addr::from(b.addr.to_ne_bytes())), b.port, b.proto),
        BackendEntry::V6(b) => (IpAddr::from(Ipv6Addr::from(ip6_octets(b.addr))), b.port, b.proto),
    };
    Some(BackendAddr { addr, port: u16::from_be(port), proto: protocol(proto)? })
}

fn family(addr: &IpAddr) -> Family {
    Family::of(addr)
}

impl LbProgrammer {
    /// Rebuilds IDs and programmed state from the pinned maps, so that an
    /// agent restart keeps every backend ID (conntrack entries refer to them)
    /// and rewrites nothing that is already right.
    pub fn restore(dump: &LbDump) -> Self {
        let mut p = LbProgrammer::default();
        let backends = dump.backends.iter().map(|(&id, b)| (id, BackendEntry::V4(*b)));
        for (id, b) in backends.chain(dump.backends6.iter().map(|(&id, b)| (id, BackendEntry::V6(*b)))) {
            if let Some(addr) = backend_addr(&b) {
                p.backend_ids.insert(addr, (id, b));
            }
            p.next_backend_id = p.next_backend_id.max(id);
        }
        let rev_nats =
            dump.rev_nats.iter().map(|(&id, r)| (id, IpAddr::from(Ipv4Addr::from(r.addr.to_ne_bytes())), r.port));
        let rev_nats6 =
            dump.rev_nats6.iter().map(|(&id, r)| (id, IpAddr::from(Ipv6Addr::from(ip6_octets(r.addr))), r.port));
        for (id, addr, port) in rev_nats.chain(rev_nats6) {
            p.rev_nat_ids.insert((addr, u16::from_be(port)), id);
            p.next_rev_nat_id = p.next_rev_nat_id.max(id);
        }
        p.ranges = dump.source_ranges.clone();
        let mut groups: BTreeMap<SvcKey, BTreeMap<u16, ServiceValue>> = BTreeMap::new();
        let services = dump.services.iter().map(|(k, v)| (SvcKey::V4(*k), v));
        for (k, v) in services.chain(dump.services6.iter().map(|(k, v)| (SvcKey::V6(*k), v))) {
            groups.entry(k.with_slot(0)).or_default().insert(k.slot(), *v);
        }
        for (key0, slots) in groups {
            let head = slots.get(&0).copied();
            let max_slot = slots.keys().copied().max().unwrap_or(0);
            let count = head.map(|h| h.count).unwrap_or(0);
            let ids: Vec<u32> = (1..=max_slot).map(|s| slots.get(&s).map(|v| v.backend_id).unwrap_or(0)).collect();
            let clean = head.is_some() && max_slot == count && ids.iter().all(|&id| id != 0);
            p.programmed.insert(key0, Programmed { value: head.unwrap_or_default(), slots: ids, clean });
        }
        p
    }

    pub fn apply(
        &mut self,
        desired: &BTreeMap<Frontend, FrontendState>,
        prune: bool,
        maps: &mut dyn LbMaps,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut wanted_ranges: BTreeMap<(IpAddr, u16), BTreeSet<IpNetwork>> = BTreeMap::new();
        for (fe, state) in desired {
            wanted_ranges.entry((fe.addr, fe.port)).or_default().extend(state.source_ranges.iter().copied());
        }
        for (fe, state) in desired {
            let ranges = &wanted_ranges[&(fe.addr, fe.port)];
            if let Err(e) = self.apply_frontend(fe, state, ranges, maps, &mut report) {
                report.errors.push(e);
            }
        }
        if prune {
            let wanted: BTreeSet<SvcKey> = desired.keys().map(service_key).collect();
            let stale: Vec<SvcKey> = self.programmed.keys().filter(|k| !wanted.contains(k)).copied().collect();
            for key0 in stale {
                match self.delete_frontend(key0, maps) {
                    Ok(()) => report.frontends_deleted += 1,
                    Err(e) => report.errors.push(e),
                }
            }
            self.collect_garbage(maps, &mut report);
        }
        // Ranges go after the flags that use them: a frontend whose flag
        // write failed keeps filtering (fails closed) rather than opening.
        let wanted_by_id: BTreeMap<u16, &BTreeSet<IpNetwork>> =
            wanted_ranges.iter().filter_map(|(k, set)| self.rev_nat_ids.get(k).map(|id| (*id, set))).collect();
        let empty = BTreeSet::new();
        for (id, have) in self.ranges.clone() {
            let want = wanted_by_id.get(&id).copied().unwrap_or(&empty);
            for range in have.difference(want) {
                match maps.delete_source_range(id, *range) {
                    Ok(()) => {
                        let set = self.ranges.entry(id).or_default();
                        set.remove(range);
                    }
                    Err(e) => report.errors.push(e),
                }
            }
        }
        self.ranges.retain(|_, set| !set.is_empty());
        report
    }

    /// Programs only `changed` frontends (added, changed or removed from
    /// `desired`), then frees backends nothing refers to: what one
    /// EndpointSlice change costs, whatever the number of Services.
    /// Frontends removed here were desired earlier in this run, so deleting
    /// them is safe before the initial lists are complete.
    pub fn apply_changed(
        &mut self,
        desired: &BTreeMap<Frontend, FrontendState>,
        changed: &BTreeSet<Frontend>,
        maps: &mut dyn LbMaps,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut touched_ranges: BTreeMap<u16, BTreeSet<IpNetwork>> = BTreeMap::new();
        for fe in changed {
            let result = match desired.get(fe) {
                Some(state) => {
                    let ranges: BTreeSet<IpNetwork> = state.source_ranges.iter().copied().collect();
                    let r = self.apply_frontend(fe, state, &ranges, maps, &mut report);
                    if let Some(id) = self.rev_nat_ids.get(&(fe.addr, fe.port)) {
                        touched_ranges.entry(*id).or_default().extend(ranges);
                    }
                    r
                }
                None => {
                    let key0 = service_key(fe);
                    if let Some(id) = self.programmed.get(&key0).map(|p| p.value.rev_nat_id) {
                        touched_ranges.entry(id).or_default();
                    }
                    let r = self.delete_frontend(key0, maps);
                    if r.is_ok() && !self.programmed.contains_key(&key0) {
                        report.frontends_deleted += 1;
                    }
                    r
                }
            };
            if let Err(e) = result {
                report.errors.push(e);
            }
        }
        self.collect_garbage(maps, &mut report);
        // Stale ranges of touched rev-NAT IDs, after the flags that use them.
        for (id, want) in touched_ranges {
            let have = self.ranges.get(&id).cloned().unwrap_or_default();
            for range in have.difference(&want) {
                match maps.delete_source_range(id, *range) {
                    Ok(()) => {
                        if let Some(set) = self.ranges.get_mut(&id) {
                            set.remove(range);
                        }
                    }
                    Err(e) => report.errors.push(e),
                }
            }
        }
        self.ranges.retain(|_, set| !set.is_empty());
        report
    }

    fn apply_frontend(
        &mut self,
        fe: &Frontend,
        state: &FrontendState,
        ranges: &BTreeSet<IpNetwork>,
        maps: &mut dyn LbMaps,
        report: &mut ApplyReport,
    ) -> Result<(), MapError> {
        let key0 = service_key(fe);
        let mut ids = Vec::with_capacity(state.backends.len());
        for b in &state.backends {
            ids.push(self.ensure_backend(b, maps, report)?);
        }
        let rev_nat_id = self.ensure_rev_nat(fe.addr, fe.port, maps)?;
        // Ranges before the flag that makes the datapath consult them.
        for range in ranges {
            if !self.ranges.get(&rev_nat_id).is_some_and(|s| s.contains(range)) {
                maps.set_source_range(rev_nat_id, *range)?;
                self.ranges.entry(rev_nat_id).or_default().insert(*range);
            }
        }
        let mut flags = 0;
        if !state.source_ranges.is_empty() {
            flags |= ServiceValue::FLAG_SOURCE_RANGES;
        }
        if state.kind == FrontendKind::NodePort {
            flags |= ServiceValue::FLAG_NODEPORT;
        }
        if state.local_only {
            flags |= ServiceValue::FLAG_LOCAL_ONLY;
        }
        let count = u16::try_from(ids.len()).unwrap_or(u16::MAX);
        ids.truncate(count as usize);
        let target = Programmed {
            value: ServiceValue {
                backend_id: 0,
                count,
                rev_nat_id,
                flags,
                _pad: 0,
                affinity_timeout: state.affinity_timeout,
            },
            slots: ids,
            clean: true,
        };
        let old = self.programmed.get(&key0).cloned();
        if old.as_ref() == Some(&target) {
            return Ok(());
        }
        // Until this write completes the map may hold a mix: dirty.
        let mut dirty = target.clone();
        dirty.clean = false;
        if let Some(o) = &old
            && o.slots.len() > dirty.slots.len()
        {
            dirty.slots.extend_from_slice(&o.slots[target.slots.len()..]);
        }
        self.programmed.insert(key0, dirty);

        let old_clean = old.as_ref().filter(|o| o.clean);
        for (i, &id) in target.slots.iter().enumerate() {
            if old_clean.and_then(|o| o.slots.get(i)) == Some(&id) {
                continue;
            }
            let slot = ServiceValue { backend_id: id, rev_nat_id, ..Default::default() };
            maps.set_service(key0.with_slot(i as u16 + 1), slot)?;
        }
        if old_clean.map(|o| o.value) != Some(target.value) {
            maps.set_service(key0, target.value)?;
        }
        let old_len = old.as_ref().map(|o| o.slots.len()).unwrap_or(0);
        for slot in target.slots.len() + 1..=old_len {
            maps.delete_service(key0.with_slot(slot as u16))?;
        }
        self.programmed.insert(key0, target);
        report.frontends_written += 1;
        Ok(())
    }

    fn delete_frontend(&mut self, key0: SvcKey, maps: &mut dyn LbMaps) -> Result<(), MapError> {
        let Some(p) = self.programmed.get_mut(&key0) else { return Ok(()) };
        p.clean = false;
        // Slot 0 first: the datapath stops matching before slots vanish.
        maps.delete_service(key0)?;
        for slot in 1..=p.slots.len() {
            maps.delete_service(key0.with_slot(slot as u16))?;
        }
        self.programmed.remove(&key0);
        Ok(())
    }

    fn ensure_backend(
        &mut self,
        b: &BackendRef,
        maps: &mut dyn LbMaps,
        report: &mut ApplyReport,
    ) -> Result<u32, MapError> {
        let value = backend_value(b);
        match self.backend_ids.get(&b.addr) {
            Some(&(id, current)) if current == value => Ok(id),
            Some(&(id, _)) => {
                maps.set_backend(id, value)?;
                self.backend_ids.insert(b.addr, (id, value));
                report.backends_written += 1;
                Ok(id)
            }
            None => {
                // IDs are never reused soon: a conntrack entry that still
                // names a deleted backend must not find a new one there.
                self.next_backend_id = self.next_backend_id.wrapping_add(1).max(1);
                let id = self.next_backend_id;
                maps.set_backend(id, value)?;
                self.backend_ids.insert(b.addr, (id, value));
                report.backends_written += 1;
                Ok(id)
            }
        }
    }

    fn ensure_rev_nat(&mut self, addr: IpAddr, port: u16, maps: &mut dyn LbMaps) -> Result<u16, MapError> {
        if let Some(&id) = self.rev_nat_ids.get(&(addr, port)) {
            return Ok(id);
        }
        let in_use: std::collections::BTreeSet<u16> = self.rev_nat_ids.values().copied().collect();
        let mut id = self.next_rev_nat_id;
        loop {
            id = id.wrapping_add(1).max(1);
            if !in_use.contains(&id) {
                break;
            }
        }
        let entry = match addr {
            IpAddr::V4(a) => {
                RevNatEntry::V4(RevNat { addr: u32::from_ne_bytes(a.octets()), port: port.to_be(), _pad: 0 })
            }
            IpAddr::V6(a) => {
                RevNatEntry::V6(RevNat6 { addr: ip6_from_octets(a.octets()), port: port.to_be(), _pad: 0 })
            }
        };
        maps.set_rev_nat(id, entry)?;
        self.next_rev_nat_id = id;
        self.rev_nat_ids.insert((addr, port), id);
        Ok(id)
    }

    /// Deletes backends and reverse-NAT entries nothing refers to.
    fn collect_garbage(&mut self, maps: &mut dyn LbMaps, report: &mut ApplyReport) {
        let used_backends: std::collections::BTreeSet<u32> =
            self.programmed.values().flat_map(|p| p.slots.iter().copied()).collect();
        let unused: Vec<(BackendAddr, u32)> = self
            .backend_ids
            .iter()
            .filter(|(_, (id, _))| !used_backends.contains(id))
            .map(|(a, (id, _))| (*a, *id))
            .collect();
        for (addr, id) in unused {
            match maps.delete_backend(id, family(&addr.addr)) {
                Ok(()) => {
                    self.backend_ids.remove(&addr);
                    report.backends_deleted += 1;
                }
                Err(e) => report.errors.push(e),
            }
        }
        let used_rev: std::collections::BTreeSet<u16> = self.programmed.values().map(|p| p.value.rev_nat_id).collect();
        let unused: Vec<((IpAddr, u16), u16)> =
            self.rev_nat_ids.iter().filter(|(_, id)| !used_rev.contains(id)).map(|(k, id)| (*k, *id)).collect();
        for (k, id) in unused {
            match maps.delete_rev_nat(id, family(&k.0)) {
                Ok(()) => {
                    self.rev_nat_ids.remove(&k);
                }
                Err(e) => report.errors.push(e),
            }
        }
    }
}

#[cfg(test)]
mod tests;
