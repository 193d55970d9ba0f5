//! Desired load-balancer state: every frontend (address, port, protocol,
//! scope) this node must answer, with the backends it may pick, following
//! kube-proxy's rules for traffic policies and endpoint conditions.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use ipnetwork::IpNetwork;

use super::{
    plan::Problem,
    service::{EndpointSliceInfo, Family, ObjectKey, Protocol, ServiceInfo, ServicePort, ServiceType},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The frontend's own backends (local ones only under
    /// `externalTrafficPolicy: Local`).
    Default,
    /// For `externalTrafficPolicy: Local` frontends only: every backend,
    /// for clients that are pods on this node.
    Internal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    /// Of the frontend's family.
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendRef {
    pub addr: BackendAddr,
    pub local: bool,
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendState {
    pub service: ObjectKey,
    pub kind: FrontendKind,
    /// Sorted, so equal states compare equal.
    pub backends: Vec<BackendRef>,
    /// sessionAffinity ClientIP timeout in seconds; 0 when off.
    pub affinity_timeout: u32,
    /// Empty: no restriction. Of the frontend's family only.
    pub source_ranges: Vec<IpNetwork>,
    /// externalTrafficPolicy: Local on an external frontend.
    pub local_only: bool,
}

/// What the node itself contributes: which endpoints are local, the
/// addresses NodePorts listen on, and the families the cluster has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbNode {
    pub name: String,
    /// Of both families: a NodePort listens on those of the family of
    /// each of its frontends.
    pub addrs: Vec<IpAddr>,
    /// The families of the cluster CIDRs (`--cluster-cidr`): a Service's
    /// cluster IP of another family is reported and skipped.
    pub families: BTreeSet<Family>,
}

/// The whole plan at once: the reference `DesiredLb` is tested against.
#[cfg(test)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbPlan {
    pub frontends: BTreeMap<Frontend, FrontendState>,
    /// healthCheckNodePort -> (Service, local endpoint count), served the
    /// way kube-proxy serves it.
    pub health_checks: BTreeMap<u16, (ObjectKey, usize)>,
    pub problems: Vec<Problem>,
}

/// One Service's share of the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePlan {
    pub frontends: Vec<(Frontend, FrontendState)>,
    /// healthCheckNodePort and the local endpoint count.
    pub health_check: Option<(u16, usize)>,
    pub problems: Vec<Problem>,
}

pub fn plan_service(svc: &ServiceInfo, svc_slices: &[&EndpointSliceInfo], node: &LbNode) -> ServicePlan {
    let mut out = ServicePlan::default();
    let problem = |message: String| Problem { object: format!("Service/{}", svc.key), message };
    out.problems.extend(svc.problems.iter().cloned().map(problem));
    for slice in svc_slices {
        out.problems.extend(
            slice
                .problems
                .iter()
                .map(|m| Problem { object: format!("EndpointSlice/{}", slice.key), message: m.clone() }),
        );
    }
    if svc.type_ == ServiceType::ExternalName || svc.headless {
        return out;
    }
    // One plan per family the Service has a cluster IP of, as kube-proxy
    // runs one proxier per family: each takes the Service only with a
    // cluster IP of its own family, and of every other address list only
    // that family's entries.
    let mut served: Vec<Family> = Vec::new();
    for ip in &svc.cluster_ips {
        let family = Family::of(ip);
        if node.families.contains(&family) {
            served.push(family);
        } else {
            out.problems.push(problem(format!(
                "cluster IP {ip} is {}, a family this cluster has no cluster CIDR of; its {} frontends skipped",
                family.name(),
                family.name()
            )));
        }
    }
    // An external IP no family of the Service serves would be silently
    // unreachable (kube-proxy skips it): say so. Load-balancer ingress IPs
    // of another family are left quietly, as kube-proxy does: a proxying
    // load balancer may bridge families.
    for ip in svc.external_ips.iter().filter(|ip| !svc.cluster_ips.iter().any(|c| Family::of(c) == Family::of(ip))) {
        out.problems.push(problem(format!(
            "externalIP {ip} is {}, but the Service has no {} cluster IP; skipped",
            Family::of(ip).name(),
            Family::of(ip).name()
        )));
    }
    // The health check counts ready local endpoints by address (kube-proxy's
    // LocalReadyEndpoints), per family: a dual-stack pod is one endpoint.
    let mut local_endpoints: BTreeSet<IpAddr> = BTreeSet::new();
    for family in served {
        plan_family(svc, svc_slices, node, family, &mut out, &mut local_endpoints);
    }
    if svc.external_traffic_local
        && let Some(port) = svc.health_check_node_port
    {
        let per_family = |f: Family| local_endpoints.iter().filter(|a| Family::of(a) == f).count();
        out.health_check = Some((port, per_family(Family::Ipv4).max(per_family(Family::Ipv6))));
    }
    out
}

