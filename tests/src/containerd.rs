//! A private containerd (root, state, sockets in the run's scratch dir)
//! running inside a node namespace, and `ctr run --cni` against it.
//!
//! `ctr run --cni` reads its network config from /etc/cni/net.d and plugins
//! from /opt/cni/bin, and runs the plugins itself, in its own network
//! namespace. So ctr runs inside the node namespace and inside a private
//! mount namespace where a temp conf dir and a temp bin dir are bind-mounted
//! over those two paths; the host's real directories are never touched
//! (when a path does not exist, its nearest existing parent gets a throwaway
//! overlay in that private mount namespace to hold the mount point).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{exec, netns::NetNs, process::ChildGuard, topology::Node};

pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// The containerd namespace ctr uses; CNI container IDs are `<ns>-<id>`.
pub const CTR_NAMESPACE: &str = "default";

pub struct Containerd {
    guard: ChildGuard,
    dir: PathBuf,
    socket: PathBuf,
    netns_path: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// Starts containerd in `node`'s namespace and waits until it answers.
    pub fn start(node: &Node) -> Result<Self> {
        let dir = node.dirs.root.join("containerd");
        fs::create_dir_all(&dir)?;
        let config = dir.join("config.toml");
        fs::write(&config, config_toml(&dir)).with_context(|| format!("write {}", config.display()))?;
        let log = node.dirs.logs.join("containerd.log");
        let cfg = config.to_str().context("non-UTF-8 path")?;
        let guard = node.netns.spawn(&["containerd", "--config", cfg], &[], &log, node.detached())?;
        let mut me =
            Self { guard, socket: dir.join("containerd.sock"), dir, netns_path: node.netns.path().into(), log };
        me.wait_ready(&node.netns)?;
        Ok(me)
    }

    fn wait_ready(&mut self, netns: &NetNs) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.guard.try_wait() {
                bail!("containerd exited at start ({status}); log:\n{}", self.log_tail());
            }
            if self.socket.exists() {
                let mut cmd = self.ctr_command()?;
                cmd.arg("version");
                if exec::output(&mut cmd, None, Duration::from_secs(5)).is_ok_and(|o| o.success()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd in {} does not answer on {}; log:\n{}",
                    netns.name(),
                    self.socket.display(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ctr -a <socket> -n default` in the node's namespace.
    pub fn ctr_command(&self) -> Result<Command> {
        let mut cmd = Command::new("ctr");
        exec::enter_netns(&mut cmd, &self.netns_path)?;
        cmd.arg("-a").arg(&self.socket).args(["-n", CTR_NAMESPACE]);
        Ok(cmd)
    }

    /// Runs a ctr subcommand; a non-zero exit is an error.
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = self.ctr_command()?;
        cmd.args(args);
        exec::run(&mut cmd, timeout)
    }

    /// `ctr images import` of an image-layout tar into the native snapshotter
    /// (a copy per container: no overlay mounts to leak).
    pub fn import(&self, tar: &Path) -> Result<()> {
        let tar = tar.to_str().context("non-UTF-8 path")?;
        self.ctr(&["images", "import", "--snapshotter", "native", tar], Duration::from_secs(120))?;
        Ok(())
    }

    /// runc's state root for containers started through this containerd.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// A `ctr run ...` command (args after `run`) without CNI: the
    /// container gets a network namespace of its own holding only
    /// loopback, inside the node's (nothing reaches the root namespace).
    pub fn ctr_run(&self, run_args: &[&str]) -> Result<Command> {
        let mut cmd = self.ctr_command()?;
        cmd.args(["run", "--snapshotter", "native", "--runc-root"]).arg(self.runc_root()).args(run_args);
        Ok(cmd)
    }

    /// `ctr images ls`: (name, manifest digest) of every image.
    pub fn images(&self) -> Result<Vec<(String, String)>> {
        let out = self.ctr(&["images", "ls"], Duration::from_secs(30))?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut cols = l.split_whitespace();
                let name = cols.next()?;
                let _media_type = cols.next()?;
                let digest = cols.next()?;
                Some((name.to_string(), digest.to_string()))
            })
            .collect())
    }

    /// A `ctr run --cni ...` command (args after `run`), inside a private
    /// mount namespace where `conf_dir` is /etc/cni/net.d and `bin_dir` is
    /// /opt/cni/bin.
    pub fn ctr_run_with_cni(&self, conf_dir: &Path, bin_dir: &Path, run_args: &[&str]) -> Result<Command> {
        let scratch = self.dir.join("mount-scratch");
        fs::create_dir_all(&scratch)?;
        let mut cmd = Command::new("unshare");
        exec::enter_netns(&mut cmd, &self.netns_path)?;
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-euc", PRIVATE_CNI_DIRS_SCRIPT, "sh"])
            .env("WEIR_CNI_CONF", conf_dir)
            .env("WEIR_CNI_BIN", bin_dir)
            .env("WEIR_SCRATCH", &scratch)
            .arg("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", CTR_NAMESPACE, "run", "--cni", "--snapshotter", "native", "--runc-root"])
            .arg(self.runc_root())
            .args(run_args);
        Ok(cmd)
    }
}

/// Run by `sh -euc` in the private mount namespace; execs its arguments.
const PRIVATE_CNI_DIRS_SCRIPT: &str = r#"
over() {
  src=$1 target=$2 scratch=$3
  if [ ! -d "$target" ]; then
    parent=$(dirname "$target")
    while [ ! -d "$parent" ]; do parent=$(dirname "$parent"); done
    mkdir -p "$scratch/upper" "$scratch/work"
    mount -t overlay overlay -o "lowerdir=$parent,upperdir=$scratch/upper,workdir=$scratch/work" "$parent"
    mkdir -p "$target"
  fi
  mount --bind "$src" "$target"
}
over "$WEIR_CNI_CONF" /etc/cni/net.d "$WEIR_SCRATCH/etc"
over "$WEIR_CNI_BIN" /opt/cni/bin "$WEIR_SCRATCH/opt"
exec "$@"
"#;

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks left running (a failed test) would otherwise outlive the
        // shims; their processes are in namespaces runc made, not the run's.
        if let Ok(list) = self.ctr(&["tasks", "ls", "-q"], Duration::from_secs(10)) {
            for id in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id], Duration::from_secs(10));
                let _ = self.ctr(&["tasks", "delete", "-f", id], Duration::from_secs(10));
            }
        }
        self.guard.stop();
    }
}

/// containerd 1.6 config (version 2): everything under `dir`, CRI off (this
/// containerd serves ctr only).
fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}
