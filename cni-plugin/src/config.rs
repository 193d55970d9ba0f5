//! The network configuration on stdin (docs/contracts.md), decoded and
//! validated into `NetConf` before the plugin touches anything.
//!
//! Fields are read one by one from the JSON object rather than through a serde
//! derive so that every complaint names the key at fault and says what would
//! be accepted.

use std::path::PathBuf;

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{Map, Value};

use crate::{
    attachment::{Attachment, check_identifier},
    error::CniError,
    version::CniVersion,
    veth::MAX_PREFIX_LEN,
};

pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weir";
pub const DEFAULT_RUN_DIR: &str = "/run/weir";
pub const DEFAULT_VETH_PREFIX: &str = "weir";
const MTU_RANGE: std::ops::RangeInclusive<u64> = 576..=65535;
const POD_PREFIX_RANGE: std::ops::RangeInclusive<u8> = 16..=30;
/// An IPv6 slice keeps at least two pod addresses after its subnet-router
/// anycast and gateway addresses (/126); Kubernetes hands out /64 by default.
const POD_PREFIX_RANGE_V6: std::ops::RangeInclusive<u8> = 48..=126;

/// One address family's ranges: the node's slice and the whole cluster's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyRanges {
    pub pod: IpNetwork,
    pub cluster: IpNetwork,
}

impl FamilyRanges {
    pub fn is_ipv6(&self) -> bool {
        self.pod.is_ipv6()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// Network name: the IPAM store lives in `<dataDir>/ipam/<name>/`.
    pub name: String,
    /// One entry per configured family, IPv4 first; never empty.
    pub ranges: Vec<FamilyRanges>,
    pub mtu: u32,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub bpf_pin_dir: Option<PathBuf>,
    pub veth_prefix: String,
    /// The previous plugin's (for weir-cni: the runtime's cached ADD) result;
    /// only CHECK reads it, through `result::PrevResult`.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC only).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Decodes stdin into a JSON object (code 6 when it is not one).
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::Decode { reason: format!("expected a JSON object, got {}", json_kind(&other)) }),
        Err(e) if stdin.iter().all(u8::is_ascii_whitespace) => {
            Err(CniError::Decode { reason: format!("stdin is empty ({e})") })
        }
        Err(e) => Err(CniError::Decode { reason: e.to_string() }),
    }
}

/// The `cniVersion` of a configuration, for answering in that version.
pub fn requested_version(conf: &Map<String, Value>) -> Result<CniVersion, CniError> {
    match conf.get("cniVersion") {
        None | Some(Value::Null) => Err(CniError::invalid_config(
            "cniVersion",
            format!("is required (one of {})", CniVersion::supported_list()),
        )),
        Some(Value::String(v)) => {
            CniVersion::parse(v).ok_or_else(|| CniError::IncompatibleVersion { requested: v.clone() })
        }
        Some(other) => {
            Err(CniError::invalid_config("cniVersion", format!("must be a string, got {}", json_kind(other))))
        }
    }
}

impl NetConf {
    pub fn parse(conf: &Map<String, Value>) -> Result<Self, CniError> {
        // One key at a time, in this order: with several bad keys, the
        // complaint is always about the first of them here.
        let cni_version = requested_version(conf)?;
        let name = checked_name(conf)?;
        let ranges = checked_ranges(conf)?;
        let mtu = checked_mtu(conf)?;
        let data_dir = absolute_path(conf, "dataDir")?.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let run_dir = absolute_path(conf, "runDir")?.unwrap_or_else(|| DEFAULT_RUN_DIR.into());
        let bpf_pin_dir = absolute_path(conf, "bpfPinDir")?;
        let veth_prefix = checked_veth_prefix(conf)?;
        let prev_result = checked_prev_result(conf)?;
        let valid_attachments = checked_valid_attachments(conf)?;

        Ok(Self {
            cni_version,
            name,
            ranges,
            mtu,
            data_dir,
            run_dir,
            bpf_pin_dir,
            veth_prefix,
            prev_result,
            valid_attachments,
        })
    }

    /// `<dataDir>/ipam/<network name>`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir.join("ipam").join(&self.name)
    }

    /// `<runDir>/agent-ready`.
    pub fn agent_ready_path(&self) -> PathBuf {
        self.run_dir.join("agent-ready")
    }

    /// The IPv4 ranges, if the network has IPv4.
    pub fn ipv4(&self) -> Option<&FamilyRanges> {
        self.ranges.iter().find(|r| !r.is_ipv6())
    }
}

