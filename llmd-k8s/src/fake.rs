//! An in-process Kubernetes API server for tests: the real kube-rs client talks to it over
//! HTTP on loopback, so watchers, reflectors and leader election run their real code paths
//! (list then watch from the list's resourceVersion, bookmarks, 410 Expired and relist,
//! optimistic concurrency on replace) without a cluster.
//!
//! The test "is" the cluster: it writes objects with [`FakeApiServer::apply`] and
//! [`FakeApiServer::delete`], and provokes the failures a client must survive with
//! [`FakeApiServer::compact`], [`FakeApiServer::drop_watches`] and
//! [`FakeApiServer::set_available`]. Point a client at it with
//! [`FakeApiServer::kubeconfig_yaml`] (`kube::config::Kubeconfig::from_yaml`, then
//! `kube::Config::from_custom_kubeconfig`).
//!
//! ```
//! # async fn demo() -> std::io::Result<()> {
//! use llmd_k8s::fake::FakeApiServer;
//! let server = FakeApiServer::start().await?;
//! let pod = server.apply(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Pod",
//!     "metadata": {"name": "vllm-0", "namespace": "llm", "labels": {"app": "vllm"}},
//! }));
//! assert!(pod["metadata"]["resourceVersion"].is_string());
//! # Ok(()) }
//! ```
//!
//! Simplifications: lists return every match in one page (`limit` is ignored, no
//! `continue`); a list ignores its `resourceVersion` and serves the current state;
//! deletes are immediate (no finalizers or grace period); a PUT on the main resource
//! writes `status` too; field selectors accept any dotted path into the object; JSON
//! patch is not supported (415), strategic merge and server-side apply are applied as
//! JSON merge patches.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};

/// resourceVersions start above this, so "0" (which means "any" to the API) never names a
/// real version and a stale small number is visibly too old.
const FIRST_RV: u64 = 1000;

/// A handle on a running fake API server. Clones share the server; dropping the last
/// handle (or calling [`FakeApiServer::shutdown`]) ends every open watch and stops it.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Handle {
    fn stop(&self) {
        self.shared.shutdown();
        if let Some(tx) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("addr", &self.inner.addr).finish_non_exhaustive()
    }
}

struct Shared {
    store: Mutex<Store>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shutdown(&self) {
        let mut st = self.lock();
        st.stopped = true;
        st.watches.clear();
        st.count_changed();
    }
}

#[derive(Clone, Debug)]
struct ResourceType {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
}

