//! Command line and environment, validated into `AgentConfig` before the agent
//! touches anything.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnetwork::Ipv4Network;

use crate::{
    model::{PlanSettings, cni_conf::CniSettings, plan::ClusterCidrs},
    sources::{SourceSpec, kube::InClusterSettings},
};

#[derive(Debug, Parser)]
#[command(name = "weir-agent", version, about = "weir node agent: pod networking, eBPF Services and NetworkPolicy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent on this node.
    Run(RunArgs),
    /// Remove everything the agent made on this node: CNI config, ready
    /// marker, pinned maps and programs, peer routes, masquerade rules.
    Cleanup(PathArgs),
    /// Show what the datapath holds: `services`, `conntrack`, `routes`,
    /// `drops` (passed and dropped packets, per reason).
    Inspect {
        what: crate::observe::inspect::What,
        #[arg(long, env = "WEIR_BPF_PIN_DIR", default_value = "/sys/fs/bpf/weir")]
        bpf_pin_dir: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The agent's run dir (names of policies and identities).
        #[arg(long, env = "WEIR_RUN_DIR", default_value = "/run/weir")]
        run_dir: PathBuf,
        /// `verdict`: the client address.
        #[arg(long)]
        from: Option<std::net::IpAddr>,
        /// `verdict`: the server address (a pod, after Service translation).
        #[arg(long)]
        to: Option<std::net::IpAddr>,
        /// `verdict`: destination port and protocol, e.g. 80/tcp.
        #[arg(long, default_value = "80/tcp")]
        port: String,
    },
    /// Show the flows the datapath reports (new flows allowed, drops,
    /// Service translations) with pod, Service and policy names, from the
    /// agent on this node.
    Observe(crate::observe::flows::cli::ObserveArgs),
}

