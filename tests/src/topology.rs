//! A cluster in network namespaces: a "switch" namespace holding a bridge,
//! and one namespace per node joined to it by a veth pair (the node's eth0).
//! Nothing is created in the root namespace: every link is created from
//! inside the switch namespace, its peer moved straight into the node's.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    agent::Agent,
    bins, bpffs,
    cleanup::{self, BPFFS, RunPrefix},
    cni::{CniRuntime, Conflist},
    exec, manifest,
    netns::NetNs,
};

/// The whole pod CIDR; node i (from 1) gets 10.244.i.0/24 unless told otherwise.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The network the nodes' eth0 share: node i is 172.30.0.(10+i)/24.
pub const NODE_NETWORK_PREFIX_LEN: u8 = 24;
/// The IPv6 pod CIDR of a dual-stack or IPv6-only topology (ULA, inside the
/// test's namespaces only): node i gets fd00:10:244:i::/64.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";
/// The node network's IPv6 prefix: node i's eth0 also has fd00:172:30::(10+i)/64.
pub const NODE_NETWORK_V6: &str = "fd00:172:30::";

/// The address families of a topology's cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Families {
    #[default]
    Ipv4,
    /// Every node has an IPv4 and an IPv6 pod CIDR and InternalIP.
    DualStack,
    /// Nodes have IPv6 pod CIDRs and InternalIPs only (their eth0 keeps its
    /// IPv4 address, which no Node object names).
    Ipv6,
}
/// Name of the conflist the agent writes (docs/contracts.md).
pub const CONFLIST_FILE: &str = "10-weir.conflist";
/// The host veth name prefix weir-cni uses unless configured otherwise.
pub const VETH_PREFIX: &str = "weir";

pub struct TopologyBuilder {
    label: String,
    nodes: usize,
    pod_cidrs: BTreeMap<usize, String>,
    detached: bool,
    families: Families,
}

impl TopologyBuilder {
    /// The cluster's address families (IPv4 unless told).
    pub fn families(mut self, families: Families) -> Self {
        self.families = families;
        self
    }

    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Overrides node `index`'s podCIDR (1-based), e.g. a /28 to test exhaustion.
    pub fn pod_cidr(mut self, index: usize, cidr: &str) -> Self {
        self.pod_cidrs.insert(index, cidr.to_string());
        self
    }

    /// Processes started for this topology (agents, servers) survive it:
    /// for a sandbox that is kept up after the command returns.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    pub fn build(self) -> Result<Topology> {
        crate::require_root()?;
        ensure!((1..=200).contains(&self.nodes), "a topology has 1 to 200 nodes, not {}", self.nodes);
        bpffs::ensure_mounted()?;
        let prefix = RunPrefix::random();
        cleanup::register(&prefix, &self.label)?;
        let root = prefix.scratch_dir();
        // From here on, dropping `topo` removes whatever was made so far.
        let mut topo = Topology {
            switch: None,
            nodes: Vec::new(),
            manifest_dir: root.join("manifests"),
            root,
            prefix,
            detached: self.detached,
            kept: false,
        };
        fs::create_dir_all(&topo.manifest_dir).with_context(|| format!("create {}", topo.manifest_dir.display()))?;

        let switch = NetNs::create(&topo.prefix.child("sw"))?;
        switch.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.run(&["ip", "link", "set", "br0", "up"])?;
        topo.switch = Some(switch);

        for index in 1..=self.nodes {
            let pod_cidr = self.pod_cidrs.get(&index).cloned().unwrap_or_else(|| format!("10.244.{index}.0/24"));
            let node = topo.add_node(index, &pod_cidr, self.families)?;
            topo.nodes.push(node);
        }
        let docs: Vec<String> = topo.nodes.iter().map(Node::yaml).collect();
        // Written once complete (temp + rename): the agents poll this dir.
        topo.write_manifest("nodes.yaml", &docs)?;
        // The namespace `Pod::create`'s pods live in, as in every cluster.
        topo.write_manifest("namespace_default.yaml", &[manifest::namespace_yaml("default", &BTreeMap::new())])?;
        Ok(topo)
    }
}

/// Per-node directories, all under the run's scratch dir.
#[derive(Clone, Debug)]
pub struct NodeDirs {
    pub root: PathBuf,
    pub cni_conf: PathBuf,
    pub cni_data: PathBuf,
    pub run: PathBuf,
    /// The mini runtime's result cache.
    pub cni_cache: PathBuf,
    pub logs: PathBuf,
    /// Document roots of the pods' HTTP servers.
    pub www: PathBuf,
}

