//! The cluster's life: the images it needs, creating it from
//! manifests/kind-config.yaml (or its dual-stack variant), loading the images into its nodes, bpffs on
//! every node, and deleting it (or keeping it, `--keep`).

use std::{path::Path, process::Command};

use anyhow::{Result, bail};
use weir_testbed::{bins, exec};

use super::{KindE2eArgs, SHORT, Steps, WEIR_IMAGE, cluster::Cluster, family::IpFamily, must};

/// The weir image archive (built, or the existing one with `--no-build`)
/// and the test pod image in the local docker.
pub fn prepare_images(args: &KindE2eArgs, steps: &mut Steps) -> Result<()> {
    // The image is an OCI archive built without docker (`cargo xtask
    // image`), loaded into the nodes with `kind load image-archive`.
    let archive = bins::target_dir().join("weir-image.tar");
    if args.no_build {
        steps.next(&format!("use the existing image archive {} (--no-build)", archive.display()));
        if !archive.is_file() {
            bail!("{} does not exist; run without --no-build (or `cargo xtask image`)", archive.display());
        }
    } else {
        steps.next(&format!("build {WEIR_IMAGE} as {} (cargo xtask image)", archive.display()));
        crate::image::build_default(&archive)?;
    }

    steps.next(&format!("make the test pod image {} available", args.test_image));
    let have = exec::output(
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &args.test_image]),
        None,
        SHORT,
    )?;
    if have.success() {
        println!("    already in the local docker");
    } else {
        must(Command::new("docker").args(["pull", &args.test_image]))?;
    }
    Ok(())
}

/// Creates the cluster; refuses when one of that name exists.
pub fn create(cluster: &Cluster, root: &Path, family: IpFamily, steps: &mut Steps) -> Result<()> {
    let config = family.kind_config();
    steps.next(&format!("create kind cluster {:?} from {config}", cluster.name));
    let existing = exec::run(Command::new("kind").args(["get", "clusters"]), SHORT)?;
    if existing.lines().any(|l| l.trim() == cluster.name) {
        bail!(
            "a kind cluster named {:?} already exists; delete it (`kind delete cluster --name {}`) or pass --name",
            cluster.name,
            cluster.name
        );
    }
    must(Command::new("kind").args(["create", "cluster", "--name", &cluster.name, "--config"]).arg(root.join(config)))?;
    println!("    (if this run is interrupted: `kind delete cluster --name {}`)", cluster.name);
    Ok(())
}

/// The weir image archive and the test pod image into every node.
pub fn load_images(cluster: &Cluster, test_image: &str, steps: &mut Steps) -> Result<()> {
    steps.next("load the images into the kind nodes");
    let archive = bins::target_dir().join("weir-image.tar");
    must(Command::new("kind").arg("load").arg("image-archive").arg(&archive).args(["--name", &cluster.name]))?;
    must(Command::new("kind").args(["load", "docker-image", test_image, "--name", &cluster.name]))
}

/// Kind nodes start without bpffs: mount it on each.
pub fn mount_bpffs(cluster: &Cluster, steps: &mut Steps) -> Result<()> {
    steps.next("mount bpffs on every node (kind nodes start without it)");
    let nodes = exec::run(Command::new("kind").args(["get", "nodes", "--name", &cluster.name]), SHORT)?;
    for node in nodes.split_whitespace() {
        must(Command::new("docker").args([
            "exec",
            node,
            "sh",
            "-c",
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf",
        ]))?;
    }
    Ok(())
}

/// With `keep`, says how to reach and delete the cluster; otherwise
/// deletes it (a failure to is reported, not fatal).
pub fn keep_or_delete(cluster: &Cluster, keep: bool, steps: &mut Steps) {
    if keep {
        println!(
            "\nkind-e2e: cluster kept. kubectl --context {} get pods -A -o wide\ndelete it with: kind delete cluster --name {}",
            cluster.context(),
            cluster.name
        );
    } else {
        steps.next(&format!("delete kind cluster {:?}", cluster.name));
        if let Err(e) = must(Command::new("kind").args(["delete", "cluster", "--name", &cluster.name])) {
            eprintln!("kind-e2e: could not delete the cluster: {e:#}");
        }
    }
}
