//! `LbMaps` over the real pinned maps.
use aya::maps::{HashMap, MapData};
use weir_common::{
    lb::{Backend, RevNat, ServiceKey, ServiceValue},
    pin,
};

use super::{
    Datapath,
    lb_maps::{LbDump, LbMapError, LbMaps},
};

fn err(op: &'static str, map: &'static str) -> impl Fn(aya::maps::MapError) -> LbMapError {
    move |e| LbMapError { op, map, reason: e.to_string() }
}

impl Datapath {
    fn hash_map<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, K, V>, LbMapError> {
        let map = self
            .ebpf_mut()
            .map_mut(name)
            .ok_or_else(|| LbMapError { op: "open", map: name, reason: "not in the eBPF object".into() })?;
        HashMap::try_from(map).map_err(err("open", name))
    }

    fn hash_map_ref<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<HashMap<&MapData, K, V>, LbMapError> {
        let map = self
            .ebpf()
            .map(name)
            .ok_or_else(|| LbMapError { op: "open", map: name, reason: "not in the eBPF object".into() })?;
        HashMap::try_from(map).map_err(err("open", name))
    }
}

/// Deleting what is already gone is not an error: deletes are retried after
/// partial failures.
fn tolerate_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

impl LbMaps for Datapath {
    fn set_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), LbMapError> {
        self.hash_map(pin::MAP_SVC)?.insert(key, value, 0).map_err(err("insert", pin::MAP_SVC))
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), LbMapError> {
        let mut m: HashMap<_, ServiceKey, ServiceValue> = self.hash_map(pin::MAP_SVC)?;
        tolerate_missing(m.remove(&key)).map_err(err("delete", pin::MAP_SVC))
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), LbMapError> {
        self.hash_map(pin::MAP_BACKENDS)?.insert(id, backend, 0).map_err(err("insert", pin::MAP_BACKENDS))
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), LbMapError> {
        let mut m: HashMap<_, u32, Backend> = self.hash_map(pin::MAP_BACKENDS)?;
        tolerate_missing(m.remove(&id)).map_err(err("delete", pin::MAP_BACKENDS))
    }
    fn set_rev_nat(&mut self, id: u16, rev_nat: RevNat) -> Result<(), LbMapError> {
        self.hash_map(pin::MAP_REVNAT)?.insert(id, rev_nat, 0).map_err(err("insert", pin::MAP_REVNAT))
    }
    fn delete_rev_nat(&mut self, id: u16) -> Result<(), LbMapError> {
        let mut m: HashMap<_, u16, RevNat> = self.hash_map(pin::MAP_REVNAT)?;
        tolerate_missing(m.remove(&id)).map_err(err("delete", pin::MAP_REVNAT))
    }
    fn dump(&self) -> Result<LbDump, LbMapError> {
        let mut d = LbDump::default();
        let svc: HashMap<_, ServiceKey, ServiceValue> = self.hash_map_ref(pin::MAP_SVC)?;
        for kv in svc.iter() {
            let (k, v) = kv.map_err(err("dump", pin::MAP_SVC))?;
            d.services.insert(k, v);
        }
        let backends: HashMap<_, u32, Backend> = self.hash_map_ref(pin::MAP_BACKENDS)?;
        for kv in backends.iter() {
            let (k, v) = kv.map_err(err("dump", pin::MAP_BACKENDS))?;
            d.backends.insert(k, v);
        }
        let rev: HashMap<_, u16, RevNat> = self.hash_map_ref(pin::MAP_REVNAT)?;
        for kv in rev.iter() {
            let (k, v) = kv.map_err(err("dump", pin::MAP_REVNAT))?;
            d.rev_nats.insert(k, v);
        }
        Ok(d)
    }
}
