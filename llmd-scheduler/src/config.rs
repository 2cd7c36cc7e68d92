//! llm-d's `EndpointPickerConfig` files.
//!
//! ```yaml
//! apiVersion: inference.networking.x-k8s.io/v1alpha1   # or llm-d.ai/v1alpha1
//! kind: EndpointPickerConfig
//! plugins:
//! - type: prefix-cache-scorer        # name defaults to the type
//!   parameters: {maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
//! - type: queue-scorer
//! - type: max-score-picker
//! schedulingProfiles:
//! - name: default
//!   plugins:
//!   - pluginRef: prefix-cache-scorer
//!     weight: 3
//!   - pluginRef: queue-scorer
//!   - pluginRef: max-score-picker
//! ```
//!
//! Errors name the file, the plugin or profile, and the reason. Unknown fields are
//! ignored (as llm-d's loader does), so files written for newer llm-d versions load.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, SchedulerError};
use crate::plugin::{Filter, PickObserver, Picker, PluginHandle, ProfileHandler, Scorer};
use crate::plugins::pickers::MaxScorePicker;
use crate::plugins::profiles::SingleProfileHandler;
use crate::registry::PluginRegistry;

const API_VERSIONS: [&str; 2] = ["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    feature_gates: Vec<String>,
    #[serde(default)]
    plugins: Vec<RawPlugin>,
    #[serde(default)]
    scheduling_profiles: Vec<RawProfile>,
}

#[derive(Debug, Deserialize)]
struct RawPlugin {
    #[serde(rename = "type")]
    type_name: String,
    name: Option<String>,
    #[serde(default)]
    parameters: Value,
}

#[derive(Debug, Deserialize)]
struct RawProfile {
    name: String,
    #[serde(default)]
    plugins: Vec<RawRef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRef {
    plugin_ref: String,
    weight: Option<f64>,
}

/// One scheduling profile, resolved.
#[derive(Clone)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// Filters, in order.
    pub filters: Vec<(String, Arc<dyn Filter>)>,
    /// Scorers with weights.
    pub scorers: Vec<(String, Arc<dyn Scorer>, f64)>,
    /// The picker (`max-score-picker` when none is referenced).
    pub picker: (String, Arc<dyn Picker>),
    /// Observers among the profile's plugins.
    pub observers: Vec<Arc<dyn PickObserver>>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("filters", &self.filters.iter().map(|f| &f.0).collect::<Vec<_>>())
            .field("scorers", &self.scorers.iter().map(|s| (&s.0, s.2)).collect::<Vec<_>>())
            .field("picker", &self.picker.0)
            .finish()
    }
}

/// A loaded `EndpointPickerConfig`.
#[derive(Clone)]
pub struct SchedulerConfig {
    /// Profiles in file order.
    pub profiles: Vec<Profile>,
    /// The profile handler.
    pub handler: Arc<dyn ProfileHandler>,
    /// `featureGates` as written.
    pub feature_gates: Vec<String>,
    /// Every plugin instance by name.
    pub plugins: BTreeMap<String, PluginHandle>,
}

impl std::fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerConfig").field("profiles", &self.profiles).field("plugins", &self.plugins).finish()
    }
}

