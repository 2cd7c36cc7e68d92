//! Stabilization, as HPA's `behavior` with its defaults: a scale-down takes the highest
//! recommendation of its window (300 s), a scale-up the lowest of its own (0 s: at
//! once); a scale-up adds at most the larger of 4 replicas and 100 % per decision, a
//! scale-down removes any number. A variant seen for the first time counts its current
//! replicas as a recommendation, so nothing is removed before a window has passed.
//! Scale from and to zero are never held back: requests wait on the one, and the other
//! follows a whole idle period (the policy's own timer).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};
use crate::snapshot::{Decision, Reason, VariantState};

/// Windows and step limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StabilizeConfig {
    /// Seconds of recommendations a scale-up takes the lowest of.
    pub scale_up_window: f64,
    /// Seconds of recommendations a scale-down takes the highest of.
    pub scale_down_window: f64,
    /// A scale-up adds at most the larger of this many replicas… (per decision: HPA's
    /// default policy is per 15 s, the decision interval its scenarios use)
    pub max_step_up: u32,
    /// …and this fraction of the current ones (1.0: doubling).
    pub max_up_fraction: f64,
    /// Most replicas removed per decision.
    pub max_step_down: u32,
}

impl Default for StabilizeConfig {
    fn default() -> Self {
        StabilizeConfig {
            scale_up_window: 0.0,
            scale_down_window: 300.0,
            max_step_up: 4,
            max_up_fraction: 1.0,
            max_step_down: u32::MAX,
        }
    }
}

impl StabilizeConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        for (field, w) in [("scaleUpWindow", self.scale_up_window), ("scaleDownWindow", self.scale_down_window)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(AutoscaleError::config(field, format!("{w} is not a duration")));
            }
        }
        if self.max_step_up == 0 {
            return Err(AutoscaleError::config("maxStepUp", "a step must allow at least one replica"));
        }
        if self.max_step_down == 0 {
            return Err(AutoscaleError::config("maxStepDown", "a step must allow at least one replica"));
        }
        if !(self.max_up_fraction.is_finite() && self.max_up_fraction >= 0.0) {
            return Err(AutoscaleError::config("maxUpFraction", format!("{} is not a fraction", self.max_up_fraction)));
        }
        Ok(())
    }
}

/// Holds each variant's recent recommendations.
#[derive(Debug, Clone)]
pub struct Stabilizer {
    config: StabilizeConfig,
    history: BTreeMap<String, VecDeque<(f64, u32)>>,
    seen: BTreeMap<String, (f64, u32)>,
}

impl Stabilizer {
    /// A stabilizer under `config` (checked).
    pub fn new(config: StabilizeConfig) -> Result<Self> {
        config.validate()?;
        Ok(Stabilizer { config, history: BTreeMap::new(), seen: BTreeMap::new() })
    }

    /// [`apply`](Self::apply), then each decision brought inside its variant's bounds
    /// (reason `Bounded`): bounds hold at once, whatever the window says. `variants` are
    /// the snapshot's, in the decisions' order.
    pub fn apply_bounded(&mut self, now: f64, decisions: &[Decision], variants: &[VariantState]) -> Vec<Decision> {
        let mut out = self.apply(now, decisions);
        for (d, v) in out.iter_mut().zip(variants) {
            let inside = d.desired.clamp(v.min, v.max);
            if inside != d.desired {
                d.desired = inside;
                d.reason = Reason::Bounded;
            }
        }
        out
    }

    /// The decisions to act on at `now` (seconds) given the policy's.
    pub fn apply(&mut self, now: f64, decisions: &[Decision]) -> Vec<Decision> {
        let c = &self.config;
        let keep = c.scale_up_window.max(c.scale_down_window);
        decisions
            .iter()
            .map(|d| {
                // First sight: the count it has stands as a recommendation for the
                // scale-down window, so nothing is removed before one has passed.
                let (seen_at, seen_with) = *self.seen.entry(d.variant.clone()).or_insert((now, d.current));
                let h = self.history.entry(d.variant.clone()).or_default();
                h.push_back((now, d.desired));
                while h.front().is_some_and(|&(t, _)| now - t > keep) {
                    h.pop_front();
                }
                // Zero is decided on its own timers: requests waiting (from zero) or a
                // whole idle period (to zero).
                if matches!(d.reason, Reason::ScaleFromZero | Reason::ScaleToZero) {
                    return d.clone();
                }
                let within = |w: f64| h.iter().filter(move |&&(t, _)| now - t <= w).map(|&(_, r)| r);
                let up = within(c.scale_up_window).min().unwrap_or(d.desired);
                let mut down = within(c.scale_down_window).max().unwrap_or(d.desired);
                if now - seen_at < c.scale_down_window {
                    down = down.max(seen_with);
                }
                let step =
                    c.max_step_up.max((f64::from(d.current) * c.max_up_fraction).min(f64::from(u32::MAX)) as u32);
                let desired = if up > d.current {
                    up.min(d.current.saturating_add(step))
                } else if down < d.current {
                    down.max(d.current.saturating_sub(c.max_step_down))
                } else {
                    d.current
                };
                let mut out = d.clone();
                if desired != d.desired {
                    out.desired = desired;
                    out.reason = Reason::Stabilized;
                }
                out
            })
            .collect()
    }
}
