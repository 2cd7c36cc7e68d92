//! Prometheus metrics with vLLM's names, labels and buckets
//! (`vllm/v1/metrics/loggers.py`), so dashboards and llm-d's endpoint picker read an
//! llmd engine as they read a vLLM pod. Every series carries `model_name` and
//! `engine="0"`, as vLLM's do.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `finished_reason` of `vllm:request_success`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabel {
    /// `stop`, `length`, `abort` or `error`.
    pub finished_reason: String,
}

/// The labels of `vllm:cache_config_info` (values spelled as Python prints them).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheConfigLabel {
    /// Tokens per block.
    pub block_size: String,
    /// Blocks in the KV cache.
    pub num_gpu_blocks: String,
    /// KV cache element type.
    pub cache_dtype: String,
    /// `True` or `False`.
    pub enable_prefix_caching: String,
}

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
const ITERATION_TOKEN_BUCKETS: &[f64] =
    &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

/// vLLM's `build_1_2_5_buckets`: 1, 2, 5, 10, 20, 50, … up to `max`.
fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            let v = m * scale;
            if v > max as f64 {
                return out;
            }
            out.push(v);
        }
        scale *= 10.0;
    }
}

fn histogram(buckets: &[f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

/// Every metric the engine exports.
#[derive(Debug)]
pub struct EngineMetrics {
    model_name: String,
    /// `vllm:num_requests_running`.
    pub running: Gauge,
    /// `vllm:num_requests_waiting`.
    pub waiting: Gauge,
    /// `vllm:kv_cache_usage_perc` (0..1).
    pub kv_usage: Gauge<f64, AtomicU64>,
    /// `vllm:prefix_cache_queries` (tokens).
    pub prefix_queries: Counter,
    /// `vllm:prefix_cache_hits` (tokens).
    pub prefix_hits: Counter,
    /// `vllm:num_preemptions`.
    pub preemptions: Counter,
    /// `vllm:prompt_tokens`.
    pub prompt_tokens: Counter,
    /// `vllm:prompt_tokens_cached`.
    pub prompt_tokens_cached: Counter,
    /// `vllm:generation_tokens`.
    pub generation_tokens: Counter,
    /// `vllm:request_success` by finish reason.
    pub request_success: Family<FinishLabel, Counter>,
    /// `vllm:time_to_first_token_seconds`.
    pub ttft: Histogram,
    /// `vllm:inter_token_latency_seconds`.
    pub itl: Histogram,
    /// `vllm:request_time_per_output_token_seconds`.
    pub time_per_output_token: Histogram,
    /// `vllm:e2e_request_latency_seconds`.
    pub e2e: Histogram,
    /// `vllm:request_queue_time_seconds`.
    pub queue_time: Histogram,
    /// `vllm:request_inference_time_seconds`.
    pub inference_time: Histogram,
    /// `vllm:request_prefill_time_seconds`.
    pub prefill_time: Histogram,
    /// `vllm:request_decode_time_seconds`.
    pub decode_time: Histogram,
    /// `vllm:request_prompt_tokens`.
    pub request_prompt_tokens: Histogram,
    /// `vllm:request_generation_tokens`.
    pub request_generation_tokens: Histogram,
    /// `vllm:request_params_max_tokens`.
    pub request_max_tokens: Histogram,
    /// `vllm:iteration_tokens_total`.
    pub iteration_tokens: Histogram,
    /// `vllm:cache_config_info`.
    pub cache_config: Family<CacheConfigLabel, Gauge>,
    /// KV offloading's series (vLLM's connector prefix-cache counters, llmd's per tier).
    pub offload: crate::offload::OffloadMetrics,
}

impl EngineMetrics {
    /// Metrics for a model served as `model_name` with contexts up to `max_model_len`.
    pub fn new(model_name: &str, max_model_len: usize) -> Self {
        let tokens = buckets_1_2_5(max_model_len.max(1));
        let request_success = Family::default();
        // vLLM exports every finish reason from the start, at zero.
        for r in ["stop", "length", "abort", "error"] {
            let _ = request_success.get_or_create(&FinishLabel { finished_reason: r.into() });
        }
        EngineMetrics {
            model_name: model_name.to_string(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_usage: Gauge::default(),
            prefix_queries: Counter::default(),
            prefix_hits: Counter::default(),
            preemptions: Counter::default(),
            prompt_tokens: Counter::default(),
            prompt_tokens_cached: Counter::default(),
            generation_tokens: Counter::default(),
            request_success,
            ttft: histogram(TTFT_BUCKETS),
            itl: histogram(ITL_BUCKETS),
            time_per_output_token: histogram(ITL_BUCKETS),
            e2e: histogram(LATENCY_BUCKETS),
            queue_time: histogram(LATENCY_BUCKETS),
            inference_time: histogram(LATENCY_BUCKETS),
            prefill_time: histogram(LATENCY_BUCKETS),
            decode_time: histogram(LATENCY_BUCKETS),
            request_prompt_tokens: histogram(&tokens),
            request_generation_tokens: histogram(&tokens),
            request_max_tokens: histogram(&tokens),
            iteration_tokens: histogram(ITERATION_TOKEN_BUCKETS),
            cache_config: Family::default(),
            offload: crate::offload::OffloadMetrics::new(),
        }
    }

    /// Registers every metric under its vLLM name.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            self.cache_config.clone(),
        );
        let r = registry.sub_registry_with_labels(
            [
                (Cow::Borrowed("model_name"), Cow::Owned(self.model_name.clone())),
                (Cow::Borrowed("engine"), Cow::Borrowed("0")),
            ]
            .into_iter(),
        );
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
        r.register(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local prefix cache hits)",
            self.prompt_tokens_cached.clone(),
        );
        r.register("vllm:generation_tokens", "Number of generation tokens processed", self.generation_tokens.clone());
        r.register("vllm:request_success", "Count of successfully processed requests", self.request_success.clone());
        r.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            self.ttft.clone(),
        );
        r.register("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds", self.itl.clone());
        r.register(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request",
            self.time_per_output_token.clone(),
        );
        r.register("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds", self.e2e.clone());
        r.register(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request",
            self.queue_time.clone(),
        );
        r.register(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request",
            self.inference_time.clone(),
        );
        r.register(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request",
            self.prefill_time.clone(),
        );
        r.register(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request",
            self.decode_time.clone(),
        );
        r.register(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed",
            self.request_prompt_tokens.clone(),
        );
        r.register(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed",
            self.request_generation_tokens.clone(),
        );
        r.register(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter",
            self.request_max_tokens.clone(),
        );
        r.register(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step",
            self.iteration_tokens.clone(),
        );
        self.offload.register(r);
    }

    /// Records the cache configuration (a gauge fixed at 1 carrying labels).
    pub fn set_cache_config(&self, block_size: usize, num_blocks: usize, dtype: &str, prefix_caching: bool) {
        self.cache_config
            .get_or_create(&CacheConfigLabel {
                block_size: block_size.to_string(),
                num_gpu_blocks: num_blocks.to_string(),
                cache_dtype: dtype.to_string(),
                enable_prefix_caching: if prefix_caching { "True" } else { "False" }.into(),
            })
            .set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_vllms_1_2_5_series() {
        assert_eq!(buckets_1_2_5(100), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(buckets_1_2_5(4096).last(), Some(&2000.0));
    }
}
