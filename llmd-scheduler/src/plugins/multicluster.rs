//! llm-d-router's alpha **multicluster** plugins: a cluster-scoped picker whose
//! endpoints are peer clusters (their gateways), each scored from the pool averages its
//! own picker exports.
//!
//! - `multicluster-file-discovery`: the file discovery, with hostnames allowed and the
//!   `metricsAddress` / `metricsPort` labels naming where a peer's metrics are scraped
//!   ([`DiscoveryRef::MultiClusterFile`](crate::DiscoveryRef::MultiClusterFile)).
//! - `multicluster-metrics-data-source`: `metrics-data-source` with `scheme` https and
//!   certificate verification by default
//!   ([`SourceKind::multicluster_metrics_from_params`]); a peer's exposition is read up
//!   to [`MULTICLUSTER_MAX_RESPONSE_BYTES`](crate::datalayer::MULTICLUSTER_MAX_RESPONSE_BYTES).
//! - `multicluster-metrics-extractor` ([`MultiClusterMetricsExtractor`]): the peer's
//!   `llm_d_epp_average_kv_cache_utilization` and `llm_d_epp_average_queue_size` as the
//!   attributes [`KV_CACHE_UTILIZATION`] and [`QUEUE_SIZE`].
//! - `multicluster-queue-scorer` ([`MultiClusterQueueScorer`]) and
//!   `multicluster-kv-cache-utilization-scorer` ([`MultiClusterKvCacheUtilizationScorer`])
//!   read those attributes.
//! - `multicluster-session-affinity-filter`, `multicluster-prefix-cache-scorer` and
//!   `multicluster-approx-prefix-cache-producer`: llmd's session-affinity filter, prefix
//!   scorer and approximate producer under the multicluster names, as the router
//!   delegates them.

use std::sync::Arc;

use crate::datalayer::{Extracted, Extractor, MetricSpec, SourceData, SourceKind};
use crate::endpoint::{AttributeValue, Endpoint};
use crate::plugin::{CycleState, PluginHandle, Scorer};
use crate::registry::PluginRegistry;
use crate::request::LlmRequest;

/// The attribute [`MultiClusterMetricsExtractor`] writes for a peer's average KV-cache
/// utilization (the router's key).
pub const KV_CACHE_UTILIZATION: &str = "llm-d.ai/multicluster-kv-cache-utilization";
/// The attribute [`MultiClusterMetricsExtractor`] writes for a peer's average queue size.
pub const QUEUE_SIZE: &str = "llm-d.ai/multicluster-queue-size";
/// The series a peer picker exports for its pool's mean KV-cache utilization.
pub const DEFAULT_KV_CACHE_UTILIZATION_METRIC: &str = "llm_d_epp_average_kv_cache_utilization";
/// The series a peer picker exports for its pool's mean waiting-queue size.
pub const DEFAULT_QUEUE_SIZE_METRIC: &str = "llm_d_epp_average_queue_size";

/// `multicluster-file-discovery`.
pub const FILE_DISCOVERY: &str = "multicluster-file-discovery";
/// `multicluster-metrics-data-source`.
pub const METRICS_DATA_SOURCE: &str = "multicluster-metrics-data-source";
/// `multicluster-metrics-extractor`.
pub const METRICS_EXTRACTOR: &str = "multicluster-metrics-extractor";
/// `multicluster-queue-scorer`.
pub const QUEUE_SCORER: &str = "multicluster-queue-scorer";
/// `multicluster-kv-cache-utilization-scorer`.
pub const KV_CACHE_UTILIZATION_SCORER: &str = "multicluster-kv-cache-utilization-scorer";
/// `multicluster-prefix-cache-scorer`.
pub const PREFIX_CACHE_SCORER: &str = "multicluster-prefix-cache-scorer";
/// `multicluster-approx-prefix-cache-producer`.
pub const APPROX_PREFIX_CACHE_PRODUCER: &str = "multicluster-approx-prefix-cache-producer";