fn family(net: &IpNetwork) -> &'static str {
    if net.is_ipv6() { "IPv6" } else { "IPv4" }
}

/// Pod and cluster ranges, one of each per family: from `podCIDRs` and
/// `clusterCIDRs` (lists, one CIDR per family), and from `podCIDR` and
/// `clusterCIDR` (IPv4 only: the keys of configurations before dual-stack).
/// Both spellings may be present if they agree.
fn checked_ranges(conf: &Map<String, Value>) -> Result<Vec<FamilyRanges>, CniError> {
    let pods = per_family(conf, "podCIDRs", "podCIDR")?;
    let clusters = per_family(conf, "clusterCIDRs", "clusterCIDR")?;
    if pods.iter().all(Option::is_none) {
        return Err(CniError::invalid_config(
            "podCIDR",
            "is required (an IPv4 CIDR such as \"10.244.1.0/24\"), or podCIDRs with one CIDR per family (such as [\"10.244.1.0/24\", \"fd00:10:244:1::/64\"])",
        ));
    }
    let mut ranges = Vec::new();
    for (pod, cluster) in pods.into_iter().zip(clusters) {
        match (pod, cluster) {
            (None, None) => {}
            (Some(pod), None) => {
                let key = if pod.is_ipv6() { "clusterCIDRs" } else { "clusterCIDR" };
                return Err(CniError::invalid_config(
                    key,
                    format!("is required: podCIDR {pod} needs an {} cluster CIDR containing it", family(&pod)),
                ));
            }
            (None, Some(cluster)) => {
                return Err(CniError::invalid_config(
                    "clusterCIDRs",
                    format!("{cluster} is an {} range but the pod ranges have none of that family", family(&cluster)),
                ));
            }
            (Some(pod), Some(cluster)) => ranges.push(checked_family(pod, cluster)?),
        }
    }
    Ok(ranges)
}

/// The prefix length of `pod` and `cluster` containing it.
fn checked_family(pod: IpNetwork, cluster: IpNetwork) -> Result<FamilyRanges, CniError> {
    let (key, allowed) = if pod.is_ipv6() { ("podCIDRs", POD_PREFIX_RANGE_V6) } else { ("podCIDR", POD_PREFIX_RANGE) };
    if !allowed.contains(&pod.prefix()) {
        return Err(CniError::invalid_config(
            key,
            format!("prefix length of {pod} must be between /{} and /{}", allowed.start(), allowed.end()),
        ));
    }
    if cluster.prefix() > pod.prefix() || !cluster.contains(pod.network()) {
        let key = if pod.is_ipv6() { "clusterCIDRs" } else { "clusterCIDR" };
        return Err(CniError::invalid_config(key, format!("{cluster} must contain podCIDR {pod}")));
    }
    Ok(FamilyRanges { pod, cluster })
}

/// `[IPv4, IPv6]` ranges from the list key `list_key` and the IPv4-only key
/// `v4_key`: at most one per family, and the two spellings agreeing.
fn per_family(conf: &Map<String, Value>, list_key: &str, v4_key: &str) -> Result<[Option<IpNetwork>; 2], CniError> {
    let mut found: [Option<IpNetwork>; 2] = [None, None];
    match conf.get(list_key) {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > 2 {
                return Err(CniError::invalid_config(
                    list_key,
                    format!("must list one or two CIDRs (one per family), got {}", items.len()),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let field = format!("{list_key}[{i}]");
                let Value::String(raw) = item else {
                    return Err(CniError::invalid_config(field, format!("must be a string, got {}", json_kind(item))));
                };
                let net = parse_cidr(&field, raw, "a CIDR such as \"10.244.1.0/24\" or \"fd00:10:244:1::/64\"")?;
                let slot = &mut found[usize::from(net.is_ipv6())];
                if let Some(first) = slot {
                    return Err(CniError::invalid_config(
                        field,
                        format!("{net} is a second {} range after {first}; give one range per family", family(&net)),
                    ));
                }
                *slot = Some(net);
            }
        }
        Some(other) => {
            return Err(CniError::invalid_config(
                list_key,
                format!("must be an array of CIDR strings, got {}", json_kind(other)),
            ));
        }
    }
    if let Some(raw) = string(conf, v4_key)? {
        let v4 = IpNetwork::V4(cidr_v4(v4_key, &raw)?);
        match found[0] {
            Some(listed) if listed != v4 => {
                return Err(CniError::invalid_config(
                    v4_key,
                    format!("{v4} disagrees with the IPv4 range {listed} of {list_key}"),
                ));
            }
            _ => found[0] = Some(v4),
        }
    }
    Ok(found)
}

/// `name`: required, and safe as a directory name (the IPAM store).
fn checked_name(conf: &Map<String, Value>) -> Result<String, CniError> {
    let name = string(conf, "name")?.ok_or_else(|| CniError::invalid_config("name", "is required"))?;
    check_identifier(&name).map_err(|reason| CniError::invalid_config("name", reason))?;
    Ok(name)
}

/// `mtu`: an integer in `MTU_RANGE`, `DEFAULT_MTU` when absent.
fn checked_mtu(conf: &Map<String, Value>) -> Result<u32, CniError> {
    match conf.get("mtu") {
        None | Some(Value::Null) => Ok(DEFAULT_MTU),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|m| MTU_RANGE.contains(&m)) => {
            Ok(n.as_u64().and_then(|m| u32::try_from(m).ok()).unwrap_or(DEFAULT_MTU))
        }
        Some(other) => Err(CniError::invalid_config(
            "mtu",
            format!("must be an integer between {} and {}, got {other}", MTU_RANGE.start(), MTU_RANGE.end()),
        )),
    }
}

