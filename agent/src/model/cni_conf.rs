//! The CNI network configuration list the agent writes for `weir-cni`
//! (format in docs/contracts.md).
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::json;

/// Node-independent parts of the CNI config, from the agent's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniSettings {
    pub network_name: String,
    /// The list's cniVersion: the highest every chained plugin supports.
    pub cni_version: String,
    pub mtu: u32,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub bpf_pin_dir: PathBuf,
    pub veth_prefix: String,
    /// Chain the reference `portmap` plugin so `hostPort` works, as kindnet
    /// does.
    pub chain_portmap: bool,
}

pub const CONFLIST_FILE: &str = "10-weir.conflist";

/// This node's pod range and the cluster's of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyRanges {
    pub pod: IpNetwork,
    pub cluster: IpNetwork,
}

/// Renders the conflist for `ranges` (one per family, IPv4 first, at least
/// one). IPv4 goes in `podCIDR`/`clusterCIDR` as it always has (an IPv4-only
/// node's conflist is what it was before dual-stack, and older weir-cni
/// binaries read these); the lists `podCIDRs`/`clusterCIDRs` carry every
/// family once the node has IPv6. Deterministic, so "unchanged" is a string
/// compare.
pub fn render(settings: &CniSettings, ranges: &[FamilyRanges]) -> String {
    let mut weir = json!({
        "type": "weir-cni",
        "mtu": settings.mtu,
        "dataDir": settings.data_dir,
        "runDir": settings.run_dir,
        "bpfPinDir": settings.bpf_pin_dir,
        "vethPrefix": settings.veth_prefix,
    });
    if let Some(v4) = ranges.iter().find(|r| r.pod.is_ipv4()) {
        weir["podCIDR"] = json!(v4.pod.to_string());
        weir["clusterCIDR"] = json!(v4.cluster.to_string());
    }
    if ranges.iter().any(|r| r.pod.is_ipv6()) {
        weir["podCIDRs"] = json!(ranges.iter().map(|r| r.pod.to_string()).collect::<Vec<_>>());
        weir["clusterCIDRs"] = json!(ranges.iter().map(|r| r.cluster.to_string()).collect::<Vec<_>>());
    }
    let mut plugins = vec![weir];
    if settings.chain_portmap {
        plugins.push(json!({
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true,
        }));
    }
    let conflist = json!({
        "cniVersion": settings.cni_version,
        "name": settings.network_name,
        "plugins": plugins,
    });
    let mut text = serde_json::to_string_pretty(&conflist).expect("JSON values always serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CniSettings {
        CniSettings {
            network_name: "weir".into(),
            cni_version: "1.1.0".into(),
            mtu: 1450,
            data_dir: "/var/lib/cni/weir".into(),
            run_dir: "/run/weir".into(),
            bpf_pin_dir: "/sys/fs/bpf/weir".into(),
            veth_prefix: "weir".into(),
            chain_portmap: true,
        }
    }

    fn v4() -> FamilyRanges {
        FamilyRanges { pod: "10.244.3.0/24".parse().unwrap(), cluster: "10.244.0.0/16".parse().unwrap() }
    }

    fn v6() -> FamilyRanges {
        FamilyRanges { pod: "fd00:10:244:3::/64".parse().unwrap(), cluster: "fd00:10:244::/56".parse().unwrap() }
    }

    #[test]
    fn renders_contract_fields() {
        let text = render(&settings(), &[v4()]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["name"], "weir");
        let weir = &v["plugins"][0];
        assert_eq!(weir["type"], "weir-cni");
        assert_eq!(weir["podCIDR"], "10.244.3.0/24");
        assert_eq!(weir["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(weir["mtu"], 1450);
        assert_eq!(weir["bpfPinDir"], "/sys/fs/bpf/weir");
        // IPv4 only: no lists, as before dual-stack.
        assert!(weir.get("podCIDRs").is_none() && weir.get("clusterCIDRs").is_none());
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn dual_stack_carries_both_spellings_and_ipv6_only_the_lists() {
        let v: serde_json::Value = serde_json::from_str(&render(&settings(), &[v4(), v6()])).unwrap();
        let weir = &v["plugins"][0];
        assert_eq!(weir["podCIDR"], "10.244.3.0/24");
        assert_eq!(weir["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(weir["podCIDRs"], serde_json::json!(["10.244.3.0/24", "fd00:10:244:3::/64"]));
        assert_eq!(weir["clusterCIDRs"], serde_json::json!(["10.244.0.0/16", "fd00:10:244::/56"]));
        let v: serde_json::Value = serde_json::from_str(&render(&settings(), &[v6()])).unwrap();
        let weir = &v["plugins"][0];
        assert!(weir.get("podCIDR").is_none() && weir.get("clusterCIDR").is_none());
        assert_eq!(weir["podCIDRs"], serde_json::json!(["fd00:10:244:3::/64"]));
    }

    #[test]
    fn portmap_is_optional() {
        let mut s = settings();
        s.chain_portmap = false;
        let v: serde_json::Value = serde_json::from_str(&render(&s, &[v4()])).unwrap();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    }
}