/// `multicluster-metrics-extractor`: a peer picker's pool averages into
/// [`KV_CACHE_UTILIZATION`] and [`QUEUE_SIZE`]. A series the exposition lacks writes
/// nothing (the other is still written), as in the router.
#[derive(Debug, Clone)]
pub struct MultiClusterMetricsExtractor {
    kv_cache: MetricSpec,
    queue: MetricSpec,
}

impl MultiClusterMetricsExtractor {
    /// From `parameters`: `kvCacheUtilizationMetric`
    /// ([`DEFAULT_KV_CACHE_UTILIZATION_METRIC`]) and `queueSizeMetric`
    /// ([`DEFAULT_QUEUE_SIZE_METRIC`]), each a metric selector (`name{label="v"}`); an
    /// empty string means the default, as in the router.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = crate::plugins::Params(p);
        q.check(&["kvCacheUtilizationMetric", "queueSizeMetric"])?;
        let spec = |key: &str, default: &str| -> Result<MetricSpec, String> {
            let s = q.string(key)?.filter(|s| !s.is_empty()).unwrap_or_else(|| default.into());
            MetricSpec::parse(&s).map_err(|e| format!("parameter {key}: {e}"))
        };
        Ok(MultiClusterMetricsExtractor {
            kv_cache: spec("kvCacheUtilizationMetric", DEFAULT_KV_CACHE_UTILIZATION_METRIC)?,
            queue: spec("queueSizeMetric", DEFAULT_QUEUE_SIZE_METRIC)?,
        })
    }
}

impl Extractor for MultiClusterMetricsExtractor {
    fn extract(&self, _: &Endpoint, data: SourceData<'_>, out: &mut Extracted) {
        let SourceData::Metrics(text) = data;
        for (key, spec) in [(KV_CACHE_UTILIZATION, &self.kv_cache), (QUEUE_SIZE, &self.queue)] {
            match spec.value(text) {
                Some(v) => out.attributes.push((key.to_string(), AttributeValue::Float(v))),
                None => tracing::debug!(attribute = key, "peer exposition lacks the pool metric"),
            }
        }
    }
}

fn attribute(e: &Endpoint, key: &str) -> Option<f64> {
    e.attribute(key).and_then(AttributeValue::as_f64).filter(|v| v.is_finite())
}

/// `multicluster-queue-scorer`: min-max normalized [`QUEUE_SIZE`], the shortest queue
/// scoring 1 (all 1 when the queues are equal); a peer without the attribute scores 0,
/// the router's "no score".
#[derive(Debug, Default)]
pub struct MultiClusterQueueScorer;

impl Scorer for MultiClusterQueueScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let queues: Vec<Option<f64>> = eps.iter().map(|e| attribute(e, QUEUE_SIZE)).collect();
        let (lo, hi) = queues.iter().flatten().fold((f64::MAX, f64::MIN), |(lo, hi), &q| (lo.min(q), hi.max(q)));
        queues
            .into_iter()
            .map(|q| match q {
                None => 0.0,
                Some(_) if hi == lo => 1.0,
                Some(q) => (hi - q) / (hi - lo),
            })
            .collect()
    }
}

/// `multicluster-kv-cache-utilization-scorer`: `1 - `[`KV_CACHE_UTILIZATION`]; a peer
/// without the attribute scores 0.
#[derive(Debug, Default)]
pub struct MultiClusterKvCacheUtilizationScorer;

impl Scorer for MultiClusterKvCacheUtilizationScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        eps.iter().map(|e| attribute(e, KV_CACHE_UTILIZATION).map_or(0.0, |u| (1.0 - u).clamp(0.0, 1.0))).collect()
    }
}

fn handle(name: &str, type_name: &str) -> PluginHandle {
    PluginHandle { name: name.into(), type_name: type_name.into(), ..Default::default() }
}

