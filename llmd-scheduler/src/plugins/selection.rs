//! Selection plugins of llm-d-router, under its type names and parameter schemas:
//! `encode-filter` (registered here; the role filters live in `filters`), `label-selector-filter` (and its deprecated alias
//! `by-label-selector`), `utilization-filter`, `context-length-aware` (a filter and a
//! scorer), `running-requests-size-scorer`, `header-label-affinity-scorer`,
//! `no-hit-lru-scorer`, and the router's `endpoint-attribute-filter` /
//! `endpoint-attribute-scorer` (llmd's own `attribute-filter` / `attribute-scorer` keep
//! their simpler schema).
//!
//! Parameters are read as the router reads them, with Go's `encoding/json` and unknown
//! fields disallowed: a key the plugin does not know is an error that names it (nested
//! objects too), keys match their field case-insensitively, and `null` is the same as
//! leaving the key out. The two plugins whose router factories never look at their
//! parameters (`encode-filter`, `running-requests-size-scorer`) accept anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use serde_json::{Map, Value};

use super::prefix::{PREFIX_MATCH_KEY, PrefixMatch};
use super::{join_path, known_fields};
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Filter, PickObserver, PluginHandle, Scorer};
use crate::registry::PluginRegistry;
use crate::request::LlmRequest;

/// `encode-filter`.
pub const ENCODE_FILTER: &str = "encode-filter";
/// `label-selector-filter`.
pub const LABEL_SELECTOR_FILTER: &str = "label-selector-filter";
/// `by-label-selector`: the deprecated name of `label-selector-filter`.
pub const BY_LABEL_SELECTOR: &str = "by-label-selector";
/// `utilization-filter`.
pub const UTILIZATION_FILTER: &str = "utilization-filter";
/// `context-length-aware`.
pub const CONTEXT_LENGTH_AWARE: &str = "context-length-aware";
/// `running-requests-size-scorer`.
pub const RUNNING_REQUESTS_SIZE_SCORER: &str = "running-requests-size-scorer";
/// `header-label-affinity-scorer`.
pub const HEADER_LABEL_AFFINITY_SCORER: &str = "header-label-affinity-scorer";
/// `no-hit-lru-scorer`.
pub const NO_HIT_LRU_SCORER: &str = "no-hit-lru-scorer";
/// `endpoint-attribute-filter`.
pub const ENDPOINT_ATTRIBUTE_FILTER: &str = "endpoint-attribute-filter";
/// `endpoint-attribute-scorer`.
pub const ENDPOINT_ATTRIBUTE_SCORER: &str = "endpoint-attribute-scorer";

/// Registers this module's plugin types.
pub(crate) fn register(r: &mut PluginRegistry) {
    fn handle(name: &str, type_name: &str) -> PluginHandle {
        PluginHandle { name: name.into(), type_name: type_name.into(), ..Default::default() }
    }
    // The router's factory ignores its parameters.
    r.register(ENCODE_FILTER, |n, _| {
        Ok(PluginHandle { filter: Some(Arc::new(super::filters::EncodeFilter)), ..handle(n, ENCODE_FILTER) })
    });
    for t in [LABEL_SELECTOR_FILTER, BY_LABEL_SELECTOR] {
        r.register(t, move |n, p| {
            Ok(PluginHandle { filter: Some(Arc::new(LabelSelectorFilter::from_params(p)?)), ..handle(n, t) })
        });
    }
    r.register(UTILIZATION_FILTER, |n, p| {
        Ok(PluginHandle { filter: Some(Arc::new(UtilizationFilter::from_params(p)?)), ..handle(n, UTILIZATION_FILTER) })
    });
    r.register(CONTEXT_LENGTH_AWARE, |n, p| {
        let c = Arc::new(ContextLengthAware::from_params(p)?);
        Ok(PluginHandle { filter: Some(c.clone()), scorer: Some(c), ..handle(n, CONTEXT_LENGTH_AWARE) })
    });
    // The router's factory ignores its parameters.
    r.register(RUNNING_REQUESTS_SIZE_SCORER, |n, _| {
        Ok(PluginHandle {
            scorer: Some(Arc::new(RunningRequestsSizeScorer)),
            ..handle(n, RUNNING_REQUESTS_SIZE_SCORER)
        })
    });
    r.register(HEADER_LABEL_AFFINITY_SCORER, |n, p| {
        Ok(PluginHandle {
            scorer: Some(Arc::new(HeaderLabelAffinityScorer::from_params(p)?)),
            ..handle(n, HEADER_LABEL_AFFINITY_SCORER)
        })
    });
    r.register(NO_HIT_LRU_SCORER, |n, p| {
        let s = Arc::new(NoHitLruScorer::from_params(n, p)?);
        Ok(PluginHandle { scorer: Some(s.clone()), observer: Some(s), ..handle(n, NO_HIT_LRU_SCORER) })
    });
    r.register(ENDPOINT_ATTRIBUTE_FILTER, |n, p| {
        Ok(PluginHandle {
            filter: Some(Arc::new(EndpointAttributeFilter::from_params(p)?)),
            ..handle(n, ENDPOINT_ATTRIBUTE_FILTER)
        })
    });
    r.register(ENDPOINT_ATTRIBUTE_SCORER, |n, p| {
        Ok(PluginHandle {
            scorer: Some(Arc::new(EndpointAttributeScorer::from_params(p)?)),
            ..handle(n, ENDPOINT_ATTRIBUTE_SCORER)
        })
    });
}

// ---------------------------------------------------------------------------------
// Strict parameter decoding.

/// One parameters object, decoded as Go's `json.Decoder` with `DisallowUnknownFields`
/// decodes into a struct ([`known_fields`]): every key must name a field (exactly, or
/// failing that ignoring ASCII case, as `encoding/json` matches), and `null` leaves a
/// field unset.
struct Fields {
    /// Where the object sits (`""` for the parameters themselves, `algorithm`, ...).
    at: String,
    /// Values by canonical field name, nulls dropped.
    map: Map<String, Value>,
}

impl Fields {
    fn new(v: &Value, at: &str, known: &[&str]) -> Result<Self, String> {
        Ok(Fields { at: at.into(), map: known_fields(v, at, known)? })
    }

    fn path(&self, key: &str) -> String {
        join_path(&self.at, key)
    }

    fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("parameter {}: expected a string, got {v}", self.path(key))),
        }
    }

    fn bool(&self, key: &str) -> Result<bool, String> {
        match self.map.get(key) {
            None => Ok(false),
            Some(v) => {
                v.as_bool().ok_or_else(|| format!("parameter {}: expected true or false, got {v}", self.path(key)))
            }
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, String> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| format!("parameter {}: expected a number, got {v}", self.path(key)))
            }
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("parameter {}: expected an integer, got {v}", self.path(key))),
        }
    }

    fn object(&self, key: &str, known: &[&str]) -> Result<Option<Fields>, String> {
        self.map.get(key).map(|v| Fields::new(v, &self.path(key), known)).transpose()
    }

    /// A list's elements with their paths (`conditions[0]`, ...).
    fn list(&self, key: &str) -> Result<Vec<(String, &Value)>, String> {
        match self.map.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => {
                Ok(a.iter().enumerate().map(|(i, v)| (format!("{}[{i}]", self.path(key)), v)).collect())
            }
            Some(v) => Err(format!("parameter {}: expected a list, got {v}", self.path(key))),
        }
    }

    /// A list of strings (a `null` element decodes to `""`, as in Go).
    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        self.list(key)?
            .into_iter()
            .map(|(at, v)| match v {
                Value::Null => Ok(String::new()),
                Value::String(s) => Ok(s.clone()),
                v => Err(format!("parameter {at}: expected a string, got {v}")),
            })
            .collect()
    }

    /// A string-to-string map (a `null` value decodes to `""`, as in Go).
    fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, String> {
        match self.map.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::Null => Ok((k.clone(), String::new())),
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    v => Err(format!("parameter {}.{k}: expected a string, got {v}", self.path(key))),
                })
                .collect(),
            Some(v) => Err(format!("parameter {}: expected a map of strings, got {v}", self.path(key))),
        }
    }
}

fn attribute_number(e: &Endpoint, name: &str) -> Option<f64> {
    e.attribute(name).and_then(|v| v.as_f64())
}

// ---------------------------------------------------------------------------------
// label-selector-filter

/// A label-selector operator (Kubernetes' `LabelSelectorOperator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorOperator {
    /// The label is set to one of the values (`matchLabels` entries are this with one value).
    In,
    /// The label is unset or set to none of the values.
    NotIn,
    /// The label is set.
    Exists,
    /// The label is unset.
    DoesNotExist,
}

#[derive(Debug, Clone)]
struct Requirement {
    key: String,
    op: SelectorOperator,
    values: Vec<String>,
}

// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters: a label value
// (when not empty) and the name part of a label key.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            b.len() <= 63
                && f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

// A DNS-1123 subdomain: at most 253 characters, dot-separated labels of lower-case
// alphanumerics and '-', each starting and ending alphanumeric.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(e)) => {
                    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
                    ok(f) && ok(e) && b.iter().all(|c| ok(c) || *c == b'-')
                }
                _ => false,
            }
        })
}

// Kubernetes' qualified name: `[prefix/]name`, the prefix a DNS-1123 subdomain.
fn is_label_key(s: &str) -> bool {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        [name] => is_label_name(name),
        [prefix, name] => is_dns1123_subdomain(prefix) && is_label_name(name),
        _ => false,
    }
}

impl Requirement {
    // Kubernetes' `labels.NewRequirement` checks.
    fn new(key: String, op: SelectorOperator, values: Vec<String>, at: &str) -> Result<Self, String> {
        if !is_label_key(&key) {
            return Err(format!(
                "parameter {at}: {key:?} is not a valid label key (an optional DNS subdomain prefix and '/', then \
                 a name of at most 63 alphanumerics, '-', '_' or '.', beginning and ending alphanumeric)"
            ));
        }
        match op {
            SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => {
                return Err(format!("parameter {at}: for 'In', 'NotIn' operators, values set can't be empty"));
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => {
                return Err(format!("parameter {at}: values set must be empty for Exists and DoesNotExist"));
            }
            _ => {}
        }
        if let Some(v) = values.iter().find(|v| !v.is_empty() && !is_label_name(v)) {
            return Err(format!(
                "parameter {at}: {v:?} is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', \
                 beginning and ending alphanumeric)"
            ));
        }
        Ok(Requirement { key, op, values })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            SelectorOperator::In => v.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => v.is_some(),
            SelectorOperator::DoesNotExist => v.is_none(),
        }
    }
}

