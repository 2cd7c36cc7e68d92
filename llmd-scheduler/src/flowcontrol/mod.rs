//! Flow control, as llm-d-router has it: a bounded queue in front of scheduling, with
//! priority bands, fairness between flows, ordering within a flow, saturation detection,
//! usage limits and eviction. (Being built: see issue 11.)

use std::collections::BTreeMap;

use crate::plugin::PluginHandle;
use crate::registry::PluginRegistry;

/// A flow-control plugin of the config's `plugins` list (policies and detectors).
#[derive(Debug, Clone)]
pub enum FlowPlugin {}

/// The resolved `flowControl` section.
#[derive(Debug, Clone, Default)]
pub struct FlowControlConfig {}

/// Registers the flow-control plugin types.
pub fn register(_r: &mut PluginRegistry) {}

/// Resolves the `flowControl` section (`section`, as written; `None` when absent) and
/// the saturation detector it or the deprecated top-level `saturationDetector` names,
/// against the file's plugins. `gate` is the `flowControl` feature gate. `Ok(None)`:
/// flow control is off. Errors name the field (`what`) and the reason.
pub fn resolve(
    section: Option<&serde_json::Value>,
    detector: Option<(&str, &str)>,
    _plugins: &BTreeMap<String, PluginHandle>,
    gate: bool,
) -> Result<Option<FlowControlConfig>, (String, String)> {
    if let Some(v) = section {
        serde_json::from_value::<RawFlowControl>(v.clone()).map_err(|e| ("flowControl".to_string(), e.to_string()))?;
    }
    if let Some((what, d)) = detector {
        return Err((what.into(), format!("{d:?}: saturation detectors are not built in llmd yet")));
    }
    if section.is_some() && gate {
        return Err((
            "flowControl".into(),
            "flow control (priority bands, fairness, ordering, usage limits) is not built in llmd yet; \
             leave the flowControl feature gate off to load this file without it"
                .into(),
        ));
    }
    Ok(None)
}

// The section's shape, checked so that misspellings are caught even with the gate off.
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFlowControl {
    max_bytes: Option<serde_json::Value>,
    max_requests: Option<serde_json::Value>,
    #[serde(rename = "defaultRequestTTL")]
    default_request_ttl: Option<String>,
    #[serde(rename = "noEndpointRequestTTL")]
    no_endpoint_request_ttl: Option<String>,
    default_priority_band: Option<RawPriorityBand>,
    default_negative_priority_band: Option<RawPriorityBand>,
    #[serde(default)]
    priority_bands: Vec<RawPriorityBand>,
    usage_limit_policy_plugin_ref: Option<String>,
    saturation_detector: Option<serde_json::Value>,
    enable_eviction: Option<bool>,
}

#[allow(dead_code)]
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPriorityBand {
    priority: Option<i64>,
    max_bytes: Option<serde_json::Value>,
    max_requests: Option<serde_json::Value>,
    fairness_policy_ref: Option<String>,
    ordering_policy_ref: Option<String>,
}