#[derive(Debug, Args)]
pub struct PathArgs {
    /// Where the CNI conflist is written.
    #[arg(long, env = "WEIR_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// weir-cni's state (IPAM reservations).
    #[arg(long, env = "WEIR_CNI_DATA_DIR", default_value = "/var/lib/cni/weir")]
    pub cni_data_dir: PathBuf,
    /// Runtime state, including the agent-ready marker weir-cni's STATUS reads.
    #[arg(long, env = "WEIR_RUN_DIR", default_value = "/run/weir")]
    pub run_dir: PathBuf,
    /// bpffs directory for pinned maps, programs and links.
    #[arg(long, env = "WEIR_BPF_PIN_DIR", default_value = "/sys/fs/bpf/weir")]
    pub bpf_pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name, as in its Node object (the DaemonSet passes
    /// spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// `kube` (in-cluster config or $KUBECONFIG), `kube:<kubeconfig>`, or
    /// `dir:<manifest directory>`.
    #[arg(long, env = "WEIR_SOURCE", default_value = "kube")]
    pub source: SourceSpec,
    /// The cluster's pod CIDRs, one per family, comma-separated as for
    /// kube-controller-manager (`10.244.0.0/16,fd00:10:244::/56`); every
    /// node's podCIDRs lie inside them.
    #[arg(long, env = "WEIR_CLUSTER_CIDR")]
    pub cluster_cidr: ClusterCidrs,
    #[arg(long, env = "WEIR_MTU", default_value_t = 1500)]
    pub mtu: u32,
    #[arg(long, env = "WEIR_VETH_PREFIX", default_value = "weir")]
    pub veth_prefix: String,
    #[arg(long, env = "WEIR_NETWORK_NAME", default_value = "weir")]
    pub network_name: String,
    /// Where the runtime finds CNI plugins (colon-separated, like CNI_PATH):
    /// the agent asks the chained plugins which cniVersions they support.
    #[arg(long, env = "WEIR_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: String,
    /// Do not chain the reference portmap plugin (hostPort support).
    #[arg(long)]
    pub no_portmap: bool,
    /// Do not masquerade pod traffic leaving the cluster CIDR.
    #[arg(long)]
    pub no_masquerade: bool,
    /// cgroup v2 directory whose processes get connect-time Service load
    /// balancing (the root cgroup on a real node: pods and host processes).
    #[arg(long, env = "WEIR_SOCKET_LB_CGROUP", default_value = "/sys/fs/cgroup")]
    pub socket_lb_cgroup: PathBuf,
    /// Translate Services per packet only (no connect-time translation).
    #[arg(long)]
    pub no_socket_lb: bool,
    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, env = "WEIR_STATUS_ADDR", default_value = "0.0.0.0:9878")]
    pub status_addr: std::net::SocketAddr,
    /// The API server's own address for the agent's client (`--source
    /// kube` in a pod): the `kubernetes` Service's ClusterIP, which
    /// in-cluster configuration names, is served by weir itself and so not
    /// before weir runs. The ConfigMap's `k8s-service-host`.
    #[arg(long, env = "WEIR_K8S_SERVICE_HOST")]
    pub k8s_service_host: Option<String>,
    /// Port of `--k8s-service-host` (6443 if not given). The ConfigMap's
    /// `k8s-service-port`.
    #[arg(long, env = "WEIR_K8S_SERVICE_PORT")]
    pub k8s_service_port: Option<String>,
    /// A kubeconfig whose server is the API server's address when no
    /// setting is given and the ClusterIP does not answer (only its server
    /// is read, never its credentials).
    #[arg(long, env = "WEIR_KUBELET_KUBECONFIG", default_value = crate::sources::api_server::KUBELET_KUBECONFIG)]
    pub kubelet_kubeconfig: PathBuf,
    /// The service account's token, ca.crt and namespace (what a pod
    /// mounts; the test bed points it elsewhere).
    #[arg(long, env = "WEIR_SERVICEACCOUNT_DIR", default_value = crate::sources::api_server::SERVICE_ACCOUNT_DIR)]
    pub serviceaccount_dir: PathBuf,
    /// Manifest directory poll interval, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub dir_poll_ms: u64,
    /// Flow events each CPU's datapath may send per second (0: no flow
    /// events). The ConfigMap's `flow-events-per-sec`.
    #[arg(long, env = "WEIR_FLOW_EVENTS_PER_SEC", default_value_t = weir_common::flow::FLOW_RATE_DEFAULT_PER_SEC)]
    pub flow_events_per_sec: u64,
    /// Most flow events a CPU may send at once (the bucket's size).
    #[arg(long, env = "WEIR_FLOW_EVENTS_BURST", default_value_t = weir_common::flow::FLOW_RATE_DEFAULT_BURST)]
    pub flow_events_burst: u64,
    /// Flows the agent keeps in memory for `weir-agent observe` (the oldest
    /// go first). The ConfigMap's `flow-buffer`.
    #[arg(long, env = "WEIR_FLOW_BUFFER", default_value_t = crate::observe::flows::DEFAULT_BUFFER)]
    pub flow_buffer: usize,
    /// Log every flow as a JSON line: `stdout` or a file path (empty or
    /// `off`: no log). The ConfigMap's `flow-log`.
    #[arg(long, env = "WEIR_FLOW_LOG", default_value = "")]
    pub flow_log: String,
    /// Size at which the flow log file is moved to `<file>.1` (one old file
    /// kept); 0: never. The ConfigMap's `flow-log-max-bytes`.
    #[arg(long, env = "WEIR_FLOW_LOG_MAX_BYTES", default_value_t = crate::observe::flows::DEFAULT_LOG_MAX_BYTES)]
    pub flow_log_max_bytes: u64,
    #[command(flatten)]
    pub paths: PathArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--node-name must not be empty")]
    NodeName,
    #[error("--mtu {mtu} is out of range (576..=65535)")]
    Mtu { mtu: u32 },
    #[error(
        "--veth-prefix {prefix:?} must be 1 to 4 ASCII letters or digits (host veth names are the prefix plus 11 hex digits, 15 at most)"
    )]
    VethPrefix { prefix: String },
    #[error("--cluster-cidr {cidr} is too small to hold node /24s (prefix must be /8 to /24)")]
    ClusterCidr { cidr: Ipv4Network },
    #[error("--cluster-cidr {cidr} is too small to hold node slices (an IPv6 prefix must be /16 to /120)")]
    ClusterCidrV6 { cidr: ipnetwork::Ipv6Network },
    #[error("--k8s-service-port (WEIR_K8S_SERVICE_PORT): {message}")]
    K8sServicePort { message: String },
    #[error("--flow-buffer {size} is too large (at most {max})")]
    FlowBuffer { size: usize, max: usize },
}

