//! Read-only views of the datapath for operators, straight from the pinned
//! maps and the routing table (they work while the agent is down).
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use anyhow::Context as _;
use aya::maps::HashMap;
use serde::Serialize;
use weir_common::{
    lb::{
        Backend, Backend6, CT_DIR_REPLY, CtEntry, CtKey, CtKey6, RevNat, RevNat6, SCOPE_INTERNAL, ServiceKey,
        ServiceKey6, ServiceValue, ip6_octets,
    },
    pin,
};

use crate::{
    datapath::{loader::verdict_counts, pinned},
    node::routes::Routes,
};

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

fn proto(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

#[derive(Serialize)]
struct ServiceRow {
    frontend: String,
    protocol: &'static str,
    scope: &'static str,
    flags: Vec<&'static str>,
    affinity_timeout: u32,
    backends: Vec<String>,
}

/// A slot of either family's Service map, with its frontend as an address.
struct Slot {
    frontend: SocketAddr,
    proto: u8,
    scope: u8,
    slot: u16,
    value: ServiceValue,
}

/// Both families' Service maps, one list (IPv4 first): the IPv6 ones hold
/// the frontends of dual-stack and IPv6 Services.
fn services(pin_dir: &Path) -> anyhow::Result<Vec<ServiceRow>> {
    let svc: HashMap<_, ServiceKey, ServiceValue> = pinned::open(pin_dir, pin::MAP_SVC)?;
    let svc6: HashMap<_, ServiceKey6, ServiceValue> = pinned::open(pin_dir, pin::MAP_SVC6)?;
    let backends: HashMap<_, u32, Backend> = pinned::open(pin_dir, pin::MAP_BACKENDS)?;
    let backends6: HashMap<_, u32, Backend6> = pinned::open(pin_dir, pin::MAP_BACKENDS6)?;
    let mut entries: Vec<Slot> = Vec::new();
    for e in svc.iter() {
        let (k, value) = e?;
        let frontend = SocketAddr::new(ip(k.addr).into(), u16::from_be(k.port));
        entries.push(Slot { frontend, proto: k.proto, scope: k.scope, slot: k.slot, value });
    }
    for e in svc6.iter() {
        let (k, value) = e?;
        let frontend = SocketAddr::new(Ipv6Addr::from(ip6_octets(k.addr)).into(), u16::from_be(k.port));
        entries.push(Slot { frontend, proto: k.proto, scope: k.scope, slot: k.slot, value });
    }
    entries.sort_by_key(|e| (e.frontend.is_ipv6(), e.frontend, e.proto, e.scope, e.slot));
    // (address, port, flags) of a backend ID, from the map of its family.
    let backend = |id: u32, v6: bool| -> Option<(SocketAddr, u8)> {
        if v6 {
            let b = backends6.get(&id, 0).ok()?;
            Some((SocketAddr::new(Ipv6Addr::from(ip6_octets(b.addr)).into(), u16::from_be(b.port)), b.flags))
        } else {
            let b = backends.get(&id, 0).ok()?;
            Some((SocketAddr::new(ip(b.addr).into(), u16::from_be(b.port)), b.flags))
        }
    };
    let lookup = |head: &Slot, slot: u16| {
        entries
            .iter()
            .find(|e| e.frontend == head.frontend && e.proto == head.proto && e.scope == head.scope && e.slot == slot)
            .map(|e| e.value)
    };
    let mut rows = Vec::new();
    for head in entries.iter().filter(|e| e.slot == 0) {
        let v = head.value;
        let mut list = Vec::new();
        for slot in 1..=v.count {
            let line = match lookup(head, slot).map(|s| (s.backend_id, backend(s.backend_id, head.frontend.is_ipv6())))
            {
                Some((_, Some((addr, flags)))) => {
                    let mut s = addr.to_string();
                    if flags & Backend::FLAG_LOCAL != 0 {
                        s.push_str(" (local)");
                    }
                    if flags & Backend::FLAG_TERMINATING != 0 {
                        s.push_str(" (terminating)");
                    }
                    s
                }
                Some((id, None)) => format!("backend #{id} missing"),
                None => format!("slot {slot} missing"),
            };
            list.push(line);
        }
        let mut flags = Vec::new();
        if v.flags & ServiceValue::FLAG_NODEPORT != 0 {
            flags.push("nodeport");
        }
        if v.flags & ServiceValue::FLAG_LOCAL_ONLY != 0 {
            flags.push("local-only");
        }
        if v.flags & ServiceValue::FLAG_SOURCE_RANGES != 0 {
            flags.push("source-ranges");
        }
        rows.push(ServiceRow {
            frontend: head.frontend.to_string(),
            protocol: proto(head.proto),
            scope: if head.scope == SCOPE_INTERNAL { "internal" } else { "default" },
            flags,
            affinity_timeout: v.affinity_timeout,
            backends: list,
        });
    }
    Ok(rows)
}

#[derive(Serialize)]
struct ConntrackRow {
    direction: &'static str,
    protocol: &'static str,
    source: String,
    destination: String,
    backend: String,
    frontend: String,
    flags: Vec<&'static str>,
}

fn conntrack(pin_dir: &Path) -> anyhow::Result<Vec<ConntrackRow>> {
    let ct: HashMap<_, CtKey, CtEntry> = pinned::open(pin_dir, pin::MAP_CT)?;
    let backends: HashMap<_, u32, Backend> = pinned::open(pin_dir, pin::MAP_BACKENDS)?;
    let rev: HashMap<_, u16, RevNat> = pinned::open(pin_dir, pin::MAP_REVNAT)?;
    let mut rows = Vec::new();
    for kv in ct.iter() {
        let (k, v) = kv?;
        let backend = match backends.get(&v.backend_id, 0) {
            Ok(b) => format!("{}:{}", ip(b.addr), u16::from_be(b.port)),
            Err(_) => format!("#{} (gone)", v.backend_id),
        };
        let frontend = match rev.get(&v.rev_nat_id, 0) {
            Ok(r) => format!("{}:{}", ip(r.addr), u16::from_be(r.port)),
            Err(_) => format!("#{} (gone)", v.rev_nat_id),
        };
        let mut flags = Vec::new();
        if v.flags & CtEntry::FLAG_SNAT != 0 {
            flags.push("snat");
        }
        if v.flags & CtEntry::FLAG_HAIRPIN != 0 {
            flags.push("hairpin");
        }
        rows.push(ConntrackRow {
            direction: if k.dir == CT_DIR_REPLY { "reply" } else { "original" },
            protocol: proto(k.proto),
            source: format!("{}:{}", ip(k.saddr), u16::from_be(k.sport)),
            destination: format!("{}:{}", ip(k.daddr), u16::from_be(k.dport)),
            backend,
            frontend,
            flags,
        });
    }
    conntrack6(pin_dir, &mut rows)?;
    rows.sort_by(|a, b| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)));
    Ok(rows)
}

