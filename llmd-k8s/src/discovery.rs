//! Which endpoints a pool's pods make, as llm-d's EPP decides it
//! (llm-d-router `pkg/epp/datastore/datastore.go`): a pod the pool's selector matches
//! is an endpoint source only while it is Ready and not being deleted, and has an IP;
//! it makes one endpoint per target port, named `<namespace>/<pod>-rank-<i>` where `i` is
//! the port's index among the pool's `targetPorts`; the annotation
//! `llm-d.ai/active-ports` (or GAIE's legacy `inference.networking.k8s.io/active-ports`),
//! a comma-separated port list, limits which ports are active. Runtime-free: a watcher
//! feeds pods in and applies the result to the scheduler's datastore.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use llmd_scheduler::discovery::ROLE_LABEL;
use llmd_scheduler::{Endpoint, Role};

use crate::resources::PoolView;

/// llm-d's annotation listing a pod's active target ports.
pub const ACTIVE_PORTS_ANNOTATION: &str = "llm-d.ai/active-ports";
/// GAIE's earlier name for [`ACTIVE_PORTS_ANNOTATION`], still read.
pub const LEGACY_ACTIVE_PORTS_ANNOTATION: &str = "inference.networking.k8s.io/active-ports";

/// Whether the pod's labels carry every one of the pool's selector labels, in the
/// pool's namespace.
pub fn selects(pool: &PoolView, pod: &Pod) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let labels = pod.metadata.labels.as_ref();
    ns == pool.namespace
        && pool.selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)).is_some_and(|have| have == v))
}

/// Whether the pod may take requests: its `Ready` condition is `True` and it is not being
/// deleted (a pod with a deletion timestamp is draining, whatever its condition says).
pub fn is_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pool's target ports this pod serves: all of them, unless its active-ports
/// annotation lists some (entries that are not numbers or not target ports are ignored,
/// so an annotation naming none leaves the pod with no endpoint, as the router does).
pub fn active_ports(pod: &Pod, target_ports: &[u16]) -> BTreeSet<u16> {
    let annotations = pod.metadata.annotations.as_ref();
    let listed =
        annotations.and_then(|a| a.get(ACTIVE_PORTS_ANNOTATION).or_else(|| a.get(LEGACY_ACTIVE_PORTS_ANNOTATION)));
    match listed {
        None => target_ports.iter().copied().collect(),
        Some(list) => list
            .split(',')
            .filter_map(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p > 0 && target_ports.contains(p))
            .collect(),
    }
}

/// The endpoint id of `pod`'s rank `rank` (`<namespace>/<pod>-rank-<rank>`).
pub fn endpoint_id(namespace: &str, pod: &str, rank: usize) -> String {
    format!("{namespace}/{pod}-rank-{rank}")
}

/// The endpoints `pod` makes in `pool`: none unless the pool selects it, it is Ready and
/// not being deleted, and it has an IP; otherwise one per active target port, carrying
/// the pod's labels, with the role from `llm-d.ai/role` (unknown or absent: both).
pub fn pod_endpoints(pool: &PoolView, pod: &Pod) -> Vec<Endpoint> {
    let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty()) else {
        return Vec::new();
    };
    let Some(name) = pod.metadata.name.as_deref() else { return Vec::new() };
    if !selects(pool, pod) || !is_ready(pod) {
        return Vec::new();
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let role = labels.get(ROLE_LABEL).and_then(|r| Role::parse(r)).unwrap_or(Role::Both);
    // IPv6 addresses are bracketed in host:port.
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
    let active = active_ports(pod, &pool.target_ports);
    pool.target_ports
        .iter()
        .enumerate()
        .filter(|(_, port)| active.contains(port))
        .map(|(rank, port)| {
            let mut e = Endpoint::new(endpoint_id(&pool.namespace, name, rank), format!("{host}:{port}"), role);
            e.labels = labels.clone();
            e
        })
        .collect()
}

