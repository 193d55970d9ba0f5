//! `healthCheckNodePort` servers for `externalTrafficPolicy: Local`
//! Services, answering as kube-proxy does: 200 with the number of local
//! endpoints when there is at least one, 503 otherwise, so a cloud load
//! balancer sends traffic only to nodes that can serve it locally.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info};

use crate::{model::service::ObjectKey, observe::http};

/// The longest request head read (the request is not looked at).
const MAX_HEAD: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("cannot serve healthCheckNodePort {port} for Service/{service}: {source}")]
pub struct HealthCheckError {
    pub port: u16,
    pub service: ObjectKey,
    pub source: std::io::Error,
}

type Shared = Arc<Mutex<(ObjectKey, usize)>>;

#[derive(Default)]
pub struct HealthChecks {
    servers: BTreeMap<u16, (Shared, JoinHandle<()>)>,
}

/// Status line and body for a Service with `local` endpoints on this node.
pub fn response(service: &str, local: usize) -> (&'static str, String) {
    let (namespace, name) = service.split_once('/').unwrap_or(("default", service));
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let status = if local > 0 { "200 OK" } else { "503 Service Unavailable" };
    (status, body)
}

impl HealthChecks {
    /// Starts, updates and stops servers to match `desired`
    /// (port -> (Service, local endpoint count)).
    pub async fn sync(&mut self, desired: &BTreeMap<u16, (ObjectKey, usize)>) -> Vec<HealthCheckError> {
        let mut errors = Vec::new();
        self.servers.retain(|port, (_, task)| {
            let keep = desired.contains_key(port);
            if !keep {
                task.abort();
                info!(port, "health check server stopped");
            }
            keep
        });
        for (&port, (service, local)) in desired {
            if let Some((shared, _)) = self.servers.get(&port) {
                *shared.lock().expect("health state lock") = (service.clone(), *local);
                continue;
            }
            match TcpListener::bind(("0.0.0.0", port)).await {
                Ok(listener) => {
                    let shared: Shared = Arc::new(Mutex::new((service.clone(), *local)));
                    let task = tokio::spawn(serve(listener, shared.clone()));
                    info!(port, %service, "health check server started");
                    self.servers.insert(port, (shared, task));
                }
                Err(source) => errors.push(HealthCheckError { port, service: service.clone(), source }),
            }
        }
        errors
    }
}

async fn serve(listener: TcpListener, shared: Shared) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            // The request itself does not matter (kube-proxy answers any
            // path); read what arrives so the client sees a clean close.
            let _ = http::read_one_head(&mut conn, MAX_HEAD, std::time::Duration::from_secs(2)).await;
            let (service, local) = shared.lock().expect("health state lock").clone();
            let (status, body) = response(&service, local);
            let headers = [("X-Content-Type-Options", "nosniff")];
            if let Err(e) =
                http::write_response(&mut conn, status, "application/json", &headers, body.as_bytes(), true).await
            {
                debug!(error = %e, "health check client went away");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn answers_like_kube_proxy() {
        let (status, body) = response("shop/web", 2);
        assert_eq!(status, "200 OK");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"]["namespace"], "shop");
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(response("shop/web", 0).0, "503 Service Unavailable");
    }

    #[tokio::test]
    async fn serves_updates_and_stops() {
        // Port 0 cannot be used (the port is the API), so find a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut hc = HealthChecks::default();
        let mut want = BTreeMap::from([(port, ("shop/web".to_string(), 0usize))]);
        assert!(hc.sync(&want).await.is_empty());
        let get = || async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        assert!(get().await.unwrap().starts_with("HTTP/1.1 503"));
        want.insert(port, ("shop/web".to_string(), 3));
        assert!(hc.sync(&want).await.is_empty());
        let out = get().await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("\"localEndpoints\":3"));
        hc.sync(&BTreeMap::new()).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(get().await.is_err(), "server should be gone");
    }
}
