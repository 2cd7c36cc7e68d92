//! The Gateway API Inference Extension's and llm-d's custom resources, as kube-rs types.
//!
//! - [`InferencePool`] — `inference.networking.k8s.io/v1` (GAIE `api/v1/inferencepool_types.go`):
//!   which pods serve a model (`selector.matchLabels`), on which ports (`targetPorts`),
//!   and which endpoint picker routes for it (`endpointPickerRef`).
//! - [`v1alpha2::InferencePool`] — the legacy `inference.networking.x-k8s.io/v1alpha2`
//!   pool (`selector` map, `targetPortNumber`, `extensionRef`), still named by the P/D
//!   sidecar's legacy pool group.
//! - [`InferenceObjective`] — `llm-d.ai/v1alpha2` (llm-d-router `apix/v1alpha2`): a
//!   request objective's `priority` for a pool; [`v1alpha2::InferenceObjective`] is the
//!   same under its earlier group `inference.networking.x-k8s.io`.
//!
//! Spec structs refuse unknown fields, so a manifest this crate reads is one it
//! understands whole. `Kind::crd()` (kube's [`kube::CustomResourceExt`]) generates each
//! CRD.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{K8sError, Result};

/// `InferencePool.spec` (v1).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    namespaced,
    status = "InferencePoolStatus",
    shortname = "infpool"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferencePoolSpec {
    /// Labels a model-server pod must carry (all of them) to belong to the pool.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Ports the model servers listen on (1 to 8, unique): one endpoint per port.
    #[serde(default)]
    pub target_ports: Vec<Port>,
    /// `http` (default) or `kubernetes.io/h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The endpoint picker serving this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_picker_ref: Option<EndpointPickerRef>,
}

/// GAIE's label selector: exact matches only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Label → value; a pod matches when it carries every one.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A port number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// 1–65535.
    pub number: i32,
}

/// Where the endpoint picker is (`endpointPickerRef`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPickerRef {
    /// API group (default `""`, the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Port; required when the kind is `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// `FailOpen` or `FailClose` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<String>,
}

/// `InferencePool.status` (v1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolStatus {
    /// What each parent (Gateway) says of the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentStatus>,
}

/// One parent's view of the pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// `Accepted`, `ResolvedRefs`, `Exported`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The parent.
    #[serde(default)]
    pub parent_ref: ParentReference,
    /// The controller writing this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_name: Option<String>,
}

/// A parent (by default a `gateway.networking.k8s.io` `Gateway`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `InferenceObjective.spec`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "llm-d.ai", version = "v1alpha2", kind = "InferenceObjective", namespaced, status = "ObjectiveStatus")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceObjectiveSpec {
    /// Higher is served first; absent means 0; negative means sheddable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The pool it applies to.
    pub pool_ref: PoolObjectReference,
}

/// A pool by group, kind and name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolObjectReference {
    /// Group (default `inference.networking.k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (default `InferencePool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
}

/// An objective's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectiveStatus {
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The resources under their earlier `inference.networking.x-k8s.io/v1alpha2` group.
pub mod v1alpha2 {
    use super::*;

    /// The legacy `InferencePool.spec`.
    #[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "inference.networking.x-k8s.io",
        version = "v1alpha2",
        kind = "InferencePool",
        namespaced,
        status = "InferencePoolStatus"
    )]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct InferencePoolSpec {
        /// Labels a pod must carry.
        #[serde(default)]
        pub selector: BTreeMap<String, String>,
        /// The one port model servers listen on.
        pub target_port_number: i32,
        /// The endpoint picker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub extension_ref: Option<Extension>,
    }

    /// The legacy endpoint-picker reference.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Extension {
        /// Group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub group: Option<String>,
        /// Kind.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<String>,
        /// Name.
        pub name: String,
        /// Port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port_number: Option<i32>,
        /// `FailOpen` or `FailClose`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub failure_mode: Option<String>,
    }

    /// The legacy pool status (`status.parent`, singular).
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct InferencePoolStatus {
        /// What each parent says.
        #[serde(default, rename = "parent", skip_serializing_if = "Vec::is_empty")]
        pub parents: Vec<serde_json::Value>,
    }

    /// `InferenceObjective.spec` under the earlier group.
    #[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "inference.networking.x-k8s.io",
        version = "v1alpha2",
        kind = "InferenceObjective",
        namespaced,
        status = "super::ObjectiveStatus"
    )]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct InferenceObjectiveSpec {
        /// Higher is served first; absent means 0; negative means sheddable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub priority: Option<i32>,
        /// The pool it applies to.
        pub pool_ref: super::PoolObjectReference,
    }
}

/// What discovery needs of a pool, whichever version it was read from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolView {
    /// The pool's namespace (pods are listed there).
    pub namespace: String,
    /// The pool's name.
    pub name: String,
    /// Labels a pod must carry.
    pub selector: BTreeMap<String, String>,
    /// Target ports, in order (an endpoint's rank is its port's index here).
    pub target_ports: Vec<u16>,
}

