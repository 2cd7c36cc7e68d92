//! llm-d-router's request-control plugins and the small data-layer pair for served
//! models, under the router's type names, parameter schemas, defaults and outcomes
//! (commit ebab687):
//!
//! - [`session`]: `session-id-producer`, `session-affinity-filter` (both strategies),
//!   and the `session_id` strategy of `session-affinity-scorer`.
//! - [`identity`]: `agent-identity` (a request-header processor).
//! - [`reporter`]: `request-attribute-reporter` (a response-body reporter, over a CEL
//!   subset in [`cel`]).
//! - [`screener`]: `disaggregatedset-rollout-screener` (a screener that also stamps
//!   response headers).
//! - [`conformance`]: `header-based-testing-filter` and
//!   `destination-endpoint-served-verifier` (conformance-test plugins).
//! - [`models`]: `models-data-source` and `models-data-extractor`.
//!
//! The router's director runs request control around the pick, in this order:
//! request-header processors, (flow control), screeners, data producers, (admitters),
//! the scheduler, pre-request plugins; then response-header processors when the
//! upstream answers and response-body processors when its body ends. llmd's picker has
//! no such stage yet, so the roles are small runtime-free traits here
//! ([`RequestHeaderProcessor`], [`Screener`], [`DataProducer`], [`PreRequest`],
//! [`ResponseHeaderProcessor`], [`ResponseBodyProcessor`]), gathered per plugin in a
//! [`RequestControl`] and run in order by a [`RequestControlChain`], which is what the
//! front ends call.
//!
//! Request attributes (the router's per-request attribute store, which producers write
//! and the session plugins read) are a [`RequestAttributes`]; filters and scorers find
//! them through [`attributes_of`].

pub mod cel;
pub mod conformance;
pub mod identity;
pub mod models;
pub mod reporter;
pub mod screener;
pub mod session;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, PluginHandle};
use crate::request::LlmRequest;
use crate::scheduler::PickResult;

/// A request attribute's key, as the router's `plugin.DataKey`: a data type and the
/// name of the plugin that produced it (empty for a producer-agnostic key such as
/// `agent-identity`). Written `type/producer`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataKey {
    data_type: String,
    producer: String,
}

impl DataKey {
    /// The key of `data_type` produced by `producer` (`""`: any producer).
    pub fn new(data_type: impl Into<String>, producer: impl Into<String>) -> Self {
        DataKey { data_type: data_type.into(), producer: producer.into() }
    }

    /// The key with `producer` as its producer when that is not empty (the router's
    /// `WithNonEmptyProducerName`).
    pub fn with_producer(mut self, producer: &str) -> Self {
        if !producer.is_empty() {
            self.producer = producer.to_string();
        }
        self
    }
}

impl std::fmt::Display for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.data_type, self.producer)
    }
}

/// One request's attributes (the router's `InferenceRequest` attribute store): values
/// by [`DataKey`], written by request-header processors and data producers before the
/// pick and read by filters, scorers and pre-request plugins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAttributes(BTreeMap<DataKey, Value>);

impl RequestAttributes {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: DataKey, value: Value) {
        self.0.insert(key, value);
    }

    /// The value under `key`.
    pub fn get(&self, key: &DataKey) -> Option<&Value> {
        self.0.get(key)
    }

    /// The value under `key` when it is a string (the router accepts any value of
    /// string kind; other kinds are skipped).
    pub fn get_str(&self, key: &DataKey) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// The keys set, in order.
    pub fn keys(&self) -> impl Iterator<Item = &DataKey> {
        self.0.keys()
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The request's attributes as filters and scorers read them (`LlmRequest::attributes`).
pub fn attributes_of<'a>(_state: &'a CycleState, req: &'a LlmRequest) -> Option<&'a RequestAttributes> {
    Some(&req.attributes)
}

/// Runs on the request's headers before anything else (the router's
/// `RequestHeaderProcessor`): `agent-identity`.
pub trait RequestHeaderProcessor: Send + Sync {
    /// Reads `headers` (lower-case names) and may set attributes; an error fails the
    /// request (the router answers it with the plugin's error).
    fn request_header(&self, headers: &BTreeMap<String, String>, attrs: &mut RequestAttributes) -> Result<(), String>;
}

/// Narrows the candidates before any scheduling profile sees them (the router's
/// `Screener`); an empty result fails the request with 503 (`screeners eliminated all
/// endpoint candidates`, reason `rejected-no-endpoints`).
pub trait Screener: Send + Sync {
    /// The endpoints of `candidates` that may serve `req`. `pool` is every endpoint the
    /// datastore knows (serving or not): screeners that watch the fleet read it.
    /// `draw` yields uniform numbers in [0, 1) (injected, so decisions reproduce).
    fn screen<'a>(
        &self,
        req: &LlmRequest,
        pool: &[&Endpoint],
        candidates: Vec<&'a Endpoint>,
        draw: &mut dyn FnMut() -> f64,
    ) -> Vec<&'a Endpoint>;
}

