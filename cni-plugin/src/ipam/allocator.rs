//! Allocation policy: round-robin over the pod addresses of a range (IPv4:
//! `.2 ..= broadcast-1`; IPv6: `::2 ..=` the last address), continuing after
//! the last address handed out so that a just-released address is not given
//! to the next pod (stale conntrack entries, ARP and neighbour caches and
//! endpoint lists elsewhere still point at it for a while).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;

use super::{IpamError, Reservation, Store};
use crate::attachment::Attachment;

/// The addresses of a pod range: the first host address is the gateway
/// (held by every pod's host veth), pods get the rest up to the broadcast
/// address (IPv4) or the last address (IPv6, which has no broadcast).
/// Arithmetic is on u128 so both families share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRange {
    cidr: IpNetwork,
}

impl PodRange {
    /// `cidr` must leave at least one pod address: a prefix of /30 or
    /// shorter for IPv4, /126 for IPv6 (the config enforces it).
    pub fn new(cidr: IpNetwork) -> Self {
        debug_assert!(cidr.prefix() <= if cidr.is_ipv6() { 126 } else { 30 });
        Self { cidr }
    }

    pub fn cidr(&self) -> IpNetwork {
        self.cidr
    }

    pub fn is_ipv6(&self) -> bool {
        self.cidr.is_ipv6()
    }

    /// The prefix length of one address of the family: 32 or 128.
    pub fn host_prefix(&self) -> u8 {
        if self.is_ipv6() { 128 } else { 32 }
    }

    fn network(&self) -> u128 {
        to_u128(self.cidr.network())
    }

