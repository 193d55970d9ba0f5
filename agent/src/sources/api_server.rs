//! Where the agent's own API client reaches the API server.
//!
//! A pod's in-cluster configuration names the `kubernetes` Service
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`, a ClusterIP). In a cluster without
//! kube-proxy weir *is* what serves that ClusterIP, so on a node's first
//! start nothing answers it yet. Every kube-proxy replacement meets this
//! and takes the API server's own address instead (Cilium's
//! `k8sServiceHost`/`k8sServicePort`, Calico's `kubernetes-services-endpoint`).
//! The order here:
//! 1. the setting (`k8s-service-host`/`k8s-service-port` in the ConfigMap,
//!    `WEIR_K8S_SERVICE_HOST`/`_PORT`): the operator said so;
//! 2. the in-cluster ClusterIP, if something answers it now (an agent
//!    restart on a node where weir serves it already, or kube-proxy still
//!    running during a migration): it spreads over every API server;
//! 3. the `server` of the node's kubelet kubeconfig (read-only hostPath;
//!    only its address is used, never the kubelet's credentials);
//! 4. otherwise a clear error naming the setting to fill in.
//!
//! The service account's token and CA are used in every case.
use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use kube::config::Kubeconfig;

/// Where the default in-cluster files live.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// kubeadm's (and kind's) kubelet kubeconfig.
pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
/// How long the in-cluster ClusterIP gets to answer at start-up.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A host (name or address) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `https://host:port`, with IPv6 addresses bracketed.
    pub fn url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url().trim_start_matches("https://"))
    }
}

/// Why this address was taken (logged with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Setting,
    InClusterService,
    KubeletKubeconfig(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Setting => {
                f.write_str("the k8s-service-host/k8s-service-port setting (WEIR_K8S_SERVICE_HOST/PORT)")
            }
            Origin::InClusterService => {
                f.write_str("the in-cluster `kubernetes` Service (KUBERNETES_SERVICE_HOST/PORT), which answers")
            }
            Origin::KubeletKubeconfig(p) => write!(f, "the server of the kubelet kubeconfig {}", p.display()),
        }
    }
}

