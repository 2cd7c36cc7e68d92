//! The model-based policy: each variant's performance profile fitted online from what
//! its replicas report ([`ProfileFit`]), a queueing model of a replica
//! ([`crate::queue`]) for the most load one replica takes within the TTFT and ITL
//! objectives (with headroom), and the cheapest replica counts that carry the observed
//! load: variants ranked by cost per request per second, filled in that order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};
use crate::forecast::{ForecastConfig, RateForecaster};
use crate::policy::Policy;
use crate::profile::{PerfProfile, ProfileFit};
use crate::queue::{Slo, capacity};
use crate::snapshot::{Decision, ModelSnapshot, Reason};
use crate::zero::ZeroGate;

/// The model-based policy's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ModelBasedConfig {
    /// Mean time-to-first-token objective, seconds.
    pub slo_ttft: f64,
    /// Mean inter-token latency objective, seconds.
    pub slo_itl: f64,
    /// Fraction of each objective kept free (predictions must meet `(1 - headroom)·slo`).
    pub headroom: f64,
    /// Most arrivals a replica may refuse for want of room.
    pub max_blocking: f64,
    /// Per-observation forgetting of the profile fit, in (0, 1].
    pub forgetting: f64,
    /// Profiles to start from, per variant; `default_profile` for the rest.
    pub profiles: BTreeMap<String, PerfProfile>,
    /// The profile of a variant with none of its own.
    pub default_profile: PerfProfile,
    /// Seconds of no load before a variant with `min` 0 goes to zero (infinite: never).
    pub scale_to_zero_after: f64,
    /// Seconds in which waiting requests (held by the picker or queued at a replica)
    /// should be served: they add `waiting / queueDrainSeconds` to the arrival rate.
    /// Two minutes: a backlog left by a burst is served by replicas started for it
    /// (one start-up) within about another start-up, not by one that doubles the fleet
    /// for each queued second.
    pub queue_drain_seconds: f64,
    /// How the arrival rate to plan for is forecast from the measured one.
    pub forecast: ForecastConfig,
}

impl Default for ModelBasedConfig {
    fn default() -> Self {
        ModelBasedConfig {
            slo_ttft: 0.5,
            slo_itl: 0.05,
            headroom: 0.2,
            max_blocking: 0.001,
            // Several replicas report each decision: about 200 readings remembered.
            forgetting: 0.995,
            profiles: BTreeMap::new(),
            // An 8B-class model on one H100-class GPU, roughly: 12 ms a step plus
            // 0.1 ms per request; 20 ms plus 0.1 ms per prompt token to prefill.
            default_profile: PerfProfile { alpha: 0.012, beta: 0.0001, gamma: 0.02, delta: 0.0001, max_batch: 256 },
            scale_to_zero_after: f64::INFINITY,
            queue_drain_seconds: 120.0,
            forecast: ForecastConfig::default(),
        }
    }
}

