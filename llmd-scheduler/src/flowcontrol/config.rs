//! The resolved `flowControl` section: the controller's budgets and eviction switch, the
//! priority bands with their capacities and policies, the usage-limit policy and the
//! saturation detector; and its resolution against the file's plugins, with the router's
//! defaults (`pkg/epp/config/loader/flowcontrol.go`, `flowcontrol/registry/config.go`,
//! `flowcontrol/controller/config.go`) and the implicit default plugins.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::FlowPlugin;
use super::policies::fairness::{GLOBAL_STRICT, GlobalStrict};
use super::policies::ordering::{FCFS, Fcfs};
use super::policies::saturation::{CONCURRENCY, UTILIZATION, Utilization, UtilizationConfig};
use super::policies::usage::{STATIC, StaticUsageLimit};
use super::policies::{FairnessPolicy, OrderingPolicy, SaturationDetector, UsageLimitPolicy};
use super::quantity::{go_duration_string, parse_go_duration, parse_quantity};
use crate::plugin::PluginHandle;

/// A band's default byte capacity (1 GB).
pub const DEFAULT_BAND_MAX_BYTES: u64 = 1_000_000_000;
/// A band's default request capacity.
pub const DEFAULT_BAND_MAX_REQUESTS: u64 = 5000;
/// The default queue-wait budget (both regimes).
pub const DEFAULT_REQUEST_TTL: Duration = Duration::from_secs(60);

/// The flow controller's settings (the router's `controller.Config`).
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// Queue-wait budget while the pool has endpoints (`defaultRequestTTL`, 60s); zero:
    /// none (requests wait until dispatched or cancelled).
    pub default_request_ttl: Duration,
    /// Queue-wait budget while the pool has no endpoints (`noEndpointRequestTTL`; follows
    /// `defaultRequestTTL` when only that is set, else 60s); zero: none. Each change of
    /// regime starts a fresh budget.
    pub no_endpoint_request_ttl: Duration,
    /// How often expired items are swept (1s); also sizes the hard deadline of a
    /// request: the larger budget plus twice this.
    pub expiry_cleanup_interval: Duration,
    /// Whether in-flight sheddable requests may be revoked for blocked higher-priority
    /// work (`enableEviction`, false).
    pub enable_eviction: bool,
    /// Revocations per reclamation decision (2; not configurable in the router).
    pub max_revocations_per_decision: usize,
    /// How long a confirmed revocation keeps further reclamation paused (the router
    /// derives it from the detector: 10ms for `concurrency-detector`, else the metrics
    /// refresh interval + staleness threshold + 250ms, 2.3s with its flag defaults).
    pub eviction_confirmation_grace: Duration,
    /// How long an unconfirmed revocation holds reclamation paused (10s).
    pub eviction_confirmation_timeout: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_request_ttl: DEFAULT_REQUEST_TTL,
            no_endpoint_request_ttl: DEFAULT_REQUEST_TTL,
            expiry_cleanup_interval: Duration::from_secs(1),
            enable_eviction: false,
            max_revocations_per_decision: 2,
            eviction_confirmation_grace: Duration::from_millis(500),
            eviction_confirmation_timeout: Duration::from_secs(10),
        }
    }
}

/// The eviction confirmation grace the router derives for a detector type: its
/// confirmation-to-visibility lag (`refresh` and `staleness` are the metrics refresh
/// interval and staleness threshold; the router's defaults are 50ms and 2s).
pub fn eviction_confirmation_grace(detector_type: &str, refresh: Duration, staleness: Duration) -> Duration {
    if detector_type == CONCURRENCY {
        Duration::from_millis(10)
    } else {
        refresh + staleness + Duration::from_millis(250)
    }
}

/// One priority band: its capacities and policies.
#[derive(Clone)]
pub struct PriorityBandConfig {
    /// The priority (higher is more important).
    pub priority: i32,
    /// Byte capacity (1 GB by default).
    pub max_bytes: u64,
    /// Request capacity (5000 by default).
    pub max_requests: u64,
    /// The fairness policy's plugin name.
    pub fairness_name: String,
    /// The fairness policy.
    pub fairness: Arc<dyn FairnessPolicy>,
    /// The ordering policy's plugin name.
    pub ordering_name: String,
    /// The ordering policy.
    pub ordering: Arc<dyn OrderingPolicy>,
}

