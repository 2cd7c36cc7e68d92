//! The picker's own Prometheus metrics (`llmd_epp_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::datastore::DatastoreReader;
use crate::plugin::KvEventConsumer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabel {
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub(crate) status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: String,
}

pub(crate) struct PickerMetrics {
    pub(crate) replications: Family<OutcomeLabel, Counter>,
    pub(crate) picks: Family<EndpointLabel, Counter>,
    pub(crate) failures: Family<ReasonLabel, Counter>,
    pub(crate) ejections: Counter,
    pub(crate) retries: Counter,
    pub(crate) pick_seconds: Histogram,
    pub(crate) pick_errors: Family<StatusLabel, Counter>,
    pub(crate) index_blocks: Gauge,
    pub(crate) endpoint_index_blocks: Family<EndpointLabel, Gauge>,
    pub(crate) event_lag: Histogram,
    pub(crate) inflight: Family<EndpointLabel, Gauge>,
    pub(crate) endpoints: Family<StatusLabel, Gauge>,
    pub(crate) render_failures: Counter,
    pub(crate) render_seconds: Histogram,
    // The pool averages a multicluster peer reads (llm-d-router's names).
    pub(crate) average_kv_cache: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) average_queue: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub(crate) registry: Registry,
}

/// The router's pool summary: the mean KV-cache utilization and waiting-queue size of
/// the serving endpoints with scraped metrics, rounded to two decimals; `None` when
/// there are none (the router then leaves its gauges as they were).
pub(crate) fn pool_averages(eps: &[crate::endpoint::Endpoint]) -> Option<(f64, f64)> {
    let fresh: Vec<_> = eps.iter().filter(|e| e.is_serving() && e.metrics.updated_at.is_some()).collect();
    if fresh.is_empty() {
        return None;
    }
    let n = fresh.len() as f64;
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let kv = fresh.iter().map(|e| e.metrics.kv_usage).sum::<f64>() / n;
    let queue = fresh.iter().map(|e| e.metrics.waiting as f64).sum::<f64>() / n;
    Some((round2(kv), round2(queue)))
}

