//! The model-based policy: each variant's performance profile fitted online from what
//! its replicas report ([`ProfileFit`]), a queueing model of a replica
//! ([`crate::queue`]) for the most load one replica takes within the TTFT and ITL
//! objectives (with headroom), and the cheapest replica counts that carry the observed
//! load: variants ranked by cost per request per second, filled in that order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};
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
    /// Seconds in which the requests the picker holds should be served: they add
    /// `queued / queueDrainSeconds` to the arrival rate.
    pub queue_drain_seconds: f64,
    /// Seconds ahead the load is planned for: a rising arrival rate is extrapolated
    /// along its recent trend by this much (a replica's start-up plus a decision
    /// interval is the natural value; 0 plans for the load now). A falling rate is not:
    /// scale-down waits for the load itself.
    pub lookahead_seconds: f64,
    /// Seconds of arrival-rate history the trend is fitted over.
    pub trend_window_seconds: f64,
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
            queue_drain_seconds: 15.0,
            lookahead_seconds: 75.0,
            trend_window_seconds: 180.0,
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
        for (field, v) in
            [("lookaheadSeconds", self.lookahead_seconds), ("trendWindowSeconds", self.trend_window_seconds)]
        {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(AutoscaleError::config(field, format!("{v} is not a duration")));
            }
        }
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
    /// (time, arrival rate) over the trend window.
    rates: std::collections::VecDeque<(f64, f64)>,
}

impl ModelBasedPolicy {
    /// The policy under `config` (checked).
    pub fn new(config: ModelBasedConfig) -> Result<Self> {
        config.validate()?;
        let zero = ZeroGate::new(config.scale_to_zero_after);
        Ok(ModelBasedPolicy { config, fits: BTreeMap::new(), zero, rates: Default::default() })
    }

    /// The profile `variant` is planned with now.
    pub fn profile(&self, variant: &str) -> PerfProfile {
        self.fits.get(variant).map_or_else(|| self.prior(variant), ProfileFit::profile)
    }

    /// The arrival rate to plan for at `now`: the observed one, raised along its rising
    /// trend (least squares over the window) by the lookahead.
    fn planned_rate(&mut self, now: f64, rate: f64) -> f64 {
        self.rates.push_back((now, rate));
        while self.rates.front().is_some_and(|&(t, _)| now - t > self.config.trend_window_seconds) {
            self.rates.pop_front();
        }
        let mut fit = crate::profile::LineFit::exact();
        for &(t, r) in &self.rates {
            fit.observe(t - now, r);
        }
        match fit.line_any_spread() {
            Some((_, slope)) if slope > 0.0 => rate + slope * self.config.lookahead_seconds,
            _ => rate,
        }
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
                // about rate × step of them share a prefill step's time.
                let rate = r.prefill_rate.unwrap_or(0.0);
                let together = (rate * pt).max(1.0);
                let own = ((pt - step) / together).max(0.0);
                // A replica flushing a backlog admits many at once: no clean reading.
                if r.waiting == 0.0 {
                    fit.observe_prefill(s.load.avg_input_tokens, own);
                }
                share = (rate * own).min(0.95);
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
        // Requests held by the picker are load too, to be served within
        // queue_drain_seconds.
        let mut lambda =
            self.planned_rate(s.now, s.load.arrival_rate) + s.load.queued / self.config.queue_drain_seconds;
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