/// `label-selector-filter` (and the deprecated `by-label-selector`): endpoints whose
/// labels match a Kubernetes `LabelSelector` — every `matchLabels` entry and every
/// `matchExpressions` requirement. An empty selector keeps every endpoint.
#[derive(Debug)]
pub struct LabelSelectorFilter {
    requirements: Vec<Requirement>,
}

impl LabelSelectorFilter {
    /// From `parameters`: `matchLabels` ({key: value}) and `matchExpressions` ([{`key`,
    /// `operator`: `In` | `NotIn` | `Exists` | `DoesNotExist`, `values`}]), validated as
    /// Kubernetes validates them.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Fields::new(p, "", &["matchLabels", "matchExpressions"])?;
        let mut requirements = Vec::new();
        for (k, v) in q.string_map("matchLabels")? {
            let at = format!("matchLabels.{k}");
            requirements.push(Requirement::new(k, SelectorOperator::In, vec![v], &at)?);
        }
        for (at, e) in q.list("matchExpressions")? {
            let x = Fields::new(e, &at, &["key", "operator", "values"])?;
            let op = match x.string("operator")?.unwrap_or_default().as_str() {
                "In" => SelectorOperator::In,
                "NotIn" => SelectorOperator::NotIn,
                "Exists" => SelectorOperator::Exists,
                "DoesNotExist" => SelectorOperator::DoesNotExist,
                o => return Err(format!("parameter {at}.operator: {o:?} is not a valid label selector operator")),
            };
            let key = x.string("key")?.unwrap_or_default();
            requirements.push(Requirement::new(key, op, x.strings("values")?, &at)?);
        }
        Ok(LabelSelectorFilter { requirements })
    }
}

impl Filter for LabelSelectorFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        eps.into_iter().filter(|e| self.requirements.iter().all(|r| r.matches(&e.labels))).collect()
    }
}

// ---------------------------------------------------------------------------------
// utilization-filter

/// A load signal `utilization-filter` caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UtilizationMetric {
    /// `active-requests`: requests the picker sent and has not seen finish
    /// ([`Endpoint::inflight`]).
    ActiveRequests,
    /// `running-requests`: the engine's running requests (scraped).
    RunningRequests,
    /// `waiting-queue`: the engine's waiting requests (scraped).
    WaitingQueue,
    /// `kv-cache-utilization`: the engine's KV-cache usage, 0 to 1 (scraped).
    KvCacheUtilization,
}

impl UtilizationMetric {
    fn value(self, e: &Endpoint) -> f64 {
        match self {
            UtilizationMetric::ActiveRequests => e.inflight.requests as f64,
            UtilizationMetric::RunningRequests => e.metrics.running as f64,
            UtilizationMetric::WaitingQueue => e.metrics.waiting as f64,
            UtilizationMetric::KvCacheUtilization => e.metrics.kv_usage,
        }
    }
}

/// `utilization-filter`: endpoints whose every configured metric is at most its
/// `maxValue`; with `fallbackOnEmpty`, all the candidates when none qualifies.
#[derive(Debug)]
pub struct UtilizationFilter {
    conditions: Vec<(UtilizationMetric, f64)>,
    fallback_on_empty: bool,
}

impl UtilizationFilter {
    /// From `parameters`: `conditions` ([{`metric`: `active-requests` |
    /// `running-requests` | `waiting-queue` | `kv-cache-utilization`, `maxValue` ≥ 0,
    /// ≤ 1 for the KV cache}], at least one), `fallbackOnEmpty` (false),
    /// `inFlightLoadProducerName` (accepted: the picker keeps the in-flight counts).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Fields::new(p, "", &["conditions", "fallbackOnEmpty", "inFlightLoadProducerName"])?;
        let fallback_on_empty = q.bool("fallbackOnEmpty")?;
        q.string("inFlightLoadProducerName")?;
        let list = q.list("conditions")?;
        if list.is_empty() {
            return Err("parameter conditions: utilization filter requires at least one condition".into());
        }
        let mut conditions = Vec::new();
        for (at, c) in list {
            let c = Fields::new(c, &at, &["metric", "maxValue"])?;
            let name = c.string("metric")?.unwrap_or_default();
            let metric = match name.as_str() {
                "active-requests" => UtilizationMetric::ActiveRequests,
                "running-requests" => UtilizationMetric::RunningRequests,
                "waiting-queue" => UtilizationMetric::WaitingQueue,
                "kv-cache-utilization" => UtilizationMetric::KvCacheUtilization,
                m => {
                    return Err(format!(
                        "parameter {at}.metric: must be one of \"active-requests\", \"running-requests\", \
                         \"waiting-queue\", \"kv-cache-utilization\", got {m:?}"
                    ));
                }
            };
            let max = c.number("maxValue")?.ok_or_else(|| format!("parameter {at}.maxValue: required for {name:?}"))?;
            if max < 0.0 {
                return Err(format!("parameter {at}.maxValue: must not be negative, got {max}"));
            }
            if metric == UtilizationMetric::KvCacheUtilization && max > 1.0 {
                return Err(format!(
                    "parameter {at}.maxValue: {name:?} is a fraction and must be at most 1, got {max}"
                ));
            }
            conditions.push((metric, max));
        }
        Ok(UtilizationFilter { conditions, fallback_on_empty })
    }
}

impl Filter for UtilizationFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        let kept: Vec<&Endpoint> =
            eps.iter().copied().filter(|e| self.conditions.iter().all(|(m, max)| m.value(e) <= *max)).collect();
        if kept.is_empty() && self.fallback_on_empty { eps } else { kept }
    }
}

// ---------------------------------------------------------------------------------
// context-length-aware

/// The label `context-length-aware` reads by default (value `"min-max"`).
pub const DEFAULT_CONTEXT_LENGTH_LABEL: &str = "llm-d.ai/context-length-range";

/// `context-length-aware`: matches a request's prompt length (its token count; about
/// a token per four characters when the request was not tokenized) to the
/// `"min-max"` token range an endpoint's label declares.
///
/// As a scorer: unlabeled endpoints 0.5, an unparsable label 0; a range holding the
/// length scores in (0.3, 1], narrower ranges and more headroom higher
/// (`0.3 + 0.7·(0.7/(1 + width/10000) + 0.3·(max − L)/width)`, 1 for a one-value range);
/// a range missing it scores in (0, 0.3), nearer ranges higher (`0.3/(1 + distance/1000)`).
/// As a filter (only with `enableFiltering`): keeps unlabeled endpoints and those whose
/// range holds the length; drops unparsable labels.
#[derive(Debug)]
pub struct ContextLengthAware {
    label: String,
    enable_filtering: bool,
}

/// Parses `"min-max"` (non-negative integers, `min ≤ max`).
fn parse_context_range(s: &str) -> Result<(i64, i64), String> {
    if s.is_empty() {
        return Err("empty range string".into());
    }
    let parts: Vec<&str> = s.split('-').collect();
    let [lo, hi] = parts.as_slice() else {
        return Err(format!("invalid range format: {s} (expected 'min-max')"));
    };
    let min: i64 = lo.trim().parse().map_err(|_| format!("invalid min value: {lo}"))?;
    let max: i64 = hi.trim().parse().map_err(|_| format!("invalid max value: {hi}"))?;
    if min > max {
        return Err(format!("min ({min}) cannot be greater than max ({max})"));
    }
    Ok((min, max))
}

fn range_score(len: i64, (min, max): (i64, i64)) -> f64 {
    const MAX_FALLBACK: f64 = 0.3;
    if len >= min && len <= max {
        let width = max - min;
        if width == 0 {
            return 1.0;
        }
        let width_score = 1.0 / (1.0 + width as f64 / 10000.0);
        let position = (max - len) as f64 / width as f64;
        return MAX_FALLBACK + (0.7 * width_score + 0.3 * position) * (1.0 - MAX_FALLBACK);
    }
    let distance = if len > max { len - max } else { min - len };
    MAX_FALLBACK / (1.0 + distance as f64 / 1000.0)
}

fn context_length(req: &LlmRequest) -> i64 {
    i64::try_from(req.prompt_tokens()).unwrap_or(i64::MAX)
}

impl ContextLengthAware {
    /// From `parameters`: `label` (default `llm-d.ai/context-length-range`, not empty),
    /// `enableFiltering` (false).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Fields::new(p, "", &["label", "enableFiltering"])?;
        let label = q.string("label")?.unwrap_or_else(|| DEFAULT_CONTEXT_LENGTH_LABEL.into());
        if label.is_empty() {
            return Err("parameter label: must be specified".into());
        }
        Ok(ContextLengthAware { label, enable_filtering: q.bool("enableFiltering")? })
    }
}

impl Filter for ContextLengthAware {
    fn filter<'a>(&self, _: &mut CycleState, req: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        if !self.enable_filtering {
            return eps;
        }
        let len = context_length(req);
        eps.into_iter()
            .filter(|e| match e.labels.get(&self.label) {
                None => true,
                Some(r) => parse_context_range(r).is_ok_and(|(min, max)| len >= min && len <= max),
            })
            .collect()
    }
}

impl Scorer for ContextLengthAware {
    fn score(&self, _: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let len = context_length(req);
        eps.iter()
            .map(|e| match e.labels.get(&self.label) {
                None => 0.5,
                Some(r) => parse_context_range(r).map_or(0.0, |r| range_score(len, r)),
            })
            .collect()
    }

    /// The prompt length is exact with token ids (estimated from characters without).
    fn wants_token_ids(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------
// running-requests-size-scorer

/// `running-requests-size-scorer`: fewer running requests (the engine's scraped
/// count) score higher, min-max normalised over the candidates (all equal → 1) — the
/// `queue-scorer` on running rather than waiting requests.
#[derive(Debug, Default)]
pub struct RunningRequestsSizeScorer;

impl Scorer for RunningRequestsSizeScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        super::scorers::fewer_is_better(eps.iter().map(|e| e.metrics.running))
    }
}

// ---------------------------------------------------------------------------------
// header-label-affinity-scorer

/// `header-label-affinity-scorer`: 1 for endpoints whose label `labelKey` equals the
/// request's `headerName` header, 0 otherwise (and 0 for all when the header is
/// missing or empty).
#[derive(Debug)]
pub struct HeaderLabelAffinityScorer {
    header: String,
    label_key: String,
}

