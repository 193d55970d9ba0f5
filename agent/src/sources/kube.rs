//! kube-rs watch source: one watcher per kind, with kube's default backoff
//! (watches survive API restarts, 410 Gone triggers a relist, errors back off).
//! A relist (`Init` .. `InitDone`) is buffered and sent as one
//! `Change::Relisted`, so the index can prune what disappeared meanwhile.
//!
//! The watched objects are converted at once and dropped (there is no
//! reflector store), so their bulk (managedFields, Pod specs) costs only
//! the decoding: there is nothing to strip from a cache.
use std::{collections::BTreeMap, path::PathBuf};

use futures::{StreamExt as _, TryStreamExt as _};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    Change, ProblemLog, Update,
    api_server::{self, ApiAddressError, Candidates, HostPort},
    convert,
    kinds::{self, EndpointSlices, Kind, Namespaces, NetworkPolicies, Nodes, Pods, Services},
    lenient::Lenient,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration (in-cluster or $KUBECONFIG): {source}")]
    Infer { source: kube::Error },
    #[error("cannot build the API client: {source}")]
    Client { source: kube::Error },
    #[error("{variable}: {message}")]
    Environment { variable: &'static str, message: String },
    #[error(transparent)]
    Address(#[from] ApiAddressError),
    #[error("cannot read the service account's {path}: {source}")]
    ServiceAccount { path: PathBuf, source: std::io::Error },
    #[error("the service account's {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
}

/// How the agent's client finds the API server when it runs in a pod (see
/// `api_server`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InClusterSettings {
    /// `k8s-service-host`/`k8s-service-port`.
    pub setting: Option<HostPort>,
    pub kubelet_kubeconfig: PathBuf,
    /// token, ca.crt and namespace, as a pod's service account mounts them.
    pub service_account_dir: PathBuf,
}

impl Default for InClusterSettings {
    fn default() -> Self {
        Self {
            setting: None,
            kubelet_kubeconfig: api_server::KUBELET_KUBECONFIG.into(),
            service_account_dir: api_server::SERVICE_ACCOUNT_DIR.into(),
        }
    }
}

/// The API client: from a kubeconfig when one is named; in a pod (a
/// service account token is mounted), in-cluster at the address
/// `api_server` chooses; otherwise as kube-rs infers it ($KUBECONFIG).
pub async fn client(kubeconfig: Option<&PathBuf>, in_cluster: &InClusterSettings) -> Result<Client, KubeError> {
    if let Some(path) = kubeconfig {
        let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
        return Client::try_from(config).map_err(|source| KubeError::Client { source });
    }
    if !in_cluster.service_account_dir.join("token").exists() {
        return Client::try_default().await.map_err(|source| KubeError::Infer { source });
    }
    let config = in_cluster_config(in_cluster).await?;
    Client::try_from(config).map_err(|source| KubeError::Client { source })
}

async fn in_cluster_config(settings: &InClusterSettings) -> Result<Config, KubeError> {
    let env = |name: &str| std::env::var(name).ok();
    let in_cluster = api_server::host_port(
        env("KUBERNETES_SERVICE_HOST").as_deref(),
        env("KUBERNETES_SERVICE_PORT").as_deref(),
        443,
    )
    .map_err(|message| KubeError::Environment { variable: "KUBERNETES_SERVICE_PORT", message })?;
    let kubelet_path = &settings.kubelet_kubeconfig;
    let kubelet = if kubelet_path.exists() {
        api_server::kubeconfig_server(kubelet_path)
    } else {
        Err("not found (mount the node's /etc/kubernetes read-only to use it)".to_string())
    };
    let candidates =
        Candidates { setting: settings.setting.clone(), in_cluster, kubelet: Some((kubelet_path.clone(), kubelet)) };
    let (address, origin) =
        api_server::choose(&candidates, |hp| api_server::answers(hp, api_server::PROBE_TIMEOUT)).await?;
    info!(api_server = %address, from = %origin, "API server address");

    let sa = &settings.service_account_dir;
    let read = |file: &str| {
        let path = sa.join(file);
        std::fs::read(&path).map_err(|source| KubeError::ServiceAccount { path, source })
    };
    let ca_path = sa.join("ca.crt");
    let certs: Vec<Vec<u8>> = pem::parse_many(read("ca.crt")?)
        .map_err(|_| KubeError::NoCertificate { path: ca_path.clone() })?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(KubeError::NoCertificate { path: ca_path });
    }
    let url = address.url().parse().map_err(|e: http::uri::InvalidUri| KubeError::Environment {
        variable: "WEIR_K8S_SERVICE_HOST",
        message: e.to_string(),
    })?;
    let mut config = Config::new(url);
    config.default_namespace = read("namespace")
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    config.root_cert = Some(certs);
    // Re-read as kube-rs does in-cluster: survives CA rotation.
    config.root_cert_file = Some(ca_path);
    config.auth_info.token_file = Some(sa.join("token").to_string_lossy().into_owned());
    Ok(config)
}

