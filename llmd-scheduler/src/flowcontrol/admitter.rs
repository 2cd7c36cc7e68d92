//! Admission after flow control, before scheduling (the router's `Admitter` plugins):
//! `probabilistic-admitter` sheds sheddable requests with a probability that climbs
//! steeply with the pool's saturation. Also the legacy admission the router applies when
//! the flowControl feature gate is off.

use serde_json::Value;

use crate::endpoint::Endpoint;
use crate::flowcontrol::params;
use crate::flowcontrol::types::{ErrorCode, FlowRejection, is_sheddable};
use crate::plugins::Params;
use crate::request::LlmRequest;

/// `probabilistic-admitter`'s type name.
pub const PROBABILISTIC_ADMITTER: &str = "probabilistic-admitter";

/// An admitter's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitDenial {
    /// The code the plugin gives (the probabilistic admitter: `ResourceExhausted`).
    pub code: ErrorCode,
    /// The plugin's message.
    pub message: String,
}

impl AdmitDenial {
    /// The answer the router's director gives for any admitter denial: it wraps the
    /// plugin's error as `Internal` (HTTP 500) "request cannot be admitted: ...",
    /// whatever code the plugin chose.
    pub fn rejection(&self) -> FlowRejection {
        FlowRejection {
            outcome: None,
            code: ErrorCode::Internal,
            reason: None,
            message: format!("request cannot be admitted: inference error: {} - {}", self.code.as_str(), self.message),
        }
    }
}

/// Admits or refuses one request given the candidate endpoints.
pub trait Admitter: Send + Sync {
    /// The plugin type.
    fn type_name(&self) -> &'static str;

    /// `Ok` to admit `req` (at `priority`) given `endpoints`; `draw` yields uniform
    /// numbers in [0, 1) (injected so decisions are reproducible).
    fn admit(
        &self,
        req: &LlmRequest,
        priority: i32,
        endpoints: &[&Endpoint],
        draw: &mut dyn FnMut() -> f64,
    ) -> Result<(), AdmitDenial>;
}

/// `probabilistic-admitter`'s parameters (the router's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbabilisticConfig {
    /// Ideal waiting-queue depth of an endpoint (5; > 0).
    pub queue_depth_threshold: i64,
    /// Ideal KV-cache use, a fraction (0.8; > 0).
    pub kv_cache_util_threshold: f64,
    /// Exponent of the saturation (5; > 0).
    pub power: f64,
    /// Scale of the probability (300; > 0).
    pub k: f64,
}

impl Default for ProbabilisticConfig {
    fn default() -> Self {
        ProbabilisticConfig { queue_depth_threshold: 5, kv_cache_util_threshold: 0.8, power: 5.0, k: 300.0 }
    }
}

/// Refuses a sheddable request with probability min(saturation^power × k, 1), where
/// saturation is the mean over endpoints of max(waiting / queue threshold, KV use / KV
/// threshold). Requests of priority ≥ 0, and any request when there are no endpoints,
/// are admitted.
#[derive(Debug, Clone)]
pub struct ProbabilisticAdmitter {
    cfg: ProbabilisticConfig,
}

impl ProbabilisticAdmitter {
    /// An admitter with `cfg`.
    pub fn new(cfg: ProbabilisticConfig) -> Self {
        ProbabilisticAdmitter { cfg }
    }

    /// Built from a config file's `parameters`, with the router's messages.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["queueDepthThreshold", "kvCacheUtilThreshold", "power", "k"])?;
        let d = ProbabilisticConfig::default();
        let cfg = ProbabilisticConfig {
            queue_depth_threshold: params::int(&q, "queueDepthThreshold")?.unwrap_or(d.queue_depth_threshold),
            kv_cache_util_threshold: params::float(&q, "kvCacheUtilThreshold")?.unwrap_or(d.kv_cache_util_threshold),
            power: params::float(&q, "power")?.unwrap_or(d.power),
            k: params::float(&q, "k")?.unwrap_or(d.k),
        };
        let t = PROBABILISTIC_ADMITTER;
        if cfg.queue_depth_threshold <= 0 {
            return Err(format!("plugin '{t}': queueDepthThreshold must be > 0, got {}", cfg.queue_depth_threshold));
        }
        if cfg.kv_cache_util_threshold <= 0.0 {
            return Err(format!("plugin '{t}': kvCacheUtilThreshold must be > 0, got {}", cfg.kv_cache_util_threshold));
        }
        if cfg.power <= 0.0 {
            return Err(format!("plugin '{t}': power must be > 0, got {}", cfg.power));
        }
        if cfg.k <= 0.0 {
            return Err(format!("plugin '{t}': k must be > 0, got {}", cfg.k));
        }
        Ok(Self::new(cfg))
    }

    /// The mean roofline saturation of `endpoints` (llmd endpoints always carry metrics,
    /// so the router's nil-metrics case does not arise).
    pub fn saturation(&self, endpoints: &[&Endpoint]) -> f64 {
        let total: f64 = endpoints
            .iter()
            .map(|e| {
                let q = e.metrics.waiting as f64 / self.cfg.queue_depth_threshold as f64;
                let kv = e.metrics.kv_usage / self.cfg.kv_cache_util_threshold;
                q.max(kv)
            })
            .sum();
        total / endpoints.len() as f64
    }
}