impl ResourceType {
    fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        let s = |x: &str| x.to_owned();
        ResourceType { group: s(group), version: s(version), kind: s(kind), plural: s(plural), namespaced }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The name errors use: `pods`, `leases.coordination.k8s.io`.
    fn resource(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// One write, kept for replay to watches that resume from an older resourceVersion.
struct Change {
    rv: u64,
    ty: usize,
    prev: Option<Value>,
    cur: Option<Value>,
}

struct Watch {
    filter: Filter,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// Key: (type index, namespace or "" when cluster-scoped, name). Ordered like etcd keys.
type Key = (usize, String, String);

struct Store {
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    /// Watches from a resourceVersion below this get 410: history before it is forgotten.
    oldest: u64,
    history: Vec<Change>,
    watches: HashMap<u64, Watch>,
    next_watch: u64,
    count: watch::Sender<usize>,
    available: bool,
    stopped: bool,
    requests: Vec<String>,
}

impl FakeApiServer {
    /// Starts a server on `127.0.0.1` with an ephemeral port, serving the built-in types:
    /// core v1 Pod and ConfigMap, `coordination.k8s.io/v1` Lease,
    /// `inference.networking.k8s.io/v1` InferencePool,
    /// `inference.networking.x-k8s.io/v1alpha2` InferencePool and InferenceObjective,
    /// `llm-d.ai/v1alpha2` InferenceObjective, `llmd.ai/v1alpha1` VariantAutoscaling, and
    /// `apps/v1` Deployment with its `scale` subresource (`spec.replicas`; the test sets
    /// `status`).
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let builtin = [
            ("", "v1", "Pod", "pods", true),
            ("", "v1", "ConfigMap", "configmaps", true),
            ("coordination.k8s.io", "v1", "Lease", "leases", true),
            ("inference.networking.k8s.io", "v1", "InferencePool", "inferencepools", true),
            ("inference.networking.x-k8s.io", "v1alpha2", "InferencePool", "inferencepools", true),
            ("inference.networking.x-k8s.io", "v1alpha2", "InferenceObjective", "inferenceobjectives", true),
            ("llm-d.ai", "v1alpha2", "InferenceObjective", "inferenceobjectives", true),
            ("llmd.ai", "v1alpha1", "VariantAutoscaling", "variantautoscalings", true),
            ("apps", "v1", "Deployment", "deployments", true),
        ];
        let types = builtin.iter().map(|&(g, v, k, p, n)| ResourceType::new(g, v, k, p, n)).collect();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                types,
                objects: BTreeMap::new(),
                rv: FIRST_RV,
                oldest: FIRST_RV,
                history: Vec::new(),
                watches: HashMap::new(),
                next_watch: 0,
                count: watch::Sender::new(0),
                available: true,
                stopped: false,
                requests: Vec::new(),
            }),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fake API server stopped with an error");
            }
        });
        Ok(FakeApiServer { inner: Arc::new(Handle { shared, addr, stop: Mutex::new(Some(stop)) }) })
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner.shared.lock()
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig whose current context points at this server with `namespace` as the
    /// default namespace and a bearer token the server ignores.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n    \
             insecure-skip-tls-verify: true\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             namespace: {namespace}\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    \
             token: fake-token\n",
            url = self.url(),
        )
    }

    /// Serves another resource type (a CRD), or redefines one with the same group,
    /// version and plural.
    pub fn register(&self, group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) {
        let t = ResourceType::new(group, version, kind, plural, namespaced);
        let mut st = self.lock();
        match st.types.iter().position(|x| x.group == group && x.version == version && x.plural == plural) {
            Some(i) => st.types[i] = t,
            None => st.types.push(t),
        }
    }

    /// Creates or replaces an object by apiVersion, kind, namespace and name, whatever its
    /// `resourceVersion`: fills `metadata.resourceVersion`, `uid` and `creationTimestamp`
    /// (keeping those of the object it replaces) and `namespace` (default `"default"`),
    /// tells the watches (ADDED or MODIFIED), and returns the stored object. A kind not
    /// registered is served from here on as namespaced, plural its lower-cased kind + "s".
    ///
    /// # Panics
    /// If `obj` is not an object with `apiVersion`, `kind` and `metadata.name`: a bug in
    /// the test.
    pub fn apply(&self, obj: Value) -> Value {
        let (Some(api_version), Some(kind), Some(name)) = (
            obj.get("apiVersion").and_then(Value::as_str),
            obj.get("kind").and_then(Value::as_str),
            meta_str(&obj, "name"),
        ) else {
            panic!("FakeApiServer::apply needs apiVersion, kind and metadata.name: {obj}");
        };
        let name = name.to_owned();
        let mut st = self.lock();
        let ty = st.type_of(api_version, kind, true).unwrap_or_default();
        let ns = if st.types[ty].namespaced {
            meta_str(&obj, "namespace").unwrap_or("default").to_owned()
        } else {
            String::new()
        };
        st.write((ty, ns, name), obj)
    }

    /// Deletes an object, telling the watches (DELETED, with a new resourceVersion);
    /// returns it as last stored, or `None` if there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut st = self.lock();
        let key = st.key_of(api_version, kind, namespace, name)?;
        st.remove(&key)
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut st = self.lock();
        let key = st.key_of(api_version, kind, namespace, name)?;
        st.objects.get(&key).cloned()
    }

    /// Forgets the event history, as etcd compaction does: a watch that starts or resumes
    /// from a resourceVersion older than the current one gets `410 Expired`.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.oldest = st.rv;
    }

    /// Ends every open watch response now (the body ends cleanly), as an API server
    /// restart or a load balancer's idle cut does; clients resume from their last
    /// resourceVersion.
    pub fn drop_watches(&self) {
        let mut st = self.lock();
        st.watches.clear();
        st.count_changed();
    }

    /// Sends a BOOKMARK with the current resourceVersion to every open watch that asked
    /// for bookmarks (`allowWatchBookmarks`).
    pub fn bookmark(&self) {
        let st = self.lock();
        let rv = st.rv.to_string();
        for w in st.watches.values().filter(|w| w.bookmarks) {
            let t = &st.types[w.filter.ty];
            let obj = json!({"apiVersion": t.api_version(), "kind": t.kind, "metadata": {"resourceVersion": rv}});
            let _ = w.tx.send(event_line("BOOKMARK", &obj));
        }
    }

    /// Takes the server down (`false`: every request gets 503 with a Status body, open
    /// watches stay open) or brings it back (`true`).
    pub fn set_available(&self, up: bool) {
        self.lock().available = up;
    }

    /// Every request seen so far, as `"METHOD path?query"` (just the path without a query).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// How many watches are streaming now.
    pub fn open_watches(&self) -> usize {
        self.lock().watches.len()
    }

    /// Waits until at least `n` watches are streaming, for tests that must know a client's
    /// watch is open before they provoke something on it.
    pub async fn wait_for_watches(&self, n: usize) {
        let mut rx = self.lock().count.subscribe();
        let _ = rx.wait_for(|&c| c >= n).await;
    }

    /// Stops the server now for every handle: open watches end, later requests fail.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

