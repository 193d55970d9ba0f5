//! kube-rs watch source: one watcher per kind, with kube's default backoff
//! (watches survive API restarts, 410 Gone triggers a relist, errors back off).
//! A relist (`Init` .. `InitDone`) is buffered and sent as one
//! `Change::Relisted`, so the index can prune what disappeared meanwhile.
use std::{fmt::Debug, path::PathBuf};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Change, Update, convert};

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
        |n| Some(convert::node(n)),
        |n| n.metadata.name.clone().unwrap_or_default(),
        Update::Nodes,
    );
    let services = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        |s| Some(convert::service(s)),
        |s| convert::key(&s.metadata),
        Update::Services,
    );
    // Only slices that belong to a Service.
    let slices = watch(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default().labels(convert::SERVICE_NAME_LABEL),
        tx,
        convert::endpoint_slice,
        |s| convert::key(&s.metadata),
        Update::EndpointSlices,
    );
    futures::join!(nodes, services, slices);
}

/// Forwards one kind's watch events as `Update`s.
async fn watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<Update>,
    to_model: impl Fn(&K) -> Option<T>,
    key: impl Fn(&K) -> String,
    wrap: impl Fn(Change<T>) -> Update,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut relist: Vec<T> = Vec::new();
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
                continue;
            }
            watcher::Event::InitApply(obj) => {
                relist.extend(to_model(&obj));
                continue;
            }
            watcher::Event::InitDone => {
                info!(%kind, count = relist.len(), "listed");
                Change::Relisted(std::mem::take(&mut relist))
            }
            // An object weir does not use (say an IPv6 slice) counts as
            // deleted, in case an earlier version of it was used.
            watcher::Event::Apply(obj) => match to_model(&obj) {
                Some(m) => Change::Applied(m),
                None => Change::Deleted(key(&obj)),
            },
            watcher::Event::Delete(obj) => Change::Deleted(key(&obj)),
        };
        if tx.send(wrap(change)).await.is_err() {
            return;
        }
    }
}
