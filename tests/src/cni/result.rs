//! Typed CNI results and errors (spec 0.4.0, 1.0.0, 1.1.0).

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// An ADD result. `raw` is what the plugin printed, passed on unchanged as
/// the next plugin's `prevResult` and cached for CHECK and DEL.
#[derive(Clone, Debug, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Dns>,
    pub raw: Value,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent on the host.
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct IpConfig {
    /// "4" or "6": present in 0.4.0, removed in 1.0.0.
    #[serde(default)]
    pub version: Option<String>,
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address and prefix length, when it is IPv4.
    pub fn ipv4(&self) -> Option<(Ipv4Addr, u8)> {
        let (ip, len) = self.address.split_once('/')?;
        Some((ip.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
    }

    /// The address and prefix length, when it is IPv6.
    pub fn ipv6(&self) -> Option<(std::net::Ipv6Addr, u8)> {
        let (ip, len) = self.address.split_once('/')?;
        Some((ip.parse().ok()?, len.parse().ok().filter(|l| *l <= 128)?))
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default)]
    pub gw: Option<String>,
    // 1.1.0 additions.
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub advmss: Option<u32>,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub table: Option<u32>,
    #[serde(default)]
    pub scope: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultWire {
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let raw: Value = serde_json::from_slice(bytes).context("result is not JSON")?;
        Self::from_value(raw)
    }

    pub fn from_value(raw: Value) -> Result<Self> {
        let wire: ResultWire =
            serde_json::from_value(raw.clone()).context("result does not have the CNI result shape")?;
        for ip in &wire.ips {
            if let Some(i) = ip.interface
                && i >= wire.interfaces.len()
            {
                bail!("ips entry {} points at interface {i}, but there are {}", ip.address, wire.interfaces.len());
            }
        }
        Ok(Self {
            cni_version: wire.cni_version,
            interfaces: wire.interfaces,
            ips: wire.ips,
            routes: wire.routes,
            dns: wire.dns,
            raw,
        })
    }

    /// The interface inside the pod (the one with a `sandbox`).
    pub fn sandbox_interface(&self) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }

    /// The host-side interface (no `sandbox`).
    pub fn host_interface(&self) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
    }

    /// The pod's IPv4 address: the first IPv4 entry on a sandbox interface,
    /// else the first IPv4 entry.
    pub fn pod_ipv4(&self) -> Option<Ipv4Addr> {
        let on_sandbox = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|i| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        };
        self.ips.iter().filter(on_sandbox).chain(self.ips.iter()).find_map(|ip| ip.ipv4()).map(|(ip, _)| ip)
    }

    /// The pod's IPv6 address (dual-stack or IPv6-only), found as
    /// `pod_ipv4` finds the IPv4 one.
    pub fn pod_ipv6(&self) -> Option<std::net::Ipv6Addr> {
        let on_sandbox = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|i| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        };
        self.ips.iter().filter(on_sandbox).chain(self.ips.iter()).find_map(|ip| ip.ipv6()).map(|(ip, _)| ip)
    }
}

/// The error JSON a plugin prints on failure.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    #[serde(default)]
    pub cni_version: Option<String>,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: Option<String>,
}

impl CniError {
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if let Some(d) = self.details.as_deref().filter(|d| !d.is_empty()) {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// Error codes the spec reserves (section "Error").
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_READY: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
}

#[cfg(test)]
mod tests {
    use super::*;

    const V040: &str = r#"{
      "cniVersion": "0.4.0",
      "interfaces": [
        {"name": "weir0123456789a", "mac": "aa:bb:cc:dd:ee:ff"},
        {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/run/netns/p"}
      ],
      "ips": [{"version": "4", "address": "10.244.1.2/32", "gateway": "10.244.1.1", "interface": 1}],
      "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
      "dns": {}
    }"#;

    const V110: &str = r#"{
      "cniVersion": "1.1.0",
      "interfaces": [
        {"name": "weir0123456789a", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1500},
        {"name": "eth0", "mac": "11:22:33:44:55:66", "mtu": 1500, "sandbox": "/run/netns/p"}
      ],
      "ips": [{"address": "10.244.1.7/32", "gateway": "10.244.1.1", "interface": 1}],
      "routes": [{"dst": "10.244.1.1/32", "scope": 253}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
    }"#;

    #[test]
    fn parses_a_040_result() {
        let r = CniResult::parse(V040.as_bytes()).unwrap();
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.ips[0].version.as_deref(), Some("4"));
        assert_eq!(r.pod_ipv4(), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(r.sandbox_interface().unwrap().name, "eth0");
        assert_eq!(r.host_interface().unwrap().name, "weir0123456789a");
        assert_eq!(r.dns, Some(Dns::default()));
    }

    #[test]
    fn parses_a_110_result_with_route_scope() {
        let r = CniResult::parse(V110.as_bytes()).unwrap();
        assert_eq!(r.ips[0].version, None);
        assert_eq!(r.ips[0].ipv4(), Some((Ipv4Addr::new(10, 244, 1, 7), 32)));
        assert_eq!(r.routes[0].scope, Some(253));
        assert_eq!(r.interfaces[1].mtu, Some(1500));
        assert_eq!(r.raw["cniVersion"], "1.1.0");
    }

    #[test]
    fn rejects_results_that_do_not_hold_together() {
        assert!(CniResult::parse(b"not json").is_err());
        assert!(CniResult::parse(br#"{"ips": []}"#).is_err(), "cniVersion is required");
        let dangling = r#"{"cniVersion":"1.0.0","interfaces":[],"ips":[{"address":"10.0.0.2/32","interface":0}]}"#;
        assert!(format!("{:#}", CniResult::parse(dangling.as_bytes()).unwrap_err()).contains("interface 0"));
    }

    #[test]
    fn parses_errors() {
        let e = CniError::parse(br#"{"cniVersion":"1.1.0","code":50,"msg":"not ready","details":"no agent-ready"}"#)
            .unwrap();
        assert_eq!(e.code, codes::NOT_READY);
        assert_eq!(e.to_string(), "code 50: not ready (no agent-ready)");
        assert!(CniError::parse(b"panic at the disco").is_none());
        assert!(CniError::parse(br#"{"msg":"no code"}"#).is_none());
    }
}