/// The frontends of one family of the Service.
fn plan_family(
    svc: &ServiceInfo,
    svc_slices: &[&EndpointSliceInfo],
    node: &LbNode,
    family: Family,
    out: &mut ServicePlan,
    local_endpoints: &mut BTreeSet<IpAddr>,
) {
    let of_family = |ip: &&IpAddr| Family::of(ip) == family;
    let slices: Vec<&EndpointSliceInfo> = svc_slices.iter().copied().filter(|s| s.family == family).collect();
    let source_ranges: Vec<IpNetwork> =
        svc.lb_source_ranges.iter().copied().filter(|r| Family::of(&r.ip()) == family).collect();
    for sp in &svc.ports {
        let candidates = candidates(sp, &slices, &node.name);
        let all = usable(&candidates, false);
        let local = usable(&candidates, true);
        // A node whose only endpoints are terminating answers 503 so load
        // balancers drain it, while traffic that still arrives goes on to
        // those endpoints (KEP-1669).
        local_endpoints.extend(candidates.iter().filter(|c| c.local && c.ready).map(|c| c.backend.addr));
        let affinity_timeout = svc.affinity_timeout.unwrap_or(0);
        let state = |kind, backends: &Vec<BackendRef>, local_only, source_ranges: &[IpNetwork]| FrontendState {
            service: svc.key.clone(),
            kind,
            backends: backends.clone(),
            affinity_timeout,
            source_ranges: source_ranges.to_vec(),
            local_only,
        };

        let cluster_backends = if svc.internal_traffic_local { &local } else { &all };
        for &ip in svc.cluster_ips.iter().filter(of_family) {
            out.frontends.push((
                fe(ip, sp.port, sp.protocol, Scope::Default),
                state(FrontendKind::ClusterIp, cluster_backends, false, &[]),
            ));
        }

        // External frontends: NodePorts on every node address, external
        // IPs, load-balancer ingress IPs.
        let mut external: Vec<(IpAddr, u16, FrontendKind, &[IpNetwork])> = Vec::new();
        if matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer)
            && let Some(np) = sp.node_port
        {
            external.extend(node.addrs.iter().filter(of_family).map(|&a| (a, np, FrontendKind::NodePort, &[][..])));
        }
        external.extend(
            svc.external_ips.iter().filter(of_family).map(|&a| (a, sp.port, FrontendKind::ExternalIp, &[][..])),
        );
        if svc.type_ == ServiceType::LoadBalancer {
            external.extend(
                svc.lb_ingress_ips
                    .iter()
                    .filter(of_family)
                    .map(|&a| (a, sp.port, FrontendKind::LoadBalancer, source_ranges.as_slice())),
            );
        }
        for (addr, port, kind, ranges) in external {
            if svc.external_traffic_local {
                out.frontends.push((fe(addr, port, sp.protocol, Scope::Default), state(kind, &local, true, ranges)));
                out.frontends.push((fe(addr, port, sp.protocol, Scope::Internal), state(kind, &all, false, ranges)));
            } else {
                out.frontends.push((fe(addr, port, sp.protocol, Scope::Default), state(kind, &all, false, ranges)));
            }
        }
    }
}

/// The whole plan at once: the reference `DesiredLb` is tested against.
#[cfg(test)]
pub fn plan<'a>(
    services: impl IntoIterator<Item = &'a ServiceInfo>,
    slices: &BTreeMap<ObjectKey, Vec<&'a EndpointSliceInfo>>,
    node: &LbNode,
) -> LbPlan {
    let mut out = LbPlan::default();
    for svc in services {
        let share = plan_service(svc, slices.get(&svc.key).map(Vec::as_slice).unwrap_or_default(), node);
        out.problems.extend(share.problems);
        for (frontend, state) in share.frontends {
            insert(&mut out, svc, frontend, state);
        }
        if let Some((port, local)) = share.health_check {
            out.health_checks.insert(port, (svc.key.clone(), local));
        }
    }
    out
}

/// The desired frontends, kept up to date one Service at a time, so a
/// change costs what that Service costs, whatever the number of Services.
#[derive(Debug, Default)]
pub struct DesiredLb {
    pub frontends: BTreeMap<Frontend, FrontendState>,
    shares: BTreeMap<ObjectKey, Share>,
    /// Services that lost a frontend to another Service, re-planned when
    /// the frontend frees up.
    waiting: BTreeMap<Frontend, BTreeSet<ObjectKey>>,
    /// healthCheckNodePort -> (Service, local endpoint count).
    health_checks: BTreeMap<u16, (ObjectKey, usize)>,
    /// Services with something to report (only those).
    problems: BTreeMap<ObjectKey, Vec<Problem>>,
}

#[derive(Debug, Default)]
struct Share {
    frontends: Vec<Frontend>,
    health_port: Option<u16>,
}

