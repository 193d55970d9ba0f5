//! A pod: its own network namespace, networked through the CNI runtime, with
//! helpers to ping, serve and fetch HTTP. DEL runs on drop, like a runtime
//! tearing the sandbox down.

#![allow(clippy::result_large_err)]

use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};

use crate::{
    cni::{Attachment, CniOutcome, CniResult, CniRuntime, Conflist},
    netns::NetNs,
    process::ChildGuard,
    topology::Node,
};

/// The interface name a runtime asks for (CNI_IFNAME).
pub const POD_IFNAME: &str = "eth0";
/// Port the pods' HTTP servers listen on.
pub const HTTP_PORT: u16 = 80;

pub struct Pod {
    pub name: String,
    pub node: String,
    pub netns: NetNs,
    pub attachment: Attachment,
    pub result: CniResult,
    pub ip: Ipv4Addr,
    runtime: CniRuntime,
    conflist: Conflist,
    docroot: PathBuf,
    logs: PathBuf,
    detached: bool,
    httpd: Option<ChildGuard>,
    deleted: bool,
}

impl Pod {
    /// Creates the namespace `<prefix>-<node>-<name>` and runs ADD through
    /// `conflist` on `node`. On failure, like containerd's CRI, it runs DEL
    /// (a chained plugin may have failed after the first one succeeded) and
    /// removes the namespace.
    pub fn create(node: &Node, name: &str, conflist: &Conflist) -> Result<Self> {
        Self::create_with(node, name, conflist, |a| a)
    }

    /// Like `create`, with a chance to adjust the attachment first (port
    /// mappings, CNI_ARGS).
    pub fn create_with(
        node: &Node,
        name: &str,
        conflist: &Conflist,
        adjust: impl FnOnce(Attachment) -> Attachment,
    ) -> Result<Self> {
        let netns = NetNs::create(&node.pod_netns_name(name))?;
        let attachment = adjust(Self::attachment_for(node, name, &netns));
        let runtime = node.runtime();
        let result = match runtime.add(conflist, &attachment) {
            Ok(r) => r,
            Err(e) => {
                let _ = runtime.del(conflist, &attachment);
                return Err(
                    anyhow::Error::new(e).context(format!("ADD of pod {name} on {}", node.name))
                );
            }
        };
        let ip = result.pod_ipv4().with_context(|| {
            format!("ADD of pod {name} returned no IPv4 address: {}", result.raw)
        })?;
        Ok(Self {
            name: name.to_string(),
            node: node.name.clone(),
            netns,
            attachment,
            result,
            ip,
            runtime,
            conflist: conflist.clone(),
            docroot: node.dirs.www.join(name),
            logs: node.dirs.logs.clone(),
            detached: node.detached(),
            httpd: None,
            deleted: false,
        })
    }

    /// The attachment a runtime would use for this pod: the namespace name
    /// doubles as the container ID (unique per run).
    pub fn attachment_for(node: &Node, name: &str, netns: &NetNs) -> Attachment {
        let mut att = Attachment::new(netns.name(), netns.path(), POD_IFNAME);
        att.cni_args = vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), format!("{}-{name}", node.name)),
        ];
        att
    }

    pub fn container_id(&self) -> &str {
        &self.attachment.container_id
    }

    /// What this pod's HTTP server answers: it names the pod.
    pub fn http_body(&self) -> String {
        format!("pod {}/{}\n", self.node, self.name)
    }

    pub fn url(&self) -> String {
        format!("http://{}:{HTTP_PORT}/", self.ip)
    }

    /// Starts `busybox httpd` serving an index.html that names the pod.
    pub fn serve_http(&mut self) -> Result<()> {
        fs::create_dir_all(&self.docroot)?;
        fs::write(self.docroot.join("index.html"), self.http_body())?;
        let log = self.logs.join(format!("httpd-{}.log", self.name));
        self.httpd = Some(
            self.netns
                .start_httpd(&self.docroot, HTTP_PORT, &log, self.detached)?,
        );
        Ok(())
    }

    pub fn ping(&self, dst: Ipv4Addr) -> Result<()> {
        self.netns.ping(dst)
    }

    pub fn curl(&self, url: &str) -> Result<String> {
        self.netns.curl(url)
    }

    pub fn check(&self) -> CniOutcome<()> {
        self.runtime.check(&self.conflist, &self.attachment)
    }

    /// DEL now (also done on drop if not done here).
    pub fn delete(&mut self) -> CniOutcome<()> {
        self.stop_httpd();
        let out = self.runtime.del(&self.conflist, &self.attachment);
        if out.is_ok() {
            self.deleted = true;
        }
        out
    }

    fn stop_httpd(&mut self) {
        if let Some(mut h) = self.httpd.take() {
            h.stop();
        }
    }

    /// Leaves the pod (namespace, server, addresses) in place (a kept sandbox).
    pub fn keep(mut self) {
        if let Some(h) = self.httpd.take() {
            h.forget();
        }
        self.netns.disown();
        self.deleted = true;
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop_httpd();
        if !self.deleted {
            // Best effort: the topology's sweep removes the namespaces anyway.
            let _ = self.runtime.del(&self.conflist, &self.attachment);
        }
    }
}