impl std::fmt::Debug for PriorityBandConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriorityBandConfig")
            .field("priority", &self.priority)
            .field("max_bytes", &self.max_bytes)
            .field("max_requests", &self.max_requests)
            .field("fairness", &self.fairness_name)
            .field("ordering", &self.ordering_name)
            .finish()
    }
}

impl PriorityBandConfig {
    /// A band at `priority` with the default capacities, FCFS ordering and global-strict
    /// fairness.
    pub fn new(priority: i32) -> Self {
        PriorityBandConfig {
            priority,
            max_bytes: DEFAULT_BAND_MAX_BYTES,
            max_requests: DEFAULT_BAND_MAX_REQUESTS,
            fairness_name: GLOBAL_STRICT.into(),
            fairness: Arc::new(GlobalStrict),
            ordering_name: FCFS.into(),
            ordering: Arc::new(Fcfs),
        }
    }

    /// The band with fairness policy `p` named `name`.
    pub fn with_fairness(mut self, name: &str, p: Arc<dyn FairnessPolicy>) -> Self {
        self.fairness_name = name.into();
        self.fairness = p;
        self
    }

    /// The band with ordering policy `p` named `name`.
    pub fn with_ordering(mut self, name: &str, p: Arc<dyn OrderingPolicy>) -> Self {
        self.ordering_name = name.into();
        self.ordering = p;
        self
    }

    /// The band with capacities (0 keeps the default, as in the router).
    pub fn with_capacity(mut self, max_bytes: u64, max_requests: u64) -> Self {
        if max_bytes > 0 {
            self.max_bytes = max_bytes;
        }
        if max_requests > 0 {
            self.max_requests = max_requests;
        }
        self
    }
}

/// The bands and global capacities (the router's `registry.Config`).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Global byte capacity; 0: unlimited.
    pub max_bytes: u64,
    /// Global request capacity; 0: unlimited.
    pub max_requests: u64,
    /// The bands that always exist (band 0 among them).
    pub priority_bands: BTreeMap<i32, PriorityBandConfig>,
    /// The template of bands provisioned for other priorities.
    pub default_band: PriorityBandConfig,
    /// The template for negative priorities, when set (else `default_band`).
    pub default_negative_band: Option<PriorityBandConfig>,
    /// An idle flow is collected after this long (5 minutes).
    pub flow_gc_timeout: Duration,
    /// An idle provisioned band no longer wanted is collected after this long (10
    /// minutes).
    pub band_gc_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig::new(BTreeMap::new(), PriorityBandConfig::new(0), None)
    }
}

impl RegistryConfig {
    /// Bands `bands` plus band 0 (made from `default_band` when not among them).
    pub fn new(
        mut bands: BTreeMap<i32, PriorityBandConfig>,
        default_band: PriorityBandConfig,
        default_negative_band: Option<PriorityBandConfig>,
    ) -> Self {
        bands.entry(0).or_insert_with(|| PriorityBandConfig { priority: 0, ..default_band.clone() });
        RegistryConfig {
            max_bytes: 0,
            max_requests: 0,
            priority_bands: bands,
            default_band,
            default_negative_band,
            flow_gc_timeout: Duration::from_secs(300),
            band_gc_timeout: Duration::from_secs(600),
        }
    }

    /// The configuration a band provisioned for `priority` gets.
    pub fn template_for(&self, priority: i32) -> PriorityBandConfig {
        let t = match &self.default_negative_band {
            Some(n) if priority < 0 => n,
            _ => &self.default_band,
        };
        PriorityBandConfig { priority, ..t.clone() }
    }
}

/// The resolved flow-control settings.
#[derive(Clone)]
pub struct FlowControlConfig {
    /// Whether the flowControl feature gate is on: requests queue in the flow controller.
    /// Off: the legacy admission ([`legacy_admit`](super::admitter::legacy_admit)) with
    /// the same detector; the rest of this config is the defaults.
    pub enabled: bool,
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// The bands and capacities.
    pub registry: RegistryConfig,
    /// The usage-limit policy's plugin name.
    pub usage_limit_name: String,
    /// The usage-limit policy.
    pub usage_limit: Arc<dyn UsageLimitPolicy>,
    /// The saturation detector's plugin name.
    pub detector_name: String,
    /// The saturation detector.
    pub detector: Arc<dyn SaturationDetector>,
    /// Whether the detector was made implicitly (the default `utilization-detector`, not
    /// among the file's plugins).
    pub detector_implicit: bool,
}