/// The most flows the history may hold (about 1 KiB each).
pub const MAX_FLOW_BUFFER: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: SourceSpec,
    pub plan: PlanSettings,
    pub masquerade: bool,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub status_addr: std::net::SocketAddr,
    pub socket_lb_cgroup: Option<PathBuf>,
    pub dir_poll: std::time::Duration,
    pub in_cluster: InClusterSettings,
    pub cni_conf_dir: PathBuf,
    pub run_dir: PathBuf,
    pub bpf_pin_dir: PathBuf,
    pub flows: crate::observe::flows::FlowSettings,
}

impl RunArgs {
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        if self.node_name.trim().is_empty() {
            return Err(ConfigError::NodeName);
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(ConfigError::Mtu { mtu: self.mtu });
        }
        if self.veth_prefix.is_empty()
            || self.veth_prefix.len() > 4
            || !self.veth_prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(ConfigError::VethPrefix { prefix: self.veth_prefix });
        }
        if let Some(cidr) = self.cluster_cidr.v4.filter(|c| !(8..=24).contains(&c.prefix())) {
            return Err(ConfigError::ClusterCidr { cidr });
        }
        // Nodes usually get /64s; anything down to weir-cni's /126 works.
        if let Some(cidr) = self.cluster_cidr.v6.filter(|c| !(16..=120).contains(&c.prefix())) {
            return Err(ConfigError::ClusterCidrV6 { cidr });
        }
        let setting = crate::sources::api_server::host_port(
            self.k8s_service_host.as_deref(),
            self.k8s_service_port.as_deref(),
            6443,
        )
        .map_err(|message| ConfigError::K8sServicePort { message })?;
        if self.flow_buffer > MAX_FLOW_BUFFER {
            return Err(ConfigError::FlowBuffer { size: self.flow_buffer, max: MAX_FLOW_BUFFER });
        }
        let flows = crate::observe::flows::FlowSettings {
            events_per_sec: self.flow_events_per_sec,
            burst: self.flow_events_burst,
            buffer: self.flow_buffer,
            log: match self.flow_log.trim() {
                "" | "off" | "none" => None,
                target => target.parse().ok(),
            },
            log_max_bytes: self.flow_log_max_bytes,
        };
        Ok(AgentConfig {
            source: self.source,
            plan: PlanSettings {
                node_name: self.node_name,
                // Normalised by its parser (10.244.1.7/16 is 10.244.0.0/16).
                cluster_cidrs: self.cluster_cidr,
                cni: CniSettings {
                    network_name: self.network_name,
                    // Settled at start-up by asking the chained plugins.
                    cni_version: crate::node::cni_versions::PREFERRED.into(),
                    mtu: self.mtu,
                    data_dir: self.paths.cni_data_dir,
                    run_dir: self.paths.run_dir.clone(),
                    bpf_pin_dir: self.paths.bpf_pin_dir.clone(),
                    veth_prefix: self.veth_prefix,
                    chain_portmap: !self.no_portmap,
                },
            },
            masquerade: !self.no_masquerade,
            cni_bin_dirs: std::env::split_paths(&self.cni_bin_dir).collect(),
            status_addr: self.status_addr,
            socket_lb_cgroup: (!self.no_socket_lb).then_some(self.socket_lb_cgroup),
            dir_poll: std::time::Duration::from_millis(self.dir_poll_ms.max(10)),
            in_cluster: InClusterSettings {
                setting,
                kubelet_kubeconfig: self.kubelet_kubeconfig,
                service_account_dir: self.serviceaccount_dir,
            },
            cni_conf_dir: self.paths.cni_conf_dir,
            run_dir: self.paths.run_dir,
            bpf_pin_dir: self.paths.bpf_pin_dir,
            flows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<AgentConfig, String> {
        parse_with_cidr("10.244.3.4/16", extra)
    }

    fn parse_with_cidr(cidr: &str, extra: &[&str]) -> Result<AgentConfig, String> {
        let mut args = vec!["weir-agent", "run", "--node-name", "n1", "--cluster-cidr", cidr];
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else { unreachable!() };
        run.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_normalisation() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.plan.cluster_cidrs.to_string(), "10.244.0.0/16");
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/weir"));
        assert!(c.masquerade && c.plan.cni.chain_portmap);
        assert_eq!(c.source, SourceSpec::Kube { kubeconfig: None });
        assert_eq!(c.flows, crate::observe::flows::FlowSettings::default());
        assert!(c.flows.log.is_none() && c.flows.events_per_sec > 0);
    }

    #[test]
    fn cluster_cidr_takes_one_per_family() {
        let c = parse_with_cidr("10.244.0.0/16,fd00:10:244::/56", &[]).unwrap();
        assert_eq!(c.plan.cluster_cidrs.to_string(), "10.244.0.0/16,fd00:10:244::/56");
        let c = parse_with_cidr("fd00:10:244::7/56", &[]).unwrap();
        assert_eq!(c.plan.cluster_cidrs.to_string(), "fd00:10:244::/56");
        assert_eq!(c.plan.cluster_cidrs.v4, None);
    }

    #[test]
    fn flow_settings() {
        use crate::observe::flows::sink::LogTarget;
        let c = parse(&["--flow-events-per-sec", "0", "--flow-buffer", "10", "--flow-log", "stdout"]).unwrap();
        assert_eq!((c.flows.events_per_sec, c.flows.buffer), (0, 10));
        assert_eq!(c.flows.log, Some(LogTarget::Stdout));
        let c = parse(&["--flow-log", "/var/log/weir/flows.log", "--flow-log-max-bytes", "1000"]).unwrap();
        assert_eq!(c.flows.log, Some(LogTarget::File("/var/log/weir/flows.log".into())));
        assert_eq!(c.flows.log_max_bytes, 1000);
        assert!(parse(&["--flow-log", "off"]).unwrap().flows.log.is_none());
        assert!(parse(&["--flow-buffer", "100000000"]).unwrap_err().contains("--flow-buffer"));
    }

    #[test]
    fn observe_arguments() {
        let cli = Cli::try_parse_from([
            "weir-agent",
            "observe",
            "-f",
            "--pod",
            "y/b",
            "--verdict",
            "dropped",
            "--since",
            "5m",
            "--json",
            "--run-dir",
            "/tmp/x",
        ])
        .unwrap();
        let Command::Observe(args) = cli.command else { panic!("not observe") };
        assert!(args.follow && args.json);
        assert_eq!(args.since, Some(300_000));
        assert_eq!(args.run_dir, PathBuf::from("/tmp/x"));
        assert!(Cli::try_parse_from(["weir-agent", "observe", "--since", "5x"]).is_err());
    }

    #[test]
    fn rejects_bad_values_with_the_flag_name() {
        assert!(parse(&["--mtu", "100"]).unwrap_err().contains("--mtu"));
        assert!(parse(&["--veth-prefix", "toolong"]).unwrap_err().contains("--veth-prefix"));
        assert!(parse(&["--veth-prefix", "w-"]).unwrap_err().contains("--veth-prefix"));
        assert!(parse(&["--source", "nope"]).unwrap_err().contains("unknown source"));
        assert!(parse_with_cidr("10.0.0.0/28", &[]).unwrap_err().contains("--cluster-cidr"));
        assert!(parse_with_cidr("fd00::/121", &[]).unwrap_err().contains("--cluster-cidr"));
        assert!(parse_with_cidr("fd00::/8", &[]).unwrap_err().contains("--cluster-cidr"));
        assert!(parse_with_cidr("fd00::/96", &[]).is_ok());
        assert!(parse_with_cidr("10.244.0.0/16,10.245.0.0/16", &[]).unwrap_err().contains("--cluster-cidr"));
        assert!(parse_with_cidr("10.244.0.0/16,banana", &[]).unwrap_err().contains("--cluster-cidr"));
        assert!(
            parse(&["--k8s-service-host", "cp", "--k8s-service-port", "x"]).unwrap_err().contains("--k8s-service-port")
        );
    }

    #[test]
    fn api_server_setting() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.in_cluster, InClusterSettings::default());
        let c = parse(&["--k8s-service-host", "172.18.0.2"]).unwrap();
        let setting = c.in_cluster.setting.unwrap();
        assert_eq!((setting.host.as_str(), setting.port), ("172.18.0.2", 6443));
        let c = parse(&["--k8s-service-host", "cp.example", "--k8s-service-port", "443"]).unwrap();
        assert_eq!(c.in_cluster.setting.unwrap().port, 443);
    }
}