impl ModelBasedConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.slo_ttft > 0.0 && self.slo_ttft.is_finite()) {
            return Err(AutoscaleError::config("sloTtft", format!("{} is not a positive time", self.slo_ttft)));
        }
        if !(self.slo_itl > 0.0 && self.slo_itl.is_finite()) {
            return Err(AutoscaleError::config("sloItl", format!("{} is not a positive time", self.slo_itl)));
        }
        if !(0.0..1.0).contains(&self.headroom) {
            return Err(AutoscaleError::config("headroom", format!("{} is not in [0, 1)", self.headroom)));
        }
        if !(0.0..=1.0).contains(&self.max_blocking) {
            return Err(AutoscaleError::config("maxBlocking", format!("{} is not in [0, 1]", self.max_blocking)));
        }
        if !(self.forgetting > 0.0 && self.forgetting <= 1.0) {
            return Err(AutoscaleError::config("forgetting", format!("{} is not in (0, 1]", self.forgetting)));
        }
        if self.scale_to_zero_after.is_nan() || self.scale_to_zero_after < 0.0 {
            return Err(AutoscaleError::config(
                "scaleToZeroAfter",
                format!("{} is not a duration", self.scale_to_zero_after),
            ));
        }
        self.forecast.validate()?;
        if !(self.queue_drain_seconds > 0.0 && self.queue_drain_seconds.is_finite()) {
            return Err(AutoscaleError::config(
                "queueDrainSeconds",
                format!("{} is not a positive duration", self.queue_drain_seconds),
            ));
        }
        self.default_profile.validate()?;
        self.profiles.values().try_for_each(PerfProfile::validate)
    }

    fn slo(&self) -> Slo {
        Slo { ttft: self.slo_ttft, itl: self.slo_itl, max_blocking: self.max_blocking }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ModelBasedPolicy {
    config: ModelBasedConfig,
    fits: BTreeMap<String, ProfileFit>,
    zero: ZeroGate,
    forecast: RateForecaster,
}

impl ModelBasedPolicy {
    /// The policy under `config` (checked).
    pub fn new(config: ModelBasedConfig) -> Result<Self> {
        config.validate()?;
        let zero = ZeroGate::new(config.scale_to_zero_after);
        let forecast = RateForecaster::new(config.forecast.clone())?;
        Ok(ModelBasedPolicy { config, fits: BTreeMap::new(), zero, forecast })
    }

    /// The profile `variant` is planned with now.
    pub fn profile(&self, variant: &str) -> PerfProfile {
        self.fits.get(variant).map_or_else(|| self.prior(variant), ProfileFit::profile)
    }

    fn prior(&self, variant: &str) -> PerfProfile {
        self.config.profiles.get(variant).copied().unwrap_or(self.config.default_profile)
    }

    /// Feeds the snapshot's per-replica latencies to the variants' fits. A prefill
    /// (admission to first token, no queueing) is one step of the batch plus the prompt's
    /// own prefill: less the step, a prefill time for the window's mean prompt. A
    /// replica's mean ITL includes the prefills that stalled its steps: it is taken back
    /// to the decode step alone with the replica's share of time spent prefilling
    /// (prefills per second times their length), since the queueing model adds that
    /// share again.
    fn learn(&mut self, s: &ModelSnapshot) -> Result<()> {
        for r in &s.replicas {
            if !self.fits.contains_key(&r.variant) {
                let fit = ProfileFit::new(self.prior(&r.variant), self.config.forgetting)?;
                self.fits.insert(r.variant.clone(), fit);
            }
            let Some(fit) = self.fits.get_mut(&r.variant) else { continue };
            let step = fit.profile().itl(r.running.max(1.0));
            let mut share = 0.0;
            if let Some(pt) = r.prefill_time {
                // Requests arriving during a step are admitted together at the next:
                // besides this one, the arrivals during the step before, whose mean
                // length is the replica's mean ITL (prefill stalls included).
                let rate = r.prefill_rate.unwrap_or(0.0);
                let together = (1.0 + rate * r.itl.unwrap_or(step)).max(1.0);
                let own = ((pt - step) / together).max(0.0);
                // A replica flushing a backlog admits many at once: no clean reading.
                // Means over empty windows (0/0) are no reading either.
                if r.waiting == 0.0 && own.is_finite() {
                    fit.observe_prefill(s.load.avg_input_tokens, own);
                }
                share = (rate * own).min(0.95);
                if !share.is_finite() {
                    share = 0.0;
                }
            }
            if let Some(itl) = r.itl {
                fit.observe_decode(r.running, itl * (1.0 - share));
            }
        }
        Ok(())
    }
}

impl Policy for ModelBasedPolicy {
    fn name(&self) -> &str {
        "model"
    }

    fn decide(&mut self, s: &ModelSnapshot) -> Result<Vec<Decision>> {
        s.validate()?;
        self.learn(s)?;
        let mut out: Vec<Decision> = s
            .variants
            .iter()
            .map(|v| Decision { variant: v.name.clone(), current: v.current, desired: v.current, reason: Reason::Hold })
            .collect();
        if let Some(v) = ZeroGate::from_zero(s) {
            if let Some(d) = out.iter_mut().find(|d| d.variant == v.name) {
                d.desired = 1;
                d.reason = Reason::ScaleFromZero;
            }
            return Ok(out);
        }
        let to_zero = self.zero.idle_long_enough(s);
        // Requests waiting, held by the picker or queued at a replica, are load too:
        // a backlog to be served within queue_drain_seconds on top of the arrivals.
        let waiting = s.load.queued + s.replicas.iter().map(|r| r.waiting).sum::<f64>();
        let mut lambda = self.forecast.observe(s.now, s.load.arrival_rate) + waiting / self.config.queue_drain_seconds;
        // Idle long enough to go to zero: the forecast's window still remembers the
        // trickle before, but nothing arrives or waits now.
        if to_zero && s.load.arrival_rate == 0.0 && waiting == 0.0 {
            lambda = 0.0;
        }
        let (input, output) = (s.load.avg_input_tokens, s.load.avg_output_tokens.max(1.0));
        let slo = self.config.slo();
        // Cost per request/s of capacity, cheapest first (ties by name).
        let mut ranked: Vec<(usize, f64, f64)> = s
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let cap = capacity(&self.profile(&v.name), input, output, &slo, self.config.headroom);
                let unit = if cap > 0.0 { v.cost / cap } else { f64::INFINITY };
                (i, cap, unit)
            })
            .collect();
        ranked.sort_by(|a, b| a.2.total_cmp(&b.2).then_with(|| s.variants[a.0].name.cmp(&s.variants[b.0].name)));
        let idle = lambda <= 0.0;
        let mut kept = false;
        for (i, cap, _) in ranked {
            let v = &s.variants[i];
            let need = if lambda <= 0.0 {
                0
            } else if cap > 0.0 {
                (lambda / cap).ceil().min(f64::from(u32::MAX)) as u32
            } else {
                u32::MAX
            };
            let mut n = need.clamp(v.min, v.max);
            // An idle model keeps one replica (of the first variant that has one) until
            // it has been idle long enough.
            if n == 0 && v.current > 0 && !to_zero && idle && !kept {
                n = 1.clamp(v.min, v.max);
            }
            kept |= n > 0;
            lambda = (lambda - f64::from(n) * cap).max(0.0);
            let d = &mut out[i];
            d.desired = n;
            d.reason = match n {
                0 if v.current > 0 => Reason::ScaleToZero,
                _ if n != need && (n == v.min || n == v.max) => Reason::Bounded,
                _ => Reason::SloModel,
            };
        }
        Ok(out)
    }
}
