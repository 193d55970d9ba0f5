//! An in-memory `Store` for allocator tests.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
};

use super::{IpamError, Reservation, Store};
use crate::attachment::Attachment;

#[derive(Default)]
pub struct MemoryStore {
    lock: Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    reserved: BTreeMap<IpAddr, Attachment>,
    last: Option<IpAddr>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn locked<T>(&self, f: impl FnOnce(&Self) -> Result<T, IpamError>) -> Result<T, IpamError> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        f(self)
    }

    fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        Ok(self
            .state()
            .reserved
            .iter()
            .map(|(ip, owner)| Reservation { ip: *ip, owner: Some(owner.clone()) })
            .collect())
    }

    fn reserve(&self, ip: IpAddr, owner: &Attachment) -> Result<bool, IpamError> {
        let mut state = self.state();
        if state.reserved.contains_key(&ip) {
            return Ok(false);
        }
        state.reserved.insert(ip, owner.clone());
        Ok(true)
    }

    fn release(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.state().reserved.remove(&ip);
        Ok(())
    }

    fn last_reserved(&self) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.state().last)
    }

    fn set_last_reserved(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.state().last = Some(ip);
        Ok(())
    }

    fn persist(&self) -> Result<(), IpamError> {
        Ok(())
    }
}