/// Writes per-request data before the pick (the router's `DataProducer`):
/// `session-id-producer`.
pub trait DataProducer: Send + Sync {
    /// Reads `headers` and may set attributes. The router does not fail a request for a
    /// producer's error, so there is none.
    fn produce(&self, headers: &BTreeMap<String, String>, attrs: &mut RequestAttributes);
}

/// Learns the pick before the request is sent (the router's `PreRequest`): the
/// `session_id` strategy binds a session to the endpoint picked for it here.
pub trait PreRequest: Send + Sync {
    /// `result` was picked for `req` (whose attributes are `attrs`).
    fn pre_request(&self, req: &LlmRequest, attrs: &RequestAttributes, result: &PickResult);

    /// The clock to keep time by (the datastore's), for plugins that expire state.
    fn bind_clock(&self, _clock: Arc<dyn Clock>) {}
}

/// What response processors know of a request whose upstream answered.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    /// The request.
    pub request: &'a LlmRequest,
    /// Its pick (`None` when it was routed without one).
    pub result: Option<&'a PickResult>,
    /// The destination endpoint as the datastore has it (labels included): the
    /// router's `targetPod`.
    pub target: Option<&'a Endpoint>,
    /// Envoy's metadata for the request (ext-proc's `metadata_context.filter_metadata`
    /// as JSON, by namespace); the HTTP gateway, which is its own proxy, supplies
    /// `{"envoy.lb": {"x-gateway-destination-endpoint-served": "<host:port>"}}`.
    pub metadata: Option<&'a Value>,
}