impl PickerMetrics {
    /// A token-producer render call failed.
    pub(crate) fn render_failed(&self) {
        self.render_failures.inc();
    }

    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let picks = Family::<EndpointLabel, Counter>::default();
        let replications = Family::<OutcomeLabel, Counter>::default();
        let retries = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let ejections = Counter::default();
        let pick_seconds = Histogram::new([1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]);
        let pick_errors = Family::<StatusLabel, Counter>::default();
        let index_blocks = Gauge::default();
        let endpoint_index_blocks = Family::<EndpointLabel, Gauge>::default();
        let event_lag = Histogram::new([1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0]);
        let inflight = Family::<EndpointLabel, Gauge>::default();
        let endpoints = Family::<StatusLabel, Gauge>::default();
        let render_failures = Counter::default();
        let render_seconds = Histogram::new([1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "llmd_epp_token_render_failures",
            "Token-producer render calls that failed or timed out (the request was routed without token ids)",
            render_failures.clone(),
        );
        registry.register(
            "llmd_epp_token_render_seconds",
            "Time of the token-producer's render calls",
            render_seconds.clone(),
        );
        registry.register("llmd_epp_picks", "Requests routed, by endpoint", picks.clone());
        registry.register(
            "llmd_epp_prefix_replications",
            "Hot-prefix warm-ups sent to another endpoint, by outcome (ok, failed)",
            replications.clone(),
        );
        registry.register("llmd_epp_retries", "Requests retried on another endpoint", retries.clone());
        registry.register(
            "llmd_epp_endpoint_failures",
            "Attempts on an endpoint that failed (connect, timeout, cut), by reason",
            failures.clone(),
        );
        registry.register(
            "llmd_epp_endpoint_ejections",
            "Endpoints taken out of picks after failing in a row",
            ejections.clone(),
        );
        registry.register("llmd_epp_pick_duration_seconds", "Time to pick an endpoint", pick_seconds.clone());
        registry.register(
            "llmd_epp_pick_errors",
            "Requests no endpoint was picked for, by HTTP status",
            pick_errors.clone(),
        );
        registry.register("llmd_epp_kv_index_blocks", "Blocks in the precise prefix index", index_blocks.clone());
        registry.register(
            "llmd_epp_kv_index_endpoint_blocks",
            "Blocks the precise prefix index holds for each endpoint",
            endpoint_index_blocks.clone(),
        );
        registry.register(
            "llmd_epp_kv_event_lag_seconds",
            "Delay from an engine's KV event batch to its indexing",
            event_lag.clone(),
        );
        registry.register(
            "llmd_epp_inflight_requests",
            "Requests sent to each endpoint and not yet finished",
            inflight.clone(),
        );
        registry.register("llmd_epp_endpoints", "Endpoints in the datastore, by status", endpoints.clone());
        // Unprefixed names: llm-d-router's, which a multicluster picker reads from a peer.
        let average_kv_cache = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let average_queue = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "llm_d_epp_average_kv_cache_utilization",
            "The average kv cache utilization for an inference server pool",
            average_kv_cache.clone(),
        );
        registry.register(
            "llm_d_epp_average_queue_size",
            "The average number of requests pending in the model server queue",
            average_queue.clone(),
        );
        PickerMetrics {
            replications,
            picks,
            failures,
            ejections,
            retries,
            pick_seconds,
            pick_errors,
            index_blocks,
            endpoint_index_blocks,
            event_lag,
            inflight,
            endpoints,
            render_failures,
            render_seconds,
            average_kv_cache,
            average_queue,
            registry,
        }
    }

    /// Refreshes the gauges that mirror the datastore, then encodes everything.
    pub(crate) fn encode(
        &self,
        reader: &DatastoreReader,
        consumers: &[std::sync::Arc<dyn KvEventConsumer>],
    ) -> Result<String, std::fmt::Error> {
        self.inflight.clear();
        self.endpoints.clear();
        self.endpoint_index_blocks.clear();
        let mut indexed: std::collections::BTreeSet<String> = consumers.iter().flat_map(|c| c.endpoints()).collect();
        reader.with_endpoints(|eps| {
            if let Some((kv, queue)) = pool_averages(eps) {
                self.average_kv_cache.set(kv);
                self.average_queue.set(queue);
            }
            for e in eps {
                let label = EndpointLabel { endpoint: e.id.clone() };
                self.inflight.get_or_create(&label).set(e.inflight.requests as i64);
                // Ready by discovery but out of picks: say why.
                let status = match (e.is_ready(), e.health.ejected_until.is_some(), e.health.unhealthy) {
                    (true, true, _) => "ejected",
                    (true, false, true) => "unhealthy",
                    _ => e.status.as_str(),
                };
                self.endpoints.get_or_create(&StatusLabel { status: status.into() }).inc();
                if !consumers.is_empty() {
                    indexed.insert(e.id.clone());
                }
            }
        });
        // Every endpoint the index knows, listed or not: a removed endpoint that the
        // index failed to forget would show here.
        for id in indexed {
            let n: usize = consumers.iter().map(|c| c.endpoint_blocks(&id)).sum();
            self.endpoint_index_blocks.get_or_create(&EndpointLabel { endpoint: id }).set(n as i64);
        }
        if !consumers.is_empty() {
            self.index_blocks.set(consumers.iter().map(|c| c.blocks()).sum::<usize>() as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Endpoint, Role};

    #[test]
    fn pool_averages_are_exported_under_the_router_s_names() {
        let w = crate::datastore::datastore(std::sync::Arc::new(crate::clock::ManualClock::new()));
        let m = PickerMetrics::new();
        // No endpoint with metrics yet: the gauges stay at 0.
        w.upsert(Endpoint::new("a", "10.0.0.1:8000", Role::Both));
        w.upsert(Endpoint::new("b", "10.0.0.2:8000", Role::Both));
        w.upsert(Endpoint::new("c", "10.0.0.3:8000", Role::Both));
        let text = m.encode(&w.reader(), &[]).unwrap();
        assert!(text.contains("llm_d_epp_average_queue_size 0.0"), "{text}");
        let metrics = |waiting, kv_usage| crate::endpoint::EndpointMetrics { waiting, kv_usage, ..Default::default() };
        w.update_metrics("a", metrics(3, 0.5));
        w.update_metrics("b", metrics(4, 0.25));
        // Not ready: not in the pool's average.
        w.update_metrics("c", metrics(100, 1.0));
        w.set_status("c", crate::endpoint::EndpointStatus::Draining);
        let text = m.encode(&w.reader(), &[]).unwrap();
        assert!(text.contains("llm_d_epp_average_kv_cache_utilization 0.38"), "{text}");
        assert!(text.contains("llm_d_epp_average_queue_size 3.5"), "{text}");
        // What a multicluster peer's extractor reads of it.
        let x =
            crate::plugins::multicluster::MultiClusterMetricsExtractor::from_params(&serde_json::json!({})).unwrap();
        let mut out = crate::datalayer::Extracted::default();
        crate::datalayer::Extractor::extract(
            &x,
            &Endpoint::new("peer", "peer:443", Role::Both),
            crate::datalayer::SourceData::Metrics(&text),
            &mut out,
        );
        assert_eq!(out.attributes.len(), 2, "{:?}", out.attributes);
    }
}
