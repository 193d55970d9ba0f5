//! The control-plane half: `weir-dev bench-control-plane` in a namespace
//! of its own, its JSON report.

use std::{path::Path, time::Duration};

use serde_json::Value;
use weir_testbed::Topology;

use super::{ENDPOINTS, ServicesBenchArgs};

pub(super) struct ControlPlane {
    pub(super) report: std::result::Result<Value, String>,
}

pub(super) fn control_plane(topo: &Topology, release: &Path, args: &ServicesBenchArgs) -> ControlPlane {
    let (services, endpoints, changes) =
        (args.cp_services.to_string(), ENDPOINTS.to_string(), args.changes.to_string());
    let cmd = ["bench-control-plane", "--services", &services, "--endpoints", &endpoints, "--changes", &changes];
    let report = crate::bench::weir_dev::report(topo, release, &cmd, &[], Duration::from_secs(300));
    ControlPlane { report: report.map_err(|e| format!("{e:#}")) }
}
