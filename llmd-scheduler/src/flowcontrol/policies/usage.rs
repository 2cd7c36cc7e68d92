//! Usage-limit policies: the saturation ceiling of each priority band, above which the
//! band does not dispatch (`static-usage-limit-policy`, the default, one ceiling for all;
//! `priority-holdback-policy`, lower bands held back first; `soft-reflective-ceiling-
//! policy`, ceilings that tighten with saturation and open in a duty cycle).

use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::Value;

use super::UsageLimitPolicy;
use crate::flowcontrol::params;
use crate::plugins::Params;

/// `static-usage-limit-policy`'s type name.
pub const STATIC: &str = "static-usage-limit-policy";
/// `priority-holdback-policy`'s type name.
pub const PRIORITY_HOLDBACK: &str = "priority-holdback-policy";
/// `soft-reflective-ceiling-policy`'s type name.
pub const SOFT_REFLECTIVE_CEILING: &str = "soft-reflective-ceiling-policy";

/// One ceiling for every band (`threshold`, default 1.0: no gating below saturation).
/// The router does not validate the threshold; neither does this.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StaticUsageLimit {
    /// The ceiling.
    pub threshold: f64,
}

impl Default for StaticUsageLimit {
    fn default() -> Self {
        StaticUsageLimit { threshold: 1.0 }
    }
}

impl StaticUsageLimit {
    /// Built from a config file's `parameters`.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["threshold"])?;
        Ok(StaticUsageLimit { threshold: params::float(&q, "threshold")?.unwrap_or(1.0) })
    }
}

impl UsageLimitPolicy for StaticUsageLimit {
    fn type_name(&self) -> &'static str {
        STATIC
    }

    fn compute_limit(&self, _saturation: f64, _priorities: &[i32], ceilings: &mut [f64]) {
        ceilings.fill(self.threshold);
    }
}

/// How the holdback policy spreads ceilings over the active priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldbackDomain {
    /// Equal steps by rank, whatever the priority values.
    Rank,
    /// In proportion to the priority values within their range.
    Value,
}

/// Ceilings from `maxCeiling` (highest priority) down to `minCeiling` (lowest), linear
/// over rank or value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorityHoldback {
    /// The spread.
    pub domain: HoldbackDomain,
    /// The lowest priority's ceiling, in [0, 1) (required).
    pub min_ceiling: f64,
    /// The highest priority's ceiling, in (0, 1] (1.0).
    pub max_ceiling: f64,
}

impl PriorityHoldback {
    /// Built from a config file's `parameters`, with the router's messages.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["shape", "domain", "minCeiling", "maxCeiling"])?;
        let prefix = "invalid priority holdback policy configuration";
        let Some(min) = params::float(&q, "minCeiling")? else {
            return Err(format!("{prefix}: minCeiling is required"));
        };
        let shape = q.string("shape")?.unwrap_or_else(|| "linear".into());
        let domain = q.string("domain")?.unwrap_or_else(|| "rank".into());
        let max = params::float(&q, "maxCeiling")?.unwrap_or(1.0);
        let mut errs = Vec::new();
        if shape != "linear" {
            errs.push(format!("unsupported shape {shape:?}, must be \"linear\""));
        }
        let domain = match domain.as_str() {
            "rank" => Some(HoldbackDomain::Rank),
            "value" => Some(HoldbackDomain::Value),
            other => {
                errs.push(format!("unsupported domain {other:?}, must be one of: \"rank\", \"value\""));
                None
            }
        };
        if !(0.0..1.0).contains(&min) {
            errs.push(format!("minCeiling must be in [0.0, 1.0), got {min:.6}"));
        }
        if max <= 0.0 || max > 1.0 {
            errs.push(format!("maxCeiling must be in (0.0, 1.0], got {max:.6}"));
        }
        if min >= max {
            errs.push(format!("minCeiling ({min:.6}) must be strictly less than maxCeiling ({max:.6})"));
        }
        match (domain, errs.is_empty()) {
            (Some(domain), true) => Ok(PriorityHoldback { domain, min_ceiling: min, max_ceiling: max }),
            _ => Err(format!("{prefix}: {}", errs.join("\n"))),
        }
    }
}

