//! The arrival rate to plan for: a noise-aware forecast from the rates measured at each
//! decision.
//!
//! A rate measured over one decision interval is a count of Poisson arrivals divided by
//! the interval: at 40 req/s over 15 s its standard deviation is 4 % of the rate, and
//! at 5 req/s 12 %. Planning on the raw reading makes a scale-down window, which keeps
//! the highest recommendation it saw, hold replicas for the noise's highest excursions.
//! So the forecaster fits a line through the readings of a window and plans on it:
//! - **level**: the line's value now, or the window's mean where the slope is not
//!   significant (within `slope_sigmas` standard errors of zero under Poisson noise);
//! - **trend**: a significant rise is followed `lookahead_up` seconds ahead (a
//!   replica's start-up plus a decision interval: what is started now serves from
//!   then until the next decision's replicas are ready); a significant fall
//!   `lookahead_down` seconds ahead (the scale-down window: what is recommended now is
//!   held that long, so it should fit the load at the window's end), never below half
//!   the rate measured now;
//! - **jumps**: a reading further than `jump_sigmas` standard deviations from what the
//!   line predicted is a change of regime, not noise (a burst, a step): the window
//!   restarts from it and the reading is planned on as measured.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};

/// The forecaster's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ForecastConfig {
    /// Seconds of readings the line is fitted over.
    pub window_seconds: f64,
    /// Seconds ahead a significant rise is followed (0: not at all).
    pub lookahead_up: f64,
    /// Seconds ahead a significant fall is followed (0: not at all).
    pub lookahead_down: f64,
    /// Standard errors a slope must lie from zero to count as a trend.
    pub slope_sigmas: f64,
    /// Standard deviations a reading must lie from the line's prediction to restart it.
    pub jump_sigmas: f64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            window_seconds: 600.0,
            lookahead_up: 75.0,
            lookahead_down: 120.0,
            slope_sigmas: 2.0,
            jump_sigmas: 4.0,
        }
    }
}

impl ForecastConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("windowSeconds", self.window_seconds),
            ("lookaheadUp", self.lookahead_up),
            ("lookaheadDown", self.lookahead_down),
            ("slopeSigmas", self.slope_sigmas),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(AutoscaleError::config(field, format!("{v} is not a non-negative number")));
            }
        }
        if !(self.jump_sigmas > 0.0 && self.jump_sigmas.is_finite()) {
            return Err(AutoscaleError::config("jumpSigmas", format!("{} is not positive", self.jump_sigmas)));
        }
        Ok(())
    }
}

/// A line through `(t, rate)` readings, times relative to the newest.
struct Line {
    mean_t: f64,
    mean_r: f64,
    slope: f64,
    /// Σ (t − mean_t)².
    sxx: f64,
    n: usize,
}

impl Line {
    fn fit(readings: &VecDeque<(f64, f64)>, now: f64) -> Option<Line> {
        let n = readings.len();
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let mean_t = readings.iter().map(|&(t, _)| t - now).sum::<f64>() / nf;
        let mean_r = readings.iter().map(|&(_, r)| r).sum::<f64>() / nf;
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for &(t, r) in readings {
            let dx = t - now - mean_t;
            sxx += dx * dx;
            sxy += dx * (r - mean_r);
        }
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        Some(Line { mean_t, mean_r, slope, sxx, n })
    }

    /// The line's value at `x` seconds from now.
    fn at(&self, x: f64) -> f64 {
        self.mean_r + self.slope * (x - self.mean_t)
    }

