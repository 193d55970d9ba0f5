//! `weir-agent inspect policy` and `inspect verdict`: NetworkPolicy as the
//! datapath holds it, from the pinned maps (looked up by the model's
//! [`simulate`], the same lookups the kernel does), with names from the
//! agent's `policy-names.json`.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, LpmTrie, MapData, lpm_trie::Key};
use serde::Serialize;
use weir_common::{
    EndpointInfo, EndpointKey, pin,
    policy::{IDENTITY_WORLD, Ipcache6Key, IpcacheEntry, IpcacheKey, POLICY_SLOT_OWN_NODE, PolicyEntry, PolicyKey},
};

use crate::{
    datapath::{pinned, policy::stats},
    model::{
        policy::{
            evaluate::Direction,
            simulate::{PolicyMaps, enforced_flag, simulate},
        },
        service::Protocol,
    },
    sync::names::NAMES_FILE,
};

struct Live {
    endpoints: BTreeMap<u32, EndpointInfo>,
    endpoints6: BTreeMap<u32, Ipv6Addr>,
    ipcache: LpmTrie<MapData, IpcacheKey, IpcacheEntry>,
    ipcache6: LpmTrie<MapData, Ipcache6Key, IpcacheEntry>,
    rules: LpmTrie<MapData, PolicyKey, PolicyEntry>,
    names: Names,
}

#[derive(Default, serde::Deserialize)]
struct Names {
    #[serde(default)]
    slots: BTreeMap<String, String>,
    #[serde(default)]
    identities: BTreeMap<String, String>,
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
}

impl Names {
    fn slot(&self, slot: u32) -> String {
        if slot == POLICY_SLOT_OWN_NODE {
            return "(the pod's own node)".into();
        }
        self.slots.get(&slot.to_string()).cloned().unwrap_or_else(|| format!("policy slot {slot}"))
    }
    fn identity(&self, id: u32) -> String {
        match id {
            IDENTITY_WORLD => "world".into(),
            _ => self.identities.get(&id.to_string()).cloned().unwrap_or_else(|| format!("identity {id}")),
        }
    }
    fn pod(&self, ifindex: u32) -> Option<String> {
        self.endpoints.get(&ifindex.to_string()).cloned()
    }
}

impl Live {
    fn open(pin_dir: &Path, run_dir: &Path) -> anyhow::Result<Self> {
        let eps: HashMap<MapData, EndpointKey, EndpointInfo> = pinned::open(pin_dir, pin::MAP_ENDPOINTS)?;
        let endpoints = eps.iter().map(|kv| kv.map(|(k, v)| (k.ifindex, v))).collect::<Result<_, _>>()?;
        let eps6: HashMap<MapData, EndpointKey, [u8; 16]> = pinned::open(pin_dir, pin::MAP_ENDPOINTS6)?;
        let endpoints6 =
            eps6.iter().map(|kv| kv.map(|(k, v)| (k.ifindex, Ipv6Addr::from(v)))).collect::<Result<_, _>>()?;
        let ipcache = pinned::open(pin_dir, pin::MAP_IPCACHE)?;
        let ipcache6 = pinned::open(pin_dir, pin::MAP_IPCACHE6)?;
        let rules = pinned::open(pin_dir, pin::MAP_POLICY)?;
        let names = match std::fs::read(run_dir.join(NAMES_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => Names::default(),
        };
        Ok(Self { endpoints, endpoints6, ipcache, ipcache6, rules, names })
    }

    fn endpoint_of(&self, ip: IpAddr) -> Option<(u32, EndpointInfo)> {
        let ifindex = match ip {
            IpAddr::V4(ip) => self.endpoints.iter().find(|(_, e)| e.ipv4_octets() == ip.octets()).map(|(i, _)| *i),
            IpAddr::V6(ip) => self.endpoints6.iter().find(|(_, a)| **a == ip).map(|(i, _)| *i),
        }?;
        Some((ifindex, *self.endpoints.get(&ifindex)?))
    }
}

/// The pinned maps, looked up as the kernel does (by the one user-space
/// copy of its lookup, [`simulate`]).
impl PolicyMaps for Live {
    fn endpoint_flags(&self, ifindex: u32) -> u32 {
        self.endpoints.get(&ifindex).map_or(0, |e| e.flags)
    }