impl Store {
    fn count_changed(&self) {
        self.count.send_replace(self.watches.len());
    }

    fn type_of(&mut self, api_version: &str, kind: &str, create: bool) -> Option<usize> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if let Some(i) = self.types.iter().position(|t| t.group == group && t.version == version && t.kind == kind) {
            return Some(i);
        }
        create.then(|| {
            self.types.push(ResourceType::new(group, version, kind, &format!("{}s", kind.to_lowercase()), true));
            self.types.len() - 1
        })
    }

    fn key_of(&mut self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Key> {
        let ty = self.type_of(api_version, kind, false)?;
        let ns = if self.types[ty].namespaced { namespace } else { "" };
        Some((ty, ns.to_owned(), name.to_owned()))
    }

    /// Stores `obj` under `key` with a new resourceVersion and tells the watches.
    fn write(&mut self, key: Key, mut obj: Value) -> Value {
        let t = &self.types[key.0];
        let (api_version, kind, namespaced) = (t.api_version(), t.kind.clone(), t.namespaced);
        let prev = self.objects.get(&key).cloned();
        self.rv += 1;
        let rv = self.rv;
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), api_version.into());
            o.insert("kind".into(), kind.into());
        }
        let m = meta_mut(&mut obj);
        m.insert("name".into(), key.2.clone().into());
        if namespaced {
            m.insert("namespace".into(), key.1.clone().into());
        } else {
            m.remove("namespace");
        }
        // An object keeps its identity across replaces; a new one gets a fresh one unless
        // the test chose it.
        let old = prev.as_ref().and_then(|p| p.get("metadata"));
        for (field, fresh) in [("uid", format!("fa4e0000-0000-4000-8000-{rv:012x}")), ("creationTimestamp", now())] {
            match old.and_then(|o| o.get(field)) {
                Some(v) => {
                    m.insert(field.into(), v.clone());
                }
                None => {
                    m.entry(field).or_insert(fresh.into());
                }
            }
        }
        m.insert("resourceVersion".into(), rv.to_string().into());
        self.objects.insert(key.clone(), obj.clone());
        self.publish(Change { rv, ty: key.0, prev, cur: Some(obj.clone()) });
        obj
    }

    /// Removes the object under `key`; returns it with the deletion's resourceVersion.
    fn remove(&mut self, key: &Key) -> Option<Value> {
        let prev = self.objects.remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        self.publish(Change { rv, ty: key.0, prev: Some(prev.clone()), cur: None });
        Some(with_rv(prev, rv))
    }

    fn publish(&mut self, change: Change) {
        let mut gone = Vec::new();
        for (id, w) in &self.watches {
            if let Some(line) = event_for(&w.filter, &change)
                && w.tx.send(line).is_err()
            {
                gone.push(*id);
            }
        }
        for id in &gone {
            self.watches.remove(id);
        }
        if !gone.is_empty() {
            self.count_changed();
        }
        self.history.push(change);
    }

    fn filter(&self, ty: usize, ns: Option<&str>, q: &HashMap<String, String>) -> Result<Filter, Value> {
        let bad = |m: String| status(400, "BadRequest", m, None);
        Ok(Filter {
            ty,
            ns: ns.map(str::to_owned),
            labels: parse_labels(q.get("labelSelector").map_or("", String::as_str)).map_err(bad)?,
            fields: parse_fields(q.get("fieldSelector").map_or("", String::as_str)).map_err(bad)?,
        })
    }

    /// Dispatches one API request; the caller holds the lock, so every check-then-write
    /// (the replace precondition above all) is atomic.
    fn serve(&mut self, shared: &Arc<Shared>, req: &Req<'_>) -> Result<Response, Value> {
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, rest) = match segs.as_slice() {
            ["version"] => return Ok(ok(200, &version_info())),
            ["api"] => return Ok(ok(200, &json!({"kind": "APIVersions", "versions": ["v1"]}))),
            ["apis"] => return Ok(ok(200, &self.groups())),
            ["api", v] => return Ok(ok(200, &self.resources("", v))),
            ["apis", g, v] => return Ok(ok(200, &self.resources(g, v))),
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return Err(not_found_path()),
        };
        let (ns, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
            _ => (None, rest),
        };
        let (plural, name, sub) = match rest {
            [p] => (*p, None, None),
            [p, n] => (*p, Some(*n), None),
            [p, n, s] => (*p, Some(*n), Some(*s)),
            _ => return Err(not_found_path()),
        };
        let Some(ty) = self.types.iter().position(|t| t.group == group && t.version == version && t.plural == plural)
        else {
            return Err(not_found_path());
        };
        let namespaced = self.types[ty].namespaced;
        let scalable = self.types[ty].kind == "Deployment";
        if (ns.is_some() && !namespaced)
            || (name.is_some() && namespaced && ns.is_none())
            || sub.is_some_and(|s| s != "status" && !(s == "scale" && scalable))
        {
            return Err(not_found_path());
        }
        let Some(name) = name else {
            return match *req.method {
                Method::GET if matches!(req.query.get("watch").map(String::as_str), Some("true" | "1")) => {
                    let f = self.filter(ty, ns, &req.query)?;
                    self.watch(shared, f, &req.query)
                }
                Method::GET => Ok(self.list(&self.filter(ty, ns, &req.query)?)),
                Method::POST => Ok(reply(self.create(ty, ns.unwrap_or_default(), req.body))),
                _ => Err(method_not_allowed()),
            };
        };
        let key = (ty, ns.unwrap_or_default().to_owned(), name.to_owned());
        if sub == Some("scale") {
            return Ok(reply(self.scale(&key, req)));
        }
        let on_status = sub.is_some();
        let res = match *req.method {
            Method::GET => self.objects.get(&key).cloned().map(|o| (200, o)).ok_or_else(|| self.not_found(&key)),
            Method::PUT => self.replace(&key, on_status, req.body),
            Method::PATCH => self.patch(&key, on_status, req.content_type, req.body),
            Method::DELETE => self.delete_req(&key, req.body),
            _ => Err(method_not_allowed()),
        };
        Ok(reply(res))
    }

    fn matching<'a>(&'a self, f: &'a Filter) -> impl Iterator<Item = &'a Value> {
        self.objects.iter().filter(move |((ty, _, _), o)| *ty == f.ty && f.matches(o)).map(|(_, o)| o)
    }

    fn list(&self, f: &Filter) -> Response {
        let t = &self.types[f.ty];
        let items: Vec<&Value> = self.matching(f).collect();
        ok(
            200,
            &json!({
                "apiVersion": t.api_version(), "kind": format!("{}List", t.kind),
                "metadata": {"resourceVersion": self.rv.to_string()}, "items": items,
            }),
        )
    }

    fn watch(&mut self, shared: &Arc<Shared>, filter: Filter, q: &HashMap<String, String>) -> Result<Response, Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        let from = q.get("resourceVersion").map(String::as_str).filter(|v| !v.is_empty() && *v != "0");
        match from.map(str::parse::<u64>) {
            // No version (or "0", "any"): the current state as ADDED events, then changes.
            None => {
                for o in self.matching(&filter) {
                    let _ = tx.send(event_line("ADDED", o));
                }
            }
            Some(Err(e)) => return Err(status(400, "BadRequest", format!("invalid resource version: {e}"), None)),
            // History before `oldest` is gone: as the real server does, a 200 whose only event
            // is a 410 Expired error, then the end of the stream.
            Some(Ok(v)) if v < self.oldest => {
                let err = status(410, "Expired", format!("too old resource version: {v} ({})", self.oldest), None);
                let _ = tx.send(event_line("ERROR", &err));
                return Ok(stream_response(rx, None, None));
            }
            Some(Ok(v)) => {
                for line in self.history.iter().filter(|c| c.rv > v).filter_map(|c| event_for(&filter, c)) {
                    let _ = tx.send(line);
                }
            }
        }
        let bookmarks = matches!(q.get("allowWatchBookmarks").map(String::as_str), Some("true" | "1"));
        let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
        let id = self.next_watch;
        self.next_watch += 1;
        self.watches.insert(id, Watch { filter, bookmarks, tx });
        self.count_changed();
        Ok(stream_response(rx, timeout, Some(WatchGuard { shared: shared.clone(), id })))
    }

    fn create(&mut self, ty: usize, ns: &str, body: &[u8]) -> Reply {
        let t = self.types[ty].clone();
        let mut obj = parse_object(body)?;
        let body_ns = meta_str(&obj, "namespace").unwrap_or_default();
        if t.namespaced && !ns.is_empty() && !body_ns.is_empty() && body_ns != ns {
            let m = "the namespace of the provided object does not match the namespace sent on the request";
            return Err(status(400, "BadRequest", m.into(), None));
        }
        if meta_str(&obj, "resourceVersion").is_some_and(|v| !v.is_empty()) {
            return Err(status(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created".into(),
                None,
            ));
        }
        let ns = if !t.namespaced {
            String::new()
        } else if !ns.is_empty() {
            ns.to_owned()
        } else if !body_ns.is_empty() {
            body_ns.to_owned()
        } else {
            "default".to_owned()
        };
        let name = match (meta_str(&obj, "name").filter(|n| !n.is_empty()), meta_str(&obj, "generateName")) {
            (Some(n), _) => n.to_owned(),
            (None, Some(prefix)) => format!("{prefix}{:05x}", self.rv + 1),
            (None, None) => {
                return Err(status(
                    422,
                    "Invalid",
                    format!("{}: name or generateName is required", t.resource()),
                    None,
                ));
            }
        };
        meta_mut(&mut obj).insert("name".into(), name.clone().into());
        let key = (ty, ns, name);
        if self.objects.contains_key(&key) {
            let m = format!("{} {:?} already exists", t.resource(), key.2);
            return Err(status(409, "AlreadyExists", m, Some(details(&t, &key.2))));
        }
        Ok((201, self.write(key, obj)))
    }

    fn replace(&mut self, key: &Key, on_status: bool, body: &[u8]) -> Reply {
        let obj = parse_object(body)?;
        let stored = self.objects.get(key).ok_or_else(|| self.not_found(key))?;
        if let Some(n) = meta_str(&obj, "name").filter(|n| *n != key.2) {
            let m = format!("the name of the object ({n}) does not match the name on the URL ({})", key.2);
            return Err(status(400, "BadRequest", m, None));
        }
        self.precondition(key, &obj)?;
        let obj = if on_status { with_status_of(stored.clone(), &obj) } else { obj };
        Ok((200, self.write(key.clone(), obj)))
    }

    fn patch(&mut self, key: &Key, on_status: bool, content_type: &str, body: &[u8]) -> Reply {
        let apply = match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
            "application/apply-patch+yaml" => true,
            other => {
                let m = format!(
                    "the body of the request was in an unknown format ({other:?}) - accepted media types \
                                 include: application/merge-patch+json, application/apply-patch+yaml"
                );
                return Err(status(415, "UnsupportedMediaType", m, None));
            }
        };
        let patch = parse_object(body)?;
        let (code, stored) = match self.objects.get(key) {
            Some(o) => (200, o.clone()),
            // Server-side apply creates what is missing.
            None if apply && !on_status => (201, json!({"metadata": {"name": key.2, "namespace": key.1}})),
            None => return Err(self.not_found(key)),
        };
        self.precondition(key, &patch)?;
        let mut merged = stored.clone();
        merge_patch(&mut merged, &patch);
        let obj = if on_status { with_status_of(stored, &merged) } else { merged };
        Ok((code, self.write(key.clone(), obj)))
    }

    /// A Deployment's `scale` subresource (`autoscaling/v1` Scale): reads `spec.replicas`,
    /// `status.replicas` and the selector; a PUT or PATCH sets `spec.replicas`.
    fn scale(&mut self, key: &Key, req: &Req<'_>) -> Reply {
        let stored = self.objects.get(key).cloned().ok_or_else(|| self.not_found(key))?;
        let obj = match *req.method {
            Method::GET => stored,
            Method::PUT | Method::PATCH => {
                let body = parse_object(req.body)?;
                let Some(n) = body.pointer("/spec/replicas").and_then(Value::as_i64) else {
                    let m = "the Scale has no spec.replicas".to_string();
                    return Err(status(422, "Invalid", m, None));
                };
                let mut updated = stored;
                merge_patch(&mut updated, &json!({"spec": {"replicas": n}}));
                self.write(key.clone(), updated)
            }
            _ => return Err(method_not_allowed()),
        };
        let selector = obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
            })
            .unwrap_or_default();
        let meta = &obj["metadata"];
        let scale = json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "resourceVersion": meta["resourceVersion"], "uid": meta["uid"]},
            "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
            "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
        });
        Ok((200, scale))
    }

    fn delete_req(&mut self, key: &Key, body: &[u8]) -> Reply {
        let stored = self.objects.get(key).ok_or_else(|| self.not_found(key))?;
        let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        for field in ["uid", "resourceVersion"] {
            let want = opts.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str);
            let have = meta_str(stored, field).unwrap_or_default();
            if let Some(want) = want.filter(|w| *w != have) {
                let m = format!("Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}");
                return Err(status(409, "Conflict", m, Some(details(&self.types[key.0], &key.2))));
            }
        }
        self.remove(key).map(|o| (200, o)).ok_or_else(|| self.not_found(key))
    }

    /// The optimistic-concurrency check: a write that names a resourceVersion must name
    /// the stored one.
    fn precondition(&self, key: &Key, obj: &Value) -> Result<(), Value> {
        let have = self.objects.get(key).and_then(|o| meta_str(o, "resourceVersion"));
        match meta_str(obj, "resourceVersion").filter(|v| !v.is_empty()) {
            Some(want) if have.is_some_and(|h| h != want) => {
                let t = &self.types[key.0];
                let m = format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your \
                     changes to the latest version and try again",
                    t.resource(),
                    key.2
                );
                Err(status(409, "Conflict", m, Some(details(t, &key.2))))
            }
            _ => Ok(()),
        }
    }

    fn not_found(&self, key: &Key) -> Value {
        let t = &self.types[key.0];
        status(404, "NotFound", format!("{} {:?} not found", t.resource(), key.2), Some(details(t, &key.2)))
    }

    fn groups(&self) -> Value {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            let vs = groups.entry(&t.group).or_default();
            if !vs.contains(&t.version.as_str()) {
                vs.push(&t.version);
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> =
                    vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
                json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    fn resources(&self, group: &str, version: &str) -> Value {
        let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
        let resources: Vec<Value> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(|t| {
                let entry = |name: String, verbs: &[&str]| {
                    json!({"name": name, "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs})
                };
                [entry(t.plural.clone(), &verbs), entry(format!("{}/status", t.plural), &["get", "patch", "update"])]
            })
            .collect();
        let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    }
}

/// What a watch or list selects.
struct Filter {
    ty: usize,
    ns: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<(Vec<String>, String, bool)>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        if self.ns.as_deref().is_some_and(|ns| meta_str(obj, "namespace").unwrap_or_default() != ns) {
            return false;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|(path, want, negate)| {
                let mut v = obj;
                for p in path {
                    v = v.get(p).unwrap_or(&Value::Null);
                }
                let have = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (have == *want) != *negate
            })
    }
}

/// The event a watch with `f` sees for `c`, as the watch cache decides it: an object
/// that stops matching is DELETED (its previous state at the new version), one that
/// starts matching is ADDED.
fn event_for(f: &Filter, c: &Change) -> Option<Bytes> {
    if c.ty != f.ty {
        return None;
    }
    let was = c.prev.as_ref().filter(|o| f.matches(o));
    let is = c.cur.as_ref().filter(|o| f.matches(o));
    match (was, is) {
        (None, None) => None,
        (None, Some(o)) => Some(event_line("ADDED", o)),
        (Some(_), Some(o)) => Some(event_line("MODIFIED", o)),
        (Some(o), None) => Some(event_line("DELETED", &with_rv(o.clone(), c.rv))),
    }
}

enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl LabelReq {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            LabelReq::Eq(k, v) => get(k) == Some(v),
            LabelReq::Ne(k, v) => get(k) != Some(v),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::Absent(k) => get(k).is_none(),
        }
    }
}

