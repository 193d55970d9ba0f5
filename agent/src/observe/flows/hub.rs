//! Where flows go once named: the counters of /metrics, the log, the
//! bounded history and the clients following live flows. The history is
//! appended and the followers are sent to under one lock, so a client that
//! takes the history and subscribes under it misses nothing and sees
//! nothing twice.
//!
//! A flow naming a policy slot the name table does not know yet (allowed
//! by a policy the reconcile loop wrote moments ago, before it swapped in
//! the names) waits for the next table, or at most `HOLD`.
use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::broadcast;
use weir_common::{
    DropReason,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS, FlowEvent},
};

use super::{
    buffer::FlowBuffer,
    filter::Request,
    flow::{Clock, Flow, direction_name, reason_name},
    names::NameTable,
    sink::FlowLog,
};

/// Flows a follower may fall behind by before it misses some.
const LIVE_QUEUE: usize = 4096;
/// The longest a flow waits for names, and the most flows waiting.
pub const HOLD: Duration = Duration::from_secs(1);
const MAX_HELD: usize = 1024;

const VERDICTS: usize = 4; // unknown, allowed, dropped, translated
const DIRECTIONS: usize = 3; // unknown, ingress, egress
const REASONS: usize = DropReason::COUNT as usize + 1; // the last: unknown

pub struct Hub {
    /// CLOCK_MONOTONIC to wall time.
    clock: Clock,
    names: RwLock<Arc<NameTable>>,
    /// Events waiting for names, with when they came.
    held: Mutex<Vec<(FlowEvent, Instant)>>,
    history: Mutex<FlowBuffer>,
    live: broadcast::Sender<Arc<Flow>>,
    log: Option<FlowLog>,
    flows: [[AtomicU64; DIRECTIONS]; VERDICTS],
    drops: [[AtomicU64; DIRECTIONS]; REASONS],
    /// The datapath's held back events (`WEIR_FLOW_LOST`), as last read.
    lost: AtomicU64,
    /// Whether the ring buffer is being read.
    reading: AtomicBool,
}

impl Hub {
    pub fn new(buffer: usize, log: Option<FlowLog>) -> Self {
        Self::with_clock(buffer, log, Clock::now())
    }

    pub fn with_clock(buffer: usize, log: Option<FlowLog>, clock: Clock) -> Self {
        Self {
            clock,
            names: RwLock::new(Arc::new(NameTable::default())),
            held: Mutex::new(Vec::new()),
            history: Mutex::new(FlowBuffer::new(buffer)),
            live: broadcast::channel(LIVE_QUEUE).0,
            log,
            flows: Default::default(),
            drops: Default::default(),
            lost: AtomicU64::new(0),
            reading: AtomicBool::new(false),
        }
    }

    /// Swaps in the names of the last reconcile; the flows waiting for
    /// names go on with these.
    pub fn set_names(&self, names: NameTable) {
        let names = Arc::new(names);
        *self.names.write().expect("lock") = names.clone();
        let held = std::mem::take(&mut *self.held.lock().expect("lock"));
        if !held.is_empty() {
            let events: Vec<FlowEvent> = held.into_iter().map(|(ev, _)| ev).collect();
            self.publish(&names, &events);
        }
    }

    /// Lets flows that waited `HOLD` for names go on with the names there
    /// are (the reader calls this on a timer).
    pub fn release_held(&self, now: Instant) {
        let due: Vec<FlowEvent> = {
            let mut held = self.held.lock().expect("lock");
            let (due, keep): (Vec<_>, Vec<_>) = held.drain(..).partition(|(_, at)| now.duration_since(*at) >= HOLD);
            *held = keep;
            due.into_iter().map(|(ev, _)| ev).collect()
        };
        if !due.is_empty() {
            self.publish(&self.names(), &due);
        }
    }

    pub fn names(&self) -> Arc<NameTable> {
        self.names.read().expect("lock").clone()
    }

    pub fn set_lost(&self, lost: u64) {
        self.lost.store(lost, Ordering::Relaxed);
    }

    pub fn set_reading(&self, reading: bool) {
        self.reading.store(reading, Ordering::Relaxed);
    }

    /// Counts a batch of events, and names, logs and keeps those whose
    /// names are known (the others wait, see `set_names`).
    pub fn ingest(&self, events: &[FlowEvent]) {
        if events.is_empty() {
            return;
        }
        let names = self.names();
        let mut ready = Vec::with_capacity(events.len());
        {
            let mut held = self.held.lock().expect("lock");
            let now = Instant::now();
            for ev in events {
                self.count(ev);
                if names.knows(ev) || held.len() >= MAX_HELD {
                    ready.push(*ev);
                } else {
                    held.push((*ev, now));
                }
            }
        }
        self.publish(&names, &ready);
    }

