//! NetworkPolicy (networking.k8s.io/v1) with exactly the upstream semantics,
//! as pure data and an evaluator: "would this packet be allowed, and by
//! which policies". The evaluator is the reference the datapath's verdicts
//! are tested against, and what an operator asks through the agent.

pub mod compile;
pub mod evaluate;
pub mod identity;
pub mod keys;
pub mod numbering;
pub mod selector;
pub mod simulate;
pub mod types;
