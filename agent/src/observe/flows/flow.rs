//! A flow as the agent shows it: the datapath's record with names, a wall
//! clock time, and words for the numbers.
use std::{net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use weir_common::{
    DropReason,
    flow::{FLOW_DIR_EGRESS, FLOW_DIR_INGRESS, FlowEvent, FlowVerdict},
};

/// One end of a flow: the address and what it belongs to, when known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub ip: IpAddr,
    /// 0 for protocols without ports.
    #[serde(default)]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The address is this node's or another node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Peer {
    pub fn new(ip: impl Into<IpAddr>, port: u16) -> Self {
        Self { ip: ip.into(), port, namespace: None, pod: None, node: None }
    }

    /// Names the peer after a pod (`namespace/name`).
    pub fn with_pod(mut self, key: Option<&str>) -> Self {
        if let Some((ns, name)) = key.and_then(|k| k.split_once('/')) {
            self.namespace = Some(ns.to_string());
            self.pod = Some(name.to_string());
        }
        self
    }

    /// `namespace/pod`, `node/<name>`, or None.
    pub fn name(&self) -> Option<String> {
        match (&self.namespace, &self.pod, &self.node) {
            (Some(ns), Some(pod), _) => Some(format!("{ns}/{pod}")),
            (_, _, Some(node)) => Some(format!("node/{node}")),
            _ => None,
        }
    }

    /// `ip:port` (`[ip]:port` for IPv6), or the address alone without a
    /// port.
    pub fn address(&self) -> String {
        match (self.port, self.ip) {
            (0, ip) => ip.to_string(),
            (port, IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            (port, ip) => format!("{ip}:{port}"),
        }
    }

    /// `name address`, or the address alone.
    fn show(&self) -> String {
        match self.name() {
            Some(n) => format!("{n} {}", self.address()),
            None => self.address(),
        }
    }
}

/// One flow event, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    pub time_unix_ns: u64,
    /// The node whose datapath saw the flow.
    pub node: String,
    /// `allowed`, `dropped`, `translated`.
    pub verdict: String,
    /// Why it was dropped (`DropReason::name`, e.g. `policy-denied-ingress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `ingress` (into the endpoint), `egress` (out of it), `unknown`.
    pub direction: String,
    /// `TCP`, `UDP`, `ICMP`, `SCTP`, or the protocol number.
    pub protocol: String,
    pub source: Peer,
    /// For `translated`: the Service frontend.
    pub destination: Peer,
    /// For `translated`: the Service (`namespace/name`) of the frontend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For `translated`: the backend chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Peer>,
    /// `allowed`: the policy that allowed the flow; `dropped` by policy:
    /// the policies isolating the pod in that direction. Shared with the
    /// name table: a flood of drops at a pod selected by hundreds of
    /// policies must not copy their names into every flow it keeps.
    #[serde(default = "no_policies", skip_serializing_if = "no_policy")]
    pub policies: Arc<[String]>,
    /// The interface the datapath saw the packet on.
    pub ifindex: u32,
}

fn no_policies() -> Arc<[String]> {
    Arc::from([])
}

fn no_policy(policies: &Arc<[String]>) -> bool {
    policies.is_empty()
}

pub fn verdict_name(v: u8) -> &'static str {
    match FlowVerdict::from_u8(v) {
        Some(FlowVerdict::Allowed) => "allowed",
        Some(FlowVerdict::Dropped) => "dropped",
        Some(FlowVerdict::Translated) => "translated",
        None => "unknown",
    }
}

pub fn direction_name(d: u8) -> &'static str {
    match d {
        FLOW_DIR_INGRESS => "ingress",
        FLOW_DIR_EGRESS => "egress",
        _ => "unknown",
    }
}

/// The drop reason's stable name, or `unknown`.
pub fn reason_name(r: u8) -> &'static str {
    DropReason::ALL.get(usize::from(r)).filter(|r| **r != DropReason::Passed).map_or("unknown", |r| r.name())
}

pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// The ring buffer record in `bytes`, if it is one (a record of an older
/// datapath, left in the ring across an upgrade, is not: it is shorter).
pub fn parse_event(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // Safety: FlowEvent is plain old data (repr(C), integers and byte
    // arrays, every bit pattern valid) and `bytes` holds enough of them.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// CLOCK_MONOTONIC (the datapath's `bpf_ktime_get_ns`) to wall time, from
/// both clocks read once.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    mono_ns: u64,
    wall_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self { mono_ns: clock_ns(libc::CLOCK_MONOTONIC), wall_ns: clock_ns(libc::CLOCK_REALTIME) }
    }

    pub const fn from_pair(mono_ns: u64, wall_ns: u64) -> Self {
        Self { mono_ns, wall_ns }
    }

    /// Unix nanoseconds of a monotonic timestamp.
    pub fn wall(&self, mono_ns: u64) -> u64 {
        if mono_ns >= self.mono_ns {
            self.wall_ns.saturating_add(mono_ns - self.mono_ns)
        } else {
            self.wall_ns.saturating_sub(self.mono_ns - mono_ns)
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: a valid pointer to a timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Unix nanoseconds now.
pub fn unix_now_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Unix nanoseconds as RFC 3339 in UTC (`2026-12-05T22:00:01.123456789Z`).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Flow {
    /// One readable line: `12:00:01.123 x/a 10.244.1.5:40000 -> y/b
    /// 10.244.2.7:80 TCP DROPPED policy-denied-ingress (policy: y/deny-all)`.
    pub fn line(&self) -> String {
        // HH:MM:SS.mmm of the RFC 3339 time.
        let clock = self.time.get(11..23).unwrap_or(&self.time);
        let mut out = format!("{clock} {} -> ", self.source.show());
        match (&self.service, &self.backend) {
            (service, Some(backend)) => {
                if let Some(s) = service {
                    out.push_str(&format!("service {s} "));
                }
                out.push_str(&format!("{} => {}", self.destination.address(), backend.show()));
            }
            (_, None) => out.push_str(&self.destination.show()),
        }
        out.push_str(&format!(" {} {}", self.protocol, self.verdict.to_uppercase()));
        if let Some(r) = &self.reason {
            out.push(' ');
            out.push_str(r);
        }
        if !self.policies.is_empty() {
            out.push_str(&format!(" (policy: {})", self.policies.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2026-12-05T22:24:34.5Z
        assert_eq!(rfc3339(1_796_509_474_500_000_000), "2026-12-05T22:24:34.500000000Z");
        assert_eq!(rfc3339(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        let clock = Clock::from_pair(1_000, 5_000_000);
        assert_eq!(clock.wall(1_500), 5_000_500);
        assert_eq!(clock.wall(500), 4_999_500);
    }

    #[test]
    fn names_of_numbers() {
        assert_eq!(verdict_name(2), "dropped");
        assert_eq!(verdict_name(9), "unknown");
        assert_eq!(direction_name(FLOW_DIR_INGRESS), "ingress");
        assert_eq!(reason_name(DropReason::PolicyIngress as u8), "policy-denied-ingress");
        assert_eq!(reason_name(0), "unknown");
        assert_eq!(reason_name(200), "unknown");
        assert_eq!(protocol_name(6), "TCP");
        assert_eq!(protocol_name(47), "47");
    }

    #[test]
    fn records_parse_from_bytes() {
        let ev = FlowEvent {
            timestamp_ns: 7,
            saddr: FlowEvent::v4([10, 0, 0, 1]),
            dport: 80,
            verdict: 1,
            family: weir_common::flow::FAMILY_IPV4,
            ..Default::default()
        };
        // Safety: reading the bytes of a plain struct.
        let bytes = unsafe {
            std::slice::from_raw_parts((&ev as *const FlowEvent).cast::<u8>(), std::mem::size_of::<FlowEvent>())
        };
        assert_eq!(parse_event(bytes), Some(ev));
        assert_eq!(parse_event(&bytes[..39]), None);
    }
}