impl DesiredLb {
    /// Re-plans the `dirty` Services; returns every frontend whose desired
    /// state may have changed (added, changed or removed).
    pub fn update<'a>(
        &mut self,
        mut dirty: BTreeSet<ObjectKey>,
        service: impl Fn(&str) -> Option<&'a ServiceInfo>,
        slices_of: impl Fn(&str) -> Vec<&'a EndpointSliceInfo>,
        node: &LbNode,
    ) -> BTreeSet<Frontend> {
        let mut changed = BTreeSet::new();
        while let Some(key) = dirty.pop_first() {
            self.problems.remove(&key);
            if let Some(old) = self.shares.remove(&key) {
                if let Some(port) = old.health_port
                    && self.health_checks.get(&port).is_some_and(|(owner, _)| *owner == key)
                {
                    self.health_checks.remove(&port);
                }
                for f in old.frontends {
                    self.frontends.remove(&f);
                    changed.insert(f);
                    // Whoever waited for this frontend gets another chance.
                    if let Some(waiters) = self.waiting.remove(&f) {
                        dirty.extend(waiters.into_iter().filter(|w| *w != key));
                    }
                }
            }
            self.waiting.values_mut().for_each(|w| {
                w.remove(&key);
            });
            let Some(svc) = service(&key) else { continue };
            let plan = plan_service(svc, &slices_of(&key), node);
            let mut problems = plan.problems;
            let mut share = Share { frontends: Vec::new(), health_port: plan.health_check.map(|(port, _)| port) };
            if let Some((port, local)) = plan.health_check {
                self.health_checks.insert(port, (key.clone(), local));
            }
            for (frontend, state) in plan.frontends {
                match self.frontends.get(&frontend) {
                    Some(existing) if existing.service != key => {
                        problems.push(conflict(&key, &frontend, &existing.service));
                        self.waiting.entry(frontend).or_default().insert(key.clone());
                    }
                    _ => {
                        self.frontends.insert(frontend, state);
                        changed.insert(frontend);
                        share.frontends.push(frontend);
                    }
                }
            }
            if !problems.is_empty() {
                self.problems.insert(key.clone(), problems);
            }
            self.shares.insert(key, share);
        }
        self.waiting.retain(|_, w| !w.is_empty());
        changed
    }

    pub fn health_checks(&self) -> &BTreeMap<u16, (ObjectKey, usize)> {
        &self.health_checks
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flatten()
    }
}

/// Two Services may not claim one frontend.
fn conflict(service: &str, frontend: &Frontend, owner: &str) -> Problem {
    Problem {
        object: format!("Service/{service}"),
        message: format!(
            "{}/{} is already used by Service/{owner}; skipped",
            SocketAddr::new(frontend.addr, frontend.port),
            frontend.proto.name()
        ),
    }
}

fn fe(addr: IpAddr, port: u16, proto: Protocol, scope: Scope) -> Frontend {
    Frontend { addr, port, proto, scope }
}

/// Two Services may not claim one frontend: the first (by name) keeps it.
#[cfg(test)]
fn insert(out: &mut LbPlan, svc: &ServiceInfo, frontend: Frontend, state: FrontendState) {
    match out.frontends.get(&frontend) {
        Some(existing) if existing.service != svc.key => {
            out.problems.push(conflict(&svc.key, &frontend, &existing.service))
        }
        _ => {
            out.frontends.insert(frontend, state);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    backend: BackendAddr,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// Endpoints of every slice of the Service that carry this port, deduplicated
/// by address (an address listed twice keeps its best conditions).
fn candidates(sp: &ServicePort, slices: &[&EndpointSliceInfo], node: &str) -> Vec<Candidate> {
    let mut by_addr: BTreeMap<BackendAddr, Candidate> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().find(|p| p.name == sp.name && p.protocol == sp.protocol) else {
            continue;
        };
        for ep in &slice.endpoints {
            // All addresses of one endpoint are the same pod: use the first.
            let Some(&addr) = ep.addresses.first() else { continue };
            let backend = BackendAddr { addr, port: port.port, proto: sp.protocol };
            let c = Candidate {
                backend,
                local: ep.node_name.as_deref() == Some(node),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
            };
            by_addr
                .entry(backend)
                .and_modify(|old| {
                    old.ready |= c.ready;
                    old.serving |= c.serving;
                    old.terminating &= c.terminating;
                    old.local |= c.local;
                })
                .or_insert(c);
        }
    }
    by_addr.into_values().collect()
}

/// kube-proxy's rule: ready endpoints; when there are none, the ones that
/// are serving and terminating.
fn usable(candidates: &[Candidate], local_only: bool) -> Vec<BackendRef> {
    let pool = candidates.iter().filter(|c| !local_only || c.local);
    let ready: Vec<_> = pool.clone().filter(|c| c.ready).collect();
    let chosen = if ready.is_empty() { pool.filter(|c| c.serving && c.terminating).collect() } else { ready };
    chosen.into_iter().map(|c| BackendRef { addr: c.backend, local: c.local, terminating: !c.ready }).collect()
}

#[cfg(test)]
mod tests;
