//! A small fake Kubernetes API server over a manifest directory, so the
//! agent's real kube-rs source (`--source kube:<kubeconfig>`) can run without
//! a cluster: `weir-dev fake-apiserver --dir <manifests> --listen
//! 127.0.0.1:6443 [--write-kubeconfig <path>]` (a development tool; the test
//! bed and `cargo xtask sandbox --source kube` run one per node namespace).
//!
//! It serves, read-only and as JSON, the raw objects of the kinds the agent
//! watches: Nodes, Services, EndpointSlices, Pods, Namespaces and
//! NetworkPolicies, cluster-wide and per namespace. What kube-rs's watcher
//! asks, and how it is answered:
//! - `GET /api/v1/nodes?limit=500` (list; `resourceVersion=0&
//!   resourceVersionMatch=NotOlderThan` for Pods, with
//!   `fieldSelector=status.phase!=Succeeded,status.phase!=Failed`; the
//!   EndpointSlice list with `labelSelector=kubernetes.io/service-name`):
//!   a `<Kind>List` with the global resourceVersion and every item's own,
//!   selectors applied, paged by `limit`/`continue`;
//! - `GET ...?watch=true&timeoutSeconds=290&allowWatchBookmarks=true&
//!   resourceVersion=N`: a chunked stream of newline-delimited WatchEvents
//!   (ADDED, MODIFIED, DELETED; BOOKMARK every few seconds when asked),
//!   replayed from N out of an event log, ended after timeoutSeconds. A
//!   resourceVersion the log no longer reaches (or from an earlier server
//!   process) gets an ERROR event with a 410 Status: kube-rs relists.
//!   `resourceVersion=0`/none and `sendInitialEvents=true` (streaming
//!   lists) start with the current objects as ADDED.
//!
//! The directory is polled (every 200 ms by default); each object that
//! appeared, changed or went away is one change with its own
//! resourceVersion, pushed to the open watches of its kind.
//!
//! HTTP: request heads are read and responses written by the agent's
//! `observe::http` (the helpers the status and health check servers use);
//! what only this server needs stays here: keep-alive (the head reader
//! leaves the next request in the buffer), request bodies skipped,
//! chunked watch streams, and TLS (`tls`).
pub mod store;
#[cfg(test)]
mod tests;
pub mod tls;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::watch,
    time::Instant,
};
use tracing::{debug, info, warn};

pub use store::{ApiError, EventType, Filter, Resource, Scanner, Store};
use weir_agent::observe::http;

/// `weir-dev fake-apiserver`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest directory to serve (read as the `dir:` source reads it).
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to listen on (plain HTTP and no authentication, unless
    /// `--service-account-dir` is given).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Serve https with a CA and certificate made at start, require a
    /// bearer token, and write `token`, `ca.crt` and `namespace` here as a
    /// pod's service account volume holds them: the agent then starts with
    /// in-cluster configuration, as a DaemonSet starts it.
    #[arg(long)]
    pub service_account_dir: Option<PathBuf>,
    /// More addresses the certificate names (the `kubernetes` Service's
    /// ClusterIP, through which pods reach this server).
    #[arg(long)]
    pub tls_san: Vec<std::net::IpAddr>,
    /// Directory poll interval, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Once listening, write a kubeconfig for this server here (for
    /// `weir-agent run --source kube:<path>`).
    #[arg(long)]
    pub write_kubeconfig: Option<PathBuf>,
}

/// How often an idle watch that asked for bookmarks gets one (when the
/// global resourceVersion moved): keeps its resourceVersion recent, so it
/// can resume after other kinds' changes have rotated the log.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// When a watch names no timeoutSeconds.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
const MAX_HEAD: usize = 64 * 1024;

/// The server's state, shared by the poller and the connections.
pub struct Shared {
    store: Mutex<Store>,
    /// The resourceVersion after each change (watches wait on it).
    changes: watch::Sender<u64>,
    /// Bytes of list bodies and watch events sent, per `Resource::ALL` index.
    sent: [AtomicU64; Resource::ALL.len()],
}

impl Shared {
    pub fn new(store: Store) -> Arc<Self> {
        let rv = store.resource_version();
        Arc::new(Self { store: Mutex::new(store), changes: watch::channel(rv).0, sent: Default::default() })
    }