/// Rank domain: c_i = max − i·(max − min)/(N − 1).
pub fn stepwise_spread(c_min: f64, c_max: f64, priorities: &[i32], ceilings: &mut [f64]) {
    let n = (priorities.len().saturating_sub(1)) as f64;
    for (i, c) in ceilings.iter_mut().enumerate().take(priorities.len()) {
        *c = c_max - i as f64 * (c_max - c_min) / n;
    }
}

/// Value domain: c_i = min + (p_i − p_min)/(p_max − p_min)·(max − min); all equal: max.
pub fn linear_proportional(c_min: f64, c_max: f64, priorities: &[i32], ceilings: &mut [f64]) {
    let (Some(&p_max), Some(&p_min)) = (priorities.first(), priorities.last()) else { return };
    let range = f64::from(p_max) - f64::from(p_min);
    for (c, &p) in ceilings.iter_mut().zip(priorities) {
        *c = if range == 0.0 { c_max } else { c_min + (f64::from(p) - f64::from(p_min)) / range * (c_max - c_min) };
    }
}

impl UsageLimitPolicy for PriorityHoldback {
    fn type_name(&self) -> &'static str {
        PRIORITY_HOLDBACK
    }

    fn compute_limit(&self, _saturation: f64, priorities: &[i32], ceilings: &mut [f64]) {
        match priorities.len() {
            0 => {}
            1 => ceilings[0] = self.max_ceiling,
            _ => match self.domain {
                HoldbackDomain::Rank => stepwise_spread(self.min_ceiling, self.max_ceiling, priorities, ceilings),
                HoldbackDomain::Value => linear_proportional(self.min_ceiling, self.max_ceiling, priorities, ceilings),
            },
        }
    }
}

/// The soft reflective ceiling: band i's ceiling is 1 − i·s/(N − 1) at saturation s;
/// a band at or past it opens on one call in round(s/(1 − s)), all gated bands on the
/// same calls (one shared tick), and closes outright at s ≥ 1. Band 0 is never gated.
#[derive(Debug, Default)]
pub struct SoftReflectiveCeiling {
    tick: AtomicI64,
}

impl SoftReflectiveCeiling {
    /// Built from a config file's `parameters` (it takes none).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        Params(p).check(&[]).map_err(|e| format!("soft-reflective-ceiling-policy takes no parameters: {e}"))?;
        Ok(Self::default())
    }
}

