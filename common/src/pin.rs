//! Names under the bpffs pin directory (`/sys/fs/bpf/weir` on a real node).
//! The agent pins maps and programs there; `weir-cni` opens them at ADD/DEL.

/// Maps are pinned by name in `<pin dir>/maps/`.
pub const MAPS_DIR: &str = "maps";
/// Programs are pinned in `<pin dir>/progs/`.
pub const PROGS_DIR: &str = "progs";
/// tcx links (which live only as long as an fd or a pin holds them) are pinned
/// in `<pin dir>/links/`: the agent's own (uplink, sockets), and, from weir
/// versions before pods moved to cls_bpf, `<host veth>_in` / `_out`, which
/// the agent migrates at start.
pub const LINKS_DIR: &str = "links";

/// Map names: the same string is the map's symbol in the kernel crate.
pub const MAP_ENDPOINTS: &str = "WEIR_ENDPOINTS";
/// Endpoint ifindex -> the pod's IPv6 address (16 bytes), for pods that
/// have one: the source a pod may send IPv6 from. Kept beside
/// `WEIR_ENDPOINTS` rather than in its value so that a node's pinned
/// endpoint map keeps its layout across upgrades.
pub const MAP_ENDPOINTS6: &str = "WEIR_ENDPOINTS6";
pub const MAP_DROPS: &str = "WEIR_DROPS";
pub const MAP_SVC: &str = "WEIR_SVC";
pub const MAP_BACKENDS: &str = "WEIR_BACKENDS";
pub const MAP_REVNAT: &str = "WEIR_REVNAT";
pub const MAP_CT: &str = "WEIR_CT";
/// TCP connections between pods of one node that go from veth to veth.
pub const MAP_LOCAL_FLOWS: &str = "WEIR_LOCAL_FLOWS";
/// The same for IPv6.
pub const MAP_LOCAL_FLOWS6: &str = "WEIR_LOCAL_FLOWS6";
pub const MAP_AFFINITY: &str = "WEIR_AFFINITY";
pub const MAP_SRC_RANGES: &str = "WEIR_SRC_RANGE";
pub const MAP_NODE: &str = "WEIR_NODE";
/// The IPv6 Service maps (`common/src/lb.rs`): same layout as the IPv4
/// ones, IDs from the same spaces.
pub const MAP_SVC6: &str = "WEIR_SVC6";
pub const MAP_BACKENDS6: &str = "WEIR_BACKENDS6";
pub const MAP_REVNAT6: &str = "WEIR_REVNAT6";
pub const MAP_AFFINITY6: &str = "WEIR_AFFINITY6";
pub const MAP_SRC_RANGES6: &str = "WEIR_SRC_RANGE6";
pub const MAP_CT6: &str = "WEIR_CT6";
/// `NodeConfig6`: the node's IPv6 pod gateway, for hairpin.
pub const MAP_NODE6: &str = "WEIR_NODE6";
/// The IPv6 per-packet Service path: `weir_from_pod` and `weir_to_pod`
/// hand an IPv6 packet that passed their checks to these programs by tail
/// call (a fresh stack: the IPv6 keys do not fit beside the IPv4 path's
/// frame), through this program array, which the agent fills at load.
pub const MAP_TAIL6: &str = "WEIR_TAIL6";
pub const PROG_FROM_POD6: &str = "weir_from_pod6";
pub const PROG_TO_POD6: &str = "weir_to_pod6";
/// The egress policy of an IPv6 packet `weir_from_pod6` translated (or
/// found not to be a Service's), tail-called from it.
pub const PROG_EGRESS6: &str = "weir_egress6";
/// Slots of `WEIR_TAIL6`.
pub const TAIL_FROM_POD6: u32 = 0;
pub const TAIL_TO_POD6: u32 = 1;
pub const TAIL_EGRESS6: u32 = 2;
/// The IPv6 uplink path (NodePort, external and load-balancer IPs from
/// outside): `weir_from_netdev` and `weir_to_netdev` hand an IPv6 packet to
/// these programs by tail call through this array (the agent fills it at
/// load), as the pod programs do through `WEIR_TAIL6`.
pub const MAP_NETDEV6: &str = "WEIR_NETDEV6";
pub const PROG_FROM_NETDEV6: &str = "weir_from_netdev6";
pub const PROG_TO_NETDEV6: &str = "weir_to_netdev6";
/// Slots of `WEIR_NETDEV6`.
pub const NETDEV6_FROM: u32 = 0;
pub const NETDEV6_TO: u32 = 1;
/// Veth-to-veth delivery of a pod's IPv6 packet (`ebpf/src/local6.rs`),
/// tail-called by `weir_from_pod6` for a packet it lets go without a
/// policy check (a fresh stack: its own frames are full), through this
/// one-slot array. Empty: those packets go the kernel's way.
pub const MAP_DELIVER6: &str = "WEIR_DELIVER6";
pub const PROG_DELIVER6: &str = "weir_deliver6";
pub const DELIVER6_SLOT: u32 = 0;
/// `Uplink6`: the node's IPv6 address (the SNAT source) and its uplink.
pub const MAP_UPLINK6: &str = "WEIR_UPLINK6";
/// The clients of IPv6 flows SNATed to a remote backend (`Nat6`, keyed
/// by the flow's reply-direction `CtKey6`).
pub const MAP_SNAT6: &str = "WEIR_SNAT6";
/// NetworkPolicy (names stay under the kernel's 15 characters).
pub const MAP_IPCACHE: &str = "WEIR_IPCACHE";
pub const MAP_POLICY: &str = "WEIR_POLICY";
pub const MAP_POLICY_CT: &str = "WEIR_POLICY_CT";
/// The IPv6 ipcache and policy conntrack (the policy map is shared).
pub const MAP_IPCACHE6: &str = "WEIR_IPCACHE6";
pub const MAP_POLICY_CT6: &str = "WEIR_POLICY_CT6";
pub const MAP_POLICY_HITS: &str = "WEIR_POL_HITS";
pub const MAP_EP_POLICY_STATS: &str = "WEIR_EP_POLSTAT";
/// Flow events (`flow.rs`): the ring buffer, its per-CPU rate limit (the
/// agent writes the rate into each CPU's entry), and events it held back.
pub const MAP_FLOWS: &str = "WEIR_FLOWS";
pub const MAP_FLOW_RATE: &str = "WEIR_FLOW_RATE";
pub const MAP_FLOW_LOST: &str = "WEIR_FLOW_LOST";

