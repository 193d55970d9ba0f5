//! The reconcile loop's state: the cluster index the sources feed, and the
//! node plumbing, service sync and policy sync that make the node match it,
//! through the one datapath this module owns.
use std::collections::BTreeSet;

use tracing::{error, info, warn};

use crate::{
    app::READY_FILE,
    config::AgentConfig,
    datapath::{Datapath, lb::maps::LbMaps as _, lb::programmer::LbProgrammer},
    model::{ClusterIndex, NodePlan, cni_conf, lb, plan, service::EndpointSliceInfo},
    node::{files, routes::Routes},
    observe::flows::names::PodAddresses,
    sources::{Change, Update},
    sync::{policy::PolicySync, services::ServiceSync},
};

pub struct Reconciler {
    config: AgentConfig,
    routes: Routes,
    /// The eBPF datapath: the service and policy syncs write through it.
    datapath: Datapath,
    services: ServiceSync,
    pub policy: PolicySync,
    index: ClusterIndex,
    /// The node plumbing must be looked at again.
    nodes_dirty: bool,
    status: std::sync::Arc<crate::observe::status::Status>,
    peer_routes: usize,
    /// The uplink the NodePort program is attached to, and the address.
    uplink: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr, String)>,
    /// The node's IPv6 address written for the IPv6 uplink path, and the
    /// interface holding it.
    uplink6: Option<(std::net::Ipv6Addr, String)>,
    /// Problems already reported, so each is logged once while it lasts.
    reported: BTreeSet<(String, String)>,
    ready: bool,
    /// EndpointSlice changes not yet programmed (network programming latency).
    programming: crate::observe::status::ProgrammingClock,
    /// Every pod's address, for the flows' name tables.
    pod_addresses: PodAddresses,
}

impl Reconciler {
    pub fn new(
        config: AgentConfig,
        routes: Routes,
        datapath: Datapath,
        lb: LbProgrammer,
        policy: PolicySync,
        status: std::sync::Arc<crate::observe::status::Status>,
    ) -> Self {
        Self {
            config,
            routes,
            datapath,
            services: ServiceSync::new(lb),
            policy,
            index: ClusterIndex::default(),
            nodes_dirty: true,
            status,
            peer_routes: 0,
            uplink: None,
            uplink6: None,
            reported: BTreeSet::new(),
            ready: false,
            programming: crate::observe::status::ProgrammingClock::new(std::time::SystemTime::now()),
            pod_addresses: PodAddresses::default(),
        }
    }

    /// The cluster as the sources last said (names for the flow log).
    pub fn index(&self) -> &ClusterIndex {
        &self.index
    }

    /// Every pod's address (names for the flow log).
    pub fn pod_addresses(&self) -> &PodAddresses {
        &self.pod_addresses
    }

