//! Network configuration lists (`*.conflist`) and the per-plugin config a
//! runtime derives from them, as libcni does.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

#[derive(Clone, Debug, PartialEq)]
pub struct Conflist {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConf>,
}

/// One entry of `plugins`: its type, its declared capabilities and every key
/// as written (passed through untouched to the plugin).
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConf {
    pub plugin_type: String,
    pub capabilities: BTreeMap<String, bool>,
    pub raw: Map<String, Value>,
}

impl PluginConf {
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(raw) = value else { bail!("a plugin entry is not a JSON object") };
        let plugin_type = raw
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .context("a plugin entry has no `type`")?
            .to_string();
        let capabilities = match raw.get("capabilities") {
            None => BTreeMap::new(),
            Some(c) => serde_json::from_value(c.clone())
                .with_context(|| format!("plugin {plugin_type}: `capabilities` is not a map of booleans"))?,
        };
        Ok(Self { plugin_type, capabilities, raw })
    }

    /// Sets (or replaces) a key of this plugin's config.
    pub fn set(&mut self, key: &str, value: Value) {
        self.raw.insert(key.to_string(), value);
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.raw.get(key).and_then(Value::as_str)
    }

    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.get(name).copied().unwrap_or(false)
    }
}

impl Conflist {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes).context("conflist is not JSON")?;
        Self::from_value(value)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("parse {}", path.display()))
    }

    pub fn from_value(value: Value) -> Result<Self> {
        let name = value.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
        let name = name.context("conflist has no `name`")?.to_string();
        let cni_version = value.get("cniVersion").and_then(Value::as_str).context("conflist has no `cniVersion`")?;
        let plugins = value.get("plugins").and_then(Value::as_array).context("conflist has no `plugins` list")?;
        if plugins.is_empty() {
            bail!("conflist {name}: `plugins` is empty");
        }
        Ok(Self {
            name,
            cni_version: cni_version.to_string(),
            disable_check: value.get("disableCheck").and_then(Value::as_bool).unwrap_or(false),
            disable_gc: value.get("disableGC").and_then(Value::as_bool).unwrap_or(false),
            plugins: plugins.iter().cloned().map(PluginConf::from_value).collect::<Result<_>>()?,
        })
    }

    pub fn to_value(&self) -> Value {
        let mut v = json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins.iter().map(|p| Value::Object(p.raw.clone())).collect::<Vec<_>>(),
        });
        if self.disable_check {
            v["disableCheck"] = json!(true);
        }
        if self.disable_gc {
            v["disableGC"] = json!(true);
        }
        v
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }

    /// The same list with another cniVersion.
    pub fn with_version(&self, version: &str) -> Self {
        Self { cni_version: version.to_string(), ..self.clone() }
    }

    /// The same list reduced to the plugins of the given types, in list order.
    pub fn only(&self, types: &[&str]) -> Self {
        let plugins = self.plugins.iter().filter(|p| types.contains(&p.plugin_type.as_str())).cloned().collect();
        Self { plugins, ..self.clone() }
    }

    pub fn plugin(&self, plugin_type: &str) -> Option<&PluginConf> {
        self.plugins.iter().find(|p| p.plugin_type == plugin_type)
    }

    pub fn plugin_mut(&mut self, plugin_type: &str) -> Option<&mut PluginConf> {
        self.plugins.iter_mut().find(|p| p.plugin_type == plugin_type)
    }

    /// The config a plugin reads on stdin: its own keys, plus the list's
    /// `name` and `cniVersion`, the previous plugin's result, and
    /// `runtimeConfig` holding only the capabilities the plugin declared.
    pub fn plugin_config(
        &self,
        plugin: &PluginConf,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Value {
        let mut conf = plugin.raw.clone();
        conf.insert("name".into(), json!(self.name));
        conf.insert("cniVersion".into(), json!(self.cni_version));
        conf.remove("prevResult");
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let runtime: Map<String, Value> = capability_args
            .iter()
            .filter(|(k, _)| plugin.has_capability(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Value::Object(conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conflist of docs/contracts.md.
    const AGENT_CONFLIST: &str = r#"{
      "cniVersion": "1.1.0",
      "name": "weir",
      "plugins": [
        {
          "type": "weir-cni",
          "podCIDR": "10.244.1.0/24",
          "clusterCIDR": "10.244.0.0/16",
          "mtu": 1500,
          "dataDir": "/var/lib/cni/weir",
          "runDir": "/run/weir",
          "bpfPinDir": "/sys/fs/bpf/weir",
          "vethPrefix": "weir"
        },
        { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
      ]
    }"#;

    #[test]
    fn parses_the_agent_conflist() {
        let list = Conflist::parse(AGENT_CONFLIST.as_bytes()).unwrap();
        assert_eq!(list.name, "weir");
        assert_eq!(list.cni_version, "1.1.0");
        let types: Vec<_> = list.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["weir-cni", "portmap"]);
        assert!(list.plugins[1].has_capability("portMappings"));
        assert!(!list.plugins[0].has_capability("portMappings"));
        assert_eq!(list.plugin("weir-cni").unwrap().get_str("podCIDR"), Some("10.244.1.0/24"));
        // Round trip.
        assert_eq!(Conflist::from_value(list.to_value()).unwrap(), list);
    }

    #[test]
    fn rejects_broken_lists() {
        for (bad, why) in [
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#, "name"),
            (r#"{"name":"n","plugins":[{"type":"x"}]}"#, "cniVersion"),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#, "empty"),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"mtu":1}]}"#, "type"),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"x","capabilities":{"a":"yes"}}]}"#,
                "capabilities",
            ),
        ] {
            let err = format!("{:#}", Conflist::parse(bad.as_bytes()).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn plugin_config_injects_name_version_prev_result_and_declared_capabilities_only() {
        let list = Conflist::parse(AGENT_CONFLIST.as_bytes()).unwrap();
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
        caps.insert("bandwidth".into(), json!({"ingressRate": 1}));

        let first = list.plugin_config(&list.plugins[0], None, &caps);
        assert_eq!(first["name"], "weir");
        assert_eq!(first["cniVersion"], "1.1.0");
        assert_eq!(first["podCIDR"], "10.244.1.0/24");
        assert!(first.get("prevResult").is_none());
        assert!(first.get("runtimeConfig").is_none(), "weir-cni declared no capability");

        let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.2/32"}]});
        let second = list.plugin_config(&list.plugins[1], Some(&prev), &caps);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(second["runtimeConfig"].get("bandwidth").is_none(), "not a declared capability");
        assert_eq!(second["snat"], true);
    }

    #[test]
    fn only_and_with_version_derive_lists() {
        let list = Conflist::parse(AGENT_CONFLIST.as_bytes()).unwrap();
        let weir = list.only(&["weir-cni"]).with_version("0.4.0");
        assert_eq!(weir.plugins.len(), 1);
        assert_eq!(weir.cni_version, "0.4.0");
        assert_eq!(weir.name, "weir");
    }
}
