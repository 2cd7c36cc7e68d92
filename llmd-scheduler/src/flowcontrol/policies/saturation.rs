//! Saturation detectors, each also a scheduling filter: `utilization-detector` (the
//! default: engine queue depth and KV-cache use against thresholds, fail-closed on stale
//! metrics) and `concurrency-detector` (the picker's own in-flight counts against a
//! capacity). Also how the controller reads the pool: stage by stage when prefill and
//! decode endpoints are apart, the most saturated stage gating dispatch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::SaturationDetector;
use crate::clock::Clock;
use crate::endpoint::{Endpoint, Role};
use crate::flowcontrol::params;
use crate::flowcontrol::quantity::go_duration_string;
use crate::plugin::{CycleState, Filter};
use crate::plugins::Params;
use crate::request::LlmRequest;

/// `utilization-detector`'s type name.
pub const UTILIZATION: &str = "utilization-detector";
/// `concurrency-detector`'s type name.
pub const CONCURRENCY: &str = "concurrency-detector";

/// `utilization-detector`'s parameter keys.
pub const UTILIZATION_PARAMS: &[&str] =
    &["queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold", "headroom"];
/// `concurrency-detector`'s parameter keys.
pub const CONCURRENCY_PARAMS: &[&str] =
    &["concurrencyMode", "maxConcurrency", "maxTokenConcurrency", "headroom", "inFlightLoadProducerName"];

/// `utilization-detector`'s parameters (the router's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct UtilizationConfig {
    /// Ideal waiting-queue depth of one endpoint (5; > 0).
    pub queue_depth_threshold: i64,
    /// Ideal KV-cache use, a fraction (0.8; in (0, 1]).
    pub kv_cache_util_threshold: f64,
    /// Metrics older than this count as saturated (200ms; > 0).
    pub metrics_staleness_threshold: Duration,
    /// Burst allowed above the thresholds by the filter, a fraction (0; >= 0).
    pub headroom: f64,
}

impl Default for UtilizationConfig {
    fn default() -> Self {
        UtilizationConfig {
            queue_depth_threshold: 5,
            kv_cache_util_threshold: 0.8,
            metrics_staleness_threshold: Duration::from_millis(200),
            headroom: 0.0,
        }
    }
}

impl UtilizationConfig {
    /// Reads and validates the parameters, with the router's messages.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(UTILIZATION_PARAMS)?;
        let d = UtilizationConfig::default();
        let qd = params::int(&q, "queueDepthThreshold")?.unwrap_or(d.queue_depth_threshold);
        let kv = params::float(&q, "kvCacheUtilThreshold")?.unwrap_or(d.kv_cache_util_threshold);
        let stale = params::duration(&q, "metricsStalenessThreshold")?
            .unwrap_or(d.metrics_staleness_threshold.as_nanos() as i128);
        let headroom = params::float(&q, "headroom")?.unwrap_or(d.headroom);
        let mut errs = Vec::new();
        if qd <= 0 {
            errs.push(format!("queueDepthThreshold must be strictly positive, got {qd}"));
        }
        if kv <= 0.0 || kv > 1.0 {
            errs.push(format!("kvCacheUtilThreshold must be in (0.0, 1.0], got {kv:.6}"));
        }
        if stale <= 0 {
            errs.push(format!(
                "metricsStalenessThreshold must be strictly positive, got {}",
                go_duration_string(stale)
            ));
        }
        if headroom < 0.0 {
            errs.push(format!("headroom must be a non-negative value, got {headroom:.6}"));
        }
        if !errs.is_empty() {
            return Err(format!("invalid utilization detector configuration: {}", errs.join("\n")));
        }
        Ok(UtilizationConfig {
            queue_depth_threshold: qd,
            kv_cache_util_threshold: kv,
            metrics_staleness_threshold: Duration::from_nanos(stale as u64),
            headroom,
        })
    }
}

