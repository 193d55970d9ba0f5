//! The system tools the test bed drives, and the Debian package of each (the
//! same table `cargo xtask setup` installs from).

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    /// A command name looked up in PATH, or an absolute path.
    pub binary: &'static str,
    pub package: &'static str,
}

const fn tool(binary: &'static str, package: &'static str) -> Tool {
    Tool { binary, package }
}

pub const IP: Tool = tool("ip", "iproute2");
pub const PING: Tool = tool("ping", "iputils-ping");
pub const CURL: Tool = tool("curl", "curl");
pub const NSENTER: Tool = tool("nsenter", "util-linux");
pub const UNSHARE: Tool = tool("unshare", "util-linux");
pub const BUSYBOX: Tool = tool("/bin/busybox", "busybox-static");
pub const PORTMAP: Tool = tool("/usr/lib/cni/portmap", "containernetworking-plugins");
pub const BRIDGE: Tool = tool("/usr/lib/cni/bridge", "containernetworking-plugins");
pub const HOST_LOCAL: Tool = tool("/usr/lib/cni/host-local", "containernetworking-plugins");
pub const CONTAINERD: Tool = tool("containerd", "containerd");
pub const CTR: Tool = tool("ctr", "containerd");
pub const RUNC: Tool = tool("runc", "runc");
pub const IPTABLES: Tool = tool("iptables", "iptables");
pub const IPVSADM: Tool = tool("ipvsadm", "ipvsadm");
pub const CONNTRACK: Tool = tool("conntrack", "conntrack");
pub const BPFTOOL: Tool = tool("bpftool", "bpftool");
pub const MOUNT: Tool = tool("mount", "mount");
pub const SYSCTL: Tool = tool("sysctl", "procps");
/// TCP/UDP echo servers and clients in the Service tests.
pub const PYTHON3: Tool = tool("python3", "python3-minimal");

/// The C compiler the build needs: rustc links with it, and `ring` (the
/// kube client's TLS crypto) compiles C and assembly with it.
pub const CC: Tool = tool("cc", "gcc");

/// What every topology needs.
pub const BASE: &[Tool] = &[IP, PING, CURL, BUSYBOX, SYSCTL, MOUNT];

/// Everything `cargo xtask setup` makes sure of.
/// The CA bundle `cargo xtask image` puts in the image.
pub const CA_CERTIFICATES: Tool = tool("/etc/ssl/certs/ca-certificates.crt", "ca-certificates");

pub const ALL: &[Tool] = &[
    IP,
    PING,
    CURL,
    NSENTER,
    UNSHARE,
    BUSYBOX,
    PORTMAP,
    BRIDGE,
    HOST_LOCAL,
    CONTAINERD,
    CTR,
    RUNC,
    IPTABLES,
    IPVSADM,
    CONNTRACK,
    BPFTOOL,
    MOUNT,
    SYSCTL,
    PYTHON3,
    CC,
    CA_CERTIFICATES,
];

impl Tool {
    pub fn is_present(&self) -> bool {
        if self.binary.starts_with('/') {
            return Path::new(self.binary).is_file();
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        // Root's tools live in sbin, which a non-login PATH may lack.
        let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(std::path::PathBuf::from);
        std::env::split_paths(&path).chain(extra).any(|d| d.join(self.binary).is_file())
    }
}

pub fn missing(tools: &[Tool]) -> Vec<Tool> {
    let mut out: Vec<Tool> = tools.iter().filter(|t| !t.is_present()).copied().collect();
    out.dedup();
    out
}

pub fn missing_message(missing: &[Tool]) -> String {
    let list: Vec<String> = missing.iter().map(|t| format!("{} (package {})", t.binary, t.package)).collect();
    format!("missing tools: {}. Run `cargo xtask setup` (as root) to install them.", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_tools_are_reported_with_their_package() {
        let ghost = tool("/nonexistent/weir-ghost", "weir-ghost-pkg");
        let ghost_in_path = tool("weir-ghost-binary", "weir-ghost-pkg2");
        let m = missing(&[ghost, ghost_in_path, tool("sh", "dash")]);
        assert_eq!(m, vec![ghost, ghost_in_path]);
        let msg = missing_message(&m);
        assert!(msg.contains("weir-ghost-pkg") && msg.contains("cargo xtask setup"), "{msg}");
    }
}