/// `vethPrefix`: short enough that every host veth name fits in an
/// interface name, `DEFAULT_VETH_PREFIX` when absent.
fn checked_veth_prefix(conf: &Map<String, Value>) -> Result<String, CniError> {
    let veth_prefix = string(conf, "vethPrefix")?.unwrap_or_else(|| DEFAULT_VETH_PREFIX.to_string());
    if veth_prefix.is_empty()
        || veth_prefix.len() > MAX_PREFIX_LEN
        || !veth_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CniError::invalid_config(
            "vethPrefix",
            format!(
                "{veth_prefix:?} must be 1 to {MAX_PREFIX_LEN} letters, digits, '-' or '_' (host veth names are the prefix plus 11 hex digits, 15 characters at most)"
            ),
        ));
    }
    Ok(veth_prefix)
}

/// `prevResult`: an object if present.
fn checked_prev_result(conf: &Map<String, Value>) -> Result<Option<Value>, CniError> {
    match conf.get("prevResult") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(other) => {
            Err(CniError::invalid_config("prevResult", format!("must be an object, got {}", json_kind(other))))
        }
    }
}

/// `cni.dev/valid-attachments`, if present.
fn checked_valid_attachments(conf: &Map<String, Value>) -> Result<Option<Vec<Attachment>>, CniError> {
    // libcni sends both spellings (the spec once used the second one).
    match conf.get("cni.dev/valid-attachments") {
        Some(v) if !v.is_null() => Ok(Some(attachments("cni.dev/valid-attachments", v)?)),
        _ => match conf.get("cni.dev/attachments") {
            Some(v) if !v.is_null() => Ok(Some(attachments("cni.dev/attachments", v)?)),
            _ => Ok(None),
        },
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(conf: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match conf.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::invalid_config(key, format!("must be a string, got {}", json_kind(other)))),
    }
}

/// An IPv4 CIDR for the IPv4-only key `key`.
fn cidr_v4(key: &str, raw: &str) -> Result<Ipv4Network, CniError> {
    let example = "an IPv4 CIDR such as \"10.244.1.0/24\"";
    match parse_cidr(key, raw, example)? {
        IpNetwork::V4(net) => Ok(net),
        IpNetwork::V6(_) => Err(CniError::invalid_config(
            key,
            format!("{raw:?} is not {example} (IPv6 ranges go in the lists podCIDRs and clusterCIDRs)"),
        )),
    }
}

/// A CIDR of either family, without host bits.
fn parse_cidr(key: &str, raw: &str, example: &str) -> Result<IpNetwork, CniError> {
    let net: IpNetwork =
        raw.parse().map_err(|e| CniError::invalid_config(key, format!("{raw:?} is not {example}: {e}")))?;
    if net.ip() != net.network() {
        return Err(CniError::invalid_config(
            key,
            format!("{raw} has host bits set; did you mean {}/{}?", net.network(), net.prefix()),
        ));
    }
    Ok(net)
}

fn absolute_path(conf: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    match string(conf, key)? {
        None => Ok(None),
        Some(p) if p.starts_with('/') => Ok(Some(PathBuf::from(p))),
        Some(p) => Err(CniError::invalid_config(key, format!("{p:?} must be an absolute path"))),
    }
}

