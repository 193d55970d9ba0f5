//! What the agent shows about itself and the node: the /healthz, /readyz
//! and /metrics endpoint (`status`, with the map-derived samples read off
//! the runtime), weir-cni's per-command reports (`cni_metrics`), and the
//! `weir-agent inspect` command that reads the pinned maps (`inspect`,
//! `inspect_policy`), and the small HTTP responder they share (`http`);
//! flow events and `weir-agent observe` (`flows`).
pub mod cni_metrics;
pub mod flows;
pub mod histogram;
pub mod http;
pub mod inspect;
pub mod inspect_policy;
pub mod status;