/// What start-up knows before choosing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    /// The setting, if given.
    pub setting: Option<HostPort>,
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`, if set.
    pub in_cluster: Option<HostPort>,
    /// The kubelet kubeconfig's server, or why it could not be read.
    pub kubelet: Option<(PathBuf, Result<HostPort, String>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiAddressError {
    #[error(
        "the API server address {service} (KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT, the `kubernetes` Service's \
         ClusterIP) does not answer: weir is this cluster's Service proxy and serves that ClusterIP only once it runs. \
         Set k8s-service-host and k8s-service-port in the weir ConfigMap (WEIR_K8S_SERVICE_HOST, WEIR_K8S_SERVICE_PORT) \
         to the API server's own address (on kind: the control-plane node's address and 6443){kubelet}"
    )]
    Unserved { service: HostPort, kubelet: String },
    #[error(
        "no API server address: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set and no \
         k8s-service-host/k8s-service-port setting (WEIR_K8S_SERVICE_HOST, WEIR_K8S_SERVICE_PORT) was given{kubelet}"
    )]
    Nothing { kubelet: String },
}

/// The choice, given whether the in-cluster ClusterIP answers (asked only
/// when it would be taken).
pub async fn choose<F, Fut>(c: &Candidates, answers: F) -> Result<(HostPort, Origin), ApiAddressError>
where
    F: FnOnce(HostPort) -> Fut,
    Fut: Future<Output = bool>,
{
    if let Some(setting) = &c.setting {
        return Ok((setting.clone(), Origin::Setting));
    }
    if let Some(service) = &c.in_cluster
        && answers(service.clone()).await
    {
        return Ok((service.clone(), Origin::InClusterService));
    }
    let kubelet = match &c.kubelet {
        Some((path, Ok(server))) => return Ok((server.clone(), Origin::KubeletKubeconfig(path.clone()))),
        Some((path, Err(why))) => format!("; the kubelet kubeconfig {} was no help: {why}", path.display()),
        None => String::new(),
    };
    Err(match &c.in_cluster {
        Some(service) => ApiAddressError::Unserved { service: service.clone(), kubelet },
        None => ApiAddressError::Nothing { kubelet },
    })
}

/// `host` and `port` as given in the environment; `None` if the host is
/// unset or empty. A host without a port gets 443 for the in-cluster pair
/// (what the API server's Service uses) and 6443 for the setting
/// (kubeadm's secure port).
pub fn host_port(host: Option<&str>, port: Option<&str>, default_port: u16) -> Result<Option<HostPort>, String> {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = match port.map(str::trim).filter(|p| !p.is_empty()) {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("port {p:?} is not a TCP port"))?,
    };
    Ok(Some(HostPort { host, port }))
}

/// The `server` of a kubeconfig's current context (its cluster only).
pub fn kubeconfig_server(path: &Path) -> Result<HostPort, String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let context_name = kc.current_context.as_deref().ok_or("it has no current-context")?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("its current-context {context_name:?} is not defined"))?;
    let server = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.as_deref())
        .ok_or_else(|| format!("its cluster {:?} has no server", context.cluster))?;
    let uri: http::Uri = server.parse().map_err(|e| format!("server {server:?}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("server {server:?} is not https"));
    }
    let host = uri.host().ok_or_else(|| format!("server {server:?} has no host"))?;
    Ok(HostPort {
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port: uri.port_u16().unwrap_or(443),
    })
}

/// Whether a TCP connection to `hp` opens within `timeout`.
pub async fn answers(hp: HostPort, timeout: Duration) -> bool {
    let connect = tokio::net::TcpStream::connect((hp.host.as_str(), hp.port));
    matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort { host: host.into(), port }
    }

    async fn pick(c: &Candidates, up: bool) -> Result<(HostPort, Origin), ApiAddressError> {
        choose(c, |_| async move { up }).await
    }

    #[tokio::test]
    async fn the_setting_wins_over_everything() {
        let c = Candidates {
            setting: Some(hp("172.18.0.2", 6443)),
            in_cluster: Some(hp("10.96.0.1", 443)),
            kubelet: Some(("/k".into(), Ok(hp("cp", 6443)))),
        };
        assert_eq!(pick(&c, true).await, Ok((hp("172.18.0.2", 6443), Origin::Setting)));
    }

    #[tokio::test]
    async fn the_cluster_ip_when_it_answers_else_the_kubelets_server() {
        let mut c = Candidates {
            setting: None,
            in_cluster: Some(hp("10.96.0.1", 443)),
            kubelet: Some(("/etc/kubernetes/kubelet.conf".into(), Ok(hp("kind-control-plane", 6443)))),
        };
        assert_eq!(pick(&c, true).await, Ok((hp("10.96.0.1", 443), Origin::InClusterService)));
        assert_eq!(
            pick(&c, false).await,
            Ok((hp("kind-control-plane", 6443), Origin::KubeletKubeconfig("/etc/kubernetes/kubelet.conf".into())))
        );
        // Not asked whether the ClusterIP answers when there is none.
        c.in_cluster = None;
        let asked = choose(&c, |_| async { panic!("asked") }).await;
        assert_eq!(asked.unwrap().1, Origin::KubeletKubeconfig("/etc/kubernetes/kubelet.conf".into()));
    }

    #[tokio::test]
    async fn a_cold_start_without_help_names_the_setting() {
        let c = Candidates {
            setting: None,
            in_cluster: Some(hp("10.96.0.1", 443)),
            kubelet: Some(("/etc/kubernetes/kubelet.conf".into(), Err("No such file or directory".into()))),
        };
        let e = pick(&c, false).await.unwrap_err().to_string();
        for needle in ["10.96.0.1:443", "k8s-service-host", "WEIR_K8S_SERVICE_HOST", "does not answer", "No such file"]
        {
            assert!(e.contains(needle), "{needle:?} not in: {e}");
        }
        let none = pick(&Candidates::default(), false).await.unwrap_err();
        assert!(matches!(none, ApiAddressError::Nothing { .. }));
        assert!(none.to_string().contains("k8s-service-port"));
    }

    #[test]
    fn host_and_port_from_the_environment() {
        assert_eq!(host_port(None, Some("6443"), 443), Ok(None));
        assert_eq!(host_port(Some(" "), None, 443), Ok(None));
        assert_eq!(host_port(Some("10.96.0.1"), None, 443), Ok(Some(hp("10.96.0.1", 443))));
        assert_eq!(host_port(Some("cp.example"), Some("6443"), 443), Ok(Some(hp("cp.example", 6443))));
        assert_eq!(host_port(Some("[fd00::1]"), Some("6443"), 443), Ok(Some(hp("fd00::1", 6443))));
        assert!(host_port(Some("cp"), Some("http"), 443).unwrap_err().contains("\"http\""));
        assert!(host_port(Some("cp"), Some("0"), 443).is_err());
        assert_eq!(hp("fd00::1", 6443).url(), "https://[fd00::1]:6443");
        assert_eq!(hp("fd00::1", 6443).to_string(), "[fd00::1]:6443");
    }

    #[test]
    fn the_kubelet_kubeconfigs_server_of_its_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: system:node:w1@kind\n\
             clusters:\n- name: other\n  cluster:\n    server: https://10.0.0.9:6443\n\
             - name: kind\n  cluster:\n    certificate-authority-data: AAAA\n    server: https://kind-control-plane:6443\n\
             contexts:\n- name: system:node:w1@kind\n  context:\n    cluster: kind\n    user: system:node:w1\n\
             users:\n- name: system:node:w1\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        )
        .unwrap();
        assert_eq!(kubeconfig_server(&path), Ok(hp("kind-control-plane", 6443)));
        std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n").unwrap();
        assert!(kubeconfig_server(&path).unwrap_err().contains("current-context"));
        assert!(kubeconfig_server(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn answers_is_a_tcp_connect_with_a_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(answers(hp("127.0.0.1", port), PROBE_TIMEOUT).await);
        drop(listener);
        assert!(!answers(hp("127.0.0.1", port), PROBE_TIMEOUT).await);
    }
}
