//! Typed access to the maps of the loaded object, for the Service maps
//! (`lb::aya_maps`) and the policy maps (`policy::aya_maps`): open a map as
//! its aya type, write, delete (what is already gone is not an error), dump.
use aya::maps::{HashMap, Map};

use crate::datapath::{Datapath, MapError};

impl MapError {
    /// Turns aya's error of `op` on `map` into ours.
    pub(super) fn aya(op: &'static str, map: &'static str) -> impl Fn(aya::maps::MapError) -> MapError {
        move |e| MapError { op, map, reason: e.to_string() }
    }
}

/// Deleting what is already gone is not an error: deletes are retried after
/// partial failures.
pub(super) fn tolerate_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

fn not_loaded(map: &'static str) -> MapError {
    MapError { op: "open", map, reason: "not in the eBPF object".into() }
}

impl Datapath {
    /// The map `name` as the aya type `M` (for example
    /// `HashMap<&MapData, K, V>`), to read.
    pub(super) fn map_as<'a, M>(&'a self, name: &'static str) -> Result<M, MapError>
    where
        M: TryFrom<&'a Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf().map(name).ok_or_else(|| not_loaded(name))?;
        M::try_from(map).map_err(MapError::aya("open", name))
    }

    /// The map `name` as the aya type `M` (for example
    /// `HashMap<&mut MapData, K, V>`), to write.
    pub(super) fn map_as_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, MapError>
    where
        M: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf_mut().map_mut(name).ok_or_else(|| not_loaded(name))?;
        M::try_from(map).map_err(MapError::aya("open", name))
    }

    /// Inserts or replaces `key` in the hash map `name`.
    pub(super) fn hash_insert<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        key: K,
        value: V,
    ) -> Result<(), MapError> {
        let mut map: HashMap<_, K, V> = self.map_as_mut(name)?;
        map.insert(key, value, 0).map_err(MapError::aya("insert", name))
    }

    /// Deletes `key` from the hash map `name`; a key already gone is fine.
    pub(super) fn hash_delete<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str, key: K) -> Result<(), MapError> {
        let mut map: HashMap<_, K, V> = self.map_as_mut(name)?;
        tolerate_missing(map.remove(&key)).map_err(MapError::aya("delete", name))
    }

    /// Every entry of the hash map `name`, collected into `C` (a
    /// `BTreeMap`, a `Vec` of pairs).
    pub(super) fn hash_dump<K: aya::Pod, V: aya::Pod, C: FromIterator<(K, V)>>(
        &self,
        name: &'static str,
    ) -> Result<C, MapError> {
        let map: HashMap<_, K, V> = self.map_as(name)?;
        map.iter().map(|kv| kv.map_err(MapError::aya("dump", name))).collect()
    }
}
