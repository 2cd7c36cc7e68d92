//! Arrival traces: a Poisson process whose rate follows a shape (constant, a step, a
//! diurnal wave, on/off bursts), drawn by thinning from a seeded generator, with prompt
//! and output lengths uniform in ranges.

use llmd_kvcache::rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};

/// The workspace's seeded generator (llmd-kvcache's SplitMix64) with the draws a trace
/// needs: traces are reproducible from their seed.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in (0, 1] (never 0: its logarithm is taken).
    pub fn unit(&mut self) -> f64 {
        self.0.next_f64() + 1.0 / (1u64 << 53) as f64
    }

    /// Exponential with `rate`.
    pub fn exp(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + self.0.below(u64::from(hi - lo) + 1) as u32
    }
}

/// How the arrival rate (requests per second) moves over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Shape {
    /// The same rate throughout.
    Constant {
        /// Requests per second.
        rate: f64,
    },
    /// `low`, then `high` from `at` until `until`, then `low` again.
    Step {
        /// The base rate.
        low: f64,
        /// The raised rate.
        high: f64,
        /// When it rises, seconds.
        at: f64,
        /// When it falls back.
        until: f64,
    },
    /// A day compressed into `period` seconds: `low` at the start, `high` halfway.
    Diurnal {
        /// The trough.
        low: f64,
        /// The peak.
        high: f64,
        /// Seconds per cycle.
        period: f64,
    },
    /// `low` with bursts of `high`; bursts and gaps last exponential times of the given
    /// means (a two-state Markov-modulated Poisson process).
    Bursty {
        /// The rate between bursts.
        low: f64,
        /// The rate in a burst.
        high: f64,
        /// Mean burst length, seconds.
        mean_burst: f64,
        /// Mean gap between bursts, seconds.
        mean_gap: f64,
    },
}

impl Shape {
    fn peak(&self) -> f64 {
        match *self {
            Shape::Constant { rate } => rate,
            Shape::Step { low, high, .. } | Shape::Diurnal { low, high, .. } | Shape::Bursty { low, high, .. } => {
                low.max(high)
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, v: f64| AutoscaleError::config(what, format!("{v} is not a rate or duration"));
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        match *self {
            Shape::Constant { rate } if !ok(rate) => Err(bad("rate", rate)),
            Shape::Step { low, high, at, until } => {
                for (w, v) in [("low", low), ("high", high), ("at", at), ("until", until)] {
                    if !ok(v) {
                        return Err(bad(w, v));
                    }
                }
                Ok(())
            }
            Shape::Diurnal { low, high, period } => {
                for (w, v) in [("low", low), ("high", high)] {
                    if !ok(v) {
                        return Err(bad(w, v));
                    }
                }
                if !(period > 0.0 && period.is_finite()) { Err(bad("period", period)) } else { Ok(()) }
            }
            Shape::Bursty { low, high, mean_burst, mean_gap } => {
                for (w, v) in [("low", low), ("high", high)] {
                    if !ok(v) {
                        return Err(bad(w, v));
                    }
                }
                for (w, v) in [("mean_burst", mean_burst), ("mean_gap", mean_gap)] {
                    if !(v > 0.0 && v.is_finite()) {
                        return Err(bad(w, v));
                    }
                }
                Ok(())
            }
            Shape::Constant { .. } => Ok(()),
        }
    }
}

/// A trace to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSpec {
    /// The rate over time.
    pub shape: Shape,
    /// Seconds of arrivals.
    pub duration: f64,
    /// Prompt tokens, uniform in this range.
    pub input_tokens: (u32, u32),
    /// Output tokens, uniform in this range (at least 1).
    pub output_tokens: (u32, u32),
    /// The generator's seed.
    pub seed: u64,
}

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRequest {
    /// Seconds from the start.
    pub arrival: f64,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Tokens to generate.
    pub output_tokens: u32,
}

/// The requests of `spec`, in arrival order.
pub fn generate(spec: &TraceSpec) -> Result<Vec<TraceRequest>> {
    spec.shape.validate()?;
    if !(spec.duration >= 0.0 && spec.duration.is_finite()) {
        return Err(AutoscaleError::config("duration", format!("{} is not a duration", spec.duration)));
    }
    let mut rng = Rng::new(spec.seed);
    // Burst switching times, drawn up front from their own stream.
    let mut switches = Vec::new();
    if let Shape::Bursty { mean_burst, mean_gap, .. } = spec.shape {
        let mut srng = Rng::new(spec.seed ^ 0x5bd1_e995);
        let (mut t, mut on) = (0.0, false);
        while t < spec.duration {
            t += srng.exp(1.0 / if on { mean_burst } else { mean_gap });
            on = !on;
            switches.push(t);
        }
    }
    let rate_at = |t: f64| -> f64 {
        match spec.shape {
            Shape::Constant { rate } => rate,
            Shape::Step { low, high, at, until } => {
                if t >= at && t < until {
                    high
                } else {
                    low
                }
            }
            Shape::Diurnal { low, high, period } => {
                low + (high - low) * 0.5 * (1.0 - (2.0 * std::f64::consts::PI * t / period).cos())
            }
            Shape::Bursty { low, high, .. } => {
                // Even count of switches before t: between bursts.
                if switches.partition_point(|&s| s <= t) % 2 == 1 { high } else { low }
            }
        }
    };
    let peak = spec.shape.peak();
    let mut out = Vec::new();
    if peak <= 0.0 {
        return Ok(out);
    }
    let (i0, i1) = spec.input_tokens;
    let (o0, o1) = (spec.output_tokens.0.max(1), spec.output_tokens.1.max(1));
    let mut t = 0.0;
    loop {
        t += rng.exp(peak);
        if t >= spec.duration {
            break;
        }
        // Thinning: keep an arrival of the peak-rate process with probability rate/peak.
        if rng.unit() * peak <= rate_at(t) {
            out.push(TraceRequest { arrival: t, input_tokens: rng.range(i0, i1), output_tokens: rng.range(o0, o1) });
        }
    }
    Ok(out)
}
