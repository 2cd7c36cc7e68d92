//! Endpoints (model-server pods) and what the scheduler knows about them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::health::EndpointHealth;

/// What a pod does in prefill/decode disaggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Prefill only.
    Prefill,
    /// Decode only.
    Decode,
    /// Both (no disaggregation).
    #[default]
    Both,
    /// Multimodal encoding only (E/P/D).
    Encode,
    /// Encoding and prefill.
    EncodePrefill,
    /// Every stage.
    EncodePrefillDecode,
}

impl Role {
    /// Parses llm-d's role label values (`prefill`, `decode`, `both`, `prefill-decode`,
    /// `encode`, `encode-prefill`, `encode-prefill-decode`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prefill" => Some(Role::Prefill),
            "decode" => Some(Role::Decode),
            "both" | "prefill-decode" | "" => Some(Role::Both),
            "encode" => Some(Role::Encode),
            "encode-prefill" => Some(Role::EncodePrefill),
            "encode-prefill-decode" => Some(Role::EncodePrefillDecode),
            _ => None,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
            Role::Both => "both",
            Role::Encode => "encode",
            Role::EncodePrefill => "encode-prefill",
            Role::EncodePrefillDecode => "encode-prefill-decode",
        }
    }

    /// Runs prefill.
    pub fn prefills(self) -> bool {
        matches!(self, Role::Prefill | Role::Both | Role::EncodePrefill | Role::EncodePrefillDecode)
    }

    /// Decodes.
    pub fn decodes(self) -> bool {
        matches!(self, Role::Decode | Role::Both | Role::EncodePrefillDecode)
    }

    /// Encodes multimodal inputs.
    pub fn encodes(self) -> bool {
        matches!(self, Role::Encode | Role::EncodePrefill | Role::EncodePrefillDecode)
    }
}

/// Scraped engine metrics (vLLM names in comments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointMetrics {
    /// `vllm:num_requests_waiting`.
    pub waiting: u64,
    /// `vllm:num_requests_running`.
    pub running: u64,
    /// `vllm:kv_cache_usage_perc` (0..1).
    pub kv_usage: f64,
    /// LoRA adapters loaded (`vllm:lora_requests_info` `running_lora_adapters`).
    pub active_loras: Vec<String>,
    /// LoRA adapters requested but not loaded (`waiting_lora_adapters`).
    pub waiting_loras: Vec<String>,
    /// Most adapters the engine holds at once (`max_lora`).
    pub max_loras: usize,
    /// When these were scraped (scheduler clock); `None` if never.
    pub updated_at: Option<Duration>,
}

/// Whether an endpoint takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EndpointStatus {
    /// Takes new requests.
    #[default]
    Ready,
    /// Known but not (yet) serving: failing health checks, or starting.
    NotReady,
    /// Finishing the requests it has; takes no new ones.
    Draining,
}

impl EndpointStatus {
    /// The status as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Ready => "ready",
            EndpointStatus::NotReady => "not_ready",
            EndpointStatus::Draining => "draining",
        }
    }
}

/// Requests the picker has sent to an endpoint and not yet seen finish (llm-d's
/// in-flight load): counted by the picker itself, so it is exact and immediate where
/// scraped queue lengths lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlightLoad {
    /// Requests in flight (until their response ends).
    pub requests: u64,
    /// Prompt tokens still to prefill: a request's are counted until the first byte of
    /// its response (llm-d's `inflight-load-producer`), when the prefill is done.
    /// Estimated as a quarter of the prompt's characters when it was not tokenized.
    pub prompt_tokens: u64,
    /// When the picker last sent it a request (datastore clock); `None` if never.
    pub last_sent: Option<std::time::Duration>,
    /// `prompt_tokens` aged by the endpoint's observed prefill rate: what is estimated
    /// to be left of that work now (equal to `prompt_tokens` until the rate is learned
    /// from first response bytes). Refreshed by the picker before each pick.
    pub prefill_remaining: u64,
}

/// A value a data-layer extractor wrote on an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// A count or identifier.
    Int(i64),
    /// A measurement.
    Float(f64),
    /// A string.
    Text(String),
    /// A list of names (LoRA adapters, say).
    List(Vec<String>),
}

impl AttributeValue {
    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            AttributeValue::Int(i) => Some(*i as f64),
            AttributeValue::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// One model server.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Unique name (a pod's `namespace/name`, or `host:port` locally).
    pub id: String,
    /// `host:port` requests go to.
    pub address: String,
    /// Prefill/decode role.
    pub role: Role,
    /// Free-form labels (from the pod).
    pub labels: BTreeMap<String, String>,
    /// Latest metrics.
    pub metrics: EndpointMetrics,
    /// ZMQ endpoint of its KV event stream, if it publishes one.
    pub kv_events: Option<String>,
    /// Whether it takes new requests.
    pub status: EndpointStatus,
    /// What the picker has sent it and not yet seen finish.
    pub inflight: InFlightLoad,
    /// Named attributes written by data-layer extractors (`llmd.ai/…` names and the
    /// config's custom ones); filters and scorers read them by name.
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Ejection and health-check state (see [`crate::health`]).
    pub health: EndpointHealth,
}

impl Endpoint {
    /// An endpoint with no labels and empty metrics.
    pub fn new(id: impl Into<String>, address: impl Into<String>, role: Role) -> Self {
        Endpoint {
            id: id.into(),
            address: address.into(),
            role,
            labels: BTreeMap::new(),
            metrics: EndpointMetrics::default(),
            kv_events: None,
            status: EndpointStatus::Ready,
            inflight: InFlightLoad::default(),
            attributes: BTreeMap::new(),
            health: EndpointHealth::default(),
        }
    }

    /// The endpoint with `kv_events` set.
    pub fn with_kv_events(mut self, zmq: impl Into<String>) -> Self {
        self.kv_events = Some(zmq.into());
        self
    }

    /// Whether discovery says new requests may go here.
    pub fn is_ready(&self) -> bool {
        self.status == EndpointStatus::Ready
    }

    /// Whether picks may choose it: ready, not ejected, not failing health checks.
    pub fn is_serving(&self) -> bool {
        self.is_ready() && self.health.serving()
    }

    /// An attribute by name.
    pub fn attribute(&self, name: &str) -> Option<&AttributeValue> {
        self.attributes.get(name)
    }
}
