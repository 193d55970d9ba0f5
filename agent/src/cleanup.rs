//! `weir-agent cleanup`: remove everything the agent made on this node so an
//! uninstall leaves it clean. Tries every step and reports every failure.
use anyhow::anyhow;
use tracing::{info, warn};

use crate::{
    app::READY_FILE,
    config::PathArgs,
    model::cni_conf::CONFLIST_FILE,
    node::{files, masquerade, routes::Routes},
};

pub async fn run(paths: PathArgs) -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();

    for path in [
        paths.cni_conf_dir.join(CONFLIST_FILE),
        paths.run_dir.join(READY_FILE),
        paths.run_dir.join(crate::node::policy_socket::SOCKET_FILE),
        paths.run_dir.join(crate::observe::cni_metrics::SOCKET_FILE),
        paths.run_dir.join(crate::observe::flows::SOCKET_FILE),
        paths.run_dir.join(crate::sync::names::NAMES_FILE),
    ] {
        match files::remove_if_exists(&path) {
            Ok(true) => info!(path = %path.display(), "removed"),
            Ok(false) => {}
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }

    match Routes::connect() {
        Ok(routes) => match routes.sync(&Default::default(), true).await {
            Ok(stats) => info!(deleted = stats.deleted, "peer routes removed"),
            Err(es) => errors.extend(es.into_iter().map(|e| e.to_string())),
        },
        Err(e) => errors.push(e.to_string()),
    }

    if let Err(e) = masquerade::remove() {
        errors.push(e.to_string());
    }

    // Unpinning links detaches the programs from any veth still present;
    // unpinning maps and programs frees them once nothing holds them.
    match std::fs::remove_dir_all(&paths.bpf_pin_dir) {
        Ok(()) => info!(dir = %paths.bpf_pin_dir.display(), "unpinned datapath"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("{}: {e}", paths.bpf_pin_dir.display())),
    }

    if errors.is_empty() {
        Ok(())
    } else {
        for e in &errors {
            warn!("{e}");
        }
        Err(anyhow!("cleanup finished with {} error(s): {}", errors.len(), errors.join("; ")))
    }
}
