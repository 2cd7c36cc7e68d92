//! Endpoints (model-server pods) and what the scheduler knows about them.

use std::collections::BTreeMap;
use std::time::Duration;

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
}

impl Role {
    /// Parses llm-d's role label values (`prefill`, `decode`, `both`, `prefill-decode`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prefill" => Some(Role::Prefill),
            "decode" => Some(Role::Decode),
            "both" | "prefill-decode" | "" => Some(Role::Both),
            _ => None,
        }
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
        }
    }
}