/// Runs on the upstream's response headers (the router's `ResponseHeaderProcessor`).
pub trait ResponseHeaderProcessor: Send + Sync {
    /// May add headers (lower-case names) to the response sent to the client.
    fn response_header(&self, cx: &ResponseContext<'_>, headers: &mut BTreeMap<String, String>);
}

/// Token usage of a response, as the router's `Usage` marshals it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens`.
    pub prompt_tokens: u64,
    /// `completion_tokens`.
    pub completion_tokens: u64,
    /// `total_tokens`.
    pub total_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`, when the response has the details.
    pub cached_tokens: Option<u64>,
}

impl Usage {
    /// From an OpenAI `usage` object (absent counts are 0).
    pub fn from_json(usage: &Value) -> Self {
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Usage {
            prompt_tokens: n(usage, "prompt_tokens"),
            completion_tokens: n(usage, "completion_tokens"),
            total_tokens: n(usage, "total_tokens"),
            cached_tokens: usage.get("prompt_tokens_details").filter(|d| d.is_object()).map(|d| n(d, "cached_tokens")),
        }
    }
}

/// Runs when the response body ends (the router's `ResponseBodyProcessor` at end of
/// stream, whose dynamic metadata the router returns to Envoy).
pub trait ResponseBodyProcessor: Send + Sync {
    /// May add entries to `metadata` (Envoy dynamic metadata: namespace → struct).
    fn response_complete(&self, cx: &ResponseContext<'_>, usage: &Usage, metadata: &mut Map<String, Value>);
}

/// The request-control roles one plugin plays (several, for some: the session filter
/// binds before the request and writes a response header).
#[derive(Clone, Default)]
pub struct RequestControl {
    /// Request-header processor role.
    pub request_header: Option<Arc<dyn RequestHeaderProcessor>>,
    /// Screener role.
    pub screener: Option<Arc<dyn Screener>>,
    /// Data-producer role.
    pub producer: Option<Arc<dyn DataProducer>>,
    /// Pre-request role.
    pub pre_request: Option<Arc<dyn PreRequest>>,
    /// Response-header role.
    pub response_header: Option<Arc<dyn ResponseHeaderProcessor>>,
    /// Response-body role.
    pub response_body: Option<Arc<dyn ResponseBodyProcessor>>,
}

impl std::fmt::Debug for RequestControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestControl")
            .field("request_header", &self.request_header.is_some())
            .field("screener", &self.screener.is_some())
            .field("producer", &self.producer.is_some())
            .field("pre_request", &self.pre_request.is_some())
            .field("response_header", &self.response_header.is_some())
            .field("response_body", &self.response_body.is_some())
            .finish()
    }
}

/// The request-control plugins of a configuration, each stage run in the given order
/// (the router's order is its plugin map's, i.e. unspecified; file order is a fine
/// choice).
#[derive(Debug, Clone, Default)]
pub struct RequestControlChain {
    stages: Vec<(String, RequestControl)>,
}

impl RequestControlChain {
    /// A chain of `(plugin name, roles)`.
    pub fn new(stages: impl IntoIterator<Item = (String, RequestControl)>) -> Self {
        RequestControlChain { stages: stages.into_iter().collect() }
    }

    /// Whether no plugin plays a request-control role.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Binds every pre-request plugin to `clock`.
    pub fn bind_clock(&self, clock: &Arc<dyn Clock>) {
        for p in self.stages.iter().filter_map(|(_, rc)| rc.pre_request.as_ref()) {
            p.bind_clock(clock.clone());
        }
    }

    /// The request-header processors, in order; the first error fails the request.
    pub fn request_headers(
        &self,
        headers: &BTreeMap<String, String>,
        attrs: &mut RequestAttributes,
    ) -> Result<(), String> {
        for (name, p) in self.stages.iter().filter_map(|(n, rc)| rc.request_header.as_ref().map(|p| (n, p))) {
            p.request_header(headers, attrs).map_err(|e| format!("request-header plugin {name:?}: {e}"))?;
        }
        Ok(())
    }

    /// The screeners: each sees every candidate and the result is what all of them
    /// keep, in candidate order (the router's `runScreeners`). Empty: fail the request
    /// with 503.
    pub fn screen<'a>(
        &self,
        req: &LlmRequest,
        pool: &[&Endpoint],
        candidates: Vec<&'a Endpoint>,
        draw: &mut dyn FnMut() -> f64,
    ) -> Vec<&'a Endpoint> {
        let mut kept = candidates.clone();
        for s in self.stages.iter().filter_map(|(_, rc)| rc.screener.as_ref()) {
            let allowed = s.screen(req, pool, candidates.clone(), draw);
            kept.retain(|e| allowed.iter().any(|a| std::ptr::eq(*a, *e)));
        }
        kept
    }

    /// The data producers, in order.
    pub fn produce(&self, headers: &BTreeMap<String, String>, attrs: &mut RequestAttributes) {
        for p in self.stages.iter().filter_map(|(_, rc)| rc.producer.as_ref()) {
            p.produce(headers, attrs);
        }
    }

    /// The pre-request plugins, with the pick.
    pub fn pre_request(&self, req: &LlmRequest, attrs: &RequestAttributes, result: &PickResult) {
        for p in self.stages.iter().filter_map(|(_, rc)| rc.pre_request.as_ref()) {
            p.pre_request(req, attrs, result);
        }
    }

    /// The response-header processors: headers to add to the client's response.
    pub fn response_headers(&self, cx: &ResponseContext<'_>, headers: &mut BTreeMap<String, String>) {
        for p in self.stages.iter().filter_map(|(_, rc)| rc.response_header.as_ref()) {
            p.response_header(cx, headers);
        }
    }

    /// The response-body processors at the end of the body: Envoy dynamic metadata to
    /// return (ext-proc) or log (gateway).
    pub fn response_complete(&self, cx: &ResponseContext<'_>, usage: &Usage, metadata: &mut Map<String, Value>) {
        for p in self.stages.iter().filter_map(|(_, rc)| rc.response_body.as_ref()) {
            p.response_complete(cx, usage, metadata);
        }
    }
}

/// A request's fairness ID as the router's director derives it: the fairness header
/// (or its alias), else the `agent-identity` attribute, else `default-flow`.
pub fn fairness_id<'a>(headers: &'a BTreeMap<String, String>, attrs: &'a RequestAttributes) -> &'a str {
    use crate::flowcontrol::types::{DEFAULT_FAIRNESS_ID, FAIRNESS_ID_HEADER, OLD_FAIRNESS_ID_HEADER, header};
    header(headers, FAIRNESS_ID_HEADER, OLD_FAIRNESS_ID_HEADER)
        .filter(|s| !s.is_empty())
        .or_else(|| identity::agent_identity(attrs))
        .unwrap_or(DEFAULT_FAIRNESS_ID)
}

/// A plugin handle with its request-control roles. `PluginHandle` has no field for
/// them yet, so they are dropped here: the one line to change when it has one.
fn with_roles(h: PluginHandle, rc: RequestControl) -> PluginHandle {
    PluginHandle { request_control: Some(rc), ..h }
}

fn handle(name: &str, type_name: &str) -> PluginHandle {
    PluginHandle { name: name.into(), type_name: type_name.into(), ..Default::default() }
}

/// Registers this module's plugin types (not `session-affinity-scorer`, which the
/// registry keeps: see [`session::scorer_handle`]).
pub(crate) fn register(r: &mut crate::registry::PluginRegistry) {
    r.register(session::SESSION_ID_PRODUCER, |n, p| {
        let s = Arc::new(session::SessionIdProducer::from_params(n, p)?);
        Ok(with_roles(
            handle(n, session::SESSION_ID_PRODUCER),
            RequestControl { producer: Some(s), ..Default::default() },
        ))
    });
    r.register(session::SESSION_AFFINITY_FILTER, session::filter_handle);
    r.register(session::MULTICLUSTER_SESSION_AFFINITY_FILTER, session::multicluster_filter_handle);
    r.register(identity::AGENT_IDENTITY, |n, p| {
        let a = Arc::new(identity::AgentIdentity::from_params(p)?);
        Ok(with_roles(
            handle(n, identity::AGENT_IDENTITY),
            RequestControl { request_header: Some(a), ..Default::default() },
        ))
    });
    r.register(reporter::REQUEST_ATTRIBUTE_REPORTER, |n, p| {
        let rep = Arc::new(reporter::RequestAttributeReporter::from_params(p)?);
        Ok(with_roles(
            handle(n, reporter::REQUEST_ATTRIBUTE_REPORTER),
            RequestControl { response_body: Some(rep), ..Default::default() },
        ))
    });
    r.register(screener::ROLLOUT_SCREENER, |n, p| {
        let s = Arc::new(screener::RolloutScreener::from_params(n, p)?);
        Ok(with_roles(
            handle(n, screener::ROLLOUT_SCREENER),
            RequestControl { screener: Some(s.clone()), response_header: Some(s), ..Default::default() },
        ))
    });
    // Conformance plugins: the router's factories ignore their parameters.
    r.register(conformance::HEADER_BASED_TESTING_FILTER, |n, _| {
        Ok(PluginHandle {
            filter: Some(Arc::new(conformance::HeaderBasedTestingFilter)),
            ..handle(n, conformance::HEADER_BASED_TESTING_FILTER)
        })
    });
    r.register(conformance::SERVED_VERIFIER, |n, _| {
        let v = Arc::new(conformance::DestinationEndpointServedVerifier);
        Ok(with_roles(
            handle(n, conformance::SERVED_VERIFIER),
            RequestControl { response_header: Some(v), ..Default::default() },
        ))
    });
    r.register(models::MODELS_DATA_SOURCE, |n, p| {
        Ok(PluginHandle { source: Some(models::source_from_params(p)?), ..handle(n, models::MODELS_DATA_SOURCE) })
    });
    // The router's factory ignores its parameters.
    r.register(models::MODELS_DATA_EXTRACTOR, |n, _| {
        Ok(PluginHandle {
            extractor: Some(Arc::new(models::ModelsExtractor)),
            ..handle(n, models::MODELS_DATA_EXTRACTOR)
        })
    });
}

/// A parameters object checked as the router decodes it (unknown keys refused, keys
/// matched ignoring ASCII case, `null` as absent), with getters whose errors name the
/// parameter's full path.
pub(crate) struct Fields {
    at: String,
    map: Map<String, Value>,
}

impl Fields {
    /// The object `v` at path `at` (`""`: the parameters), whose keys must be `known`.
    pub(crate) fn new(v: &Value, at: &str, known: &[&str]) -> Result<Self, String> {
        Ok(Fields { at: at.to_string(), map: super::known_fields(v, at, known)? })
    }

    /// The path of `key`.
    pub(crate) fn path(&self, key: &str) -> String {
        super::join_path(&self.at, key)
    }

    /// The raw value of `key` (absent or `null`: `None`).
    pub(crate) fn value(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// A string (Go's zero value `""` when absent).
    pub(crate) fn string(&self, key: &str) -> Result<String, String> {
        match self.map.get(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!("parameter {}: expected a string, got {v}", self.path(key))),
        }
    }

    /// A number (`0` when absent).
    pub(crate) fn number(&self, key: &str) -> Result<f64, String> {
        match self.map.get(key) {
            None => Ok(0.0),
            Some(v) => v.as_f64().ok_or_else(|| format!("parameter {}: expected a number, got {v}", self.path(key))),
        }
    }

    /// A list (empty when absent).
    pub(crate) fn list(&self, key: &str) -> Result<Vec<Value>, String> {
        match self.map.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(v) => Err(format!("parameter {}: expected a list, got {v}", self.path(key))),
        }
    }

    /// A list of strings (a `null` element is Go's `""`).
    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        self.list(key)?
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Null => Ok(String::new()),
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("parameter {}[{i}]: expected a string, got {other}", self.path(key))),
            })
            .collect()
    }
}
