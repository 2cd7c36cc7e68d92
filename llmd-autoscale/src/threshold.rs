//! Two baselines the policies are compared with: HPA's proportional rule on a
//! utilisation metric (here KV-cache usage, the usual choice for vLLM pods), and static
//! provisioning.

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};
use crate::policy::Policy;
use crate::snapshot::{Decision, ModelSnapshot, Reason};
use crate::zero::ZeroGate;

/// HPA's rule on two metrics: per metric `desired = ceil(current · average / target)`,
/// the larger of the two taken, unchanged while the ratio is within the tolerance
/// (HPA's default 0.1). KV usage alone stalls once batches are full (waiting requests
/// hold no KV), so the waiting queue is the second metric, as vLLM autoscaling guides
/// advise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Target average KV-cache usage.
    pub target_kv_usage: f64,
    /// Target average waiting requests per replica.
    pub target_waiting: f64,
    /// Ratio band around 1 within which nothing changes.
    pub tolerance: f64,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        ThresholdConfig { target_kv_usage: 0.6, target_waiting: 5.0, tolerance: 0.1 }
    }
}

/// HPA on KV-cache usage, per variant.
#[derive(Debug, Clone)]
pub struct ThresholdPolicy {
    config: ThresholdConfig,
}

impl ThresholdPolicy {
    /// The policy under `config` (checked).
    pub fn new(config: ThresholdConfig) -> Result<Self> {
        if !(config.target_kv_usage > 0.0 && config.target_kv_usage <= 1.0) {
            return Err(AutoscaleError::config(
                "targetKvUsage",
                format!("{} is not in (0, 1]", config.target_kv_usage),
            ));
        }
        if !(config.target_waiting > 0.0 && config.target_waiting.is_finite()) {
            return Err(AutoscaleError::config("targetWaiting", format!("{} is not positive", config.target_waiting)));
        }
        if !(0.0..1.0).contains(&config.tolerance) {
            return Err(AutoscaleError::config("tolerance", format!("{} is not in [0, 1)", config.tolerance)));
        }
        Ok(ThresholdPolicy { config })
    }
}

impl Policy for ThresholdPolicy {
    fn name(&self) -> &str {
        "threshold"
    }

    fn decide(&mut self, s: &ModelSnapshot) -> Result<Vec<Decision>> {
        s.validate()?;
        let from_zero = ZeroGate::from_zero(s).map(|v| v.name.clone());
        Ok(s.variants
            .iter()
            .map(|v| {
                let mut d =
                    Decision { variant: v.name.clone(), current: v.current, desired: v.current, reason: Reason::Hold };
                if from_zero.as_deref() == Some(v.name.as_str()) {
                    d.desired = 1;
                    d.reason = Reason::ScaleFromZero;
                    return d;
                }
                let mine: Vec<_> = s.replicas.iter().filter(|r| r.variant == v.name).collect();
                if mine.is_empty() || v.ready == 0 {
                    return d;
                }
                let n = mine.len() as f64;
                let kv = mine.iter().map(|r| r.kv_usage).sum::<f64>() / n / self.config.target_kv_usage;
                let waiting = mine.iter().map(|r| r.waiting).sum::<f64>() / n / self.config.target_waiting;
                let ratio = kv.max(waiting);
                if (ratio - 1.0).abs() > self.config.tolerance {
                    let want = (f64::from(v.ready) * ratio).ceil() as u32;
                    // HPA never goes below one replica on a utilisation metric.
                    d.desired = want.clamp(v.min.max(1).min(v.max), v.max);
                    d.reason = if d.desired != want {
                        Reason::Bounded
                    } else if d.desired < v.current {
                        Reason::Spare
                    } else {
                        Reason::Saturated
                    };
                }
                d
            })
            .collect())
    }
}

/// A fixed replica count per variant (provisioned for the peak).
#[derive(Debug, Clone)]
pub struct StaticPolicy {
    replicas: u32,
}

impl StaticPolicy {
    /// Every variant at `replicas` (within its bounds).
    pub fn new(replicas: u32) -> Self {
        StaticPolicy { replicas }
    }
}

impl Policy for StaticPolicy {
    fn name(&self) -> &str {
        "static"
    }

    fn decide(&mut self, s: &ModelSnapshot) -> Result<Vec<Decision>> {
        Ok(s.variants
            .iter()
            .map(|v| Decision {
                variant: v.name.clone(),
                current: v.current,
                desired: self.replicas.clamp(v.min, v.max),
                reason: Reason::Hold,
            })
            .collect())
    }
}
