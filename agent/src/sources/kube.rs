//! kube-rs watch source: one watcher per kind, with kube's default backoff
//! (watches survive API restarts, 410 Gone triggers a relist, errors back off).
//! A relist (`Init` .. `InitDone`) is buffered and sent as one
//! `Change::Relisted`, so the index can prune what disappeared meanwhile.
//!
//! The watched objects are converted at once and dropped (there is no
//! reflector store), so their bulk (managedFields, Pod specs) costs only
//! the decoding: there is nothing to strip from a cache.
use std::{collections::BTreeMap, fmt::Debug, path::PathBuf};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Change, ProblemLog, Update, convert};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration (in-cluster or $KUBECONFIG): {source}")]
    Infer { source: kube::Error },
    #[error("cannot build the API client: {source}")]
    Client { source: kube::Error },
}

pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, KubeError> {
    match kubeconfig {
        None => Client::try_default().await.map_err(|source| KubeError::Infer { source }),
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
            let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
            Client::try_from(config).map_err(|source| KubeError::Client { source })
        }
    }
}

/// Runs every watcher until the receiver goes away.
pub async fn run(client: Client, tx: mpsc::Sender<Update>) {
    let nodes = watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        |n| Some((convert::node(n), None)),
        |n| n.metadata.name.clone().unwrap_or_default(),
        Update::Nodes,
    );
    let services = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        |s| Some((convert::service(s), None)),
        |s| convert::key(&s.metadata),
        Update::Services,
    );
    // Only slices that belong to a Service.
    let slices = watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(convert::SERVICE_NAME_LABEL),
        tx.clone(),
        |s| convert::endpoint_slice(s).map(|s| (s, None)),
        |s| convert::key(&s.metadata),
        Update::EndpointSlices,
    );
    // Every Pod of the cluster, not only this node's: a policy's peers
    // (podSelector / namespaceSelector in from/to) match pods wherever they
    // run, so egress from a local pod and ingress to it need every remote
    // pod's labels and address (the IP-to-identity map covers every pod IP
    // of the cluster), and named ports in egress rules resolve on the remote
    // destination pod. A `spec.nodeName` field selector would see only the
    // pods this node enforces at, not their peers.
    //
    // Finished pods are left out by the API server (their address may
    // already be another pod's). The list is served from the API server's
    // watch cache (`any_semantic`: resourceVersion=0, as client-go
    // informers list): every agent lists every pod, and a quorum read from
    // etcd per node would cost the control plane the most of all our
    // watches; the watch that follows brings a list that is a little behind
    // up to date. That list is unpaged: kube-rs leaves resourceVersion=0 out
    // of a paged request (the watch cache ignores limits with it anyway),
    // so a page size would turn it back into an etcd read. The agent holds
    // one full PodList in memory while it converts it, as informers do.
    let mut pod_config = watcher::Config::default().fields(convert::POD_FIELD_SELECTOR).any_semantic();
    pod_config.page_size = None;
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        pod_config,
        tx.clone(),
        |p| convert::pod(p).map(|p| (p, None)),
        |p| convert::key(&p.metadata),
        Update::Pods,
    );
    let namespaces = watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        |n| Some((convert::namespace(n), None)),
        |n| n.metadata.name.clone().unwrap_or_default(),
        Update::Namespaces,
    );
    // Fail closed: a policy that cannot be read in full still isolates
    // what it selects (deny-all), and is reported.
    let policies = watch(
        Api::<NetworkPolicy>::all(client),
        watcher::Config::default(),
        tx,
        |p| Some(convert::network_policy_or_deny(p)),
        |p| convert::key(&p.metadata),
        Update::NetworkPolicies,
    );
    futures::join!(nodes, services, slices, pods, namespaces, policies);
}

/// Forwards one kind's watch events as `Update`s. `to_model` gives the
/// model object (None: weir does not use it) and what could not be read as
/// written, which is logged once per object and counted
/// (`Update::Problems`).
async fn watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<Update>,
    to_model: impl Fn(&K) -> Option<(T, Option<String>)>,
    key: impl Fn(&K) -> String,
    wrap: impl Fn(Change<T>) -> Update,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut relist: Vec<T> = Vec::new();
    let mut relist_problems: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = ProblemLog::new(kind.clone());
    let mut reachable = true;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                // The backoff already delays the retry; the datapath keeps
                // its last state meanwhile.
                warn!(%kind, error = %e, "watch failed; retrying");
                // 410 Gone (and other errors the API server sends inside a
                // watch) mean it answered: relist, no outage.
                if reachable && !matches!(e, watcher::Error::WatchError(_)) {
                    reachable = false;
                    if tx.send(Update::Reachable { kind: kind.clone(), ok: false }).await.is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        if !reachable {
            reachable = true;
            if tx.send(Update::Reachable { kind: kind.clone(), ok: true }).await.is_err() {
                return;
            }
        }
        let change = match event {
            watcher::Event::Init => {
                relist.clear();
                relist_problems.clear();
                continue;
            }
            watcher::Event::InitApply(obj) => {
                if let Some((m, problem)) = to_model(&obj) {
                    if let Some(p) = problem {
                        relist_problems.insert(key(&obj), p);
                    }
                    relist.push(m);
                }
                continue;
            }
            watcher::Event::InitDone => {
                info!(%kind, count = relist.len(), "listed");
                problems.relisted(std::mem::take(&mut relist_problems));
                Change::Relisted(std::mem::take(&mut relist))
            }
            // An object weir does not use (say an IPv6 slice) counts as
            // deleted, in case an earlier version of it was used.
            watcher::Event::Apply(obj) => match to_model(&obj) {
                Some((m, problem)) => {
                    problems.set(&key(&obj), problem);
                    Change::Applied(m)
                }
                None => {
                    problems.set(&key(&obj), None);
                    Change::Deleted(key(&obj))
                }
            },
            watcher::Event::Delete(obj) => {
                problems.set(&key(&obj), None);
                Change::Deleted(key(&obj))
            }
        };
        if tx.send(wrap(change)).await.is_err() {
            return;
        }
        if let Some(update) = problems.update()
            && tx.send(update).await.is_err()
        {
            return;
        }
    }
}