/// Every endpoint a set of pods makes in `pool`, ordered by id.
pub fn pool_endpoints<'a>(pool: &PoolView, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = pods.into_iter().flat_map(|p| pod_endpoints(pool, p)).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(ports: &[u16]) -> PoolView {
        PoolView {
            namespace: "llm".into(),
            name: "qwen".into(),
            selector: [("app".to_string(), "vllm".to_string())].into(),
            target_ports: ports.to_vec(),
        }
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut p = json!({
            "metadata": {"name": "vllm-0", "namespace": "llm", "labels": {"app": "vllm"}},
            "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]},
        });
        merge(&mut p, extra);
        serde_json::from_value(p).unwrap()
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn ids(eps: &[Endpoint]) -> Vec<(&str, &str)> {
        eps.iter().map(|e| (e.id.as_str(), e.address.as_str())).collect()
    }

    #[test]
    fn a_ready_selected_pod_makes_one_endpoint_per_port() {
        let eps =
            pod_endpoints(&pool(&[8000, 8001]), &pod(json!({"metadata": {"labels": {"llm-d.ai/role": "prefill"}}})));
        assert_eq!(ids(&eps), [("llm/vllm-0-rank-0", "10.0.0.7:8000"), ("llm/vllm-0-rank-1", "10.0.0.7:8001")]);
        assert!(eps.iter().all(|e| e.role == Role::Prefill && e.labels["app"] == "vllm"));
    }

    #[test]
    fn only_ready_selected_pods_with_an_ip_in_the_pool_s_namespace_count() {
        let p = pool(&[8000]);
        let none: [(&str, serde_json::Value); 6] = [
            ("not ready", json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
            ("no conditions", json!({"status": {"conditions": []}})),
            ("being deleted", json!({"metadata": {"deletionTimestamp": "2026-11-26T00:00:00Z"}})),
            ("no IP yet", json!({"status": {"podIP": ""}})),
            ("other labels", json!({"metadata": {"labels": {"app": "other"}}})),
            ("other namespace", json!({"metadata": {"namespace": "elsewhere"}})),
        ];
        for (why, extra) in none {
            assert!(pod_endpoints(&p, &pod(extra)).is_empty(), "{why}");
        }
        // Control: the same pod as built, unchanged, counts.
        assert_eq!(pod_endpoints(&p, &pod(json!({}))).len(), 1);
    }

    #[test]
    fn active_ports_keep_their_rank_and_the_legacy_annotation_is_read() {
        let p = pool(&[8000, 8001, 8002]);
        let only = |ann: &str, value: &str| {
            let eps = pod_endpoints(&p, &pod(json!({"metadata": {"annotations": {ann: value}}})));
            eps.into_iter().map(|e| e.id).collect::<Vec<_>>()
        };
        assert_eq!(only(ACTIVE_PORTS_ANNOTATION, "8002, 8000"), ["llm/vllm-0-rank-0", "llm/vllm-0-rank-2"]);
        assert_eq!(only(LEGACY_ACTIVE_PORTS_ANNOTATION, "8001"), ["llm/vllm-0-rank-1"]);
        // Entries that are not target ports are dropped: an annotation naming none leaves none.
        assert!(only(ACTIVE_PORTS_ANNOTATION, "9000,x,0").is_empty());
        // llm-d's name wins over the legacy one.
        let both = pod(
            json!({"metadata": {"annotations": {ACTIVE_PORTS_ANNOTATION: "8000", LEGACY_ACTIVE_PORTS_ANNOTATION: "8001"}}}),
        );
        assert_eq!(active_ports(&both, &p.target_ports), [8000].into());
    }

    #[test]
    fn ipv6_addresses_are_bracketed_and_unknown_roles_serve_both() {
        let eps = pod_endpoints(
            &pool(&[8000]),
            &pod(json!({"status": {"podIP": "fd00::7"}, "metadata": {"labels": {"llm-d.ai/role": "sidecar"}}})),
        );
        assert_eq!(ids(&eps), [("llm/vllm-0-rank-0", "[fd00::7]:8000")]);
        assert_eq!(eps[0].role, Role::Both);
    }

    #[test]
    fn a_pool_s_endpoints_come_sorted_by_id() {
        let a = pod(json!({"metadata": {"name": "b"}}));
        let b = pod(json!({"metadata": {"name": "a"}, "status": {"podIP": "10.0.0.8"}}));
        let c =
            pod(json!({"metadata": {"name": "c"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        let eps = pool_endpoints(&pool(&[8000]), [&a, &b, &c]);
        assert_eq!(ids(&eps), [("llm/a-rank-0", "10.0.0.8:8000"), ("llm/b-rank-0", "10.0.0.7:8000")]);
    }
}