/// Registers the multicluster types.
pub fn register(r: &mut PluginRegistry) {
    r.register(FILE_DISCOVERY, |n, p| {
        let q = crate::plugins::Params(p);
        q.check(&["path", "watchFile"])?;
        q.string("path")?.ok_or("parameter path is required")?;
        q.bool("watchFile", false)?;
        Ok(handle(n, FILE_DISCOVERY))
    });
    r.register(METRICS_DATA_SOURCE, |n, p| {
        Ok(PluginHandle {
            source: Some(SourceKind::multicluster_metrics_from_params(p)?),
            ..handle(n, METRICS_DATA_SOURCE)
        })
    });
    r.register(METRICS_EXTRACTOR, |n, p| {
        Ok(PluginHandle {
            extractor: Some(Arc::new(MultiClusterMetricsExtractor::from_params(p)?)),
            ..handle(n, METRICS_EXTRACTOR)
        })
    });
    // The router's queue and KV-cache scorers take no parameters (and ignore any).
    r.register(QUEUE_SCORER, |n, _| {
        Ok(PluginHandle { scorer: Some(Arc::new(MultiClusterQueueScorer)), ..handle(n, QUEUE_SCORER) })
    });
    r.register(KV_CACHE_UTILIZATION_SCORER, |n, _| {
        Ok(PluginHandle {
            scorer: Some(Arc::new(MultiClusterKvCacheUtilizationScorer)),
            ..handle(n, KV_CACHE_UTILIZATION_SCORER)
        })
    });
    // The prefix scorer, bound to the producer it names by the config loader as
    // `prefix-cache-scorer` is.
    r.register(PREFIX_CACHE_SCORER, |n, p| {
        let s = Arc::new(crate::plugins::prefix::PrefixCacheScorer::from_params(p)?);
        Ok(PluginHandle { scorer: Some(s.clone()), observer: Some(s), ..handle(n, PREFIX_CACHE_SCORER) })
    });
    r.register(APPROX_PREFIX_CACHE_PRODUCER, |n, p| {
        crate::plugins::Params(p).check(crate::plugins::prefix::APPROX_PREFIX_CACHE_PRODUCER_PARAMS)?;
        Ok(handle(n, APPROX_PREFIX_CACHE_PRODUCER))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Role;

    // What an llmd or llm-d-router picker's /metrics shows of its pool.
    const PEER: &str = "# HELP llm_d_epp_average_kv_cache_utilization The average kv cache utilization.\n\
        # TYPE llm_d_epp_average_kv_cache_utilization gauge\n\
        llm_d_epp_average_kv_cache_utilization{name=\"pool-a\"} 0.42\n\
        # TYPE llm_d_epp_average_queue_size gauge\n\
        llm_d_epp_average_queue_size{name=\"pool-a\"} 3.5\n\
        # TYPE inference_pool_average_queue_size gauge\n\
        inference_pool_average_queue_size{name=\"pool-a\"} 99\n";

    fn extract(x: &MultiClusterMetricsExtractor, text: &str) -> Vec<(String, AttributeValue)> {
        let mut out = Extracted::default();
        x.extract(&Endpoint::new("east", "east.example.com:443", Role::Both), SourceData::Metrics(text), &mut out);
        assert_eq!(out.metrics, None, "a peer has no engine metrics");
        out.attributes
    }

    #[test]
    fn the_extractor_reads_a_peer_s_pool_averages() {
        let x = MultiClusterMetricsExtractor::from_params(&serde_json::json!({})).unwrap();
        assert_eq!(
            extract(&x, PEER),
            [
                (KV_CACHE_UTILIZATION.to_string(), AttributeValue::Float(0.42)),
                (QUEUE_SIZE.to_string(), AttributeValue::Float(3.5))
            ]
        );
        // One series missing: the other is still written.
        let only_queue = "llm_d_epp_average_queue_size 2\n";
        assert_eq!(extract(&x, only_queue), [(QUEUE_SIZE.to_string(), AttributeValue::Float(2.0))]);
        // Other names.
        let x = MultiClusterMetricsExtractor::from_params(
            &serde_json::json!({"queueSizeMetric": "inference_pool_average_queue_size", "kvCacheUtilizationMetric": ""}),
        )
        .unwrap();
        assert!(extract(&x, PEER).contains(&(QUEUE_SIZE.to_string(), AttributeValue::Float(99.0))));
        assert!(extract(&x, PEER).contains(&(KV_CACHE_UTILIZATION.to_string(), AttributeValue::Float(0.42))));
        let e =
            MultiClusterMetricsExtractor::from_params(&serde_json::json!({"queueSizeMetric": "{a=b}"})).unwrap_err();
        assert!(e.contains("queueSizeMetric"), "{e}");
        assert!(MultiClusterMetricsExtractor::from_params(&serde_json::json!({"queueMetric": "x"})).is_err());
    }

    fn peer(id: &str, attrs: &[(&str, f64)]) -> Endpoint {
        let mut e = Endpoint::new(id, format!("{id}.example.com:443"), Role::Both);
        for (k, v) in attrs {
            e.attributes.insert((*k).into(), AttributeValue::Float(*v));
        }
        e
    }

    #[test]
    fn the_scorers_read_the_peer_attributes() {
        let eps = [
            peer("a", &[(QUEUE_SIZE, 2.0), (KV_CACHE_UTILIZATION, 0.25)]),
            peer("b", &[(QUEUE_SIZE, 10.0)]),
            peer("c", &[]),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let req = LlmRequest::new("r", "m", "hi");
        let mut st = CycleState::default();
        assert_eq!(MultiClusterQueueScorer.score(&mut st, &req, &refs), [1.0, 0.0, 0.0]);
        assert_eq!(MultiClusterKvCacheUtilizationScorer.score(&mut st, &req, &refs), [0.75, 0.0, 0.0]);
        // Equal queues all score 1; the engine metrics are not read.
        let mut eq = [peer("a", &[(QUEUE_SIZE, 4.0)]), peer("b", &[(QUEUE_SIZE, 4.0)])];
        eq[0].metrics.waiting = 100;
        let refs: Vec<&Endpoint> = eq.iter().collect();
        assert_eq!(MultiClusterQueueScorer.score(&mut st, &req, &refs), [1.0, 1.0]);
        let mid = [peer("a", &[(QUEUE_SIZE, 0.0)]), peer("b", &[(QUEUE_SIZE, 5.0)]), peer("c", &[(QUEUE_SIZE, 10.0)])];
        let refs: Vec<&Endpoint> = mid.iter().collect();
        assert_eq!(MultiClusterQueueScorer.score(&mut st, &req, &refs), [1.0, 0.5, 0.0]);
    }

    #[test]
    fn the_multicluster_source_defaults_to_verified_https() {
        let k = SourceKind::multicluster_metrics_from_params(&serde_json::json!({})).unwrap();
        let SourceKind::Metrics { tls: Some(tls), path, .. } = k else { panic!("{k:?}") };
        assert_eq!(path, "/metrics");
        assert!(!tls.insecure_skip_verify);
        let plain = SourceKind::multicluster_metrics_from_params(&serde_json::json!({"scheme": "http"})).unwrap();
        assert!(matches!(plain, SourceKind::Metrics { tls: None, .. }));
        let e = SourceKind::multicluster_metrics_from_params(&serde_json::json!({"caCertPath": "/nonexistent/ca.crt"}))
            .unwrap_err();
        assert!(e.contains("caCertPath") && e.contains("/nonexistent/ca.crt"), "{e}");
        // Skipping verification skips the CA, as in the router.
        assert!(
            SourceKind::multicluster_metrics_from_params(
                &serde_json::json!({"caCertPath": "/nonexistent/ca.crt", "insecureSkipVerify": true})
            )
            .is_ok()
        );
        let e =
            SourceKind::multicluster_metrics_from_params(&serde_json::json!({"clientCertPath": "/c.pem"})).unwrap_err();
        assert!(e.contains("clientKeyPath"), "{e}");
    }
}
