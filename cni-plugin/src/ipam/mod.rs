//! Address management for the node's pod ranges: one address (/32, /128)
//! per attachment and family.
//!
//! The allocation policy (`allocator.rs`) is plain logic over the `Store`
//! trait, one allocator per family; `families.rs` holds them together so
//! that an attachment gets an address of every family or none;
//! `disk_store.rs` persists reservations the way host-local does (one file
//! per address, flock-serialised, a directory per family), and tests use
//! the in-memory store.

pub mod allocator;
pub mod disk_store;
pub mod families;
#[cfg(test)]
pub mod memory_store;

use std::{collections::HashSet, io, net::IpAddr, path::PathBuf};

use ipnetwork::IpNetwork;

use crate::attachment::Attachment;

pub use allocator::{Allocator, PodRange};
pub use disk_store::DiskStore;
pub use families::FamilyIpam;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(
        "no free address left in podCIDR {pod_cidr}: its {capacity} pod address(es) are all reserved; delete unused pods, run GC, or give the node a larger podCIDR"
    )]
    Exhausted { pod_cidr: IpNetwork, capacity: u128 },
    #[error(
        "{attachment} already holds {ip}; the runtime must DEL this container and interface before adding it again"
    )]
    AlreadyReserved { attachment: Attachment, ip: IpAddr },
    #[error("IPAM store {}: {op}: {source}", path.display())]
    Store { path: PathBuf, op: &'static str, source: io::Error },
}

/// One reserved address and who holds it (`None` when the record cannot be
/// read: the address stays taken, GC may release it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub owner: Option<Attachment>,
}

/// Persistence for reservations. Every method except `locked` and `persist`
/// must be called from inside `locked`, which gives exclusive access across
/// processes.
///
/// Changes made under the lock are visible to every other process at once
/// (the lock orders them); `persist` makes them durable and is called after
/// the lock is released, so slow disk flushes do not serialise concurrent
/// plugin invocations.
pub trait Store {
    fn locked<T>(&self, f: impl FnOnce(&Self) -> Result<T, IpamError>) -> Result<T, IpamError>;
    fn reservations(&self) -> Result<Vec<Reservation>, IpamError>;
    /// The addresses held by anyone. A store that can list them without
    /// reading every record should: ADD asks under the lock.
    fn taken(&self) -> Result<HashSet<IpAddr>, IpamError> {
        Ok(self.reservations()?.into_iter().map(|r| r.ip).collect())
    }
    /// The address `owner` holds. A store that can find it without reading
    /// every record should: ADD asks under the lock.
    fn held_by(&self, owner: &Attachment) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.reservations()?.into_iter().find(|r| r.owner.as_ref() == Some(owner)).map(|r| r.ip))
    }
    /// Records `ip` as held by `owner`; `Ok(false)` when `ip` is already held.
    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError>;
    /// Forgets `ip`; releasing a free address is not an error.
    fn release(&self, ip: IpAddr) -> Result<(), IpamError>;
    /// The round-robin cursor: the last address handed out.
    fn last_reserved(&self) -> Result<Option<IpAddr>, IpamError>;
    fn set_last_reserved(&self, ip: IpAddr) -> Result<(), IpamError>;
    /// Makes the reservations and releases made so far durable (the cursor
    /// is advisory and need not be). Call outside `locked`.
    fn persist(&self) -> Result<(), IpamError>;
}
