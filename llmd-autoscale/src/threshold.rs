//! Two baselines the policies are compared with: HPA's proportional rule on a
//! utilisation metric (here KV-cache usage, the usual choice for vLLM pods), and static
//! provisioning.

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};
use crate::policy::Policy;
use crate::snapshot::{Decision, ModelSnapshot, Reason};
use crate::zero::ZeroGate;

/// HPA's rule: `desired = ceil(current · average / target)`, unchanged while the ratio
/// is within the tolerance (HPA's default 0.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Target average KV-cache usage.
    pub target_kv_usage: f64,
    /// Ratio band around 1 within which nothing changes.
    pub tolerance: f64,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        ThresholdConfig { target_kv_usage: 0.6, tolerance: 0.1 }
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
                let usage: Vec<f64> = s.replicas.iter().filter(|r| r.variant == v.name).map(|r| r.kv_usage).collect();
                if usage.is_empty() || v.ready == 0 {
                    return d;
                }
                let ratio = usage.iter().sum::<f64>() / usage.len() as f64 / self.config.target_kv_usage;
                if (ratio - 1.0).abs() > self.config.tolerance {
                    let want = (f64::from(v.ready) * ratio).ceil() as u32;
                    d.desired = want.clamp(v.min.max(1), v.max);
                    d.reason = if d.desired == want { Reason::Saturated } else { Reason::Bounded };
                    if d.desired < v.current {
                        d.reason = Reason::Spare;
                    }
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
