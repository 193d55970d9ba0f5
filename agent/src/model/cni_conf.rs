//! The CNI network configuration list the agent writes for `weir-cni`
//! (format in docs/contracts.md).
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
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

/// Renders the conflist. Deterministic, so "unchanged" is a string compare.
pub fn render(settings: &CniSettings, pod_cidr: Ipv4Network, cluster_cidr: Ipv4Network) -> String {
    let mut plugins = vec![json!({
        "type": "weir-cni",
        "podCIDR": pod_cidr.to_string(),
        "clusterCIDR": cluster_cidr.to_string(),
        "mtu": settings.mtu,
        "dataDir": settings.data_dir,
        "runDir": settings.run_dir,
        "bpfPinDir": settings.bpf_pin_dir,
        "vethPrefix": settings.veth_prefix,
    })];
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

    #[test]
    fn renders_contract_fields() {
        let text = render(&settings(), "10.244.3.0/24".parse().unwrap(), "10.244.0.0/16".parse().unwrap());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["name"], "weir");
        let weir = &v["plugins"][0];
        assert_eq!(weir["type"], "weir-cni");
        assert_eq!(weir["podCIDR"], "10.244.3.0/24");
        assert_eq!(weir["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(weir["mtu"], 1450);
        assert_eq!(weir["bpfPinDir"], "/sys/fs/bpf/weir");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn portmap_is_optional() {
        let mut s = settings();
        s.chain_portmap = false;
        let v: serde_json::Value =
            serde_json::from_str(&render(&s, "10.244.3.0/24".parse().unwrap(), "10.244.0.0/16".parse().unwrap()))
                .unwrap();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    }
}
