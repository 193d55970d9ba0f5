//! A pod: its own network namespace, networked through the CNI runtime, with
//! helpers to ping, serve and fetch HTTP. DEL runs on drop, like a runtime
//! tearing the sandbox down.
//!
//! Like kubelet, the test bed makes the Pod object exist before the sandbox:
//! when the attachment names a pod (`K8S_POD_NAMESPACE`/`K8S_POD_NAME` in
//! CNI_ARGS, which `Pod::create` always passes), its Pod manifest is written
//! to the topology's manifest directory before ADD, rewritten with
//! `status.podIP` from the CNI result after ADD, and removed after DEL.
//! weir-cni holds a pod that names a Pod object isolated until the agent has
//! programmed that pod's policy, which needs the object.

#![allow(clippy::result_large_err)]

use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};

use crate::{
    cni::{Attachment, CniOutcome, CniResult, CniRuntime, Conflist},
    manifest::PodObject,
    netns::NetNs,
    process::ChildGuard,
    topology::{self, Node},
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
    /// The pod's IPv4 address; `0.0.0.0` for an IPv6-only pod.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack or IPv6-only network.
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The Pod object, when the attachment names one (CNI_ARGS
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`).
    pub object: Option<PodObject>,
    /// Where and how the Pod object is published.
    manifest: Option<PodManifest>,
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
    /// `conflist` on `node`, as Pod `default/<node>-<name>` (no labels, no
    /// named ports), whose object is published first. On failure, like
    /// containerd's CRI, it runs DEL (a chained plugin may have failed after
    /// the first one succeeded) and removes the namespace and the object.
    pub fn create(node: &Node, name: &str, conflist: &Conflist) -> Result<Self> {
        Self::builder(node, name).create(conflist)
    }

    /// Like `create`, with a chance to adjust the attachment first (port
    /// mappings, CNI_ARGS). The Pod object published is the one the final
    /// CNI_ARGS name (none if they name none).
    pub fn create_with(
        node: &Node,
        name: &str,
        conflist: &Conflist,
        adjust: impl FnOnce(Attachment) -> Attachment,
    ) -> Result<Self> {
        Self::builder(node, name).adjust(adjust).create(conflist)
    }

    /// A pod with a Kubernetes identity of its own: `object` says its
    /// namespace, name, labels and named ports (CNI_ARGS follow it); `name`
    /// names the network namespace (`<prefix>-<node>-<name>`), so it must be
    /// unique on the node.
    pub fn create_k8s(node: &Node, name: &str, object: PodObject, conflist: &Conflist) -> Result<Self> {
        Self::builder(node, name).object(object).create(conflist)
    }

    /// Everything `create` does, step by step; see `PodBuilder`.
    pub fn builder<'a>(node: &'a Node, name: &str) -> PodBuilder<'a> {
        PodBuilder {
            node,
            name: name.to_string(),
            object: None,
            publish_before_add: true,
            adjust: None,
            before_add: None,
        }
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

    /// The Pod object as the manifest directory has it (or will, for a pod
    /// created `unpublished`): with its status, i.e. its IP.
    pub fn manifest_yaml(&self) -> Option<String> {
        let (object, m) = (self.object.as_ref()?, self.manifest.as_ref()?);
        // As kubelet reports them: one address per family, IPv4 first.
        let ips: Vec<std::net::IpAddr> = (!self.ip.is_unspecified())
            .then_some(self.ip.into())
            .into_iter()
            .chain(self.ipv6.map(Into::into))
            .collect();
        Some(object.yaml_ips(&self.node, Some((m.host_ip, ips))))
    }

    /// The Pod object's manifest file (whether published or not).
    pub fn manifest_path(&self) -> Option<PathBuf> {
        let (object, m) = (self.object.as_ref()?, self.manifest.as_ref()?);
        Some(m.dir.join(object.file_name()))
    }

    /// Whether the Pod object is in the manifest directory.
    pub fn is_published(&self) -> bool {
        self.manifest.as_ref().is_some_and(|m| m.published)
    }

    /// Writes the Pod object (with its IP) to the manifest directory: for a
    /// pod created `unpublished`, the moment the API server learns of it.
    pub fn publish(&mut self) -> Result<()> {
        let yaml = self.manifest_yaml().context("this pod's CNI_ARGS name no Pod object")?;
        let m = self.manifest.as_mut().expect("manifest_yaml checked it");
        let file = self.object.as_ref().expect("manifest_yaml checked it").file_name();
        topology::write_manifest_file(&m.dir, &file, &[yaml])?;
        m.published = true;
        Ok(())
    }

    /// Removes the Pod object from the manifest directory (the pod itself
    /// stays; the agent no longer knows it).
    pub fn unpublish(&mut self) -> Result<()> {
        if let (Some(object), Some(m)) = (self.object.as_ref(), self.manifest.as_mut())
            && m.published
        {
            topology::remove_manifest_file(&m.dir, &object.file_name())?;
            m.published = false;
        }
        Ok(())
    }

    /// Replaces the Pod object's labels (`kubectl label --overwrite`):
    /// rewrites the manifest if it is published.
    pub fn set_labels<'l>(&mut self, labels: impl IntoIterator<Item = (&'l str, &'l str)>) -> Result<()> {
        let object = self.object.as_mut().context("this pod's CNI_ARGS name no Pod object")?;
        object.labels = labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if self.is_published() {
            self.publish()?;
        }
        Ok(())
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
        self.httpd = Some(self.netns.start_httpd(&self.docroot, HTTP_PORT, &log, self.detached)?);
        Ok(())
    }

    pub fn ping(&self, dst: Ipv4Addr) -> Result<()> {
        self.netns.ping(dst)
    }

    /// `ping -6` (or `-4`) to `dst`.
    pub fn ping_ip(&self, dst: std::net::IpAddr) -> Result<()> {
        self.netns.ping_ip(dst)
    }

    pub fn curl(&self, url: &str) -> Result<String> {
        self.netns.curl(url)
    }

    pub fn check(&self) -> CniOutcome<()> {
        self.runtime.check(&self.conflist, &self.attachment)
    }

    /// DEL now (also done on drop if not done here); once DEL succeeded,
    /// the Pod object goes too.
    pub fn delete(&mut self) -> CniOutcome<()> {
        self.stop_httpd();
        let out = self.runtime.del(&self.conflist, &self.attachment);
        if out.is_ok() {
            self.deleted = true;
            if let Err(e) = self.unpublish() {
                eprintln!("weir-testbed: {e:#}");
            }
        }
        out
    }

    fn stop_httpd(&mut self) {
        if let Some(mut h) = self.httpd.take() {
            h.stop();
        }
    }

    /// Leaves the pod (namespace, server, addresses, Pod object) in place (a
    /// kept sandbox).
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
            let _ = self.unpublish();
        }
    }
}

/// Where a pod's object is published, and whether it is.
struct PodManifest {
    dir: PathBuf,
    host_ip: Ipv4Addr,
    published: bool,
}

type AdjustFn<'a> = Box<dyn FnOnce(Attachment) -> Attachment + 'a>;
type BeforeAddFn<'a> = Box<dyn FnOnce(&NetNs) -> Result<()> + 'a>;

/// A pod to create, step by step (`Pod::builder`):
/// 1. the network namespace `<prefix>-<node>-<name>`;
/// 2. the attachment: CNI_ARGS name the Pod object (`object`, else
///    `default/<node>-<name>`), then `adjust` may change it;
/// 3. the Pod object the final CNI_ARGS name is written to the manifest
///    directory (unless `unpublished`), without status;
/// 4. `before_add` runs with the namespace (e.g. to start a server that
///    must be there from the pod's first packet);
/// 5. ADD; then the object is rewritten with `status.podIP`.
pub struct PodBuilder<'a> {
    node: &'a Node,
    name: String,
    object: Option<PodObject>,
    publish_before_add: bool,
    adjust: Option<AdjustFn<'a>>,
    before_add: Option<BeforeAddFn<'a>>,
}

impl<'a> PodBuilder<'a> {
    /// The Pod object (namespace, name, labels, named ports).
    pub fn object(mut self, object: PodObject) -> Self {
        self.object = Some(object);
        self
    }

    pub fn adjust(mut self, adjust: impl FnOnce(Attachment) -> Attachment + 'a) -> Self {
        self.adjust = Some(Box::new(adjust));
        self
    }

    pub fn before_add(mut self, f: impl FnOnce(&NetNs) -> Result<()> + 'a) -> Self {
        self.before_add = Some(Box::new(f));
        self
    }

    /// Runs ADD for a pod whose object the agent does not know (yet):
    /// nothing is written until `Pod::publish`.
    pub fn unpublished(mut self) -> Self {
        self.publish_before_add = false;
        self
    }

    pub fn create(self, conflist: &Conflist) -> Result<Pod> {
        let PodBuilder { node, name, object, publish_before_add, adjust, before_add } = self;
        let netns = NetNs::create(&node.pod_netns_name(&name))?;
        let attachment = attachment(node, &name, &netns, object.as_ref(), adjust);
        // The object the runtime's CNI_ARGS name is the one that must exist.
        let object = named_object(&attachment, object);
        let mut published = false;
        if let Some(o) = &object
            && publish_before_add
        {
            topology::write_manifest_file(&node.manifest_dir, &o.file_name(), &[o.yaml(&node.name, None)])
                .with_context(|| format!("publish Pod {} before ADD", o.key()))?;
            published = true;
        }
        let unpublish = || {
            if let Some(o) = &object
                && published
            {
                let _ = topology::remove_manifest_file(&node.manifest_dir, &o.file_name());
            }
        };
        if let Some(f) = before_add
            && let Err(e) = f(&netns)
        {
            unpublish();
            return Err(e.context(format!("before ADD of pod {name} on {}", node.name)));
        }
        let runtime = node.runtime();
        let (result, ip, ipv6) = match add(&runtime, conflist, &attachment, &name, &node.name) {
            Ok(added) => added,
            Err(e) => {
                unpublish();
                return Err(e);
            }
        };
        let manifest =
            object.as_ref().map(|_| PodManifest { dir: node.manifest_dir.clone(), host_ip: node.ip, published });
        let mut pod = Pod {
            docroot: node.dirs.www.join(&name),
            name,
            node: node.name.clone(),
            netns,
            attachment,
            result,
            ip,
            ipv6,
            object,
            manifest,
            runtime,
            conflist: conflist.clone(),
            logs: node.dirs.logs.clone(),
            detached: node.detached(),
            httpd: None,
            deleted: false,
        };
        // What kubelet reports once the sandbox is up: the pod's IP.
        if pod.is_published() {
            pod.publish().with_context(|| format!("publish the status of pod {}", pod.name))?;
        }
        Ok(pod)
    }
}

/// The attachment for pod `name` on `node`: CNI_ARGS name `object` (else
/// `default/<node>-<name>`), then `adjust` may change it.
fn attachment(
    node: &Node,
    name: &str,
    netns: &NetNs,
    object: Option<&PodObject>,
    adjust: Option<AdjustFn<'_>>,
) -> Attachment {
    let mut attachment = Pod::attachment_for(node, name, netns);
    if let Some(o) = object {
        set_arg(&mut attachment, "K8S_POD_NAMESPACE", &o.namespace);
        set_arg(&mut attachment, "K8S_POD_NAME", &o.name);
    }
    if let Some(adjust) = adjust {
        attachment = adjust(attachment);
    }
    attachment
}

/// The Pod object the attachment's CNI_ARGS name (`object`, renamed to
/// match, or a new one), or none if they name none.
fn named_object(attachment: &Attachment, object: Option<PodObject>) -> Option<PodObject> {
    match (arg(attachment, "K8S_POD_NAMESPACE"), arg(attachment, "K8S_POD_NAME")) {
        (Some(ns), Some(pod)) => {
            let mut o = object.unwrap_or_else(|| PodObject::new(ns, pod));
            o.namespace = ns.to_string();
            o.name = pod.to_string();
            Some(o)
        }
        _ => None,
    }
}

/// ADD of pod `name` on `node`, and the pod's addresses from the result:
/// IPv4 (`0.0.0.0` when the network is IPv6-only) and IPv6 if any. On
/// failure (no address included) DEL runs, as containerd's CRI does.
fn add(
    runtime: &CniRuntime,
    conflist: &Conflist,
    attachment: &Attachment,
    name: &str,
    node: &str,
) -> Result<(CniResult, Ipv4Addr, Option<std::net::Ipv6Addr>)> {
    let result = match runtime.add(conflist, attachment) {
        Ok(r) => r,
        Err(e) => {
            let _ = runtime.del(conflist, attachment);
            return Err(anyhow::Error::new(e).context(format!("ADD of pod {name} on {node}")));
        }
    };
    let (ip, ipv6) = (result.pod_ipv4(), result.pod_ipv6());
    if ip.is_none() && ipv6.is_none() {
        let _ = runtime.del(conflist, attachment);
        anyhow::bail!("ADD of pod {name} returned no address: {}", result.raw);
    }
    Ok((result, ip.unwrap_or(Ipv4Addr::UNSPECIFIED), ipv6))
}

fn arg<'s>(att: &'s Attachment, key: &str) -> Option<&'s str> {
    att.cni_args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn set_arg(att: &mut Attachment, key: &str, value: &str) {
    match att.cni_args.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value.to_string(),
        None => att.cni_args.push((key.to_string(), value.to_string())),
    }
}
