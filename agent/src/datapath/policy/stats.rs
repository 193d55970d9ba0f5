//! NetworkPolicy verdict counters, read from the pinned maps (so `inspect`
//! and the metrics work whether or not this process loaded them).
use std::{collections::BTreeMap, path::Path};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use weir_common::{
    EndpointKey, pin,
    policy::{EndpointPolicyStats, MAX_POLICY_SLOTS},
};

use crate::datapath::{loader::DatapathError, pinned};

/// Allowed new flows of the given policy slots (one lookup each; slots
/// with none are left out).
pub fn policy_hits(pin_dir: &Path, slots: impl IntoIterator<Item = u32>) -> Result<BTreeMap<u32, u64>, DatapathError> {
    let name = pin::MAP_POLICY_HITS;
    let hits: PerCpuArray<MapData, u64> = pinned::open(pin_dir, name)?;
    let mut out = BTreeMap::new();
    for slot in slots.into_iter().filter(|s| *s < MAX_POLICY_SLOTS) {
        let per_cpu = hits.get(&slot, 0).map_err(|source| DatapathError::Map { name, source })?;
        let total: u64 = per_cpu.iter().sum();
        if total != 0 {
            out.insert(slot, total);
        }
    }
    Ok(out)
}

/// Verdicts on new flows per endpoint (host veth ifindex).
pub fn endpoint_stats(pin_dir: &Path) -> Result<BTreeMap<u32, EndpointPolicyStats>, DatapathError> {
    let name = pin::MAP_EP_POLICY_STATS;
    let map: PerCpuHashMap<MapData, EndpointKey, EndpointPolicyStats> = pinned::open(pin_dir, name)?;
    let mut out = BTreeMap::new();
    for kv in map.iter() {
        let (key, per_cpu) = kv.map_err(|source| DatapathError::Map { name, source })?;
        let mut sum = EndpointPolicyStats::default();
        for s in per_cpu.iter() {
            sum.ingress_allowed += s.ingress_allowed;
            sum.ingress_denied += s.ingress_denied;
            sum.egress_allowed += s.egress_allowed;
            sum.egress_denied += s.egress_denied;
        }
        out.insert(key.ifindex, sum);
    }
    Ok(out)
}
