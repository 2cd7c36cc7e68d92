//! Watches an InferencePool, the Pods its selector matches and the InferenceObjectives
//! that name it, and keeps the scheduler's datastore and objectives in step, as llm-d's
//! EPP reconcilers do.
//!
//! kube-rs's [`watcher()`] lists, then watches from the list's `resourceVersion`, takes
//! bookmarks, and relists when the API server answers 410 Gone or the connection
//! drops; a relist replaces the known pods whole ([`PoolDiscovery::replace_pods`]), so a
//! pod deleted while the watch was down goes too. Every event is applied to the
//! datastore before the next is read: once a pod's deletion, unreadiness or
//! deselection is seen, no later pick sees its endpoints.
//!
//! The pool is watched by name (a field selector, as the EPP limits its informer).
//! When its selector or ports change, the pods are watched again under the new
//! selector, without a restart. A pool that fails to decode is reported and the last
//! good one kept.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use llmd_scheduler::objectives::Objectives;
use llmd_scheduler::{DatastoreWriter, Discovery};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{K8sError, Result};
use crate::pool::PoolDiscovery;
use crate::resources::PoolView;

/// `--pool-group`'s default, InferencePool v1's group.
pub const POOL_GROUP_V1: &str = "inference.networking.k8s.io";
/// The legacy v1alpha2 pool's group.
pub const POOL_GROUP_V1ALPHA2: &str = "inference.networking.x-k8s.io";

/// Which InferencePool API the pool is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolApi {
    /// `inference.networking.k8s.io/v1`.
    V1,
    /// `inference.networking.x-k8s.io/v1alpha2`.
    V1Alpha2,
}

impl PoolApi {
    /// From `--pool-group`.
    pub fn from_group(group: &str) -> Result<Self> {
        match group {
            POOL_GROUP_V1 => Ok(PoolApi::V1),
            POOL_GROUP_V1ALPHA2 => Ok(PoolApi::V1Alpha2),
            other => Err(K8sError::Invalid {
                kind: "InferencePool",
                name: "--pool-group".into(),
                reason: format!("unknown group {other:?} (expected {POOL_GROUP_V1} or {POOL_GROUP_V1ALPHA2})"),
            }),
        }
    }

    fn resource(self) -> ApiResource {
        let (group, version) = match self {
            PoolApi::V1 => (POOL_GROUP_V1, "v1"),
            PoolApi::V1Alpha2 => (POOL_GROUP_V1ALPHA2, "v1alpha2"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, "InferencePool"), "inferencepools")
    }

    fn view(self, obj: DynamicObject) -> Result<PoolView> {
        let value =
            serde_json::to_value(&obj).map_err(|source| K8sError::Decode { what: "InferencePool".into(), source })?;
        PoolView::from_object(&value, self == PoolApi::V1Alpha2)
    }
}

/// The pool to follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    /// Its namespace (`--pool-namespace`; empty means `default`).
    pub namespace: String,
    /// Its name (`--pool-name`).
    pub name: String,
    /// Its API (`--pool-group`).
    pub api: PoolApi,
}

/// Where the endpoints' pods are chosen: a named pool (its selector and ports, as they
/// change), or a fixed selector and ports (llm-d's pool-less `--endpoint-selector`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSource {
    /// An InferencePool, watched by name.
    Named(PoolRef),
    /// A selector and ports given up front.
    Selector(PoolView),
}

