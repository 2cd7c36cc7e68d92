//! WVA's saturation policy (workload-variant-autoscaler v0.5, capacity-only mode), with
//! its defaults: a replica is saturated at KV usage ≥ 0.80 or ≥ 5 waiting requests;
//! the model scales up when the spare capacity averaged over unsaturated replicas falls
//! below 0.10 of KV or 3 queue slots, by one replica of its cheapest variant that has
//! no replica still starting; it scales down by one replica of its most expensive
//! variant when the load of the unsaturated replicas, spread over one fewer, still
//! leaves spare capacity above both triggers (and at least two are unsaturated).

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};
use crate::policy::Policy;
use crate::snapshot::{Decision, ModelSnapshot, Reason, ReplicaMetrics};
use crate::zero::{ZeroGate, cheapest, dearest};

/// The `capacity-scaling-config` ConfigMap's entry (same field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SaturationConfig {
    /// KV usage at which a replica counts as saturated.
    pub kv_cache_threshold: f64,
    /// Waiting requests at which a replica counts as saturated.
    pub queue_length_threshold: f64,
    /// Scale up when the average spare KV falls below this.
    pub kv_spare_trigger: f64,
    /// Scale up when the average spare queue falls below this.
    pub queue_spare_trigger: f64,
    /// Seconds of no load before a variant with `min` 0 goes to zero (not WVA's; HPA
    /// and KEDA do it there). Infinite by default: never.
    pub scale_to_zero_after: f64,
}

impl Default for SaturationConfig {
    fn default() -> Self {
        SaturationConfig {
            kv_cache_threshold: 0.80,
            queue_length_threshold: 5.0,
            kv_spare_trigger: 0.10,
            queue_spare_trigger: 3.0,
            scale_to_zero_after: f64::INFINITY,
        }
    }
}

impl SaturationConfig {
    /// Checks ranges: thresholds positive (KV at most 1), triggers below them.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if !(c.kv_cache_threshold > 0.0 && c.kv_cache_threshold <= 1.0) {
            return Err(AutoscaleError::config(
                "kvCacheThreshold",
                format!("{} is not in (0, 1]", c.kv_cache_threshold),
            ));
        }
        if !(c.queue_length_threshold > 0.0 && c.queue_length_threshold.is_finite()) {
            return Err(AutoscaleError::config(
                "queueLengthThreshold",
                format!("{} is not positive", c.queue_length_threshold),
            ));
        }
        if !(c.kv_spare_trigger >= 0.0 && c.kv_spare_trigger < c.kv_cache_threshold) {
            return Err(AutoscaleError::config(
                "kvSpareTrigger",
                format!("{} is not in [0, kvCacheThreshold {})", c.kv_spare_trigger, c.kv_cache_threshold),
            ));
        }
        if !(c.queue_spare_trigger >= 0.0 && c.queue_spare_trigger < c.queue_length_threshold) {
            return Err(AutoscaleError::config(
                "queueSpareTrigger",
                format!("{} is not in [0, queueLengthThreshold {})", c.queue_spare_trigger, c.queue_length_threshold),
            ));
        }
        if c.scale_to_zero_after.is_nan() || c.scale_to_zero_after < 0.0 {
            return Err(AutoscaleError::config(
                "scaleToZeroAfter",
                format!("{} is not a duration", c.scale_to_zero_after),
            ));
        }
        Ok(())
    }
}

/// The saturation analysis of one model's ready replicas (all variants together).
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Replicas reporting metrics.
    pub replicas: usize,
    /// Of them, not saturated.
    pub unsaturated: usize,
    /// Average spare KV over the unsaturated replicas.
    pub avg_spare_kv: f64,
    /// Average spare queue over the unsaturated replicas.
    pub avg_spare_queue: f64,
    /// Spare capacity is below a trigger (or every replica is saturated).
    pub scale_up: bool,
    /// One replica fewer would still leave spare capacity above both triggers.
    pub scale_down_safe: bool,
}

