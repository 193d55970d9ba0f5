//! weir-cni's hand-off for a new pod: its request is held until the pod's
//! policy entries are written (answered Ready), or its time runs out
//! (answered Pending: the pod starts isolated and opens once its policy is
//! in place).
use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use tracing::{info, warn};
use weir_common::EndpointInfo;

use crate::{
    model::{ClusterIndex, policy::compile::DesiredPolicy},
    node::policy_socket::{HOLD, Handoff, HandoffAnswer},
};

struct Waiter {
    ifindex: u32,
    pod: String,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<HandoffAnswer>,
}

/// The pods weir-cni announced: which interface is which pod, and the
/// requests still waiting for an answer.
#[derive(Default)]
pub struct Handoffs {
    /// ifindex -> (IP, pod key), as weir-cni announced them.
    bindings: BTreeMap<u32, (Ipv4Addr, String)>,
    waiters: Vec<Waiter>,
}

impl Handoffs {
    /// weir-cni announces a new pod; the answer goes out once the pod's
    /// policy is in place (or the hold time runs out).
    pub fn announce(&mut self, h: Handoff) {
        let r = h.request;
        info!(pod = %r.pod_key(), ifindex = r.ifindex, ip = %r.ip, "new pod announced by weir-cni");
        self.bindings.insert(r.ifindex, (r.ip, r.pod_key()));
        self.waiters.push(Waiter {
            ifindex: r.ifindex,
            pod: r.pod_key(),
            deadline: Instant::now() + HOLD,
            reply: h.reply,
        });
    }

    /// Bindings a previous agent knew (`names::read_endpoints`), taken as
    /// endpoints without an IPv4 address (IPv6-only pods, whose entry holds
    /// 0.0.0.0): the only ones not found by address. `retain_live` drops
    /// those whose entry has an address.
    pub fn restore(&mut self, endpoints: BTreeMap<u32, String>) {
        for (ifindex, pod) in endpoints {
            self.bindings.entry(ifindex).or_insert((Ipv4Addr::UNSPECIFIED, pod));
        }
    }

    pub fn waiting(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// The earliest hold deadline, so the main loop wakes up for it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }

    /// Announcements for interfaces that are gone, or now hold another
    /// pod, no longer count.
    pub fn retain_live(&mut self, endpoints: &BTreeMap<u32, EndpointInfo>) {
        self.bindings
            .retain(|ifindex, (ip, _)| endpoints.get(ifindex).is_some_and(|ep| ep.ipv4_octets() == ip.octets()));
    }

    /// The pod weir-cni announced on `ifindex`.
    pub fn pod_of(&self, ifindex: u32) -> Option<&str> {
        self.bindings.get(&ifindex).map(|(_, key)| key.as_str())
    }

    /// Answers every request whose pod is no longer pending in `desired`.
    pub fn answer(&mut self, desired: &DesiredPolicy, index: &ClusterIndex) {
        let mut keep = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            let pending =
                desired.endpoint_flags.get(&w.ifindex).is_none_or(|f| f & EndpointInfo::FLAG_POLICY_PENDING != 0);
            if !pending {
                let _ = w.reply.send(HandoffAnswer::Ready);
            } else if index.pods.get(&w.pod).is_none() {
                keep.push(w);
            } else {
                // Known pod but still pending: its endpoint entry is gone.
                let _ = w.reply.send(HandoffAnswer::Pending(format!("no endpoint entry for ifindex {}", w.ifindex)));
            }
        }
        self.waiters = keep;
    }

    /// Answers the requests held past their deadline: the pod starts
    /// isolated and is opened once its policy is in place.
    pub fn expire(&mut self) {
        let now = Instant::now();
        let (done, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|w| w.deadline <= now);
        self.waiters = keep;
        for w in done {
            warn!(pod = %w.pod, "pod starts isolated: its policy is not known yet");
            let _ = w.reply.send(HandoffAnswer::Pending(format!(
                "no policy for Pod {} within {HOLD:?} (the Pod, or the first lists of Pods, Namespaces and \
                 NetworkPolicies, not seen yet); it stays isolated until then",
                w.pod
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: [u8; 4]) -> EndpointInfo {
        EndpointInfo::new(ip, EndpointInfo::FLAG_VERIFY_SOURCE)
    }

    #[test]
    fn restored_bindings_name_ipv6_only_endpoints_only() {
        let mut h = Handoffs::default();
        h.restore([(7, "x/v6only".to_string()), (8, "x/dual".to_string()), (9, "x/gone".to_string())].into());
        // 7: an IPv6-only pod (0.0.0.0); 8: has an IPv4 address (found by
        // it, not by a stale name); 9: no longer an endpoint.
        let live: BTreeMap<u32, EndpointInfo> = [(7, entry([0; 4])), (8, entry([10, 244, 1, 5]))].into();
        h.retain_live(&live);
        assert_eq!(h.pod_of(7), Some("x/v6only"));
        assert_eq!(h.pod_of(8), None);
        assert_eq!(h.pod_of(9), None);
    }
}