    /// Runs `change` on the store, then wakes the watches.
    pub fn update<T>(&self, change: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv) = {
            let mut store = self.store.lock().expect("lock");
            let out = change(&mut store);
            (out, store.resource_version())
        };
        self.changes.send_replace(rv);
        out
    }

    /// Bytes sent so far of `resource` (list bodies and watch events).
    pub fn sent_bytes(&self, resource: Resource) -> u64 {
        self.sent[resource.index()].load(Ordering::Relaxed)
    }

    fn count(&self, resource: Resource, bytes: usize) {
        self.sent[resource.index()].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Replaces the contents (one directory scan); wakes the watches.
    pub fn replace_all(&self, objects: BTreeMap<store::Key, Value>) -> usize {
        self.update(|store| store.replace_all(objects))
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("lock")
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let shared = Shared::new(Store::new(store::start_resource_version(), store::DEFAULT_LOG_CAPACITY));
    let mut scanner = Scanner::new(args.dir.clone());
    // Read once before listening, so that the first lists are complete.
    match scanner.scan() {
        Ok(Some(objects)) => {
            shared.replace_all(objects);
        }
        Ok(None) => {}
        Err(e) => {
            warn!(dir = %args.dir.display(), error = %e, "cannot read the manifest directory yet; answering 503 until it can")
        }
    }
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The service account files are written before anything else says
    // the server is up, so a client that finds them can connect.
    let secure = match &args.service_account_dir {
        None => None,
        Some(dir) => {
            let mut ips = vec![addr.ip()];
            ips.extend(&args.tls_san);
            let tls = tls::server_tls(&ips)?;
            let token = tls::new_token()?;
            tls::write_service_account(dir, &token, &tls.ca_pem)?;
            info!(dir = %dir.display(), "service account written (https, bearer token required)");
            Some(Arc::new(Secure { acceptor: tls.acceptor, authorization: format!("Bearer {token}") }))
        }
    };
    let (objects, resource_version) = {
        let store = shared.store();
        (store.len(), store.resource_version())
    };
    info!(%addr, dir = %args.dir.display(), objects, resource_version, "fake API server listening");
    if let Some(path) = &args.write_kubeconfig {
        write_kubeconfig(path, addr, args.service_account_dir.as_deref())?;
        info!(path = %path.display(), "kubeconfig written");
    }
    tokio::spawn(poll(scanner, shared.clone(), Duration::from_millis(args.poll_ms.max(10))));
    serve_with(listener, shared, secure).await;
    Ok(())
}

/// https and the token every request must carry.
pub struct Secure {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The whole expected `Authorization` header value.
    authorization: String,
}

/// A kubeconfig for the server at `addr`, written in one step (temp file +
/// rename) so a reader never sees half of it: `http://` without
/// credentials, or with a service account dir, `https://` with its CA and
/// token.
pub fn write_kubeconfig(path: &Path, addr: SocketAddr, service_account: Option<&Path>) -> anyhow::Result<()> {
    let text = kubeconfig(addr, service_account);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

pub fn kubeconfig(addr: SocketAddr, service_account: Option<&Path>) -> String {
    let (server, ca, user) = match service_account {
        None => (format!("http://{addr}"), String::new(), "{}".to_string()),
        Some(dir) => (
            format!("https://{addr}"),
            format!("\n    certificate-authority: {}", dir.join("ca.crt").display()),
            format!("\n    tokenFile: {}", dir.join("token").display()),
        ),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weir-fake\n  cluster:\n    server: {server}{ca}\n\
         users:\n- name: weir-fake\n  user: {user}\ncontexts:\n- name: weir-fake\n  context:\n    cluster: weir-fake\n    user: weir-fake\n\
         current-context: weir-fake\n"
    )
}

async fn poll(mut scanner: Scanner, shared: Arc<Shared>, every: Duration) {
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        match scanner.scan() {
            Ok(Some(objects)) => {
                warned = false;
                let changes = shared.replace_all(objects);
                if changes > 0 {
                    info!(changes, resource_version = shared.store().resource_version(), "manifest directory changed");
                }
            }
            Ok(None) => warned = false,
            Err(e) => {
                if !warned {
                    warn!(error = %e, "cannot read the manifest directory; serving its last contents");
                    warned = true;
                }
            }
        }
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    serve_with(listener, shared, None).await
}

/// `serve`, over https with a bearer token when `secure` is given.
pub async fn serve_with(listener: TcpListener, shared: Arc<Shared>, secure: Option<Arc<Secure>>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let secure = secure.clone();
        tokio::spawn(async move {
            let result = match secure {
                None => {
                    let (rd, wr) = conn.into_split();
                    connection(rd, wr, &shared, None).await
                }
                Some(secure) => match secure.acceptor.accept(conn).await {
                    Ok(tls) => {
                        let (rd, wr) = tokio::io::split(tls);
                        connection(rd, wr, &shared, Some(&secure.authorization)).await
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

// ---------------------------------------------------------------------- HTTP

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    close: bool,
    authorization: Option<String>,
}

/// HTTP/1.1 with keep-alive: requests one after the other on a connection
/// (kube-rs's hyper pools them).
/// With `authorization`, a request without that exact header gets 401.
async fn connection<R, W>(mut rd: R, mut wr: W, shared: &Shared, authorization: Option<&str>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(req) = read_request(&mut rd, &mut buf).await? else { return Ok(()) };
        debug!(method = %req.method, path = %req.path, query = ?req.query, "request");
        let answer = match authorization {
            Some(expected) if req.authorization.as_deref() != Some(expected) => {
                ApiError::new(401, "Unauthorized", "a valid bearer token is required").into()
            }
            _ => route(&req, shared),
        };
        match answer {
            Answer::List(resource, body) => {
                shared.count(resource, body.len());
                http::write_response(&mut wr, "200 OK", "application/json", &[], &body, req.close).await?;
            }
            Answer::Json(code, body) => {
                let body = serde_json::to_vec(&body).expect("JSON");
                let status = format!("{code} {}", reason_phrase(code));
                http::write_response(&mut wr, &status, "application/json", &[], &body, req.close).await?;
            }
            Answer::Watch(w) => {
                let head =
                    http::head("200 OK", "application/json", &[("Transfer-Encoding", "chunked")], None, req.close);
                wr.write_all(head.as_bytes()).await?;
                wr.flush().await?;
                if !stream_watch(w, shared, &mut rd, &mut wr, &mut buf).await? {
                    return Ok(()); // the client went away
                }
                wr.write_all(b"0\r\n\r\n").await?;
                wr.flush().await?;
            }
        }
        if req.close {
            return Ok(());
        }
    }
}

/// Reads one request head (the agent's `observe::http::read_head`, kept
/// for keep-alive) and skips a body; None at a clean end.
async fn read_request<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    let Some(head) = http::read_head(rd, buf, MAX_HEAD).await? else { return Ok(None) };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or("/").to_string(),
        parts.next().unwrap_or("HTTP/1.1").to_string(),
    );
    let mut close = version == "HTTP/1.0";
    let mut body_len = 0usize;
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        }
    }
    // A body (there is none in a GET): read and dropped.
    while buf.len() < body_len {
        let mut chunk = [0u8; 4096];
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..body_len);
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some(Request { method, path: percent_decode(path), query, close, authorization }))
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        410 => "Gone",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

enum Answer {
    Json(u16, Value),
    /// A list body, serialized.
    List(Resource, Vec<u8>),
    Watch(WatchRequest),
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Self {
        Answer::Json(e.code, e.status())
    }
}

#[derive(Debug)]
struct WatchRequest {
    resource: Resource,
    filter: Filter,
    /// None: start with the current objects (resourceVersion 0 or none).
    from: Option<u64>,
    initial_events_end: bool,
    bookmarks: bool,
    timeout: Duration,
}

/// What the URL names: a collection (optionally in a namespace), or one
/// object.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let resource = Resource::from_path(&group_version, plural)?;
    if namespace.is_some() && !resource.namespaced() {
        return None;
    }
    Some(Target { resource, namespace: namespace.map(str::to_string), name: name.map(str::to_string) })
}

fn route(req: &Request, shared: &Shared) -> Answer {
    match req.path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return Answer::Json(200, json!("ok")),
        "/version" => {
            return Answer::Json(
                200,
                json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-weir-fake", "platform": "linux/amd64"}),
            );
        }
        _ => {}
    }
    let Some(target) = parse_path(&req.path) else {
        return ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({}); this fake API serves nodes, services, endpointslices, pods, namespaces and networkpolicies", req.path)).into();
    };
    if req.method != "GET" {
        return ApiError::new(
            405,
            "MethodNotAllowed",
            "the fake API server is read-only: change the manifest directory instead",
        )
        .into();
    }
    let q = |k: &str| req.query.get(k).map(String::as_str);
    let store = shared.store();
    if !store.loaded() {
        return ApiError::new(503, "ServiceUnavailable", "the manifest directory has not been read yet").into();
    }
    if let Some(name) = &target.name {
        let ns = target.namespace.as_deref().unwrap_or(if target.resource.namespaced() { "default" } else { "" });
        return match store.get(target.resource, ns, name) {
            Some(obj) => Answer::Json(200, (*obj).clone()),
            None => ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", target.resource.plural())).into(),
        };
    }
    let filter = match Filter::parse(target.namespace.as_deref(), q("labelSelector"), q("fieldSelector")) {
        Ok(f) => f,
        Err(e) => return e.into(),
    };
    if q("watch").is_some_and(|w| w == "true" || w == "1") {
        let rv = q("resourceVersion").filter(|v| !v.is_empty() && *v != "0");
        let from = match rv.map(str::parse::<u64>) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return ApiError::bad_request(format!("invalid resourceVersion {:?}", rv.unwrap_or_default())).into();
            }
        };
        let initial_events_end = q("sendInitialEvents") == Some("true");
        return Answer::Watch(WatchRequest {
            resource: target.resource,
            filter,
            from: if initial_events_end { None } else { from },
            initial_events_end,
            bookmarks: q("allowWatchBookmarks") == Some("true"),
            timeout: q("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_WATCH_TIMEOUT),
        });
    }
    let limit = q("limit").and_then(|l| l.parse().ok());
    let exact = q("resourceVersionMatch") == Some("Exact");
    match store.list(target.resource, &filter, q("resourceVersion"), exact, limit, q("continue")) {
        Ok(page) => Answer::List(target.resource, page.to_bytes(target.resource)),
        Err(e) => e.into(),
    }
}

