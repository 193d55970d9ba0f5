//! The agent's start-up and main loop: node prerequisites, the datapath,
//! the status and hand-off sockets, the object source; then updates from
//! the source go into the `Reconciler`, which makes the node match them.
use std::sync::Arc;

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info, info_span, warn};

use crate::{
    config::AgentConfig,
    datapath::{
        Datapath, lb::maps::LbMaps as _, lb::programmer::LbProgrammer, policy::maps::PolicyMaps,
        policy::programmer::PolicyProgrammer,
    },
    node::{masquerade, policy_socket, routes::Routes, sysctl},
    observe::{
        flows::{self, Hub, NameTable, sink::FlowLog},
        status::Status,
    },
    reconcile::Reconciler,
    sources::{self, SourceSpec, Update},
    sync::policy::PolicySync,
};

pub const READY_FILE: &str = "agent-ready";

pub async fn run(mut config: AgentConfig) -> anyhow::Result<()> {
    let span = info_span!("agent", node = %config.plan.node_name);
    let _enter = span.enter();
    settle_cni_chain(&mut config);

    // Node prerequisites first: nothing below works without them.
    prepare_node(&config)?;
    let mut datapath = Datapath::load(&config.bpf_pin_dir).context("loading the eBPF datapath")?;
    let socket_lb = attach_socket_lb(&config, &mut datapath);
    let (lb, policy) = take_over_pinned_state(&mut datapath)?;
    let routes = Routes::connect().context("opening netlink")?;

    let status = Arc::new(Status::default());
    status.beat();
    status.set_socket_lb(socket_lb);
    let flows = start_flows(&config, &status);
    serve_status(&config, &status).await?;
    let mut sockets = CniSockets::bind(&config, &status)?;

    let (tx, mut updates) = mpsc::channel::<Update>(1024);
    let source = spawn_source(&config, tx).await?;

    let node_name = config.plan.node_name.clone();
    let policy = PolicySync::new(policy, node_name.clone(), &config.run_dir);
    let mut state = Reconciler::new(config, routes, datapath, lb, policy, status.clone());
    let names = FlowNames::new(flows.hub.clone(), node_name);
    main_loop(&mut state, &mut updates, &mut sockets.handoffs, &status, &names).await?;
    // The pinned datapath, routes and CNI config stay: pods keep working
    // while the agent restarts. `weir-agent cleanup` removes them.
    source.abort();
    sockets.abort();
    flows.abort();
    info!("stopping; node state left in place for the next agent");
    Ok(())
}

fn prepare_node(config: &AgentConfig) -> anyhow::Result<()> {
    let cidrs = config.plan.cluster_cidrs;
    sysctl::enable_forwarding(cidrs.v4.is_some(), cidrs.v6.is_some()).context("enabling forwarding")?;
    if config.masquerade {
        let families = cidrs.v4.map(ipnetwork::IpNetwork::V4).into_iter().chain(cidrs.v6.map(ipnetwork::IpNetwork::V6));
        for cidr in families {
            masquerade::ensure(cidr).with_context(|| format!("installing masquerade rules for {cidr}"))?;
        }
    }
    Ok(())
}

/// Connect-time Service load balancing: Ok(the cgroup it is attached to)
/// or Err(why it is off).
///
/// Without it pods still reach Services per packet; host-network pods and
/// processes on the node itself lose them. Loud (log, /readyz,
/// weir_socket_lb_enabled), not fatal.
fn attach_socket_lb(config: &AgentConfig, datapath: &mut Datapath) -> Result<String, String> {
    let socket_lb = match &config.socket_lb_cgroup {
        None => Err("turned off (--no-socket-lb)".to_string()),
        Some(configured) => {
            match crate::node::cgroup2::resolve(configured, &config.run_dir, &crate::node::cgroup2::HostFs) {
                Err(e) => Err(e.to_string()),
                Ok(root) => {
                    info!(cgroup = %root.path.display(), configured = %configured.display(), why = %root.found, "cgroup v2 root for connect-time Service load balancing");
                    datapath
                        .attach_socket_lb(&root.path)
                        .map(|()| root.path.display().to_string())
                        .map_err(|e| e.to_string())
                }
            }
        }
    };
    match &socket_lb {
        Ok(cgroup) => info!(%cgroup, "connect-time Service load balancing attached"),
        Err(e) if config.socket_lb_cgroup.is_none() => info!(why = %e, "connect-time Service load balancing off"),
        Err(e) => warn!(error = %e, "connect-time Service load balancing disabled"),
    }
    socket_lb
}