    pub fn dirty(&self) -> bool {
        self.nodes_dirty || self.services.needs_work(&self.index) || self.policy.needs_work(&self.index)
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Nodes(c) => {
                let me = self.config.plan.node_name.clone();
                let changed = self.index.nodes.change(c);
                if !changed.is_empty() {
                    self.nodes_dirty = true;
                }
                // NodePorts listen on this node's addresses, and which
                // endpoints are local depends on the node's name only.
                let mine = changed
                    .iter()
                    .any(|(o, n)| o.as_ref().is_some_and(|x| x.name == me) || n.as_ref().is_some_and(|x| x.name == me));
                if mine {
                    self.services.mark_dirty(self.index.services.iter().map(|s| s.key.clone()));
                }
            }
            Update::Services(c) => {
                let keys = self.index.change_services(c);
                self.services.mark_dirty(keys);
            }
            Update::EndpointSlices(c) => {
                // A change's trigger time, once (a relist repeats the
                // versions already programmed).
                let new_versions: &[EndpointSliceInfo] = match &c {
                    Change::Applied(slice) => std::slice::from_ref(slice),
                    Change::Relisted(slices) | Change::RelistedKeeping { objects: slices, .. } => slices,
                    Change::Deleted(_) => &[],
                };
                for slice in new_versions {
                    if self.index.slice(&slice.key).map(|old| old.trigger_time) != Some(slice.trigger_time) {
                        self.programming.note(slice.trigger_time);
                    }
                }
                let keys = self.index.change_slices(c);
                self.services.mark_dirty(keys);
            }
            // Policy is recompiled as a whole and applied as a diff: only
            // the entries that change are written.
            Update::Pods(c) => {
                let changed = self.index.pods.change(c);
                for (old, new) in &changed {
                    self.pod_addresses.change(old.as_ref(), new.as_ref());
                }
                if !changed.is_empty() {
                    self.policy
                        .pods_changed(changed.into_iter().filter_map(|(old, new)| Some(new.or(old)?.key.to_string())));
                }
            }
            Update::Namespaces(c) => {
                if !self.index.namespaces.change(c).is_empty() {
                    self.policy.policies_changed();
                }
            }
            Update::NetworkPolicies(c) => {
                if !self.index.policies.change(c).is_empty() {
                    self.policy.policies_changed();
                }
            }
            Update::Reachable { kind, ok } => self.status.set_reachable(&kind, ok),
            Update::Problems { kind, count } => self.status.set_problems(&kind, count),
        }
    }

    pub async fn reconcile(&mut self) {
        let started = std::time::Instant::now();
        let mut problems = Vec::new();
        if self.nodes_dirty {
            self.nodes_dirty = false;
            let plan = plan::plan(&self.index, &self.config.plan);
            problems.extend(plan.problems.iter().cloned());
            self.reconcile_node(&plan).await;
        }
        if self.services.needs_work(&self.index) {
            let me = self.index.node(&self.config.plan.node_name);
            let cidrs = self.config.plan.cluster_cidrs;
            // NodePorts listen on the node's InternalIP of each family.
            let addrs = me.map(|n| {
                let v4 = n.internal_ip.map(std::net::IpAddr::V4);
                v4.into_iter().chain(n.internal_ip_v6.map(std::net::IpAddr::V6)).collect()
            });
            let node = lb::LbNode {
                name: self.config.plan.node_name.clone(),
                addrs: addrs.unwrap_or_default(),
                families: cidrs.families(),
            };
            self.services.reconcile(&self.index, &node, &mut self.datapath).await;
        }
        if !self.services.needs_work(&self.index) {
            self.status.observe_programming(&self.programming.programmed(std::time::SystemTime::now()));
        }
        problems.extend(self.services.problems().cloned());
        if self.policy.needs_work(&self.index) {
            self.policy.reconcile(&self.index, &mut self.datapath);
            let (slots, pods) = self.policy.names(&self.index);
            self.status.set_policy_names(slots, pods);
        }
        self.report(problems);
        let synced = self.index.nodes.synced() && self.index.services_synced() && self.index.policy_synced();
        let gauges = crate::observe::status::Gauges {
            nodes: self.index.nodes.len(),
            services: self.index.services.len(),
            endpoint_slices: self.index.slice_count(),
            frontends: self.services.frontends(),
            peer_routes: self.peer_routes,
            policy: self.policy.gauges(&self.index),
        };
        self.status.record_sync(started.elapsed(), !self.dirty(), synced, gauges);
    }

    /// NodePorts need the uplink program and the node address for SNAT;
    /// hairpin needs the pod gateway address.
    async fn reconcile_uplink(&mut self, plan: &NodePlan) -> bool {
        let Some(addr) = self.index.node(&self.config.plan.node_name).and_then(|n| n.internal_ip) else {
            return true;
        };
        let Some(pod_cidr) = plan.pod_cidr else {
            return true;
        };
        let gateway = crate::datapath::lb::maps::pod_gateway(pod_cidr);
        if self.uplink.as_ref().is_some_and(|(a, g, _)| *a == addr && *g == gateway) {
            return true;
        }
        let ifname = match crate::datapath::uplink::interface_with(addr.into()).await {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "NodePort datapath not attached");
                return false;
            }
        };
        let ifindex = match nix::net::if_::if_nametoindex(ifname.as_str()) {
            Ok(i) => i,
            Err(e) => {
                error!(error = %e, %ifname, "cannot read the uplink's ifindex");
                return false;
            }
        };
        if let Err(e) = self.datapath.set_node_addrs(addr, pod_cidr, ifindex) {
            error!(error = %e, "cannot set the node address for NodePort SNAT");
            return false;
        }
        if let Err(e) = self.datapath.attach_uplink(&ifname) {
            error!(error = %e, "NodePort datapath not attached");
            return false;
        }
        info!(%addr, %ifname, "NodePort datapath attached to the uplink");
        self.uplink = Some((addr, gateway, ifname));
        true
    }

    /// IPv6 NodePorts (and SNAT to remote backends over IPv6) need the
    /// node's IPv6 InternalIP and the interface holding it, with the uplink
    /// programs attached there: on a dual-stack node, as a rule, the IPv4
    /// uplink (attached once); on an IPv6-only node, the only one.
    async fn reconcile_uplink6(&mut self) -> bool {
        let Some(addr) = self.index.node(&self.config.plan.node_name).and_then(|n| n.internal_ip_v6) else {
            return true;
        };
        if self.uplink6.as_ref().is_some_and(|(a, _)| *a == addr) {
            return true;
        }
        let ifname = match crate::datapath::uplink::interface_with(addr.into()).await {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "IPv6 NodePort datapath not attached");
                return false;
            }
        };
        let ifindex = match nix::net::if_::if_nametoindex(ifname.as_str()) {
            Ok(i) => i,
            Err(e) => {
                error!(error = %e, %ifname, "cannot read the IPv6 uplink's ifindex");
                return false;
            }
        };
        if let Err(e) = self.datapath.set_uplink6(addr, ifindex) {
            error!(error = %e, "cannot set the node's IPv6 address for NodePort SNAT");
            return false;
        }
        let attached = self.uplink.as_ref().is_some_and(|(_, _, n)| *n == ifname);
        if !attached && let Err(e) = self.datapath.attach_uplink(&ifname) {
            error!(error = %e, "IPv6 NodePort datapath not attached");
            return false;
        }
        info!(%addr, %ifname, "IPv6 NodePort datapath set on the uplink");
        self.uplink6 = Some((addr, ifname));
        true
    }

    /// The IPv6 pod gateway, for hairpinned IPv6 Service flows (a node
    /// without an IPv6 pod CIDR has none to write).
    fn reconcile_gateway6(&mut self, plan: &NodePlan) -> bool {
        let Some(cidr) = plan.pod_cidr_v6 else { return true };
        let gateway = std::net::Ipv6Addr::from(u128::from(cidr.network()) + 1);
        match self.datapath.set_node_gateway6(gateway) {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "cannot set the IPv6 pod gateway for hairpinned Service flows");
                false
            }
        }
    }

    async fn reconcile_node(&mut self, plan: &NodePlan) {
        let mut ok = true;
        if let Some(conflist) = &plan.conflist {
            let path = self.config.cni_conf_dir.join(cni_conf::CONFLIST_FILE);
            match files::write_atomic(&path, conflist.as_bytes()) {
                Ok(true) => info!(path = %path.display(), "wrote CNI config"),
                Ok(false) => {}
                Err(e) => {
                    error!(error = %e, "CNI config not written");
                    ok = false;
                }
            }
        }

        ok &= self.reconcile_uplink(plan).await;
        ok &= self.reconcile_uplink6().await;
        ok &= self.reconcile_gateway6(plan);
        let prune = self.index.nodes.synced();
        match self.routes.sync(&plan.peer_routes, prune).await {
            Ok(stats) if stats != Default::default() => {
                info!(set = stats.set, deleted = stats.deleted, total = plan.peer_routes.len(), "peer routes synced")
            }
            Ok(_) => {}
            Err(errors) => {
                ok = false;
                for e in errors {
                    error!(error = %e, "peer route");
                }
            }
        }

        if ok && !self.ready && prune && plan.conflist.is_some() {
            self.mark_ready(plan);
        }
        self.peer_routes = plan.peer_routes.len();
        if !ok {
            self.nodes_dirty = true;
        }
    }

    fn mark_ready(&mut self, plan: &NodePlan) {
        let marker = serde_json::json!({
            "node": self.config.plan.node_name,
            "podCIDR": plan.pod_cidr.map(|c| c.to_string()),
            "podCIDRv6": plan.pod_cidr_v6.map(|c| c.to_string()),
            "pid": std::process::id(),
        });
        let path = self.config.run_dir.join(READY_FILE);
        match files::write_atomic(&path, marker.to_string().as_bytes()) {
            Ok(_) => {
                self.ready = true;
                self.status.set_node_ready(true);
                info!(path = %path.display(), "node ready for pods");
            }
            Err(e) => error!(error = %e, "cannot write the ready marker"),
        }
    }

    fn report(&mut self, problems: Vec<plan::Problem>) {
        let now: BTreeSet<_> = problems.into_iter().map(|p| (p.object, p.message)).collect();
        for (object, message) in now.difference(&self.reported) {
            warn!(%object, "{message}");
        }
        self.reported = now;
    }
}