/// Program names: the function names in the kernel crate.
pub const PROG_FROM_POD: &str = "weir_from_pod";
pub const PROG_TO_POD: &str = "weir_to_pod";
/// Socket load balancing, attached to the cgroup (v2) that holds the
/// node's processes.
pub const PROG_SOCK_CONNECT4: &str = "weir_sock_connect4";
pub const PROG_SOCK_SENDMSG4: &str = "weir_sock_sendmsg4";
pub const PROG_SOCK_RECVMSG4: &str = "weir_sock_recvmsg4";
pub const PROG_SOCK_GETPEERNAME4: &str = "weir_sock_getpeername4";
pub const MAP_SOCK_REVNAT: &str = "WEIR_SOCK_REV";
pub const PROG_SOCK_CONNECT6: &str = "weir_sock_connect6";
pub const PROG_SOCK_SENDMSG6: &str = "weir_sock_sendmsg6";
pub const PROG_SOCK_RECVMSG6: &str = "weir_sock_recvmsg6";
pub const PROG_SOCK_GETPEERNAME6: &str = "weir_sock_getpeername6";
pub const MAP_SOCK_REVNAT6: &str = "WEIR_SOCK_REV6";

/// tc ingress of the node's uplink (the interface holding its InternalIP).
pub const PROG_FROM_NETDEV: &str = "weir_from_netdev";
/// tc egress of the uplink: replies of backends on the node's own stack.
pub const PROG_TO_NETDEV: &str = "weir_to_netdev";

/// How weir-cni attaches `weir_from_pod` (tc ingress of the host veth) and
/// `weir_to_pod` (tc egress): a direct-action cls_bpf filter under the
/// veth's clsact qdisc, at this priority and handle, for every protocol
/// (`ETH_P_ALL`). The filter lives as long as the veth (no pin). The agent
/// replaces the program of the filter at the same priority and handle to
/// move a pod to new programs atomically, so both sides must agree on these.
pub const POD_FILTER_PRIORITY: u16 = 1;
pub const POD_FILTER_HANDLE: u32 = 1;

/// Legacy link pins (tcx, before cls_bpf): `<pin dir>/links/<host veth><suffix>`.
pub const LINK_SUFFIX_FROM_POD: &str = "_in";
pub const LINK_SUFFIX_TO_POD: &str = "_out";

/// Capacity of the endpoint map: far more than the pods a node can run.
pub const MAX_ENDPOINTS: u32 = 4096;
