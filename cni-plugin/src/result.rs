//! Success results: ADD's result in each spec version, VERSION's answer, and
//! the `prevResult` CHECK reads back.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value, json};

use crate::{error::CniError, version::CniVersion};

/// `RT_SCOPE_LINK`, as the 1.1 result's route `scope` field spells it.
const SCOPE_LINK: u8 = 253;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: u32,
    /// The netns path for the pod's interface; `None` for the host veth.
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: IpAddr,
    /// Index into `interfaces`.
    pub interface: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// `scope link`: only expressible from 1.1.0 on (before, a route without
    /// `gw` meant "via the default gateway"), so older results leave it out.
    pub link_scope: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
}

impl AddResult {
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|iface| {
                let mut o = Map::new();
                o.insert("name".into(), json!(iface.name));
                if let Some(mac) = &iface.mac {
                    o.insert("mac".into(), json!(mac));
                }
                if version.has_1_1_features() {
                    o.insert("mtu".into(), json!(iface.mtu));
                }
                if let Some(sandbox) = &iface.sandbox {
                    o.insert("sandbox".into(), json!(sandbox));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    o.insert("version".into(), json!(if ip.address.is_ipv6() { "6" } else { "4" }));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                o.insert("gateway".into(), json!(ip.gateway.to_string()));
                o.insert("interface".into(), json!(ip.interface));
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .filter(|r| !r.link_scope || version.has_1_1_features())
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                if r.link_scope {
                    o.insert("scope".into(), json!(SCOPE_LINK));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }
}

/// VERSION's answer.
pub fn version_json(version: CniVersion) -> Value {
    json!({
        "cniVersion": version.as_str(),
        "supportedVersions": CniVersion::SUPPORTED.map(CniVersion::as_str),
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevInterface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevIp {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevRoute {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// The parts of a `prevResult` that CHECK compares with the system. Any
/// version's layout is accepted (`ips[].version` is ignored: the address
/// says its family).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrevResult {
    pub interfaces: Vec<PrevInterface>,
    pub ips: Vec<PrevIp>,
    pub routes: Vec<PrevRoute>,
}

impl PrevResult {
    pub fn parse(value: &Value) -> Result<Self, CniError> {
        let bad = |field: String, reason: &str| CniError::invalid_config(field, reason.to_string());
        let list = |key: &str| -> Result<Vec<Value>, CniError> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => Ok(items.clone()),
                Some(_) => Err(bad(format!("prevResult.{key}"), "must be an array")),
            }
        };
        let string = |item: &Value, field: String, key: &str| -> Result<Option<String>, CniError> {
            match item.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("{field}.{key}"), "must be a string")),
            }
        };

        let mut prev = PrevResult::default();
        for (i, item) in list("interfaces")?.iter().enumerate() {
            let field = format!("prevResult.interfaces[{i}]");
            let name =
                string(item, field.clone(), "name")?.ok_or_else(|| bad(format!("{field}.name"), "is required"))?;
            prev.interfaces.push(PrevInterface {
                name,
                mac: string(item, field.clone(), "mac")?,
                sandbox: string(item, field, "sandbox")?.filter(|s| !s.is_empty()),
            });
        }
        for (i, item) in list("ips")?.iter().enumerate() {
            let field = format!("prevResult.ips[{i}]");
            let address = string(item, field.clone(), "address")?
                .ok_or_else(|| bad(format!("{field}.address"), "is required"))?;
            let address: IpNetwork =
                address.parse().map_err(|_| bad(format!("{field}.address"), "must be an address in CIDR notation"))?;
            let gateway = string(item, field.clone(), "gateway")?
                .map(|g| same_family(&g, address.ip()))
                .transpose()
                .map_err(|reason| bad(format!("{field}.gateway"), reason))?;
            let interface = match item.get("interface") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad(format!("{field}.interface"), "must be an index"))?,
                ),
            };
            prev.ips.push(PrevIp { address, gateway, interface });
        }
        for (i, item) in list("routes")?.iter().enumerate() {
            let field = format!("prevResult.routes[{i}]");
            let dst = string(item, field.clone(), "dst")?.ok_or_else(|| bad(format!("{field}.dst"), "is required"))?;
            let dst: IpNetwork = dst.parse().map_err(|_| bad(format!("{field}.dst"), "must be a CIDR"))?;
            let gw = string(item, field.clone(), "gw")?
                .map(|g| same_family(&g, dst.ip()))
                .transpose()
                .map_err(|reason| bad(format!("{field}.gw"), reason))?;
            prev.routes.push(PrevRoute { dst, gw });
        }
        Ok(prev)
    }
}

