//! `<run dir>/flows.sock`: a client sends one request line (`Request`), the
//! agent answers with the flows as JSON lines, the history first, then,
//! if the client follows, each new flow until the client goes. A bad
//! request gets `{"error": ...}`; a follower too slow for the flows gets
//! `{"lost": n}` where it missed n.
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};
use tracing::debug;

use super::{SOCKET_FILE, filter::Request, flow::Flow, hub::Hub};

/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// Binds the socket (replacing a stale one from an earlier agent).
pub fn bind(run_dir: &std::path::Path) -> std::io::Result<(UnixListener, PathBuf)> {
    let path = crate::node::files::socket_path(run_dir, SOCKET_FILE)?;
    Ok((UnixListener::bind(&path)?, path))
}

pub async fn serve(listener: UnixListener, hub: Arc<Hub>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let hub = hub.clone();
                tokio::spawn(async move {
                    if let Err(e) = one(stream, &hub).await {
                        debug!(error = %e, "flows client");
                    }
                });
            }
            Err(e) => {
                debug!(error = %e, "flows socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn one(stream: UnixStream, hub: &Hub) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let req = match Request::parse(&line) {
        Ok(r) => r,
        Err(e) => {
            let answer = serde_json::json!({ "error": e }).to_string() + "\n";
            return write.write_all(answer.as_bytes()).await;
        }
    };
    let (past, live) = hub.subscribe(&req);
    let mut out = Vec::with_capacity(past.len() * 300);
    for f in &past {
        push_line(&mut out, f);
    }
    write.write_all(&out).await?;
    let Some(mut live) = live else {
        return write.shutdown().await;
    };
    // Ends when the client goes: a write fails, or its end reads EOF.
    let mut rest = reader.into_inner();
    let mut buf = String::new();
    loop {
        tokio::select! {
            flow = live.recv() => {
                out.clear();
                match flow {
                    Ok(f) if req.filter.matches(&f) => push_line(&mut out, &f),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        out.extend_from_slice(serde_json::json!({ "lost": n }).to_string().as_bytes());
                        out.push(b'\n');
                    }
                    Err(RecvError::Closed) => return Ok(()),
                }
                write.write_all(&out).await?;
            }
            n = rest.read_line(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
                buf.clear();
            }
        }
    }
}

fn push_line(out: &mut Vec<u8>, f: &Flow) {
    if serde_json::to_writer(&mut *out, f).is_ok() {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flows::filter::tests::flow;

    async fn ask(path: &std::path::Path, req: &str) -> UnixStream {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
        s
    }

    #[tokio::test]
    async fn history_then_live_flows_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, path) = bind(dir.path()).unwrap();
        let hub = Arc::new(Hub::new(100, None));
        hub.keep(vec![Arc::new(flow("x/a", "y/b", "allowed")), Arc::new(flow("x/a", "y/b", "dropped"))]);
        tokio::spawn(serve(listener, hub.clone()));

        let mut s = ask(&path, r#"{"last":1}"#).await;
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let flows: Vec<Flow> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].verdict, "dropped");

        let mut s = ask(&path, r#"{"filter":{"verdict":"nope"}}"#).await;
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.contains("\"error\"") && text.contains("nope"), "{text}");

        let s = ask(&path, r#"{"follow":true,"filter":{"verdict":"translated"}}"#).await;
        let mut lines = BufReader::new(s).lines();
        // Subscribed once the history (none matches) is written: keep
        // sending until the follower sees one.
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                hub.keep(vec![Arc::new(flow("x/a", "y/b", "allowed")), Arc::new(flow("x/a", "y/b", "translated"))]);
                tokio::select! {
                    l = lines.next_line() => return l.unwrap().unwrap(),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(serde_json::from_str::<Flow>(&got).unwrap().verdict, "translated");
    }
}
