//! Flow events (issue #13): what the datapath reports through the
//! `WEIR_FLOWS` ring buffer (a new flow allowed, a packet dropped, a flow
//! sent to a Service backend), named and kept by the agent, and shown by
//! `weir-agent observe` as `hubble observe` shows Cilium's.
//!
//! - `reader`: the per-CPU rate limit written at start, the ring buffer
//!   drained on every wake-up, the events the kernel held back;
//! - `names`: the name table the reconcile loop swaps after each pass
//!   (pods by address and interface, Service frontends, policy slots);
//! - `flow`: the named flow, as JSON and as one readable line;
//! - `buffer`: the bounded history; `hub`: history, live followers, the
//!   counters of /metrics and the log file, fed by the reader;
//! - `filter`: what a client asks for; `server`: `<run dir>/flows.sock`;
//! - `sink`: the JSON lines log with its size-based rotation;
//! - `cli`: `weir-agent observe`.
pub mod buffer;
pub mod cli;
pub mod filter;
pub mod flow;
pub mod hub;
pub mod names;
pub mod reader;
pub mod server;
pub mod sink;

pub use flow::{Flow, Peer};
pub use hub::Hub;
pub use names::NameTable;

/// The flows socket in the run dir.
pub const SOCKET_FILE: &str = "flows.sock";

/// Flow settings of `weir-agent run` (see `config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    /// Events per second per CPU the datapath may send (0: none).
    pub events_per_sec: u64,
    /// Most events a CPU may send at once.
    pub burst: u64,
    /// Flows kept in memory for `observe --last`.
    pub buffer: usize,
    /// Where flows are logged as JSON lines, if anywhere.
    pub log: Option<sink::LogTarget>,
    /// Size at which the log file is rotated to `<path>.1` (0: never).
    pub log_max_bytes: u64,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            events_per_sec: weir_common::flow::FLOW_RATE_DEFAULT_PER_SEC,
            burst: weir_common::flow::FLOW_RATE_DEFAULT_BURST,
            buffer: DEFAULT_BUFFER,
            log: None,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }
}

pub const DEFAULT_BUFFER: usize = 4096;
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