impl std::fmt::Debug for FlowControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowControlConfig")
            .field("enabled", &self.enabled)
            .field("controller", &self.controller)
            .field("registry", &self.registry)
            .field("usage_limit", &self.usage_limit_name)
            .field("detector", &self.detector_name)
            .field("detector_implicit", &self.detector_implicit)
            .finish()
    }
}

impl Default for FlowControlConfig {
    fn default() -> Self {
        FlowControlConfig {
            enabled: false,
            controller: ControllerConfig::default(),
            registry: RegistryConfig::default(),
            usage_limit_name: STATIC.into(),
            usage_limit: Arc::new(StaticUsageLimit::default()),
            detector_name: UTILIZATION.into(),
            detector: Arc::new(Utilization::new(UtilizationConfig::default())),
            detector_implicit: true,
        }
    }
}

// The section's shape: unknown keys are refused anywhere in it, as the router's strict
// decoding refuses them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawFlowControl {
    max_bytes: Option<Value>,
    max_requests: Option<Value>,
    #[serde(rename = "defaultRequestTTL")]
    default_request_ttl: Option<String>,
    #[serde(rename = "noEndpointRequestTTL")]
    no_endpoint_request_ttl: Option<String>,
    default_priority_band: Option<RawPriorityBand>,
    default_negative_priority_band: Option<RawPriorityBand>,
    #[serde(default)]
    priority_bands: Vec<RawPriorityBand>,
    #[serde(default)]
    usage_limit_policy_plugin_ref: String,
    #[allow(dead_code)] // read by the config loader, which passes the ref to `resolve`
    saturation_detector: Option<RawDetector>,
    #[serde(default)]
    enable_eviction: bool,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDetector {
    #[allow(dead_code)]
    plugin_ref: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPriorityBand {
    #[serde(default)]
    priority: i32,
    max_bytes: Option<Value>,
    max_requests: Option<Value>,
    #[serde(default)]
    fairness_policy_ref: String,
    #[serde(default)]
    ordering_policy_ref: String,
}

// A config error: the field and the reason.
type Fail = (String, String);

fn fail(what: impl Into<String>, why: impl Into<String>) -> Fail {
    (what.into(), why.into())
}

// The section parsed with every value syntax checked: the router decodes quantities
// and durations while reading the file, whether or not the gate is on.
struct Parsed {
    raw: RawFlowControl,
    max_bytes: Option<i64>,
    max_requests: Option<i64>,
    default_ttl: Option<i128>,
    no_endpoint_ttl: Option<i128>,
    // Per band (default, default negative, then the list): bytes and requests.
    bands: Vec<(Option<i64>, Option<i64>)>,
}

fn quantity(v: &Option<Value>, what: &str) -> Result<Option<i64>, Fail> {
    v.as_ref().map(|q| parse_quantity(q).map_err(|e| fail(what, e))).transpose()
}

fn parse(section: Option<&Value>) -> Result<Parsed, Fail> {
    let raw: RawFlowControl = match section {
        None | Some(Value::Null) => RawFlowControl::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| fail("flowControl", e.to_string()))?,
    };
    let ttl = |v: &Option<String>, what: &str| -> Result<Option<i128>, Fail> {
        v.as_deref().map(|s| parse_go_duration(s).map_err(|e| fail(what, e))).transpose()
    };
    let mut bands = Vec::new();
    let all = raw.default_priority_band.iter().chain(&raw.default_negative_priority_band).chain(&raw.priority_bands);
    for (i, b) in all.enumerate() {
        let what = format!("flowControl band {i}");
        bands.push((quantity(&b.max_bytes, &what)?, quantity(&b.max_requests, &what)?));
    }
    Ok(Parsed {
        max_bytes: quantity(&raw.max_bytes, "flowControl.maxBytes")?,
        max_requests: quantity(&raw.max_requests, "flowControl.maxRequests")?,
        default_ttl: ttl(&raw.default_request_ttl, "flowControl.defaultRequestTTL")?,
        no_endpoint_ttl: ttl(&raw.no_endpoint_request_ttl, "flowControl.noEndpointRequestTTL")?,
        bands,
        raw,
    })
}

