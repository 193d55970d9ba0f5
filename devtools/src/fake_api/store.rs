//! The fake API server's state: the objects of a manifest directory with
//! resourceVersions, an event log for watches, selectors, and the directory
//! scanner. No I/O but the scanner's file reads; the HTTP side is in `mod.rs`.
use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::SystemTime,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tracing::{debug, warn};

use weir_agent::sources::manifest_files::ManifestFiles;

/// The kinds the agent watches, and where the API serves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Node,
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    NetworkPolicy,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::Node,
        Resource::Service,
        Resource::EndpointSlice,
        Resource::Pod,
        Resource::Namespace,
        Resource::NetworkPolicy,
    ];

    /// The position in `ALL`.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Node => "Node",
            Resource::Service => "Service",
            Resource::EndpointSlice => "EndpointSlice",
            Resource::Pod => "Pod",
            Resource::Namespace => "Namespace",
            Resource::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// `v1` or `group/version`, as in the objects' `apiVersion`.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlice => "discovery.k8s.io/v1",
            Resource::NetworkPolicy => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Node => "nodes",
            Resource::Service => "services",
            Resource::EndpointSlice => "endpointslices",
            Resource::Pod => "pods",
            Resource::Namespace => "namespaces",
            Resource::NetworkPolicy => "networkpolicies",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Node | Resource::Namespace)
    }

    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// By the URL's group/version (`v1` for the core group) and plural.
    pub fn from_path(group_version: &str, plural: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.api_version() == group_version && r.plural() == plural)
    }

    /// Whether the object reads as this kind (what a real API server's
    /// validation would have ensured): one that does not would make the
    /// client's whole list undecodable.
    fn validate(self, v: &Value) -> Result<(), String> {
        fn check<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
            T::deserialize(v).map(|_| ()).map_err(|e| e.to_string())
        }
        match self {
            Resource::Node => check::<Node>(v),
            Resource::Service => check::<Service>(v),
            Resource::EndpointSlice => check::<EndpointSlice>(v),
            Resource::Pod => check::<Pod>(v),
            Resource::Namespace => check::<Namespace>(v),
            Resource::NetworkPolicy => check::<NetworkPolicy>(v),
        }
    }
}

/// (resource, namespace ("" for cluster-scoped kinds), name).
pub type Key = (Resource, String, String);

/// An error the API answers with (a `Status` object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as the log keeps it for watches.
#[derive(Clone, Debug)]
pub struct Logged {
    pub rv: u64,
    pub resource: Resource,
    pub event: EventType,
    /// The object after the change (for a deletion: its last state, with the
    /// deletion's resourceVersion, as the API server sends it).
    pub object: Arc<Value>,
    /// The object before a modification (to tell a watch with a selector
    /// that the object entered or left it).
    pub previous: Option<Arc<Value>>,
}

impl Logged {
    /// What a watch with `filter` sees of this change: an object that starts
    /// matching arrives as ADDED, one that stops matching as DELETED, as the
    /// API server does it.
    pub fn seen_through(&self, filter: &Filter) -> Option<(EventType, &Arc<Value>)> {
        let now = filter.matches(&self.object);
        let before = self.previous.as_ref().is_some_and(|p| filter.matches(p));
        match (self.event, before, now) {
            (EventType::Added, _, true) => Some((EventType::Added, &self.object)),
            (EventType::Deleted, _, true) => Some((EventType::Deleted, &self.object)),
            (EventType::Modified, true, true) => Some((EventType::Modified, &self.object)),
            (EventType::Modified, false, true) => Some((EventType::Added, &self.object)),
            (EventType::Modified, true, false) => Some((EventType::Deleted, &self.object)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Stored {
    /// As read from the directory (defaults filled in): what changes are
    /// detected on.
    raw: Value,
    /// With metadata.resourceVersion: what is served.
    served: Arc<Value>,
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct ListPage {
    pub resource_version: u64,
    pub items: Vec<Arc<Value>>,
    pub continue_token: Option<String>,
}

impl ListPage {
    /// `to_json` serialized, without copying the items into one value
    /// first (a list of 150,000 Pods would be held twice).
    pub fn to_bytes(&self, resource: Resource) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.items.len() * 2048);
        out.extend_from_slice(b"{\"kind\":");
        serde_json::to_writer(&mut out, &format!("{}List", resource.kind())).expect("JSON");
        out.extend_from_slice(b",\"apiVersion\":");
        serde_json::to_writer(&mut out, resource.api_version()).expect("JSON");
        out.extend_from_slice(b",\"metadata\":");
        serde_json::to_writer(&mut out, &self.metadata()).expect("JSON");
        out.extend_from_slice(b",\"items\":[");
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &**item).expect("JSON");
        }
        out.extend_from_slice(b"]}");
        out
    }

    fn metadata(&self) -> Value {
        let mut metadata = json!({"resourceVersion": self.resource_version.to_string()});
        if let Some(token) = &self.continue_token {
            metadata["continue"] = json!(token);
        }
        metadata
    }

    pub fn to_json(&self, resource: Resource) -> Value {
        json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": self.metadata(),
            "items": self.items.iter().map(|i| (**i).clone()).collect::<Vec<_>>(),
        })
    }
}

