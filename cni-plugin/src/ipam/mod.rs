//! Address management for the node's podCIDR: one /32 per attachment.
//!
//! The allocation policy (`allocator.rs`) is plain logic over the `Store`
//! trait; `disk_store.rs` persists reservations the way host-local does (one
//! file per address, flock-serialised), and tests use the in-memory store.

pub mod allocator;
pub mod disk_store;
#[cfg(test)]
pub mod memory_store;

use std::{collections::HashSet, io, net::Ipv4Addr, path::PathBuf};

use ipnetwork::Ipv4Network;

use crate::attachment::Attachment;

pub use allocator::{Allocator, PodRange};
pub use disk_store::DiskStore;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(
        "no free address left in podCIDR {pod_cidr}: its {capacity} pod address(es) are all reserved; delete unused pods, run GC, or give the node a larger podCIDR"
    )]
    Exhausted { pod_cidr: Ipv4Network, capacity: u32 },
    #[error(
        "{attachment} already holds {ip}; the runtime must DEL this container and interface before adding it again"
    )]
    AlreadyReserved { attachment: Attachment, ip: Ipv4Addr },
    #[error("IPAM store {}: {op}: {source}", path.display())]
    Store { path: PathBuf, op: &'static str, source: io::Error },
}

/// One reserved address and who holds it (`None` when the record cannot be
/// read: the address stays taken, GC may release it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
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
    fn taken(&self) -> Result<HashSet<Ipv4Addr>, IpamError> {
        Ok(self.reservations()?.into_iter().map(|r| r.ip).collect())
    }
    /// The address `owner` holds. A store that can find it without reading
    /// every record should: ADD asks under the lock.
    fn held_by(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self.reservations()?.into_iter().find(|r| r.owner.as_ref() == Some(owner)).map(|r| r.ip))
    }
    /// Records `ip` as held by `owner`; `Ok(false)` when `ip` is already held.
    fn reserve(&self, ip: Ipv4Addr, owner: &Attachment) -> Result<bool, IpamError>;
    /// Forgets `ip`; releasing a free address is not an error.
    fn release(&self, ip: Ipv4Addr) -> Result<(), IpamError>;
    /// The round-robin cursor: the last address handed out.
    fn last_reserved(&self) -> Result<Option<Ipv4Addr>, IpamError>;
    fn set_last_reserved(&self, ip: Ipv4Addr) -> Result<(), IpamError>;
    /// Makes the reservations and releases made so far durable (the cursor
    /// is advisory and need not be). Call outside `locked`.
    fn persist(&self) -> Result<(), IpamError>;
}
