//! The `CNI_*` environment variables: read once, checked per command.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use crate::{
    attachment::{Attachment, check_identifier, check_ifname},
    error::CniError,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS` pairs, in order. Kubernetes runtimes pass `K8S_POD_*` here;
    /// weir-cni only uses them in log lines.
    pub args: Vec<(String, String)>,
}

impl Env {
    /// Reads the variables from `vars` (the process environment in `main`).
    /// An empty variable counts as unset, as in the reference implementation.
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Self, CniError> {
        let mut command = None;
        let mut container_id = None;
        let mut netns = None;
        let mut ifname = None;
        let mut args = None;
        for (key, value) in vars {
            let slot = match key.to_str() {
                Some("CNI_COMMAND") => (&mut command, "CNI_COMMAND"),
                Some("CNI_CONTAINERID") => (&mut container_id, "CNI_CONTAINERID"),
                Some("CNI_NETNS") => (&mut netns, "CNI_NETNS"),
                Some("CNI_IFNAME") => (&mut ifname, "CNI_IFNAME"),
                Some("CNI_ARGS") => (&mut args, "CNI_ARGS"),
                _ => continue,
            };
            let value = value
                .into_string()
                .map_err(|_| CniError::InvalidEnv { var: slot.1, reason: "is not valid UTF-8".into() })?;
            if !value.is_empty() {
                *slot.0 = Some(value);
            }
        }

        let command = match command.as_deref() {
            None => {
                return Err(CniError::InvalidEnv {
                    var: "CNI_COMMAND",
                    reason: "is not set; expected ADD, DEL, CHECK, STATUS, GC or VERSION".into(),
                });
            }
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::InvalidEnv {
                    var: "CNI_COMMAND",
                    reason: format!("{other:?} is not a CNI command; expected ADD, DEL, CHECK, STATUS, GC or VERSION"),
                });
            }
        };
        Ok(Self {
            command,
            container_id,
            netns: netns.map(PathBuf::from),
            ifname,
            args: args.as_deref().map(parse_args).transpose()?.unwrap_or_default(),
        })
    }

    /// `CNI_CONTAINERID` and `CNI_IFNAME`, both required and validated.
    pub fn attachment(&self) -> Result<Attachment, CniError> {
        let missing = |var| CniError::InvalidEnv { var, reason: format!("is required for {}", self.command.as_str()) };
        let container_id = self.container_id.as_deref().ok_or_else(|| missing("CNI_CONTAINERID"))?;
        check_identifier(container_id).map_err(|reason| CniError::InvalidEnv { var: "CNI_CONTAINERID", reason })?;
        let ifname = self.ifname.as_deref().ok_or_else(|| missing("CNI_IFNAME"))?;
        check_ifname(ifname).map_err(|reason| CniError::InvalidEnv { var: "CNI_IFNAME", reason })?;
        Ok(Attachment::new(container_id, ifname))
    }

    /// `CNI_NETNS`, validated when present.
    pub fn netns_path(&self) -> Result<Option<&Path>, CniError> {
        match &self.netns {
            Some(path) if !path.is_absolute() => Err(CniError::InvalidEnv {
                var: "CNI_NETNS",
                reason: format!("{} is not an absolute path", path.display()),
            }),
            other => Ok(other.as_deref()),
        }
    }

    /// `CNI_NETNS` for the commands that must have it.
    pub fn required_netns_path(&self) -> Result<&Path, CniError> {
        self.netns_path()?.ok_or_else(|| CniError::InvalidEnv {
            var: "CNI_NETNS",
            reason: format!("is required for {}", self.command.as_str()),
        })
    }

    /// The Kubernetes pod, when the runtime says which (CNI_ARGS).
    pub fn pod_ref(&self) -> Option<crate::policy_handoff::PodRef> {
        let get = |k: &str| self.args.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        match (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) {
            (Some(namespace), Some(name)) if !namespace.is_empty() && !name.is_empty() => {
                Some(crate::policy_handoff::PodRef { namespace, name })
            }
            _ => None,
        }
    }

    /// A short description of the pod for log lines.
    pub fn pod_label(&self) -> Option<String> {
        let get = |k: &str| self.args.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        match (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) {
            (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
            _ => None,
        }
    }
}

/// `CNI_ARGS` is `KEY=VALUE` pairs separated by `;`.
fn parse_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: format!("{pair:?} is not a KEY=VALUE pair (pairs are separated by ';')"),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::from_vars(pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
    }

    #[test]
    fn reads_all_variables() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.attachment().unwrap(), Attachment::new("abc", "eth0"));
        assert_eq!(e.required_netns_path().unwrap(), Path::new("/run/netns/x"));
        assert_eq!(e.pod_label().as_deref(), Some("default/web"));
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        assert_eq!(env(&[]).unwrap_err().code(), 4);
        assert_eq!(env(&[("CNI_COMMAND", "")]).unwrap_err().code(), 4);
        let err = env(&[("CNI_COMMAND", "INIT")]).unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("\"INIT\" is not a CNI command"), "{err}");
    }

    #[test]
    fn attachment_variables_are_required_and_validated() {
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")]).unwrap();
        let err = e.attachment().unwrap_err();
        assert_eq!(err.code(), 4);
        assert_eq!(err.to_string(), "environment variable CNI_CONTAINERID: is required for DEL");

        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0:1")]).unwrap();
        let err = e.attachment().unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().starts_with("environment variable CNI_IFNAME:"), "{err}");

        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "../x"), ("CNI_IFNAME", "eth0")]).unwrap();
        assert_eq!(e.attachment().unwrap_err().code(), 4);
    }

    #[test]
    fn netns_must_be_absolute_and_present_when_required() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "run/netns/x")]).unwrap();
        assert_eq!(e.required_netns_path().unwrap_err().code(), 4);
        let e = env(&[("CNI_COMMAND", "DEL")]).unwrap();
        assert_eq!(e.netns_path().unwrap(), None);
        assert_eq!(e.required_netns_path().unwrap_err().code(), 4);
    }

    #[test]
    fn malformed_cni_args_is_code_4() {
        let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", "A=1;oops")]).unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("\"oops\" is not a KEY=VALUE pair"), "{err}");
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", "A=1;;B=x=y;")]).unwrap();
        assert_eq!(e.args, vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
    }
}
