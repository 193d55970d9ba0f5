//! A mini CNI runtime: what containerd does through libcni, no more.
//!
//! ADD runs the plugins of a conflist in order, each getting the previous
//! one's result as `prevResult`; the final result is cached on disk and given
//! as `prevResult` to CHECK (in order) and DEL (in reverse order). STATUS and
//! GC go to every plugin of a 1.1.0 list. Plugins are looked up in CNI_PATH and
//! executed inside the node's network namespace.

// Failures carry the plugin's diagnostics and are rare: their size does not matter.
#![allow(clippy::result_large_err)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Map, Value, json};

use super::{
    conflist::{Conflist, PluginConf},
    result::{CniError, CniResult},
};
use crate::exec;

/// What a runtime knows about one attachment of a container to a network.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    /// CNI_NETNS: the pod's netns path (need not exist any more for DEL).
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS, e.g. K8S_POD_NAME.
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments (`runtimeConfig`), e.g. `portMappings`.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, netns: impl Into<PathBuf>, ifname: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            cni_args: Vec::new(),
            capability_args: Map::new(),
        }
    }

    /// Adds a `portMappings` entry (what kubelet derives from a hostPort).
    pub fn with_port_mapping(mut self, host_port: u16, container_port: u16, protocol: &str) -> Self {
        let list = self.capability_args.entry("portMappings").or_insert_with(|| json!([]));
        list.as_array_mut()
            .expect("portMappings is a list")
            .push(json!({"hostPort": host_port, "containerPort": container_port, "protocol": protocol}));
        self
    }

    fn cni_args_env(&self) -> String {
        self.cni_args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }
}

/// Why a CNI operation failed.
#[derive(Debug)]
pub struct CniFailure {
    pub command: &'static str,
    pub plugin: String,
    pub kind: FailureKind,
    /// The plugin's stderr, for diagnosis.
    pub stderr: String,
}

#[derive(Debug)]
pub enum FailureKind {
    /// The plugin answered with the spec's error JSON.
    Plugin(CniError),
    /// The plugin could not be run, or was killed at the deadline.
    Exec(String),
    /// The plugin's output was not what the spec says.
    BadOutput { status: String, stdout: String, reason: String },
    /// Not in CNI_PATH.
    NotFound(Vec<PathBuf>),
    /// CHECK without a cached ADD result.
    NoCachedResult,
}

impl CniFailure {
    /// The plugin's error code, when it answered with one.
    pub fn code(&self) -> Option<u32> {
        self.cni_error().map(|e| e.code)
    }

    pub fn cni_error(&self) -> Option<&CniError> {
        match &self.kind {
            FailureKind::Plugin(e) => Some(e),
            _ => None,
        }
    }
}