/// `raw` as an address of `like`'s family.
fn same_family(raw: &str, like: IpAddr) -> Result<IpAddr, &'static str> {
    match raw.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == like.is_ipv6() => Ok(ip),
        Ok(_) => Err("must be an address of the same family as the destination or address it goes with"),
        Err(_) => Err("must be an IP address"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        let gw: IpAddr = "10.244.1.1".parse().unwrap();
        AddResult {
            interfaces: vec![
                Interface {
                    name: "weir0123456789a".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    mtu: 1500,
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    mtu: 1500,
                    sandbox: Some("/run/netns/pod".into()),
                },
            ],
            ips: vec![IpConfig { address: "10.244.1.2/32".parse().unwrap(), gateway: gw, interface: 1 }],
            routes: vec![
                RouteConfig { dst: "10.244.1.1/32".parse().unwrap(), gw: None, link_scope: true },
                RouteConfig { dst: "0.0.0.0/0".parse().unwrap(), gw: Some(gw), link_scope: false },
            ],
        }
    }

    fn golden_pre_1_0(version: &str) -> Value {
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "weir0123456789a", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/pod"}
            ],
            "ips": [{"version": "4", "address": "10.244.1.2/32", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {}
        })
    }

    #[test]
    fn add_result_golden_0_3_0_0_3_1_0_4_0() {
        for v in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            assert_eq!(sample().to_json(v), golden_pre_1_0(v.as_str()), "{v}");
        }
    }

    #[test]
    fn add_result_golden_1_0_0() {
        let expected = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "weir0123456789a", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/pod"}
            ],
            "ips": [{"address": "10.244.1.2/32", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {}
        });
        assert_eq!(sample().to_json(CniVersion::V1_0_0), expected);
    }

    #[test]
    fn add_result_golden_1_1_0() {
        let text = serde_json::to_string(&sample().to_json(CniVersion::V1_1_0)).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"cniVersion":"1.1.0","dns":{},"#,
                r#""interfaces":[{"mac":"aa:bb:cc:dd:ee:01","mtu":1500,"name":"weir0123456789a"},"#,
                r#"{"mac":"aa:bb:cc:dd:ee:02","mtu":1500,"name":"eth0","sandbox":"/run/netns/pod"}],"#,
                r#""ips":[{"address":"10.244.1.2/32","gateway":"10.244.1.1","interface":1}],"#,
                r#""routes":[{"dst":"10.244.1.1/32","scope":253},{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]}"#
            )
        );
    }

    #[test]
    fn version_golden() {
        assert_eq!(
            serde_json::to_string(&version_json(CniVersion::V0_4_0)).unwrap(),
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
    }

    #[test]
    fn prev_result_round_trips_every_version() {
        for v in CniVersion::SUPPORTED {
            let prev = PrevResult::parse(&sample().to_json(v)).unwrap();
            assert_eq!(prev.interfaces.len(), 2);
            assert_eq!(prev.interfaces[1].sandbox.as_deref(), Some("/run/netns/pod"));
            assert_eq!(prev.interfaces[0].sandbox, None);
            assert_eq!(
                prev.ips,
                vec![PrevIp {
                    address: "10.244.1.2/32".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                }]
            );
            let expected_routes = if v.has_1_1_features() { 2 } else { 1 };
            assert_eq!(prev.routes.len(), expected_routes, "{v}");
        }
    }

    #[test]
    fn prev_result_errors_name_the_field() {
        let e = PrevResult::parse(&json!({"ips": [{"address": "nope"}]})).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("prevResult.ips[0].address"), "{e}");
        let e = PrevResult::parse(&json!({"interfaces": [{"mac": "x"}]})).unwrap_err();
        assert!(e.to_string().contains("prevResult.interfaces[0].name"), "{e}");
        let e = PrevResult::parse(&json!({"routes": "x"})).unwrap_err();
        assert!(e.to_string().contains("prevResult.routes"), "{e}");
    }

    fn dual_stack() -> AddResult {
        let mut r = sample();
        let gw6: IpAddr = "fd00:10:244:1::1".parse().unwrap();
        r.ips.push(IpConfig { address: "fd00:10:244:1::2/128".parse().unwrap(), gateway: gw6, interface: 1 });
        r.routes.push(RouteConfig { dst: "fd00:10:244:1::1/128".parse().unwrap(), gw: None, link_scope: true });
        r.routes.push(RouteConfig { dst: "::/0".parse().unwrap(), gw: Some(gw6), link_scope: false });
        r
    }

    #[test]
    fn dual_stack_results_list_both_families() {
        let v040 = dual_stack().to_json(CniVersion::V0_4_0);
        assert_eq!(
            v040["ips"],
            json!([
                {"version": "4", "address": "10.244.1.2/32", "gateway": "10.244.1.1", "interface": 1},
                {"version": "6", "address": "fd00:10:244:1::2/128", "gateway": "fd00:10:244:1::1", "interface": 1}
            ])
        );
        assert_eq!(
            v040["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0", "gw": "fd00:10:244:1::1"}])
        );
        let v110 = dual_stack().to_json(CniVersion::V1_1_0);
        assert_eq!(
            v110["ips"][1],
            json!({"address": "fd00:10:244:1::2/128", "gateway": "fd00:10:244:1::1", "interface": 1})
        );
        assert_eq!(v110["routes"][2], json!({"dst": "fd00:10:244:1::1/128", "scope": 253}));
        for v in CniVersion::SUPPORTED {
            let prev = PrevResult::parse(&dual_stack().to_json(v)).unwrap();
            assert_eq!(prev.ips.len(), 2, "{v}");
            assert_eq!(prev.ips[1].address, "fd00:10:244:1::2/128".parse::<IpNetwork>().unwrap());
            assert_eq!(prev.ips[1].gateway, Some("fd00:10:244:1::1".parse().unwrap()));
        }
    }

    #[test]
    fn prev_result_reads_ipv6_and_refuses_mixed_families() {
        let prev = PrevResult::parse(&json!({
            "ips": [{"address": "fd00::2/64"}],
            "routes": [{"dst": "::/0", "gw": "fd00::1"}]
        }))
        .unwrap();
        assert_eq!(prev.ips.len(), 1);
        assert_eq!(prev.routes[0].gw, Some("fd00::1".parse().unwrap()));
        let e = PrevResult::parse(&json!({"ips": [{"address": "fd00::2/64", "gateway": "10.0.0.1"}]})).unwrap_err();
        assert!(e.to_string().contains("prevResult.ips[0].gateway"), "{e}");
        let e = PrevResult::parse(&json!({"routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]})).unwrap_err();
        assert!(e.to_string().contains("prevResult.routes[0].gw"), "{e}");
    }
}