impl PoolView {
    /// A v1 pool's view. Refuses a pool without ports, with more than 8, with a
    /// repeated port, or with a port outside 1–65535.
    pub fn from_v1(pool: &InferencePool) -> Result<Self> {
        let ports: Vec<i32> = pool.spec.target_ports.iter().map(|p| p.number).collect();
        Self::new(&pool.metadata, pool.spec.selector.match_labels.clone(), &ports)
    }

    /// A legacy v1alpha2 pool's view (its one port).
    pub fn from_v1alpha2(pool: &v1alpha2::InferencePool) -> Result<Self> {
        Self::new(&pool.metadata, pool.spec.selector.clone(), &[pool.spec.target_port_number])
    }

    /// A pool as the API server holds it, v1 or (`legacy`) v1alpha2, read only for what
    /// discovery needs: fields this version of llmd does not know (a newer CRD's) are
    /// ignored, unlike the strict [`InferencePool`] type, so a live pool keeps working.
    pub fn from_object(value: &serde_json::Value, legacy: bool) -> Result<Self> {
        let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
            decode("InferencePool metadata", value.get("metadata").cloned().unwrap_or_default())?;
        let name = format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""));
        let invalid = |reason: String| K8sError::Invalid { kind: "InferencePool", name: name.clone(), reason };
        let spec = value.get("spec").ok_or_else(|| invalid("no spec".into()))?;
        let labels =
            if legacy { spec.get("selector") } else { spec.get("selector").and_then(|s| s.get("matchLabels")) };
        let selector: BTreeMap<String, String> = match labels {
            Some(l) => decode("InferencePool selector", l.clone())?,
            None => return Err(invalid("no selector".into())),
        };
        let ports: Vec<i32> = if legacy {
            let p = spec
                .get("targetPortNumber")
                .and_then(|p| p.as_i64())
                .ok_or_else(|| invalid("no targetPortNumber".into()))?;
            vec![i32::try_from(p).map_err(|_| invalid(format!("targetPortNumber {p} is not a port")))?]
        } else {
            let list =
                spec.get("targetPorts").and_then(|p| p.as_array()).ok_or_else(|| invalid("no targetPorts".into()))?;
            list.iter()
                .map(|p| {
                    p.get("number")
                        .and_then(|n| n.as_i64())
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| invalid(format!("target port {p} has no number")))
                })
                .collect::<Result<_>>()?
        };
        Self::new(&meta, selector, &ports)
    }

    /// A pool-less view (llm-d's `--endpoint-selector k=v,k2=v2` with
    /// `--endpoint-target-ports`): equality terms only, as a pool's `matchLabels`.
    pub fn from_selector(namespace: &str, selector: &str, ports: &[u16]) -> Result<Self> {
        let invalid =
            |reason: String| K8sError::Invalid { kind: "endpoint selector", name: selector.to_string(), reason };
        let mut labels = BTreeMap::new();
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, v) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .ok_or_else(|| invalid(format!("{term:?} is not key=value (only equality terms are supported)")))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || k.contains('!') {
                return Err(invalid(format!("{term:?} is not key=value (only equality terms are supported)")));
            }
            labels.insert(k.to_string(), v.to_string());
        }
        if labels.is_empty() {
            return Err(invalid("the selector is empty".into()));
        }
        let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(String::new()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        };
        let ports: Vec<i32> = ports.iter().map(|&p| i32::from(p)).collect();
        Self::new(&meta, labels, &ports)
    }

    fn new(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        selector: BTreeMap<String, String>,
        ports: &[i32],
    ) -> Result<Self> {
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let invalid =
            |reason: String| K8sError::Invalid { kind: "InferencePool", name: format!("{namespace}/{name}"), reason };
        if ports.is_empty() || ports.len() > 8 {
            return Err(invalid(format!("targetPorts has {} entries; 1 to 8 are allowed", ports.len())));
        }
        let mut target_ports = Vec::with_capacity(ports.len());
        for &p in ports {
            let port = u16::try_from(p)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| invalid(format!("port {p} is not in 1-65535")))?;
            if target_ports.contains(&port) {
                return Err(invalid(format!("port {port} is listed twice")));
            }
            target_ports.push(port);
        }
        Ok(PoolView { namespace, name, selector, target_ports })
    }
}

/// Decodes a Kubernetes object from JSON (or a YAML document already parsed to JSON),
/// naming what was decoded in the error.
pub fn decode<T: serde::de::DeserializeOwned>(what: &str, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|source| K8sError::Decode { what: what.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ports: &[i32]) -> InferencePool {
        let mut p = InferencePool::new(
            "qwen",
            InferencePoolSpec {
                target_ports: ports.iter().map(|&number| Port { number }).collect(),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("llm".into());
        p
    }

    #[test]
    fn pool_ports_are_checked_as_the_crd_does() {
        assert_eq!(PoolView::from_v1(&pool(&[8000, 8001])).unwrap().target_ports, vec![8000, 8001]);
        for (ports, want) in [
            (&[][..], "0 entries"),
            (&[8000, 8000][..], "listed twice"),
            (&[0][..], "port 0"),
            (&[70000][..], "port 70000"),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9][..], "9 entries"),
        ] {
            let err = PoolView::from_v1(&pool(ports)).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("llm/qwen"), "{ports:?}: {err}");
        }
    }
}