/// The utilization detector: an endpoint's score is max(waiting / queue threshold, KV
/// use / KV threshold), the pool's the mean; missing or stale metrics score 1.0.
pub struct Utilization {
    cfg: UtilizationConfig,
    clock: RwLock<Option<Arc<dyn Clock>>>,
    stale: AtomicU64,
}

impl std::fmt::Debug for Utilization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Utilization").field("cfg", &self.cfg).finish()
    }
}

impl Utilization {
    /// A detector with `cfg`.
    pub fn new(cfg: UtilizationConfig) -> Self {
        Utilization { cfg, clock: RwLock::new(None), stale: AtomicU64::new(0) }
    }

    /// Built from a config file's `parameters`.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        UtilizationConfig::from_params(p).map(Self::new)
    }

    /// Its parameters.
    pub fn config(&self) -> &UtilizationConfig {
        &self.cfg
    }

    // Never scraped (or cleared as stale by the datastore), or older than the threshold.
    // Without a time (a filter before `bind_clock`), only the never-scraped are stale.
    fn is_stale(&self, e: &Endpoint, now: Option<Duration>) -> bool {
        match (e.metrics.updated_at, now) {
            (None, _) => true,
            (Some(t), Some(now)) => now.saturating_sub(t) > self.cfg.metrics_staleness_threshold,
            (Some(_), None) => false,
        }
    }

    fn now(&self) -> Option<Duration> {
        self.clock.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.now())
    }
}

impl SaturationDetector for Utilization {
    fn type_name(&self) -> &'static str {
        UTILIZATION
    }

    fn saturation(&self, endpoints: &[&Endpoint], now: Duration) -> f64 {
        if endpoints.is_empty() {
            self.stale.store(0, Ordering::Relaxed);
            return 1.0;
        }
        let mut total = 0.0;
        let mut stale = 0;
        for e in endpoints {
            if self.is_stale(e, Some(now)) {
                total += 1.0;
                stale += 1;
                continue;
            }
            let q = e.metrics.waiting as f64 / self.cfg.queue_depth_threshold as f64;
            let kv = e.metrics.kv_usage / self.cfg.kv_cache_util_threshold;
            total += q.max(kv);
        }
        self.stale.store(stale, Ordering::Relaxed);
        total / endpoints.len() as f64
    }

    fn stale_endpoints(&self) -> Option<u64> {
        Some(self.stale.load(Ordering::Relaxed))
    }

    fn bind_clock(&self, clock: Arc<dyn Clock>) {
        *self.clock.write().unwrap_or_else(|e| e.into_inner()) = Some(clock);
    }
}

impl Filter for Utilization {
    // Keeps endpoints with fresh metrics under the thresholds plus headroom; if none is,
    // keeps them all (fail open: the scorers pick the least bad).
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, endpoints: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        let now = self.now();
        let q_limit = self.cfg.queue_depth_threshold as f64 * (1.0 + self.cfg.headroom);
        let kv_limit = self.cfg.kv_cache_util_threshold * (1.0 + self.cfg.headroom);
        let kept: Vec<&Endpoint> = endpoints
            .iter()
            .copied()
            .filter(|e| !self.is_stale(e, now) && (e.metrics.waiting as f64) < q_limit && e.metrics.kv_usage < kv_limit)
            .collect();
        if kept.is_empty() { endpoints } else { kept }
    }
}

/// What the concurrency detector counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyMode {
    /// Requests in flight.
    Requests,
    /// Prompt tokens in flight.
    Tokens,
    /// Per endpoint the larger of the two ratios, averaged.
    Hybrid,
}

/// `concurrency-detector`'s parameters (the router's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyConfig {
    /// What is counted (`requests`).
    pub mode: ConcurrencyMode,
    /// Ideal requests in flight per endpoint (100; > 0).
    pub max_concurrency: i64,
    /// Ideal tokens in flight per endpoint (1 000 000; > 0).
    pub max_token_concurrency: i64,
    /// Burst allowed above the ideal by the filter, a fraction (0; >= 0).
    pub headroom: f64,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            mode: ConcurrencyMode::Requests,
            max_concurrency: 100,
            max_token_concurrency: 1_000_000,
            headroom: 0.0,
        }
    }
}

