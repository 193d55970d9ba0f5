//! The agent's main loop: updates from the source go into the index, the
//! model computes the desired node state, the node layer applies it.
use std::collections::BTreeSet;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::{error, info, info_span, warn};

use crate::{
    config::AgentConfig,
    datapath::{Datapath, lb_maps::LbMaps as _, lb_programmer::LbProgrammer, policy_maps::PolicyMaps, policy_programmer::PolicyProgrammer},
    model::{ClusterIndex, NodePlan, cni_conf, lb, plan, service::EndpointSliceInfo},
    services::ServiceSync,
    policy_sync::PolicySync,
    node::{files, masquerade, policy_socket, routes::Routes, sysctl},
    sources::{self, Change, SourceSpec, Update},
};

pub const READY_FILE: &str = "agent-ready";

pub async fn run(mut config: AgentConfig) -> anyhow::Result<()> {
    let span = info_span!("agent", node = %config.plan.node_name);
    let _enter = span.enter();
    settle_cni_chain(&mut config);

    // Node prerequisites first: nothing below works without them.
    sysctl::enable_forwarding().context("enabling IPv4 forwarding")?;
    if config.masquerade {
        masquerade::ensure(config.plan.cluster_cidr).context("installing masquerade rules")?;
    }
    let mut datapath = Datapath::load(&config.bpf_pin_dir).context("loading the eBPF datapath")?;
    // Without it pods still reach Services per packet; host-network pods
    // and processes on the node itself lose them. Loud (log, /readyz,
    // weir_socket_lb_enabled), not fatal.
    let socket_lb = match &config.socket_lb_cgroup {
        None => Err("turned off (--no-socket-lb)".to_string()),
        Some(configured) => match crate::node::cgroup2::resolve(configured, &config.run_dir, &crate::node::cgroup2::HostFs) {
            Err(e) => Err(e.to_string()),
            Ok(root) => {
                info!(cgroup = %root.path.display(), configured = %configured.display(), why = %root.found, "cgroup v2 root for connect-time Service load balancing");
                datapath.attach_socket_lb(&root.path).map(|()| root.path.display().to_string()).map_err(|e| e.to_string())
            }
        },
    };
    match &socket_lb {
        Ok(cgroup) => info!(%cgroup, "connect-time Service load balancing attached"),
        Err(e) if config.socket_lb_cgroup.is_none() => info!(why = %e, "connect-time Service load balancing off"),
        Err(e) => warn!(error = %e, "connect-time Service load balancing disabled"),
    }
    // Pods attached by a previous agent move to these programs.
    datapath.reattach_pods();
    // IDs from the pinned maps: established flows keep their backends.
    let lb = LbProgrammer::restore(&datapath.dump().context("reading the pinned service maps")?);
    // What the pinned policy maps hold: the first pass rewrites only what
    // changed while no agent ran.
    let policy = PolicyProgrammer::restore(datapath.dump_policy().context("reading the pinned policy maps")?);
    let routes = Routes::connect().context("opening netlink")?;

    let status = std::sync::Arc::new(crate::status::Status::default());
    status.beat();
    status.set_socket_lb(socket_lb);
    let listener = tokio::net::TcpListener::bind(config.status_addr)
        .await
        .with_context(|| format!("binding the status endpoint {}", config.status_addr))?;
    tokio::spawn(crate::status::serve(listener, status.clone(), config.bpf_pin_dir.clone()));

    // weir-cni's hand-off for new pods (see policy_sync).
    let (handoff_listener, _) = policy_socket::bind(&config.run_dir)
        .with_context(|| format!("binding the policy hand-off socket in {}", config.run_dir.display()))?;
    let (handoff_tx, mut handoffs) = mpsc::channel::<policy_socket::Handoff>(256);
    let handoff_server = tokio::spawn(policy_socket::serve(handoff_listener, handoff_tx));
    // weir-cni's per-command reports, for /metrics. Loud, not fatal.
    let cni_metrics_server = match crate::node::cni_metrics::bind(&config.run_dir) {
        Ok((socket, _)) => Some(tokio::spawn(crate::node::cni_metrics::serve(socket, status.cni_metrics()))),
        Err(e) => {
            warn!(error = %e, dir = %config.run_dir.display(), "CNI metrics socket not bound: no weir_cni_* samples");
            None
        }
    };

    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let source = spawn_source(&config, tx).await?;

    let policy = PolicySync::new(policy, config.plan.node_name.clone(), &config.run_dir);
    let mut state = Reconciler::new(config, routes, datapath, lb, policy, status.clone());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Failed writes leave things dirty; retry them even when nothing new
    // arrives.
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        status.beat();
        // Wake up for held hand-offs that run out.
        let hold_deadline = state.policy.next_deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = retry.tick() => {
                if state.dirty() {
                    state.reconcile().await;
                }
            }
            Some(h) = handoffs.recv() => {
                state.policy.handoff(h);
                while let Ok(h) = handoffs.try_recv() {
                    state.policy.handoff(h);
                }
                state.reconcile().await;
            }
            _ = async { tokio::time::sleep_until(hold_deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if hold_deadline.is_some() => {
                state.policy.tick();
            }
            update = rx.recv() => {
                let Some(update) = update else {
                    anyhow::bail!("the object source stopped");
                };
                state.apply(update);
                // Take everything already queued before reconciling once.
                while let Ok(update) = rx.try_recv() {
                    state.apply(update);
                }
                state.reconcile().await;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // The pinned datapath, routes and CNI config stay: pods keep working
    // while the agent restarts. `weir-agent cleanup` removes them.
    source.abort();
    handoff_server.abort();
    if let Some(server) = cni_metrics_server {
        server.abort();
    }
    info!("stopping; node state left in place for the next agent");
    Ok(())
}

/// Asks the chained plugins which cniVersions they speak and writes the
/// highest common one; a missing portmap is dropped from the chain (hostPort
/// then does not work, which is said loudly).
fn settle_cni_chain(config: &mut AgentConfig) {
    use crate::node::cni_versions;
    let dirs = &config.cni_bin_dirs;
    let mut lists = vec![match cni_versions::find(dirs, "weir-cni").map(|p| cni_versions::query(&p)) {
        Some(Ok(v)) => v,
        // Not installed yet (the init container races us) or unreadable:
        // this release's own list.
        _ => cni_versions::WEIR_CNI_VERSIONS.iter().map(|s| s.to_string()).collect(),
    }];
    if config.plan.cni.chain_portmap {
        match cni_versions::find(dirs, "portmap").map(|p| cni_versions::query(&p)) {
            Some(Ok(v)) => lists.push(v),
            Some(Err(e)) => {
                warn!(error = %e, "portmap unusable: not chained, hostPort will not work");
                config.plan.cni.chain_portmap = false;
            }
            None => {
                warn!(dirs = ?dirs, "portmap not found: not chained, hostPort will not work");
                config.plan.cni.chain_portmap = false;
            }
        }
    }
    match cni_versions::negotiate(&lists) {
        Some(v) => config.plan.cni.cni_version = v,
        None => {
            warn!(?lists, "the chained plugins share no cniVersion with weir-cni: portmap not chained");
            config.plan.cni.chain_portmap = false;
        }
    }
    info!(cni_version = %config.plan.cni.cni_version, portmap = config.plan.cni.chain_portmap, "CNI chain settled");
}

async fn spawn_source(config: &AgentConfig, tx: mpsc::Sender<Update>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    Ok(match &config.source {
        SourceSpec::Dir(dir) => {
            let src = sources::dir::DirSource::new(dir.clone(), config.dir_poll);
            tokio::spawn(async move {
                if let Err(e) = src.run(tx).await {
                    error!(error = %e, "manifest source failed");
                }
            })
        }
        SourceSpec::Kube { kubeconfig } => {
            let client = sources::kube::client(kubeconfig.as_ref(), &config.in_cluster).await?;
            tokio::spawn(sources::kube::run(client, tx))
        }
    })
}

struct Reconciler {
    config: AgentConfig,
    routes: Routes,
    services: ServiceSync,
    policy: PolicySync,
    index: ClusterIndex,
    /// The node plumbing must be looked at again.
    nodes_dirty: bool,
    status: std::sync::Arc<crate::status::Status>,
    peer_routes: usize,
    /// The uplink the NodePort program is attached to, and the address.
    uplink: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr, String)>,
    /// Problems already reported, so each is logged once while it lasts.
    reported: BTreeSet<(String, String)>,
    ready: bool,
    /// EndpointSlice changes not yet programmed (network programming latency).
    programming: crate::status::ProgrammingClock,
}

impl Reconciler {
    fn new(
        config: AgentConfig,
        routes: Routes,
        datapath: Datapath,
        lb: LbProgrammer,
        policy: PolicySync,
        status: std::sync::Arc<crate::status::Status>,
    ) -> Self {
        Self {
            config,
            routes,
            services: ServiceSync::new(datapath, lb),
            policy,
            index: ClusterIndex::default(),
            nodes_dirty: true,
            status,
            peer_routes: 0,
            uplink: None,
            reported: BTreeSet::new(),
            ready: false,
            programming: crate::status::ProgrammingClock::new(std::time::SystemTime::now()),
        }
    }

    fn dirty(&self) -> bool {
        self.nodes_dirty || self.services.needs_work(&self.index) || self.policy.needs_work(&self.index)
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Nodes(c) => {
                let me = self.config.plan.node_name.clone();
                let changed = self.index.nodes.change(c);
                if !changed.is_empty() {
                    self.nodes_dirty = true;
                }
                // NodePorts listen on this node's addresses, and which
                // endpoints are local depends on the node's name only.
                let mine = changed.iter().any(|(o, n)| {
                    o.as_ref().is_some_and(|x| x.name == me) || n.as_ref().is_some_and(|x| x.name == me)
                });
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
                if !self.index.pods.change(c).is_empty() {
                    self.policy.mark_dirty();
                }
            }
            Update::Namespaces(c) => {
                if !self.index.namespaces.change(c).is_empty() {
                    self.policy.mark_dirty();
                }
            }
            Update::NetworkPolicies(c) => {
                if !self.index.policies.change(c).is_empty() {
                    self.policy.mark_dirty();
                }
            }
            Update::Reachable { kind, ok } => self.status.set_reachable(&kind, ok),
            Update::Problems { kind, count } => self.status.set_problems(&kind, count),
        }
    }

    async fn reconcile(&mut self) {
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
            let node = lb::LbNode {
                name: self.config.plan.node_name.clone(),
                addrs: me.and_then(|n| n.internal_ip).into_iter().collect(),
            };
            self.services.reconcile(&self.index, &node).await;
        }
        if !self.services.needs_work(&self.index) {
            self.status.observe_programming(&self.programming.programmed(std::time::SystemTime::now()));
        }
        problems.extend(self.services.problems().cloned());
        if self.policy.needs_work(&self.index) {
            self.policy.reconcile(&self.index, &mut self.services.datapath);
            let (slots, pods) = self.policy.names(&self.index);
            self.status.set_policy_names(slots, pods);
        }
        self.report(problems);
        let synced = self.index.nodes.synced() && self.index.services_synced() && self.index.policy_synced();
        let gauges = crate::status::Gauges {
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
        let Some(gateway) = plan.pod_cidr.and_then(|c| c.nth(1)) else {
            return true;
        };
        if self.uplink.as_ref().is_some_and(|(a, g, _)| *a == addr && *g == gateway) {
            return true;
        }
        let ifname = match crate::datapath::uplink::interface_with(addr).await {
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
        if let Err(e) = self.services.datapath.set_node_addrs(addr, gateway, ifindex) {
            error!(error = %e, "cannot set the node address for NodePort SNAT");
            return false;
        }
        if let Err(e) = self.services.datapath.attach_uplink(&ifname) {
            error!(error = %e, "NodePort datapath not attached");
            return false;
        }
        info!(%addr, %ifname, "NodePort datapath attached to the uplink");
        self.uplink = Some((addr, gateway, ifname));
        true
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