impl std::fmt::Display for CniFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI {} of plugin {} failed: ", self.command, self.plugin)?;
        match &self.kind {
            FailureKind::Plugin(e) => write!(f, "{e}")?,
            FailureKind::Exec(e) => write!(f, "{e}")?,
            FailureKind::BadOutput { status, stdout, reason } => {
                write!(f, "{reason} ({status}); stdout: {:?}", stdout)?
            }
            FailureKind::NotFound(path) => write!(f, "not found in CNI_PATH {path:?}")?,
            FailureKind::NoCachedResult => write!(f, "no cached ADD result for this attachment")?,
        }
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            write!(f, "; stderr: {stderr}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CniFailure {}

pub type CniOutcome<T> = std::result::Result<T, CniFailure>;

#[derive(Clone, Debug)]
pub struct CniRuntime {
    /// The node namespace the plugins run in (None: the caller's own).
    exec_netns: Option<PathBuf>,
    cni_path: Vec<PathBuf>,
    /// Where ADD results are cached, as libcni's `/var/lib/cni/results`.
    cache_dir: PathBuf,
    timeout: Duration,
}

impl CniRuntime {
    pub fn new(exec_netns: Option<&Path>, cni_path: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            exec_netns: exec_netns.map(Path::to_path_buf),
            cni_path,
            cache_dir: cache_dir.into(),
            timeout: exec::DEFAULT_TIMEOUT,
        }
    }

    pub fn cni_path(&self) -> &[PathBuf] {
        &self.cni_path
    }

    pub fn add(&self, list: &Conflist, att: &Attachment) -> CniOutcome<CniResult> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = list.plugin_config(plugin, prev.as_ref(), &att.capability_args);
            let out = self.invoke("ADD", plugin, &conf, Some(att))?;
            let value: Value = serde_json::from_slice(&out.stdout).map_err(|e| CniFailure {
                command: "ADD",
                plugin: plugin.plugin_type.clone(),
                kind: FailureKind::BadOutput {
                    status: "exit code 0".into(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    reason: format!("result is not JSON: {e}"),
                },
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })?;
            prev = Some(value);
        }
        let raw = prev.expect("a conflist has at least one plugin");
        let result = CniResult::from_value(raw.clone()).map_err(|e| CniFailure {
            command: "ADD",
            plugin: list.plugins.last().map(|p| p.plugin_type.clone()).unwrap_or_default(),
            kind: FailureKind::BadOutput {
                status: "exit code 0".into(),
                stdout: raw.to_string(),
                reason: format!("{e:#}"),
            },
            stderr: String::new(),
        })?;
        self.write_cache(list, att, &raw);
        Ok(result)
    }

    /// DEL through every plugin in reverse order, with the cached result as
    /// prevResult when there is one; the cache entry goes on success.
    pub fn del(&self, list: &Conflist, att: &Attachment) -> CniOutcome<()> {
        let cached = self.cached_result(list, att);
        for plugin in list.plugins.iter().rev() {
            let conf = list.plugin_config(plugin, cached.as_ref(), &att.capability_args);
            self.invoke("DEL", plugin, &conf, Some(att))?;
        }
        let _ = fs::remove_file(self.cache_path(list, att));
        Ok(())
    }

    /// CHECK through every plugin in order, with the cached ADD result.
    pub fn check(&self, list: &Conflist, att: &Attachment) -> CniOutcome<()> {
        if list.disable_check {
            return Ok(());
        }
        let cached = self.cached_result(list, att).ok_or_else(|| CniFailure {
            command: "CHECK",
            plugin: list.plugins[0].plugin_type.clone(),
            kind: FailureKind::NoCachedResult,
            stderr: String::new(),
        })?;
        for plugin in &list.plugins {
            let conf = list.plugin_config(plugin, Some(&cached), &att.capability_args);
            self.invoke("CHECK", plugin, &conf, Some(att))?;
        }
        Ok(())
    }

    /// STATUS of every plugin (1.1.0 lists only, as libcni: older lists have
    /// no STATUS and count as ready).
    pub fn status(&self, list: &Conflist) -> CniOutcome<()> {
        if !at_least_1_1(&list.cni_version) {
            return Ok(());
        }
        for plugin in &list.plugins {
            let conf = list.plugin_config(plugin, None, &Map::new());
            self.invoke("STATUS", plugin, &conf, None)?;
        }
        Ok(())
    }

    /// GC with `cni.dev/valid-attachments` = `valid` (container ID, ifname).
    /// Every plugin is called even if one fails; the first failure is returned.
    /// Cached results of attachments not in `valid` are dropped.
    pub fn gc(&self, list: &Conflist, valid: &[(String, String)]) -> CniOutcome<()> {
        if !at_least_1_1(&list.cni_version) || list.disable_gc {
            return Ok(());
        }
        let attachments: Vec<Value> = valid.iter().map(|(c, i)| json!({"containerID": c, "ifname": i})).collect();
        let mut first_failure = None;
        for plugin in &list.plugins {
            let mut conf = list.plugin_config(plugin, None, &Map::new());
            conf["cni.dev/valid-attachments"] = json!(attachments);
            // libcni also sends the name an early draft of the spec used.
            conf["cni.dev/attachments"] = json!(attachments);
            if let Err(e) = self.invoke("GC", plugin, &conf, None) {
                first_failure.get_or_insert(e);
            }
        }
        self.gc_cache(list, valid);
        first_failure.map_or(Ok(()), Err)
    }

    /// VERSION of one plugin: its answer as JSON.
    pub fn version(&self, plugin_type: &str, cni_version: &str) -> CniOutcome<Value> {
        let plugin = PluginConf::from_value(json!({"type": plugin_type})).expect("a type is enough");
        let out = self.invoke("VERSION", &plugin, &json!({"cniVersion": cni_version}), None)?;
        serde_json::from_slice(&out.stdout).map_err(|e| CniFailure {
            command: "VERSION",
            plugin: plugin_type.to_string(),
            kind: FailureKind::BadOutput {
                status: "exit code 0".into(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                reason: format!("not JSON: {e}"),
            },
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// The path of a plugin binary as CNI_PATH resolves it.
    pub fn find_plugin(&self, plugin_type: &str) -> Option<PathBuf> {
        self.cni_path.iter().map(|d| d.join(plugin_type)).find(|p| p.is_file())
    }

    fn invoke(
        &self,
        command: &'static str,
        plugin: &PluginConf,
        config: &Value,
        att: Option<&Attachment>,
    ) -> CniOutcome<exec::Output> {
        let failure = |kind, stderr: &[u8]| CniFailure {
            command,
            plugin: plugin.plugin_type.clone(),
            kind,
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        };
        let Some(binary) = self.find_plugin(&plugin.plugin_type) else {
            return Err(failure(FailureKind::NotFound(self.cni_path.clone()), b""));
        };
        let mut cmd = Command::new(&binary);
        // Plugins see the CNI variables and a PATH (portmap runs iptables),
        // not the test's whole environment; and weir-cni's step trace when
        // asked for (`WEIR_CNI_TRACE=<file>`, e.g. around `bench cni`).
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", std::env::join_paths(&self.cni_path).expect("CNI_PATH entries have no ':'"));
        if let Some(trace) = std::env::var_os("WEIR_CNI_TRACE") {
            cmd.env("WEIR_CNI_TRACE", trace);
        }
        if let Some(att) = att {
            cmd.env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_NETNS", &att.netns)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_ARGS", att.cni_args_env());
        }
        if let Some(ns) = &self.exec_netns {
            exec::enter_netns(&mut cmd, ns).map_err(|e| failure(FailureKind::Exec(format!("{e:#}")), b""))?;
        }
        let stdin = serde_json::to_vec(config).expect("a JSON value serializes");
        let out = exec::output(&mut cmd, Some(&stdin), self.timeout)
            .map_err(|e| failure(FailureKind::Exec(format!("{e:#}")), b""))?;
        if out.timed_out {
            return Err(failure(FailureKind::Exec(format!("killed after {:?}", self.timeout)), &out.stderr));
        }
        if !out.status.success() {
            let kind = match CniError::parse(&out.stdout) {
                Some(e) => FailureKind::Plugin(e),
                None => FailureKind::BadOutput {
                    status: out.describe_status(),
                    stdout: out.stdout_str(),
                    reason: "failed without the spec's error JSON on stdout".into(),
                },
            };
            return Err(failure(kind, &out.stderr));
        }
        Ok(out)
    }

    fn cache_path(&self, list: &Conflist, att: &Attachment) -> PathBuf {
        self.cache_dir.join("results").join(format!("{}-{}-{}", list.name, att.container_id, att.ifname))
    }

    pub fn cached_result(&self, list: &Conflist, att: &Attachment) -> Option<Value> {
        let bytes = fs::read(self.cache_path(list, att)).ok()?;
        let entry: Value = serde_json::from_slice(&bytes).ok()?;
        entry.get("result").cloned()
    }

    fn write_cache(&self, list: &Conflist, att: &Attachment, result: &Value) {
        let path = self.cache_path(list, att);
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "ifName": att.ifname,
            "networkName": list.name,
            "result": result,
        });
        // A cache that cannot be written only costs CHECK/DEL their prevResult;
        // the tests that need it will say so.
        let _ = fs::create_dir_all(path.parent().expect("cache path has a parent"));
        let _ = fs::write(&path, serde_json::to_vec(&entry).expect("JSON serializes"));
    }

    fn gc_cache(&self, list: &Conflist, valid: &[(String, String)]) {
        let Ok(entries) = fs::read_dir(self.cache_dir.join("results")) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            if field("networkName") == list.name && !valid.contains(&(field("containerId"), field("ifName"))) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether `version` is 1.1.0 or later (STATUS and GC exist from 1.1.0).
pub fn at_least_1_1(version: &str) -> bool {
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    parts.as_slice() >= [1, 1].as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comparison() {
        assert!(at_least_1_1("1.1.0"));
        assert!(at_least_1_1("1.2.0"));
        assert!(at_least_1_1("2.0.0"));
        assert!(!at_least_1_1("1.0.0"));
        assert!(!at_least_1_1("0.4.0"));
    }

    #[test]
    fn port_mappings_accumulate() {
        let att = Attachment::new("c", "/run/netns/x", "eth0")
            .with_port_mapping(8080, 80, "tcp")
            .with_port_mapping(5353, 53, "udp");
        let pm = att.capability_args["portMappings"].as_array().unwrap();
        assert_eq!(pm.len(), 2);
        assert_eq!(pm[1], json!({"hostPort": 5353, "containerPort": 53, "protocol": "udp"}));
    }

    /// The runtime against fake plugins (shell scripts): chaining, caching,
    /// DEL order, error parsing. No namespaces involved.
    #[test]
    fn runs_a_chain_of_fake_plugins() {
        let dir = std::env::temp_dir().join(format!("weir-testbed-runtime-{}", std::process::id()));
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let log = dir.join("log");
        // Both answer a result and log their command and stdin.
        let script =
            |body: &str| format!("#!/bin/sh\nin=$(cat)\necho \"$CNI_COMMAND $0 $in\" >> {}\n{body}\n", log.display());
        let write = |name: &str, body: &str| {
            let p = bin.join(name);
            fs::write(&p, script(body)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        };
        write(
            "first",
            r#"[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/32","interface":0}]}'; exit 0"#,
        );
        write(
            "second",
            r#"[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.3/32","interface":0}]}'; exit 0"#,
        );
        write("failing", r#"echo '{"cniVersion":"1.1.0","code":7,"msg":"bad config"}'; echo oops >&2; exit 1"#);

        let rt = CniRuntime::new(None, vec![bin.clone()], dir.join("cache"));
        let list = Conflist::parse(
            br#"{"cniVersion":"1.1.0","name":"t","plugins":[{"type":"first"},{"type":"second","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let att = Attachment::new("cid", "/run/netns/none", "eth0").with_port_mapping(1, 2, "tcp");
        let result = rt.add(&list, &att).unwrap();
        assert_eq!(result.pod_ipv4(), Some("10.0.0.3".parse().unwrap()), "the last plugin's result is the list's");
        assert!(rt.cached_result(&list, &att).is_some());
        rt.check(&list, &att).unwrap();
        rt.del(&list, &att).unwrap();
        assert!(rt.cached_result(&list, &att).is_none(), "DEL drops the cache entry");

        let calls: Vec<String> = fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                let mut w = l.split_whitespace();
                let cmd = w.next().unwrap().to_string();
                let plugin = Path::new(w.next().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
                format!("{cmd} {plugin}")
            })
            .collect();
        assert_eq!(calls, ["ADD first", "ADD second", "CHECK first", "CHECK second", "DEL second", "DEL first"]);
        let log_text = fs::read_to_string(&log).unwrap();
        let second_add = log_text.lines().find(|l| l.starts_with("ADD") && l.contains("/second ")).unwrap();
        assert!(second_add.contains(r#""runtimeConfig":{"portMappings""#), "second has the capability: {second_add}");
        assert!(second_add.contains(r#""prevResult":{"cniVersion":"1.1.0""#), "{second_add}");
        assert!(second_add.contains("10.0.0.2/32"), "first's result is second's prevResult: {second_add}");
        let del_first = log_text.lines().find(|l| l.starts_with("DEL") && l.contains("/first ")).unwrap();
        assert!(del_first.contains("10.0.0.3/32"), "DEL gets the cached final result: {del_first}");

        let failing = Conflist::parse(br#"{"cniVersion":"1.1.0","name":"t","plugins":[{"type":"failing"}]}"#).unwrap();
        let err = rt.add(&failing, &att).unwrap_err();
        assert_eq!(err.code(), Some(7));
        assert_eq!(err.stderr.trim(), "oops");
        let missing = Conflist::parse(br#"{"cniVersion":"1.1.0","name":"t","plugins":[{"type":"nope"}]}"#).unwrap();
        assert!(matches!(rt.status(&missing).unwrap_err().kind, FailureKind::NotFound(_)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
