//! llm-d's workload-variant-autoscaler resource, `VariantAutoscaling`
//! (`llmd.ai/v1alpha1`, WVA `api/v1alpha1/variantautoscaling_types.go`): one model
//! variant (a Deployment serving a model on one kind of accelerator) and the autoscaler's
//! decision for it.
//!
//! WVA's spec has grown between releases (v0.5: `scaleTargetRef`, `modelID`,
//! `variantCost`; later: `variantID`, `accelerator`, `acceleratorCount`, `sloClassRef`,
//! `variantProfile`): every field past the first two is optional here and unknown ones
//! are kept, so manifests of either release read. The replica bounds WVA leaves to the
//! HPA that consumes its metrics are annotations here ([`MIN_REPLICAS`],
//! [`MAX_REPLICAS`]), since the API server prunes fields its CRD does not declare.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{K8sError, Result};

/// Annotation: the fewest replicas the autoscaler may set (default 1; 0 allows scale to
/// zero).
pub const MIN_REPLICAS: &str = "autoscaling.llmd.ai/min-replicas";
/// Annotation: the most replicas the autoscaler may set (default 10).
pub const MAX_REPLICAS: &str = "autoscaling.llmd.ai/max-replicas";
/// Annotation on a model server's pod: the port its `/metrics` is served on (default:
/// the first container port, else 8000).
pub const METRICS_PORT: &str = "prometheus.io/port";

/// `VariantAutoscaling.spec`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "llmd.ai",
    version = "v1alpha1",
    kind = "VariantAutoscaling",
    namespaced,
    status = "VariantAutoscalingStatus",
    shortname = "va"
)]
#[serde(rename_all = "camelCase")]
pub struct VariantAutoscalingSpec {
    /// The Deployment to scale.
    pub scale_target_ref: ScaleTargetRef,
    /// The model the variant serves; variants of one model are decided together.
    #[serde(rename = "modelID")]
    pub model_id: String,
    /// Cost of one replica (a decimal string; WVA's default "10.0").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_cost: Option<String>,
    /// Later releases: a business identifier of the variant.
    #[serde(default, rename = "variantID", skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<String>,
    /// Later releases: the accelerator, e.g. "H100".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Later releases: accelerators per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_count: Option<u32>,
    /// Later releases' other fields (`sloClassRef`, `variantProfile`), kept as written.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// HPA's `CrossVersionObjectReference`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// The target's API version (`apps/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Its kind: `Deployment`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// `VariantAutoscaling.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantAutoscalingStatus {
    /// Replicas the target has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_alloc: Option<Allocation>,
    /// The autoscaler's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_optimized_alloc: Option<OptimizedAlloc>,
    /// Whether the decision was written to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actuation: Option<Actuation>,
    /// `TargetResolved`, `MetricsAvailable`, `OptimizationReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `status.currentAlloc`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Replicas now.
    pub num_replicas: i32,
}

/// `status.desiredOptimizedAlloc`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OptimizedAlloc {
    /// When the autoscaler last decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// The accelerator (v0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Replicas it should have.
    pub num_replicas: i32,
}

/// `status.actuation`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actuation {
    /// The decision was written to the target's scale.
    pub applied: bool,
}

fn invalid(va: &VariantAutoscaling, reason: String) -> K8sError {
    let m = &va.metadata;
    K8sError::Invalid {
        kind: "VariantAutoscaling",
        name: format!("{}/{}", m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default()),
        reason,
    }
}

impl VariantAutoscaling {
    /// `variantCost` as a number (10 when absent, as WVA); a cost that is not a
    /// non-negative decimal is an error naming the resource.
    pub fn cost(&self) -> Result<f64> {
        let raw = self.spec.variant_cost.as_deref().unwrap_or("10.0");
        raw.parse::<f64>()
            .ok()
            .filter(|c| c.is_finite() && *c >= 0.0)
            .ok_or_else(|| invalid(self, format!("variantCost {raw:?} is not a non-negative decimal")))
    }

    /// The replica bounds from the annotations ([`MIN_REPLICAS`], [`MAX_REPLICAS`]),
    /// defaults 1 and 10.
    pub fn bounds(&self) -> Result<(u32, u32)> {
        let ann = self.metadata.annotations.as_ref();
        let read = |key: &str, default: u32| -> Result<u32> {
            match ann.and_then(|a| a.get(key)) {
                None => Ok(default),
                Some(v) => {
                    v.trim().parse().map_err(|_| invalid(self, format!("annotation {key}={v:?} is not a count")))
                }
            }
        };
        let (lo, hi) = (read(MIN_REPLICAS, 1)?, read(MAX_REPLICAS, 10)?);
        if lo > hi {
            return Err(invalid(self, format!("{MIN_REPLICAS} {lo} > {MAX_REPLICAS} {hi}")));
        }
        Ok((lo, hi))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn va(v: serde_json::Value) -> VariantAutoscaling {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_wva_manifests_of_either_release() {
        // v0.5: scaleTargetRef, modelID, variantCost.
        let old = va(serde_json::json!({
            "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
            "metadata": {"name": "a", "namespace": "llm"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "vllm"}, "modelID": "meta/llama", "variantCost": "7.5"},
            "status": {"desiredOptimizedAlloc": {"accelerator": "H100", "lastRunTime": "2026-03-21T14:55:27Z", "numReplicas": 1}},
        }));
        assert_eq!(
            (old.spec.model_id.as_str(), old.cost().unwrap(), old.bounds().unwrap()),
            ("meta/llama", 7.5, (1, 10))
        );
        // Later: variantID, accelerator, acceleratorCount, variantProfile; kept.
        let new = va(serde_json::json!({
            "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
            "metadata": {"name": "b", "namespace": "llm", "annotations": {MIN_REPLICAS: "0", MAX_REPLICAS: "6"}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"},
                     "modelID": "meta/llama", "variantID": "meta/llama-H100-1", "accelerator": "H100", "acceleratorCount": 1,
                     "variantProfile": {"maxBatchSize": 8, "perfParms": {"decodeParms": {"alpha": "0.8", "beta": "0.2"}}}},
        }));
        assert_eq!((new.cost().unwrap(), new.bounds().unwrap()), (10.0, (0, 6)));
        assert!(new.spec.extra.contains_key("variantProfile"));
        let back = serde_json::to_value(&new).unwrap();
        assert_eq!(back["spec"]["variantProfile"]["maxBatchSize"], 8, "unknown fields survive a round trip");
    }

    #[test]
    fn bad_costs_and_bounds_name_the_resource() {
        let mut v = va(serde_json::json!({
            "metadata": {"name": "c", "namespace": "llm", "annotations": {MIN_REPLICAS: "5", MAX_REPLICAS: "2"}},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "modelID": "m", "variantCost": "cheap"},
        }));
        let e = v.cost().unwrap_err().to_string();
        assert!(e.contains("llm/c") && e.contains("variantCost"), "{e}");
        let e = v.bounds().unwrap_err().to_string();
        assert!(e.contains(MIN_REPLICAS), "{e}");
        v.metadata.annotations = Some([(MAX_REPLICAS.to_string(), "many".to_string())].into());
        assert!(v.bounds().unwrap_err().to_string().contains("not a count"));
    }
}