/// A running pool watch.
#[derive(Debug)]
pub struct PoolWatch {
    synced: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl PoolWatch {
    /// `true` once the pool has been read and its pods listed under its current
    /// selector; `false` again while the pool is missing (llm-d's `PoolHasSynced`).
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Waits until synced.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        // The sender lives in the task; if it ends there is nothing to wait for.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops watching (the endpoints stay as they were).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for PoolWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxedEvents<K> = Pin<Box<dyn Stream<Item = std::result::Result<Event<K>, watcher::Error>> + Send>>;

fn label_selector(selector: &BTreeMap<String, String>) -> String {
    selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Starts watching `source` and its pods into `writer`'s datastore (source
/// [`crate::pool::SOURCE`]).
pub fn watch(client: kube::Client, source: PoolSource, writer: DatastoreWriter) -> PoolWatch {
    let (tx, rx) = watch::channel(false);
    let (ns, name) = match &source {
        PoolSource::Named(p) => (p.namespace.clone(), p.name.clone()),
        PoolSource::Selector(v) => (v.namespace.clone(), String::new()),
    };
    let span = tracing::info_span!("pool_watch", namespace = %ns, pool = %name);
    let task = tokio::spawn(run_pool(client, source, writer, tx).instrument(span));
    PoolWatch { synced: rx, task }
}

async fn run_pool(client: kube::Client, source: PoolSource, writer: DatastoreWriter, synced: watch::Sender<bool>) {
    let mut disc = PoolDiscovery::new();
    let (ns, api, mut pool_events): (String, PoolApi, BoxedEvents<DynamicObject>) = match source {
        PoolSource::Named(pool) => {
            let ns = if pool.namespace.is_empty() { "default".to_string() } else { pool.namespace.clone() };
            let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &pool.api.resource());
            let events = watcher(pools, watcher::Config::default().fields(&format!("metadata.name={}", pool.name)))
                .default_backoff()
                .boxed();
            (ns, pool.api, events)
        }
        PoolSource::Selector(view) => {
            let ns = view.namespace.clone();
            disc.set_pool(view);
            // No pool to watch: a stream that never yields.
            (ns, PoolApi::V1, futures_util::stream::pending().boxed())
        }
    };
    let pods_api: Api<Pod> = Api::namespaced(client, &ns);
    let mut pod_events: Option<BoxedEvents<Pod>> = None;
    // The selector the pod watch runs under.
    let mut watching: Option<BTreeMap<String, String>> = None;
    // During a relist of the pool: `Listed::Absent` until it is seen, `Invalid` when
    // it was listed but did not read (the last good one is kept then).
    let mut pool_listed: Option<Listed> = None;
    let mut pods_listed: Option<Vec<Pod>> = None;
    let mut pool_synced = disc.pool().is_some();
    let mut pods_synced = false;
    loop {
        // Pods are watched under the pool's selector; a new selector means a new watch
        // (the old pods stay until the new list replaces them; those the new selector
        // leaves out make no endpoints meanwhile).
        let want = disc.pool().map(|p| p.selector.clone());
        if want != watching {
            // A new selector keeps serving what is known until the new list lands
            // (llm-d stays ready through it); a pool that was gone starts unsynced.
            if watching.is_none() {
                pods_synced = false;
            }
            pods_listed = None;
            pod_events = want.as_ref().map(|sel| {
                tracing::info!(selector = %label_selector(sel), "watching pods");
                watcher(pods_api.clone(), watcher::Config::default().labels(&label_selector(sel)))
                    .default_backoff()
                    .boxed()
            });
            watching = want;
        }
        let next_pod = async {
            match pod_events.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = pool_events.next() => match ev {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "watching the InferencePool failed; retrying"),
                Some(Ok(Event::Init)) => pool_listed = Some(Listed::Absent),
                Some(Ok(Event::InitApply(o))) => {
                    pool_listed = Some(match read_pool(api, o) {
                        Some(v) => Listed::Valid(v),
                        None => Listed::Invalid,
                    });
                }
                Some(Ok(Event::InitDone)) => {
                    match pool_listed.take() {
                        Some(Listed::Valid(v)) => disc.set_pool(v),
                        Some(Listed::Invalid) => {}
                        Some(Listed::Absent) | None => {
                            tracing::warn!("the InferencePool does not exist (yet); no endpoints");
                            disc.remove_pool();
                        }
                    }
                    pool_synced = disc.pool().is_some();
                }
                Some(Ok(Event::Apply(o))) => {
                    if let Some(v) = read_pool(api, o) {
                        disc.set_pool(v);
                    }
                }
                Some(Ok(Event::Delete(_))) => {
                    tracing::warn!("the InferencePool was deleted; its endpoints are removed");
                    disc.remove_pool();
                    pods_synced = false;
                }
            },
            ev = next_pod => match ev {
                None => pod_events = None,
                Some(Err(e)) => tracing::warn!(error = %e, "watching pods failed; retrying"),
                Some(Ok(Event::Init)) => pods_listed = Some(Vec::new()),
                Some(Ok(Event::InitApply(p))) => pods_listed.get_or_insert_with(Vec::new).push(p),
                Some(Ok(Event::InitDone)) => {
                    let pods = pods_listed.take().unwrap_or_default();
                    tracing::debug!(pods = pods.len(), "pods listed");
                    disc.replace_pods(pods);
                    pods_synced = true;
                }
                Some(Ok(Event::Apply(p))) => disc.apply_pod(p),
                Some(Ok(Event::Delete(p))) => {
                    disc.delete_pod(p.metadata.namespace.as_deref().unwrap_or(&ns), p.metadata.name.as_deref().unwrap_or(""));
                }
            },
        }
        match disc.sync(&writer) {
            Ok(o) if o.changed && (o.added > 0 || o.removed > 0) => {
                tracing::info!(added = o.added, removed = o.removed, "pool endpoints changed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "updating the datastore failed"),
        }
        let now = pool_synced && pods_synced && disc.pool().is_some();
        synced.send_if_modified(|s| std::mem::replace(s, now) != now);
    }
}

/// What a relist of the pool found.
enum Listed {
    Absent,
    Invalid,
    Valid(PoolView),
}

fn read_pool(api: PoolApi, obj: DynamicObject) -> Option<PoolView> {
    match api.view(obj) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "the InferencePool is invalid; keeping the last good one");
            None
        }
    }
}

