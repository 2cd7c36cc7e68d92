//! The router's flow-control metrics (`pkg/epp/metrics/llm_d_router_metrics.go`), under
//! its names (`llm_d_epp_flow_control_*`), labels and buckets, for a prometheus-client
//! registry. [`FlowGate`](super::gate::FlowGate) records them; a caller driving a
//! [`FlowController`](super::FlowController) itself can record them with the same calls.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::controller::{BandStats, Finalized, ReclaimProgress};
use super::policies::saturation::PoolSample;
use super::types::{FlowRequest, QueueOutcome};

const QUEUE_DURATION_BUCKETS: [f64; 16] =
    [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const CYCLE_BUCKETS: [f64; 10] = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];
const CONFIRMATION_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueDurationLabels {
    fairness_id: String,
    priority: String,
    outcome: String,
    inference_pool: String,
    model_name: String,
    target_model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnqueueLabels {
    fairness_id: String,
    priority: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    fairness_id: String,
    priority: String,
    inference_pool: String,
    model_name: String,
    target_model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    inference_pool: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectorLabels {
    detector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityPoolLabels {
    priority: String,
    inference_pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    inference_pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
    priority: String,
    inference_pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationLabels {
    outcome: String,
    inference_pool: String,
}

/// The flow-control metric families.
#[derive(Clone, Debug)]
pub struct FlowMetrics {
    queue_duration: HistogramFamily<QueueDurationLabels>,
    dispatch_cycle: Histogram,
    enqueue_duration: HistogramFamily<EnqueueLabels>,
    queue_size: Family<QueueLabels, Gauge>,
    queue_bytes: Family<QueueLabels, Gauge>,
    pool_saturation: Family<StageLabels, FloatGauge>,
    stale_endpoints: Family<DetectorLabels, Gauge>,
    capacity_requests: Family<PriorityPoolLabels, FloatGauge>,
    capacity_bytes: Family<PriorityPoolLabels, FloatGauge>,
    global_capacity_requests: Family<PoolLabels, FloatGauge>,
    global_capacity_bytes: Family<PoolLabels, FloatGauge>,
    requests: Family<OutcomeLabels, Counter>,
    revocations_issued: Family<PriorityPoolLabels, Counter>,
    revocations: Family<RevocationLabels, Counter>,
    reclaim_target: Family<PoolLabels, FloatGauge>,
    pending_reclaim: Family<PoolLabels, FloatGauge>,
    revocation_confirmation: HistogramFamily<PoolLabels>,
}

fn queue_duration_histogram() -> Histogram {
    Histogram::new(QUEUE_DURATION_BUCKETS)
}

fn cycle_histogram() -> Histogram {
    Histogram::new(CYCLE_BUCKETS)
}

fn confirmation_histogram() -> Histogram {
    Histogram::new(CONFIRMATION_BUCKETS)
}

/// The metric names, as registered (counters are exposed with `_total` appended).
pub const METRIC_NAMES: [&str; 17] = [
    "llm_d_epp_flow_control_request_queue_duration_seconds",
    "llm_d_epp_flow_control_dispatch_cycle_duration_seconds",
    "llm_d_epp_flow_control_request_enqueue_duration_seconds",
    "llm_d_epp_flow_control_queue_size",
    "llm_d_epp_flow_control_queue_bytes",
    "llm_d_epp_flow_control_pool_saturation",
    "llm_d_epp_flow_control_stale_endpoints",
    "llm_d_epp_flow_control_capacity_utilization_requests",
    "llm_d_epp_flow_control_capacity_utilization_bytes",
    "llm_d_epp_flow_control_global_capacity_utilization_requests",
    "llm_d_epp_flow_control_global_capacity_utilization_bytes",
    "llm_d_epp_flow_control_requests",
    "llm_d_epp_flow_control_revocations_issued",
    "llm_d_epp_flow_control_revocations",
    "llm_d_epp_flow_control_reclaim_target",
    "llm_d_epp_flow_control_pending_reclaim",
    "llm_d_epp_flow_control_revocation_confirmation_seconds",
];

impl FlowMetrics {
    /// Registers the families in `registry` under the router's names.
    pub fn register(registry: &mut Registry) -> Self {
        let m = FlowMetrics {
            queue_duration: Family::new_with_constructor(queue_duration_histogram),
            dispatch_cycle: cycle_histogram(),
            enqueue_duration: Family::new_with_constructor(cycle_histogram),
            queue_size: Family::default(),
            queue_bytes: Family::default(),
            pool_saturation: Family::default(),
            stale_endpoints: Family::default(),
            capacity_requests: Family::default(),
            capacity_bytes: Family::default(),
            global_capacity_requests: Family::default(),
            global_capacity_bytes: Family::default(),
            requests: Family::default(),
            revocations_issued: Family::default(),
            revocations: Family::default(),
            reclaim_target: Family::default(),
            pending_reclaim: Family::default(),
            revocation_confirmation: Family::new_with_constructor(confirmation_histogram),
        };
        let n = METRIC_NAMES;
        registry.register(
            n[0],
            "Distribution of total time requests spend in the Flow Control layer (from enqueue to final outcome)",
            m.queue_duration.clone(),
        );
        registry.register(
            n[1],
            "Distribution of time taken for each internal dispatch cycle in the Flow Control layer",
            m.dispatch_cycle.clone(),
        );
        registry.register(
            n[2],
            "Distribution of time taken to enqueue requests into the Flow Control layer",
            m.enqueue_duration.clone(),
        );
        registry.register(
            n[3],
            "Current number of requests being actively managed by the Flow Control layer",
            m.queue_size.clone(),
        );
        registry.register(
            n[4],
            "Current size in bytes of all requests being actively managed by the Flow Control layer",
            m.queue_bytes.clone(),
        );
        registry.register(
            n[5],
            "Current saturation of the inference pool per stage, as read by the saturation detector",
            m.pool_saturation.clone(),
        );
        registry.register(
            n[6],
            "Endpoints the saturation detector scored as fully saturated because their metrics were missing or stale",
            m.stale_endpoints.clone(),
        );
        registry.register(n[7], "Fraction of a priority band's request capacity in use", m.capacity_requests.clone());
        registry.register(n[8], "Fraction of a priority band's byte capacity in use", m.capacity_bytes.clone());
        registry.register(
            n[9],
            "Fraction of the global request capacity in use (only when a global limit is configured)",
            m.global_capacity_requests.clone(),
        );
        registry.register(
            n[10],
            "Fraction of the global byte capacity in use (only when a global limit is configured)",
            m.global_capacity_bytes.clone(),
        );
        registry.register(n[11], "Requests that left the Flow Control layer, by outcome", m.requests.clone());
        registry.register(
            n[12],
            "In-flight requests revoked to reclaim capacity, by the priority of the demand",
            m.revocations_issued.clone(),
        );
        registry.register(n[13], "Revocations retired, by outcome (confirmed or timed_out)", m.revocations.clone());
        registry.register(n[14], "Saturation deficit of the last reclamation decision", m.reclaim_target.clone());
        registry.register(
            n[15],
            "Saturation credit of revocations not yet visible in the saturation signal",
            m.pending_reclaim.clone(),
        );
        registry.register(
            n[16],
            "Time from a revocation to the revoked request's end",
            m.revocation_confirmation.clone(),
        );
        m
    }

    fn queue_labels(req: &FlowRequest, pool: &str) -> QueueLabels {
        QueueLabels {
            fairness_id: req.fairness_id.clone(),
            priority: req.priority.to_string(),
            inference_pool: pool.into(),
            model_name: req.model.clone(),
            target_model_name: req.target_model.clone(),
        }
    }

    /// `req` entered a queue, `took` to enqueue.
    pub fn enqueued(&self, req: &FlowRequest, pool: &str, took: Duration) {
        let q = Self::queue_labels(req, pool);
        self.queue_size.get_or_create(&q).inc();
        self.queue_bytes.get_or_create(&q).inc_by(req.byte_size as i64);
        self.enqueue_duration
            .get_or_create(&EnqueueLabels {
                fairness_id: req.fairness_id.clone(),
                priority: req.priority.to_string(),
                outcome: "NotYetFinalized".into(),
            })
            .observe(took.as_secs_f64());
    }

    /// `req` was refused at enqueue with `outcome`, `took` to decide.
    pub fn rejected(&self, req: &FlowRequest, outcome: QueueOutcome, pool: &str, took: Duration) {
        let labels = EnqueueLabels {
            fairness_id: req.fairness_id.clone(),
            priority: req.priority.to_string(),
            outcome: outcome.as_str().into(),
        };
        self.enqueue_duration.get_or_create(&labels).observe(took.as_secs_f64());
        self.count(outcome, req.priority, pool);
        self.queue_duration
            .get_or_create(&QueueDurationLabels {
                fairness_id: req.fairness_id.clone(),
                priority: req.priority.to_string(),
                outcome: outcome.as_str().into(),
                inference_pool: pool.into(),
                model_name: req.model.clone(),
                target_model_name: req.target_model.clone(),
            })
            .observe(0.0);
    }

    fn count(&self, outcome: QueueOutcome, priority: i32, pool: &str) {
        self.requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str().into(),
                priority: priority.to_string(),
                inference_pool: pool.into(),
            })
            .inc();
    }

    /// An accepted request left its queue.
    pub fn finalized(&self, f: &Finalized, pool: &str) {
        let req = f.item.request();
        let q = Self::queue_labels(req, pool);
        self.queue_size.get_or_create(&q).dec();
        self.queue_bytes.get_or_create(&q).dec_by(req.byte_size as i64);
        self.count(f.outcome, req.priority, pool);
        self.queue_duration
            .get_or_create(&QueueDurationLabels {
                fairness_id: req.fairness_id.clone(),
                priority: req.priority.to_string(),
                outcome: f.outcome.as_str().into(),
                inference_pool: pool.into(),
                model_name: req.model.clone(),
                target_model_name: req.target_model.clone(),
            })
            .observe(f.waited.as_secs_f64());
    }

    /// A dispatch cycle read `sample` and took `took`; `bands` and the global counts are
    /// the queue's state after it.
    pub fn cycle(&self, sample: &PoolSample, took: Duration, pool: &str, detector: &str) {
        self.dispatch_cycle.observe(took.as_secs_f64());
        for (stage, v) in [("prefill", sample.prefill), ("decode", sample.decode)] {
            let l = StageLabels { inference_pool: pool.into(), stage: stage.into() };
            match v {
                Some(v) => {
                    self.pool_saturation.get_or_create(&l).set(v);
                }
                None => {
                    self.pool_saturation.remove(&l);
                }
            }
        }
        let l = StageLabels { inference_pool: pool.into(), stage: "effective".into() };
        self.pool_saturation.get_or_create(&l).set(sample.saturation);
        if let Some(n) = sample.stale_endpoints {
            self.stale_endpoints.get_or_create(&DetectorLabels { detector: detector.into() }).set(n as i64);
        }
    }

    /// Capacity utilization of each band and of the global limits (set ones only).
    pub fn capacity(&self, bands: &[BandStats], totals: (u64, u64), limits: (u64, u64), pool: &str) {
        for b in bands {
            let l = PriorityPoolLabels { priority: b.priority.to_string(), inference_pool: pool.into() };
            if b.max_requests > 0 {
                self.capacity_requests.get_or_create(&l).set(b.len as f64 / b.max_requests as f64);
            }
            if b.max_bytes > 0 {
                self.capacity_bytes.get_or_create(&l).set(b.bytes as f64 / b.max_bytes as f64);
            }
        }
        let l = PoolLabels { inference_pool: pool.into() };
        let ((len, bytes), (max_requests, max_bytes)) = (totals, limits);
        if max_requests > 0 {
            self.global_capacity_requests.get_or_create(&l).set(len as f64 / max_requests as f64);
        }
        if max_bytes > 0 {
            self.global_capacity_bytes.get_or_create(&l).set(bytes as f64 / max_bytes as f64);
        }
    }

    /// Reclamation progress since the last call.
    pub fn reclamation(&self, pool: &str, d: &ReclaimProgress) {
        let ReclaimProgress { issued, confirmed, timed_out, confirmation_times, target, pending } = d;
        let (confirmed, timed_out, target, pending) = (*confirmed, *timed_out, *target, *pending);
        for (p, n) in issued {
            let l = PriorityPoolLabels { priority: p.to_string(), inference_pool: pool.into() };
            self.revocations_issued.get_or_create(&l).inc_by(*n);
        }
        for (outcome, n) in [("confirmed", confirmed), ("timed_out", timed_out)] {
            if n > 0 {
                let l = RevocationLabels { outcome: outcome.into(), inference_pool: pool.into() };
                self.revocations.get_or_create(&l).inc_by(n);
            }
        }
        let l = PoolLabels { inference_pool: pool.into() };
        for t in confirmation_times {
            self.revocation_confirmation.get_or_create(&l).observe(t.as_secs_f64());
        }
        self.reclaim_target.get_or_create(&l).set(target);
        self.pending_reclaim.get_or_create(&l).set(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_under_the_routers_names() {
        let mut reg = Registry::default();
        let m = FlowMetrics::register(&mut reg);
        let req = FlowRequest::new("r", "tenant", 3, 100);
        m.enqueued(&req, "pool", Duration::from_micros(50));
        m.rejected(&req, QueueOutcome::RejectedCapacity, "pool", Duration::from_micros(50));
        let mut s = PoolSample::new(0.5, 2);
        s.decode = Some(0.5);
        s.stale_endpoints = Some(1);
        m.cycle(&s, Duration::from_micros(10), "pool", "utilization-detector");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap_or_default();
        for name in [
            "llm_d_epp_flow_control_queue_size{fairness_id=\"tenant\",priority=\"3\",inference_pool=\"pool\"",
            "llm_d_epp_flow_control_requests_total{outcome=\"RejectedCapacity\",priority=\"3\",inference_pool=\"pool\"} 1",
            "llm_d_epp_flow_control_pool_saturation{inference_pool=\"pool\",stage=\"effective\"} 0.5",
            "llm_d_epp_flow_control_stale_endpoints{detector=\"utilization-detector\"} 1",
            "llm_d_epp_flow_control_dispatch_cycle_duration_seconds_bucket",
        ] {
            assert!(out.contains(name), "{name} missing from\n{out}");
        }
        assert!(!out.contains("stage=\"prefill\""), "an empty stage has no series");
    }
}