impl HeaderLabelAffinityScorer {
    /// From `parameters` (required): `headerName` (matched lower-cased, as request
    /// headers are kept), `labelKey`.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        if p.is_null() {
            return Err("parameters: header-label-affinity-scorer requires parameters (headerName, labelKey)".into());
        }
        let q = Fields::new(p, "", &["headerName", "labelKey"])?;
        let header = q.string("headerName")?.filter(|s| !s.is_empty()).ok_or("parameter headerName is required")?;
        let label_key = q.string("labelKey")?.filter(|s| !s.is_empty()).ok_or("parameter labelKey is required")?;
        Ok(HeaderLabelAffinityScorer { header: header.to_lowercase(), label_key })
    }
}

impl Scorer for HeaderLabelAffinityScorer {
    fn score(&self, _: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let wanted = req.headers.get(&self.header).filter(|v| !v.is_empty());
        eps.iter()
            .map(|e| match wanted {
                Some(w) if e.labels.get(&self.label_key) == Some(w) => 1.0,
                _ => 0.0,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// no-hit-lru-scorer

/// Whether the request a `no-hit-lru-scorer` scored was cold (left in the cycle state
/// for its pick observer).
#[derive(Debug, Clone, Copy)]
struct ColdRequest(bool);

/// How many endpoints [`NoHitLruScorer::dump_state`] lists (the router's).
const MAX_DUMP_ENDPOINTS: usize = 100;

/// `no-hit-lru-scorer`: spreads cold requests — those no candidate holds any prefix
/// of — over the endpoints, so the new KV blocks they create grow every cache evenly.
/// For a cold request, endpoints that never took one score highest (in candidate
/// order, `1 − i/(N−1)`), then the others by when they last took one, least recent
/// first (`max(0, 1 − (neverUsed + position)/(N−1))`, the position counted over the
/// whole history); a lone candidate scores 1. A warm request scores 0.5 everywhere.
/// The endpoint picked for a cold request becomes the most recent.
///
/// Whether a request is cold comes from the [`PrefixMatch`] a prefix scorer
/// (`prefix-cache-scorer` or `precise-prefix-cache-scorer`) leaves in the cycle state:
/// list one **before** this scorer in the profile. Without one every request is cold.
#[derive(Debug)]
pub struct NoHitLruScorer {
    /// Cycle-state key of this instance's cold flag.
    state_key: String,
    capacity: usize,
    /// Endpoints that took cold requests, most recent first.
    lru: Mutex<LruCache<String, ()>>,
}

impl NoHitLruScorer {
    /// From `parameters`: `lruSize` (1024; not positive → 1024),
    /// `prefixMatchInfoProducerName` (accepted: the prefix scorer in the profile is the
    /// producer), `prefixPluginType` / `prefixPluginName` (accepted, unused, as in the
    /// router). `name` is the instance's name.
    pub fn from_params(name: &str, p: &Value) -> Result<Self, String> {
        let q =
            Fields::new(p, "", &["prefixPluginType", "prefixPluginName", "lruSize", "prefixMatchInfoProducerName"])?;
        for k in ["prefixPluginType", "prefixPluginName", "prefixMatchInfoProducerName"] {
            q.string(k)?;
        }
        let capacity = match q.int("lruSize")? {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => 1024,
        };
        // Unbounded, trimmed by hand: a bounded `LruCache` allocates its capacity upfront.
        Ok(NoHitLruScorer {
            state_key: format!("{NO_HIT_LRU_SCORER}/{name}/cold"),
            capacity,
            lru: Mutex::new(LruCache::unbounded()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, ()>> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Endpoints that took cold requests, least recent first.
    pub fn endpoints(&self) -> Vec<String> {
        self.lock().iter().rev().map(|(k, _)| k.clone()).collect()
    }

    /// The router's debug dump: `{"endpoints": [least recent first, at most 100],
    /// "totalEndpoints", "maxEndpoints": 100}`.
    pub fn dump_state(&self) -> Value {
        let all = self.endpoints();
        let total = all.len();
        let shown: Vec<String> = all.into_iter().take(MAX_DUMP_ENDPOINTS).collect();
        serde_json::json!({"endpoints": shown, "totalEndpoints": total, "maxEndpoints": MAX_DUMP_ENDPOINTS})
    }
}

impl Scorer for NoHitLruScorer {
    fn score(&self, state: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let cold = state
            .get::<PrefixMatch>(PREFIX_MATCH_KEY)
            .is_none_or(|m| !eps.iter().any(|e| m.matched.get(&e.id).is_some_and(|&n| n > 0)));
        state.put(&self.state_key, ColdRequest(cold));
        if !cold {
            return vec![0.5; eps.len()];
        }
        if eps.len() == 1 {
            return vec![1.0];
        }
        let lru = self.lock();
        let position: HashMap<&str, usize> = lru.iter().rev().enumerate().map(|(i, (k, _))| (k.as_str(), i)).collect();
        let never_used = eps.iter().filter(|e| !position.contains_key(e.id.as_str())).count();
        let last = eps.len().saturating_sub(1) as f64;
        let mut fresh = 0usize;
        eps.iter()
            .map(|e| match position.get(e.id.as_str()) {
                Some(&p) => (1.0 - (never_used + p) as f64 / last).max(0.0),
                None => {
                    fresh += 1;
                    1.0 - (fresh - 1) as f64 / last
                }
            })
            .collect()
    }
}

impl PickObserver for NoHitLruScorer {
    fn on_pick(&self, state: &CycleState, _: &LlmRequest, _: &str, chosen: &Endpoint) {
        if state.get::<ColdRequest>(&self.state_key).is_some_and(|c| c.0) {
            let mut lru = self.lock();
            lru.put(chosen.id.clone(), ());
            while lru.len() > self.capacity {
                lru.pop_lru();
            }
        }
    }

    fn forget(&self, endpoint: &str) {
        self.lock().pop(endpoint);
    }
}

// ---------------------------------------------------------------------------------
// endpoint-attribute-filter and endpoint-attribute-scorer

/// The router's check on an attribute named without a producer: a `/` in it is most
/// likely the old combined `Attribute/Producer` spelling, which would match nothing.
fn check_attribute_producer(what: &str, key: &str, attribute: &str, producer: Option<&str>) -> Result<(), String> {
    match (producer, attribute.rfind('/')) {
        (None, Some(i)) => Err(format!(
            "parameter {key}: {what}: attribute {attribute:?} contains \"/\" but no producer is set. The attribute and \
             its producer are separate parameters; if this is the combined \"Attribute/Producer\" spelling, split it \
             into attribute: {:?} and producer: {:?}. If the attribute name itself contains \"/\", set producer \
             explicitly",
            &attribute[..i],
            &attribute[i + 1..]
        )),
        _ => Ok(()),
    }
}

/// A comparison `endpoint-attribute-filter` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdOperator {
    /// `LessThan`.
    LessThan,
    /// `LessThanOrEqual`.
    LessThanOrEqual,
    /// `GreaterThan`.
    GreaterThan,
    /// `GreaterThanOrEqual`.
    GreaterThanOrEqual,
    /// `Equal`.
    Equal,
    /// `NotEqual`.
    NotEqual,
}

impl ThresholdOperator {
    fn holds(self, v: f64, t: f64) -> bool {
        match self {
            ThresholdOperator::LessThan => v < t,
            ThresholdOperator::LessThanOrEqual => v <= t,
            ThresholdOperator::GreaterThan => v > t,
            ThresholdOperator::GreaterThanOrEqual => v >= t,
            ThresholdOperator::Equal => v == t,
            ThresholdOperator::NotEqual => v != t,
        }
    }
}

/// `endpoint-attribute-filter` (the router's): endpoints whose numeric attribute
/// (written by a data-layer extractor, looked up by exactly the name given) compares
/// true against a threshold. Endpoints without it pass (`onMissing: Pass`) or not
/// (`Fail`); with `fallbackOnEmpty`, all the candidates when none qualifies.
#[derive(Debug)]
pub struct EndpointAttributeFilter {
    attribute: String,
    pass_on_missing: bool,
    fallback_on_empty: bool,
    operator: ThresholdOperator,
    value: f64,
}

impl EndpointAttributeFilter {
    /// From `parameters`: `attribute` (required), `producer` (optional; only checked:
    /// attributes here are named without their producer), `onMissing` (`Pass` | `Fail`),
    /// `fallbackOnEmpty` (false), `algorithm` {`type`: `threshold`, `threshold`
    /// {`operator`, `value`}}.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Fields::new(p, "", &["attribute", "producer", "onMissing", "fallbackOnEmpty", "algorithm"])?;
        let attribute = q.string("attribute")?.unwrap_or_default();
        let producer = q.string("producer")?;
        let on_missing = q.string("onMissing")?.unwrap_or_default();
        let fallback_on_empty = q.bool("fallbackOnEmpty")?;
        let algorithm = q.object("algorithm", &["type", "threshold"])?;
        let (kind, threshold) = match &algorithm {
            Some(a) => (a.string("type")?.unwrap_or_default(), a.object("threshold", &["operator", "value"])?),
            None => (String::new(), None),
        };
        let (op, value) = match &threshold {
            Some(t) => (t.string("operator")?.unwrap_or_default(), t.number("value")?.unwrap_or(0.0)),
            None => (String::new(), 0.0),
        };
        if attribute.is_empty() {
            return Err("parameter attribute: endpoint attribute filter requires a non-empty attribute".into());
        }
        let pass_on_missing = match on_missing.as_str() {
            "" | "Pass" => true,
            "Fail" => false,
            o => return Err(format!("parameter onMissing: must be \"Pass\" or \"Fail\", got {o:?}")),
        };
        if kind != "threshold" {
            return Err(format!("parameter algorithm.type: must be \"threshold\", got {kind:?}"));
        }
        if threshold.is_none() {
            return Err("parameter algorithm.threshold: required when algorithm.type is \"threshold\"".into());
        }
        let operator = match op.as_str() {
            "LessThan" => ThresholdOperator::LessThan,
            "LessThanOrEqual" => ThresholdOperator::LessThanOrEqual,
            "GreaterThan" => ThresholdOperator::GreaterThan,
            "GreaterThanOrEqual" => ThresholdOperator::GreaterThanOrEqual,
            "Equal" => ThresholdOperator::Equal,
            "NotEqual" => ThresholdOperator::NotEqual,
            o => {
                return Err(format!(
                    "parameter algorithm.threshold.operator: must be one of \"LessThan\", \"LessThanOrEqual\", \
                     \"GreaterThan\", \"GreaterThanOrEqual\", \"Equal\", \"NotEqual\", got {o:?}"
                ));
            }
        };
        check_attribute_producer("endpoint attribute filter", "attribute", &attribute, producer.as_deref())?;
        Ok(EndpointAttributeFilter { attribute, pass_on_missing, fallback_on_empty, operator, value })
    }
}

impl Filter for EndpointAttributeFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        let kept: Vec<&Endpoint> = eps
            .iter()
            .copied()
            .filter(|e| match attribute_number(e, &self.attribute) {
                Some(v) => self.operator.holds(v, self.value),
                None => self.pass_on_missing,
            })
            .collect();
        if kept.is_empty() && self.fallback_on_empty { eps } else { kept }
    }
}

/// `endpoint-attribute-scorer` (the router's): scores a numeric endpoint attribute
/// linearly, `(v − min)/(max − min)` (inverted for `linear_lower_is_better`), over a
/// fixed range (values clamped into it) or the range of the candidates' values
/// (adaptive, the default; all equal → 1). Endpoints without the attribute score 0
/// and take no part in the adaptive range.
#[derive(Debug)]
pub struct EndpointAttributeScorer {
    attribute: String,
    lower_is_better: bool,
    fixed_range: Option<(f64, f64)>,
}

impl EndpointAttributeScorer {
    /// From `parameters`: `attributeKey` (required), `producer` (optional; only
    /// checked), `algorithm` {`type`: `linear_lower_is_better` |
    /// `linear_higher_is_better` (required), `normalization`: {`fixedRange`: {`min`,
    /// `max`}, min < max} | {`adaptiveRange`: {}} (the default)}.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Fields::new(p, "", &["attributeKey", "producer", "algorithm"])?;
        let attribute = q.string("attributeKey")?.unwrap_or_default();
        let producer = q.string("producer")?;
        let algorithm = q.object("algorithm", &["type", "normalization"])?;
        let (kind, normalization) = match &algorithm {
            Some(a) => {
                (a.string("type")?.unwrap_or_default(), a.object("normalization", &["fixedRange", "adaptiveRange"])?)
            }
            None => (String::new(), None),
        };
        let (fixed, adaptive) = match &normalization {
            Some(n) => (n.object("fixedRange", &["min", "max"])?, n.object("adaptiveRange", &[])?),
            None => (None, None),
        };
        let fixed_range = match &fixed {
            Some(f) => Some((f.number("min")?.unwrap_or(0.0), f.number("max")?.unwrap_or(0.0))),
            None => None,
        };
        if attribute.is_empty() {
            return Err("parameter attributeKey: endpoint attribute scorer requires a non-empty attributeKey".into());
        }
        let lower_is_better = match kind.as_str() {
            "linear_lower_is_better" => true,
            "linear_higher_is_better" => false,
            o => {
                return Err(format!(
                    "parameter algorithm.type: must be \"linear_lower_is_better\" or \"linear_higher_is_better\", \
                     got {o:?}"
                ));
            }
        };
        if fixed.is_some() && adaptive.is_some() {
            return Err("parameter algorithm.normalization: at most one normalization strategy is allowed, got both \
                        fixedRange and adaptiveRange"
                .into());
        }
        if let Some((min, max)) = fixed_range.filter(|(min, max)| min >= max) {
            return Err(format!(
                "parameter algorithm.normalization.fixedRange: requires min < max, got min {min}, max {max}"
            ));
        }
        check_attribute_producer("endpoint attribute scorer", "attributeKey", &attribute, producer.as_deref())?;
        Ok(EndpointAttributeScorer { attribute, lower_is_better, fixed_range })
    }
}

impl Scorer for EndpointAttributeScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let values: Vec<Option<f64>> = eps.iter().map(|e| attribute_number(e, &self.attribute)).collect();
        let orient = |s: f64| if self.lower_is_better { 1.0 - s } else { s };
        match self.fixed_range {
            Some((min, max)) => {
                values.iter().map(|v| v.map_or(0.0, |v| orient(((v - min) / (max - min)).clamp(0.0, 1.0)))).collect()
            }
            None => {
                let (min, max) = values
                    .iter()
                    .flatten()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                values
                    .iter()
                    .map(|v| match v {
                        None => 0.0,
                        Some(_) if max == min => 1.0,
                        Some(v) => orient((v - min) / (max - min)),
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::ROLE_LABEL;
    use crate::endpoint::{AttributeValue, Role};
    use serde_json::json;

    fn ep(id: &str, labels: &[(&str, &str)]) -> Endpoint {
        let mut e = Endpoint::new(id, format!("{id}:8000"), Role::Both);
        e.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        e
    }

    fn ids(v: Vec<&Endpoint>) -> Vec<&str> {
        v.into_iter().map(|e| e.id.as_str()).collect()
    }

    fn filter_ids<'a>(f: &dyn Filter, req: &LlmRequest, eps: &'a [Endpoint]) -> Vec<&'a str> {
        ids(f.filter(&mut CycleState::default(), req, eps.iter().collect()))
    }

    fn scores(s: &dyn Scorer, state: &mut CycleState, req: &LlmRequest, eps: &[Endpoint]) -> Vec<f64> {
        s.score(state, req, &eps.iter().collect::<Vec<_>>())
    }

    fn build(type_name: &str, params: Value) -> Result<PluginHandle, String> {
        let mut r = PluginRegistry::new();
        register(&mut r);
        let f = r.get(type_name).unwrap_or_else(|| panic!("{type_name} not registered"));
        f("test", &params)
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    // --- registration ---------------------------------------------------------

    #[test]
    fn every_type_is_registered_in_the_builtins_with_its_roles() {
        let r = PluginRegistry::with_builtins();
        let roles = |t: &str| {
            let h = (r.get(t).unwrap())("x", &json!({})).map_err(|e| format!("{t}: {e}"));
            h.map(|h| (h.type_name.clone(), h.filter.is_some(), h.scorer.is_some(), h.observer.is_some()))
        };
        assert_eq!(roles(ENCODE_FILTER).unwrap(), (ENCODE_FILTER.into(), true, false, false));
        assert_eq!(roles(LABEL_SELECTOR_FILTER).unwrap(), (LABEL_SELECTOR_FILTER.into(), true, false, false));
        assert_eq!(roles(BY_LABEL_SELECTOR).unwrap(), (BY_LABEL_SELECTOR.into(), true, false, false));
        assert_eq!(roles(CONTEXT_LENGTH_AWARE).unwrap(), (CONTEXT_LENGTH_AWARE.into(), true, true, false));
        assert_eq!(
            roles(RUNNING_REQUESTS_SIZE_SCORER).unwrap(),
            (RUNNING_REQUESTS_SIZE_SCORER.into(), false, true, false)
        );
        assert_eq!(roles(NO_HIT_LRU_SCORER).unwrap(), (NO_HIT_LRU_SCORER.into(), false, true, true));
        // Required parameters.
        for t in
            [UTILIZATION_FILTER, HEADER_LABEL_AFFINITY_SCORER, ENDPOINT_ATTRIBUTE_FILTER, ENDPOINT_ATTRIBUTE_SCORER]
        {
            assert!(roles(t).is_err(), "{t}");
        }
        // llmd's own attribute plugins keep their schema.
        assert!((r.get("attribute-filter").unwrap())("x", &json!({"attribute": "q", "max": 3})).is_ok());
    }

    #[test]
    fn parameter_decoding_is_strict_and_names_the_key() {
        let cases = [
            (LABEL_SELECTOR_FILTER, json!({"matchLabel": {"a": "b"}}), "matchLabel"),
            (
                LABEL_SELECTOR_FILTER,
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "value": []}]}),
                "matchExpressions[0].value",
            ),
            (
                UTILIZATION_FILTER,
                json!({"conditions": [{"metric": "waiting-queue", "maxValue": 1, "max": 2}]}),
                "conditions[0].max",
            ),
            (
                UTILIZATION_FILTER,
                json!({"conditions": [{"metric": "waiting-queue", "maxValue": 1}], "fallback": true}),
                "fallback",
            ),
            (CONTEXT_LENGTH_AWARE, json!({"enableFilter": true}), "enableFilter"),
            (HEADER_LABEL_AFFINITY_SCORER, json!({"headerName": "h", "labelKey": "k", "weight": 2}), "weight"),
            (NO_HIT_LRU_SCORER, json!({"lruCapacity": 3}), "lruCapacity"),
            (
                ENDPOINT_ATTRIBUTE_FILTER,
                json!({"attribute": "a", "algorithm": {"type": "threshold", "threshold": {"operator": "Equal", "value": 1, "x": 0}}}),
                "algorithm.threshold.x",
            ),
            (
                ENDPOINT_ATTRIBUTE_SCORER,
                json!({"attributeKey": "a", "algorithm": {"type": "linear_lower_is_better", "normalization": {"adaptiveRange": {"window": 3}}}}),
                "algorithm.normalization.adaptiveRange.window",
            ),
        ];
        for (t, p, key) in cases {
            let e = build(t, p).unwrap_err();
            assert!(e.contains(&format!("parameter {key:?} is not ")), "{t}: {e}");
        }
        // Wrong types name the parameter.
        let e = build(NO_HIT_LRU_SCORER, json!({"lruSize": "big"})).unwrap_err();
        assert!(e.contains("lruSize"), "{e}");
        let e = build(UTILIZATION_FILTER, json!({"conditions": [{"metric": "waiting-queue", "maxValue": "1"}]}))
            .unwrap_err();
        assert!(e.contains("conditions[0].maxValue"), "{e}");
        assert!(build(CONTEXT_LENGTH_AWARE, json!([1])).unwrap_err().contains("parameters"));
        // Keys match case-insensitively (Go's encoding/json); null is absent.
        assert!(build(HEADER_LABEL_AFFINITY_SCORER, json!({"HeaderName": "X-Slice", "LABELKEY": "slice"})).is_ok());
        assert!(build(CONTEXT_LENGTH_AWARE, json!({"label": null})).is_ok());
        // Plugins whose router factories ignore parameters accept anything.
        assert!(build(ENCODE_FILTER, json!({"whatever": 1})).is_ok());
        assert!(build(RUNNING_REQUESTS_SIZE_SCORER, json!({"whatever": 1})).is_ok());
    }

    // --- encode-filter (bylabel/roles_test.go) --------------------------------

    #[test]
    fn encode_filter_keeps_encode_stages() {
        use crate::plugins::filters::{DecodeFilter, PrefillFilter};
        let eps = [
            ep("decode-pod", &[(ROLE_LABEL, "decode")]),
            ep("prefill-pod", &[(ROLE_LABEL, "prefill")]),
            ep("encode-pod", &[(ROLE_LABEL, "encode")]),
            ep("ep-pod", &[(ROLE_LABEL, "encode-prefill")]),
            ep("epd-pod", &[(ROLE_LABEL, "encode-prefill-decode")]),
            ep("no-label-pod", &[("app", "vllm")]),
        ];
        let req = LlmRequest::default();
        assert_eq!(filter_ids(&crate::plugins::filters::EncodeFilter, &req, &eps), ["encode-pod", "ep-pod", "epd-pod"]);
        assert!(filter_ids(&crate::plugins::filters::EncodeFilter, &req, &[]).is_empty());
        // The prefill and decode role filters on the same pods, as roles_test.go.
        assert_eq!(filter_ids(&PrefillFilter, &req, &eps), ["prefill-pod", "ep-pod", "epd-pod"]);
        assert_eq!(filter_ids(&DecodeFilter, &req, &eps), ["decode-pod", "epd-pod", "no-label-pod"]);
        let both = [
            ep("both", &[(ROLE_LABEL, "both")]),
            ep("pd", &[(ROLE_LABEL, "prefill-decode")]),
            ep("x", &[(ROLE_LABEL, "router")]),
        ];
        assert_eq!(filter_ids(&PrefillFilter, &req, &both), ["both", "pd"]);
        assert_eq!(filter_ids(&DecodeFilter, &req, &both), ["both", "pd"], "an unknown role is no stage");
    }

    // --- label-selector-filter (bylabel/selector_test.go) ---------------------

    #[test]
    fn label_selector_factory_accepts_kubernetes_selectors() {
        for p in [
            json!({"matchLabels": {"app": "nginx", "version": "v1.0"}}),
            json!({"matchLabels": {"tier": "frontend"}, "matchExpressions": [
                {"key": "environment", "operator": "In", "values": ["production", "staging"]},
                {"key": "deprecated", "operator": "DoesNotExist"}]}),
            json!({}),
            json!({"matchExpressions": [{"key": "component", "operator": "NotIn", "values": ["test", "debug"]}]}),
            json!({"matchExpressions": [{"key": "release", "operator": "Exists"}]}),
        ] {
            assert!(LabelSelectorFilter::from_params(&p).is_ok(), "{p}");
        }
    }

    #[test]
    fn label_selector_factory_validates_like_kubernetes() {
        let bad = [
            (
                json!({"matchExpressions": [{"key": "app", "operator": "InvalidOperator", "values": ["nginx"]}]}),
                "operator",
            ),
            (json!({"matchExpressions": [{"key": "app", "operator": "In"}]}), "can't be empty"),
            (json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": []}]}), "can't be empty"),
            (json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}), "must be empty"),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist", "values": ["x"]}]}),
                "must be empty",
            ),
            (json!({"matchExpressions": [{"operator": "Exists"}]}), "label key"),
            (json!({"matchExpressions": [{"key": "app", "operator": "in", "values": ["a"]}]}), "operator"),
            (json!({"matchLabels": {"bad key": "v"}}), "label key"),
            (json!({"matchLabels": {"Example.com/app": "v"}}), "label key"),
            (json!({"matchLabels": {"a/b/c": "v"}}), "label key"),
            (json!({"matchLabels": {"app": "-v"}}), "label value"),
            (json!({"matchLabels": {"app": "x".repeat(64)}}), "label value"),
            (json!({"matchLabels": {"app": 5}}), "matchLabels.app"),
        ];
        for (p, want) in bad {
            let e = LabelSelectorFilter::from_params(&p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
        // Valid edge cases: an empty value, a prefixed key, a 63-character name.
        for p in [
            json!({"matchLabels": {"app": ""}}),
            json!({"matchLabels": {"llm-d.ai/role": "decode", "leaderworkerset.sigs.k8s.io/worker-index": "0"}}),
            json!({"matchLabels": {"a".repeat(63): "v"}}),
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["", "a_b.c-d"]}]}),
        ] {
            assert!(LabelSelectorFilter::from_params(&p).is_ok(), "{p}");
        }
    }

    #[test]
    fn label_selector_filtering() {
        let eps = [
            ep("nginx-1", &[("app", "nginx"), ("version", "v1.0"), ("tier", "frontend")]),
            ep("nginx-2", &[("app", "nginx"), ("version", "v1.1"), ("tier", "frontend")]),
            ep("coredns-1", &[("app", "coredns"), ("tier", "system")]),
            ep("redis-1", &[("app", "redis"), ("tier", "backend"), ("deprecated", "true")]),
            ep("web-1", &[("app", "web"), ("tier", "frontend"), ("environment", "production")]),
        ];
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (json!({"matchLabels": {"app": "nginx"}}), vec!["nginx-1", "nginx-2"]),
            (json!({"matchLabels": {"app": "nginx", "version": "v1.0"}}), vec!["nginx-1"]),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend", "backend"]}]}),
                vec!["nginx-1", "nginx-2", "redis-1", "web-1"],
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["system"]}]}),
                vec!["nginx-1", "nginx-2", "redis-1", "web-1"],
            ),
            (json!({"matchExpressions": [{"key": "deprecated", "operator": "Exists"}]}), vec!["redis-1"]),
            (
                json!({"matchExpressions": [{"key": "deprecated", "operator": "DoesNotExist"}]}),
                vec!["nginx-1", "nginx-2", "coredns-1", "web-1"],
            ),
            (
                json!({"matchLabels": {"tier": "frontend"}, "matchExpressions": [{"key": "environment", "operator": "Exists"}]}),
                vec!["web-1"],
            ),
            (json!({}), vec!["nginx-1", "nginx-2", "coredns-1", "redis-1", "web-1"]),
            (json!({"matchLabels": {"app": "nonexistent"}}), vec![]),
        ];
        let req = LlmRequest::default();
        for (p, want) in cases {
            let f = LabelSelectorFilter::from_params(&p).unwrap();
            assert_eq!(filter_ids(&f, &req, &eps), want, "{p}");
        }
    }

    #[test]
    fn label_selector_edge_cases() {
        let f = LabelSelectorFilter::from_params(&json!({"matchLabels": {"app": "test"}})).unwrap();
        let req = LlmRequest::default();
        assert!(filter_ids(&f, &req, &[]).is_empty());
        assert!(filter_ids(&f, &req, &[ep("pod-1", &[])]).is_empty());
        // NotIn keeps endpoints without the label.
        let f = LabelSelectorFilter::from_params(
            &json!({"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/worker-index", "operator": "NotIn", "values": ["0"]}]}),
        )
        .unwrap();
        assert_eq!(filter_ids(&f, &req, &[ep("pod-1", &[])]), ["pod-1"]);
    }

    #[test]
    fn label_selector_has_no_allows_no_label_escape_hatch() {
        let f = LabelSelectorFilter::from_params(
            &json!({"matchExpressions": [{"key": "llm-d.ai/role", "operator": "In", "values": ["decode", "prefill-decode"]}]}),
        )
        .unwrap();
        let eps = [
            ep("decode-0", &[(ROLE_LABEL, "decode")]),
            ep("encode-0", &[(ROLE_LABEL, "encode")]),
            ep("mystery-0", &[]),
        ];
        assert_eq!(filter_ids(&f, &LlmRequest::default(), &eps), ["decode-0"]);
    }

    #[test]
    fn label_selector_prefill_decode_roles_in_lws() {
        let idx = "leaderworkerset.sigs.k8s.io/worker-index";
        let leader = LabelSelectorFilter::from_params(&json!({"matchLabels": {idx: "0"}})).unwrap();
        let follower = LabelSelectorFilter::from_params(
            &json!({"matchExpressions": [{"key": idx, "operator": "NotIn", "values": ["0"]}]}),
        )
        .unwrap();
        let prefill =
            LabelSelectorFilter::from_params(&json!({"matchExpressions": [{"key": idx, "operator": "DoesNotExist"}]}))
                .unwrap();
        let eps = [ep(
            "vllm",
            &[("app.kubernetes.io/component", "vllm-worker"), ("app.kubernetes.io/name", "some-model"), (idx, "0")],
        )];
        let req = LlmRequest::default();
        let accepted: Vec<usize> = [&leader, &follower, &prefill]
            .iter()
            .enumerate()
            .filter(|(_, f)| !filter_ids(**f, &req, &eps).is_empty())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(accepted, [0]);
    }

    #[test]
    fn deprecated_by_label_selector_filters_the_same() {
        let h = build(BY_LABEL_SELECTOR, json!({"matchLabels": {"app": "nginx"}})).unwrap();
        assert_eq!(h.type_name, BY_LABEL_SELECTOR);
        let eps = [ep("nginx-1", &[("app", "nginx")]), ep("redis-1", &[("app", "redis")])];
        assert_eq!(filter_ids(h.filter.as_deref().unwrap(), &LlmRequest::default(), &eps), ["nginx-1"]);
    }

    // --- utilization-filter (utilization/filter_test.go) ----------------------

    fn loaded(id: &str, inflight: u64) -> Endpoint {
        let mut e = ep(id, &[]);
        e.inflight.requests = inflight;
        e
    }

    fn metered(id: &str, running: u64, waiting: u64, kv: f64) -> Endpoint {
        let mut e = ep(id, &[]);
        e.metrics.running = running;
        e.metrics.waiting = waiting;
        e.metrics.kv_usage = kv;
        e
    }

    fn utilization(conditions: Value, fallback: bool) -> UtilizationFilter {
        UtilizationFilter::from_params(&json!({"conditions": conditions, "fallbackOnEmpty": fallback})).unwrap()
    }

    #[test]
    fn utilization_filter_caps_each_metric() {
        let req = LlmRequest::default();
        let cond = |m: &str, v: f64| json!([{"metric": m, "maxValue": v}]);
        let f = utilization(cond("active-requests", 2.0), false);
        assert_eq!(
            filter_ids(&f, &req, &[loaded("pod-a", 1), loaded("pod-b", 2), loaded("pod-c", 3)]),
            ["pod-a", "pod-b"]
        );
        // Without in-flight requests the count is 0.
        let f = utilization(cond("active-requests", 1.0), false);
        assert_eq!(filter_ids(&f, &req, &[ep("pod-a", &[]), loaded("pod-b", 5)]), ["pod-a"]);
        let f = utilization(cond("running-requests", 4.0), false);
        assert_eq!(filter_ids(&f, &req, &[metered("pod-a", 4, 0, 0.0), metered("pod-b", 5, 0, 0.0)]), ["pod-a"]);
        let f = utilization(cond("waiting-queue", 0.0), false);
        assert_eq!(filter_ids(&f, &req, &[metered("pod-a", 0, 0, 0.0), metered("pod-b", 0, 3, 0.0)]), ["pod-a"]);
        let f = utilization(cond("kv-cache-utilization", 0.8), false);
        assert_eq!(filter_ids(&f, &req, &[metered("pod-a", 0, 0, 0.5), metered("pod-b", 0, 0, 0.9)]), ["pod-a"]);
    }

    #[test]
    fn utilization_filter_needs_every_condition() {
        let req = LlmRequest::default();
        let f = utilization(
            json!([{"metric": "running-requests", "maxValue": 40}, {"metric": "waiting-queue", "maxValue": 0}]),
            false,
        );
        let eps = [metered("pod-a", 10, 0, 0.0), metered("pod-b", 41, 0, 0.0), metered("pod-c", 10, 1, 0.0)];
        assert_eq!(filter_ids(&f, &req, &eps), ["pod-a"]);
        // The picker's own counts mixed with scraped metrics.
        let f = utilization(
            json!([{"metric": "active-requests", "maxValue": 10}, {"metric": "kv-cache-utilization", "maxValue": 0.8}]),
            false,
        );
        let eps = [loaded("pod-a", 5), loaded("pod-b", 11), metered("pod-c", 0, 0, 0.9)];
        assert_eq!(filter_ids(&f, &req, &eps), ["pod-a"]);
    }

    #[test]
    fn utilization_filter_fallback_on_empty() {
        let req = LlmRequest::default();
        let eps = [loaded("pod-a", 2), loaded("pod-b", 3)];
        let cond = json!([{"metric": "active-requests", "maxValue": 1}]);
        assert!(filter_ids(&utilization(cond.clone(), false), &req, &eps).is_empty());
        assert_eq!(filter_ids(&utilization(cond, true), &req, &eps), ["pod-a", "pod-b"]);
    }

    #[test]
    fn utilization_filter_rejects_invalid_parameters() {
        let bad = [
            (json!({}), "conditions"),
            (json!({"conditions": []}), "conditions"),
            (json!({"conditions": [{"maxValue": 1}]}), "conditions[0].metric"),
            (json!({"conditions": [{"metric": "unknown", "maxValue": 1}]}), "conditions[0].metric"),
            (json!({"conditions": [{"metric": "active-requests"}]}), "conditions[0].maxValue"),
            (json!({"conditions": [{"metric": "active-requests", "maxValue": -1}]}), "conditions[0].maxValue"),
            (json!({"conditions": [{"metric": "kv-cache-utilization", "maxValue": 80}]}), "conditions[0].maxValue"),
        ];
        for (p, key) in bad {
            let e = UtilizationFilter::from_params(&p).unwrap_err();
            assert!(e.contains(key), "{p}: {e}");
        }
        let f = UtilizationFilter::from_params(&json!({
            "conditions": [{"metric": "running-requests", "maxValue": 40}, {"metric": "waiting-queue", "maxValue": 0}],
            "inFlightLoadProducerName": "my-ifl"
        }))
        .unwrap();
        assert_eq!(f.conditions, [(UtilizationMetric::RunningRequests, 40.0), (UtilizationMetric::WaitingQueue, 0.0)]);
        // The registry hands absent parameters over as an empty object.
        assert!(build(UTILIZATION_FILTER, json!({})).is_err());
    }

    // --- context-length-aware (contextlengthaware/context_length_aware_test.go) -

    fn ctx(enable_filtering: bool) -> ContextLengthAware {
        ContextLengthAware::from_params(&json!({"enableFiltering": enable_filtering})).unwrap()
    }

    fn range(id: &str, r: &str) -> Endpoint {
        ep(id, &[(DEFAULT_CONTEXT_LENGTH_LABEL, r)])
    }

    fn tokens(n: usize) -> LlmRequest {
        LlmRequest { token_ids: Some((1..=n as u32).collect()), ..Default::default() }
    }

    #[test]
    fn context_length_factory() {
        let c = ContextLengthAware::from_params(&json!({})).unwrap();
        assert_eq!((c.label.as_str(), c.enable_filtering), (DEFAULT_CONTEXT_LENGTH_LABEL, false));
        assert!(ContextLengthAware::from_params(&json!({"label": ""})).unwrap_err().contains("label"));
        let c = ContextLengthAware::from_params(&json!({"label": "ctx", "enableFiltering": true})).unwrap();
        assert_eq!((c.label.as_str(), c.enable_filtering), ("ctx", true));
    }

    #[test]
    fn context_length_filter() {
        let eps = [
            range("short-range", "0-100"),
            range("medium-range", "100-500"),
            range("wide-range", "0-2000"),
            ep("no-label", &[]),
        ];
        // An empty prompt is 0 tokens long.
        let req = LlmRequest::default();
        assert_eq!(filter_ids(&ctx(true), &req, &eps), ["short-range", "wide-range", "no-label"]);
        // Without enableFiltering the filter passes everything.
        assert_eq!(filter_ids(&ctx(false), &req, &eps).len(), 4);
        // An unparsable label is dropped.
        assert!(filter_ids(&ctx(true), &req, &[range("bad", "x-y"), range("empty", "")]).is_empty());
    }

    #[test]
    fn context_length_filter_reads_the_token_count() {
        let eps = [range("tight-match", "0-52"), range("no-match", "142-242")];
        assert_eq!(filter_ids(&ctx(true), &tokens(42), &eps), ["tight-match"]);
        let eps = [range("matching-range", "0-50"), range("non-matching-range", "100-200")];
        assert_eq!(filter_ids(&ctx(true), &LlmRequest::default(), &eps), ["matching-range"]);
        // Untokenized: about four characters a token (400 characters → 100 tokens).
        let req = LlmRequest::new("r", "m", "x".repeat(400));
        assert_eq!(filter_ids(&ctx(true), &req, &eps), ["non-matching-range"]);
    }

    #[test]
    fn context_length_score() {
        let eps = [
            range("tight-range", "0-20"),
            range("wide-range", "0-10000"),
            range("no-match", "500-1000"),
            ep("no-label", &[]),
        ];
        let s = scores(&ctx(false), &mut CycleState::default(), &LlmRequest::default(), &eps);
        assert!(s[0] > s[1] && s[0] > 0.3 && s[1] > 0.3);
        assert!(s[2] > 0.0 && s[2] < 0.3 && s[1] > s[2]);
        assert_eq!(s[3], 0.5);
        // The formula: 0-20 → 0.3 + 0.7·(0.7/1.002 + 0.3); 0-10000 → 0.3 + 0.7·(0.35 + 0.3);
        // 500-1000 → 0.3/1.5.
        let want = [0.3 + 0.7 * (0.7 / 1.002 + 0.3), 0.3 + 0.7 * 0.65, 0.2, 0.5];
        assert!(close(&s, &want), "{s:?}");
        // A bad label scores 0; a one-value range holding the length 1.
        let s =
            scores(&ctx(false), &mut CycleState::default(), &tokens(7), &[range("bad", "7"), range("exact", "7-7")]);
        assert_eq!(s, [0.0, 1.0]);
    }

    #[test]
    fn context_range_parsing() {
        assert_eq!(parse_context_range("0-100"), Ok((0, 100)));
        assert_eq!(parse_context_range(" 5 - 10 "), Ok((5, 10)));
        for bad in ["", "0-100-200", "100-50", "abc-100", "-5-10", "5", "1.5-2"] {
            assert!(parse_context_range(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn context_range_fallback_prefers_the_nearest_range() {
        let small = range_score(9000, (0, 2048));
        let large = range_score(9000, (0, 8192));
        assert!(small > 0.0 && small < 0.3 && large > 0.0 && large < 0.3 && large > small);
        let far = range_score(50, (500, 2048));
        let near = range_score(50, (100, 1024));
        assert!(far > 0.0 && far < 0.3 && near > 0.0 && near < 0.3 && near > far);
        // In range always beats out of range, even for wide ranges at their top.
        let wide = range_score(14999, (0, 15000));
        let out = range_score(14999, (15001, 20000));
        assert!(wide > 0.3 && out < 0.3);
    }

    // --- running-requests-size-scorer (runningrequests/running_test.go) -------

    #[test]
    fn running_requests_size_scores() {
        let mut st = CycleState::default();
        let req = LlmRequest::default();
        let run = |r: &[u64]| -> Vec<Endpoint> { r.iter().map(|&n| metered(&format!("p{n}"), n, 0, 0.0)).collect() };
        assert!(close(&scores(&RunningRequestsSizeScorer, &mut st, &req, &run(&[10, 5, 0])), &[0.0, 0.5, 1.0]));
        let same = [metered("a", 5, 0, 0.0), metered("b", 5, 0, 0.0)];
        assert_eq!(scores(&RunningRequestsSizeScorer, &mut st, &req, &same), [1.0, 1.0]);
        assert_eq!(scores(&RunningRequestsSizeScorer, &mut st, &req, &run(&[0, 0])), [1.0, 1.0]);
        // Waiting requests play no part.
        let q = [metered("a", 1, 50, 0.0), metered("b", 3, 0, 0.0)];
        assert_eq!(scores(&RunningRequestsSizeScorer, &mut st, &req, &q), [1.0, 0.0]);
    }

    // --- header-label-affinity-scorer (headerlabelaffinity/plugin_test.go) ----

    #[test]
    fn header_label_affinity_factory() {
        let s = HeaderLabelAffinityScorer::from_params(
            &json!({"headerName": "X-Disagg-Slice", "labelKey": "disaggregatedset.x-k8s.io/slice"}),
        )
        .unwrap();
        assert_eq!(s.header, "x-disagg-slice");
        let cases = [
            (Value::Null, "requires parameters"),
            (json!({"labelKey": "disaggregatedset.x-k8s.io/slice"}), "headerName is required"),
            (json!({"headerName": "x-disagg-slice"}), "labelKey is required"),
            (json!({"headerName": "", "labelKey": "k"}), "headerName is required"),
        ];
        for (p, want) in cases {
            let e = HeaderLabelAffinityScorer::from_params(&p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn header_label_affinity_scores() {
        let s = HeaderLabelAffinityScorer::from_params(&json!({"headerName": "x-slice", "labelKey": "slice"})).unwrap();
        let eps =
            [ep("matching", &[("slice", "slice-a")]), ep("non-matching", &[("slice", "slice-b")]), ep("missing", &[])];
        let with = |v: Option<&str>| {
            let mut r = LlmRequest::default();
            if let Some(v) = v {
                r.headers.insert("x-slice".into(), v.into());
            }
            r
        };
        let mut st = CycleState::default();
        assert_eq!(scores(&s, &mut st, &with(Some("slice-a")), &eps), [1.0, 0.0, 0.0]);
        assert_eq!(scores(&s, &mut st, &with(Some("unknown")), &eps), [0.0, 0.0, 0.0]);
        assert_eq!(scores(&s, &mut st, &with(None), &eps), [0.0, 0.0, 0.0]);
        // An empty header matches nothing, not even an empty label.
        assert_eq!(scores(&s, &mut st, &with(Some("")), &[ep("empty", &[("slice", "")])]), [0.0]);
    }

    // --- no-hit-lru-scorer (nohitlru/no_hit_lru_test.go) ----------------------

    fn no_hit() -> NoHitLruScorer {
        NoHitLruScorer::from_params(NO_HIT_LRU_SCORER, &json!({})).unwrap()
    }

    /// A cycle state in which a prefix scorer found `blocks` on `id`.
    fn warm_state(id: &str, blocks: usize) -> CycleState {
        let mut st = CycleState::default();
        let matched = [(id.to_string(), blocks)].into_iter().collect();
        st.put(
            PREFIX_MATCH_KEY,
            PrefixMatch { hashes: vec![1; 10], prompt_tokens: 10, tokens_per_block: 1, matched, ..Default::default() },
        );
        st
    }

    /// One cold request routed to `chosen` (scored among `eps`).
    fn cold_pick(s: &NoHitLruScorer, eps: &[Endpoint], chosen: &Endpoint) {
        let mut st = CycleState::default();
        scores(s, &mut st, &LlmRequest::default(), eps);
        s.on_pick(&st, &LlmRequest::default(), "default", chosen);
    }

    fn cold_scores(s: &NoHitLruScorer, eps: &[Endpoint]) -> Vec<f64> {
        scores(s, &mut CycleState::default(), &LlmRequest::default(), eps)
    }

    #[test]
    fn no_hit_lru_factory() {
        assert_eq!(no_hit().capacity, 1024);
        let s = NoHitLruScorer::from_params(
            "n",
            &json!({"lruSize": 2, "prefixMatchInfoProducerName": "approx", "prefixPluginType": "prefix-cache-scorer", "prefixPluginName": "p"}),
        )
        .unwrap();
        assert_eq!(s.capacity, 2);
        assert_eq!(NoHitLruScorer::from_params("n", &json!({"lruSize": 0})).unwrap().capacity, 1024);
        assert_eq!(NoHitLruScorer::from_params("n", &json!({"lruSize": -3})).unwrap().capacity, 1024);
        assert!(NoHitLruScorer::from_params("n", &json!({"lruSize": 1.5})).unwrap_err().contains("lruSize"));
    }

    #[test]
    fn no_hit_lru_scores() {
        let eps = [ep("pod-a", &[]), ep("pod-b", &[]), ep("pod-c", &[])];
        // Cold, never used: candidate order.
        assert_eq!(cold_scores(&no_hit(), &eps), [1.0, 0.5, 0.0]);
        // A cache hit anywhere: neutral.
        let s = no_hit();
        assert_eq!(scores(&s, &mut warm_state("pod-a", 5), &LlmRequest::default(), &eps), [0.5, 0.5, 0.5]);
        // A match of 0 blocks is still cold.
        assert_eq!(scores(&s, &mut warm_state("pod-a", 0), &LlmRequest::default(), &eps), [1.0, 0.5, 0.0]);
        // A hit on an endpoint outside the candidates does not make the request warm.
        assert_eq!(scores(&s, &mut warm_state("elsewhere", 3), &LlmRequest::default(), &eps), [1.0, 0.5, 0.0]);
        // One candidate, no candidates.
        assert_eq!(cold_scores(&s, &eps[..1]), [1.0]);
        assert!(cold_scores(&s, &[]).is_empty());
        // Two candidates score differently.
        let two = cold_scores(&s, &eps[..2]);
        assert!(two.iter().all(|x| (0.0..=1.0).contains(x)) && two[0] != two[1]);
    }

    #[test]
    fn no_hit_lru_prefers_the_least_recently_used_after_cold_requests() {
        let s = no_hit();
        let eps = [ep("default/pod-a", &[]), ep("default/pod-b", &[]), ep("default/pod-c", &[])];
        let best = |sc: &[f64]| sc.iter().enumerate().fold(0, |b, (i, x)| if *x > sc[b] { i } else { b });

        cold_pick(&s, &eps, &eps[0]);
        let sc = cold_scores(&s, &eps);
        assert_eq!(best(&sc), 1);
        // Never-used endpoints rank above used ones.
        assert_eq!(sc, [0.0, 1.0, 0.5]);

        // A warm request leaves the history alone.
        let mut st = warm_state("default/pod-a", 5);
        assert_eq!(scores(&s, &mut st, &LlmRequest::default(), &eps), [0.5, 0.5, 0.5]);
        s.on_pick(&st, &LlmRequest::default(), "default", &eps[1]);
        let sc = cold_scores(&s, &eps);
        assert!(sc[1] > sc[0]);

        cold_pick(&s, &eps, &eps[1]);
        assert_eq!(best(&cold_scores(&s, &eps)), 2);
        cold_pick(&s, &eps, &eps[2]);
        assert_eq!(best(&cold_scores(&s, &eps)), 0);
        assert_eq!(s.endpoints(), ["default/pod-a", "default/pod-b", "default/pod-c"]);
    }

    #[test]
    fn no_hit_lru_tracks_prefill_and_decode_picks() {
        let (pa, pb) = (ep("default/prefill-a", &[]), ep("default/prefill-b", &[]));
        let (da, db) = (ep("default/decode-a", &[]), ep("default/decode-b", &[]));
        let s = no_hit();
        let mut st = CycleState::default();
        let all = [pa.clone(), pb.clone(), da.clone(), db.clone()];
        scores(&s, &mut st, &LlmRequest::default(), &all);
        s.on_pick(&st, &LlmRequest::default(), "prefill", &pa);
        s.on_pick(&st, &LlmRequest::default(), "decode", &da);
        let p = cold_scores(&s, &[pa.clone(), pb.clone()]);
        let d = cold_scores(&s, &[da.clone(), db.clone()]);
        assert!(p[1] > p[0], "{p:?}");
        assert!(d[1] > d[0], "{d:?}");

        // Only the primary profile.
        let s = no_hit();
        cold_pick(&s, &[da.clone(), db.clone()], &da);
        let d = cold_scores(&s, &[da.clone(), db.clone()]);
        assert!(d[1] > d[0], "{d:?}");

        // A pick with no score in the cycle (no cold flag) changes nothing.
        let s = no_hit();
        s.on_pick(&CycleState::default(), &LlmRequest::default(), "decode", &da);
        assert!(s.endpoints().is_empty());
    }

    #[test]
    fn no_hit_lru_positions_count_the_whole_history() {
        // Used endpoints rank after the never-used ones by their position in the whole
        // history, clamped at 0.
        let s = no_hit();
        let eps: Vec<Endpoint> = ["a", "b", "c", "d"].iter().map(|id| ep(id, &[])).collect();
        for e in &eps {
            cold_pick(&s, &eps, e);
        }
        // History (oldest first): a b c d. Candidates c, x: x never used (rank 0), c at 2.
        let sc = cold_scores(&s, &[eps[2].clone(), ep("x", &[])]);
        assert_eq!(sc, [0.0, 1.0]);
        // Candidates d, b, a: 1 − 3/2 → 0, 1 − 1/2, 1 − 0/2.
        let sc = cold_scores(&s, &[eps[3].clone(), eps[1].clone(), eps[0].clone()]);
        assert_eq!(sc, [0.0, 0.5, 1.0]);
    }

    #[test]
    fn no_hit_lru_capacity_and_forget() {
        let s = NoHitLruScorer::from_params("n", &json!({"lruSize": 2})).unwrap();
        let eps: Vec<Endpoint> = ["a", "b", "c"].iter().map(|id| ep(id, &[])).collect();
        for e in &eps {
            cold_pick(&s, &eps, e);
        }
        assert_eq!(s.endpoints(), ["b", "c"]);
        s.forget("b");
        assert_eq!(s.endpoints(), ["c"]);
        // Re-picking moves an endpoint to the most recent.
        cold_pick(&s, &eps, &eps[0]);
        cold_pick(&s, &eps, &eps[2]);
        assert_eq!(s.endpoints(), ["a", "c"]);
    }

    #[test]
    fn no_hit_lru_instances_keep_their_own_cold_flag() {
        let a = NoHitLruScorer::from_params("a", &json!({})).unwrap();
        let b = NoHitLruScorer::from_params("b", &json!({})).unwrap();
        let e = ep("e", &[]);
        let mut st = CycleState::default();
        scores(&a, &mut st, &LlmRequest::default(), std::slice::from_ref(&e));
        b.on_pick(&st, &LlmRequest::default(), "p", &e);
        a.on_pick(&st, &LlmRequest::default(), "p", &e);
        assert!(b.endpoints().is_empty());
        assert_eq!(a.endpoints(), ["e"]);
    }

    #[test]
    fn no_hit_lru_dump_state() {
        let s = no_hit();
        assert_eq!(s.dump_state(), json!({"endpoints": [], "totalEndpoints": 0, "maxEndpoints": 100}));
        for id in ["default/pod-a", "default/pod-b"] {
            let e = ep(id, &[]);
            cold_pick(&s, std::slice::from_ref(&e), &e);
        }
        assert_eq!(
            s.dump_state(),
            json!({"endpoints": ["default/pod-a", "default/pod-b"], "totalEndpoints": 2, "maxEndpoints": 100})
        );
        // Capped at 100, least recent first.
        let s = no_hit();
        for i in 0..105 {
            let e = ep(&format!("default/pod-{i:03}"), &[]);
            cold_pick(&s, std::slice::from_ref(&e), &e);
        }
        let d = s.dump_state();
        assert_eq!(d["totalEndpoints"], 105);
        let shown = d["endpoints"].as_array().unwrap();
        assert_eq!(shown.len(), 100);
        assert_eq!((shown[0].as_str().unwrap(), shown[99].as_str().unwrap()), ("default/pod-000", "default/pod-099"));
    }

    #[test]
    fn no_hit_lru_dump_while_picking() {
        let s = no_hit();
        std::thread::scope(|t| {
            t.spawn(|| {
                for i in 0..100 {
                    let e = ep(&format!("default/pod-{i:03}"), &[]);
                    cold_pick(&s, std::slice::from_ref(&e), &e);
                }
            });
            t.spawn(|| {
                for _ in 0..100 {
                    assert!(s.dump_state()["totalEndpoints"].as_u64().unwrap() <= 100);
                }
            });
        });
        assert_eq!(s.endpoints().len(), 100);
    }

    // --- endpoint-attribute-filter (endpointattribute/filter_test.go) ---------

    const FILTER_ATTR: &str = "num_requests_running";

    fn valued(attr: &str, id: &str, v: f64) -> Endpoint {
        let mut e = ep(id, &[]);
        e.attributes.insert(attr.into(), AttributeValue::Float(v));
        e
    }

    #[test]
    fn endpoint_attribute_filter_factory() {
        let ok = [
            json!({"attribute": "num_requests_running", "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 10}}}),
            json!({"attribute": "num_requests_running", "onMissing": "Fail", "fallbackOnEmpty": true,
                   "algorithm": {"type": "threshold", "threshold": {"operator": "GreaterThanOrEqual", "value": 0.5}}}),
            json!({"attribute": "GPUUtilization", "producer": "dcgm-extractor",
                   "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 0.8}}}),
            json!({"attribute": "llm-d.ai/multicluster-queue-size", "producer": "",
                   "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 10}}}),
        ];
        for p in ok {
            assert!(EndpointAttributeFilter::from_params(&p).is_ok(), "{p}");
        }
        let bad = [
            (
                json!({"algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 10}}}),
                "attribute",
            ),
            (
                json!({"attribute": "GPUUtilization/dcgm-extractor", "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 0.8}}}),
                r#"split it into attribute: "GPUUtilization" and producer: "dcgm-extractor""#,
            ),
            (
                json!({"attribute": "num_requests_running", "onMissing": "Maybe", "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 10}}}),
                "onMissing",
            ),
            (json!({"attribute": "num_requests_running"}), "algorithm.type"),
            (json!({"attribute": "num_requests_running", "algorithm": {"type": "percentile"}}), "algorithm.type"),
            (json!({"attribute": "num_requests_running", "algorithm": {"type": "threshold"}}), "algorithm.threshold"),
            (
                json!({"attribute": "num_requests_running", "algorithm": {"type": "threshold", "threshold": {"operator": "Around", "value": 10}}}),
                "threshold.operator",
            ),
        ];
        for (p, want) in bad {
            let e = EndpointAttributeFilter::from_params(&p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    fn threshold_filter(op: &str, value: f64, on_missing: &str, fallback: bool) -> EndpointAttributeFilter {
        let mut p = json!({"attribute": FILTER_ATTR, "fallbackOnEmpty": fallback,
                           "algorithm": {"type": "threshold", "threshold": {"operator": op, "value": value}}});
        if !on_missing.is_empty() {
            p["onMissing"] = json!(on_missing);
        }
        EndpointAttributeFilter::from_params(&p).unwrap()
    }

    #[test]
    fn endpoint_attribute_filter_thresholds() {
        let v = |vals: &[f64]| -> Vec<Endpoint> {
            vals.iter().enumerate().map(|(i, x)| valued(FILTER_ATTR, &i.to_string(), *x)).collect()
        };
        let missing = || ep("missing", &[]);
        let req = LlmRequest::default();
        let run = |op: &str, om: &str, fb: bool, eps: &[Endpoint]| -> Vec<String> {
            filter_ids(&threshold_filter(op, 10.0, om, fb), &req, eps).into_iter().map(String::from).collect()
        };
        assert_eq!(run("LessThan", "", false, &v(&[5.0, 10.0, 15.0])), ["0"]);
        assert_eq!(run("LessThanOrEqual", "", false, &v(&[5.0, 10.0, 15.0])), ["0", "1"]);
        assert_eq!(run("GreaterThan", "", false, &v(&[5.0, 10.0, 15.0])), ["2"]);
        assert_eq!(run("GreaterThanOrEqual", "", false, &v(&[5.0, 10.0, 15.0])), ["1", "2"]);
        assert_eq!(run("Equal", "", false, &v(&[5.0, 10.0])), ["1"]);
        assert_eq!(run("NotEqual", "", false, &v(&[5.0, 10.0])), ["0"]);
        assert_eq!(run("LessThan", "Pass", false, &[valued(FILTER_ATTR, "0", 15.0), missing()]), ["missing"]);
        assert_eq!(run("LessThan", "Fail", false, &[valued(FILTER_ATTR, "0", 5.0), missing()]), ["0"]);
        assert!(run("LessThan", "", false, &v(&[15.0, 20.0])).is_empty());
        assert_eq!(run("LessThan", "", true, &v(&[15.0, 20.0])), ["0", "1"]);
        assert_eq!(run("LessThan", "", true, &v(&[5.0, 20.0])), ["0"]);
        // Integer attributes compare as numbers; text ones count as missing.
        let mut i = ep("int", &[]);
        i.attributes.insert(FILTER_ATTR.into(), AttributeValue::Int(3));
        let mut t = ep("text", &[]);
        t.attributes.insert(FILTER_ATTR.into(), AttributeValue::Text("3".into()));
        assert_eq!(run("LessThan", "Fail", false, &[i, t]), ["int"]);
    }

    #[test]
    fn endpoint_attribute_filter_reads_the_named_attribute() {
        let f = EndpointAttributeFilter::from_params(&json!({"attribute": "GPUUtilization", "producer": "dcgm-extractor",
            "onMissing": "Fail", "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 0.8}}}))
        .unwrap();
        let eps = [valued("GPUUtilization", "idle", 0.5), valued("GPUUtilization", "busy", 0.95)];
        assert_eq!(filter_ids(&f, &LlmRequest::default(), &eps), ["idle"]);
    }

    // --- endpoint-attribute-scorer (endpointattribute/endpointattribute_test.go) -

    const SCORER_ATTR: &str = "custom.queue_depth";

    #[test]
    fn endpoint_attribute_scorer_factory() {
        let ok = [
            json!({"attributeKey": "custom.queue_depth", "algorithm": {"type": "linear_lower_is_better"}}),
            json!({"attributeKey": "GPUUtilization", "producer": "dcgm-extractor", "algorithm": {"type": "linear_lower_is_better"}}),
            json!({"attributeKey": "llm-d.ai/multicluster-queue-size", "producer": "", "algorithm": {"type": "linear_lower_is_better"}}),
            json!({"attributeKey": "custom.tokens_per_second", "algorithm": {"type": "linear_higher_is_better", "normalization": {"adaptiveRange": {}}}}),
            json!({"attributeKey": "custom.kv_cache_utilization", "algorithm": {"type": "linear_lower_is_better", "normalization": {"fixedRange": {"min": 0, "max": 1}}}}),
        ];
        for p in ok {
            assert!(EndpointAttributeScorer::from_params(&p).is_ok(), "{p}");
        }
        let bad = [
            (
                json!({"attributeKey": "GPUUtilization/dcgm-extractor", "algorithm": {"type": "linear_lower_is_better"}}),
                r#"split it into attribute: "GPUUtilization" and producer: "dcgm-extractor""#,
            ),
            (json!({"algorithm": {"type": "linear_lower_is_better"}}), "attributeKey"),
            (json!({"attributeKey": "custom.queue_depth"}), "algorithm.type"),
            (
                json!({"attributeKey": "custom.queue_depth", "algorithm": {"type": "log_lower_is_better"}}),
                "algorithm.type",
            ),
            (
                json!({"attributeKey": "custom.queue_depth", "algorithm": {"type": "linear_lower_is_better",
                       "normalization": {"fixedRange": {"min": 0, "max": 1}, "adaptiveRange": {}}}}),
                "at most one normalization strategy",
            ),
            (
                json!({"attributeKey": "custom.queue_depth", "algorithm": {"type": "linear_lower_is_better",
                       "normalization": {"fixedRange": {"min": 1, "max": 1}}}}),
                "min < max",
            ),
        ];
        for (p, want) in bad {
            let e = EndpointAttributeScorer::from_params(&p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    fn attr_scores(kind: &str, fixed: Option<(f64, f64)>, vals: &[Option<f64>]) -> Vec<f64> {
        let mut p = json!({"attributeKey": SCORER_ATTR, "algorithm": {"type": kind}});
        if let Some((min, max)) = fixed {
            p["algorithm"]["normalization"] = json!({"fixedRange": {"min": min, "max": max}});
        }
        let s = EndpointAttributeScorer::from_params(&p).unwrap();
        let eps: Vec<Endpoint> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Some(v) => valued(SCORER_ATTR, &i.to_string(), *v),
                None => ep(&i.to_string(), &[]),
            })
            .collect();
        scores(&s, &mut CycleState::default(), &LlmRequest::default(), &eps)
    }

    #[test]
    fn endpoint_attribute_scorer_adaptive_range() {
        let (lo, hi) = ("linear_lower_is_better", "linear_higher_is_better");
        let got = |k, v: &[Option<f64>]| attr_scores(k, None, v);
        assert!(close(&got(lo, &[Some(10.0), Some(5.0), Some(0.0)]), &[0.0, 0.5, 1.0]));
        assert!(close(&got(hi, &[Some(10.0), Some(5.0), Some(0.0)]), &[1.0, 0.5, 0.0]));
        assert!(close(&got(lo, &[Some(7.0), Some(7.0)]), &[1.0, 1.0]));
        assert!(close(&got(lo, &[Some(10.0), None, Some(0.0)]), &[0.0, 0.0, 1.0]));
        assert!(close(&got(lo, &[None, None]), &[0.0, 0.0]));
    }

    #[test]
    fn endpoint_attribute_scorer_fixed_range() {
        let (lo, hi) = ("linear_lower_is_better", "linear_higher_is_better");
        let got = |k, v: &[Option<f64>]| attr_scores(k, Some((0.0, 10.0)), v);
        assert!(close(&got(lo, &[Some(10.0), Some(5.0), Some(0.0)]), &[0.0, 0.5, 1.0]));
        assert!(close(&got(hi, &[Some(10.0), Some(5.0), Some(0.0)]), &[1.0, 0.5, 0.0]));
        assert!(close(&got(lo, &[Some(7.0), Some(7.0)]), &[0.3, 0.3]));
        assert!(close(&got(lo, &[Some(15.0), Some(-5.0)]), &[0.0, 1.0]));
        assert!(close(&got(hi, &[Some(10.0), None]), &[1.0, 0.0]));
    }
}