impl ConcurrencyConfig {
    /// Reads and validates the parameters, with the router's messages.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(CONCURRENCY_PARAMS)?;
        // The router reads the in-flight load of a named producer; llmd keeps one count.
        q.string("inFlightLoadProducerName")?;
        let d = ConcurrencyConfig::default();
        let max_c = params::int(&q, "maxConcurrency")?.unwrap_or(d.max_concurrency);
        let max_t = params::int(&q, "maxTokenConcurrency")?.unwrap_or(d.max_token_concurrency);
        let headroom = params::float(&q, "headroom")?.unwrap_or(d.headroom);
        let mode = q.string("concurrencyMode")?;
        let mut errs = Vec::new();
        if max_c <= 0 {
            errs.push(format!("maxConcurrency must be strictly positive, got {max_c}"));
        }
        if headroom < 0.0 {
            errs.push(format!("headroom must be a non-negative value, got {headroom:.6}"));
        }
        if max_t <= 0 {
            errs.push(format!("maxTokenConcurrency must be strictly positive, got {max_t}"));
        }
        let mode = match mode.as_deref() {
            None | Some("requests") => ConcurrencyMode::Requests,
            Some("tokens") => ConcurrencyMode::Tokens,
            Some("hybrid") => ConcurrencyMode::Hybrid,
            Some(other) => {
                errs.push(format!("unsupported concurrencyMode: {other:?}"));
                ConcurrencyMode::Requests
            }
        };
        if !errs.is_empty() {
            return Err(format!("invalid concurrency detector configuration: {}", errs.join("\n")));
        }
        Ok(ConcurrencyConfig { mode, max_concurrency: max_c, max_token_concurrency: max_t, headroom })
    }
}

/// The concurrency detector: in-flight requests (or prompt tokens) against capacity,
/// from the picker's own counts, which move the moment a request starts or ends.
#[derive(Debug, Clone)]
pub struct Concurrency {
    cfg: ConcurrencyConfig,
}

fn ratio(inflight: f64, capacity: f64) -> f64 {
    if capacity == 0.0 { 1.0 } else { inflight / capacity }
}

impl Concurrency {
    /// A detector with `cfg`.
    pub fn new(cfg: ConcurrencyConfig) -> Self {
        Concurrency { cfg }
    }

    /// Built from a config file's `parameters`.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        ConcurrencyConfig::from_params(p).map(Self::new)
    }

    /// Its parameters.
    pub fn config(&self) -> &ConcurrencyConfig {
        &self.cfg
    }
}

impl SaturationDetector for Concurrency {
    fn type_name(&self) -> &'static str {
        CONCURRENCY
    }

    fn saturation(&self, endpoints: &[&Endpoint], _now: Duration) -> f64 {
        if endpoints.is_empty() {
            return 1.0;
        }
        let (max_c, max_t) = (self.cfg.max_concurrency as f64, self.cfg.max_token_concurrency as f64);
        let n = endpoints.len() as f64;
        let reqs: f64 = endpoints.iter().map(|e| e.inflight.requests as f64).sum();
        let toks: f64 = endpoints.iter().map(|e| e.inflight.prompt_tokens as f64).sum();
        match self.cfg.mode {
            ConcurrencyMode::Requests => ratio(reqs, n * max_c),
            ConcurrencyMode::Tokens => ratio(toks, n * max_t),
            ConcurrencyMode::Hybrid => {
                let sum: f64 = endpoints
                    .iter()
                    .map(|e| {
                        ratio(e.inflight.requests as f64, max_c).max(ratio(e.inflight.prompt_tokens as f64, max_t))
                    })
                    .sum();
                sum / n
            }
        }
    }
}