/// WVA's analysis of `replicas` under `c`.
pub fn analyze(c: &SaturationConfig, replicas: &[ReplicaMetrics]) -> Analysis {
    let unsat: Vec<&ReplicaMetrics> =
        replicas.iter().filter(|r| r.kv_usage < c.kv_cache_threshold && r.waiting < c.queue_length_threshold).collect();
    let n = unsat.len();
    if n == 0 {
        // Every replica saturated (scale up), or none at all (nothing to analyse: scale
        // from zero is decided on the picker's queue instead).
        return Analysis {
            replicas: replicas.len(),
            unsaturated: 0,
            avg_spare_kv: 0.0,
            avg_spare_queue: 0.0,
            scale_up: !replicas.is_empty(),
            scale_down_safe: false,
        };
    }
    let kv_load: f64 = unsat.iter().map(|r| r.kv_usage).sum();
    let queue_load: f64 = unsat.iter().map(|r| r.waiting).sum();
    let avg_spare_kv = c.kv_cache_threshold - kv_load / n as f64;
    let avg_spare_queue = c.queue_length_threshold - queue_load / n as f64;
    let scale_up = avg_spare_kv < c.kv_spare_trigger || avg_spare_queue < c.queue_spare_trigger;
    let scale_down_safe = n >= 2 && {
        let rest = (n - 1) as f64;
        c.kv_cache_threshold - kv_load / rest >= c.kv_spare_trigger
            && c.queue_length_threshold - queue_load / rest >= c.queue_spare_trigger
    };
    Analysis { replicas: replicas.len(), unsaturated: n, avg_spare_kv, avg_spare_queue, scale_up, scale_down_safe }
}

/// WVA's saturation policy; see the module docs.
#[derive(Debug, Clone)]
pub struct SaturationPolicy {
    config: SaturationConfig,
    zero: ZeroGate,
}

impl SaturationPolicy {
    /// The policy under `config` (checked).
    pub fn new(config: SaturationConfig) -> Result<Self> {
        config.validate()?;
        let zero = ZeroGate::new(config.scale_to_zero_after);
        Ok(SaturationPolicy { config, zero })
    }

    /// Its config.
    pub fn config(&self) -> &SaturationConfig {
        &self.config
    }
}

impl Policy for SaturationPolicy {
    fn name(&self) -> &str {
        "saturation"
    }

    fn decide(&mut self, s: &ModelSnapshot) -> Result<Vec<Decision>> {
        s.validate()?;
        let hold = |v: &crate::snapshot::VariantState, reason| Decision {
            variant: v.name.clone(),
            current: v.current,
            desired: v.current,
            reason,
        };
        let mut out: Vec<Decision> = s
            .variants
            .iter()
            .map(|v| hold(v, if v.pending() > 0 { Reason::PendingReplicas } else { Reason::Hold }))
            .collect();
        let set = |out: &mut Vec<Decision>, name: &str, desired: u32, reason| {
            if let Some(d) = out.iter_mut().find(|d| d.variant == name) {
                d.desired = desired;
                d.reason = reason;
            }
        };
        if let Some(v) = ZeroGate::from_zero(s) {
            set(&mut out, &v.name, 1, Reason::ScaleFromZero);
            return Ok(out);
        }
        if self.zero.idle_long_enough(s) {
            for v in s.variants.iter().filter(|v| v.min == 0 && v.current > 0) {
                set(&mut out, &v.name, 0, Reason::ScaleToZero);
            }
            return Ok(out);
        }
        let a = analyze(&self.config, &s.replicas);
        // Starting replicas are not counted as capacity, and a variant with some is not
        // scaled further until they are ready (no cascade of scale-ups).
        let settled = || s.variants.iter().filter(|v| v.pending() == 0);
        if a.scale_up {
            if let Some(v) = cheapest(settled().filter(|v| v.ready < v.max)) {
                set(&mut out, &v.name, v.ready + 1, Reason::Saturated);
            }
        } else if a.scale_down_safe
            && let Some(v) = dearest(settled().filter(|v| v.ready > v.min))
        {
            set(&mut out, &v.name, v.ready - 1, Reason::Spare);
        }
        // A variant outside its bounds is brought inside them.
        for (d, v) in out.iter_mut().zip(&s.variants) {
            let clamped = d.desired.clamp(v.min, v.max);
            if clamped != d.desired {
                d.desired = clamped;
                d.reason = Reason::Bounded;
            }
        }
        Ok(out)
    }
}
