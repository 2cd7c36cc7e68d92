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
//! errors, as in llm-d-router's loader (strict decoding), so a misspelt section is not
//! silently dropped. As there, a config without `schedulingProfiles` gets one `default`
//! profile of every filter, scorer and picker it defines, and profile entries that are
//! neither (producers, say) are skipped.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::datalayer::DataLayerConfig;
use crate::error::{Result, SchedulerError};
use crate::plugin::{Filter, PickObserver, Picker, PluginHandle, ProfileHandler, Scorer};
use crate::plugins::pickers::MaxScorePicker;
use crate::plugins::profiles::SingleProfileHandler;
use crate::registry::PluginRegistry;

// llm-d-router reads `llm-d.ai/v1alpha1` and the deprecated
// `inference.networking.x-k8s.io/v1alpha1`; `llm-d.ai/v1` is accepted ahead of it.
const API_VERSIONS: [&str; 3] = ["llm-d.ai/v1alpha1", "llm-d.ai/v1", "inference.networking.x-k8s.io/v1alpha1"];

// llm-d-router's feature gates (`cmd/epp/runner/runner.go`), with their defaults, and
// `prepareDataPlugins` from llm-d-inference-scheduler's configs (now always on there).
const FEATURE_GATES: [(&str, bool); 3] =
    [("flowControl", false), ("haPopulateNonLeaderDatastore", true), ("prepareDataPlugins", true)];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    feature_gates: Vec<String>,
    #[serde(default)]
    plugins: Vec<RawPlugin>,
    #[serde(default)]
    scheduling_profiles: Vec<RawProfile>,
    data_layer: Option<RawDataLayer>,
    // Checked and resolved by `flowcontrol::resolve`.
    flow_control: Option<Value>,
    // Deprecated top-level spellings of flowControl.saturationDetector and
    // requestHandler.parsers.
    saturation_detector: Option<RawPluginRef>,
    request_handler: Option<RawRequestHandler>,
    parser: Option<RawPluginRef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDataLayer {
    discovery: Option<RawPluginRef>,
    inject_defaults: Option<bool>,
    #[serde(default)]
    sources: Vec<RawSource>,
    peer_discovery: Option<RawPluginRef>,
    cross_replica_syncer_plugin_ref: Option<String>,
    // Accepted for its shape only: without a syncer it does nothing.
    #[allow(dead_code)]
    cross_replica_sync_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRequestHandler {
    #[serde(default)]
    parsers: Vec<RawPluginRef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSource {
    plugin_ref: String,
    #[serde(default)]
    extractors: Vec<RawPluginRef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPluginRef {
    plugin_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    #[serde(rename = "type")]
    type_name: String,
    name: Option<String>,
    #[serde(default)]
    parameters: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    plugins: Vec<RawRef>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRef {
    plugin_ref: String,
    weight: Option<f64>,
}

// dataLayer.sources wired to plugins, with llm-d's default injection: a metrics source
// feeding the core extractor unless one is configured, and KV events to every consumer
// unless a KV-event source is configured.
fn resolve_data_layer(
    raw: Option<&RawDataLayer>,
    plugins: &BTreeMap<String, PluginHandle>,
    file: &str,
) -> Result<DataLayerConfig> {
    use crate::datalayer::{SourceBinding, SourceKind};
    let all_consumers: Vec<_> = plugins.values().filter_map(|h| h.kv_events.clone()).collect();
    let Some(raw) = raw else { return Ok(DataLayerConfig::defaults(all_consumers)) };
    let mut sources = Vec::new();
    for (i, rs) in raw.sources.iter().enumerate() {
        let what = format!("dataLayer.sources[{i}]");
        let h = plugins.get(&rs.plugin_ref).ok_or_else(|| {
            SchedulerError::config(file, &what, format!("pluginRef {:?} names no plugin", rs.plugin_ref))
        })?;
        let kind = h.source.clone().ok_or_else(|| {
            SchedulerError::config(file, &what, format!("{:?} ({}) is not a data source", h.name, h.type_name))
        })?;
        let mut binding =
            SourceBinding { name: h.name.clone(), kind: kind.clone(), extractors: Vec::new(), consumers: Vec::new() };
        for x in &rs.extractors {
            let e = plugins.get(&x.plugin_ref).ok_or_else(|| {
                SchedulerError::config(file, &what, format!("extractor pluginRef {:?} names no plugin", x.plugin_ref))
            })?;
            match (&kind, &e.extractor, &e.kv_events) {
                (SourceKind::Metrics { .. }, Some(ex), _) => binding.extractors.push((e.name.clone(), ex.clone())),
                (SourceKind::KvEvents, _, Some(c)) => binding.consumers.push(c.clone()),
                // The router's mm-embeddings-cache-producer reads endpoint deletions from
                // this source; llmd tells it through its observer's `forget` instead.
                (SourceKind::KvEvents, _, None) if e.type_name == crate::plugins::mmcache::PRODUCER_TYPE => {}
                _ => {
                    return Err(SchedulerError::config(
                        file,
                        &what,
                        format!("{:?} ({}) cannot read what {:?} fetches", e.name, e.type_name, h.name),
                    ));
                }
            }
        }
        sources.push(binding);
    }
    if raw.inject_defaults.unwrap_or(true) {
        // As llm-d-router: the defaults come unless a source of their own type is
        // configured (a DCGM source scrapes metrics too, but not the engine's).
        let types: Vec<&str> =
            raw.sources.iter().filter_map(|rs| plugins.get(&rs.plugin_ref).map(|h| h.type_name.as_str())).collect();
        // Either KV-event source type (llmd's or the router's) stands for the default.
        let has_kv = sources.iter().any(|s: &SourceBinding| matches!(s.kind, SourceKind::KvEvents));
        for d in DataLayerConfig::defaults(all_consumers).sources {
            let kv = matches!(d.kind, SourceKind::KvEvents);
            if !(types.contains(&d.name.as_str()) || kv && has_kv) {
                sources.push(d);
            }
        }
    }
    Ok(DataLayerConfig { sources })
}

/// llm-d-router splits approximate prefix matching into `approx-prefix-cache-producer`
/// (which hashes prompts and remembers where they went) and `prefix-cache-scorer`
/// (which reads the producer's match); llmd's `prefix-cache-scorer` does both, so it
/// takes its matching parameters from the producer it names (`prefixMatchInfoProducerName`,
/// default `approx-prefix-cache-producer`), with the router's defaults: up to
/// `maxPrefixTokensToMatch` (131 072) tokens, or `maxPrefixBlocksToMatch` when that is
/// 0. Its blocks stay `blockSizeTokens` long (16) where the router floors them at 64.
fn bind_prefix_producers(
    named: &[(String, String, Value)],
    plugins: &mut BTreeMap<String, PluginHandle>,
) -> std::result::Result<(), (String, String)> {
    // A precise producer scores only through a prefix-cache-scorer that names it.
    type Precise = (Arc<dyn crate::plugin::Scorer>, Option<Arc<dyn crate::plugin::PickObserver>>);
    let mut precise: BTreeMap<String, Precise> = BTreeMap::new();
    // So does a burst producer (its window's placements, read by request id).
    for (name, _, _) in
        named.iter().filter(|(_, t, _)| t == "precise-prefix-cache-producer" || t == crate::plugins::burst::TYPE)
    {
        if let Some(h) = plugins.get_mut(name)
            && let Some(s) = h.scorer.take()
        {
            precise.insert(name.clone(), (s, h.observer.take()));
        }
    }
    let scorers = ["prefix-cache-scorer", crate::plugins::multicluster::PREFIX_CACHE_SCORER];
    for (name, _, params) in named.iter().filter(|(_, t, _)| scorers.contains(&t.as_str())) {
        let fail = |e: String| (name.clone(), e);
        let want = crate::plugins::Params(params)
            .string("prefixMatchInfoProducerName")
            .map_err(fail)?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "approx-prefix-cache-producer".into());
        if let Some((s, o)) = precise.get(&want) {
            if let Some(h) = plugins.get_mut(name) {
                h.scorer = Some(s.clone());
                h.observer = o.clone();
            }
            continue;
        }
        let Some((_, t, producer)) = named.iter().find(|(n, _, _)| *n == want) else {
            continue;
        };
        if t != "approx-prefix-cache-producer" && t != crate::plugins::multicluster::APPROX_PREFIX_CACHE_PRODUCER {
            return Err(fail(format!(
                "prefixMatchInfoProducerName {want:?} is a {t}, which produces no prefix match information llmd reads \
                 (approx-prefix-cache-producer, multicluster-approx-prefix-cache-producer, \
                 precise-prefix-cache-producer or burst-prefix-cache-producer)"
            )));
        }
        let q = crate::plugins::Params(producer);
        let block = q.u64("blockSizeTokens", 16).map_err(fail)?.max(1);
        let max_blocks = match q.u64("maxPrefixTokensToMatch", 131_072).map_err(fail)? {
            0 => q.u64("maxPrefixBlocksToMatch", 2048).map_err(fail)?,
            tokens => (tokens / block).max(1),
        };
        let mut merged = serde_json::json!({
            "blockSizeTokens": block,
            // 0 means no limit in the router.
            "maxPrefixBlocksToMatch": if max_blocks == 0 { u64::from(u32::MAX) } else { max_blocks },
        });
        if let (Some(cap), Some(obj)) = (producer.get("lruCapacityPerServer"), merged.as_object_mut()) {
            obj.insert("lruCapacityPerServer".into(), cap.clone());
        }
        let scorer = Arc::new(crate::plugins::prefix::PrefixCacheScorer::from_params(&merged).map_err(fail)?);
        if let Some(h) = plugins.get_mut(name) {
            h.scorer = Some(scorer.clone());
            h.observer = Some(scorer);
        }
    }
    Ok(())
}

/// `featureGates` entries (`name`, `name=true`, `name=false`) over the known gates'
/// defaults; unknown gates and values are errors, as in llm-d-router.
fn feature_gates(entries: &[String]) -> std::result::Result<BTreeMap<String, bool>, String> {
    let mut gates: BTreeMap<String, bool> = FEATURE_GATES.iter().map(|(n, d)| (n.to_string(), *d)).collect();
    for entry in entries {
        let (name, value) = match entry.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (entry.trim(), None),
        };
        if !gates.contains_key(name) {
            let known: Vec<&str> = FEATURE_GATES.iter().map(|g| g.0).collect();
            return Err(format!("feature gate {name:?} is unknown (known: {})", known.join(", ")));
        }
        // Go's strconv.ParseBool, which the router uses.
        let on = match value {
            None => true,
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
            Some(v) => return Err(format!("{v:?} is not a valid value for the feature gate {name:?}")),
        };
        gates.insert(name.to_string(), on);
    }
    Ok(gates)
}

// Sections llm-d-router acts on that llmd does not build yet: refused with the reason,
// not dropped, so no one runs without the load shedding or parsing they configured.
// `flowControl` without its feature gate is ignored, as in the router (which warns).
fn check_unbuilt_sections(
    raw: &RawConfig,
    plugins: &BTreeMap<String, PluginHandle>,
    flow_control_gate: bool,
    file: &str,
) -> Result<Option<crate::flowcontrol::FlowControlConfig>> {
    let detector_in_section = raw
        .flow_control
        .as_ref()
        .and_then(|f| f.get("saturationDetector"))
        .and_then(|d| d.get("pluginRef"))
        .and_then(Value::as_str);
    let detector = match (detector_in_section, raw.saturation_detector.as_ref()) {
        (Some(d), _) => Some(("flowControl.saturationDetector", d)),
        (None, Some(d)) => Some(("saturationDetector", d.plugin_ref.as_str())),
        (None, None) => None,
    };
    let flow = crate::flowcontrol::resolve(raw.flow_control.as_ref(), detector, plugins, flow_control_gate)
        .map_err(|(what, reason)| SchedulerError::config(file, what, reason))?;
    if raw.flow_control.is_some() && !flow_control_gate {
        tracing::warn!(file, "the flowControl section is set but the flowControl feature gate is off; ignored");
    }
    if let Some(dl) = &raw.data_layer {
        let unbuilt = [
            dl.peer_discovery.as_ref().map(|_| "dataLayer.peerDiscovery"),
            dl.cross_replica_syncer_plugin_ref.as_ref().map(|_| "dataLayer.crossReplicaSyncerPluginRef"),
        ];
        if let Some(what) = unbuilt.into_iter().flatten().next() {
            return Err(SchedulerError::config(
                file,
                what,
                "not supported (llm-d-router registers no such plugin either)",
            ));
        }
    }
    Ok(flow)
}

/// `requestHandler.parsers` (or the deprecated top-level `parser`): each reference names
/// a parser plugin, or a parser type, which is then made as llm-d-router makes it.
/// `None` when the file names none: the picker then reads every path's body as OpenAI's.
fn resolve_parsers(
    raw: &RawConfig,
    plugins: &BTreeMap<String, PluginHandle>,
    file: &str,
) -> Result<Option<crate::parsers::ParserSet>> {
    use crate::parsers::{BodyParser, ParserSet};
    let (what, refs): (&str, Vec<&RawPluginRef>) = match (&raw.request_handler, &raw.parser) {
        (Some(rh), _) if !rh.parsers.is_empty() => ("requestHandler.parsers", rh.parsers.iter().collect()),
        (_, Some(p)) => ("parser", vec![p]),
        _ => return Ok(None),
    };
    let mut list = Vec::new();
    for r in refs {
        let name = &r.plugin_ref;
        let parser = match plugins.get(name) {
            Some(h) => h.parser.ok_or_else(|| {
                SchedulerError::config(file, what, format!("{name:?} ({}) is not a parser plugin", h.type_name))
            })?,
            // A reference to a parser type not listed among the plugins makes one, as
            // the router does.
            None => BodyParser::from_type(name).ok_or_else(|| {
                SchedulerError::config(file, what, format!("parser references undefined plugin {name:?}"))
            })?,
        };
        list.push(parser);
    }
    Ok(Some(ParserSet::new(&list)))
}

/// An endpoint discovery plugin named by `dataLayer.discovery` (llm-d's
/// `file-discovery` and `multicluster-file-discovery`: `path`, `watchFile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryRef {
    /// Endpoints from a file, re-read on change when `watch`.
    File {
        /// The endpoints file.
        path: std::path::PathBuf,
        /// Whether to follow changes.
        watch: bool,
    },
    /// `multicluster-file-discovery`: peer clusters from a file of the same format
    /// ([`FileDiscovery::multicluster`](crate::FileDiscovery::multicluster)), each
    /// scraped at its `metricsAddress`/`metricsPort` labels when set.
    MultiClusterFile {
        /// The endpoints file.
        path: std::path::PathBuf,
        /// Whether to follow changes.
        watch: bool,
    },
}

impl DiscoveryRef {
    fn from_plugin(type_name: &str, params: &Value) -> std::result::Result<Self, String> {
        let q = crate::plugins::Params(params);
        match type_name {
            "file-discovery" => Ok(DiscoveryRef::File {
                path: q.string("path")?.ok_or("parameter path is required")?.into(),
                watch: q.bool("watchFile", false)?,
            }),
            crate::plugins::multicluster::FILE_DISCOVERY => Ok(DiscoveryRef::MultiClusterFile {
                path: q.string("path")?.ok_or("parameter path is required")?.into(),
                watch: q.bool("watchFile", false)?,
            }),
            other => {
                Err(format!("{other:?} is not a discovery plugin (known: file-discovery, multicluster-file-discovery)"))
            }
        }
    }
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
    /// How long a request counts as in flight when its end is never seen: the shortest
    /// `requestTimeout` of the configured `active-request-scorer`s (default 2 minutes).
    pub request_timeout: std::time::Duration,
    /// The endpoint discovery the config names (`dataLayer.discovery.pluginRef`).
    pub discovery: Option<DiscoveryRef>,
    /// Data sources and their extractors (`dataLayer.sources`, plus the defaults).
    pub data_layer: DataLayerConfig,
    /// Every plugin instance by name.
    pub plugins: BTreeMap<String, PluginHandle>,
    /// The request parsers `requestHandler.parsers` names; `None` reads every body as
    /// OpenAI's.
    pub parsers: Option<crate::parsers::ParserSet>,
    /// Admission: the `flowControl` section and its saturation detector (`enabled` is
    /// the feature gate; off, the router's legacy admission with the same detector).
    pub flow_control: Option<crate::flowcontrol::FlowControlConfig>,
    /// The request-control plugins (header processors, producers, screeners,
    /// pre-request and response plugins), in file order.
    pub request_control: crate::plugins::requestcontrol::RequestControlChain,
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
        let gates = feature_gates(&raw.feature_gates).map_err(|e| SchedulerError::config(file, "featureGates", e))?;
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
            let params = if p.parameters.is_null() { Value::Object(Default::default()) } else { p.parameters.clone() };
            let handle = factory(&name, &params).map_err(|reason| SchedulerError::config(file, &what, reason))?;
            if plugins.insert(name.clone(), handle).is_some() {
                return Err(SchedulerError::config(file, &what, "two plugins have this name; give one a `name`"));
            }
        }

        // Plugins that read another plugin of the file (P/D handlers their decider,
        // topology plugins their extractor, the prefix scorer its producer) are bound to
        // it once every plugin exists, wherever it sits in the file.
        let named: Vec<(String, String, Value)> = raw
            .plugins
            .iter()
            .map(|p| (p.name.clone().unwrap_or_else(|| p.type_name.clone()), p.type_name.clone(), p.parameters.clone()))
            .collect();
        for bind in [
            crate::plugins::topology::bind,
            bind_prefix_producers,
            crate::plugins::profiles::bind,
            crate::plugins::latency::bind,
            crate::plugins::mmcache::bind,
        ] {
            bind(&named, &mut plugins)
                .map_err(|(name, e)| SchedulerError::config(file, format!("plugin {name:?}"), e))?;
        }

        let request_control =
            crate::plugins::requestcontrol::RequestControlChain::new(named.iter().filter_map(|(n, _, _)| {
                plugins.get(n).and_then(|h| h.request_control.clone()).map(|rc| (n.clone(), rc))
            }));
        let mut request_timeout = crate::plugins::scorers::DEFAULT_REQUEST_TIMEOUT;
        for p in raw.plugins.iter().filter(|p| p.type_name == "active-request-scorer") {
            if let Ok(s) = crate::plugins::scorers::ActiveRequestScorer::from_params(&p.parameters) {
                request_timeout = request_timeout.min(s.request_timeout());
            }
        }

        let flow_control =
            check_unbuilt_sections(&raw, &plugins, gates.get("flowControl").copied().unwrap_or(false), file)?;

        // No profiles: one `default` profile of every filter, scorer and picker, in file
        // order (llm-d-router's `ensureSchedulingLayer`).
        let default_profile;
        let raw_profiles = if raw.scheduling_profiles.is_empty() {
            let refs = raw
                .plugins
                .iter()
                .map(|p| p.name.clone().unwrap_or_else(|| p.type_name.clone()))
                .filter(|n| {
                    plugins.get(n).is_some_and(|h| h.filter.is_some() || h.scorer.is_some() || h.picker.is_some())
                })
                .map(|plugin_ref| RawRef { plugin_ref, weight: None })
                .collect();
            default_profile = [RawProfile { name: "default".into(), plugins: refs }];
            &default_profile[..]
        } else {
            &raw.scheduling_profiles[..]
        };
        let mut profiles = Vec::new();
        for rp in raw_profiles {
            let what = format!("schedulingProfiles[{:?}]", rp.name);
            let mut prof = Profile {
                name: rp.name.clone(),
                filters: Vec::new(),
                scorers: Vec::new(),
                picker: ("max-score-picker".into(), Arc::new(MaxScorePicker::default())),
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
                    // As llm-d-router does: a producer or handler listed in a profile
                    // does its work elsewhere.
                    tracing::debug!(file, profile = %rp.name, plugin = %h.name, "not a filter, scorer or picker; skipped in the profile");
                }
            }
            profiles.push(prof);
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
        let data_layer = resolve_data_layer(raw.data_layer.as_ref(), &plugins, file)?;
        let parsers = resolve_parsers(&raw, &plugins, file)?;
        let discovery = match raw.data_layer.and_then(|d| d.discovery) {
            None => None,
            Some(r) => {
                let (ty, params) = raw
                    .plugins
                    .iter()
                    .find(|p| p.name.as_ref().unwrap_or(&p.type_name) == &r.plugin_ref)
                    .map(|p| (p.type_name.clone(), p.parameters.clone()))
                    .ok_or_else(|| {
                        SchedulerError::config(
                            file,
                            "dataLayer.discovery",
                            format!("pluginRef {:?} names no plugin", r.plugin_ref),
                        )
                    })?;
                Some(DiscoveryRef::from_plugin(&ty, &params).map_err(|e| {
                    SchedulerError::config(file, "dataLayer.discovery", format!("{:?}: {e}", r.plugin_ref))
                })?)
            }
        };
        Ok(SchedulerConfig {
            profiles,
            handler,
            feature_gates: raw.feature_gates,
            request_timeout,
            discovery,
            data_layer,
            plugins,
            parsers,
            flow_control,
            request_control,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Endpoint, Role};
    use crate::plugin::CycleState;
    use crate::request::LlmRequest;
    use crate::scheduler::Scheduler;

    /// llm-d's tiered-prefix-cache guide (CPU offload, approximate scoring): two
    /// approximate producers, one per tier, each read by its own prefix-cache-scorer.
    #[test]
    fn the_tiered_prefix_cache_cpu_guide_loads_and_picks() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/tiered-prefix-cache-cpu.yaml");
        let cfg = SchedulerConfig::from_file(&path, &PluginRegistry::with_builtins()).unwrap();
        let p = &cfg.profiles[0];
        assert_eq!((cfg.profiles.len(), p.name.as_str()), (1, "default"));
        let scorers: Vec<(&str, f64)> = p.scorers.iter().map(|s| (s.0.as_str(), s.2)).collect();
        assert_eq!(
            scorers,
            [
                ("queue-scorer", 1.0),
                ("kv-cache-utilization-scorer", 1.0),
                ("gpu-prefix-cache-scorer", 1.0),
                ("cpu-prefix-cache-scorer", 1.0),
                ("no-hit-lru-scorer", 1.0)
            ]
        );
        assert_eq!(p.picker.0, "max-score-picker");
        // Each tier's scorer keeps its own history, as large as its producer says: the
        // GPU one the router's default (31 250 blocks), the CPU one 82 000.
        let tier = |name: &str| {
            let h = &cfg.plugins[name];
            (h.scorer.clone().unwrap(), h.observer.clone().unwrap())
        };
        let (gpu, gpu_obs) = tier("gpu-prefix-cache-scorer");
        let (cpu, cpu_obs) = tier("cpu-prefix-cache-scorer");
        let eps = [Endpoint::new("a", "10.0.0.1:8000", Role::Both), Endpoint::new("b", "10.0.0.2:8000", Role::Both)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        // 64 prompts of 512 blocks (16 tokens each) sent to `a`: 32 768 blocks, past the
        // GPU history's capacity and within the CPU one's.
        let prompt = |i: u32| {
            let mut r = LlmRequest::new(format!("r{i}"), "m", "");
            r.token_ids = Some((0..512 * 16).map(|t| t + i * 100_000).collect());
            r
        };
        for i in 0..64 {
            let mut st = CycleState::default();
            gpu.score(&mut st, &prompt(i), &refs);
            gpu_obs.on_pick(&st, &prompt(i), "default", &eps[0]);
            cpu_obs.on_pick(&st, &prompt(i), "default", &eps[0]);
        }
        let first = prompt(0);
        assert_eq!(gpu.score(&mut CycleState::default(), &first, &refs), [0.0, 0.0], "evicted from the GPU history");
        assert_eq!(cpu.score(&mut CycleState::default(), &first, &refs), [1.0, 0.0], "still in the CPU history");
        let last = prompt(63);
        assert_eq!(gpu.score(&mut CycleState::default(), &last, &refs), [1.0, 0.0]);

        // Picks: the prompt only the CPU tier remembers still goes to `a` (the other
        // scorers see two idle endpoints alike), and a pick teaches both tiers.
        let sched = Scheduler::new(cfg, 7);
        let pick = sched.pick(&first, &eps).unwrap();
        assert_eq!(pick.destination().unwrap().endpoint, "a");
        assert_eq!(gpu.score(&mut CycleState::default(), &first, &refs), [1.0, 0.0]);
        let fresh = prompt(1000);
        let pick = sched.pick(&fresh, &eps).unwrap();
        let to = pick.destination().unwrap().endpoint.clone();
        let at = if to == "a" { [1.0, 0.0] } else { [0.0, 1.0] };
        assert_eq!(gpu.score(&mut CycleState::default(), &fresh, &refs), at);
        assert_eq!(cpu.score(&mut CycleState::default(), &fresh, &refs), at);
    }
}