/// How many changes the log keeps: a watch that resumes from further back
/// gets 410 Gone and relists (etcd's compaction, in small).
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

/// The objects, the global resourceVersion and the event log.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    log: VecDeque<Logged>,
    /// Watches can resume from this resourceVersion on: every change after
    /// it is in the log.
    oldest: u64,
    capacity: usize,
    loaded: bool,
}

/// A resourceVersion to start from that a restarted server has not used
/// yet (microseconds since the epoch): a client that resumes with a version
/// of the previous process is told 410 Gone and relists, instead of being
/// served from a number that means something else now.
pub fn start_resource_version() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

impl Store {
    pub fn new(start_rv: u64, capacity: usize) -> Self {
        Self {
            rv: start_rv,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            oldest: start_rv,
            capacity: capacity.max(1),
            loaded: false,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Whether the directory has been read once (before, lists answer 503).
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Makes `objects` the whole contents: each difference is one change
    /// with its own resourceVersion (deletions, then additions and
    /// modifications, in key order). Returns how many. The first call is
    /// the initial state: nothing to replay before it.
    pub fn replace_all(&mut self, objects: BTreeMap<Key, Value>) -> usize {
        let gone: Vec<Key> = self.objects.keys().filter(|k| !objects.contains_key(*k)).cloned().collect();
        let mut changes = 0;
        for key in gone {
            changes += usize::from(self.remove(&key));
        }
        for (key, raw) in objects {
            changes += usize::from(self.upsert(key, raw));
        }
        if !self.loaded {
            self.loaded = true;
            self.log.clear();
            self.oldest = self.rv;
        }
        changes
    }

    /// Adds or replaces one object (defaults already filled in); false if
    /// it is unchanged.
    pub fn upsert(&mut self, key: Key, raw: Value) -> bool {
        let previous = match self.objects.get(&key) {
            Some(old) if old.raw == raw => return false,
            Some(old) => Some(old.served.clone()),
            None => None,
        };
        self.rv += 1;
        let mut served = raw.clone();
        served["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let served = Arc::new(served);
        let event = if previous.is_some() { EventType::Modified } else { EventType::Added };
        self.push(Logged { rv: self.rv, resource: key.0, event, object: served.clone(), previous });
        self.objects.insert(key, Stored { raw, served });
        true
    }

    /// Deletes one object; false if there was none.
    pub fn remove(&mut self, key: &Key) -> bool {
        let Some(old) = self.objects.remove(key) else { return false };
        self.rv += 1;
        let mut object = (*old.served).clone();
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.push(Logged {
            rv: self.rv,
            resource: key.0,
            event: EventType::Deleted,
            object: Arc::new(object),
            previous: Some(old.served),
        });
        true
    }

    /// The object as stored (without its resourceVersion).
    pub fn raw(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key).map(|s| &s.raw)
    }

    /// Forgets the event log, as an etcd compaction that overtook every
    /// watch: each open watch gets 410 Gone at its next change, and its
    /// client relists. Lists and watches started afterwards are served.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.log.clear();
        self.oldest = self.rv;
    }

    fn push(&mut self, event: Logged) {
        self.log.push_back(event);
        while self.log.len() > self.capacity {
            let dropped = self.log.pop_front().expect("longer than capacity");
            self.oldest = dropped.rv;
        }
    }

    /// The objects of one resource that `filter` selects, in key order.
    pub fn current(&self, resource: Resource, filter: &Filter) -> Vec<Arc<Value>> {
        self.objects
            .range((resource, String::new(), String::new())..)
            .take_while(|(k, _)| k.0 == resource)
            .filter(|(_, s)| filter.matches(&s.served))
            .map(|(_, s)| s.served.clone())
            .collect()
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects.get(&(resource, namespace.to_string(), name.to_string())).map(|s| s.served.clone())
    }

    /// A list as the API server answers it. `resource_version`/`exact`
    /// are the request's `resourceVersion` and `resourceVersionMatch=Exact`;
    /// `limit` and `continue` page it (a continue token is only good while
    /// nothing changed: the server keeps no old snapshots, so it is 410
    /// Gone after a change, as an expired token is on a real one).
    pub fn list(
        &self,
        resource: Resource,
        filter: &Filter,
        resource_version: Option<&str>,
        exact: bool,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let mut after: Option<(String, String)> = None;
        if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
            let mut parts = token.splitn(3, '/');
            let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(ApiError::bad_request(format!("invalid continue token {token:?}")));
            };
            if rv.parse::<u64>().ok() != Some(self.rv) {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                ));
            }
            after = Some((ns.to_string(), name.to_string()));
        } else {
            match resource_version.filter(|v| !v.is_empty() && *v != "0") {
                None => {}
                Some(v) => {
                    let Ok(asked) = v.parse::<u64>() else {
                        return Err(ApiError::bad_request(format!("invalid resourceVersion {v:?}")));
                    };
                    if exact && asked != self.rv {
                        return Err(ApiError::gone(format!(
                            "too old resource version: {asked} ({}); this server keeps no snapshots",
                            self.rv
                        )));
                    }
                    if asked > self.rv {
                        return Err(ApiError::new(
                            504,
                            "Timeout",
                            format!("Too large resource version: {asked}, current: {}", self.rv),
                        ));
                    }
                }
            }
        }
        let mut items: Vec<Arc<Value>> = Vec::new();
        let mut continue_token = None;
        let limit = limit.filter(|l| *l > 0);
        for ((r, ns, name), stored) in self.objects.range((resource, String::new(), String::new())..) {
            if *r != resource {
                break;
            }
            if let Some((ans, aname)) = &after
                && (ns, name) <= (ans, aname)
            {
                continue;
            }
            if !filter.matches(&stored.served) {
                continue;
            }
            if limit.is_some_and(|l| items.len() == l) {
                // One more matches: there is a next page.
                let (lns, lname) = last_key(items.last().expect("limit > 0"));
                continue_token = Some(format!("{}/{lns}/{lname}", self.rv));
                break;
            }
            items.push(stored.served.clone());
        }
        Ok(ListPage { resource_version: self.rv, items, continue_token })
    }

    /// Changes of `resource` after `from`, and the resourceVersion they
    /// bring a watch to. 410 Gone when the log no longer reaches back to
    /// `from` (or `from` is from the future: another server's numbering).
    pub fn events_since(&self, resource: Resource, from: u64) -> Result<(Vec<Logged>, u64), ApiError> {
        if from < self.oldest {
            return Err(ApiError::gone(format!("too old resource version: {from} ({})", self.oldest)));
        }
        if from > self.rv {
            return Err(ApiError::gone(format!(
                "resource version {from} is newer than this server's ({}): it was restarted; relist",
                self.rv
            )));
        }
        // The log is in resourceVersion order: skip what the watch has seen.
        let start = self.log.partition_point(|e| e.rv <= from);
        let events = self.log.iter().skip(start).filter(|e| e.resource == resource).cloned().collect();
        Ok((events, self.rv))
    }
}