impl Filter for Concurrency {
    // Keeps endpoints under the limit plus headroom (no fail-open, as in the router).
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, endpoints: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        // The router truncates the limits to integers.
        let req_limit = (self.cfg.max_concurrency as f64 * (1.0 + self.cfg.headroom)) as u64;
        let tok_limit = (self.cfg.max_token_concurrency as f64 * (1.0 + self.cfg.headroom)) as u64;
        endpoints
            .into_iter()
            .filter(|e| match self.cfg.mode {
                ConcurrencyMode::Requests => e.inflight.requests < req_limit,
                ConcurrencyMode::Tokens => e.inflight.prompt_tokens < tok_limit,
                ConcurrencyMode::Hybrid => e.inflight.requests < req_limit && e.inflight.prompt_tokens < tok_limit,
            })
            .collect()
    }
}

/// The pool as one dispatch cycle reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSample {
    /// The saturation gating dispatch (the most saturated stage).
    pub saturation: f64,
    /// Whether the pool has no endpoints (queue-wait budgets and rejections then read as
    /// unavailability).
    pub empty: bool,
    /// The prefill stage's saturation, when it has endpoints.
    pub prefill: Option<f64>,
    /// The decode stage's saturation, when it has endpoints.
    pub decode: Option<f64>,
    /// Endpoints the detector counted as stale, when it judges staleness.
    pub stale_endpoints: Option<u64>,
}

impl PoolSample {
    /// A sample of just a saturation over `endpoints` endpoints.
    pub fn new(saturation: f64, endpoints: usize) -> Self {
        PoolSample { saturation, empty: endpoints == 0, prefill: None, decode: None, stale_endpoints: None }
    }
}

/// The role label llm-d-router reads a stage from (discovery's).
pub use crate::discovery::ROLE_LABEL;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prefill,
    Decode,
    Both,
    None,
}

// The router's partition by `llm-d.ai/role`: prefill and encode-prefill serve prefill;
// decode, an empty value and no label serve decode; prefill-decode, both and
// encode-prefill-decode serve both; encode-only and unknown roles neither. Without the
// label, llmd's own role field decides (an unlabelled `Both` reads as both stages).
fn stage(e: &Endpoint) -> Stage {
    match e.labels.get(ROLE_LABEL).map(String::as_str) {
        Some("prefill" | "encode-prefill") => Stage::Prefill,
        Some("decode" | "") => Stage::Decode,
        Some("prefill-decode" | "both" | "encode-prefill-decode") => Stage::Both,
        Some(_) => Stage::None,
        None => match e.role {
            Role::Prefill | Role::EncodePrefill => Stage::Prefill,
            Role::Decode => Stage::Decode,
            Role::Both | Role::EncodePrefillDecode => Stage::Both,
            Role::Encode => Stage::None,
        },
    }
}