impl UsageLimitPolicy for SoftReflectiveCeiling {
    fn type_name(&self) -> &'static str {
        SOFT_REFLECTIVE_CEILING
    }

    fn compute_limit(&self, saturation: f64, priorities: &[i32], ceilings: &mut [f64]) {
        let n = priorities.len();
        if n == 0 {
            return;
        }
        if n == 1 {
            ceilings[0] = 1.0;
            return;
        }
        let alternating = saturation >= 1.0 - saturation && saturation < 1.0;
        let open = alternating && {
            let period = (saturation / (1.0 - saturation + 1e-9)).round().max(1.0) as i64;
            (self.tick.fetch_add(1, Ordering::Relaxed) + 1) % period == 0
        };
        for (i, c) in ceilings.iter_mut().enumerate().take(n) {
            if i == 0 {
                *c = 1.0;
                continue;
            }
            let reflective = 1.0 - i as f64 * saturation / (n - 1) as f64;
            *c = if saturation < reflective || (saturation < 1.0 && open) { 1.0 } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits(p: &dyn UsageLimitPolicy, sat: f64, prios: &[i32]) -> Vec<f64> {
        let mut c = vec![1.0; prios.len()];
        p.compute_limit(sat, prios, &mut c);
        c
    }

    fn spread(f: fn(f64, f64, &[i32], &mut [f64]), min: f64, max: f64, prios: &[i32]) -> Vec<f64> {
        let mut c = vec![0.0; prios.len()];
        f(min, max, prios, &mut c);
        c
    }

    fn near(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn static_policy_applies_one_threshold() {
        // Mirrors usagelimitpolicy.go (no Go test): every band gets the threshold.
        assert_eq!(limits(&StaticUsageLimit::default(), 0.5, &[10, 0, -1]), [1.0, 1.0, 1.0]);
        let p = StaticUsageLimit::from_params(&json!({"threshold": 0.8})).unwrap();
        assert_eq!(limits(&p, 0.5, &[10, 0]), [0.8, 0.8]);
        assert!(StaticUsageLimit::from_params(&json!({"treshold": 0.8})).unwrap_err().contains("treshold"));
    }

    #[test]
    fn holdback_factory_validates_as_the_router_does() {
        // Mirrors priority_holdback_test.go TestPolicyFactory and TestBuildConfig_*.
        let ok = |p: Value| PriorityHoldback::from_params(&p);
        for good in [
            json!({"domain": "rank", "minCeiling": 0.5}),
            json!({"domain": "value", "minCeiling": 0.3, "maxCeiling": 0.9}),
            json!({"shape": "linear", "minCeiling": 0.5}),
            json!({"minCeiling": 0.0}),
        ] {
            assert!(ok(good.clone()).is_ok(), "{good}");
        }
        assert!(ok(json!({})).unwrap_err().contains("minCeiling is required"));
        assert!(ok(json!({"domain": "rank"})).unwrap_err().contains("minCeiling is required"));
        for bad in [
            json!({"shape": "sigmoid", "minCeiling": 0.5}),
            json!({"domain": "unknown", "minCeiling": 0.5}),
            json!({"minCeiling": -0.1}),
            json!({"minCeiling": 1.0}),
            json!({"minCeiling": 0.5, "maxCeiling": 0.0}),
            json!({"minCeiling": 0.5, "maxCeiling": 1.1}),
            json!({"minCeiling": 0.5, "maxCeiling": 0.5}),
            json!({"minCeiling": 0.8, "maxCeiling": 0.5}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
        let d = ok(json!({"minCeiling": 0.5})).unwrap();
        assert_eq!((d.domain, d.max_ceiling), (HoldbackDomain::Rank, 1.0));
    }

    #[test]
    fn holdback_single_priority_gets_the_max() {
        // Mirrors TestComputeLimit_SinglePriority and TestComputeLimit_EmptyPriorities.
        for domain in [HoldbackDomain::Rank, HoldbackDomain::Value] {
            let p = PriorityHoldback { domain, min_ceiling: 0.5, max_ceiling: 0.9 };
            assert_eq!(limits(&p, 0.5, &[10]), [0.9]);
            assert!(limits(&p, 0.5, &[]).is_empty());
        }
    }

    #[test]
    fn stepwise_spread_steps_by_rank() {
        // Mirrors TestStepwiseSpread_*.
        assert!(near(&spread(stepwise_spread, 0.5, 1.0, &[100, 10]), &[1.0, 0.5]));
        assert!(near(&spread(stepwise_spread, 0.5, 1.0, &[100, 50, 10]), &[1.0, 0.75, 0.5]));
        assert!(near(&spread(stepwise_spread, 0.5, 1.0, &[100, 75, 50, 10]), &[1.0, 0.8333333, 0.6666666, 0.5]));
        assert!(near(
            &spread(stepwise_spread, 0.5, 1.0, &[1000, 2, 1]),
            &spread(stepwise_spread, 0.5, 1.0, &[100, 50, 10])
        ));
        let c = spread(stepwise_spread, 0.2, 0.9, &[50, 40, 30, 20, 10]);
        assert!(c.windows(2).all(|w| w[0] > w[1]), "strictly decreasing");
        assert!(near(&spread(stepwise_spread, 0.0, 1.0, &[10, 5, 1]), &[1.0, 0.5, 0.0]));
        assert!(near(&spread(stepwise_spread, 0.8, 0.9, &[10, 5, 1]), &[0.9, 0.85, 0.8]));
    }

    #[test]
    fn linear_proportional_spreads_by_value() {
        // Mirrors TestLinearProportional_* and TestDomains_*.
        assert!(near(&spread(linear_proportional, 0.5, 1.0, &[100, 10]), &[1.0, 0.5]));
        assert!(near(&spread(linear_proportional, 0.5, 1.0, &[90, 50, 10]), &[1.0, 0.75, 0.5]));
        assert!(near(&spread(linear_proportional, 0.5, 1.0, &[100, 50, 10]), &[1.0, 0.7222222, 0.5]));
        let skew = spread(linear_proportional, 0.5, 1.0, &[100, 2, 1]);
        assert!((skew[1] - 0.505050).abs() < 1e-5);
        assert!(near(&spread(linear_proportional, 0.5, 1.0, &[10, 10, 10]), &[1.0, 1.0, 1.0]));
        assert!(near(&spread(linear_proportional, 0.5, 1.0, &[100, 10, 10]), &[1.0, 0.5, 0.5]));
        let neg = spread(linear_proportional, 0.5, 1.0, &[10, -5, -20]);
        assert!(neg[0] == 1.0 && neg[2] == 0.5 && neg[1] > 0.5 && neg[1] < 1.0);
        let even = [100, 55, 10];
        assert!(near(&spread(linear_proportional, 0.5, 1.0, &even), &spread(stepwise_spread, 0.5, 1.0, &even)));
        let (rank, value) =
            (spread(stepwise_spread, 0.5, 1.0, &[100, 2, 1]), spread(linear_proportional, 0.5, 1.0, &[100, 2, 1]));
        assert!(rank[1] - value[1] > 0.2, "domains diverge on skewed spacing");
    }

    #[test]
    fn soft_reflective_factory_takes_no_parameters() {
        // Mirrors softreflectiveceiling/policy_test.go TestFactory_*.
        assert!(SoftReflectiveCeiling::from_params(&json!({})).is_ok());
        assert!(SoftReflectiveCeiling::from_params(&Value::Null).is_ok());
        let e = SoftReflectiveCeiling::from_params(&json!({"threshold": 0.5})).unwrap_err();
        assert!(e.contains("soft-reflective-ceiling-policy takes no parameters") && e.contains("threshold"), "{e}");
    }

    #[test]
    fn soft_reflective_ceilings() {
        // Mirrors TestComputeLimit_NoBands, _SingleBand, _CriticalBandNeverGated,
        // _BelowCeilingAllOpen, _FullySaturated, _ReflectiveFormula and _GrowingPriorities.
        let p = SoftReflectiveCeiling::default();
        assert!(limits(&p, 0.9, &[]).is_empty());
        for s in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(limits(&p, s, &[100]), [1.0]);
        }
        for s in [0.0, 0.3, 0.5, 0.7, 0.99, 1.0, 1.5] {
            assert_eq!(limits(&p, s, &[100, 0, -50])[0], 1.0);
        }
        assert_eq!(limits(&p, 0.3, &[100, 0, -50]), [1.0, 1.0, 1.0]);
        assert_eq!(limits(&p, 1.0, &[100, 0, -50]), [1.0, 0.0, 0.0]);
        let c = limits(&p, 0.7, &[100, 50, 0, -50]);
        assert_eq!(&c[..2], [1.0, 1.0]);
        assert!(c[2..].iter().all(|x| *x == 0.0 || *x == 1.0));
        assert_eq!(limits(&p, 0.7, &[100, 50, 0, -50]).len(), 4);
    }

    #[test]
    fn soft_reflective_alternates_on_a_shared_tick() {
        // Mirrors TestComputeLimit_Alternation, _AlternationLongerPeriod and
        // _NoStarvationUnderRisingSaturation.
        let p = SoftReflectiveCeiling::default();
        let got: Vec<f64> = (0..6).map(|_| limits(&p, 0.7, &[100, -50])[1]).collect();
        assert_eq!(got, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0], "period 2");
        let p = SoftReflectiveCeiling::default();
        let got: Vec<f64> = (0..6).map(|_| limits(&p, 0.75, &[100, -50])[1]).collect();
        assert_eq!(got, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0], "period 3");
        let p = SoftReflectiveCeiling::default();
        for _ in 0..3 {
            limits(&p, 0.6, &[100, 0, -50]);
        }
        let (mut one, mut two) = (0, 0);
        for _ in 0..100 {
            let c = limits(&p, 0.7, &[100, 0, -50]);
            assert!(!(c[2] == 1.0 && c[1] != 1.0), "band 2 open while band 1 closed");
            one += (c[1] == 1.0) as u32;
            two += (c[2] == 1.0) as u32;
        }
        assert!(one == two && two > 0, "{one} {two}");
    }
}