    fn ipcache(&self, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.ipcache.get(&Key::new(32, IpcacheKey { addr: u32::from_ne_bytes(a.octets()) }), 0),
            IpAddr::V6(a) => self.ipcache6.get(&Key::new(128, Ipcache6Key { addr: a.octets() }), 0),
        }
        .ok()
        .map(|e| e.identity)
    }

    fn policy(&self, key: PolicyKey) -> Option<u32> {
        self.rules.get(&Key::new(PolicyKey::PREFIX_FULL, key), 0).ok().map(|e| e.policy_slot)
    }
}

#[derive(Serialize)]
pub struct Side {
    /// "egress at <pod>" or "ingress at <pod>".
    pub check: String,
    pub enforced: bool,
    pub pending: bool,
    pub peer_identity: String,
    pub allowed: bool,
    pub allowed_by: Option<String>,
}

#[derive(Serialize)]
pub struct VerdictReport {
    pub from: IpAddr,
    pub to: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub allowed: bool,
    /// Checks on this node (a pod on another node is checked there).
    pub checks: Vec<Side>,
}

pub fn parse_port(s: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = port.parse().with_context(|| format!("port {port:?}"))?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => bail!("protocol {other:?}: use tcp, udp or sctp"),
    };
    Ok((port, proto))
}

pub fn verdict(pin_dir: &Path, run_dir: &Path, from: IpAddr, to: IpAddr, port: &str) -> anyhow::Result<VerdictReport> {
    if from.is_ipv4() != to.is_ipv4() {
        bail!("{from} and {to} are of different families: a flow is IPv4 or IPv6");
    }
    let (port, proto) = parse_port(port)?;
    let live = Live::open(pin_dir, run_dir)?;
    let mut checks = Vec::new();
    for (dir, me, peer) in [(Direction::Egress, from, to), (Direction::Ingress, to, from)] {
        let Some((ifindex, ep)) = live.endpoint_of(me) else { continue };
        let pod = live.names.pod(ifindex).unwrap_or_else(|| me.to_string());
        let sim = simulate(&live, ifindex, dir, peer, proto, port);
        // As the flags have it (a pending endpoint may be isolated or not).
        let enforced = ep.flags & enforced_flag(dir) != 0;
        checks.push(Side {
            check: format!("{} at {pod}", if dir == Direction::Ingress { "ingress" } else { "egress" }),
            enforced,
            pending: sim.pending,
            peer_identity: live.names.identity(sim.identity),
            allowed: sim.allowed,
            allowed_by: match (sim.pending, enforced, sim.slot) {
                (true, _, _) => None,
                (false, false, _) => Some("not isolated in this direction".into()),
                (false, true, Some(s)) => Some(live.names.slot(s)),
                (false, true, None) => None,
            },
        });
    }
    if checks.is_empty() {
        bail!("neither {from} nor {to} is a pod on this node: ask the agent on the node of either");
    }
    let protocol = proto.name().to_string();
    Ok(VerdictReport { from, to, port, protocol, allowed: checks.iter().all(|c| c.allowed), checks })
}

#[derive(Serialize)]
pub struct EndpointRow {
    pub ifindex: u32,
    /// `0.0.0.0` for an IPv6-only pod.
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    pub pod: Option<String>,
    pub state: Vec<&'static str>,
    pub rules: usize,
    pub ingress_allowed: u64,
    pub ingress_denied: u64,
    pub egress_allowed: u64,
    pub egress_denied: u64,
}

#[derive(Serialize)]
pub struct PolicyRow {
    pub policy: String,
    pub allowed_flows: u64,
}

#[derive(Serialize)]
pub struct PolicyReport {
    pub endpoints: Vec<EndpointRow>,
    pub policies: Vec<PolicyRow>,
}

