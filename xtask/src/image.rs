//! `cargo xtask image`: weir's container image as an archive, built without
//! a Docker engine (containerd-only nodes and this project's test machines
//! have none).
//!
//! One layer holds the release binaries (`/usr/local/bin/weir-agent`,
//! `/usr/local/bin/weir-cni`) and, copied from this host's Debian packages,
//! what the DaemonSet runs besides them (manifests/weir.yaml):
//! - the install-cni init container: `/bin/sh -c 'cp ... && mv -f ...'`,
//!   from busybox (`busybox-static`, every applet linked);
//! - the agent's masquerade rules (agent/src/node/masquerade.rs):
//!   `iptables` and `iptables-restore` (package `iptables`: both backends,
//!   `iptables`/`-save`/`-restore` are nf_tables like Debian's default and
//!   the Dockerfile's image, `iptables-legacy*` are there too) with every
//!   xtables extension module (`-m comment`, `-j MASQUERADE`, ...);
//! - CA certificates (`ca-certificates`), `/etc/protocols`, `/etc/services`
//!   and `/etc/ethertypes` when the host has them (`netbase`), minimal
//!   `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf`, `/etc/hosts`;
//! - every shared library and the loader these need, found from their ELF
//!   headers (PT_INTERP, DT_NEEDED), and checked: a link that leads nowhere
//!   or a library the loader would not find fails the build.
//!
//! The reference `portmap` plugin is not in the image, as it is not in the
//! Dockerfile's: the agent looks for it in the node's /opt/cni/bin (mounted
//! from the host, where kind and most distributions put the reference
//! plugins) and chains it when found.
//!
//! The archive is an OCI image layout that also carries docker's
//! `manifest.json` (see `weir_testbed::oci::write_image_archive`):
//! `ctr -n k8s.io images import`, `kind load image-archive` and
//! `docker load` all take it. It is deterministic: entries sorted, times,
//! owners and modes normalised, so the same binaries and host packages give
//! the same digest.

mod elf;
mod rootfs;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use weir_testbed::{
    bins, exec,
    oci::{self, ArchiveDigests, EPOCH, ImageRef},
};

use self::rootfs::Rootfs;
use crate::cargo;

/// What manifests/weir.yaml runs (`imagePullPolicy: IfNotPresent`: the
/// imported copy is used), so an imported archive needs no retagging.
pub const DEFAULT_TAG: &str = "ghcr.io/weir-net/weir:latest";
pub const ENTRYPOINT: &str = "/usr/local/bin/weir-agent";
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const BINARIES: [&str; 2] = ["weir-agent", "weir-cni"];

#[derive(Args)]
pub struct ImageArgs {
    /// Where to write the archive [default: <target dir>/weir-image.tar].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The image's name in the archive: what `ctr images ls`, `docker images`
    /// and the nodes of a kind cluster call it.
    #[arg(long, default_value = DEFAULT_TAG)]
    tag: String,
    /// Do not build: use the release binaries already in <target dir>/release.
    #[arg(long)]
    no_build: bool,
    /// Take weir-agent and weir-cni from this directory (e.g. target/debug
    /// for a quick test image) instead of building release binaries.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Print every entry of the image's file system.
    #[arg(long)]
    list: bool,
}

/// A file the image copies from this host, and the Debian package that
/// installs it (what to `apt-get install` when it is missing).
#[derive(Clone, Copy, Debug)]
pub struct HostFile {
    pub path: &'static str,
    pub package: &'static str,
}

const BUSYBOX: HostFile = HostFile { path: "/bin/busybox", package: "busybox-static" };
const XTABLES_NFT: HostFile = HostFile { path: "/usr/sbin/xtables-nft-multi", package: "iptables" };
const XTABLES_LEGACY: HostFile = HostFile { path: "/usr/sbin/xtables-legacy-multi", package: "iptables" };
const CA_BUNDLE: HostFile = HostFile { path: "/etc/ssl/certs/ca-certificates.crt", package: "ca-certificates" };
/// Copied when present: iptables falls back to built-in names without them.
const OPTIONAL: [&str; 3] = ["/etc/protocols", "/etc/services", "/etc/ethertypes"];

