//! Prometheus metrics with vLLM's names and meanings, so dashboards and llm-d's
//! endpoint picker read an llmd engine as they read a vLLM pod.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// `model_name` label, as vLLM sets it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Served model name.
    pub model_name: String,
}

/// `model_name` plus `finished_reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabel {
    /// Served model name.
    pub model_name: String,
    /// `stop`, `length` or `abort`.
    pub finished_reason: String,
}

/// The labels of `vllm:cache_config_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheConfigLabel {
    /// Tokens per block.
    pub block_size: String,
    /// Blocks in the KV cache.
    pub num_gpu_blocks: String,
    /// KV cache element type.
    pub cache_dtype: String,
    /// Whether prefix caching is on.
    pub enable_prefix_caching: String,
}

// vLLM's buckets (vllm/v1/metrics/loggers.py).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];

fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BUCKETS.iter().copied())
}

fn itl_histogram() -> Histogram {
    Histogram::new(ITL_BUCKETS.iter().copied())
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// Every metric the engine exports.
#[derive(Debug)]
pub struct EngineMetrics {
    label: ModelLabel,
    /// `vllm:num_requests_running`.
    pub running: Family<ModelLabel, Gauge>,
    /// `vllm:num_requests_waiting`.
    pub waiting: Family<ModelLabel, Gauge>,
    /// `vllm:kv_cache_usage_perc` (0..1).
    pub kv_usage: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// `vllm:prefix_cache_queries` (tokens).
    pub prefix_queries: Family<ModelLabel, Counter>,
    /// `vllm:prefix_cache_hits` (tokens).
    pub prefix_hits: Family<ModelLabel, Counter>,
    /// `vllm:num_preemptions`.
    pub preemptions: Family<ModelLabel, Counter>,
    /// `vllm:prompt_tokens`.
    pub prompt_tokens: Family<ModelLabel, Counter>,
    /// `vllm:generation_tokens`.
    pub generation_tokens: Family<ModelLabel, Counter>,
    /// `vllm:request_success` by finish reason.
    pub request_success: Family<FinishLabel, Counter>,
    /// `vllm:time_to_first_token_seconds`.
    pub ttft: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// `vllm:inter_token_latency_seconds`.
    pub itl: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// `vllm:e2e_request_latency_seconds`.
    pub e2e: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// `vllm:request_queue_time_seconds`.
    pub queue_time: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// `vllm:cache_config_info`.
    pub cache_config: Family<CacheConfigLabel, Gauge>,
}

impl EngineMetrics {
    /// Metrics for a model served as `model_name`.
    pub fn new(model_name: &str) -> Self {
        EngineMetrics {
            label: ModelLabel { model_name: model_name.to_string() },
            running: Family::default(),
            waiting: Family::default(),
            kv_usage: Family::default(),
            prefix_queries: Family::default(),
            prefix_hits: Family::default(),
            preemptions: Family::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            request_success: Family::default(),
            ttft: Family::new_with_constructor(ttft_histogram),
            itl: Family::new_with_constructor(itl_histogram),
            e2e: Family::new_with_constructor(latency_histogram),
            queue_time: Family::new_with_constructor(latency_histogram),
            cache_config: Family::default(),
        }
    }

    /// The `model_name` label set.
    pub fn label(&self) -> &ModelLabel {
        &self.label
    }

    /// Registers every metric under its vLLM name.
    pub fn register(&self, r: &mut Registry) {
        r.register("vllm:num_requests_running", "Number of requests in model execution batches", self.running.clone());
        r.register("vllm:num_requests_waiting", "Number of requests waiting to be processed", self.waiting.clone());
        r.register("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage", self.kv_usage.clone());
        r.register(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens",
            self.prefix_queries.clone(),
        );
        r.register(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens",
            self.prefix_hits.clone(),
        );
        r.register("vllm:num_preemptions", "Cumulative number of preemption from the engine", self.preemptions.clone());
        r.register("vllm:prompt_tokens", "Number of prefill tokens processed", self.prompt_tokens.clone());
        r.register("vllm:generation_tokens", "Number of generation tokens processed", self.generation_tokens.clone());
        r.register("vllm:request_success", "Count of successfully processed requests", self.request_success.clone());
        r.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            self.ttft.clone(),
        );
        r.register("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds", self.itl.clone());
        r.register("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds", self.e2e.clone());
        r.register(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request",
            self.queue_time.clone(),
        );
        r.register("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", self.cache_config.clone());
    }

    /// Records the cache configuration (a gauge fixed at 1 carrying labels).
    pub fn set_cache_config(&self, block_size: usize, num_blocks: usize, dtype: &str, prefix_caching: bool) {
        self.cache_config
            .get_or_create(&CacheConfigLabel {
                block_size: block_size.to_string(),
                num_gpu_blocks: num_blocks.to_string(),
                cache_dtype: dtype.to_string(),
                enable_prefix_caching: prefix_caching.to_string(),
            })
            .set(1);
    }
}
