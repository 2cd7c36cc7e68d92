//! InferenceObjectives: the priority a request runs at, named by its
//! `x-llm-d-inference-objective` header (or the older `x-gateway-inference-objective`).
//! llm-d reads them from the cluster (group `inference.networking.x-k8s.io`, version
//! `v1alpha2`, `spec.priority`, nil meaning 0; negative priorities are sheddable); llmd
//! takes the same manifests from a file (`llmd epp --objectives`), and the Kubernetes
//! reflector can feed the same [`Objectives`] set. An unknown or absent objective runs
//! at priority 0, as in the router.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::SchedulerError;

/// Objective name → priority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Objectives {
    by_name: BTreeMap<String, i32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    priority: Option<i32>,
}

impl Objectives {
    /// From `(name, priority)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, i32)>) -> Self {
        Objectives { by_name: pairs.into_iter().collect() }
    }

    /// From Kubernetes manifests (YAML, several documents allowed): every
    /// `InferenceObjective` becomes an entry; other kinds (the pool, say) are skipped.
    /// `file` names the source in errors.
    pub fn from_manifests(yaml: &str, file: &str) -> Result<Self, SchedulerError> {
        let mut by_name = BTreeMap::new();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
            let what = format!("document {}", i + 1);
            let value = serde_yaml_ng::Value::deserialize(doc)
                .map_err(|e| SchedulerError::config(file, &what, e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let m: Manifest =
                serde_yaml_ng::from_value(value).map_err(|e| SchedulerError::config(file, &what, e.to_string()))?;
            if m.kind.as_deref() != Some("InferenceObjective") {
                continue;
            }
            if let Some(v) = &m.api_version
                && !v.starts_with("inference.networking.x-k8s.io/")
                && !v.starts_with("llm-d.ai/")
            {
                return Err(SchedulerError::config(
                    file,
                    &what,
                    format!("apiVersion {v:?} is not an InferenceObjective's"),
                ));
            }
            let name = m
                .metadata
                .name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| SchedulerError::config(file, &what, "an InferenceObjective needs metadata.name"))?;
            if by_name.insert(name.clone(), m.spec.priority.unwrap_or(0)).is_some() {
                return Err(SchedulerError::config(
                    file,
                    &what,
                    format!("InferenceObjective {name:?} is defined twice"),
                ));
            }
        }
        Ok(Objectives { by_name })
    }

    /// The priority of objective `name`, if defined.
    pub fn priority(&self, name: &str) -> Option<i32> {
        self.by_name.get(name).copied()
    }

    /// A request's priority: its objective's (header `x-llm-d-inference-objective`,
    /// or the older `x-gateway-inference-objective`), 0 for none or an unknown one.
    pub fn priority_of(&self, headers: &BTreeMap<String, String>) -> i32 {
        crate::flowcontrol::objective_name(headers).and_then(|n| self.priority(n)).unwrap_or(0)
    }

    /// Every distinct priority (the flow controller provisions a band for each).
    pub fn priorities(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.by_name.values().copied().collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Whether none are defined.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: critical}
spec: {priority: 10, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: plain}
spec: {poolRef: {name: pool}}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec: {targetPorts: [{number: 8000}]}
";

    #[test]
    fn manifests_give_priorities_and_headers_pick_them() {
        let o = Objectives::from_manifests(MANIFESTS, "objectives.yaml").unwrap();
        assert_eq!((o.priority("critical"), o.priority("batch"), o.priority("plain")), (Some(10), Some(-1), Some(0)));
        assert_eq!(o.priorities(), [-1, 0, 10]);
        let h = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(o.priority_of(&h("x-llm-d-inference-objective", "batch")), -1);
        assert_eq!(o.priority_of(&h("x-gateway-inference-objective", "critical")), 10);
        assert_eq!(o.priority_of(&h("x-llm-d-inference-objective", "unknown")), 0);
        assert_eq!(o.priority_of(&BTreeMap::new()), 0);
    }

    #[test]
    fn mistakes_are_named() {
        let twice = format!("{MANIFESTS}---\n{}", MANIFESTS.split("---").next().unwrap());
        let e = Objectives::from_manifests(&twice, "o.yaml").unwrap_err().to_string();
        assert!(e.contains("o.yaml") && e.contains("\"critical\" is defined twice"), "{e}");
        let e = Objectives::from_manifests("kind: InferenceObjective\nspec: {priority: 1}\n", "o.yaml").unwrap_err();
        assert!(e.to_string().contains("metadata.name"), "{e}");
        let e = Objectives::from_manifests(
            "kind: InferenceObjective\nmetadata: {name: a}\nspec: {priority: high}\n",
            "o.yaml",
        );
        assert!(e.is_err());
    }
}
