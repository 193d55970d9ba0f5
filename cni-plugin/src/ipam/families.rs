//! The allocators of every configured family, used together: an attachment
//! holds an address of each family or of none. ADD's leases are drop
//! guards per family, so a failure anywhere (the second family exhausted,
//! the kernel refusing a route) gives back every address taken so far.

use std::{collections::HashSet, net::IpAddr, path::Path};

use super::{
    Allocator, DiskStore, IpamError, PodRange, Reservation, Store,
    allocator::{self, Lease},
};
use crate::{attachment::Attachment, config::FamilyRanges};

/// The IPv6 store's directory, inside the network's (IPv4) one.
pub const IPV6_DIR: &str = "ipv6";

/// One allocator per family, IPv4 first.
pub struct FamilyIpam<S> {
    allocators: Vec<Allocator<S>>,
    /// The stores of families the configuration no longer has (a node
    /// whose podCIDRs lost IPv6) that still hold reservations: DEL and GC
    /// release from them too, so the pods that got those addresses leak
    /// nothing.
    retired: Vec<S>,
}

impl FamilyIpam<DiskStore> {
    /// The on-disk stores under `dir` (`<dataDir>/ipam/<network>`): IPv4 in
    /// `dir` itself, as before dual-stack, IPv6 in `dir/ipv6`.
    pub fn open(dir: &Path, ranges: &[FamilyRanges]) -> Result<Self, IpamError> {
        let allocators = ranges
            .iter()
            .map(|r| {
                let store_dir = if r.is_ipv6() { dir.join(IPV6_DIR) } else { dir.to_owned() };
                Ok(Allocator::new(PodRange::new(r.pod), DiskStore::open(&store_dir)?))
            })
            .collect::<Result<_, IpamError>>()?;
        Ok(Self { allocators, retired: Vec::new() })
    }

    /// `open`, with the stores of unconfigured families that hold
    /// reservations (for DEL and GC). Costs a `stat` on a
    /// node configured for both families, one directory listing on one
    /// configured for IPv6 only.
    pub fn open_all(dir: &Path, ranges: &[FamilyRanges]) -> Result<Self, IpamError> {
        let mut ipam = Self::open(dir, ranges)?;
        for ipv6 in [false, true] {
            if ranges.iter().any(|r| r.is_ipv6() == ipv6) {
                continue;
            }
            let store_dir = if ipv6 { dir.join(IPV6_DIR) } else { dir.to_owned() };
            if holds_records(&store_dir, ipv6) {
                ipam.retired.push(DiskStore::open(&store_dir)?);
            }
        }
        Ok(ipam)
    }
}

/// Whether `dir` holds a reservation record of the family.
fn holds_records(dir: &Path, ipv6: bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()).is_some_and(|ip| ip.is_ipv6() == ipv6))
}

impl<S: Store> FamilyIpam<S> {
    #[cfg(test)]
    pub fn new(allocators: Vec<Allocator<S>>) -> Self {
        Self { allocators, retired: Vec::new() }
    }

    /// An address of every family for `owner`, as guards that give them
    /// back unless kept (see `Lease`). All or nothing: if one family fails,
    /// the leases taken so far drop and release theirs.
    pub fn lease(&self, owner: &Attachment) -> Result<Leases<'_, S>, IpamError> {
        let leases = self.allocators.iter().map(|a| a.lease(owner)).collect::<Result<_, _>>()?;
        Ok(Leases { leases })
    }

    /// Makes every family's reservations and releases durable.
    pub fn persist(&self) -> Result<(), IpamError> {
        self.allocators.iter().try_for_each(Allocator::persist)
    }

    /// The addresses `owner` holds, family by family (IPv4 first; then
    /// those of retired families).
    pub fn lookup(&self, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let mut held = Vec::new();
        for store in self.stores() {
            held.extend(allocator::lookup_owner(store, owner)?);
        }
        Ok(held)
    }

    /// Releases what `owner` holds in every family (retired ones too);
    /// every family is tried even when one fails (the first error is
    /// returned).
    pub fn release(&self, owner: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        self.in_every_family(|store| allocator::release_owner(store, owner))
    }

    /// GC: releases, in every family (retired ones too), whatever is not
    /// held by `keep`.
    pub fn release_all_except(&self, keep: &HashSet<Attachment>) -> Result<Vec<Reservation>, IpamError> {
        self.in_every_family(|store| allocator::release_all_except(store, keep))
    }

    fn stores(&self) -> impl Iterator<Item = &S> {
        self.allocators.iter().map(Allocator::store).chain(&self.retired)
    }

    /// `op` on every family's store, all of them even when one fails (the
    /// first error is returned).
    fn in_every_family<T>(&self, op: impl Fn(&S) -> Result<Vec<T>, IpamError>) -> Result<Vec<T>, IpamError> {
        let mut out = Vec::new();
        let mut first_error = None;
        for a in self.stores() {
            match op(a) {
                Ok(items) => out.extend(items),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(out), Err)
    }
}