fn last_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (meta["namespace"].as_str().unwrap_or_default().to_string(), meta["name"].as_str().unwrap_or_default().to_string())
}

// ---------------------------------------------------------------- selectors

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    equal: bool,
}

/// What a list or watch asks for: a namespace (from the URL), a
/// `labelSelector` and a `fieldSelector`.
///
/// Label selectors are the full syntax (`k`, `!k`, `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`). Field selectors are `path=v`, `path==v`
/// and `path!=v` over any dotted path of the object (a missing field reads
/// as ""), where a real API server allows a few fields per kind (for Pods:
/// metadata.name, metadata.namespace, spec.nodeName, status.phase, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    pub fn parse(namespace: Option<&str>, labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        Ok(Self {
            namespace: namespace.map(str::to_string),
            labels: match labels {
                Some(s) => parse_label_selector(s).map_err(ApiError::bad_request)?,
                None => Vec::new(),
            },
            fields: match fields {
                Some(s) => parse_field_selector(s).map_err(ApiError::bad_request)?,
                None => Vec::new(),
            },
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str().map(str::to_string);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|v| vs.contains(&v)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|v| !vs.contains(&v)),
        });
        labels_ok
            && self.fields.iter().all(|req| {
                let mut v = object;
                for p in &req.path {
                    v = &v[p.as_str()];
                }
                let actual = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (actual == req.value) == req.equal
            })
    }
}