fn label_key(k: &str) -> Result<String, String> {
    let k = k.trim();
    let valid = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid { Ok(k.to_owned()) } else { Err(format!("unable to parse requirement: invalid label key {k:?}")) }
}

fn label_value(v: &str) -> Result<String, String> {
    let v = v.trim();
    let valid = v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid { Ok(v.to_owned()) } else { Err(format!("unable to parse requirement: invalid label value {v:?}")) }
}

/// Parses a label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
/// `k notin (a,b)`, joined by commas (AND).
fn parse_labels(s: &str) -> Result<Vec<LabelReq>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    // Split on the commas outside parentheses.
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
        .into_iter()
        .map(|term| {
            let term = term.trim();
            if let Some(k) = term.strip_prefix('!') {
                return Ok(LabelReq::Absent(label_key(k)?));
            }
            if let Some(open) = term.find('(') {
                let inner = term[open + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| format!("unable to parse requirement: {term:?}"))?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let values = inner.split(',').map(label_value).collect::<Result<Vec<_>, _>>()?;
                return match head.as_slice() {
                    [k, "in"] => Ok(LabelReq::In(label_key(k)?, values)),
                    [k, "notin"] => Ok(LabelReq::NotIn(label_key(k)?, values)),
                    _ => Err(format!("unable to parse requirement: {term:?}")),
                };
            }
            if let Some((k, v)) = term.split_once("!=") {
                return Ok(LabelReq::Ne(label_key(k)?, label_value(v)?));
            }
            if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                return Ok(LabelReq::Eq(label_key(k)?, label_value(v)?));
            }
            Ok(LabelReq::Exists(label_key(term)?))
        })
        .collect()
}