impl Admitter for ProbabilisticAdmitter {
    fn type_name(&self) -> &'static str {
        PROBABILISTIC_ADMITTER
    }

    fn admit(
        &self,
        _req: &LlmRequest,
        priority: i32,
        endpoints: &[&Endpoint],
        draw: &mut dyn FnMut() -> f64,
    ) -> Result<(), AdmitDenial> {
        if priority >= 0 || endpoints.is_empty() {
            return Ok(());
        }
        let saturation = self.saturation(endpoints);
        let prob = (saturation.powf(self.cfg.power) * self.cfg.k).min(1.0);
        if draw() < prob {
            return Err(AdmitDenial {
                code: ErrorCode::ResourceExhausted,
                message: format!("probabilistic-admitter: rejected, saturation={saturation:.3} prob={prob:.2}"),
            });
        }
        Ok(())
    }
}

/// The router's admission when the flowControl feature gate is off: a sheddable request
/// (priority < 0) is refused (429) while the pool's saturation is at least 1.0; every
/// other request is admitted at once.
pub fn legacy_admit(priority: i32, saturation: f64) -> Result<(), FlowRejection> {
    if is_sheddable(priority) && saturation >= 1.0 { Err(FlowRejection::sheddable_dropped()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::endpoint::Role;

    fn ep(waiting: u64, kv: f64) -> Endpoint {
        let mut e = Endpoint::new("pod", "10.0.0.1:8000", Role::Both);
        e.metrics.waiting = waiting;
        e.metrics.kv_usage = kv;
        e
    }

    fn admit(a: &ProbabilisticAdmitter, priority: i32, eps: &[Endpoint], r: f64) -> Result<(), AdmitDenial> {
        let refs: Vec<&Endpoint> = eps.iter().collect();
        a.admit(&LlmRequest::default(), priority, &refs, &mut || r)
    }

    #[test]
    fn factory_validates_as_the_router_does() {
        // Mirrors plugin_test.go TestFactory, TestFactory_Defaults, TestFactory_Zero*/Negative*.
        let a = |p: Value| ProbabilisticAdmitter::from_params(&p);
        assert!(a(json!({"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.9, "power": 3, "k": 100})).is_ok());
        assert_eq!(a(json!({})).unwrap().cfg, ProbabilisticConfig::default());
        for bad in [
            json!({"queueDepthThreshold": 0}),
            json!({"kvCacheUtilThreshold": 0}),
            json!({"power": -1}),
            json!({"power": 0}),
            json!({"k": -1}),
            json!({"k": 0}),
            json!({"queueDepthThreshold": 1.5}),
        ] {
            assert!(a(bad.clone()).is_err(), "{bad}");
        }
        assert!(a(json!({"pow": 2})).unwrap_err().contains("pow"));
    }

    #[test]
    fn only_sheddable_requests_are_shed() {
        // Mirrors TestProtectedTiersAlwaysAdmitted, TestDroppableRejectedAtHighSaturation,
        // TestDroppableAdmittedAtZeroSaturation, TestNoPods.
        let a = ProbabilisticAdmitter::new(ProbabilisticConfig::default());
        let hot = [ep(100, 0.0)];
        assert!(admit(&a, 0, &hot, 0.0).is_ok());
        assert!(admit(&a, 100, &hot, 0.0).is_ok());
        assert!(admit(&a, -1, &hot, 0.0).is_err(), "saturation 20: probability 1");
        assert!(admit(&a, -1, &[ep(0, 0.0)], 0.0).is_ok(), "zero saturation");
        assert!(admit(&a, -1, &[], 0.0).is_ok(), "no endpoints");
    }

    #[test]
    fn saturation_averages_and_the_curve_is_steep() {
        // Mirrors TestMultiplePodsSaturationAveraging, TestQuinticProperty,
        // TestErrorTypeIsStructured and TestProbabilisticShedding.
        let a = ProbabilisticAdmitter::new(ProbabilisticConfig::default());
        assert!(admit(&a, -1, &[ep(10, 0.0), ep(0, 0.0)], 0.0).is_err(), "mean 1.0");
        assert!(admit(&a, -1, &[ep(0, 0.272)], 0.999).is_err(), "sat 0.34: prob 1");
        let e = admit(&a, -1, &[ep(5, 0.8)], 0.0).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        assert_eq!(e.message, "probabilistic-admitter: rejected, saturation=1.000 prob=1.00");
        let r = e.rejection();
        assert_eq!(r.status(), 500, "the director answers any admitter denial as Internal");
        assert!(r.message.starts_with("request cannot be admitted: inference error: ResourceExhausted - "));
        // sat 0.2: prob ≈ 0.096.
        assert!(admit(&a, -1, &[ep(0, 0.16)], 0.9).is_ok());
        assert!(admit(&a, -1, &[ep(0, 0.16)], 0.0).is_err());
    }

    #[test]
    fn legacy_admission_sheds_only_sheddable_at_saturation() {
        // Mirrors admission_test.go TestLegacyAdmissionController_Admit.
        assert!(legacy_admit(-1, 1.0).is_err());
        assert!(legacy_admit(-1, 0.99).is_ok());
        assert!(legacy_admit(0, 5.0).is_ok());
        assert_eq!(legacy_admit(-1, 2.0).unwrap_err().status(), 429);
    }
}