pub fn report(pin_dir: &Path, run_dir: &Path) -> anyhow::Result<PolicyReport> {
    let live = Live::open(pin_dir, run_dir)?;
    let mut per_ep: BTreeMap<u32, usize> = BTreeMap::new();
    for key in live.rules.keys() {
        *per_ep.entry(key?.data().ifindex).or_default() += 1;
    }
    let stats = stats::endpoint_stats(pin_dir)?;
    let endpoints = live
        .endpoints
        .iter()
        .map(|(ifindex, ep)| {
            let mut state = Vec::new();
            if ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
                state.push("pending");
            }
            if ep.flags & EndpointInfo::FLAG_INGRESS_ENFORCED != 0 {
                state.push("ingress-isolated");
            }
            if ep.flags & EndpointInfo::FLAG_EGRESS_ENFORCED != 0 {
                state.push("egress-isolated");
            }
            if state.is_empty() {
                state.push("open");
            }
            let s = stats.get(ifindex).copied().unwrap_or_default();
            EndpointRow {
                ifindex: *ifindex,
                ip: Ipv4Addr::from(ep.ipv4_octets()),
                ip6: live.endpoints6.get(ifindex).copied(),
                pod: live.names.pod(*ifindex),
                state,
                rules: per_ep.get(ifindex).copied().unwrap_or(0),
                ingress_allowed: s.ingress_allowed,
                ingress_denied: s.ingress_denied,
                egress_allowed: s.egress_allowed,
                egress_denied: s.egress_denied,
            }
        })
        .collect();
    let known = std::iter::once(POLICY_SLOT_OWN_NODE).chain(live.names.slots.keys().filter_map(|s| s.parse().ok()));
    let policies = stats::policy_hits(pin_dir, known)?
        .into_iter()
        .map(|(slot, n)| PolicyRow { policy: live.names.slot(slot), allowed_flows: n })
        .collect();
    Ok(PolicyReport { endpoints, policies })
}

pub fn print_report(r: &PolicyReport) {
    println!(
        "{:<8} {:<16} {:<28} {:<34} {:>6} {:>21} {:>21}",
        "IFINDEX", "IP", "POD", "STATE", "RULES", "INGRESS ALLOW/DENY", "EGRESS ALLOW/DENY"
    );
    for e in &r.endpoints {
        let v4 = (!e.ip.is_unspecified()).then(|| e.ip.to_string());
        let ips: Vec<String> = v4.into_iter().chain(e.ip6.map(|a| a.to_string())).collect();
        println!(
            "{:<8} {:<16} {:<28} {:<34} {:>6} {:>21} {:>21}",
            e.ifindex,
            ips.join(","),
            e.pod.as_deref().unwrap_or("-"),
            e.state.join(","),
            e.rules,
            format!("{}/{}", e.ingress_allowed, e.ingress_denied),
            format!("{}/{}", e.egress_allowed, e.egress_denied),
        );
    }
    if !r.policies.is_empty() {
        println!();
        println!("{:<48} ALLOWED NEW FLOWS", "POLICY");
        for p in &r.policies {
            println!("{:<48} {}", p.policy, p.allowed_flows);
        }
    }
}

pub fn print_verdict(v: &VerdictReport) {
    let to = std::net::SocketAddr::new(v.to, v.port);
    println!("{} -> {to}/{}: {}", v.from, v.protocol, if v.allowed { "ALLOWED" } else { "DENIED" });
    for c in &v.checks {
        let why = match (&c.allowed_by, c.pending, c.enforced) {
            (_, true, _) => "DENIED: the pod's policy is not in place yet (pending)".to_string(),
            (_, false, false) => "passes: no policy isolates the pod in this direction".to_string(),
            (Some(by), false, true) => format!("passes: allowed by {by}"),
            (None, false, true) => "DENIED: isolated, and no rule allows it".to_string(),
        };
        println!("  {:<40} peer {:<36} {}", c.check, c.peer_identity, why);
    }
}
