//! `--ip-family`: the kind cluster's families. `dual` creates it from
//! manifests/kind-config-dual.yaml (kind's `networking.ipFamily: dual`),
//! gives the agent both pod subnets as its cluster CIDR, and adds IPv6
//! pod-to-pod checks and the NetworkPolicy checks over IPv6. Services stay
//! IPv4 (IPv4 is the primary family, so Services get IPv4 ClusterIPs). No
//! `ipv6`: an IPv6-only cluster's Services, the `kubernetes` one and
//! CoreDNS's included, would be IPv6.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum IpFamily {
    #[default]
    Ipv4,
    Dual,
}

impl IpFamily {
    /// The kind config the cluster is created from, relative to the
    /// workspace root.
    pub fn kind_config(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "manifests/kind-config.yaml",
            IpFamily::Dual => "manifests/kind-config-dual.yaml",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Dual => "dual",
        }
    }
}

/// `networking.podSubnet` of a kind config (one CIDR per family,
/// comma-separated): what the agent's `cluster-cidr` must be.
pub fn pod_subnet(config: &str) -> Result<String> {
    let value = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("podSubnet:"))
        .context("the kind config has no networking.podSubnet")?;
    let value = value.split('#').next().unwrap_or_default().trim().trim_matches('"').trim_matches('\'');
    if value.is_empty() {
        bail!("the kind config's podSubnet is empty");
    }
    Ok(value.to_string())
}

/// manifests/weir.yaml with its ConfigMap's `cluster-cidr` set to `cidrs`.
pub fn with_cluster_cidr(manifest: &str, cidrs: &str) -> Result<String> {
    let mut found = false;
    let lines: Vec<String> = manifest
        .lines()
        .map(|l| {
            if !found && l.starts_with("  cluster-cidr: ") {
                found = true;
                format!("  cluster-cidr: \"{cidrs}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        bail!("manifests/weir.yaml has no `cluster-cidr:` in its ConfigMap");
    }
    let mut out = lines.join("\n");
    if manifest.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// The address of the family asked for among a pod's `status.podIPs` (or a
/// node's InternalIPs).
pub fn of_family(addresses: &[String], ipv6: bool) -> Option<&String> {
    addresses.iter().find(|a| a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6() == ipv6))
}

/// `host` as a URL's host part: an IPv6 address in brackets.
pub fn url_host(host: &str) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() { format!("[{host}]") } else { host.to_string() }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use weir_testbed::bins::workspace_root;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[arg(long, value_enum, default_value_t)]
        ip_family: IpFamily,
    }

    fn config(family: IpFamily) -> String {
        std::fs::read_to_string(workspace_root().join(family.kind_config())).unwrap()
    }

    #[test]
    fn ip_family_parses_and_defaults_to_ipv4() {
        assert_eq!(Cli::parse_from(["x"]).ip_family, IpFamily::Ipv4);
        assert_eq!(Cli::parse_from(["x", "--ip-family", "dual"]).ip_family, IpFamily::Dual);
        assert!(Cli::try_parse_from(["x", "--ip-family", "ipv6"]).is_err());
    }

    #[test]
    fn the_dual_config_is_dual_stack_without_cni_or_kube_proxy() {
        let dual = config(IpFamily::Dual);
        for want in [
            "kind: Cluster\n",
            "  ipFamily: dual\n",
            "  disableDefaultCNI: true\n",
            "  kubeProxyMode: none\n",
            "  serviceSubnet: \"10.96.0.0/12,fd00:10:96::/112\"\n",
        ] {
            assert!(dual.contains(want), "no {want:?} in\n{dual}");
        }
        assert_eq!(dual.matches("role: worker").count(), 2);
        assert_eq!(pod_subnet(&dual).unwrap(), "10.244.0.0/16,fd00:10:244::/56");
        // The IPv4 config as before.
        assert_eq!(pod_subnet(&config(IpFamily::Ipv4)).unwrap(), "10.244.0.0/16");
        assert!(!config(IpFamily::Ipv4).contains("ipFamily"));
    }

    #[test]
    fn pod_subnet_needs_a_value() {
        assert!(pod_subnet("networking:\n  podSubnet:\n").is_err());
        assert!(pod_subnet("kind: Cluster\n").is_err());
        assert_eq!(pod_subnet("  podSubnet: 10.0.0.0/8 # x\n").unwrap(), "10.0.0.0/8");
    }

    #[test]
    fn the_cluster_cidr_goes_into_the_configmap() {
        let manifest = std::fs::read_to_string(workspace_root().join("manifests/weir.yaml")).unwrap();
        let cidrs = pod_subnet(&config(IpFamily::Dual)).unwrap();
        let out = with_cluster_cidr(&manifest, &cidrs).unwrap();
        assert!(out.contains("\n  cluster-cidr: \"10.244.0.0/16,fd00:10:244::/56\"\n"), "{out}");
        assert_eq!(out.lines().count(), manifest.lines().count());
        assert!(with_cluster_cidr("kind: ConfigMap\n", &cidrs).is_err());
    }

    #[test]
    fn addresses_by_family() {
        let ips = vec!["10.244.1.5".to_string(), "fd00:10:244:1::5".to_string()];
        assert_eq!(of_family(&ips, false).unwrap(), "10.244.1.5");
        assert_eq!(of_family(&ips, true).unwrap(), "fd00:10:244:1::5");
        assert!(of_family(&ips[..1], true).is_none());
        assert_eq!(url_host("fd00::1"), "[fd00::1]");
        assert_eq!(url_host("10.0.0.1"), "10.0.0.1");
        assert_eq!(url_host("web.ns.svc"), "web.ns.svc");
    }
}