/// Parses a field selector: `path=v`, `path==v`, `path!=v` joined by commas, where path
/// is dotted (`metadata.name`, `status.phase`).
fn parse_fields(s: &str) -> Result<Vec<(Vec<String>, String, bool)>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|term| {
            let (k, v, negate) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, v, false)
            } else {
                return Err(format!("invalid selector: {term:?}; can't understand it"));
            };
            let k = k.trim();
            if k.is_empty() || k.split('.').any(str::is_empty) {
                return Err(format!("invalid field selector key {k:?}"));
            }
            Ok((k.split('.').map(str::to_owned).collect(), v.trim().to_owned(), negate))
        })
        .collect()
}

/// One request as the store sees it.
struct Req<'a> {
    method: &'a Method,
    path: &'a str,
    query: HashMap<String, String>,
    content_type: &'a str,
    body: &'a [u8],
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or_default();
    {
        let mut st = shared.lock();
        let line = if query.is_empty() {
            format!("{} {path}", parts.method)
        } else {
            format!("{} {path}?{query}", parts.method)
        };
        st.requests.push(line);
        if st.stopped || !st.available {
            let m = "the server is currently unable to handle the request";
            return reply(Err(status(503, "ServiceUnavailable", m.into(), None)));
        }
    }
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return reply(Err(status(400, "BadRequest", format!("reading the body: {e}"), None))),
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let req = Req { method: &parts.method, path, query: parse_query(query), content_type, body: &body };
    let mut st = shared.lock();
    st.serve(&shared, &req).unwrap_or_else(|s| reply(Err(s)))
}