// A plugin of the file by name, with the router's implicit instances for the three
// default policy names.
fn lookup<'a>(plugins: &'a BTreeMap<String, PluginHandle>, name: &str) -> Option<&'a PluginHandle> {
    plugins.get(name)
}

fn not_a(name: &str, want: &str, h: &PluginHandle) -> String {
    format!("plugin {name:?} does not implement {want} (actual type: {})", h.type_name)
}

fn ordering(plugins: &BTreeMap<String, PluginHandle>, name: &str) -> Result<Arc<dyn OrderingPolicy>, String> {
    match lookup(plugins, name) {
        None if name == FCFS => Ok(Arc::new(Fcfs)),
        None => Err(format!("plugin {name:?} not found")),
        Some(h) => match &h.flow {
            Some(FlowPlugin::Ordering(p)) => Ok(p.clone()),
            _ => Err(not_a(name, "OrderingPolicy", h)),
        },
    }
}

fn fairness(plugins: &BTreeMap<String, PluginHandle>, name: &str) -> Result<Arc<dyn FairnessPolicy>, String> {
    match lookup(plugins, name) {
        None if name == GLOBAL_STRICT => Ok(Arc::new(GlobalStrict)),
        None => Err(format!("plugin {name:?} not found")),
        Some(h) => match &h.flow {
            Some(FlowPlugin::Fairness(p)) => Ok(p.clone()),
            _ => Err(not_a(name, "FairnessPolicy", h)),
        },
    }
}

fn usage_limit(plugins: &BTreeMap<String, PluginHandle>, name: &str) -> Result<Arc<dyn UsageLimitPolicy>, String> {
    match lookup(plugins, name) {
        None if name == STATIC => Ok(Arc::new(StaticUsageLimit::default())),
        None => Err(format!("plugin {name:?} not found")),
        Some(h) => match &h.flow {
            Some(FlowPlugin::UsageLimit(p)) => Ok(p.clone()),
            _ => Err(not_a(name, "UsageLimitPolicy", h)),
        },
    }
}

// The saturation detector a ref names: the default `utilization-detector` is made when
// no plugin has that name; any other ref must name a detector of the file.
fn detector(
    plugins: &BTreeMap<String, PluginHandle>,
    what: &str,
    plugin_ref: &str,
) -> Result<(Arc<dyn SaturationDetector>, bool), Fail> {
    match (lookup(plugins, plugin_ref), plugin_ref) {
        (None, UTILIZATION) => Ok((Arc::new(Utilization::new(UtilizationConfig::default())), true)),
        (None, _) => Err(fail(what, format!("saturation detector references undefined plugin {plugin_ref:?}"))),
        (Some(h), _) => match &h.flow {
            Some(FlowPlugin::Detector(d)) => Ok((d.clone(), false)),
            _ => Err(fail(what, format!("plugin {plugin_ref:?} is not a saturation detector (type {})", h.type_name))),
        },
    }
}

fn non_negative(v: Option<i64>, label: &str, field: &str) -> Result<u64, String> {
    match v {
        None => Ok(0),
        Some(x) if x < 0 => Err(format!("{label} {field} must be non-negative, got {x}")),
        Some(x) => Ok(x as u64),
    }
}

fn band(
    plugins: &BTreeMap<String, PluginHandle>,
    defaults: &PriorityBandConfig,
    raw: &RawPriorityBand,
    (bytes, requests): (Option<i64>, Option<i64>),
    label: &str,
) -> Result<PriorityBandConfig, String> {
    let mut b = PriorityBandConfig { priority: raw.priority, ..defaults.clone() }
        .with_capacity(non_negative(bytes, label, "MaxBytes")?, non_negative(requests, label, "MaxRequests")?);
    if !raw.ordering_policy_ref.is_empty() {
        b = b.with_ordering(&raw.ordering_policy_ref, ordering(plugins, &raw.ordering_policy_ref)?);
    }
    if !raw.fairness_policy_ref.is_empty() {
        b = b.with_fairness(&raw.fairness_policy_ref, fairness(plugins, &raw.fairness_policy_ref)?);
    }
    Ok(b)
}

