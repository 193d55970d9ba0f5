//! The datapath's side of flow events, from the pinned maps: the per-CPU
//! rate limit written at start, the ring buffer drained on every wake-up
//! (tokio's `AsyncFd` on its descriptor), the held back events read on a
//! timer. A datapath without these maps (an older object) leaves flow
//! events off, said once, and the agent runs on.
use std::{path::Path, sync::Arc, time::Duration};

use aya::maps::{MapData, PerCpuArray, PerCpuValues, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};
use weir_common::{
    flow::{FlowEvent, FlowRate},
    pin,
};

use super::{flow::parse_event, hub::Hub};
use crate::datapath::pinned;

/// How often the held back events are read, and flows waiting for names
/// let go (see `hub`).
const TICK: Duration = Duration::from_secs(1);
/// How often the ring is drained without a wake-up from the datapath.
const DRAIN: Duration = Duration::from_millis(100);

/// `FlowRate` as aya reads and writes it (the common crate's type does not
/// implement aya's `Pod`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateValue(pub FlowRate);

// Safety: FlowRate is repr(C) with four u64s: no padding, every bit
// pattern valid.
unsafe impl aya::Pod for RateValue {}

/// The bucket for `per_sec` events per second and `burst` at most at once
/// (full at start); `per_sec` 0: events off.
pub fn rate(per_sec: u64, burst: u64) -> FlowRate {
    if per_sec == 0 {
        return FlowRate::default();
    }
    let ns_per_token = (1_000_000_000 / per_sec).max(1);
    let burst = burst.max(1);
    FlowRate { ns_per_token, burst, credit_ns: burst.saturating_mul(ns_per_token), last_ns: 0 }
}

/// Writes the rate into every CPU's entry of `WEIR_FLOW_RATE`.
pub fn set_rate(pin_dir: &Path, per_sec: u64, burst: u64) -> anyhow::Result<()> {
    let mut map: PerCpuArray<MapData, RateValue> = pinned::open(pin_dir, pin::MAP_FLOW_RATE)?;
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let values = PerCpuValues::try_from(vec![RateValue(rate(per_sec, burst)); cpus])?;
    map.set(0, values, 0)?;
    Ok(())
}

/// `WEIR_FLOW_LOST` summed over CPUs.
fn lost(map: &PerCpuArray<MapData, u64>) -> Option<u64> {
    map.get(&0, 0).ok().map(|v| v.iter().sum())
}

/// Reads the ring buffer into `hub` until the runtime stops.
pub async fn run(pin_dir: std::path::PathBuf, hub: Arc<Hub>) {
    let lost_map: Option<PerCpuArray<MapData, u64>> = match pinned::open(&pin_dir, pin::MAP_FLOW_LOST) {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(error = %e, "no weir_flow_events_lost_total");
            None
        }
    };
    let ring: RingBuf<MapData> = match pinned::open(&pin_dir, pin::MAP_FLOWS) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "flow events off: the datapath has no flow ring buffer");
            return;
        }
    };
    // Safety: the ring buffer owns the map's descriptor, open and the same
    // for as long as it lives, which is as long as the AsyncFd.
    let mut ring =
        match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from) {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "flow events off: cannot poll the flow ring buffer");
                return;
            }
        };
    hub.set_reading(true);
    info!("reading flow events");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The datapath wakes the reader only when the ring fills past a quarter
    // (a wake-up per event would cost every new flow a context switch);
    // otherwise it is drained on this shorter timer.
    let mut drain = tokio::time::interval(DRAIN);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<FlowEvent> = Vec::with_capacity(256);
    let read_all = |ring: &mut RingBuf<MapData>, batch: &mut Vec<FlowEvent>| {
        while let Some(item) = ring.next() {
            if let Some(ev) = parse_event(&item) {
                batch.push(ev);
            }
        }
        hub.ingest(batch);
        batch.clear();
    };
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        warn!(error = %e, "flow events off: polling the ring buffer failed");
                        hub.set_reading(false);
                        return;
                    }
                };
                read_all(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
            }
            _ = drain.tick() => read_all(ring.get_mut(), &mut batch),
            _ = tick.tick() => {
                if let Some(n) = lost_map.as_ref().and_then(lost) {
                    hub.set_lost(n);
                }
                hub.release_held(std::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_nanoseconds_per_token() {
        assert_eq!(rate(0, 100), FlowRate::default(), "off");
        let r = rate(5_000, 1_000);
        assert_eq!((r.ns_per_token, r.burst, r.credit_ns), (200_000, 1_000, 200_000_000));
        assert_eq!(rate(2_000_000_000, 0).ns_per_token, 1, "at least one nanosecond, one token");
        assert_eq!(rate(2_000_000_000, 0).burst, 1);
    }
}