/// Runs every watcher (one per kind of the `kinds` table) until the
/// receiver goes away.
pub async fn run(client: Client, tx: mpsc::Sender<Update>) {
    futures::join!(
        watch::<Nodes>(client.clone(), tx.clone()),
        watch::<Services>(client.clone(), tx.clone()),
        watch::<EndpointSlices>(client.clone(), tx.clone()),
        watch::<Pods>(client.clone(), tx.clone()),
        watch::<Namespaces>(client.clone(), tx.clone()),
        watch::<NetworkPolicies>(client, tx),
    );
}

/// The Pod watch sees every Pod of the cluster, not only this node's: a
/// policy's peers (podSelector / namespaceSelector in from/to) match pods
/// wherever they run, so egress from a local pod and ingress to it need
/// every remote pod's labels and address (the IP-to-identity map covers
/// every pod IP of the cluster), and named ports in egress rules resolve on
/// the remote destination pod. A `spec.nodeName` field selector would see
/// only the pods this node enforces at, not their peers.
///
/// Finished pods are left out by the API server (their address may
/// already be another pod's). The list is served from the API server's
/// watch cache (`any_semantic`: resourceVersion=0, as client-go
/// informers list): every agent lists every pod, and a quorum read from
/// etcd per node would cost the control plane the most of all our
/// watches; the watch that follows brings a list that is a little behind
/// up to date. That list is unpaged: kube-rs leaves resourceVersion=0 out
/// of a paged request (the watch cache ignores limits with it anyway),
/// so a page size would turn it back into an etcd read. The agent holds
/// one full PodList in memory while it converts it, as informers do.
pub(super) fn pod_watch_config() -> watcher::Config {
    let mut config = watcher::Config::default().fields(convert::POD_FIELD_SELECTOR).any_semantic();
    config.page_size = None;
    config
}

/// Forwards one kind's watch events as `Update`s. The kind's converter
/// gives the model object (None: weir does not use it) and what could not
/// be read as written, which is logged once per object and counted
/// (`Update::Problems`).
///
/// Objects are decoded one by one (`Lenient`): one the typed decoder
/// refuses is reported by name and keeps its last readable version, in a
/// watch event as in a relist, instead of failing the watch.
async fn watch<K: Kind>(client: Client, tx: mpsc::Sender<Update>) {
    let api = Api::<Lenient<K::Object>>::all(client);
    let mut stream = watcher(api, K::watch_config()).default_backoff().boxed();
    let mut state = KindWatch::new(kinds::name::<K>().to_string());
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                if state.failed(&e, &tx).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if state.answered(&tx).await.is_err() {
            return;
        }
        let change = match state.step(event, &K::convert, &K::key) {
            Step::Buffered => continue,
            Step::Change(change) => Some(K::update(change)),
            Step::ProblemOnly => None,
        };
        if state.forward(change, &tx).await.is_err() {
            return;
        }
    }
}

/// The receiver of the updates has gone away: the watch ends.
struct ReceiverGone;

/// What one watch event leads to.
enum Step<T> {
    /// Part of a relist still being received: nothing to send yet.
    Buffered,
    /// A change to forward (then any new problems).
    Change(Change<T>),
    /// An object that could not be decoded: only its problem to report.
    ProblemOnly,
}

/// One kind's watch between events: the relist being received, what could
/// not be read, and whether the API server answers.
struct KindWatch<T> {
    kind: String,
    relist: Relist<T>,
    problems: ProblemLog,
    reachable: bool,
}

impl<T> KindWatch<T> {
    fn new(kind: String) -> Self {
        Self { problems: ProblemLog::new(kind.clone()), kind, relist: Relist::default(), reachable: true }
    }