/// ADD's addresses, one per family, each released on drop unless kept.
pub struct Leases<'a, S: Store> {
    leases: Vec<Lease<'a, S>>,
}

impl<S: Store> Leases<'_, S> {
    /// The leased addresses, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.leases.iter().map(Lease::ip).collect()
    }

    /// ADD succeeded: every address stays reserved until DEL or GC.
    pub fn keep(self) -> Vec<IpAddr> {
        self.leases.into_iter().map(Lease::keep).collect()
    }

    /// Gives every address back now; returns what could not be released.
    pub fn release(self) -> Vec<IpamError> {
        self.leases.into_iter().filter_map(|l| l.release().err()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{PodRange, memory_store::MemoryStore};

    fn ipam(cidrs: &[&str]) -> FamilyIpam<MemoryStore> {
        FamilyIpam::new(
            cidrs.iter().map(|c| Allocator::new(PodRange::new(c.parse().unwrap()), MemoryStore::default())).collect(),
        )
    }

    fn owner(i: usize) -> Attachment {
        Attachment::new(format!("c{i}"), "eth0")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn one_address_per_family_ipv4_first() {
        let f = ipam(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let got = f.lease(&owner(0)).unwrap().keep();
        assert_eq!(got, ips(&["10.244.1.2", "fd00:10:244:1::2"]));
        assert_eq!(f.lease(&owner(1)).unwrap().keep(), ips(&["10.244.1.3", "fd00:10:244:1::3"]));
        assert_eq!(f.lookup(&owner(0)).unwrap(), got);
        assert_eq!(f.release(&owner(0)).unwrap(), got);
        assert!(f.lookup(&owner(0)).unwrap().is_empty());
        // Idempotent.
        assert!(f.release(&owner(0)).unwrap().is_empty());
    }

    #[test]
    fn ipv6_only() {
        let f = ipam(&["fd00:10:244:2::/64"]);
        assert_eq!(f.lease(&owner(0)).unwrap().keep(), ips(&["fd00:10:244:2::2"]));
        let released = f.release_all_except(&HashSet::new()).unwrap();
        assert_eq!(released.len(), 1);
        assert!(f.lookup(&owner(0)).unwrap().is_empty());
    }

    #[test]
    fn a_failing_family_releases_the_other() {
        // IPv6 /126: two pod addresses (::2, ::3), then exhausted.
        let f = ipam(&["10.244.1.0/24", "fd00::/126"]);
        f.lease(&owner(0)).unwrap().keep();
        f.lease(&owner(1)).unwrap().keep();
        let err = f.lease(&owner(2)).err().unwrap();
        assert!(matches!(err, IpamError::Exhausted { capacity: 2, .. }), "{err}");
        assert!(err.to_string().contains("podCIDR fd00::/126"), "{err}");
        // The IPv4 address leased before the IPv6 failure is back.
        assert!(f.lookup(&owner(2)).unwrap().is_empty());
        assert_eq!(f.allocators[0].store().reservations().unwrap().len(), 2);
    }

    #[test]
    fn dropped_leases_release_every_family() {
        let f = ipam(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        {
            let leases = f.lease(&owner(0)).unwrap();
            assert_eq!(leases.ips().len(), 2);
        }
        assert!(f.lookup(&owner(0)).unwrap().is_empty());
        let leases = f.lease(&owner(1)).unwrap();
        assert!(leases.release().is_empty());
        assert!(f.lookup(&owner(1)).unwrap().is_empty());
        // The cursor moved on in both families.
        assert_eq!(f.lease(&owner(2)).unwrap().keep(), ips(&["10.244.1.4", "fd00:10:244:1::4"]));
    }

    #[test]
    fn on_disk_ipv4_stays_where_it_was_and_ipv6_gets_its_own_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let ranges: Vec<FamilyRanges> =
            [("10.244.1.0/24", "10.244.0.0/16"), ("fd00:10:244:1::/64", "fd00:10:244::/56")]
                .iter()
                .map(|(p, c)| FamilyRanges { pod: p.parse().unwrap(), cluster: c.parse().unwrap() })
                .collect();
        let f = FamilyIpam::open(tmp.path(), &ranges).unwrap();
        let got = f.lease(&owner(0)).unwrap().keep();
        f.persist().unwrap();
        assert_eq!(got, ips(&["10.244.1.2", "fd00:10:244:1::2"]));
        assert_eq!(std::fs::read_to_string(tmp.path().join("10.244.1.2")).unwrap(), "c0\neth0");
        assert_eq!(std::fs::read_to_string(tmp.path().join("ipv6/fd00:10:244:1::2")).unwrap(), "c0\neth0");
        // A fresh process (another invocation) sees both, and the IPv4
        // store does not take the IPv6 directory for a record.
        let again = FamilyIpam::open(tmp.path(), &ranges).unwrap();
        assert_eq!(again.lookup(&owner(0)).unwrap(), got);
        assert_eq!(again.allocators[0].store().reservations().unwrap().len(), 1);
        // An IPv6-only configuration finds the same IPv6 store.
        let v6_only = FamilyIpam::open(tmp.path(), &ranges[1..]).unwrap();
        assert_eq!(v6_only.release(&owner(0)).unwrap(), ips(&["fd00:10:244:1::2"]));
        assert_eq!(again.release(&owner(0)).unwrap(), ips(&["10.244.1.2"]));
    }

    #[test]
    fn a_family_dropped_from_the_configuration_is_still_released() {
        let tmp = tempfile::tempdir().unwrap();
        let range = |p: &str, c: &str| FamilyRanges { pod: p.parse().unwrap(), cluster: c.parse().unwrap() };
        let both = [range("10.244.1.0/24", "10.244.0.0/16"), range("fd00:10:244:1::/64", "fd00:10:244::/56")];
        let f = FamilyIpam::open(tmp.path(), &both).unwrap();
        for i in 0..3 {
            f.lease(&owner(i)).unwrap().keep();
        }
        f.persist().unwrap();
        // The node's configuration loses IPv6: DEL and GC still find the
        // pods' IPv6 addresses; ADD's allocators are IPv4's alone.
        let v4 = FamilyIpam::open_all(tmp.path(), &both[..1]).unwrap();
        assert_eq!(v4.allocators.len(), 1);
        assert_eq!(v4.lookup(&owner(0)).unwrap(), ips(&["10.244.1.2", "fd00:10:244:1::2"]));
        assert_eq!(v4.release(&owner(0)).unwrap(), ips(&["10.244.1.2", "fd00:10:244:1::2"]));
        let keep: HashSet<_> = [owner(1)].into_iter().collect();
        assert_eq!(v4.release_all_except(&keep).unwrap().len(), 2);
        let left: Vec<_> = std::fs::read_dir(tmp.path().join(IPV6_DIR))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<IpAddr>().ok())
            .collect();
        assert_eq!(left, ips(&["fd00:10:244:1::3"]));
        // And the reverse: an IPv6-only configuration releases IPv4.
        let v6 = FamilyIpam::open_all(tmp.path(), &both[1..]).unwrap();
        assert_eq!(v6.release(&owner(1)).unwrap(), ips(&["fd00:10:244:1::3", "10.244.1.3"]));
        // Nothing left: no retired store is opened (no directory made).
        let again = FamilyIpam::open_all(tmp.path(), &both[..1]).unwrap();
        assert!(again.retired.is_empty());
    }

    #[test]
    fn gc_releases_every_family() {
        let f = ipam(&["10.244.1.0/24", "fd00:10:244:1::/64"]);
        for i in 0..3 {
            f.lease(&owner(i)).unwrap().keep();
        }
        let keep: HashSet<_> = [owner(1)].into_iter().collect();
        let released = f.release_all_except(&keep).unwrap();
        assert_eq!(released.len(), 4);
        assert_eq!(f.lookup(&owner(1)).unwrap().len(), 2);
    }
}