    /// Names, logs and keeps events.
    fn publish(&self, names: &NameTable, events: &[FlowEvent]) {
        if events.is_empty() {
            return;
        }
        let flows: Vec<Arc<Flow>> = events.iter().map(|ev| Arc::new(names.enrich(ev, &self.clock))).collect();
        if let Some(log) = &self.log {
            for f in &flows {
                log.send(f);
            }
        }
        self.keep(flows);
    }

    /// Appends to the history and sends to the followers.
    pub fn keep(&self, flows: Vec<Arc<Flow>>) {
        let mut history = self.history.lock().expect("lock");
        for f in flows {
            history.push(f.clone());
            // No follower: nothing to do.
            let _ = self.live.send(f);
        }
    }

    /// The history a request asks for, and the live flows after it if it
    /// follows.
    pub fn subscribe(&self, req: &Request) -> (Vec<Arc<Flow>>, Option<broadcast::Receiver<Arc<Flow>>>) {
        let since = req.since_ms.map(|ms| super::flow::unix_now_ns().saturating_sub(ms.saturating_mul(1_000_000)));
        let history = self.history.lock().expect("lock");
        let past = history.query(&req.filter, since, req.last);
        (past, req.follow.then(|| self.live.subscribe()))
    }

    fn count(&self, ev: &FlowEvent) {
        let dir = usize::from(ev.direction).min(DIRECTIONS - 1);
        let verdict = usize::from(ev.verdict).min(VERDICTS - 1);
        let verdict = if weir_common::flow::FlowVerdict::from_u8(ev.verdict).is_some() { verdict } else { 0 };
        self.flows[verdict][dir].fetch_add(1, Ordering::Relaxed);
        if ev.verdict == weir_common::flow::FlowVerdict::Dropped as u8 {
            let reason = usize::from(ev.reason);
            let reason = if reason == 0 || reason >= REASONS - 1 { REASONS - 1 } else { reason };
            self.drops[reason][dir].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The flow samples of /metrics (labels from fixed lists only).
    pub fn render(&self, out: &mut String) {
        let dirs = [0u8, FLOW_DIR_INGRESS, FLOW_DIR_EGRESS];
        let _ = writeln!(
            out,
            "# HELP weir_flows_total Flow events the agent received, per verdict and direction.\n# TYPE weir_flows_total counter"
        );
        for v in 1..VERDICTS {
            for d in dirs {
                let n = self.flows[v][usize::from(d)].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "weir_flows_total{{verdict=\"{}\",direction=\"{}\"}} {n}",
                    super::flow::verdict_name(v as u8),
                    direction_name(d)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP weir_flow_drops_total Dropped flow events, per drop reason and direction.\n# TYPE weir_flow_drops_total counter"
        );
        for r in 1..REASONS {
            let name = if r == REASONS - 1 { "unknown" } else { reason_name(r as u8) };
            for d in dirs {
                let n = self.drops[r][usize::from(d)].load(Ordering::Relaxed);
                if n > 0 || r < REASONS - 1 {
                    let _ = writeln!(
                        out,
                        "weir_flow_drops_total{{reason=\"{name}\",direction=\"{}\"}} {n}",
                        direction_name(d)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP weir_flow_events_lost_total Flow events the datapath held back (rate limit, full ring buffer), summed over CPUs.\n# TYPE weir_flow_events_lost_total counter\nweir_flow_events_lost_total {}",
            self.lost.load(Ordering::Relaxed)
        );
        let (fill, bound) = {
            let h = self.history.lock().expect("lock");
            (h.len(), h.bound())
        };
        let _ = writeln!(
            out,
            "# HELP weir_flow_buffer_flows Flows held in the agent's history for weir-agent observe.\n# TYPE weir_flow_buffer_flows gauge\nweir_flow_buffer_flows {fill}"
        );
        let _ = writeln!(
            out,
            "# HELP weir_flow_buffer_capacity Most flows the history holds.\n# TYPE weir_flow_buffer_capacity gauge\nweir_flow_buffer_capacity {bound}"
        );
        let _ = writeln!(
            out,
            "# HELP weir_flow_events_reading 1 when the agent reads the datapath's flow events.\n# TYPE weir_flow_events_reading gauge\nweir_flow_events_reading {}",
            u8::from(self.reading.load(Ordering::Relaxed))
        );
        if let Some(log) = &self.log {
            let _ = writeln!(
                out,
                "# HELP weir_flow_log_dropped_total Flows not written to the flow log (queue full or write failed).\n# TYPE weir_flow_log_dropped_total counter\nweir_flow_log_dropped_total {}",
                log.dropped.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_common::flow::FlowVerdict;

    use super::*;

    #[test]
    fn counts_by_verdict_direction_and_reason() {
        let hub = Hub::with_clock(2, None, Clock::from_pair(0, 0));
        let ev = |verdict: FlowVerdict, reason: DropReason, direction: u8| FlowEvent {
            verdict: verdict as u8,
            reason: if verdict == FlowVerdict::Dropped { reason as u8 } else { 0 },
            direction,
            ..Default::default()
        };
        hub.ingest(&[
            ev(FlowVerdict::Allowed, DropReason::Passed, FLOW_DIR_EGRESS),
            ev(FlowVerdict::Dropped, DropReason::PolicyIngress, FLOW_DIR_INGRESS),
            ev(FlowVerdict::Dropped, DropReason::PolicyIngress, FLOW_DIR_INGRESS),
            FlowEvent { verdict: 2, reason: 99, ..Default::default() },
        ]);
        hub.set_lost(12);
        let mut out = String::new();
        hub.render(&mut out);
        for want in [
            "weir_flows_total{verdict=\"allowed\",direction=\"egress\"} 1\n",
            "weir_flows_total{verdict=\"dropped\",direction=\"ingress\"} 2\n",
            "weir_flows_total{verdict=\"dropped\",direction=\"unknown\"} 1\n",
            "weir_flows_total{verdict=\"translated\",direction=\"ingress\"} 0\n",
            "weir_flow_drops_total{reason=\"policy-denied-ingress\",direction=\"ingress\"} 2\n",
            "weir_flow_drops_total{reason=\"unknown\",direction=\"unknown\"} 1\n",
            "weir_flow_events_lost_total 12\n",
            "weir_flow_buffer_flows 2\n",
            "weir_flow_buffer_capacity 2\n",
        ] {
            assert!(out.contains(want), "{want} in\n{out}");
        }
        assert!(!out.contains("reason=\"passed\""));
        assert!(!out.contains("reason=\"unknown\",direction=\"ingress\""), "unknown only when seen");
    }

    #[test]
    fn flows_with_a_slot_not_named_yet_wait_for_the_names() {
        use std::collections::BTreeMap;

        use crate::model::ClusterIndex;
        let hub = Hub::with_clock(10, None, Clock::from_pair(0, 0));
        let allowed = |slot| FlowEvent {
            verdict: FlowVerdict::Allowed as u8,
            direction: FLOW_DIR_INGRESS,
            policy_slot: slot,
            ..Default::default()
        };
        hub.ingest(&[allowed(0), allowed(4)]);
        let all = || hub.subscribe(&Request::default()).0;
        assert_eq!(all().len(), 1, "slot 4 waits");
        let mut out = String::new();
        hub.render(&mut out);
        assert!(out.contains("weir_flows_total{verdict=\"allowed\",direction=\"ingress\"} 2"), "counted at once");
        let names =
            |slots: BTreeMap<u32, String>| NameTable::build(&ClusterIndex::default(), "n1", slots, BTreeMap::new());
        hub.set_names(names(BTreeMap::from([(4, "y/web".to_string())])));
        let flows = all();
        assert_eq!(flows.len(), 2);
        assert_eq!(*flows[1].policies, ["y/web"]);

        // A slot no table names goes on after HOLD, numbered.
        hub.ingest(&[allowed(9)]);
        hub.release_held(Instant::now());
        assert_eq!(all().len(), 2);
        hub.release_held(Instant::now() + HOLD);
        assert_eq!(*all().last().unwrap().policies, ["policy slot 9"]);
    }

    #[tokio::test]
    async fn followers_get_the_history_then_live_flows() {
        let hub = Hub::new(10, None);
        let flow = |v: &str| Arc::new(crate::observe::flows::filter::tests::flow("x/a", "y/b", v));
        hub.keep(vec![flow("allowed"), flow("dropped")]);
        let req = Request::parse(r#"{"follow":true,"filter":{"verdict":"dropped"}}"#).unwrap();
        let (past, live) = hub.subscribe(&req);
        assert_eq!(past.len(), 1);
        let mut live = live.unwrap();
        hub.keep(vec![flow("translated")]);
        assert_eq!(live.recv().await.unwrap().verdict, "translated", "filtered by the server, not the channel");
        let (past, live) = hub.subscribe(&Request::default());
        assert_eq!(past.len(), 3);
        assert!(live.is_none());
    }
}
