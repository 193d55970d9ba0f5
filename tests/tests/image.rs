//! `cargo xtask image` without a Docker engine: the archive it writes (from
//! the debug binaries, to keep this quick) is the same twice over, imports
//! into a private containerd under its name and digest, and everything the
//! DaemonSet runs works from it: the entrypoint, the install-cni init
//! container's command exactly as manifests/weir.yaml has it, weir-agent
//! and weir-cni, the agent's own masquerade rules through iptables-restore
//! and iptables (nf_tables and legacy, with their extension modules), and
//! the CA bundle. Containers run in network namespaces of their own inside
//! the test's node namespace: nothing touches the root namespace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::Deserialize as _;
use serde_yaml::Value;
use weir_agent::node::masquerade;
use weir_testbed::{Topology, bins, containerd::Containerd, exec, oci, tools};

const IMAGE: &str = "docker.io/library/weir:image-test";
/// The cluster CIDR the agent's masquerade rules are written for.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The xtask binary `cargo xtask test` builds along with everything else.
fn xtask() -> PathBuf {
    let path = bins::target_dir().join("debug").join("xtask");
    assert!(
        path.is_file(),
        "{} not found: build it with `cargo build -p xtask` (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// Runs `xtask image` and returns the manifest digest it printed.
fn build_image(bin_dir: &Path, out: &Path) -> String {
    let mut cmd = Command::new(xtask());
    cmd.args(["image", "--tag", IMAGE, "--bin-dir"]).arg(bin_dir).arg("--output").arg(out);
    let o = exec::output(&mut cmd, None, Duration::from_secs(600)).unwrap();
    assert!(o.success(), "xtask image {}:\n{}\n{}", o.describe_status(), o.stdout_str(), o.stderr_str());
    let stdout = o.stdout_str();
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("manifest").map(|d| d.trim().to_string()))
        .unwrap_or_else(|| panic!("no manifest digest in:\n{stdout}"))
}

/// The DaemonSet's containers from manifests/weir.yaml: (init containers, containers).
fn daemonset_containers() -> (Vec<Value>, Vec<Value>) {
    let path = bins::workspace_root().join("manifests/weir.yaml");
    let text = fs::read_to_string(&path).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap();
        if v["kind"] == "DaemonSet" {
            let spec = &v["spec"]["template"]["spec"];
            let list = |key: &str| spec[key].as_sequence().cloned().unwrap_or_default();
            return (list("initContainers"), list("containers"));
        }
    }
    panic!("no DaemonSet in {}", path.display());
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// One `ctr run --rm` of the image; panics with everything known when it
/// does not finish.
fn run(containerd: &Containerd, args: &[&str]) -> exec::Output {
    let mut cmd = containerd.ctr_run(args).unwrap();
    let out = exec::output(&mut cmd, None, RUN_TIMEOUT).unwrap();
    assert!(!out.timed_out, "ctr run {args:?} timed out; containerd log:\n{}", containerd.log_tail());
    out
}

/// The binaries as they are now (other builds may replace target/debug's
/// while this runs), built into an archive twice: same bytes. Returns the
/// archive, its manifest digest and the weir-cni it was built from.
fn build_twice(root: &Path) -> (PathBuf, String, PathBuf) {
    let bin_dir = root.join("image-bins");
    fs::create_dir_all(&bin_dir).unwrap();
    let weir_cni = bins::weir_cni().unwrap();
    fs::copy(bins::weir_agent().unwrap(), bin_dir.join("weir-agent")).unwrap();
    fs::copy(&weir_cni, bin_dir.join("weir-cni")).unwrap();
    let (a, b) = (root.join("weir-image-a.tar"), root.join("weir-image-b.tar"));
    let digest = build_image(&bin_dir, &a);
    assert_eq!(build_image(&bin_dir, &b), digest, "two builds, two manifest digests");
    assert_eq!(oci::hash_file(&a).unwrap(), oci::hash_file(&b).unwrap(), "two builds, two archives");
    fs::remove_file(&b).unwrap();
    (a, digest, weir_cni)
}

/// Runs install-cni exactly as the manifest does, onto a host directory,
/// and checks it left only `weir_cni` there.
fn install_cni(containerd: &Containerd, root: &Path, init: &[Value], id: &str, weir_cni: &Path) {
    let install =
        init.iter().find(|c| c["name"] == "install-cni").expect("weir.yaml has an install-cni init container");
    let cni_bin = root.join("host-cni-bin");
    fs::create_dir_all(&cni_bin).unwrap();
    let mount_path = install["volumeMounts"][0]["mountPath"].as_str().unwrap().to_string();
    let mount = format!("type=bind,src={},dst={mount_path},options=rbind:rw", cni_bin.display());
    let argv: Vec<String> = strings(&install["command"]).into_iter().chain(strings(&install["args"])).collect();
    assert!(!argv.is_empty(), "install-cni has no command");
    let mut args: Vec<&str> = vec!["--rm", "--mount", &mount, IMAGE, id];
    args.extend(argv.iter().map(String::as_str));
    let out = run(containerd, &args);
    assert!(
        out.success(),
        "install-cni {argv:?} ({}):\n{}{}",
        out.describe_status(),
        out.stdout_str(),
        out.stderr_str()
    );
    let installed = cni_bin.join("weir-cni");
    assert_eq!(
        oci::hash_file(&installed).unwrap(),
        oci::hash_file(weir_cni).unwrap(),
        "{} is not weir-cni",
        installed.display()
    );
    let leftovers: Vec<_> = fs::read_dir(&cni_bin).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only weir-cni is left in the CNI bin dir: {leftovers:?}");
}

/// The checks run in the image, by section name.
fn checks(agent_cmd: &str) -> Vec<(&'static str, String)> {
    let chain = masquerade::CHAIN;
    vec![
        ("agent", format!("{agent_cmd} --version")),
        ("cni", "CNI_COMMAND=VERSION weir-cni </dev/null".into()),
        ("iptables", "iptables --version".into()),
        ("legacy", "iptables-legacy --version && iptables-legacy -w -t nat -L -n".into()),
        // What agent/src/node/masquerade.rs runs.
        ("restore", "printf '%s' \"$WEIR_RULES\" | iptables-restore -w --noflush".into()),
        (
            "jump",
            format!(
                "iptables -w -t nat -A POSTROUTING -m comment --comment 'weir: image test' -j {chain} && iptables -w -t nat -C POSTROUTING -m comment --comment 'weir: image test' -j {chain}"
            ),
        ),
        ("rules", "iptables-save -t nat".into()),
        ("certs", "grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt".into()),
        ("tools", "ls /bin/sh /bin/cp /bin/mv && id -un".into()),
    ]
}

/// Runs every check in one container with NET_ADMIN in its own network
/// namespace; each prints a section and its exit code. Returns the output.
fn run_checks(containerd: &Containerd, id: &str, agent_cmd: &str) -> String {
    let rules = masquerade::rules(CLUSTER_CIDR.parse().unwrap());
    let script: String = checks(agent_cmd)
        .iter()
        .map(|(name, cmd)| format!("echo '== {name}'; ( {cmd} ) 2>&1; echo \"== rc=$?\"\n"))
        .collect();
    let env = format!("WEIR_RULES={rules}");
    let out =
        run(containerd, &["--rm", "--cap-add", "CAP_NET_ADMIN", "--env", &env, IMAGE, id, "/bin/sh", "-c", &script]);
    let text = out.stdout_str();
    assert!(out.success(), "checks ({}):\n{text}{}", out.describe_status(), out.stderr_str());
    text
}

/// The output of check `name`, which must have exited 0.
fn section(text: &str, name: &str) -> String {
    let start = text.find(&format!("== {name}\n")).unwrap_or_else(|| panic!("no section {name} in:\n{text}"));
    let body = &text[start + name.len() + 4..];
    let end = body.find("== rc=").unwrap_or_else(|| panic!("section {name} unfinished:\n{text}"));
    let rc = body[end + 6..].lines().next().unwrap_or_default().trim();
    assert_eq!(rc, "0", "{name} failed in the image:\n{}", &body[..end]);
    body[..end].to_string()
}

/// What each check must have printed.
fn assert_checks(text: &str) {
    let (chain, cidr) = (masquerade::CHAIN, CLUSTER_CIDR);
    let v = section(text, "agent");
    assert!(v.starts_with("weir-agent "), "{v}");
    let v = section(text, "cni");
    assert!(v.contains("\"supportedVersions\"") && v.contains("1.1.0"), "{v}");
    let v = section(text, "iptables");
    assert!(v.contains("nf_tables"), "iptables is the nf_tables backend: {v}");
    let v = section(text, "legacy");
    assert!(v.contains("legacy") && v.contains("Chain POSTROUTING"), "{v}");
    section(text, "restore");
    section(text, "jump");
    let v = section(text, "rules");
    for rule in [
        format!("-A {chain} -d {cidr} -j RETURN"),
        format!("-A {chain} -s {cidr} -j MASQUERADE --random-fully"),
        format!("-A POSTROUTING -m comment --comment \"weir: image test\" -j {chain}"),
    ] {
        assert!(v.contains(&rule), "{rule:?} not in:\n{v}");
    }
    let v = section(text, "certs");
    assert!(v.trim().parse::<u32>().is_ok_and(|n| n > 50), "CA bundle: {v}");
    let v = section(text, "tools");
    assert!(v.contains("root"), "{v}");
}

#[test]
#[ignore = "privileged: needs root (containerd, runc, network namespaces)"]
fn image_archive_imports_into_containerd_and_runs_what_the_daemonset_runs() {
    weir_testbed::privileged(&[tools::IP, tools::CONTAINERD, tools::CTR, tools::RUNC, tools::BUSYBOX, tools::IPTABLES]);
    let topo = Topology::builder("image").nodes(1).build().unwrap();
    let node = topo.node("n1");
    let root = node.dirs.root.clone();
    let (archive, digest, weir_cni) = build_twice(&root);

    let containerd = Containerd::start(node).unwrap();
    containerd.import(&archive).unwrap();
    let images = containerd.images().unwrap();
    assert!(
        images.iter().any(|(name, d)| name == IMAGE && *d == digest),
        "{IMAGE} @ {digest} not among the imported images: {images:?}"
    );
    let id = |what: &str| format!("{}-{what}", topo.prefix());

    // The entrypoint: weir-agent, which without a command prints its usage.
    let out = run(&containerd, &["--rm", IMAGE, &id("entrypoint")]);
    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(text.contains("Usage: weir-agent"), "entrypoint ({}):\n{text}", out.describe_status());

    // install-cni exactly as the manifest runs it, onto a host directory.
    let (init, containers) = daemonset_containers();
    install_cni(&containerd, &root, &init, &id("install-cni"), &weir_cni);

    // The rest in one container with NET_ADMIN in its own network namespace:
    // each check prints a section and its exit code.
    let agent = containers.iter().find(|c| c["name"] == "weir-agent").expect("weir-agent container");
    let agent_cmd = strings(&agent["command"]).into_iter().next().expect("the agent's command");
    let text = run_checks(&containerd, &id("checks"), &agent_cmd);
    assert_checks(&text);
}
