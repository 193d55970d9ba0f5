//! The agent's end of the weir-cni hand-off (see weir-cni's
//! `policy_handoff`): a unix socket in the run dir where ADD announces a
//! new pod's endpoint and waits until its NetworkPolicy is in place.
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

pub const SOCKET_FILE: &str = "policy.sock";

/// How long the agent holds an ADD for a pod it has not seen yet; weir-cni
/// waits a little longer than this.
pub const HOLD: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffRequest {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub container_id: String,
}

impl HandoffRequest {
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoffAnswer {
    Ready,
    Pending(String),
}

pub struct Handoff {
    pub request: HandoffRequest,
    pub reply: oneshot::Sender<HandoffAnswer>,
}

/// Binds the socket (replacing a stale one from an earlier agent).
pub fn bind(run_dir: &std::path::Path) -> std::io::Result<(UnixListener, PathBuf)> {
    let path = super::files::socket_path(run_dir, SOCKET_FILE)?;
    Ok((UnixListener::bind(&path)?, path))
}

pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Handoff>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = one(stream, tx).await {
                        debug!(error = %e, "policy hand-off connection");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "policy hand-off socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn one(stream: UnixStream, tx: mpsc::Sender<Handoff>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(2), BufReader::new(read).read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("no request within 2 s"))??;
    let answer = match serde_json::from_str::<HandoffRequest>(line.trim()) {
        Err(e) => HandoffAnswer::Pending(format!("unreadable request: {e}")),
        Ok(request) => {
            let (reply, rx) = oneshot::channel();
            if tx.send(Handoff { request, reply }).await.is_err() {
                HandoffAnswer::Pending("the agent is stopping".into())
            } else {
                tokio::time::timeout(HOLD + Duration::from_millis(500), rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_else(|| HandoffAnswer::Pending("the agent did not finish in time".into()))
            }
        }
    };
    let json = match answer {
        HandoffAnswer::Ready => serde_json::json!({"ready": true}),
        HandoffAnswer::Pending(reason) => serde_json::json!({"ready": false, "reason": reason}),
    };
    write.write_all(format!("{json}\n").as_bytes()).await
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn requests_reach_the_agent_and_answers_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, path) = bind(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some(h) = rx.recv().await {
                let answer = if h.request.name == "a" {
                    HandoffAnswer::Ready
                } else {
                    HandoffAnswer::Pending(format!("pod {} unknown", h.request.pod_key()))
                };
                let _ = h.reply.send(answer);
            }
        });
        for (name, want) in [("a", r#"{"ready":true}"#), ("b", r#"{"ready":false,"reason":"pod x/b unknown"}"#)] {
            let mut s = UnixStream::connect(&path).await.unwrap();
            let req = format!(r#"{{"ifindex":7,"ip":"10.244.1.5","namespace":"x","name":"{name}","containerId":"c"}}"#);
            s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert_eq!(out.trim(), want);
        }
        // Garbage gets an answer, not a hang.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"nonsense\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("unreadable request"), "{out}");
    }
}