/// Splits on commas outside parentheses.
fn split_requirements(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|r| !r.is_empty()).collect()
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let bad = |r: &str| format!("unable to parse requirement {r:?} of labelSelector {s:?}");
    let set = |r: &str, rest: &str| -> Result<Vec<String>, String> {
        let inner = rest.trim().strip_prefix('(').and_then(|x| x.strip_suffix(')')).ok_or_else(|| bad(r))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
    };
    let key_ok = |k: &str| !k.is_empty() && !k.contains(char::is_whitespace);
    let mut out = Vec::new();
    for r in split_requirements(s) {
        let req = if let Some(k) = r.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = r.split_once("!=") {
            LabelReq::NotIn(k.trim().to_string(), vec![v.trim().to_string()])
        } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
            LabelReq::In(k.trim().to_string(), vec![v.trim().to_string()])
        } else if let Some((k, rest)) = r.split_once(" notin ") {
            LabelReq::NotIn(k.trim().to_string(), set(r, rest)?)
        } else if let Some((k, rest)) = r.split_once(" in ") {
            LabelReq::In(k.trim().to_string(), set(r, rest)?)
        } else {
            LabelReq::Exists(r.to_string())
        };
        let key = match &req {
            LabelReq::Exists(k) | LabelReq::NotExists(k) | LabelReq::In(k, _) | LabelReq::NotIn(k, _) => k,
        };
        if !key_ok(key) {
            return Err(bad(r));
        }
        out.push(req);
    }
    Ok(out)
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    for r in split_requirements(s) {
        let (path, value, equal) = if let Some((p, v)) = r.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
            (p, v, true)
        } else {
            return Err(format!("invalid field selector requirement {r:?}: use field=value or field!=value"));
        };
        let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("invalid field path in {r:?}"));
        }
        out.push(FieldReq { path, value: value.trim().to_string(), equal });
    }
    Ok(out)
}

// ----------------------------------------------------------------- manifests

/// Reads one manifest file (multi-document YAML or JSON, `kind: List` and
/// `<Kind>List` allowed) into the objects of the kinds served, with
/// `apiVersion`, `kind` and (for namespaced kinds) `metadata.namespace`
/// filled in. Other kinds are skipped, as is a served kind under another
/// apiVersion (another group's object of the same name). A document of a
/// served kind that does not read as that kind fails the whole file, as
/// in the `dir:` source.
pub fn parse_manifests(text: &str) -> Result<Vec<(Key, Value)>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        collect(value, i + 1, &mut out)?;
    }
    Ok(out)
}

fn collect(mut value: Value, doc: usize, out: &mut Vec<(Key, Value)>) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    if kind == "List" || kind.strip_suffix("List").is_some_and(|k| Resource::from_kind(k).is_some()) {
        if let Value::Array(items) = value["items"].take() {
            for item in items {
                collect(item, doc, out)?;
            }
        }
        return Ok(());
    }
    if kind.is_empty() {
        return Err(format!("document {doc}: no `kind`"));
    }
    let Some(resource) = Resource::from_kind(&kind) else {
        debug!(kind, "fake API: kind not served, skipped");
        return Ok(());
    };
    match value.get("apiVersion") {
        None | Some(Value::Null) => value["apiVersion"] = json!(resource.api_version()),
        Some(v) if v.as_str() == Some(resource.api_version()) => {}
        Some(v) => {
            debug!(kind, api_version = %v, "fake API: not the Kubernetes kind served, skipped");
            return Ok(());
        }
    }
    if !value["metadata"].is_object() {
        return Err(format!("document {doc}: {kind} without metadata"));
    }
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() {
        return Err(format!("document {doc}: {kind} without metadata.name"));
    }
    let namespace = if resource.namespaced() {
        let ns = value["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_string();
        value["metadata"]["namespace"] = json!(ns);
        ns
    } else {
        String::new()
    };
    // Stamped by the server.
    if let Some(meta) = value["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    resource.validate(&value).map_err(|e| format!("document {doc}: invalid {kind} {name}: {e}"))?;
    out.push(((resource, namespace, name), value));
    Ok(())
}

/// Re-reads the files of a manifest directory that changed, keeping each
/// file's last good contents when it stops parsing.
#[derive(Debug)]
pub struct Scanner {
    files: ManifestFiles<Vec<(Key, Value)>>,
    scanned: bool,
}

impl Scanner {
    pub fn new(dir: PathBuf) -> Self {
        Self { files: ManifestFiles::new(dir), scanned: false }
    }

    /// All objects when something changed since the last scan (or at the
    /// first), None otherwise. An object defined in two files: the last
    /// file by name wins.
    pub fn scan(&mut self) -> std::io::Result<Option<BTreeMap<Key, Value>>> {
        let changed = self.files.scan(parse_manifests)? || !self.scanned;
        self.scanned = true;
        if !changed {
            return Ok(None);
        }
        let mut all = BTreeMap::new();
        for (path, objects) in self.files.files() {
            for (key, value) in objects {
                if all.insert(key.clone(), value.clone()).is_some() {
                    warn!(file = %path.display(), kind = key.0.kind(), namespace = %key.1, name = %key.2,
                          "object defined again; this file's version wins");
                }
            }
        }
        Ok(Some(all))
    }
}
