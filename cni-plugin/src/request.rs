//! Turns the environment and the decoded configuration into one validated
//! request per command. Everything that can be checked without changing the
//! system is checked here, before any command runs.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::{
    attachment::Attachment,
    config::NetConf,
    env::{Command, Env},
    error::CniError,
    netns::Netns,
    result::PrevResult,
    version::CniVersion,
};

#[derive(Debug)]
pub enum Request {
    Version {
        version: CniVersion,
    },
    Add {
        conf: NetConf,
        attachment: Attachment,
        netns: Netns,
        /// The Kubernetes pod (from CNI_ARGS): its endpoint starts "policy
        /// pending" until the agent has its policy in place.
        pod: Option<crate::policy_handoff::PodRef>,
    },
    Del {
        conf: NetConf,
        attachment: Attachment,
    },
    Check {
        conf: NetConf,
        attachment: Attachment,
        netns: Netns,
        prev: PrevResult,
    },
    Status {
        conf: NetConf,
    },
    Gc {
        conf: NetConf,
        keep: HashSet<Attachment>,
    },
}

/// Builds the request for `env.command`. Within each command the environment is checked
/// before the configuration, as the reference implementation does.
pub fn parse(env: &Env, conf: &Map<String, Value>) -> Result<Request, CniError> {
    let command = env.command;
    let needs = |conf: &NetConf, minimum: CniVersion| {
        if conf.cni_version < minimum {
            Err(CniError::CommandNeedsVersion { command: command.as_str(), minimum, configured: conf.cni_version })
        } else {
            Ok(())
        }
    };

    match command {
        Command::Add => {
            let attachment = env.attachment()?;
            let netns_path = env.required_netns_path()?;
            let conf = NetConf::parse(conf)?;
            Ok(Request::Add { netns: Netns::open(netns_path)?, conf, attachment, pod: env.pod_ref() })
        }
        Command::Del => {
            let attachment = env.attachment()?;
            // Checked for shape only: deleting the host end of the veth
            // removes the pod end, so DEL never enters the namespace.
            env.netns_path()?;
            Ok(Request::Del { conf: NetConf::parse(conf)?, attachment })
        }
        Command::Check => {
            let attachment = env.attachment()?;
            let netns_path = env.required_netns_path()?;
            let conf = NetConf::parse(conf)?;
            needs(&conf, CniVersion::V0_4_0)?;
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::invalid_config("prevResult", "is required for CHECK (the result of the ADD being checked)")
            })?;
            let prev = PrevResult::parse(prev)?;
            Ok(Request::Check { netns: Netns::open(netns_path)?, conf, attachment, prev })
        }
        Command::Status => {
            let conf = NetConf::parse(conf)?;
            needs(&conf, CniVersion::V1_1_0)?;
            Ok(Request::Status { conf })
        }
        Command::Version => Ok(Request::Version {
            // Answer in the caller's version when it is one we speak.
            version: crate::config::requested_version(conf).unwrap_or(CniVersion::LATEST),
        }),
        Command::Gc => {
            let conf = NetConf::parse(conf)?;
            needs(&conf, CniVersion::V1_1_0)?;
            // Without the list there is no way to tell stale from live:
            // refuse rather than remove everything.
            let keep = conf.valid_attachments.clone().ok_or_else(|| {
                CniError::invalid_config(
                    "cni.dev/valid-attachments",
                    "is required for GC (the attachments to keep; [] removes all)",
                )
            })?;
            Ok(Request::Gc { keep: keep.into_iter().collect(), conf })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use serde_json::json;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_vars(pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)))).unwrap()
    }

    fn conf(version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "weir",
            "type": "weir-cni",
            "podCIDR": "10.244.1.0/24",
            "clusterCIDR": "10.244.0.0/16",
        })
    }

    fn parse_err(env: &Env, conf: Value) -> CniError {
        parse(env, conf.as_object().unwrap()).unwrap_err()
    }

    #[test]
    fn check_needs_0_4_0_and_prev_result() {
        let e = env(&[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/proc/self/ns/net"),
        ]);
        let err = parse_err(&e, conf("0.3.1"));
        assert_eq!(err.code(), 1);
        assert_eq!(err.to_string(), "CHECK needs cniVersion 0.4.0 or later, but the configuration has 0.3.1");
        let err = parse_err(&e, conf("1.0.0"));
        assert_eq!(err.code(), 7);
        assert!(err.to_string().contains("prevResult: is required for CHECK"), "{err}");
    }

    #[test]
    fn gc_and_status_need_1_1_0() {
        for cmd in ["GC", "STATUS"] {
            let err = parse_err(&env(&[("CNI_COMMAND", cmd)]), conf("1.0.0"));
            assert_eq!(err.code(), 1, "{cmd}");
        }
        assert!(matches!(
            parse(&env(&[("CNI_COMMAND", "STATUS")]), conf("1.1.0").as_object().unwrap()),
            Ok(Request::Status { .. })
        ));
    }

    #[test]
    fn gc_without_attachment_list_is_refused() {
        let err = parse_err(&env(&[("CNI_COMMAND", "GC")]), conf("1.1.0"));
        assert_eq!(err.code(), 7);
        assert!(err.to_string().contains("cni.dev/valid-attachments"), "{err}");
        let mut c = conf("1.1.0");
        c["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
        match parse(&env(&[("CNI_COMMAND", "GC")]), c.as_object().unwrap()).unwrap() {
            Request::Gc { keep, .. } => assert!(keep.contains(&Attachment::new("a", "eth0"))),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn add_validates_env_before_config() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]);
        // Both the netns and the config are wrong: the environment is reported.
        let err = parse_err(&e, json!({}));
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("CNI_NETNS"), "{err}");
    }

    #[test]
    fn add_with_missing_netns_is_code_3() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent/weir-test-netns"),
        ]);
        let err = parse_err(&e, conf("1.1.0"));
        assert_eq!(err.code(), 3);
        assert_eq!(err.to_string(), "network namespace /nonexistent/weir-test-netns does not exist");
    }

    #[test]
    fn add_with_a_file_that_is_not_a_netns_is_code_4() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", tmp.path().to_str().unwrap()),
        ]);
        let err = parse_err(&e, conf("1.1.0"));
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("is not a network namespace"), "{err}");
    }

    #[test]
    fn del_needs_no_netns() {
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]);
        assert!(matches!(parse(&e, conf("0.3.0").as_object().unwrap()), Ok(Request::Del { .. })));
    }
}