    /// What the readings predict for a new one at `x` seconds from now, and the
    /// standard deviation of the difference between that prediction and a reading of
    /// noise `sigma`: the reading's own, plus the fit's. With fewer than three readings
    /// a line is not trusted and the prediction is their mean.
    fn predict(&self, x: f64, sigma: f64) -> (f64, f64) {
        let n = self.n as f64;
        if self.n < 3 || self.sxx <= 0.0 {
            return (self.mean_r, sigma * (1.0 + 1.0 / n).sqrt());
        }
        let dx = x - self.mean_t;
        (self.at(x), sigma * (1.0 + 1.0 / n + dx * dx / self.sxx).sqrt())
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RateForecaster {
    config: ForecastConfig,
    /// (time, rate), oldest first, over the window.
    readings: VecDeque<(f64, f64)>,
    /// Seconds between the last two readings (the interval a rate is measured over).
    interval: f64,
}

impl RateForecaster {
    /// A forecaster under `config` (checked).
    pub fn new(config: ForecastConfig) -> Result<Self> {
        config.validate()?;
        Ok(RateForecaster { config, readings: VecDeque::new(), interval: 0.0 })
    }

    /// Records `rate` (arrivals per second) measured over the interval ending at `now`
    /// and returns the rate to plan for. Readings must come in time order: a second one
    /// at the same time replaces the first, and one earlier than the newest restarts the
    /// window.
    pub fn observe(&mut self, now: f64, rate: f64) -> f64 {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        let Some(&(last, _)) = self.readings.back() else {
            self.readings.push_back((now, rate));
            return rate;
        };
        let dt = now - last;
        if dt == 0.0 {
            self.readings.pop_back();
        } else if !(dt > 0.0 && dt.is_finite()) {
            self.readings.clear();
            self.readings.push_back((now, rate));
            return rate;
        } else {
            self.interval = dt;
        }
        // Readings that left the window predict nothing (after a pause, say).
        while self.readings.front().is_some_and(|&(t, _)| now - t > self.config.window_seconds) {
            self.readings.pop_front();
        }
        // Poisson: a count of rate·dt arrivals has variance rate·dt, so the rate has
        // variance rate/dt (at least one arrival's worth, so a quiet window still
        // allows for one). Decisions come at a steady interval; the last one stands for
        // all.
        let dt = if self.interval > 0.0 { self.interval } else { 1.0 };
        let noise = |r: f64| (r.max(1.0 / dt) / dt).sqrt();
        if let Some(line) = Line::fit(&self.readings, now) {
            let (predicted, _) = line.predict(0.0, 0.0);
            let (_, spread) = line.predict(0.0, noise(predicted.max(0.0)));
            if (rate - predicted.max(0.0)).abs() > self.config.jump_sigmas * spread {
                self.readings.clear();
                self.readings.push_back((now, rate));
                return rate;
            }
        }
        self.readings.push_back((now, rate));
        let Some(line) = Line::fit(&self.readings, now) else { return rate };
        let sigma = noise(line.mean_r);
        let significant =
            line.n >= 3 && line.sxx > 0.0 && line.slope.abs() > self.config.slope_sigmas * sigma / line.sxx.sqrt();
        if !significant {
            return line.mean_r;
        }
        if line.slope > 0.0 {
            return line.at(self.config.lookahead_up);
        }
        // A steep fall that stops would leave nothing in place: never below half the
        // rate measured now.
        line.at(self.config.lookahead_down).max(rate / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Rng;

    fn poisson_rate(rng: &mut Rng, rate: f64, dt: f64) -> f64 {
        // Counts as the simulator's traces make them: exponential gaps.
        let (mut t, mut n) = (0.0, 0u32);
        loop {
            t += rng.exp(rate);
            if t > dt {
                return f64::from(n) / dt;
            }
            n += 1;
        }
    }

    #[test]
    fn a_steady_rate_is_planned_on_its_mean_not_its_noise() {
        let mut f = RateForecaster::new(ForecastConfig::default()).unwrap();
        let mut rng = Rng::new(7);
        let (mut raw_max, mut planned_max) = (0.0f64, 0.0f64);
        for i in 0..200 {
            let r = poisson_rate(&mut rng, 40.0, 15.0);
            let p = f.observe(f64::from(i) * 15.0, r);
            if i >= 20 {
                raw_max = raw_max.max(r);
                planned_max = planned_max.max(p);
            }
        }
        // 40 req/s over 15 s: the readings stray by ±4 % (σ), their highest of 180 by
        // about 3σ; the plan stays within about 1σ of the truth.
        assert!(raw_max > 43.0, "{raw_max}");
        assert!(planned_max < 42.5, "{planned_max}");
    }

    /// Noise alone seldom looks like a jump, even just after a restart when a line
    /// through two or three readings predicts poorly: the test allows for the fit's
    /// own error.
    #[test]
    fn noise_seldom_restarts_the_window() {
        let mut f = RateForecaster::new(ForecastConfig::default()).unwrap();
        let mut rng = Rng::new(11);
        let mut restarts = 0;
        for i in 0..400 {
            let before = f.readings.len();
            f.observe(f64::from(i) * 15.0, poisson_rate(&mut rng, 5.0, 15.0));
            restarts += usize::from(i > 0 && f.readings.len() == 1 && before >= 1);
        }
        assert!(restarts <= 2, "{restarts} restarts on a steady 5 req/s");
        // A second reading at the same time replaces the first.
        f.observe(400.0 * 15.0, 6.0);
        let n = f.readings.len();
        f.observe(400.0 * 15.0, 7.0);
        assert_eq!((f.readings.len(), f.readings.back().map(|r| r.1)), (n, Some(7.0)));
    }

    #[test]
    fn a_rise_is_followed_ahead_and_a_fall_by_the_down_lookahead() {
        let cfg = ForecastConfig {
            lookahead_up: 60.0,
            lookahead_down: 120.0,
            window_seconds: 150.0,
            ..ForecastConfig::default()
        };
        let mut f = RateForecaster::new(cfg).unwrap();
        let mut last = 0.0;
        // Noise-free ramps: 10 → 40 req/s at 0.05 req/s², then back down.
        for i in 0..=40 {
            last = f.observe(f64::from(i) * 15.0, 10.0 + 0.05 * 15.0 * f64::from(i));
        }
        assert!((last - (40.0 + 0.05 * 60.0)).abs() < 1e-6, "{last}");
        for i in 41..=60 {
            last = f.observe(f64::from(i) * 15.0, 40.0 - 0.05 * 15.0 * f64::from(i - 40));
        }
        assert!((last - (25.0 - 0.05 * 120.0)).abs() < 1e-6, "{last}");
        // Never below half the rate now, however steep the fall: 100 → 40 req/s in
        // 150 s would be followed below zero.
        let mut f = RateForecaster::new(ForecastConfig::default()).unwrap();
        for i in 0..=10 {
            last = f.observe(f64::from(i) * 15.0, 100.0 - 6.0 * f64::from(i));
        }
        assert!((last - 20.0).abs() < 1e-6, "{last}");
    }

    #[test]
    fn a_step_restarts_the_window_and_is_planned_on_at_once() {
        let mut f = RateForecaster::new(ForecastConfig::default()).unwrap();
        let mut rng = Rng::new(3);
        for i in 0..40 {
            f.observe(f64::from(i) * 15.0, poisson_rate(&mut rng, 10.0, 15.0));
        }
        let r = poisson_rate(&mut rng, 40.0, 15.0);
        assert_eq!(f.observe(600.0, r), r);
        // The next readings see no spurious slope from the few readings since.
        let p = f.observe(615.0, poisson_rate(&mut rng, 40.0, 15.0));
        assert!((35.0..45.0).contains(&p), "{p}");
    }

    /// The plan is finite, at least half the newest reading, and at most the highest
    /// reading plus the steepest rise between readings followed over the window and
    /// the lookahead (a least-squares slope is a weighted mean of the slopes between
    /// readings).
    fn plan_in_bounds(readings: &[(f64, f64)], plan: f64, cfg: &ForecastConfig) -> bool {
        let hi = readings.iter().map(|r| r.1).fold(0.0, f64::max);
        let steepest = readings.windows(2).map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0)).fold(0.0, f64::max);
        let newest = readings.last().map_or(0.0, |r| r.1);
        let reach = steepest * (cfg.window_seconds + cfg.lookahead_up);
        plan.is_finite() && plan >= newest / 2.0 - 1e-9 && plan <= hi + reach + 1e-9
    }

    proptest::proptest! {
        #[test]
        fn plans_stay_finite_and_near_the_readings(
            gaps in proptest::collection::vec(1.0f64..60.0, 1..60),
            rates in proptest::collection::vec(0.0f64..500.0, 60),
        ) {
            let cfg = ForecastConfig::default();
            let mut f = RateForecaster::new(cfg.clone()).unwrap();
            let (mut t, mut seen) = (0.0, Vec::new());
            for (gap, rate) in gaps.iter().zip(&rates) {
                t += gap;
                let plan = f.observe(t, *rate);
                // Only the readings still in the window (and the newest) shape the plan.
                seen.retain(|&(s, _): &(f64, f64)| t - s <= cfg.window_seconds);
                seen.push((t, *rate));
                proptest::prop_assert!(plan_in_bounds(&seen, plan, &cfg), "{plan} from {seen:?}");
            }
        }
    }

    /// Negative control: a plan off by a factor fails the bound.
    #[test]
    fn negative_control_the_bound_catches_a_wild_plan() {
        let cfg = ForecastConfig::default();
        let seen = [(0.0, 10.0), (15.0, 11.0), (30.0, 10.5)];
        assert!(plan_in_bounds(&seen, 10.7, &cfg));
        assert!(!plan_in_bounds(&seen, 100.0, &cfg) && !plan_in_bounds(&seen, 5.0, &cfg));
    }

    #[test]
    fn bad_settings_and_readings_are_refused_or_absorbed() {
        assert!(RateForecaster::new(ForecastConfig { jump_sigmas: 0.0, ..ForecastConfig::default() }).is_err());
        assert!(RateForecaster::new(ForecastConfig { window_seconds: f64::NAN, ..ForecastConfig::default() }).is_err());
        let mut f = RateForecaster::new(ForecastConfig::default()).unwrap();
        assert_eq!(f.observe(0.0, f64::NAN), 0.0);
        assert_eq!(f.observe(15.0, -3.0), 0.0);
        // Time going backwards restarts the window.
        assert_eq!(f.observe(5.0, 8.0), 8.0);
    }
}
