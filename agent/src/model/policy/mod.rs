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

#[cfg(test)]
pub mod build {
    //! Builders for tests.
    use super::{
        selector::{LabelSelector, labels},
        types::{NetworkPolicyInfo, PolicyPeer, PolicyRule},
    };

    /// A selector of exactly these labels.
    pub fn sel(kv: &[(&str, &str)]) -> LabelSelector {
        LabelSelector { match_labels: labels(kv), expressions: vec![] }
    }

    /// An ipBlock: `cidr` less the `except` prefixes.
    pub fn ip_block(cidr: &str, except: &[&str]) -> PolicyPeer {
        PolicyPeer::IpBlock { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() }
    }

    /// Policy `key` (`namespace/name`) selecting `pods`; `None`: that
    /// direction is not in its policyTypes.
    pub fn policy(
        key: &str,
        pods: LabelSelector,
        ingress: Option<Vec<PolicyRule>>,
        egress: Option<Vec<PolicyRule>>,
    ) -> NetworkPolicyInfo {
        let (ns, _) = key.split_once('/').unwrap();
        NetworkPolicyInfo {
            key: key.into(),
            namespace: ns.into(),
            pod_selector: pods,
            ingress_enabled: ingress.is_some(),
            egress_enabled: egress.is_some(),
            ingress: ingress.unwrap_or_default(),
            egress: egress.unwrap_or_default(),
        }
    }
}