/// Paths that must resolve to a file in the image, whatever else changes:
/// what weir.yaml and the agent run.
pub const MUST_HAVE: [&str; 15] = [
    "usr/local/bin/weir-agent",
    "usr/local/bin/weir-cni",
    "bin/sh",
    "bin/cp",
    "bin/mv",
    "usr/sbin/iptables",
    "usr/sbin/iptables-restore",
    // IPv6 masquerade on dual-stack and IPv6-only nodes.
    "usr/sbin/ip6tables",
    "usr/sbin/ip6tables-restore",
    "usr/sbin/iptables-save",
    "usr/sbin/iptables-nft",
    "usr/sbin/iptables-legacy",
    "usr/sbin/iptables-legacy-restore",
    "etc/ssl/certs/ca-certificates.crt",
    "etc/passwd",
];
/// Extension modules the agent's own rules load (-m comment, -j MASQUERADE).
const MUST_HAVE_XTABLES: [&str; 2] = ["libxt_comment.so", "libxt_MASQUERADE.so"];

pub fn run(args: ImageArgs) -> Result<ExitCode> {
    let name = ImageRef::parse(&args.tag)?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            if !args.no_build {
                build_release()?;
            }
            bins::target_dir().join("release")
        }
    };
    let output = args.output.clone().unwrap_or_else(|| bins::target_dir().join("weir-image.tar"));
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let version = binary_version(&bin_dir.join("weir-agent"))?;
    let rootfs = weir_rootfs(&bin_dir)?;
    if args.list {
        for line in rootfs.listing()? {
            println!("{line}");
        }
    }
    let digests = write_archive(&rootfs, &name, &version, &output)?;
    let archive_size = fs::metadata(&output)?.len();
    let out = output.display();
    println!(
        "image {}\n  archive   {out} ({})\n  manifest  {}\n  config    {} (docker's image ID)\n  layer     {} ({} uncompressed, {} entries)\n  weir      {version} from {}",
        name.full,
        mib(archive_size),
        digests.manifest,
        digests.config,
        digests.layer,
        mib(digests.layer_size),
        rootfs.entries().len(),
        bin_dir.display(),
    );
    println!(
        "load it with one of:\n  ctr -n k8s.io images import {out}\n  kind load image-archive {out} --name <cluster>\n  docker load -i {out}"
    );
    if name.full != DEFAULT_TAG {
        println!("(manifests/weir.yaml runs {DEFAULT_TAG}: point it at {} to use this one)", name.full);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask image --output <output>` with the default name (what
/// manifests/weir.yaml runs), from freshly built release binaries.
pub fn build_default(output: &Path) -> Result<()> {
    let args = ImageArgs {
        output: Some(output.to_path_buf()),
        tag: DEFAULT_TAG.into(),
        no_build: false,
        bin_dir: None,
        list: false,
    };
    match run(args)? {
        c if c == ExitCode::SUCCESS => Ok(()),
        _ => bail!("building the image archive {} failed", output.display()),
    }
}

fn build_release() -> Result<()> {
    let mut cmd = cargo::cargo();
    cmd.args(["build", "--release", "--bins", "-p", "weir-agent", "-p", "weir-cni"]);
    cargo::must(&mut cmd).context(
        "building the release binaries failed; the agent embeds eBPF programs built on the \
         nightly with rust-src and bpf-linker 0.10.x, which `cargo xtask setup` installs",
    )
}

/// "weir-agent 0.1.0" -> "0.1.0": the binary runs here, and says which
/// release it is.
fn binary_version(agent: &Path) -> Result<String> {
    if !agent.is_file() {
        bail!(
            "{} not found: build it (`cargo build --release -p weir-agent -p weir-cni`), or drop --no-build / point --bin-dir at a directory holding weir-agent and weir-cni",
            agent.display()
        );
    }
    let out = exec::run(Command::new(agent).arg("--version"), exec::DEFAULT_TIMEOUT)
        .with_context(|| format!("{} --version", agent.display()))?;
    match out.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["weir-agent", v] => Ok(v.to_string()),
        _ => bail!("{} --version printed {out:?}, not \"weir-agent <version>\"", agent.display()),
    }
}

/// Debian's name for this machine's architecture and its library directory.
pub fn multiarch() -> Result<&'static str> {
    Ok(arch()?.1)
}

fn arch() -> Result<(&'static str, &'static str)> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("amd64", "x86_64-linux-gnu")),
        "aarch64" => Ok(("arm64", "aarch64-linux-gnu")),
        other => bail!("no image for {other}: x86_64 and aarch64 only"),
    }
}

/// The image's file system: weir's binaries from `bin_dir`, the rest from
/// this host, closed over shared libraries and checked.
pub fn weir_rootfs(bin_dir: &Path) -> Result<Rootfs> {
    let multiarch = multiarch()?;
    let xtables_dir = format!("/usr/lib/{multiarch}/xtables");
    check_host_files(&xtables_dir)?;

    let mut r = Rootfs::new(multiarch)?;
    add_binaries(&mut r, bin_dir)?;
    add_busybox(&mut r)?;
    add_iptables(&mut r, &xtables_dir)?;
    add_etc(&mut r)?;

    r.add_dependencies()?;
    r.check()?;
    check_must_have(&r, multiarch)?;
    Ok(r)
}

/// Fails, naming the Debian packages to install, when a file the image
/// copies from this host is missing.
fn check_host_files(xtables_dir: &str) -> Result<()> {
    let missing: Vec<(String, &str)> = [BUSYBOX, XTABLES_NFT, XTABLES_LEGACY, CA_BUNDLE]
        .into_iter()
        .map(|f| (f.path.to_string(), f.package))
        .chain([(xtables_dir.to_string(), "iptables")])
        .filter(|(path, _)| !Path::new(path).exists())
        .collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        packages.sort();
        packages.dedup();
        bail!(
            "the image copies these from this host and they are missing: {}. Install them: `apt-get install {}` (or `cargo xtask setup`)",
            missing.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", "),
            packages.join(" ")
        );
    }
    Ok(())
}

/// weir-agent and weir-cni from `bin_dir`, in /usr/local/bin.
fn add_binaries(r: &mut Rootfs, bin_dir: &Path) -> Result<()> {
    for bin in BINARIES {
        let path = bin_dir.join(bin);
        if !path.is_file() {
            bail!("{} not found", path.display());
        }
        r.host_file_at(&format!("usr/local/bin/{bin}"), &path)?;
    }
    Ok(())
}

/// busybox: the shell, cp and mv of the install step, and the usual
/// tools for `kubectl exec` (every applet is a link to it).
fn add_busybox(r: &mut Rootfs) -> Result<()> {
    let busybox = r.host(Path::new(BUSYBOX.path))?;
    let busybox_name = busybox.rsplit('/').next().unwrap_or("busybox").to_string();
    let list = exec::run(Command::new(BUSYBOX.path).arg("--list"), exec::DEFAULT_TIMEOUT)?;
    let mut applets: Vec<&str> = list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != busybox_name).collect();
    applets.sort();
    if applets.is_empty() {
        bail!("{} --list printed no applets", BUSYBOX.path);
    }
    let applet_dir = busybox.rsplit_once('/').map_or("usr/bin", |(d, _)| d).to_string();
    for applet in applets {
        r.symlink(&format!("{applet_dir}/{applet}"), &busybox_name)?;
    }
    Ok(())
}

/// iptables: both multi-call binaries and every name the host links to
/// them, and every xtables extension module. Names Debian switches with
/// update-alternatives (iptables, iptables-restore, ip6tables, ebtables,
/// ...) are nf_tables here, whatever this host selected: the image must
/// not depend on it.
fn add_iptables(r: &mut Rootfs, xtables_dir: &str) -> Result<()> {
    r.host(Path::new(XTABLES_NFT.path))?;
    r.host(Path::new(XTABLES_LEGACY.path))?;
    let multis = [fs::canonicalize(XTABLES_NFT.path)?, fs::canonicalize(XTABLES_LEGACY.path)?];
    for entry in sorted_dir(Path::new("/usr/sbin"))? {
        let Ok(link) = fs::read_link(&entry) else {
            continue;
        };
        let Ok(real) = fs::canonicalize(&entry) else {
            continue;
        };
        if !multis.contains(&real) {
            continue;
        }
        if link.starts_with("/etc/alternatives") {
            let name = entry.file_name().and_then(|n| n.to_str()).context("non-UTF-8 name")?;
            r.symlink(&format!("usr/sbin/{name}"), "xtables-nft-multi")?;
        } else {
            r.host(&entry)?;
        }
    }
    for module in sorted_dir(Path::new(xtables_dir))? {
        r.host(&module)?;
    }
    Ok(())
}

/// /etc: the CA bundle and the optional files from this host, minimal
/// passwd, group, nsswitch.conf and hosts written here.
fn add_etc(r: &mut Rootfs) -> Result<()> {
    r.host(Path::new(CA_BUNDLE.path))?;
    for path in OPTIONAL.map(Path::new).into_iter().filter(|p| p.exists()) {
        r.host(path)?;
    }
    r.bytes(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        0o644,
    )?;
    r.bytes("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    r.bytes(
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n",
        0o644,
    )?;
    r.bytes("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644)?;
    Ok(())
}

/// Fails unless every path of MUST_HAVE and every module of
/// MUST_HAVE_XTABLES resolves to a file in the image.
fn check_must_have(r: &Rootfs, multiarch: &str) -> Result<()> {
    let mut absent: Vec<String> = MUST_HAVE.iter().map(|p| p.to_string()).collect();
    absent.extend(MUST_HAVE_XTABLES.iter().map(|m| format!("usr/lib/{multiarch}/xtables/{m}")));
    absent
        .retain(|p| r.resolve(p).is_none_or(|real| !matches!(r.entries().get(&real), Some(rootfs::Node::File { .. }))));
    if !absent.is_empty() {
        bail!("the image lacks what the DaemonSet runs: /{}", absent.join(", /"));
    }
    Ok(())
}

/// The image config (what the Dockerfile's image records: entrypoint,
/// environment) with OCI labels.
pub fn image_config(version: &str) -> Result<Value> {
    let (arch, _) = arch()?;
    Ok(json!({
        "architecture": arch,
        "os": "linux",
        "created": EPOCH,
        "config": {
            "Entrypoint": [ENTRYPOINT],
            "Env": [PATH_ENV],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "weir",
                "org.opencontainers.image.description":
                    "weir-agent (eBPF kube-proxy replacement, NetworkPolicy) and weir-cni, with iptables and busybox",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            }
        },
        "history": [{
            "created": EPOCH,
            "created_by": "cargo xtask image",
            "comment": "weir-agent and weir-cni; iptables, busybox, CA certificates and shared libraries from the build host's Debian packages"
        }]
    }))
}

/// Writes the layer beside `out`, then the archive; the layer file goes.
pub fn write_archive(rootfs: &Rootfs, name: &ImageRef, version: &str, out: &Path) -> Result<ArchiveDigests> {
    let file_name = out.file_name().context("output has no file name")?.to_string_lossy();
    let layer = out.with_file_name(format!(".{file_name}.layer.tmp"));
    let result =
        rootfs.write_layer(&layer).and_then(|()| oci::write_image_archive(name, image_config(version)?, &layer, out));
    let _ = fs::remove_file(&layer);
    result
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    out.sort();
    Ok(out)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, os::unix::fs::PermissionsExt as _};

    use weir_testbed::oci::{EntryKind, TarEntry, tar_entries};

    use super::*;

    /// A bin dir with script stand-ins for the two binaries (fast to copy;
    /// the ELF side is covered by rootfs's own tests).
    fn fake_bins(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-image-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for bin in BINARIES {
            let p = dir.join(bin);
            fs::write(&p, format!("#!/bin/sh\necho {bin} 9.9.9-test\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn the_image_holds_what_the_daemonset_runs() {
        let bins = fake_bins("contents");
        let r = weir_rootfs(&bins).unwrap();
        let list = r.listing().unwrap().join("\n");
        let is_file = |p: &str| {
            r.resolve(p).is_some_and(|real| matches!(r.entries().get(&real), Some(rootfs::Node::File { .. })))
        };
        for p in MUST_HAVE {
            assert!(is_file(p), "/{p} missing:\n{list}");
        }
        assert_eq!(r.resolve("bin/sh").as_deref(), Some("usr/bin/busybox"));
        assert_eq!(r.resolve("usr/sbin/iptables").as_deref(), Some("usr/sbin/xtables-nft-multi"));
        assert_eq!(r.resolve("usr/sbin/iptables-legacy").as_deref(), Some("usr/sbin/xtables-legacy-multi"));
        let ma = multiarch().unwrap();
        let modules = r.entries().keys().filter(|k| k.starts_with(&format!("usr/lib/{ma}/xtables/"))).count();
        assert!(modules > 50, "{modules} xtables modules");
        assert!(is_file(&format!("usr/lib/{ma}/xtables/libxt_MASQUERADE.so")));
        // The libraries iptables loads, and the loader.
        for lib in ["libxtables.so.12", "libnftnl.so.11", "libmnl.so.0", "libc.so.6"] {
            assert!(list.contains(lib), "{lib} missing:\n{list}");
        }
        assert!(!list.contains("/etc/alternatives"), "{list}");
        fs::remove_dir_all(&bins).unwrap();
    }

    #[test]
    fn a_missing_binary_is_named() {
        let bins = fake_bins("missing");
        fs::remove_file(bins.join("weir-cni")).unwrap();
        let e = format!("{:#}", weir_rootfs(&bins).err().unwrap());
        assert!(e.contains("weir-cni not found"), "{e}");
        fs::remove_dir_all(&bins).unwrap();
    }

    #[test]
    fn archives_are_deterministic_and_docker_loadable() {
        let bins = fake_bins("determinism");
        let name = ImageRef::parse("docker.io/library/weir:dev").unwrap();
        let version = binary_version(&bins.join("weir-agent")).unwrap();
        assert_eq!(version, "9.9.9-test");
        let (a, b) = (bins.join("a.tar"), bins.join("b.tar"));
        let da = write_archive(&weir_rootfs(&bins).unwrap(), &name, &version, &a).unwrap();
        let db = write_archive(&weir_rootfs(&bins).unwrap(), &name, &version, &b).unwrap();
        assert_eq!(da, db);
        let bytes = fs::read(&a).unwrap();
        assert!(bytes == fs::read(&b).unwrap(), "two builds, two archives");
        assert!(!bins.join(".a.tar.layer.tmp").exists(), "the layer file is removed");

        let files = tar_entries(&bytes).unwrap();
        let files: BTreeMap<&str, &TarEntry> = files.iter().map(|e| (e.path.as_str(), e)).collect();
        let blob =
            |d: &str| files[format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap()).as_str()].data.clone();
        let config: Value = serde_json::from_slice(&blob(&da.config)).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!([ENTRYPOINT]));
        assert_eq!(config["config"]["Env"], json!([PATH_ENV]));
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], "9.9.9-test");
        assert_eq!(config["os"], "linux");
        let docker: Value = serde_json::from_slice(&files["manifest.json"].data).unwrap();
        assert_eq!(docker[0]["RepoTags"], json!(["weir:dev"]));

        let layer = tar_entries(&blob(&da.layer)).unwrap();
        assert!(layer.iter().all(|e| e.mtime == 0 && e.uid == 0 && e.gid == 0), "normalised headers");
        let order: Vec<&str> = layer.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(order, sorted, "entries in path order, each once");
        let layer: BTreeMap<&str, &TarEntry> = layer.iter().map(|e| (e.path.as_str(), e)).collect();
        let agent = &layer["usr/local/bin/weir-agent"];
        assert_eq!(agent.data, b"#!/bin/sh\necho weir-agent 9.9.9-test\n");
        assert_eq!((agent.kind, agent.mode), (EntryKind::File, 0o755));
        assert_eq!(layer["bin"].link.as_deref(), Some("usr/bin"));
        assert_eq!(layer["usr/bin/sh"].link.as_deref(), Some("busybox"));
        assert_eq!((layer["tmp"].kind, layer["tmp"].mode), (EntryKind::Dir, 0o1777));
        fs::remove_dir_all(&bins).unwrap();
    }
}