/// The IPv6 flows translated per packet (`WEIR_CT6`), as rows like IPv4's.
fn conntrack6(pin_dir: &Path, rows: &mut Vec<ConntrackRow>) -> anyhow::Result<()> {
    let ct: HashMap<_, CtKey6, CtEntry> = pinned::open(pin_dir, pin::MAP_CT6)?;
    let backends: HashMap<_, u32, Backend6> = pinned::open(pin_dir, pin::MAP_BACKENDS6)?;
    let rev: HashMap<_, u16, RevNat6> = pinned::open(pin_dir, pin::MAP_REVNAT6)?;
    let at = |addr, port: u16| SocketAddr::new(Ipv6Addr::from(ip6_octets(addr)).into(), u16::from_be(port)).to_string();
    for kv in ct.iter() {
        let (k, v) = kv?;
        let backend = match backends.get(&v.backend_id, 0) {
            Ok(b) => at(b.addr, b.port),
            Err(_) => format!("#{} (gone)", v.backend_id),
        };
        let frontend = match rev.get(&v.rev_nat_id, 0) {
            Ok(r) => at(r.addr, r.port),
            Err(_) => format!("#{} (gone)", v.rev_nat_id),
        };
        let mut flags = Vec::new();
        if v.flags & CtEntry::FLAG_SNAT != 0 {
            // Through the uplink to a remote backend, SNATed to the node.
            flags.push("snat");
        }
        if v.flags & CtEntry::FLAG_HAIRPIN != 0 {
            flags.push("hairpin");
        }
        rows.push(ConntrackRow {
            direction: if k.dir == CT_DIR_REPLY { "reply" } else { "original" },
            protocol: proto(k.proto),
            source: at(k.saddr, k.sport),
            destination: at(k.daddr, k.dport),
            backend,
            frontend,
            flags,
        });
    }
    Ok(())
}

#[derive(Serialize)]
struct RouteRow {
    pod_cidr: String,
    via: String,
}

