//! A pool's pods held as the watcher last saw them, and the scheduler [`Discovery`]
//! that makes the datastore hold exactly the endpoints they make ([`pool_endpoints`]).
//!
//! The watcher (list, then watch; relist after a 410) calls [`PoolDiscovery::apply_pod`],
//! [`PoolDiscovery::delete_pod`], [`PoolDiscovery::replace_pods`] and
//! [`PoolDiscovery::set_pool`], then [`Discovery::sync`]: a pod's endpoints leave the
//! datastore in the sync after its deletion, unreadiness or deselection is seen, and a
//! change of the pool's selector or ports takes effect the same way, without a restart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use llmd_scheduler::{DatastoreWriter, Discovery, Endpoint, SyncOutcome};

use crate::discovery::pool_endpoints;
use crate::resources::PoolView;

/// The discovery source name endpoints from a pool carry in the datastore.
pub const SOURCE: &str = "inferencepool";

/// Pods by `namespace/name`, and the pool they are read against.
#[derive(Debug, Default)]
pub struct PoolDiscovery {
    pool: Option<PoolView>,
    pods: BTreeMap<String, Pod>,
    dirty: bool,
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""))
}

impl PoolDiscovery {
    /// No pool yet: no endpoints until [`PoolDiscovery::set_pool`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A discovery for `pool`.
    pub fn for_pool(pool: PoolView) -> Self {
        PoolDiscovery { pool: Some(pool), pods: BTreeMap::new(), dirty: true }
    }

    /// The pool as last set (`None` while unknown or deleted).
    pub fn pool(&self) -> Option<&PoolView> {
        self.pool.as_ref()
    }

    /// The pool was created or changed (selector, ports).
    pub fn set_pool(&mut self, pool: PoolView) {
        if self.pool.as_ref() != Some(&pool) {
            self.pool = Some(pool);
            self.dirty = true;
        }
    }

    /// The pool was deleted: its endpoints go at the next sync, and the pods known are
    /// forgotten (as llm-d's datastore clears), so a pool created again makes no
    /// endpoints from pods that may be long gone before its pods are listed afresh.
    pub fn remove_pool(&mut self) {
        self.dirty |= self.pool.take().is_some();
        self.pods.clear();
    }

    /// A pod was added or changed.
    pub fn apply_pod(&mut self, pod: Pod) {
        self.pods.insert(key(&pod), pod);
        self.dirty = true;
    }

    /// A pod was deleted.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.dirty |= self.pods.remove(&format!("{namespace}/{name}")).is_some();
    }

    /// A full relist: these are all the pods there are.
    pub fn replace_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        self.pods = pods.into_iter().map(|p| (key(&p), p)).collect();
        self.dirty = true;
    }

    /// The endpoints the pods make now, ordered by id.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        match &self.pool {
            Some(pool) => pool_endpoints(pool, self.pods.values()),
            None => Vec::new(),
        }
    }
}

impl Discovery for PoolDiscovery {
    fn name(&self) -> &str {
        SOURCE
    }

    fn sync(&mut self, writer: &DatastoreWriter) -> llmd_scheduler::Result<SyncOutcome> {
        if !self.dirty {
            return Ok(SyncOutcome::default());
        }
        let (added, removed) = writer.reconcile(SOURCE, self.endpoints());
        self.dirty = false;
        Ok(SyncOutcome { added, removed, changed: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_scheduler::{ManualClock, datastore};
    use serde_json::json;
    use std::sync::Arc;

    fn pool(selector: &str, ports: &[u16]) -> PoolView {
        PoolView {
            namespace: "llm".into(),
            name: "qwen".into(),
            selector: [("app".to_string(), selector.to_string())].into(),
            target_ports: ports.to_vec(),
        }
    }

    fn pod(name: &str, app: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "llm", "labels": {"app": app}},
            "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn ids(w: &DatastoreWriter) -> Vec<String> {
        let mut v: Vec<String> = w.reader().snapshot().into_iter().map(|e| e.id).collect();
        v.sort();
        v
    }

    #[test]
    fn the_datastore_follows_pods_and_the_pool() {
        let w = datastore(Arc::new(ManualClock::new()));
        let mut d = PoolDiscovery::for_pool(pool("vllm", &[8000]));
        d.replace_pods([pod("a", "vllm", true), pod("b", "vllm", false), pod("c", "other", true)]);
        assert_eq!(d.sync(&w).unwrap(), SyncOutcome { added: 1, removed: 0, changed: true });
        assert_eq!(ids(&w), ["llm/a-rank-0"]);
        // Nothing new: nothing done.
        assert!(!d.sync(&w).unwrap().changed);
        // b turns ready; a is deleted: a's endpoint is gone at the next sync.
        d.apply_pod(pod("b", "vllm", true));
        d.delete_pod("llm", "a");
        d.sync(&w).unwrap();
        assert_eq!(ids(&w), ["llm/b-rank-0"]);
        // The pool's selector and ports change without a restart.
        d.set_pool(pool("other", &[8000, 8001]));
        d.sync(&w).unwrap();
        assert_eq!(ids(&w), ["llm/c-rank-0", "llm/c-rank-1"]);
        // A relist after a lost watch replaces everything known.
        d.replace_pods([pod("b", "other", true)]);
        d.sync(&w).unwrap();
        assert_eq!(ids(&w), ["llm/b-rank-0", "llm/b-rank-1"]);
        // The pool is deleted: no endpoints.
        d.remove_pool();
        assert_eq!(d.sync(&w).unwrap().removed, 2);
        assert!(ids(&w).is_empty());
        // Made again: the pods known before are not trusted until listed afresh.
        d.set_pool(pool("other", &[8000]));
        d.sync(&w).unwrap();
        assert!(ids(&w).is_empty());
    }

    #[test]
    fn endpoints_of_other_sources_are_left_alone() {
        let w = datastore(Arc::new(ManualClock::new()));
        w.upsert_from("static", Endpoint::new("manual", "10.0.0.9:8000", llmd_scheduler::Role::Both));
        let mut d = PoolDiscovery::for_pool(pool("vllm", &[8000]));
        d.apply_pod(pod("a", "vllm", true));
        d.sync(&w).unwrap();
        d.delete_pod("llm", "a");
        d.sync(&w).unwrap();
        assert_eq!(ids(&w), ["manual"]);
    }
}