fn ttl(nanos: Option<i128>, field: &str) -> Result<Option<Duration>, String> {
    match nanos {
        None => Ok(None),
        Some(n) if n < 0 => Err(format!("{field} cannot be negative, but got {}", go_duration_string(n))),
        Some(n) => Ok(Some(Duration::from_nanos(n as u64))),
    }
}

/// Resolves the section; see [`super::resolve`].
pub(crate) fn resolve(
    section: Option<&Value>,
    detector_ref: Option<(&str, &str)>,
    plugins: &BTreeMap<String, PluginHandle>,
    gate: bool,
) -> Result<FlowControlConfig, Fail> {
    let parsed = parse(section)?;
    let (what, plugin_ref) = match detector_ref {
        Some((what, r)) if !r.is_empty() => (what, r),
        Some((what, _)) => (what, UTILIZATION),
        None => ("flowControl.saturationDetector", UTILIZATION),
    };
    let (det, implicit) = detector(plugins, what, plugin_ref)?;
    let mut cfg = FlowControlConfig {
        enabled: gate,
        detector_name: plugin_ref.to_string(),
        detector: det,
        detector_implicit: implicit,
        ..Default::default()
    };
    cfg.controller.eviction_confirmation_grace =
        eviction_confirmation_grace(cfg.detector.type_name(), Duration::from_millis(50), Duration::from_secs(2));
    if !gate {
        // The router builds the rest only with the gate on.
        return Ok(cfg);
    }
    let raw = &parsed.raw;
    let defaults = PriorityBandConfig::new(0)
        .with_ordering(FCFS, ordering(plugins, FCFS).map_err(|e| fail("flowControl", e))?)
        .with_fairness(GLOBAL_STRICT, fairness(plugins, GLOBAL_STRICT).map_err(|e| fail("flowControl", e))?);
    let mut bands_q = parsed.bands.iter().copied();
    let default_band = match &raw.default_priority_band {
        Some(b) => band(plugins, &defaults, b, bands_q.next().unwrap_or_default(), "default priority band")
            .map_err(|e| fail("flowControl.defaultPriorityBand", e))?,
        None => defaults.clone(),
    };
    let default_negative = match &raw.default_negative_priority_band {
        Some(b) => Some(
            band(plugins, &defaults, b, bands_q.next().unwrap_or_default(), "default negative priority band")
                .map_err(|e| fail("flowControl.defaultNegativePriorityBand", e))?,
        ),
        None => None,
    };
    let mut bands = BTreeMap::new();
    for (i, b) in raw.priority_bands.iter().enumerate() {
        let what = format!("flowControl.priorityBands[{i}]");
        let label = format!("priority band {}", b.priority);
        let pb = band(plugins, &defaults, b, bands_q.next().unwrap_or_default(), &label).map_err(|e| fail(&what, e))?;
        if bands.insert(b.priority, pb).is_some() {
            return Err(fail(what, format!("duplicate priority level {}", b.priority)));
        }
    }
    let mut registry = RegistryConfig::new(bands, default_band, default_negative);
    registry.max_bytes =
        non_negative(parsed.max_bytes, "global", "MaxBytes").map_err(|e| fail("flowControl.maxBytes", e))?;
    registry.max_requests =
        non_negative(parsed.max_requests, "global", "MaxRequests").map_err(|e| fail("flowControl.maxRequests", e))?;
    cfg.registry = registry;

    let c = &mut cfg.controller;
    let default_ttl =
        ttl(parsed.default_ttl, "DefaultRequestTTL").map_err(|e| fail("flowControl.defaultRequestTTL", e))?;
    let no_ep_ttl =
        ttl(parsed.no_endpoint_ttl, "NoEndpointRequestTTL").map_err(|e| fail("flowControl.noEndpointRequestTTL", e))?;
    if let Some(d) = default_ttl {
        c.default_request_ttl = d;
    }
    // The empty-pool budget follows the default budget when only that is set.
    if let Some(d) = no_ep_ttl.or(default_ttl) {
        c.no_endpoint_request_ttl = d;
    }
    c.enable_eviction = raw.enable_eviction;

    if !raw.usage_limit_policy_plugin_ref.is_empty() {
        cfg.usage_limit_name = raw.usage_limit_policy_plugin_ref.clone();
    }
    cfg.usage_limit = usage_limit(plugins, &cfg.usage_limit_name).map_err(|e| {
        fail("flowControl.usageLimitPolicyPluginRef", format!("failed to resolve usage limit policy: {e}"))
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::PluginRegistry;

    fn plugins(list: &[(&str, &str, Value)]) -> BTreeMap<String, PluginHandle> {
        let r = PluginRegistry::with_builtins();
        list.iter()
            .map(|(name, t, p)| {
                let f = r.get(t).unwrap_or_else(|| panic!("{t} not registered"));
                (name.to_string(), f(name, p).unwrap_or_else(|e| panic!("{t}: {e}")))
            })
            .collect()
    }

    fn on(section: Value, ps: &BTreeMap<String, PluginHandle>) -> Result<FlowControlConfig, Fail> {
        resolve(Some(&section), None, ps, true)
    }

    #[test]
    fn defaults_follow_the_router() {
        // Mirrors loader/flowcontrol_test.go and registry/config_test.go defaults.
        let c = resolve(None, None, &BTreeMap::new(), true).unwrap();
        assert!(c.enabled && c.detector_implicit);
        assert_eq!(
            (c.detector_name.as_str(), c.detector.type_name()),
            ("utilization-detector", "utilization-detector")
        );
        assert_eq!(c.controller.default_request_ttl, Duration::from_secs(60));
        assert_eq!(c.controller.no_endpoint_request_ttl, Duration::from_secs(60));
        assert!(!c.controller.enable_eviction);
        assert_eq!((c.registry.max_bytes, c.registry.max_requests), (0, 0));
        let b0 = &c.registry.priority_bands[&0];
        assert_eq!((b0.max_bytes, b0.max_requests), (1_000_000_000, 5000));
        assert_eq!((b0.fairness.type_name(), b0.ordering.type_name()), (GLOBAL_STRICT, FCFS));
        assert_eq!(c.usage_limit.type_name(), STATIC);
        assert_eq!(c.controller.eviction_confirmation_grace, Duration::from_millis(2300));
    }

    #[test]
    fn quantities_durations_and_bands_resolve() {
        let ps = plugins(&[
            ("rr", "round-robin-fairness-policy", json!({})),
            ("edf-ordering-policy", "edf-ordering-policy", json!({})),
        ]);
        let c = on(
            json!({
                "maxBytes": "1Gi", "maxRequests": 500, "defaultRequestTTL": "30s",
                "defaultPriorityBand": {"maxRequests": "100", "fairnessPolicyRef": "rr"},
                "defaultNegativePriorityBand": {"orderingPolicyRef": "edf-ordering-policy"},
                "priorityBands": [{"priority": 10, "maxBytes": "1M"}, {"priority": -5}],
                "enableEviction": true
            }),
            &ps,
        )
        .unwrap();
        assert_eq!((c.registry.max_bytes, c.registry.max_requests), (1 << 30, 500));
        assert_eq!(c.controller.default_request_ttl, Duration::from_secs(30));
        assert_eq!(c.controller.no_endpoint_request_ttl, Duration::from_secs(30), "follows defaultRequestTTL");
        assert!(c.controller.enable_eviction);
        assert_eq!(c.registry.priority_bands.keys().copied().collect::<Vec<_>>(), [-5, 0, 10]);
        assert_eq!(c.registry.priority_bands[&10].max_bytes, 1_000_000);
        assert_eq!(
            c.registry.priority_bands[&10].fairness.type_name(),
            GLOBAL_STRICT,
            "listed bands use the system defaults"
        );
        let b0 = &c.registry.priority_bands[&0];
        assert_eq!(
            (b0.max_requests, b0.fairness.type_name()),
            (100, "round-robin-fairness-policy"),
            "band 0 from the template"
        );
        assert_eq!(c.registry.template_for(-3).ordering.type_name(), "edf-ordering-policy");
        assert_eq!(c.registry.template_for(7).fairness.type_name(), "round-robin-fairness-policy");
        let split = on(json!({"defaultRequestTTL": "30s", "noEndpointRequestTTL": "0s"}), &ps).unwrap();
        assert_eq!(split.controller.no_endpoint_request_ttl, Duration::ZERO);
    }

    #[test]
    fn errors_name_the_field_and_reason() {
        let ps = plugins(&[("qs", "queue-scorer", json!({}))]);
        let e = |v: Value| on(v, &ps).unwrap_err();
        assert_eq!(
            e(json!({"maxBytes": "-5"})),
            fail("flowControl.maxBytes", "global MaxBytes must be non-negative, got -5")
        );
        assert!(e(json!({"maxRequests": "lots"})).1.contains("not a quantity"));
        assert_eq!(
            e(json!({"priorityBands": [{"priority": 1}, {"priority": 1}]})),
            fail("flowControl.priorityBands[1]", "duplicate priority level 1")
        );
        assert_eq!(
            e(json!({"priorityBands": [{"priority": 3, "maxRequests": -1}]})).1,
            "priority band 3 MaxRequests must be non-negative, got -1"
        );
        assert_eq!(e(json!({"defaultPriorityBand": {"fairnessPolicyRef": "nope"}})).1, "plugin \"nope\" not found");
        assert!(
            e(json!({"defaultPriorityBand": {"orderingPolicyRef": "qs"}}))
                .1
                .contains("does not implement OrderingPolicy (actual type: queue-scorer)")
        );
        assert!(e(json!({"usageLimitPolicyPluginRef": "nope"})).1.contains("failed to resolve usage limit policy"));
        assert_eq!(e(json!({"defaultRequestTTL": "-1s"})).1, "DefaultRequestTTL cannot be negative, but got -1s");
        assert!(e(json!({"defaultRequestTTL": "soon"})).0 == "flowControl.defaultRequestTTL");
        assert!(e(json!({"maxRequest": 10})).1.contains("unknown field `maxRequest`"));
        assert!(e(json!({"priorityBands": [{"priority": 1, "fairness": "x"}]})).1.contains("unknown field `fairness`"));
        assert!(e(json!({"saturationDetector": {"pluginRef": "x", "extra": 1}})).1.contains("unknown field"));
    }

    #[test]
    fn the_detector_is_made_or_found() {
        let ps = plugins(&[
            ("cd", "concurrency-detector", json!({})),
            ("qs", "queue-scorer", json!({})),
            ("utilization-detector", "utilization-detector", json!({"queueDepthThreshold": 999999999})),
        ]);
        let c = resolve(None, Some(("flowControl.saturationDetector", "cd")), &ps, false).unwrap();
        assert_eq!((c.detector.type_name(), c.detector_implicit, c.enabled), (CONCURRENCY, false, false));
        assert_eq!(c.controller.eviction_confirmation_grace, Duration::from_millis(10));
        let c = resolve(None, Some(("saturationDetector", "utilization-detector")), &ps, false).unwrap();
        assert!(!c.detector_implicit, "the file's own instance");
        let e = resolve(None, Some(("saturationDetector", "nope")), &ps, false).unwrap_err();
        assert_eq!(e, fail("saturationDetector", "saturation detector references undefined plugin \"nope\""));
        let e = resolve(None, Some(("flowControl.saturationDetector", "qs")), &ps, true).unwrap_err();
        assert!(e.1.contains("is not a saturation detector"), "{e:?}");
        let c = resolve(None, Some(("flowControl.saturationDetector", "")), &BTreeMap::new(), false).unwrap();
        assert!(c.detector_implicit, "an empty ref means the default");
    }

    #[test]
    fn with_the_gate_off_only_syntax_and_the_detector_are_checked() {
        // The router ignores the section's settings (it warns) but decodes it strictly.
        let ps = BTreeMap::new();
        let c = resolve(
            Some(&json!({"maxRequests": 10, "defaultPriorityBand": {"fairnessPolicyRef": "nope"}})),
            None,
            &ps,
            false,
        )
        .unwrap();
        assert!(!c.enabled);
        assert_eq!(c.registry.max_requests, 0, "settings are not applied");
        assert!(resolve(Some(&json!({"maxRequest": 10})), None, &ps, false).is_err());
        assert!(resolve(Some(&json!({"maxBytes": "1Gb"})), None, &ps, false).is_err());
    }
}