pub struct Node {
    pub name: String,
    pub index: usize,
    /// eth0's address (the Node's InternalIP).
    pub ip: Ipv4Addr,
    /// The IPv4 pod CIDR (not in the Node object of an IPv6-only topology).
    pub pod_cidr: String,
    /// eth0's IPv6 address and the IPv6 pod CIDR, in a dual-stack or
    /// IPv6-only topology.
    pub ip6: Option<Ipv6Addr>,
    pub pod_cidr_v6: Option<String>,
    pub families: Families,
    /// The agent's `--cluster-cidr`: one CIDR per family of the topology.
    pub cluster_cidr: String,
    pub netns: NetNs,
    pub dirs: NodeDirs,
    /// `/sys/fs/bpf/<prefix>-<node>`: the agent's bpfPinDir.
    pub pin_dir: PathBuf,
    /// The topology's manifest directory (what the agents read): pods
    /// created on this node publish their Pod object there.
    pub manifest_dir: PathBuf,
    prefix: RunPrefix,
    detached: bool,
}

impl Node {
    /// The Node object the agents read.
    pub fn yaml(&self) -> String {
        let (v6_cidr, v6_ip) = (self.pod_cidr_v6.as_deref(), self.ip6.map(IpAddr::V6));
        let (cidrs, ips): (Vec<&str>, Vec<IpAddr>) = match self.families {
            Families::Ipv4 => (vec![&self.pod_cidr], vec![self.ip.into()]),
            Families::DualStack => {
                (vec![&self.pod_cidr, v6_cidr.unwrap_or_default()], vec![self.ip.into(), v6_ip.expect("IPv6 node")])
            }
            Families::Ipv6 => (vec![v6_cidr.unwrap_or_default()], vec![v6_ip.expect("IPv6 node")]),
        };
        manifest::node_yaml_families(&self.name, &cidrs, &ips)
    }

    /// The gateway pods use: the first host address of the podCIDR.
    pub fn gateway(&self) -> Result<Ipv4Addr> {
        let (net, _) = parse_cidr(&self.pod_cidr)?;
        Ok(Ipv4Addr::from(u32::from(net) + 1))
    }

    pub fn prefix(&self) -> &RunPrefix {
        &self.prefix
    }

    pub fn detached(&self) -> bool {
        self.detached
    }

    /// A runtime that runs plugins in this node's namespace, with weir-cni's
    /// directory and the reference plugins in CNI_PATH.
    pub fn runtime(&self) -> CniRuntime {
        CniRuntime::new(Some(self.netns.path()), bins::cni_path(), &self.dirs.cni_cache)
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.dirs.cni_conf.join(CONFLIST_FILE)
    }