fn event_line(event: &str, object: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"type": event, "object": object})).expect("JSON");
    line.push(b'\n');
    line
}

fn bookmark(resource: Resource, rv: u64, initial_events_end: bool) -> Vec<u8> {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": resource.kind(), "apiVersion": resource.api_version(), "metadata": metadata}),
    )
}

async fn write_chunk<W: AsyncWrite + Unpin>(wr: &mut W, data: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    wr.write_all(&out).await
}

/// `write_chunk`, counted as sent for `resource`.
async fn write_counted<W: AsyncWrite + Unpin>(
    wr: &mut W,
    shared: &Shared,
    resource: Resource,
    data: &[u8],
) -> std::io::Result<()> {
    shared.count(resource, data.len());
    write_chunk(wr, data).await
}

/// Streams one watch until its timeout; false if the client went away.
async fn stream_watch<R, W>(
    w: WatchRequest,
    shared: &Shared,
    rd: &mut R,
    wr: &mut W,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = Instant::now() + w.timeout;
    let mut changes = shared.changes.subscribe();
    changes.borrow_and_update();
    let mut last = match w.from {
        Some(rv) => rv,
        None => {
            // The current objects as ADDED, then the changes after them.
            let (objects, rv) = {
                let store = shared.store();
                (store.current(w.resource, &w.filter), store.resource_version())
            };
            for obj in objects {
                write_counted(wr, shared, w.resource, &event_line("ADDED", &obj)).await?;
            }
            if w.initial_events_end {
                write_counted(wr, shared, w.resource, &bookmark(w.resource, rv, true)).await?;
            }
            wr.flush().await?;
            rv
        }
    };
    let mut bookmark_due = Instant::now() + BOOKMARK_EVERY;
    loop {
        changes.borrow_and_update();
        let batch = shared.store().events_since(w.resource, last);
        match batch {
            Err(e) => {
                debug!(kind = w.resource.kind(), from = last, "watch too old: 410 Gone");
                write_counted(wr, shared, w.resource, &event_line("ERROR", &e.status())).await?;
                wr.flush().await?;
                return Ok(true);
            }
            Ok((events, rv)) => {
                let mut sent = false;
                for e in &events {
                    if let Some((t, obj)) = e.seen_through(&w.filter) {
                        write_counted(wr, shared, w.resource, &event_line(t.as_str(), obj)).await?;
                        sent = true;
                    }
                }
                if w.bookmarks && (sent || Instant::now() >= bookmark_due) {
                    if !sent {
                        write_counted(wr, shared, w.resource, &bookmark(w.resource, rv, false)).await?;
                    }
                    bookmark_due = Instant::now() + BOOKMARK_EVERY;
                }
                last = rv;
                wr.flush().await?;
            }
        }
        let mut scratch = [0u8; 1024];
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(bookmark_due), if w.bookmarks => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(true),
            read = rd.read(&mut scratch) => match read {
                // The client closed its end (or reset it): stop.
                Ok(0) | Err(_) => return Ok(false),
                // A pipelined request: kept for after the watch.
                Ok(n) => buf.extend_from_slice(&scratch[..n]),
            },
        }
    }
}
