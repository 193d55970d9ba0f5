//! `cargo xtask kind-e2e`: weir on a real Kubernetes cluster (kind).
//!
//! Builds the image archive (`cargo xtask image`, no docker build), creates a
//! kind cluster from manifests/kind-config.yaml (a control plane and two
//! workers, no default CNI, no kube-proxy), loads the image into the nodes
//! (`kind load image-archive`), applies manifests/weir.yaml with the API
//! server's address in its ConfigMap, waits for the DaemonSet and the nodes, then checks
//! on the cluster: pods on two nodes, ping and HTTP between them, a
//! ClusterIP Service (by address and by DNS name), a NodePort from other
//! nodes, and NetworkPolicy (default-deny ingress blocks, an allow policy
//! opens for the pods it names only). The cluster is deleted at the end
//! unless `--keep`. `--ip-family dual` creates a dual-stack cluster from
//! manifests/kind-config-dual.yaml and checks pod to pod over IPv6 too
//! (`family`).
//!
//! Test pods run `busybox` (docker.io/library/busybox, about 2 MB: `sh`,
//! `httpd`, `wget`, `ping`). It is pulled on this machine and loaded into the
//! nodes with `kind load`, so the nodes need no registry access. The test
//! objects are the YAML files under manifests/e2e/.
//!
//! Exit codes: 0 every check passed; 1 something failed; 2 a prerequisite
//! (docker and its daemon, kind, kubectl) is missing and nothing was tested.
//!
//! The run, in the order of the files: `prerequisites` (checked before
//! anything else), `lifecycle` (images, creating and deleting the cluster),
//! `setup` (weir and the test objects on the cluster), `checks`, `report`;
//! `cluster` and `objects` are what they share.

mod checks;
mod cluster;
mod family;
mod lifecycle;
mod objects;
mod prerequisites;
mod report;
mod setup;

use std::{
    path::Path,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::Result;
use clap::Args;
use weir_testbed::bins;

use checks::Check;
use cluster::Cluster;

/// What manifests/weir.yaml runs (imagePullPolicy: IfNotPresent, so the
/// copy `kind load` puts on the nodes is used).
const WEIR_IMAGE: &str = "ghcr.io/weir-net/weir:latest";
const TEST_IMAGE: &str = "docker.io/library/busybox:1.36.1";
const NAMESPACE: &str = "weir-e2e";
const HTTP_PORT: u16 = 8080;
/// How long a change (new endpoints, a new policy) may take to reach the
/// datapath before a check gives up.
const SETTLE: Duration = Duration::from_secs(45);
const SHORT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct KindE2eArgs {
    /// Leave the cluster up at the end (also after a failure) and print how
    /// to reach and delete it.
    #[arg(long)]
    keep: bool,
    /// Name of the kind cluster (must not exist yet).
    #[arg(long, default_value = "weir-e2e")]
    name: String,
    /// Do not build the weir image: use the archive an earlier run (or
    /// `cargo xtask image`) left at <target dir>/weir-image.tar.
    #[arg(long)]
    no_build: bool,
    /// Image of the test pods: needs sh, httpd, wget and ping (busybox).
    #[arg(long, default_value = TEST_IMAGE)]
    test_image: String,
    /// The cluster's families: `dual` is kind's `ipFamily: dual`
    /// (manifests/kind-config-dual.yaml) with pod-to-pod checks over IPv6
    /// too; Services and NetworkPolicy are checked over IPv4 either way.
    #[arg(long, value_enum, default_value_t)]
    ip_family: family::IpFamily,
}

pub fn run(args: KindE2eArgs) -> Result<ExitCode> {
    if !prerequisites::met(&rerun_command(&args)) {
        return Ok(ExitCode::from(2));
    }

    let root = bins::workspace_root();
    let cluster = Cluster { name: args.name.clone() };
    let mut steps = Steps::default();
    lifecycle::prepare_images(&args, &mut steps)?;
    lifecycle::create(&cluster, &root, args.ip_family, &mut steps)?;

    let outcome = on_cluster(&cluster, &args, &root, &mut steps);
    let failed = report::failed(&outcome);
    if failed > 0 {
        cluster.diagnostics();
    }
    report::results(&outcome);
    lifecycle::keep_or_delete(&cluster, args.keep, &mut steps);
    report::exit_code(outcome, failed)
}

/// Everything after the cluster exists: setup steps fail the run, checks
/// are all tried and collected.
fn on_cluster(cluster: &Cluster, args: &KindE2eArgs, root: &Path, steps: &mut Steps) -> Result<Vec<Check>> {
    lifecycle::load_images(cluster, &args.test_image, steps)?;
    lifecycle::mount_bpffs(cluster, steps)?;
    setup::install_weir(cluster, root, args.ip_family, steps)?;
    let on = setup::test_objects(cluster, &args.test_image, args.ip_family, steps)?;
    let mut checks = Vec::new();
    steps.next("connectivity checks");
    checks::connectivity(cluster, &on, &mut checks)?;
    checks::network_policy(cluster, &on, steps, &mut checks)?;
    Ok(checks)
}

/// The command to run again once the prerequisites are met.
fn rerun_command(args: &KindE2eArgs) -> String {
    match args.ip_family {
        family::IpFamily::Ipv4 => "cargo xtask kind-e2e".to_string(),
        f => format!("cargo xtask kind-e2e --ip-family {}", f.flag()),
    }
}

#[derive(Default)]
struct Steps(usize);

impl Steps {
    fn next(&mut self, what: &str) {
        self.0 += 1;
        println!("\n[kind-e2e step {}] {what}", self.0);
    }
}

/// Runs with the output on the terminal; a non-zero exit is an error.
fn must(cmd: &mut Command) -> Result<()> {
    crate::cargo::must(cmd)
}