    /// The routes weir's agent made (routing protocol 87), as `ip route`
    /// prints them.
    pub fn routes_of_weir(&self) -> Result<Vec<String>> {
        Ok(self
            .netns
            .run(&["ip", "-4", "route", "show", "proto", "87"])?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The conflist the agent wrote.
    pub fn agent_conflist(&self) -> Result<Conflist> {
        Conflist::load(&self.conflist_path())
    }

    /// The agent's conflist with weir-cni alone, at 1.1.0: the agent lowers
    /// the list's version only for what the chained plugins speak (Debian's
    /// portmap stops at 1.0.0), and runtimes send GC and STATUS to 1.1.0
    /// lists only.
    pub fn weir_only_conflist(&self) -> Result<Conflist> {
        Ok(self.agent_conflist()?.only(&["weir-cni"]).with_version("1.1.0"))
    }

    /// The conflist of docs/contracts.md with this node's podCIDR and
    /// directories, for tests that run weir-cni without (or before) the agent.
    pub fn contract_conflist(&self) -> Conflist {
        let value = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "weir",
            "plugins": [
                {
                    "type": "weir-cni",
                    "podCIDR": self.pod_cidr,
                    "clusterCIDR": CLUSTER_CIDR,
                    "mtu": 1500,
                    "dataDir": self.dirs.cni_data,
                    "runDir": self.dirs.run,
                    "bpfPinDir": self.pin_dir,
                    "vethPrefix": VETH_PREFIX
                },
                { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
            ]
        });
        Conflist::from_value(value).expect("the contract conflist is well formed")
    }

    /// weir-cni's IPAM store for a network: `<dataDir>/ipam/<network>/`.
    pub fn ipam_dir(&self, network: &str) -> PathBuf {
        self.dirs.cni_data.join("ipam").join(network)
    }

    /// Addresses reserved in the IPAM store, with their `containerID\nifname`.
    pub fn reservations(&self, network: &str) -> Result<Vec<Reservation>> {
        let dir = self.ipam_dir(network);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let mut lines = text.lines();
            out.push(Reservation {
                ip,
                container_id: lines.next().unwrap_or_default().trim().to_string(),
                ifname: lines.next().unwrap_or_default().trim().to_string(),
            });
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    /// Host-side pod veths in the node namespace (names with weir's prefix).
    pub fn host_veths(&self) -> Result<Vec<String>> {
        Ok(self.netns.links()?.into_iter().filter(|l| l.starts_with(VETH_PREFIX)).collect())
    }

    /// Legacy tcx link pins of pod veths, by file name:
    /// `<bpfPinDir>/links/<host veth>_in` and `_out`, what weir-cni made
    /// before pods moved to cls_bpf filters (the agent pins its own links,
    /// e.g. the uplink's, in the same dir; those are left out).
    pub fn legacy_link_pins(&self) -> Vec<String> {
        let dir = self.pin_dir.join(weir_common::pin::LINKS_DIR);
        let mut pins: Vec<String> = fs::read_dir(dir)
            .map(|es| {
                es.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(VETH_PREFIX))
                    .collect()
            })
            .unwrap_or_default();
        pins.sort();
        pins
    }

    /// A pod veth's legacy link pin for one direction (`<bpfPinDir>/links/<veth>_in|_out`).
    pub fn legacy_link_pin(&self, host_veth: &str, direction: Direction) -> PathBuf {
        self.pin_dir.join(weir_common::pin::LINKS_DIR).join(format!("{host_veth}{}", direction.link_suffix()))
    }

    /// Where the agent pins a pod program (`<bpfPinDir>/progs/<name>`).
    pub fn prog_pin(&self, direction: Direction) -> PathBuf {
        self.pin_dir.join(weir_common::pin::PROGS_DIR).join(direction.program())
    }

    /// The ID of the program the agent pinned for `direction`.
    pub fn pinned_prog_id(&self, direction: Direction) -> Result<u32> {
        bpffs::pinned_prog_id(&self.prog_pin(direction))
    }

    /// The tc BPF filters on the pod veths (host veths with weir's prefix),
    /// both directions, sorted by veth and direction.
    pub fn pod_filters(&self) -> Result<Vec<PodFilter>> {
        let mut veths = self.host_veths()?;
        veths.sort();
        let mut out = Vec::new();
        for veth in veths {
            match self.tc_filters(&veth) {
                Ok(f) => out.extend(f),
                // Deleted since it was listed (a DEL or GC running).
                Err(_) if !self.host_veths()?.contains(&veth) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The tc BPF filters of one interface, ingress then egress
    /// (`tc -j filter show dev <veth> ingress|egress` in the node namespace).
    pub fn tc_filters(&self, dev: &str) -> Result<Vec<PodFilter>> {
        let mut out = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            let json = self.netns.run(&["tc", "-j", "filter", "show", "dev", dev, direction.tc_name()])?;
            out.extend(parse_tc_filters(dev, direction, &json)?);
        }
        Ok(out)
    }

    /// What docs/contracts.md says a pod veth carries: one direct-action
    /// cls_bpf filter per direction at (`POD_FILTER_PRIORITY`,
    /// `POD_FILTER_HANDLE`), protocol all, named after and running the
    /// program the agent pinned now.
    pub fn expected_pod_filters(&self, host_veth: &str) -> Result<Vec<PodFilter>> {
        [Direction::Ingress, Direction::Egress]
            .into_iter()
            .map(|direction| {
                Ok(PodFilter {
                    veth: host_veth.to_string(),
                    direction,
                    priority: u32::from(weir_common::pin::POD_FILTER_PRIORITY),
                    handle: weir_common::pin::POD_FILTER_HANDLE,
                    protocol: "all".to_string(),
                    direct_action: true,
                    name: direction.program().to_string(),
                    prog_id: self.pinned_prog_id(direction)?,
                })
            })
            .collect()
    }

    /// Entries in the endpoint map weir-cni writes (`bpftool map dump`),
    /// or None when the agent has not pinned the map.
    pub fn endpoint_entries(&self) -> Result<Option<usize>> {
        let map = self.pin_dir.join(weir_common::pin::MAPS_DIR).join(weir_common::pin::MAP_ENDPOINTS);
        if !map.exists() {
            return Ok(None);
        }
        let map = map.to_str().context("non-UTF-8 pin path")?;
        let json = exec::run(
            std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned", map]),
            exec::DEFAULT_TIMEOUT,
        )?;
        let entries: Vec<serde_json::Value> = serde_json::from_str(&json).context("parse `bpftool -j map dump`")?;
        Ok(Some(entries.len()))
    }

    /// What weir-cni leaves on the node per attachment, to compare before
    /// and after an operation.
    pub fn snapshot(&self, network: &str) -> Result<NodeSnapshot> {
        Ok(NodeSnapshot {
            reservations: self.reservations(network)?,
            host_veths: {
                let mut v = self.host_veths()?;
                v.sort();
                v
            },
            pod_filters: self.pod_filters()?,
            legacy_link_pins: self.legacy_link_pins(),
            endpoint_entries: self.endpoint_entries()?,
        })
    }

    /// Name of a pod's namespace on this node.
    pub fn pod_netns_name(&self, pod: &str) -> String {
        self.prefix.child(&format!("{}-{pod}", self.name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub reservations: Vec<Reservation>,
    pub host_veths: Vec<String>,
    /// The tc BPF filters of the pod veths.
    pub pod_filters: Vec<PodFilter>,
    pub legacy_link_pins: Vec<String>,
    pub endpoint_entries: Option<usize>,
}

/// A pod veth's tc hook: ingress runs `weir_from_pod`, egress `weir_to_pod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn program(self) -> &'static str {
        match self {
            Self::Ingress => weir_common::pin::PROG_FROM_POD,
            Self::Egress => weir_common::pin::PROG_TO_POD,
        }
    }

    /// `tc filter show dev <veth> <this>`.
    pub fn tc_name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    /// The suffix of the legacy tcx link pin.
    pub fn link_suffix(self) -> &'static str {
        match self {
            Self::Ingress => weir_common::pin::LINK_SUFFIX_FROM_POD,
            Self::Egress => weir_common::pin::LINK_SUFFIX_TO_POD,
        }
    }

    pub fn is_egress(self) -> bool {
        self == Self::Egress
    }
}

/// One tc BPF filter (cls_bpf) on a pod veth, as `tc -j filter show` tells it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodFilter {
    pub veth: String,
    pub direction: Direction,
    /// `pref`.
    pub priority: u32,
    pub handle: u32,
    /// "all" for ETH_P_ALL.
    pub protocol: String,
    pub direct_action: bool,
    /// The filter's name (what the attacher called it: the program's name).
    pub name: String,
    pub prog_id: u32,
}

/// The BPF filters in `tc -j filter show dev <dev> <direction>` output. tc
/// prints each filter's priority line once without options; the entries
/// with options are the filters.
pub fn parse_tc_filters(dev: &str, direction: Direction, json: &str) -> Result<Vec<PodFilter>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(json).with_context(|| format!("parse `tc -j filter show`: {json}"))?;
    let mut out = Vec::new();
    for e in entries {
        if e["kind"] != "bpf" {
            continue;
        }
        let Some(options) = e.get("options") else { continue };
        let handle = match &options["handle"] {
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(0) as u32,
            serde_json::Value::String(s) => u32::from_str_radix(s.trim_start_matches("0x"), 16)
                .with_context(|| format!("filter handle {s:?} in {json}"))?,
            _ => 0,
        };
        out.push(PodFilter {
            veth: dev.to_string(),
            direction,
            priority: e["pref"].as_u64().unwrap_or(0) as u32,
            handle,
            protocol: e["protocol"].as_str().unwrap_or_default().to_string(),
            direct_action: options["direct-action"].as_bool().unwrap_or(false),
            name: options["bpf_name"].as_str().unwrap_or_default().to_string(),
            prog_id: options["prog"]["id"].as_u64().unwrap_or(0) as u32,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

pub struct Topology {
    prefix: RunPrefix,
    root: PathBuf,
    manifest_dir: PathBuf,
    switch: Option<NetNs>,
    nodes: Vec<Node>,
    detached: bool,
    kept: bool,
}

impl Topology {
    /// `label` says what the run is for (a test name, "sandbox", "bench").
    pub fn builder(label: &str) -> TopologyBuilder {
        TopologyBuilder {
            label: label.to_string(),
            nodes: 2,
            pod_cidrs: BTreeMap::new(),
            detached: false,
            families: Families::Ipv4,
        }
    }

    pub fn prefix(&self) -> &RunPrefix {
        &self.prefix
    }

    /// The run's scratch dir (`<tmp>/<prefix>-bed`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest_dir(&self) -> &Path {
        &self.manifest_dir
    }

    pub fn switch(&self) -> &NetNs {
        self.switch.as_ref().expect("built topologies have a switch")
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node by name (`n1`, `n2`, ...).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name} in this topology"))
    }

    /// Starts `weir-agent` on a node and waits until it reports ready.
    pub fn start_agent(&self, node: &str) -> Result<Agent> {
        let mut agent = Agent::spawn(self.node(node), &self.manifest_dir)?;
        agent.wait_ready(Agent::ready_timeout())?;
        Ok(agent)
    }

    /// Starts an agent on every node (together), then waits for each.
    pub fn start_agents(&self) -> Result<Vec<Agent>> {
        let mut agents: Vec<Agent> =
            self.nodes.iter().map(|n| Agent::spawn(n, &self.manifest_dir)).collect::<Result<_>>()?;
        for agent in &mut agents {
            agent.wait_ready(Agent::ready_timeout())?;
        }
        Ok(agents)
    }

    /// Like `start_agents`, with every agent reading `source`
    /// (`agent::Source::Kube`: through a fake API server per node).
    pub fn start_agents_with(&self, source: crate::agent::Source) -> Result<Vec<Agent>> {
        let mut agents: Vec<Agent> =
            self.nodes.iter().map(|n| Agent::spawn_from(n, &self.manifest_dir, source, None)).collect::<Result<_>>()?;
        for agent in &mut agents {
            agent.wait_ready(Agent::ready_timeout())?;
        }
        Ok(agents)
    }

    /// Leaves everything up after this guard goes (see `cargo xtask sandbox --down`).
    pub fn keep(mut self) -> Result<RunPrefix> {
        cleanup::mark_kept(&self.prefix)?;
        self.kept = true;
        if let Some(s) = self.switch.as_mut() {
            s.disown();
        }
        for n in &mut self.nodes {
            n.netns.disown();
        }
        Ok(self.prefix.clone())
    }

    /// A one-node cluster with its agent ready, the start of most CNI
    /// tests; fails the test when root or a base tool is missing.
    pub fn one_node_with_agent(label: &str) -> (Topology, Agent) {
        crate::privileged(crate::tools::BASE);
        let topo = Topology::builder(label).nodes(1).build().expect("topology");
        let agent = topo.start_agent("n1").expect("agent on n1");
        (topo, agent)
    }

    /// Writes (or replaces) a manifest file the agents read, atomically.
    pub fn write_manifest(&self, file: &str, docs: &[String]) -> Result<()> {
        write_manifest_file(&self.manifest_dir, file, docs)
    }

    /// Removes a manifest file (the objects in it are deleted); absent is fine.
    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        remove_manifest_file(&self.manifest_dir, file)
    }

    /// A host on the node network that is not a node (the "external client"
    /// of NodePort tests): `172.30.0.<host>`, on the switch.
    pub fn external_host(&self, name: &str, host: u8) -> Result<(NetNs, Ipv4Addr)> {
        let ip = Ipv4Addr::new(172, 30, 0, host);
        let netns = NetNs::create(&self.prefix.child(name))?;
        let port = format!("to-{name}");
        self.switch().run(&[
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        self.switch().run(&["ip", "link", "set", &port, "master", "br0", "up"])?;
        netns.run(&["ip", "addr", "add", &format!("{ip}/{NODE_NETWORK_PREFIX_LEN}"), "dev", "eth0"])?;
        netns.run(&["ip", "link", "set", "eth0", "up"])?;
        Ok((netns, ip))
    }

    fn add_node(&self, index: usize, pod_cidr: &str, families: Families) -> Result<Node> {
        parse_cidr(pod_cidr).with_context(|| format!("podCIDR of node {index}"))?;
        let name = format!("n{index}");
        let ip = Ipv4Addr::new(172, 30, 0, 10 + index as u8);
        let netns = NetNs::create(&self.prefix.child(&name))?;
        let switch = self.switch();
        // Created inside the switch namespace; the node end goes straight to
        // the node's namespace under its final name.
        let port = format!("to-{name}");
        switch.run(&["ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", netns.name()])?;
        switch.run(&["ip", "link", "set", &port, "master", "br0", "up"])?;
        netns.run(&["ip", "addr", "add", &format!("{ip}/{NODE_NETWORK_PREFIX_LEN}"), "dev", "eth0"])?;
        netns.run(&["ip", "link", "set", "eth0", "up"])?;
        // The agent's job too; harmless here, and the reference bridge plugin
        // in the benchmark relies on it.
        netns.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let with_v6 = families != Families::Ipv4;
        let ip6: Option<Ipv6Addr> = with_v6.then(|| format!("{NODE_NETWORK_V6}{}", 10 + index).parse()).transpose()?;
        if let Some(ip6) = ip6 {
            // No duplicate address detection: usable at once.
            netns.run(&["ip", "-6", "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        }
        let pod_cidr_v6 = with_v6.then(|| format!("fd00:10:244:{index:x}::/64"));
        let cluster_cidr = match families {
            Families::Ipv4 => CLUSTER_CIDR.to_string(),
            Families::DualStack => format!("{CLUSTER_CIDR},{CLUSTER_CIDR_V6}"),
            Families::Ipv6 => CLUSTER_CIDR_V6.to_string(),
        };

        let root = self.root.join(&name);
        let dirs = NodeDirs {
            cni_conf: root.join("cni-conf"),
            cni_data: root.join("cni-data"),
            run: root.join("run"),
            cni_cache: root.join("cni-cache"),
            logs: root.join("logs"),
            www: root.join("www"),
            root,
        };
        for d in [&dirs.cni_conf, &dirs.cni_data, &dirs.run, &dirs.cni_cache, &dirs.logs, &dirs.www] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let pin_dir = Path::new(BPFFS).join(self.prefix.child(&name));
        fs::create_dir_all(&pin_dir).with_context(|| format!("create {}", pin_dir.display()))?;
        Ok(Node {
            name,
            index,
            ip,
            pod_cidr: pod_cidr.to_string(),
            ip6,
            pod_cidr_v6,
            families,
            cluster_cidr,
            netns,
            dirs,
            pin_dir,
            manifest_dir: self.manifest_dir.clone(),
            prefix: self.prefix.clone(),
            detached: self.detached,
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let report = cleanup::sweep(&self.prefix);
        if !report.errors.is_empty() {
            eprintln!("weir-testbed: cleanup of {} incomplete: {report}", self.prefix);
        }
    }
}

/// Writes `docs` as `<dir>/<file>` in one step (temp file + rename; the
/// agents' manifest source skips the `.tmp` name), so an agent never reads
/// half a file.
pub fn write_manifest_file(dir: &Path, file: &str, docs: &[String]) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    fs::write(&tmp, manifest::documents(docs)).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(file)).with_context(|| format!("rename {}", tmp.display()))?;
    Ok(())
}

/// Removes `<dir>/<file>`; a file already gone is fine.
pub fn remove_manifest_file(dir: &Path, file: &str) -> Result<()> {
    match fs::remove_file(dir.join(file)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.join(file).display())),
    }
}

/// "10.244.1.0/24" -> (network address, prefix length); the address must be
/// the network's first.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, len) = cidr.split_once('/').with_context(|| format!("`{cidr}` is not a CIDR"))?;
    let ip: Ipv4Addr = ip.parse().with_context(|| format!("`{cidr}`: bad address"))?;
    let len: u8 = len.parse().with_context(|| format!("`{cidr}`: bad prefix length"))?;
    if len > 32 {
        bail!("`{cidr}`: prefix length over 32");
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(ip) & !mask != 0 {
        bail!("`{cidr}` has host bits set");
    }
    Ok((ip, len))
}

/// Whether `ip` lies in `cidr`.
pub fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    parse_cidr(cidr).is_ok_and(|(net, len)| {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(ip) & mask == u32::from(net)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        assert_eq!(parse_cidr("10.244.1.0/24").unwrap(), (Ipv4Addr::new(10, 244, 1, 0), 24));
        assert!(parse_cidr("10.244.1.1/24").is_err());
        assert!(parse_cidr("10.244.1.0/33").is_err());
        assert!(parse_cidr("10.244.1.0").is_err());
        assert!(cidr_contains("10.244.1.0/28", Ipv4Addr::new(10, 244, 1, 15)));
        assert!(!cidr_contains("10.244.1.0/28", Ipv4Addr::new(10, 244, 1, 16)));
        assert!(cidr_contains(CLUSTER_CIDR, Ipv4Addr::new(10, 244, 200, 3)));
    }
}