/// Carries on from what a previous agent left pinned.
fn take_over_pinned_state(datapath: &mut Datapath) -> anyhow::Result<(LbProgrammer, PolicyProgrammer)> {
    // Pods attached by a previous agent move to these programs.
    datapath.reattach_pods();
    // IDs from the pinned maps: established flows keep their backends.
    let lb = LbProgrammer::restore(&datapath.dump().context("reading the pinned service maps")?);
    // What the pinned policy maps hold: the first pass rewrites only what
    // changed while no agent ran.
    let policy = PolicyProgrammer::restore(datapath.dump_policy().context("reading the pinned policy maps")?);
    Ok((lb, policy))
}

/// Binds the status endpoint (health, readiness, metrics) and serves it in
/// the background.
async fn serve_status(config: &AgentConfig, status: &Arc<Status>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.status_addr)
        .await
        .with_context(|| format!("binding the status endpoint {}", config.status_addr))?;
    tokio::spawn(crate::observe::status::serve(listener, status.clone(), config.bpf_pin_dir.clone()));
    Ok(())
}

/// Flow events: the rate limit written, the ring buffer read, the flows
/// socket served, all in the background. Loud, not fatal: without them
/// the node's networking is the same.
struct Flows {
    hub: Arc<Hub>,
    tasks: Vec<JoinHandle<()>>,
}

impl Flows {
    fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn start_flows(config: &AgentConfig, status: &Arc<Status>) -> Flows {
    let settings = &config.flows;
    match flows::reader::set_rate(&config.bpf_pin_dir, settings.events_per_sec, settings.burst) {
        Ok(()) if settings.events_per_sec == 0 => info!("flow events turned off (--flow-events-per-sec 0)"),
        Ok(()) => info!(per_cpu_per_sec = settings.events_per_sec, burst = settings.burst, "flow events on"),
        Err(e) => warn!(error = %format!("{e:#}"), "flow event rate not set: the datapath has no flow events"),
    }
    let log = settings.log.as_ref().and_then(|target| match FlowLog::start(target, settings.log_max_bytes) {
        Ok(log) => Some(log),
        Err(e) => {
            warn!(error = %e, target = ?target, "flow log not started");
            None
        }
    });
    let hub = Arc::new(Hub::new(settings.buffer, log));
    status.set_flows(hub.clone());
    let mut tasks = Vec::new();
    if settings.events_per_sec > 0 {
        tasks.push(tokio::spawn(flows::reader::run(config.bpf_pin_dir.clone(), hub.clone())));
    }
    match flows::server::bind(&config.run_dir) {
        Ok((listener, path)) => {
            info!(path = %path.display(), "serving flows for weir-agent observe");
            tasks.push(tokio::spawn(flows::server::serve(listener, hub.clone())));
        }
        Err(e) => warn!(error = %e, dir = %config.run_dir.display(), "flows socket not bound: no weir-agent observe"),
    }
    Flows { hub, tasks }
}

/// Keeps the flows' name table as the last reconcile left the cluster, at
/// most every `NAMES_EVERY`: the table covers every pod and Service of the
/// cluster, and rebuilding it after each pass was a tenth of the agent's
/// CPU under pod churn at 15,000 pods. Flows wait for names up to
/// `flows::hub::HOLD`, longer than this.
struct FlowNames {
    hub: Arc<Hub>,
    node: String,
    built: std::cell::Cell<Option<std::time::Instant>>,
    /// A pass ran since the last build.
    stale: std::cell::Cell<bool>,
}

const NAMES_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl FlowNames {
    fn new(hub: Arc<Hub>, node: String) -> Self {
        Self { hub, node, built: std::cell::Cell::new(None), stale: std::cell::Cell::new(false) }
    }

    /// After a reconcile pass: builds now, or marks the table stale.
    fn refresh(&self, state: &Reconciler) {
        if self.built.get().is_some_and(|t| t + NAMES_EVERY > std::time::Instant::now()) {
            self.stale.set(true);
        } else {
            self.build(state);
        }
    }

    /// When a stale table is to be rebuilt (None: it is not stale).
    fn due(&self) -> Option<std::time::Instant> {
        self.stale.get().then(|| self.built.get().map_or_else(std::time::Instant::now, |t| t + NAMES_EVERY))
    }

    fn build(&self, state: &Reconciler) {
        let (slots, endpoints) = state.policy.names(state.index());
        self.hub.set_names(NameTable::build_with(state.index(), state.pod_addresses(), &self.node, slots, endpoints));
        self.built.set(Some(std::time::Instant::now()));
        self.stale.set(false);
    }
}

/// The sockets weir-cni talks to, each served in the background.
struct CniSockets {
    /// New pods' hand-offs from weir-cni (see policy_sync).
    handoffs: mpsc::Receiver<policy_socket::Handoff>,
    handoff_server: JoinHandle<()>,
    /// weir-cni's per-command reports, for /metrics; None when the socket
    /// could not be bound.
    cni_metrics_server: Option<JoinHandle<()>>,
}

impl CniSockets {
    fn bind(config: &AgentConfig, status: &Status) -> anyhow::Result<Self> {
        let (handoff_listener, _) = policy_socket::bind(&config.run_dir)
            .with_context(|| format!("binding the policy hand-off socket in {}", config.run_dir.display()))?;
        let (handoff_tx, handoffs) = mpsc::channel::<policy_socket::Handoff>(256);
        let handoff_server = tokio::spawn(policy_socket::serve(handoff_listener, handoff_tx));
        // Loud, not fatal: only the weir_cni_* samples are missing.
        let cni_metrics_server = match crate::observe::cni_metrics::bind(&config.run_dir) {
            Ok((socket, _)) => Some(tokio::spawn(crate::observe::cni_metrics::serve(socket, status.cni_metrics()))),
            Err(e) => {
                warn!(error = %e, dir = %config.run_dir.display(), "CNI metrics socket not bound: no weir_cni_* samples");
                None
            }
        };
        Ok(Self { handoffs, handoff_server, cni_metrics_server })
    }