fn attachments(key: &str, value: &Value) -> Result<Vec<Attachment>, CniError> {
    let Value::Array(items) = value else {
        return Err(CniError::invalid_config(
            key,
            format!("must be an array of {{\"containerID\", \"ifname\"}} objects, got {}", json_kind(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| match item.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(CniError::invalid_config(format!("{key}[{i}].{name}"), "must be a non-empty string")),
            };
            Ok(Attachment::new(field("containerID")?, field("ifname")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.as_object().unwrap())
    }

    fn base() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "weir",
            "type": "weir-cni",
            "podCIDR": "10.244.1.0/24",
            "clusterCIDR": "10.244.0.0/16",
        })
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = base();
        v.as_object_mut().unwrap().remove(key);
        v
    }

    fn err(v: Value) -> (u32, String) {
        let e = parse(v).unwrap_err();
        (e.code(), e.to_string())
    }

    #[test]
    fn contract_example_parses_with_defaults() {
        let conf = parse(base()).unwrap();
        assert_eq!(conf.cni_version, CniVersion::V1_1_0);
        assert_eq!(conf.mtu, 1500);
        assert_eq!(conf.data_dir, PathBuf::from("/var/lib/cni/weir"));
        assert_eq!(conf.run_dir, PathBuf::from("/run/weir"));
        assert_eq!(conf.bpf_pin_dir, None);
        assert_eq!(conf.veth_prefix, "weir");
        assert_eq!(conf.ipam_dir(), PathBuf::from("/var/lib/cni/weir/ipam/weir"));
        assert_eq!(conf.agent_ready_path(), PathBuf::from("/run/weir/agent-ready"));
    }

    #[test]
    fn all_fields_parse() {
        let mut v = base();
        v["mtu"] = json!(9000);
        v["dataDir"] = json!("/tmp/d");
        v["runDir"] = json!("/tmp/r");
        v["bpfPinDir"] = json!("/sys/fs/bpf/weir");
        v["vethPrefix"] = json!("wr");
        v["runtimeConfig"] = json!({"portMappings": []});
        v["args"] = json!({"cni": {"labels": []}});
        v["prevResult"] = json!({"cniVersion": "1.1.0", "ips": []});
        v["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        let conf = parse(v).unwrap();
        assert_eq!(conf.mtu, 9000);
        assert_eq!(conf.bpf_pin_dir, Some(PathBuf::from("/sys/fs/bpf/weir")));
        assert_eq!(conf.veth_prefix, "wr");
        assert!(conf.prev_result.is_some());
        assert_eq!(conf.valid_attachments, Some(vec![Attachment::new("c1", "eth0")]));
    }

    #[test]
    fn legacy_attachments_key_is_accepted() {
        let conf = parse(with("cni.dev/attachments", json!([]))).unwrap();
        assert_eq!(conf.valid_attachments, Some(vec![]));
    }

    #[test]
    fn version_errors() {
        assert_eq!(err(with("cniVersion", json!("0.2.0"))).0, 1);
        assert_eq!(err(with("cniVersion", json!("banana"))).0, 1);
        assert_eq!(err(with("cniVersion", json!(1))).0, 7);
        assert_eq!(err(without("cniVersion")).0, 7);
        for v in CniVersion::SUPPORTED {
            assert_eq!(parse(with("cniVersion", json!(v.as_str()))).unwrap().cni_version, v);
        }
    }

    #[test]
    fn required_fields() {
        assert_eq!(err(without("name")), (7, "invalid network configuration: name: is required".into()));
        let (code, msg) = err(without("podCIDR"));
        assert_eq!(code, 7);
        assert!(msg.starts_with("invalid network configuration: podCIDR: is required"), "{msg}");
        assert_eq!(err(without("clusterCIDR")).0, 7);
    }

    #[test]
    fn cidr_errors_name_the_problem() {
        let (code, msg) = err(with("podCIDR", json!("10.244.1.5/24")));
        assert_eq!(code, 7);
        assert!(msg.contains("did you mean 10.244.1.0/24?"), "{msg}");
        assert_eq!(err(with("podCIDR", json!("fd00::/64"))).0, 7);
        assert_eq!(err(with("podCIDR", json!("nonsense"))).0, 7);
        let (_, msg) = err(with("podCIDR", json!("10.244.0.0/31")));
        assert!(msg.contains("between /16 and /30"), "{msg}");
        assert_eq!(err(with("podCIDR", json!("10.0.0.0/8"))).0, 7);
        let (code, msg) = err(with("clusterCIDR", json!("10.245.0.0/16")));
        assert_eq!(code, 7);
        assert!(msg.contains("must contain podCIDR 10.244.1.0/24"), "{msg}");
        // A cluster CIDR smaller than the pod CIDR cannot contain it.
        let mut v = with("podCIDR", json!("10.244.0.0/16"));
        v["clusterCIDR"] = json!("10.244.0.0/24");
        assert_eq!(err(v).0, 7);
    }

    fn dual(pods: Value, clusters: Value) -> Value {
        let mut v = without("podCIDR");
        v.as_object_mut().unwrap().remove("clusterCIDR");
        v["podCIDRs"] = pods;
        v["clusterCIDRs"] = clusters;
        v
    }

    fn ranges(conf: &NetConf) -> Vec<(String, String)> {
        conf.ranges.iter().map(|r| (r.pod.to_string(), r.cluster.to_string())).collect()
    }

    #[test]
    fn dual_stack_lists_parse_ipv4_first() {
        let conf =
            parse(dual(json!(["fd00:10:244:1::/64", "10.244.1.0/24"]), json!(["10.244.0.0/16", "fd00:10:244::/56"])))
                .unwrap();
        assert_eq!(
            ranges(&conf),
            [
                ("10.244.1.0/24".into(), "10.244.0.0/16".into()),
                ("fd00:10:244:1::/64".into(), "fd00:10:244::/56".into())
            ]
        );
        assert!(conf.ipv4().is_some());
        // The single-IPv4 keys alongside, agreeing: fine (what the agent writes).
        let mut v = dual(json!(["10.244.1.0/24", "fd00:10:244:1::/64"]), json!(["10.244.0.0/16", "fd00:10:244::/56"]));
        v["podCIDR"] = json!("10.244.1.0/24");
        v["clusterCIDR"] = json!("10.244.0.0/16");
        assert_eq!(parse(v).unwrap().ranges.len(), 2);
        // IPv6 from the list, IPv4 from the old keys.
        let mut v = base();
        v["podCIDRs"] = json!(["fd00:10:244:1::/64"]);
        v["clusterCIDRs"] = json!(["fd00:10:244::/56"]);
        assert_eq!(parse(v).unwrap().ranges.len(), 2);
        // The old keys alone: IPv4 only, as before.
        assert_eq!(ranges(&parse(base()).unwrap()), [("10.244.1.0/24".into(), "10.244.0.0/16".into())]);
    }

    #[test]
    fn ipv6_only_parses() {
        let conf = parse(dual(json!(["fd00:10:244:2::/64"]), json!(["fd00:10:244::/56"]))).unwrap();
        assert_eq!(conf.ranges.len(), 1);
        assert!(conf.ranges[0].is_ipv6());
        assert!(conf.ipv4().is_none());
        assert!(parse(dual(json!(["fd00::/126"]), json!(["fd00::/64"]))).is_ok());
    }

    #[test]
    fn dual_stack_errors_are_code_7_and_name_the_key() {
        let cases = [
            // Two ranges of one family.
            (dual(json!(["10.244.1.0/24", "10.244.2.0/24"]), json!(["10.244.0.0/16"])), "podCIDRs[1]", "second IPv4"),
            (dual(json!(["fd00:1::/64", "fd00:2::/64"]), json!(["fd00::/48"])), "podCIDRs[1]", "one range per family"),
            (
                dual(json!(["10.244.1.0/24"]), json!(["10.244.0.0/16", "10.245.0.0/16"])),
                "clusterCIDRs[1]",
                "second IPv4",
            ),
            // An IPv6 CIDR in an IPv4 field.
            (with("podCIDR", json!("fd00:10:244:1::/64")), "podCIDR", "IPv6 ranges go in the lists"),
            (with("clusterCIDR", json!("fd00::/48")), "clusterCIDR", "not an IPv4 CIDR"),
            // Prefixes: too small a slice, too large a slice.
            (dual(json!(["fd00::/127"]), json!(["fd00::/64"])), "podCIDRs", "between /48 and /126"),
            (dual(json!(["fd00::/32"]), json!(["fd00::/16"])), "podCIDRs", "between /48 and /126"),
            // Containment, host bits, shapes.
            (dual(json!(["fd00:1::/64"]), json!(["fd00:2::/48"])), "clusterCIDRs", "must contain podCIDR fd00:1::/64"),
            (dual(json!(["fd00:1::1/64"]), json!(["fd00::/16"])), "podCIDRs[0]", "host bits set"),
            (dual(json!([]), json!(["fd00::/16"])), "podCIDRs", "one or two CIDRs"),
            (dual(json!(["a", "b", "c"]), json!(["fd00::/16"])), "podCIDRs", "one or two CIDRs"),
            (dual(json!("fd00:1::/64"), json!(["fd00::/16"])), "podCIDRs", "must be an array"),
            (dual(json!([64]), json!(["fd00::/16"])), "podCIDRs[0]", "must be a string"),
            (dual(json!(["nonsense"]), json!(["fd00::/16"])), "podCIDRs[0]", "is not a CIDR"),
            // A family with a pod range and no cluster range, or the reverse.
            (dual(json!(["10.244.1.0/24", "fd00:1::/64"]), json!(["10.244.0.0/16"])), "clusterCIDRs", "is required"),
            (
                dual(json!(["10.244.1.0/24"]), json!(["10.244.0.0/16", "fd00::/48"])),
                "clusterCIDRs",
                "none of that family",
            ),
            // The two spellings disagreeing.
            (
                {
                    let mut v = dual(json!(["10.244.1.0/24"]), json!(["10.244.0.0/16"]));
                    v["podCIDR"] = json!("10.244.2.0/24");
                    v
                },
                "podCIDR",
                "disagrees with the IPv4 range 10.244.1.0/24 of podCIDRs",
            ),
        ];
        for (conf, key, text) in cases {
            let (code, msg) = err(conf.clone());
            assert_eq!(code, 7, "{msg}");
            assert!(msg.starts_with(&format!("invalid network configuration: {key}: ")), "{key}: {msg}");
            assert!(msg.contains(text), "{text:?} not in {msg}");
        }
        // No pod range at all.
        let (code, msg) = err(dual(Value::Null, json!(["fd00::/16"])));
        assert_eq!(code, 7);
        assert!(msg.starts_with("invalid network configuration: podCIDR: is required"), "{msg}");
    }

    #[test]
    fn mtu_range() {
        assert_eq!(parse(with("mtu", json!(576))).unwrap().mtu, 576);
        assert_eq!(parse(with("mtu", json!(65535))).unwrap().mtu, 65535);
        assert_eq!(err(with("mtu", json!(575))).0, 7);
        assert_eq!(err(with("mtu", json!(65536))).0, 7);
        assert_eq!(err(with("mtu", json!(-1))).0, 7);
        assert_eq!(err(with("mtu", json!(1500.5))).0, 7);
        let (_, msg) = err(with("mtu", json!("1500")));
        assert_eq!(msg, "invalid network configuration: mtu: must be an integer between 576 and 65535, got \"1500\"");
    }

    #[test]
    fn paths_and_prefix() {
        assert_eq!(err(with("dataDir", json!("var/lib"))).0, 7);
        assert_eq!(err(with("runDir", json!(""))).0, 7);
        assert_eq!(err(with("bpfPinDir", json!(5))).0, 7);
        assert_eq!(err(with("vethPrefix", json!("weird"))).0, 7);
        assert_eq!(err(with("vethPrefix", json!(""))).0, 7);
        assert_eq!(err(with("vethPrefix", json!("w/x"))).0, 7);
        assert_eq!(err(with("name", json!("../etc"))).0, 7);
    }

    #[test]
    fn attachment_list_and_prev_result_shapes() {
        let (code, msg) = err(with("cni.dev/valid-attachments", json!([{"containerID": "c1"}])));
        assert_eq!(code, 7);
        assert!(msg.contains("cni.dev/valid-attachments[0].ifname"), "{msg}");
        assert_eq!(err(with("cni.dev/valid-attachments", json!({}))).0, 7);
        assert_eq!(err(with("prevResult", json!([]))).0, 7);
    }

    #[test]
    fn decode_failures_are_code_6() {
        assert_eq!(decode(b"").unwrap_err().code(), 6);
        assert_eq!(decode(b"{not json").unwrap_err().code(), 6);
        let e = decode(b"[1]").unwrap_err();
        assert_eq!(e.code(), 6);
        assert!(e.to_string().contains("expected a JSON object, got an array"), "{e}");
        assert!(decode(b" {} ").is_ok());
    }
}