    /// A watch error: says the API server is unreachable unless it answered.
    async fn failed(&mut self, e: &watcher::Error, tx: &mpsc::Sender<Update>) -> Result<(), ReceiverGone> {
        // The backoff already delays the retry; the datapath keeps its last
        // state meanwhile.
        warn!(kind = %self.kind, error = %e, "watch failed; retrying");
        // 410 Gone (and other errors the API server sends inside a watch)
        // mean it answered: relist, no outage.
        if self.reachable && !matches!(e, watcher::Error::WatchError(_)) {
            self.reachable = false;
            tx.send(Update::Reachable { kind: self.kind.clone(), ok: false }).await.map_err(|_| ReceiverGone)?;
        }
        Ok(())
    }

    /// An event arrived: the API server is reachable (again).
    async fn answered(&mut self, tx: &mpsc::Sender<Update>) -> Result<(), ReceiverGone> {
        if !self.reachable {
            self.reachable = true;
            tx.send(Update::Reachable { kind: self.kind.clone(), ok: true }).await.map_err(|_| ReceiverGone)?;
        }
        Ok(())
    }

    fn step<K>(
        &mut self,
        event: watcher::Event<Lenient<K>>,
        to_model: &impl Fn(&K) -> Option<(T, Option<String>)>,
        key: &impl Fn(&ObjectMeta) -> String,
    ) -> Step<T>
    where
        Lenient<K>: Resource,
    {
        match event {
            watcher::Event::Init => {
                self.relist = Relist::default();
                Step::Buffered
            }
            watcher::Event::InitApply(obj) => {
                self.listed(key(obj.meta()), &obj.object, to_model);
                Step::Buffered
            }
            watcher::Event::InitDone => Step::Change(self.relisted()),
            watcher::Event::Apply(obj) => self.applied(key(obj.meta()), &obj.object, to_model),
            watcher::Event::Delete(obj) => {
                let k = key(obj.meta());
                self.problems.set(&k, None);
                Step::Change(Change::Deleted(k))
            }
        }
    }

    /// One object of the relist being received.
    fn listed<K>(
        &mut self,
        k: String,
        object: &Result<K, String>,
        to_model: &impl Fn(&K) -> Option<(T, Option<String>)>,
    ) {
        match object {
            Ok(o) => {
                if let Some((m, problem)) = to_model(o) {
                    if let Some(p) = problem {
                        self.relist.problems.insert(k, p);
                    }
                    self.relist.objects.push(m);
                }
            }
            Err(e) => {
                self.relist.problems.insert(k.clone(), unreadable(e));
                self.relist.keep.push(k);
            }
        }
    }

    /// The relist is complete: everything it brought, as one change.
    fn relisted(&mut self) -> Change<T> {
        let Relist { objects, keep, problems: found } = std::mem::take(&mut self.relist);
        info!(kind = %self.kind, count = objects.len(), unreadable = keep.len(), "listed");
        self.problems.relisted(found);
        if keep.is_empty() { Change::Relisted(objects) } else { Change::RelistedKeeping { objects, keep } }
    }

    /// An object added or modified outside a relist.
    fn applied<K>(
        &mut self,
        k: String,
        object: &Result<K, String>,
        to_model: &impl Fn(&K) -> Option<(T, Option<String>)>,
    ) -> Step<T> {
        match object {
            // An object weir does not use (say an IPv6 slice) counts as
            // deleted, in case an earlier version of it was used.
            Ok(o) => match to_model(o) {
                Some((m, problem)) => {
                    self.problems.set(&k, problem);
                    Step::Change(Change::Applied(m))
                }
                None => {
                    self.problems.set(&k, None);
                    Step::Change(Change::Deleted(k))
                }
            },
            // The last readable version stays.
            Err(e) => {
                self.problems.set(&k, Some(unreadable(e)));
                Step::ProblemOnly
            }
        }
    }

    /// Sends `update` (if any), then what changed in the problems.
    async fn forward(&mut self, update: Option<Update>, tx: &mpsc::Sender<Update>) -> Result<(), ReceiverGone> {
        if let Some(update) = update {
            tx.send(update).await.map_err(|_| ReceiverGone)?;
        }
        if let Some(update) = self.problems.update() {
            tx.send(update).await.map_err(|_| ReceiverGone)?;
        }
        Ok(())
    }
}

/// A list being received (`Init` .. `InitDone`).
struct Relist<T> {
    objects: Vec<T>,
    /// Objects that could not be decoded: their last readable version stays.
    keep: Vec<String>,
    problems: BTreeMap<String, String>,
}

impl<T> Default for Relist<T> {
    fn default() -> Self {
        Self { objects: Vec::new(), keep: Vec::new(), problems: BTreeMap::new() }
    }
}

fn unreadable(error: &str) -> String {
    format!("cannot be decoded ({error}); its last readable version stays in effect")
}