async fn routes() -> anyhow::Result<Vec<RouteRow>> {
    let owned = Routes::connect()?.owned().await?;
    Ok(owned
        .into_iter()
        .map(|(cidr, (via, _))| RouteRow { pod_cidr: cidr.to_string(), via: via.to_string() })
        .collect())
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// Service frontends and their backends, as the datapath has them.
    Services,
    /// Translated connections.
    Conntrack,
    /// Routes to other nodes' pod CIDRs.
    Routes,
    /// Packets passed and dropped, per reason.
    Drops,
    /// Local pods: policy state, entries and verdict counters; allowed
    /// flows per policy.
    Policy,
    /// Would --from reach --to on --port, and which policy says so (from
    /// the live maps, checks of pods on this node).
    Verdict,
}

/// Arguments of `inspect policy` and `inspect verdict`.
pub struct PolicyQuery {
    pub run_dir: std::path::PathBuf,
    pub from: Option<std::net::IpAddr>,
    pub to: Option<std::net::IpAddr>,
    pub port: String,
}

pub async fn run(what: What, pin_dir: &Path, json: bool, query: &PolicyQuery) -> anyhow::Result<()> {
    use crate::observe::inspect_policy;
    match what {
        What::Policy => show(json, &inspect_policy::report(pin_dir, &query.run_dir)?, inspect_policy::print_report),
        What::Verdict => {
            let (Some(from), Some(to)) = (query.from, query.to) else {
                anyhow::bail!("inspect verdict needs --from <ip> --to <ip> [--port 80/tcp]");
            };
            let v = inspect_policy::verdict(pin_dir, &query.run_dir, from, to, &query.port)?;
            show(json, &v, inspect_policy::print_verdict)
        }
        What::Services => show(json, &services(pin_dir)?[..], print_services),
        What::Conntrack => show(json, &conntrack(pin_dir)?[..], print_conntrack),
        What::Routes => show(json, &routes().await?[..], print_routes),
        What::Drops => drops(pin_dir, json),
    }
}

/// Prints `value` as pretty JSON with `--json`, else as `table` lays it out.
fn show<T: Serialize + ?Sized>(json: bool, value: &T, table: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        table(value);
    }
    Ok(())
}

fn print_services(rows: &[ServiceRow]) {
    // Wide enough for an IPv6 frontend (`[fd00:10:96::a]:443`).
    println!("{:<30} {:<5} {:<9} {:<24} BACKENDS", "FRONTEND", "PROTO", "SCOPE", "FLAGS");
    for r in rows {
        let mut flags = r.flags.join(",");
        if r.affinity_timeout > 0 {
            flags = format!("{flags}{}affinity={}s", if flags.is_empty() { "" } else { "," }, r.affinity_timeout);
        }
        let backends = if r.backends.is_empty() { "(none: rejected)".to_string() } else { r.backends.join(", ") };
        println!("{:<30} {:<5} {:<9} {:<24} {backends}", r.frontend, r.protocol, r.scope, flags);
    }
}

fn print_conntrack(rows: &[ConntrackRow]) {
    println!(
        "{:<9} {:<5} {:<22} {:<22} {:<22} {:<22} FLAGS",
        "DIR", "PROTO", "SOURCE", "DESTINATION", "BACKEND", "FRONTEND"
    );
    for r in rows {
        println!(
            "{:<9} {:<5} {:<22} {:<22} {:<22} {:<22} {}",
            r.direction,
            r.protocol,
            r.source,
            r.destination,
            r.backend,
            r.frontend,
            r.flags.join(",")
        );
    }
}

fn print_routes(rows: &[RouteRow]) {
    println!("{:<20} VIA", "POD CIDR");
    for r in rows {
        println!("{:<20} {}", r.pod_cidr, r.via);
    }
}

/// The datapath's verdict counters; the JSON form carries each verdict's
/// meaning too, so it reads without this table's header.
fn drops(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let counts = verdict_counts(pin_dir).with_context(|| format!("reading counters under {}", pin_dir.display()))?;
    if json {
        let rows: Vec<_> = counts
            .iter()
            .map(|(r, n)| serde_json::json!({"verdict": r.name(), "packets": n, "meaning": r.describe()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<20} {:>12}  MEANING", "VERDICT", "PACKETS");
        for (r, n) in counts {
            println!("{:<20} {:>12}  {}", r.name(), n, r.describe());
        }
    }
    Ok(())
}