    fn abort(&self) {
        self.handoff_server.abort();
        if let Some(server) = &self.cni_metrics_server {
            server.abort();
        }
    }
}

/// Feeds updates and hand-offs into `state` and reconciles, until SIGTERM
/// or Ctrl-C (Ok) or the object source stops (Err).
async fn main_loop(
    state: &mut Reconciler,
    updates: &mut mpsc::Receiver<Update>,
    handoffs: &mut mpsc::Receiver<policy_socket::Handoff>,
    status: &Status,
    names: &FlowNames,
) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Failed writes leave things dirty; retry them even when nothing new
    // arrives.
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        status.beat();
        // Wake up for held hand-offs that run out.
        let hold_deadline = state.policy.next_deadline().map(tokio::time::Instant::from_std);
        let names_due = names.due().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = retry.tick() => {
                if state.dirty() {
                    state.reconcile().await;
                    names.refresh(state);
                }
            }
            Some(h) = handoffs.recv() => {
                state.policy.handoff(h);
                while let Ok(h) = handoffs.try_recv() {
                    state.policy.handoff(h);
                }
                state.reconcile().await;
                names.refresh(state);
            }
            _ = async { tokio::time::sleep_until(hold_deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if hold_deadline.is_some() => {
                state.policy.tick();
            }
            _ = async { tokio::time::sleep_until(names_due.unwrap_or_else(tokio::time::Instant::now)).await }, if names_due.is_some() => {
                names.build(state);
            }
            update = updates.recv() => {
                let Some(update) = update else {
                    anyhow::bail!("the object source stopped");
                };
                let mut relisted = update.is_relist();
                state.apply(update);
                // Take everything already queued before reconciling once.
                while let Ok(update) = updates.try_recv() {
                    relisted |= update.is_relist();
                    state.apply(update);
                }
                state.reconcile().await;
                names.refresh(state);
                if relisted {
                    crate::process::release_freed_memory();
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
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