/// Removes its watch from the registry when the response body is dropped (the client went
/// away or the stream ended), so `open_watches` counts only live ones.
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.watches.remove(&self.id).is_some() {
            st.count_changed();
        }
    }
}

/// A chunked response that streams the lines sent on `rx` until its sender is dropped
/// or `timeout` passes.
fn stream_response(
    rx: mpsc::UnboundedReceiver<Bytes>,
    timeout: Option<Duration>,
    guard: Option<WatchGuard>,
) -> Response {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let lines = futures_util::stream::unfold((rx, guard), move |(mut rx, guard)| async move {
        let next = match deadline {
            Some(d) => tokio::select! {
                line = rx.recv() => line,
                _ = tokio::time::sleep_until(d) => None,
            },
            None => rx.recv().await,
        };
        next.map(|line| (Ok::<_, Infallible>(line), (rx, guard)))
    });
    let mut res = Body::from_stream(lines).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    res
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn ok(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if let (Some(d), Some(o)) = (details, s.as_object_mut()) {
        o.insert("details".into(), d);
    }
    s
}

/// A write's outcome: the HTTP code and object, or a Status body (whose `code` is the HTTP
/// code).
type Reply = Result<(u16, Value), Value>;

fn reply(r: Reply) -> Response {
    match r {
        Ok((code, obj)) => ok(code, &obj),
        Err(s) => ok(s["code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(500), &s),
    }
}

fn details(t: &ResourceType, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": t.plural});
    if let (false, Some(o)) = (t.group.is_empty(), d.as_object_mut()) {
        o.insert("group".into(), t.group.clone().into());
    }
    d
}

fn not_found_path() -> Value {
    status(404, "NotFound", "the server could not find the requested resource".into(), None)
}

fn method_not_allowed() -> Value {
    status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource".into(), None)
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-llmd-fake", "gitCommit": "0000000",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

fn parse_object(body: &[u8]) -> Result<Value, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(status(400, "BadRequest", "the body must be a JSON object".into(), None)),
        Err(e) => Err(status(400, "BadRequest", format!("decoding the body: {e}"), None)),
    }
}

/// Decodes `a=b&c=d` (form encoding: `+` is a space, `%XX` a byte).
fn parse_query(q: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `obj.metadata` as a map, made an object first if it is not one.
fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let Value::Object(o) = obj else { unreachable!("made an object above") };
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    let Value::Object(m) = m else { unreachable!("made an object above") };
    m
}

fn with_rv(mut obj: Value, rv: u64) -> Value {
    meta_mut(&mut obj).insert("resourceVersion".into(), rv.to_string().into());
    obj
}

/// `stored` with its status taken from `from`: a write to the `/status` subresource.
fn with_status_of(mut stored: Value, from: &Value) -> Value {
    if let Value::Object(o) = &mut stored {
        match from.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    stored
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
