//! KV offloading's metrics: vLLM's connector prefix-cache counters
//! (`vllm:external_prefix_cache_queries` / `_hits`, in tokens) and llmd's per-tier
//! series, labelled by medium (`CPU`, …).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A tier.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MediumLabel {
    /// As its events name it (`CPU`, …).
    pub medium: String,
}

/// A tier and a direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoveLabel {
    /// As its events name it.
    pub medium: String,
    /// `store` (down from the device) or `load` (back up).
    pub direction: String,
}

fn load_histogram() -> Histogram {
    Histogram::new([0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
}

/// Every offloading metric.
#[derive(Debug)]
pub struct OffloadMetrics {
    /// `vllm:external_prefix_cache_queries`: prompt tokens of requests admitted while
    /// offloading is on.
    pub external_queries: Counter,
    /// `vllm:external_prefix_cache_hits`: of those, tokens copied back from a tier.
    pub external_hits: Counter,
    /// `llmd:kv_offload_capacity_blocks`.
    pub capacity: Family<MediumLabel, Gauge>,
    /// `llmd:kv_offload_used_blocks`.
    pub used: Family<MediumLabel, Gauge>,
    /// `llmd:kv_offload_usage_perc` (0..1).
    pub usage: Family<MediumLabel, Gauge<f64, AtomicU64>>,
    /// `llmd:kv_offload_blocks` by direction.
    pub blocks: Family<MoveLabel, Counter>,
    /// `llmd:kv_offload_bytes` by direction.
    pub bytes: Family<MoveLabel, Counter>,
    /// `llmd:kv_offload_load_seconds`: copying one request's blocks back.
    pub load_time: Family<MediumLabel, Histogram, fn() -> Histogram>,
}

fn medium(m: &str) -> MediumLabel {
    MediumLabel { medium: m.to_string() }
}

fn moved(m: &str, direction: &str) -> MoveLabel {
    MoveLabel { medium: m.to_string(), direction: direction.to_string() }
}

impl OffloadMetrics {
    /// Empty series.
    pub fn new() -> Self {
        OffloadMetrics {
            external_queries: Counter::default(),
            external_hits: Counter::default(),
            capacity: Family::default(),
            used: Family::default(),
            usage: Family::default(),
            blocks: Family::default(),
            bytes: Family::default(),
            load_time: Family::new_with_constructor(load_histogram),
        }
    }

    /// Registers them (into the registry carrying `model_name` and `engine`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens",
            self.external_queries.clone(),
        );
        r.register(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens",
            self.external_hits.clone(),
        );
        r.register(
            "llmd:kv_offload_capacity_blocks",
            "KV blocks an offloading tier holds at most",
            self.capacity.clone(),
        );
        r.register("llmd:kv_offload_used_blocks", "KV blocks an offloading tier holds", self.used.clone());
        r.register(
            "llmd:kv_offload_usage_perc",
            "Offloading tier usage. 1 means 100 percent usage",
            self.usage.clone(),
        );
        r.register("llmd:kv_offload_blocks", "KV blocks moved to (store) or from (load) a tier", self.blocks.clone());
        r.register("llmd:kv_offload_bytes", "Bytes moved to (store) or from (load) a tier", self.bytes.clone());
        r.register(
            "llmd:kv_offload_load_seconds",
            "Time copying one request's blocks back from a tier",
            self.load_time.clone(),
        );
    }

    /// A tier's size.
    pub fn set_capacity(&self, m: &str, blocks: usize) {
        self.capacity.get_or_create(&medium(m)).set(blocks as i64);
        self.set_used(m, 0);
    }

    /// A tier's fill.
    pub fn set_used(&self, m: &str, blocks: usize) {
        self.used.get_or_create(&medium(m)).set(blocks as i64);
        let cap = self.capacity.get_or_create(&medium(m)).get();
        self.usage.get_or_create(&medium(m)).set(if cap > 0 { blocks as f64 / cap as f64 } else { 0.0 });
    }

    /// Blocks stored into a tier.
    pub fn stored(&self, m: &str, blocks: u64, bytes: u64) {
        self.blocks.get_or_create(&moved(m, "store")).inc_by(blocks);
        self.bytes.get_or_create(&moved(m, "store")).inc_by(bytes);
    }

    /// Blocks loaded back from a tier.
    pub fn loaded(&self, m: &str, blocks: u64, bytes: u64) {
        self.blocks.get_or_create(&moved(m, "load")).inc_by(blocks);
        self.bytes.get_or_create(&moved(m, "load")).inc_by(bytes);
    }

    /// One request's load time.
    pub fn load_seconds(&self, m: &str, secs: f64) {
        self.load_time.get_or_create(&medium(m)).observe(secs);
    }
}

impl Default for OffloadMetrics {
    fn default() -> Self {
        Self::new()
    }
}