impl SchedulerConfig {
    /// Loads a file.
    pub fn from_file(path: &Path, registry: &PluginRegistry) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SchedulerError::config(&file, "(file)", e.to_string()))?;
        Self::from_yaml(&text, &file, registry)
    }

    /// Parses YAML (or JSON) text; `file` names it in errors.
    pub fn from_yaml(text: &str, file: &str, registry: &PluginRegistry) -> Result<Self> {
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|e| SchedulerError::config(file, "(document)", e.to_string()))?;
        if let Some(v) = &raw.api_version
            && !API_VERSIONS.contains(&v.as_str())
        {
            return Err(SchedulerError::config(
                file,
                "apiVersion",
                format!("{v:?} is not one of {}", API_VERSIONS.join(", ")),
            ));
        }
        if let Some(k) = &raw.kind
            && k != "EndpointPickerConfig"
        {
            return Err(SchedulerError::config(file, "kind", format!("{k:?} is not EndpointPickerConfig")));
        }
        let raw_params: HashMap<String, Value> = raw
            .plugins
            .iter()
            .map(|p| (p.name.clone().unwrap_or_else(|| p.type_name.clone()), p.parameters.clone()))
            .collect();
        let mut plugins = BTreeMap::new();
        for p in &raw.plugins {
            let name = p.name.clone().unwrap_or_else(|| p.type_name.clone());
            let what = format!("plugin {name:?}");
            let factory = registry.get(&p.type_name).ok_or_else(|| {
                SchedulerError::config(
                    file,
                    &what,
                    format!(
                        "unknown plugin type {:?} (known: {})",
                        p.type_name,
                        registry.types().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            let mut params =
                if p.parameters.is_null() { Value::Object(Default::default()) } else { p.parameters.clone() };
            // The P/D handler takes its threshold from the decider it names.
            if p.type_name == "pd-profile-handler" || p.type_name == "disagg-profile-handler" {
                let decider = params
                    .get("deciderPluginName")
                    .or_else(|| params.get("deciders").and_then(|d| d.get("prefill")))
                    .and_then(Value::as_str)
                    .map(String::from);
                if let Some(d) = decider {
                    let dp = raw_params.get(&d).ok_or_else(|| {
                        SchedulerError::config(file, &what, format!("decider {d:?} is not a configured plugin"))
                    })?;
                    if let (Some(n), Some(obj)) = (dp.get("nonCachedTokens"), params.as_object_mut()) {
                        obj.insert("nonCachedTokens".into(), n.clone());
                    }
                }
            }
            let handle = factory(&name, &params).map_err(|reason| SchedulerError::config(file, &what, reason))?;
            if plugins.insert(name.clone(), handle).is_some() {
                return Err(SchedulerError::config(file, &what, "two plugins have this name; give one a `name`"));
            }
        }

        let mut profiles = Vec::new();
        for rp in &raw.scheduling_profiles {
            let what = format!("schedulingProfiles[{:?}]", rp.name);
            let mut prof = Profile {
                name: rp.name.clone(),
                filters: Vec::new(),
                scorers: Vec::new(),
                picker: ("max-score-picker".into(), Arc::new(MaxScorePicker)),
                observers: Vec::new(),
            };
            let mut picked = false;
            for r in &rp.plugins {
                let h = plugins.get(&r.plugin_ref).ok_or_else(|| {
                    SchedulerError::config(file, &what, format!("pluginRef {:?} names no plugin", r.plugin_ref))
                })?;
                let mut used = false;
                if let Some(f) = &h.filter {
                    prof.filters.push((h.name.clone(), f.clone()));
                    used = true;
                }
                if let Some(s) = &h.scorer {
                    let w = r.weight.unwrap_or(1.0);
                    if !(w.is_finite() && w >= 0.0) {
                        return Err(SchedulerError::config(
                            file,
                            &what,
                            format!("weight of {:?} must be >= 0", h.name),
                        ));
                    }
                    prof.scorers.push((h.name.clone(), s.clone(), w));
                    used = true;
                }
                if let Some(p) = &h.picker {
                    if picked {
                        return Err(SchedulerError::config(file, &what, "more than one picker"));
                    }
                    prof.picker = (h.name.clone(), p.clone());
                    picked = true;
                    used = true;
                }
                if let Some(o) = &h.observer {
                    prof.observers.push(o.clone());
                }
                if !used {
                    return Err(SchedulerError::config(
                        file,
                        &what,
                        format!("{:?} ({}) is not a filter, scorer or picker", h.name, h.type_name),
                    ));
                }
            }
            profiles.push(prof);
        }
        if profiles.is_empty() {
            return Err(SchedulerError::config(file, "schedulingProfiles", "at least one profile is required"));
        }
        let handlers: Vec<&PluginHandle> = plugins.values().filter(|h| h.profile_handler.is_some()).collect();
        let handler: Arc<dyn ProfileHandler> = match handlers.as_slice() {
            [] if profiles.len() == 1 => Arc::new(SingleProfileHandler),
            [] => {
                return Err(SchedulerError::config(
                    file,
                    "plugins",
                    "several profiles need a profile handler (e.g. pd-profile-handler)",
                ));
            }
            [h] => h.profile_handler.clone().unwrap_or_else(|| Arc::new(SingleProfileHandler)),
            _ => return Err(SchedulerError::config(file, "plugins", "more than one profile handler")),
        };
        for need in handler.required_profiles() {
            if !profiles.iter().any(|p| p.name == need) {
                return Err(SchedulerError::config(
                    file,
                    "schedulingProfiles",
                    format!("the profile handler needs a profile named {need:?}"),
                ));
            }
        }
        Ok(SchedulerConfig { profiles, handler, feature_gates: raw.feature_gates, plugins })
    }
}