    fn addr(&self, n: u128) -> IpAddr {
        match self.cidr {
            // In range by construction: the network is IPv4.
            IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    pub fn gateway(&self) -> IpAddr {
        self.addr(self.network() + 1)
    }

    fn first(&self) -> u128 {
        self.network() + 2
    }

    fn last(&self) -> u128 {
        let host_bits = u32::from(self.host_prefix() - self.cidr.prefix());
        // At least 2 host bits (the config's prefix limits), at most 128.
        let top = self.network() | (u128::MAX >> (128 - host_bits));
        // IPv4 keeps its broadcast address out.
        if self.is_ipv6() { top } else { top - 1 }
    }

    pub fn capacity(&self) -> u128 {
        self.last() - self.first() + 1
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_ipv6() && (self.first()..=self.last()).contains(&to_u128(ip))
    }

    /// Every pod address, starting right after `cursor` and wrapping around
    /// (lazily: an IPv6 range has far more than anyone walks).
    fn candidates_after(&self, cursor: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + use<> {
        let range = *self;
        let first = self.first();
        let capacity = self.capacity();
        let start = match cursor {
            Some(ip) if self.contains(ip) => to_u128(ip) - first + 1,
            _ => 0,
        };
        (0..capacity).map(move |i| range.addr(first + (start + i) % capacity))
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub struct Allocator<S> {
    range: PodRange,
    store: S,
}

impl<S: Store> Allocator<S> {
    pub fn new(range: PodRange, store: S) -> Self {
        Self { range, store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Reserves an address for `owner`, durably. An attachment holds one
    /// address: a second ADD without DEL is an error (as host-local does),
    /// since the runtime must never do that and it means state went out of
    /// sync.
    #[cfg(test)]
    pub fn allocate(&self, owner: &Attachment) -> Result<IpAddr, IpamError> {
        let ip = self.reserve(owner)?;
        if let Err(e) = self.store.persist() {
            let _ = self.release_ip(owner, ip);
            return Err(e);
        }
        Ok(ip)
    }

    /// `allocate` without the flush: the reservation is visible to every
    /// other allocation at once, and durable after `persist`.
    fn reserve(&self, owner: &Attachment) -> Result<IpAddr, IpamError> {
        self.store.locked(|store| {
            if let Some(ip) = store.held_by(owner)? {
                return Err(IpamError::AlreadyReserved { attachment: owner.clone(), ip });
            }
            let taken = store.taken()?;
            for ip in self.range.candidates_after(store.last_reserved()?) {
                if !taken.contains(&ip) && store.reserve(ip, owner)? {
                    store.set_last_reserved(ip)?;
                    return Ok(ip);
                }
            }
            Err(IpamError::Exhausted { pod_cidr: self.range.cidr(), capacity: self.range.capacity() })
        })
    }

    /// Reserves an address like `allocate`, returning a guard that gives it
    /// back unless the caller keeps it: a failed ADD must not leak its
    /// address. The reservation is not durable until `persist` returns,
    /// which the caller may run while it does other work (ADD does it while
    /// the kernel wires the veth) but must wait for before keeping it.
    pub fn lease(&self, owner: &Attachment) -> Result<Lease<'_, S>, IpamError> {
        let ip = self.reserve(owner)?;
        Ok(Lease { allocator: self, owner: owner.clone(), ip, armed: true })
    }

    /// Makes every reservation and release so far durable.
    pub fn persist(&self) -> Result<(), IpamError> {
        self.store.persist()
    }

    /// The address `owner` holds, if any.
    /// (Tests; `FamilyIpam` calls the store functions below for every
    /// family, configured or retired.)
    #[cfg(test)]
    pub fn lookup(&self, owner: &Attachment) -> Result<Option<IpAddr>, IpamError> {
        lookup_owner(&self.store, owner)
    }

    /// Releases whatever `owner` holds; returns the released addresses
    /// (empty when it held none, which is fine for an idempotent DEL).
    /// (Tests; `FamilyIpam` calls the store functions below for every
    /// family, configured or retired.)
    #[cfg(test)]
    pub fn release(&self, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        release_owner(&self.store, owner)
    }

    /// Releases `ip` if `owner` still holds it.
    fn release_ip(&self, owner: &Attachment, ip: IpAddr) -> Result<(), IpamError> {
        self.store.locked(|store| {
            let held = store.reservations()?.into_iter().any(|r| r.ip == ip && r.owner.as_ref() == Some(owner));
            if held { store.release(ip) } else { Ok(()) }
        })?;
        self.store.persist()
    }

    /// GC: releases every reservation whose owner is not in `keep`
    /// (unreadable records included). Returns what was released.
    /// (Tests; `FamilyIpam` calls the store functions below for every
    /// family, configured or retired.)
    #[cfg(test)]
    pub fn release_all_except(&self, keep: &HashSet<Attachment>) -> Result<Vec<Reservation>, IpamError> {
        release_all_except(&self.store, keep)
    }
}

// DEL and GC need no range: they also run on the store of a family the
// configuration no longer has (`FamilyIpam::open_all`).

/// The address `owner` holds in `store`, if any.
pub fn lookup_owner<S: Store>(store: &S, owner: &Attachment) -> Result<Option<IpAddr>, IpamError> {
    store.locked(|store| match store.held_by(owner)? {
        Some(ip) => Ok(Some(ip)),
        // Not indexed (a record from before the index): read them all.
        None => Ok(store.reservations()?.into_iter().find(|r| r.owner.as_ref() == Some(owner)).map(|r| r.ip)),
    })
}

/// Releases whatever `owner` holds in `store`; returns the released
/// addresses.
pub fn release_owner<S: Store>(store: &S, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
    let released = store.locked(|store| {
        if let Some(ip) = store.held_by(owner)? {
            store.release(ip)?;
            return Ok(vec![ip]);
        }
        let mut released = Vec::new();
        for r in store.reservations()? {
            if r.owner.as_ref() == Some(owner) {
                store.release(r.ip)?;
                released.push(r.ip);
            }
        }
        Ok(released)
    })?;
    store.persist()?;
    Ok(released)
}

/// Releases every reservation in `store` whose owner is not in `keep`
/// (unreadable records included). Returns what was released.
pub fn release_all_except<S: Store>(store: &S, keep: &HashSet<Attachment>) -> Result<Vec<Reservation>, IpamError> {
    let released = store.locked(|store| {
        let mut released = Vec::new();
        for r in store.reservations()? {
            if !r.owner.as_ref().is_some_and(|o| keep.contains(o)) {
                store.release(r.ip)?;
                released.push(r);
            }
        }
        Ok(released)
    })?;
    store.persist()?;
    Ok(released)
}

/// An address reserved by a still-running ADD. Dropped without `keep`, it
/// releases the address.
pub struct Lease<'a, S: Store> {
    allocator: &'a Allocator<S>,
    owner: Attachment,
    ip: IpAddr,
    armed: bool,
}

impl<S: Store> Lease<'_, S> {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// ADD succeeded (and `Allocator::persist` returned since the lease was
    /// taken): the address stays reserved until DEL or GC.
    pub fn keep(mut self) -> IpAddr {
        self.armed = false;
        self.ip
    }

    /// Gives the address back now, reporting failure to the caller.
    pub fn release(mut self) -> Result<(), IpamError> {
        self.armed = false;
        self.allocator.release_ip(&self.owner, self.ip)
    }
}

impl<S: Store> Drop for Lease<'_, S> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.allocator.release_ip(&self.owner, self.ip)
        {
            crate::log::warn(format_args!("releasing {} of {}: {e}", self.ip, self.owner));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::memory_store::MemoryStore;

    fn allocator(cidr: &str) -> Allocator<MemoryStore> {
        Allocator::new(PodRange::new(cidr.parse().unwrap()), MemoryStore::default())
    }

    fn owner(i: usize) -> Attachment {
        Attachment::new(format!("c{i}"), "eth0")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn range_layout() {
        let r = PodRange::new("10.244.1.0/24".parse().unwrap());
        assert_eq!(r.gateway(), ip("10.244.1.1"));
        assert_eq!(r.capacity(), 253);
        assert!(!r.contains(ip("10.244.1.1")));
        assert!(r.contains(ip("10.244.1.2")));
        assert!(r.contains(ip("10.244.1.254")));
        assert!(!r.contains(ip("10.244.1.255")));
        let r30 = PodRange::new("10.0.0.4/30".parse().unwrap());
        assert_eq!(r30.gateway(), ip("10.0.0.5"));
        assert_eq!(r30.capacity(), 1);
    }

    #[test]
    fn sequential_from_dot_two() {
        let a = allocator("10.244.1.0/24");
        assert_eq!(a.allocate(&owner(0)).unwrap(), ip("10.244.1.2"));
        assert_eq!(a.allocate(&owner(1)).unwrap(), ip("10.244.1.3"));
        assert_eq!(a.allocate(&owner(2)).unwrap(), ip("10.244.1.4"));
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let a = allocator("10.244.1.0/24");
        let first = a.allocate(&owner(0)).unwrap();
        a.allocate(&owner(1)).unwrap();
        assert_eq!(a.release(&owner(0)).unwrap(), vec![first]);
        // The cursor moves on instead of handing .2 back.
        assert_eq!(a.allocate(&owner(2)).unwrap(), ip("10.244.1.4"));
    }

    #[test]
    fn round_robin_wraps_to_freed_addresses() {
        let a = allocator("10.0.0.0/29"); // pods .2 ..= .6
        for i in 0..5 {
            a.allocate(&owner(i)).unwrap();
        }
        a.release(&owner(1)).unwrap(); // frees .3
        assert_eq!(a.allocate(&owner(9)).unwrap(), ip("10.0.0.3"));
    }

    #[test]
    fn exhaustion_names_the_pod_cidr() {
        let a = allocator("10.0.0.0/29");
        for i in 0..5 {
            a.allocate(&owner(i)).unwrap();
        }
        let err = a.allocate(&owner(5)).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { capacity: 5, .. }));
        assert!(err.to_string().contains("podCIDR 10.0.0.0/29"), "{err}");
    }

    #[test]
    fn second_allocation_for_same_attachment_is_refused() {
        let a = allocator("10.244.1.0/24");
        let held = a.allocate(&owner(0)).unwrap();
        match a.allocate(&owner(0)).unwrap_err() {
            IpamError::AlreadyReserved { ip, .. } => assert_eq!(ip, held),
            other => panic!("unexpected {other}"),
        }
        // Same container, another interface: a different attachment.
        assert_ne!(a.allocate(&Attachment::new("c0", "net1")).unwrap(), held);
    }

    #[test]
    fn release_and_lookup() {
        let a = allocator("10.244.1.0/24");
        let held = a.allocate(&owner(0)).unwrap();
        assert_eq!(a.lookup(&owner(0)).unwrap(), Some(held));
        assert_eq!(a.release(&owner(0)).unwrap(), vec![held]);
        assert_eq!(a.lookup(&owner(0)).unwrap(), None);
        // Idempotent.
        assert!(a.release(&owner(0)).unwrap().is_empty());
    }

    #[test]
    fn cursor_outside_range_restarts_at_first() {
        let a = allocator("10.244.1.0/24");
        a.store.set_last_reserved(ip("192.168.0.9")).unwrap();
        assert_eq!(a.allocate(&owner(0)).unwrap(), ip("10.244.1.2"));
    }

    #[test]
    fn lease_releases_unless_kept() {
        let a = allocator("10.244.1.0/24");
        let ip_dropped = {
            let lease = a.lease(&owner(0)).unwrap();
            lease.ip()
        };
        assert_eq!(a.lookup(&owner(0)).unwrap(), None, "{ip_dropped} should be released");
        let kept = a.lease(&owner(1)).unwrap().keep();
        assert_eq!(a.lookup(&owner(1)).unwrap(), Some(kept));
        let lease = a.lease(&owner(2)).unwrap();
        lease.release().unwrap();
        assert_eq!(a.lookup(&owner(2)).unwrap(), None);
    }

    #[test]
    fn gc_releases_everything_not_kept() {
        let a = allocator("10.244.1.0/24");
        for i in 0..4 {
            a.allocate(&owner(i)).unwrap();
        }
        let keep: HashSet<_> = [owner(1), owner(3)].into_iter().collect();
        let released = a.release_all_except(&keep).unwrap();
        let mut gone: Vec<_> = released.iter().map(|r| r.owner.clone().unwrap()).collect();
        gone.sort();
        assert_eq!(gone, vec![owner(0), owner(2)]);
        assert!(a.lookup(&owner(1)).unwrap().is_some());
        assert!(a.lookup(&owner(0)).unwrap().is_none());
    }
}