/// The InferenceObjective groups llmd reads: llm-d-router's current one and the
/// earlier one GAIE's manifests install.
pub const OBJECTIVE_GROUPS: [&str; 2] = ["llm-d.ai", "inference.networking.x-k8s.io"];

/// Watches InferenceObjectives in `namespace` whose `spec.poolRef.name` is `pool`, under
/// each group of [`OBJECTIVE_GROUPS`] the cluster serves, and calls `apply` with the
/// whole set after each change. A group whose CRD is not installed is skipped.
pub fn watch_objectives(
    client: kube::Client,
    namespace: &str,
    pool: &str,
    apply: Arc<dyn Fn(Objectives) + Send + Sync>,
) -> JoinHandle<()> {
    let ns = if namespace.is_empty() { "default".to_string() } else { namespace.to_string() };
    let pool = pool.to_string();
    tokio::spawn(async move {
        let mut streams = Vec::new();
        for group in OBJECTIVE_GROUPS {
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, "v1alpha2", "InferenceObjective"),
                "inferenceobjectives",
            );
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
            match tokio::time::timeout(std::time::Duration::from_secs(30), api.list(&ListParams::default().limit(1)))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                    tracing::info!(group, "InferenceObjective is not installed under this group");
                    continue;
                }
                // Served but failing now: the watcher retries with backoff.
                Ok(Err(e)) => tracing::warn!(group, error = %e, "listing InferenceObjectives failed"),
                Err(_) => tracing::warn!(group, "listing InferenceObjectives timed out"),
            }
            streams.push(watcher(api, watcher::Config::default()).default_backoff().map(move |e| (group, e)).boxed());
        }
        let mut events = futures_util::stream::select_all(streams);
        // group → objective name → priority.
        let mut known: BTreeMap<&str, BTreeMap<String, i32>> = BTreeMap::new();
        let mut listing: BTreeMap<&str, BTreeMap<String, i32>> = BTreeMap::new();
        while let Some((group, ev)) = events.next().await {
            let changed = match ev {
                Err(e) => {
                    tracing::warn!(group, error = %e, "watching InferenceObjectives failed; retrying");
                    false
                }
                Ok(Event::Init) => {
                    listing.insert(group, BTreeMap::new());
                    false
                }
                Ok(Event::InitApply(o)) => {
                    if let Some((name, prio)) = objective(&o, &pool) {
                        listing.entry(group).or_default().insert(name, prio);
                    }
                    false
                }
                Ok(Event::InitDone) => {
                    known.insert(group, listing.remove(group).unwrap_or_default());
                    true
                }
                Ok(Event::Apply(o)) => {
                    let m = known.entry(group).or_default();
                    match objective(&o, &pool) {
                        Some((name, prio)) => m.insert(name, prio) != Some(prio),
                        // Moved to another pool.
                        None => o.metadata.name.as_ref().is_some_and(|n| m.remove(n).is_some()),
                    }
                }
                Ok(Event::Delete(o)) => {
                    o.metadata.name.as_ref().is_some_and(|n| known.entry(group).or_default().remove(n).is_some())
                }
            };
            if changed {
                // The current group's entry wins over the earlier one's for one name.
                let mut all = BTreeMap::new();
                for g in OBJECTIVE_GROUPS.iter().rev() {
                    if let Some(m) = known.get(g) {
                        all.extend(m.iter().map(|(k, v)| (k.clone(), *v)));
                    }
                }
                tracing::info!(objectives = all.len(), "InferenceObjectives updated");
                apply(Objectives::new(all));
            }
        }
    })
}

// An objective's name and priority when it targets `pool` (nil priority is 0).
fn objective(o: &DynamicObject, pool: &str) -> Option<(String, i32)> {
    let name = o.metadata.name.clone()?;
    let spec = o.data.get("spec")?;
    let target = spec.get("poolRef")?.get("name")?.as_str()?;
    if target != pool {
        return None;
    }
    let prio = spec.get("priority").and_then(|p| p.as_i64()).and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    Some((name, prio))
}