/// Reads the pool as the router's dispatch cycle does: the detector's saturation of the
/// prefill stage and of the decode stage (endpoints serving both count in each), the
/// larger gating; with neither stage populated, the saturation of all `endpoints`
/// (1.0 for none). `now` is the clock endpoint metrics are stamped with.
pub fn sample_pool(detector: &dyn SaturationDetector, endpoints: &[&Endpoint], now: Duration) -> PoolSample {
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for e in endpoints {
        match stage(e) {
            Stage::Prefill => prefill.push(*e),
            Stage::Decode => decode.push(*e),
            Stage::Both => {
                prefill.push(*e);
                decode.push(*e);
            }
            Stage::None => {}
        }
    }
    let mut stale: Option<u64> = None;
    let mut read = |part: &[&Endpoint]| {
        if part.is_empty() {
            return None;
        }
        let s = detector.saturation(part, now);
        if let Some(n) = detector.stale_endpoints() {
            stale = Some(stale.map_or(n, |m| m.max(n)));
        }
        Some(s)
    };
    let p = read(&prefill);
    let d = read(&decode);
    let saturation = match (p, d) {
        (None, None) => {
            let s = detector.saturation(endpoints, now);
            stale = detector.stale_endpoints();
            s
        }
        (a, b) => a.unwrap_or(f64::MIN).max(b.unwrap_or(f64::MIN)),
    };
    PoolSample { saturation, empty: endpoints.is_empty(), prefill: p, decode: d, stale_endpoints: stale }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: Duration = Duration::from_secs(10_000);

    fn ep(name: &str, waiting: u64, kv: f64, age_ms: Option<u64>) -> Endpoint {
        let mut e = Endpoint::new(name, "10.0.0.1:8000", Role::Both);
        e.metrics.waiting = waiting;
        e.metrics.kv_usage = kv;
        e.metrics.updated_at = age_ms.map(|a| NOW - Duration::from_millis(a));
        e
    }

    #[test]
    fn utilization_factory_validates_as_the_router_does() {
        // Mirrors utilization/detector_test.go TestUtilizationDetectorFactory.
        let ok = |p: Value| UtilizationConfig::from_params(&p);
        assert!(ok(json!({"queueDepthThreshold": 5, "kvCacheUtilThreshold": 0.8})).is_ok());
        assert!(ok(json!({"queueDepthThreshold": "invalid_type"})).is_err());
        assert_eq!(ok(json!({})).unwrap(), UtilizationConfig::default());
        assert!(
            ok(json!({"queueDepthThreshold": 0}))
                .unwrap_err()
                .contains("queueDepthThreshold must be strictly positive")
        );
        assert!(ok(json!({"kvCacheUtilThreshold": 1.5})).is_err());
        assert!(ok(json!({"kvCacheUtilThreshold": 0.0})).is_err());
        assert!(ok(json!({"metricsStalenessThreshold": "0s"})).unwrap_err().contains("got 0s"));
        assert!(ok(json!({"headroom": -0.5})).is_err());
        assert!(ok(json!({"headroom": 2.0})).is_ok(), "high headroom only warns");
        assert_eq!(
            ok(json!({"metricsStalenessThreshold": "1s"})).unwrap().metrics_staleness_threshold,
            Duration::from_secs(1)
        );
        assert!(ok(json!({"queueDepth": 5})).unwrap_err().contains("queueDepth"));
    }

    #[test]
    fn utilization_saturation_is_the_mean_roofline() {
        // Mirrors utilization/detector_test.go TestDetector_Saturation.
        let d = Utilization::new(UtilizationConfig {
            queue_depth_threshold: 5,
            kv_cache_util_threshold: 0.9,
            metrics_staleness_threshold: Duration::from_millis(100),
            headroom: 0.0,
        });
        let sat = |eps: Vec<Endpoint>| {
            let refs: Vec<&Endpoint> = eps.iter().collect();
            d.saturation(&refs, NOW)
        };
        let near = |a: f64, b: f64| (a - b).abs() < 1e-4;
        assert_eq!(sat(vec![]), 1.0, "no candidates: fail closed");
        assert!(near(sat(vec![ep("p1", 2, 0.5, Some(0))]), 0.5 / 0.9));
        assert_eq!(sat(vec![ep("p1", 1, 0.1, Some(200))]), 1.0, "stale");
        assert_eq!(sat(vec![ep("p1", 10, 0.1, Some(0))]), 2.0, "high queue");
        assert!(near(sat(vec![ep("p1", 1, 0.95, Some(0))]), 0.95 / 0.9), "high KV");
        assert_eq!(sat(vec![ep("p1", 0, 0.0, None)]), 1.0, "no metrics");
        assert!(near(sat(vec![ep("p1", 1, 0.1, Some(0)), ep("p2", 0, 0.2, Some(0))]), (0.2 + 0.2 / 0.9) / 2.0));
        assert!(near(sat(vec![ep("p1", 1, 0.1, Some(0)), ep("p2", 0, 0.2, Some(300))]), 0.6), "one stale");
        assert!(near(sat(vec![ep("p1", 1, 0.1, Some(0)), ep("p2", 15, 0.2, Some(0))]), 1.6));
        let all_bad = vec![ep("p1", 1, 0.1, Some(200)), ep("p2", 20, 0.2, Some(0)), ep("p3", 1, 0.99, Some(0))];
        assert!(near(sat(all_bad), (1.0 + 4.0 + 1.1) / 3.0));
        assert_eq!(sat(vec![ep("p1", 5, 0.1, Some(0))]), 1.0, "queue exactly at threshold");
        assert_eq!(sat(vec![ep("p1", 1, 0.1, Some(101))]), 1.0, "just over staleness");
    }

    #[test]
    fn utilization_counts_stale_endpoints() {
        // Mirrors utilization/detector_test.go TestDetector_StaleEndpointObservability.
        let d = Utilization::new(UtilizationConfig {
            metrics_staleness_threshold: Duration::from_secs(3600),
            ..Default::default()
        });
        let eps = [ep("fresh", 1, 0.1, Some(0)), ep("stale", 1, 0.1, Some(7_200_000)), ep("nil", 0, 0.0, None)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        d.saturation(&refs, NOW);
        assert_eq!(d.stale_endpoints(), Some(2));
        d.saturation(&[], NOW);
        assert_eq!(d.stale_endpoints(), Some(0), "an empty list has no stale endpoints");
    }

    #[test]
    fn utilization_filter_keeps_endpoints_under_the_burst_limits() {
        // Mirrors utilization/detector_test.go TestDetector_Filter.
        let d = Utilization::new(UtilizationConfig {
            queue_depth_threshold: 5,
            kv_cache_util_threshold: 0.8,
            metrics_staleness_threshold: Duration::from_millis(100),
            headroom: 0.2,
        });
        let clock = Arc::new(crate::clock::ManualClock::new());
        clock.advance(NOW);
        d.bind_clock(clock);
        let kept = |eps: Vec<Endpoint>| {
            let refs: Vec<&Endpoint> = eps.iter().collect();
            d.filter(&mut CycleState::default(), &LlmRequest::default(), refs).len()
        };
        assert_eq!(kept(vec![ep("p1", 1, 0.1, Some(0)), ep("p2", 4, 0.7, Some(0))]), 2);
        assert_eq!(kept(vec![ep("p1", 5, 0.8, Some(0))]), 1, "at threshold, under burst");
        assert_eq!(kept(vec![ep("p1", 5, 0.9, Some(0))]), 1, "in headroom");
        assert_eq!(kept(vec![ep("p1", 7, 0.1, Some(0)), ep("p2", 1, 0.1, Some(0))]), 1, "queue burst exceeded");
        assert_eq!(kept(vec![ep("p1", 1, 0.97, Some(0)), ep("p2", 1, 0.5, Some(0))]), 1, "KV burst exceeded");
        assert_eq!(kept(vec![ep("p1", 1, 0.1, Some(200)), ep("p2", 1, 0.1, Some(200))]), 2, "all stale: fail open");
        assert_eq!(kept(vec![ep("p1", 10, 0.1, Some(0)), ep("p2", 1, 0.99, Some(0))]), 2, "all saturated: fail open");
    }

    fn loaded(name: &str, requests: u64, tokens: u64) -> Endpoint {
        let mut e = Endpoint::new(name, "10.0.0.1:8000", Role::Both);
        e.inflight.requests = requests;
        e.inflight.prompt_tokens = tokens;
        e
    }

    #[test]
    fn concurrency_factory_validates_as_the_router_does() {
        // Mirrors concurrency/detector_test.go TestConcurrencyDetectorFactory.
        let ok = |p: Value| ConcurrencyConfig::from_params(&p);
        assert!(ok(json!({"maxConcurrency": 10, "headroom": 0.1})).is_ok());
        assert!(ok(json!({"maxConcurrency": "ten"})).is_err());
        assert_eq!(ok(json!({})).unwrap(), ConcurrencyConfig::default());
        assert!(ok(json!({"maxConcurrency": 0})).is_err());
        assert!(ok(json!({"maxTokenConcurrency": -1})).is_err());
        assert!(ok(json!({"headroom": -0.1})).is_err());
        assert_eq!(ok(json!({"concurrencyMode": "hybrid"})).unwrap().mode, ConcurrencyMode::Hybrid);
        assert!(ok(json!({"concurrencyMode": "bogus"})).unwrap_err().contains("unsupported concurrencyMode"));
        assert!(ok(json!({"headroom": 2.0})).is_ok());
    }

    #[test]
    fn concurrency_saturation_is_aggregate_in_flight_over_capacity() {
        // Mirrors concurrency/detector_test.go TestDetector_Saturation and TestDetector_TokenSaturation.
        let d = Concurrency::new(ConcurrencyConfig { max_concurrency: 10, ..Default::default() });
        let sat = |eps: Vec<Endpoint>| {
            let refs: Vec<&Endpoint> = eps.iter().collect();
            d.saturation(&refs, NOW)
        };
        assert_eq!(sat(vec![]), 1.0, "fail closed");
        assert_eq!(sat(vec![loaded("a", 0, 0)]), 0.0);
        assert_eq!(sat(vec![loaded("a", 5, 0)]), 0.5);
        assert_eq!(sat(vec![loaded("a", 10, 0)]), 1.0);
        assert_eq!(sat(vec![loaded("a", 10, 0), loaded("b", 0, 0)]), 0.5);
        assert_eq!(sat(vec![loaded("a", 15, 0), loaded("b", 5, 0)]), 1.0);
        assert_eq!(sat(vec![loaded("a", 15, 0), loaded("b", 15, 0)]), 1.5);
        let t = Concurrency::new(ConcurrencyConfig {
            mode: ConcurrencyMode::Tokens,
            max_token_concurrency: 100,
            ..Default::default()
        });
        let tsat = |eps: Vec<Endpoint>| {
            let refs: Vec<&Endpoint> = eps.iter().collect();
            t.saturation(&refs, NOW)
        };
        assert_eq!(tsat(vec![loaded("a", 1, 3)]), 0.03);
        assert_eq!(tsat(vec![loaded("a", 5, 50)]), 0.5);
        assert_eq!(tsat(vec![loaded("a", 5, 50), loaded("b", 0, 0)]), 0.25);
    }

    #[test]
    fn concurrency_hybrid_averages_the_worse_dimension() {
        // Mirrors concurrency/detector_test.go TestDetector_HybridSaturation and TestDetector_HybridFilter.
        let d = Concurrency::new(ConcurrencyConfig {
            mode: ConcurrencyMode::Hybrid,
            max_concurrency: 10,
            max_token_concurrency: 100,
            headroom: 0.0,
        });
        let sat = |eps: Vec<Endpoint>| {
            let refs: Vec<&Endpoint> = eps.iter().collect();
            d.saturation(&refs, NOW)
        };
        assert_eq!(sat(vec![loaded("a", 0, 0)]), 0.0);
        assert_eq!(sat(vec![loaded("a", 2, 80)]), 0.8);
        assert_eq!(sat(vec![loaded("a", 9, 10)]), 0.9);
        assert_eq!(sat(vec![loaded("a", 10, 5)]), 1.0);
        assert_eq!(sat(vec![loaded("a", 1, 100)]), 1.0);
        assert_eq!(sat(vec![loaded("a", 10, 0), loaded("b", 0, 100)]), 1.0);
        assert_eq!(sat(vec![loaded("a", 10, 0), loaded("b", 0, 0)]), 0.5);
        for (r, t, want) in [(5, 50, 1), (10, 50, 0), (5, 100, 0), (20, 200, 0)] {
            let e = loaded("a", r, t);
            assert_eq!(d.filter(&mut CycleState::default(), &LlmRequest::default(), vec![&e]).len(), want, "{r}/{t}");
        }
    }

    #[test]
    fn concurrency_filter_drops_endpoints_at_the_burst_limit() {
        // Mirrors concurrency/detector_test.go TestDetector_Configuration and TestDetector_TokenFilter.
        let d = Concurrency::new(ConcurrencyConfig { max_concurrency: 50, headroom: 0.2, ..Default::default() });
        let f = |eps: &[&Endpoint]| d.filter(&mut CycleState::default(), &LlmRequest::default(), eps.to_vec()).len();
        assert_eq!(f(&[&loaded("e", 59, 0)]), 1, "below burst (60)");
        let (hot, clean) = (loaded("e", 60, 0), loaded("clean", 0, 0));
        assert_eq!(f(&[&hot, &clean]), 1, "the overloaded endpoint is dropped");
        assert_eq!(f(&[&hot]), 0, "no fail-open");
        let t = Concurrency::new(ConcurrencyConfig {
            mode: ConcurrencyMode::Tokens,
            max_token_concurrency: 100,
            headroom: 0.2,
            ..Default::default()
        });
        let tf = |e: &Endpoint| t.filter(&mut CycleState::default(), &LlmRequest::default(), vec![e]).len();
        assert_eq!(tf(&loaded("e", 11, 110)), 1);
        assert_eq!(tf(&loaded("e", 12, 120)), 0);
    }

    fn role(label: Option<&str>) -> Endpoint {
        let mut e = Endpoint::new("e", "10.0.0.1:8000", Role::Both);
        if let Some(l) = label {
            e.labels.insert(ROLE_LABEL.into(), l.into());
        }
        e.metrics.updated_at = Some(NOW);
        e
    }

    #[test]
    fn endpoints_partition_by_role_label() {
        // Mirrors processor_test.go partitionEndpoints.
        let stages: Vec<Stage> = [
            "prefill",
            "encode-prefill",
            "decode",
            "prefill-decode",
            "both",
            "encode-prefill-decode",
            "encode",
            "unknown-role",
            "",
        ]
        .iter()
        .map(|l| stage(&role(Some(l))))
        .collect();
        use Stage::*;
        assert_eq!(stages, [Prefill, Prefill, Decode, Both, Both, Both, None, None, Decode]);
        let mut unlabelled = role(Option::None);
        unlabelled.role = Role::Decode;
        assert_eq!(stage(&unlabelled), Decode);
    }

    // A detector reading `prefill`-only sets as saturated (mirrors the Go test's fake).
    struct StageFake;
    impl SaturationDetector for StageFake {
        fn type_name(&self) -> &'static str {
            "fake"
        }
        fn saturation(&self, endpoints: &[&Endpoint], _: Duration) -> f64 {
            if endpoints.is_empty() {
                return 1.0;
            }
            let all_prefill = endpoints.iter().all(|e| e.labels.get(ROLE_LABEL).is_some_and(|r| r == "prefill"));
            if all_prefill { 1.5 } else { 0.3 }
        }
    }

    #[test]
    fn the_most_saturated_stage_gates() {
        // Mirrors processor_test.go "stage-aware saturation gating".
        let (p, d, both) = (role(Some("prefill")), role(Some("decode")), role(Some("prefill-decode")));
        let s = sample_pool(&StageFake, &[&p, &d], NOW);
        assert_eq!((s.saturation, s.prefill, s.decode), (1.5, Some(1.5), Some(0.3)), "gate on the highest stage");
        let s = sample_pool(&StageFake, &[&d], NOW);
        assert_eq!((s.saturation, s.prefill), (0.3, Option::None), "empty stages are skipped");
        let s = sample_pool(&StageFake, &[&p, &d, &both], NOW);
        assert_eq!(s.prefill, Some(0.3), "interleaved endpoints join both stages");
        let s = sample_pool(&StageFake, &[], NOW);
        assert!(s.empty && s.saturation == 1.0, "an empty pool reads saturated");
        let enc = role(Some("encode"));
        assert_eq!(sample_pool(&StageFake, &[&enc], NOW).saturation, 0.3, "no stage: the whole pool");
    }
}
