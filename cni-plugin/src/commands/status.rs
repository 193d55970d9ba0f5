//! STATUS: can this node take pods? Only availability is judged: the agent
//! has finished setting the node up, and the IPAM store can be used. A full
//! podCIDR is not "unavailable" (existing pods are fine; ADD reports it).

use crate::{
    config::NetConf,
    error::CniError,
    ipam::{DiskStore, Store},
};

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let ready = conf.agent_ready_path();
    match ready.try_exists() {
        Ok(true) => {}
        Ok(false) => {
            return Err(CniError::NotAvailable {
                reason: format!(
                    "weir-agent has not finished setting up this node: {} does not exist (is the weir-agent pod running on this node?)",
                    ready.display()
                ),
            });
        }
        Err(e) => {
            return Err(CniError::NotAvailable {
                reason: format!("cannot tell whether weir-agent is ready: {}: {e}", ready.display()),
            });
        }
    }

    // Taking the store's lock exercises exactly what ADD needs: the
    // directory exists (or can be created) and the lock file is writable.
    DiskStore::open(&conf.ipam_dir())
        .and_then(|store| store.locked(|_| Ok(())))
        .map_err(|e| CniError::NotAvailable { reason: format!("the IPAM store is not usable: {e}") })
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use serde_json::json;

    use super::*;

    fn conf(data: &Path, run: &Path) -> NetConf {
        NetConf::parse(
            json!({
                "cniVersion": "1.1.0",
                "name": "weir",
                "podCIDR": "10.244.1.0/24",
                "clusterCIDR": "10.244.0.0/16",
                "dataDir": data,
                "runDir": run,
            })
            .as_object()
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn not_available_until_agent_ready_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let c = conf(&tmp.path().join("data"), &tmp.path().join("run"));
        let err = status(&c).unwrap_err();
        assert_eq!(err.code(), 50);
        assert!(err.to_string().contains("agent-ready does not exist"), "{err}");

        fs::create_dir_all(tmp.path().join("run")).unwrap();
        fs::write(tmp.path().join("run/agent-ready"), r#"{"podCIDR":"10.244.1.0/24"}"#).unwrap();
        status(&c).unwrap();
        assert!(tmp.path().join("data/ipam/weir/lock").exists());
    }

    #[test]
    fn not_available_when_ipam_dir_is_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("agent-ready"), "{}").unwrap();
        // dataDir is a file: the store directory cannot be created.
        fs::write(tmp.path().join("data"), "").unwrap();
        let err = status(&conf(&tmp.path().join("data"), tmp.path())).unwrap_err();
        assert_eq!(err.code(), 50);
        assert!(err.to_string().starts_with("the IPAM store is not usable"), "{err}");
    }
}
