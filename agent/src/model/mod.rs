//! The pure part of the agent: cluster objects in, desired node state out.
//! No I/O and no Kubernetes types here; sources convert API objects into the
//! domain types below, and the node/datapath layers apply what this computes.

pub mod by_family;
pub mod cni_conf;
pub mod index;
pub mod intern;
pub mod lb;
pub mod node;
pub mod plan;
pub mod policy;
pub mod service;

pub use index::ClusterIndex;
pub use node::NodeInfo;
pub use plan::{NodePlan, PlanSettings};
