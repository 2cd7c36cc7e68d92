//! Performance profiles and their online fit. A variant's replica decodes a batch of
//! `b` requests at `ITL(b) = alpha + beta·b` seconds per step and prefills a prompt of
//! `t` tokens in `gamma + delta·t` seconds (WVA's older model: decodeParms alpha/beta,
//! prefillParms gamma/delta). [`ProfileFit`] estimates both lines from what the
//! replicas report, with exponential forgetting so the fit follows a changing workload.

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};

/// One variant's replica performance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PerfProfile {
    /// Seconds per decode step at batch 0 (the step's fixed cost).
    pub alpha: f64,
    /// Seconds per decode step per request in the batch.
    pub beta: f64,
    /// Seconds of a prefill's fixed cost.
    pub gamma: f64,
    /// Seconds of prefill per prompt token.
    pub delta: f64,
    /// Most requests a replica runs at once (`max_num_seqs`).
    pub max_batch: u32,
}

impl PerfProfile {
    /// Checks every coefficient is finite and not negative, the step costs something,
    /// and a batch holds at least one request.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [("alpha", self.alpha), ("beta", self.beta), ("gamma", self.gamma), ("delta", self.delta)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(AutoscaleError::config(field, format!("{v} is not a non-negative time")));
            }
        }
        if self.alpha + self.beta <= 0.0 {
            return Err(AutoscaleError::config("alpha", "a decode step of one request must take some time"));
        }
        if self.max_batch == 0 {
            return Err(AutoscaleError::config("maxBatch", "0 requests per batch"));
        }
        Ok(())
    }

    /// Seconds per decode step with `batch` requests.
    pub fn itl(&self, batch: f64) -> f64 {
        self.alpha + self.beta * batch
    }

    /// Seconds to prefill `tokens`.
    pub fn prefill(&self, tokens: f64) -> f64 {
        self.gamma + self.delta * tokens
    }
}

/// The least relative spread of x ([`LineFit::line`]).
pub const MIN_SPREAD: f64 = 0.1;

/// A least-squares line `y = a + b·x` over weighted observations, older ones weighed
/// down by `forgetting` per observation (1: never forgotten).
#[derive(Debug, Clone, PartialEq)]
pub struct LineFit {
    forgetting: f64,
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    n: u64,
}

impl LineFit {
    /// An empty fit; `forgetting` in (0, 1].
    pub fn new(forgetting: f64) -> Result<Self> {
        if !(forgetting > 0.0 && forgetting <= 1.0) {
            return Err(AutoscaleError::config("forgetting", format!("{forgetting} is not in (0, 1]")));
        }
        Ok(LineFit { forgetting, w: 0.0, x: 0.0, y: 0.0, xx: 0.0, xy: 0.0, n: 0 })
    }

    /// An empty fit that forgets nothing.
    pub fn exact() -> Self {
        LineFit { forgetting: 1.0, w: 0.0, x: 0.0, y: 0.0, xx: 0.0, xy: 0.0, n: 0 }
    }

    /// Adds one observation (ignored unless both are finite).
    pub fn observe(&mut self, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        let f = self.forgetting;
        self.w = self.w * f + 1.0;
        self.x = self.x * f + x;
        self.y = self.y * f + y;
        self.xx = self.xx * f + x * x;
        self.xy = self.xy * f + x * y;
        self.n += 1;
    }

    /// Observations seen.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// `(a, b)`, once the observations' x values spread enough to tell a slope: their
    /// weighted standard deviation at least [`MIN_SPREAD`] of their mean. (Window means
    /// of prompt lengths barely move; a slope fitted through them is noise.)
    pub fn line(&self) -> Option<(f64, f64)> {
        if self.n < 2 || self.w <= 0.0 {
            return None;
        }
        let det = self.w * self.xx - self.x * self.x;
        let mean = self.x / self.w;
        let var = det / (self.w * self.w);
        if !(var > 0.0 && var.sqrt() >= MIN_SPREAD * mean.abs()) {
            return None;
        }
        let b = (self.w * self.xy - self.x * self.y) / det;
        let a = (self.y - b * self.x) / self.w;
        Some((a, b))
    }

    /// `(a, b)` whenever x varied at all (a trend over time, where x is spread by
    /// construction).
    pub fn line_any_spread(&self) -> Option<(f64, f64)> {
        let det = self.w * self.xx - self.x * self.x;
        if self.n < 2 || det <= 0.0 {
            return None;
        }
        let b = (self.w * self.xy - self.x * self.y) / det;
        Some(((self.y - b * self.x) / self.w, b))
    }

    /// The weighted mean of y (for a flat fit when x never varied).
    pub fn mean_y(&self) -> Option<f64> {
        (self.w > 0.0).then(|| self.y / self.w)
    }
}

/// A [`PerfProfile`] learned from observations, starting from a prior.
#[derive(Debug, Clone)]
pub struct ProfileFit {
    prior: PerfProfile,
    decode: LineFit,
    prefill: LineFit,
}

impl ProfileFit {
    /// A fit that answers `prior` until observations say otherwise.
    pub fn new(prior: PerfProfile, forgetting: f64) -> Result<Self> {
        prior.validate()?;
        Ok(ProfileFit { prior, decode: LineFit::new(forgetting)?, prefill: LineFit::new(forgetting)? })
    }

    /// A replica ran `batch` requests at `itl` seconds per token.
    pub fn observe_decode(&mut self, batch: f64, itl: f64) {
        if batch > 0.0 && itl > 0.0 {
            self.decode.observe(batch, itl);
        }
    }

    /// A prompt of `tokens` took `seconds` to prefill (a first token's time with no
    /// queueing before it).
    pub fn observe_prefill(&mut self, tokens: f64, seconds: f64) {
        if tokens > 0.0 && seconds > 0.0 {
            self.prefill.observe(tokens, seconds);
        }
    }

    /// The profile: each line from its observations where they determine it (negative
    /// coefficients clamped to zero), else the prior's, scaled to the observed mean
    /// where there are observations but no spread.
    pub fn profile(&self) -> PerfProfile {
        let p = self.prior;
        let (alpha, beta) = fitted(&self.decode, p.alpha, p.beta, 1.0);
        let (gamma, delta) = fitted(&self.prefill, p.gamma, p.delta, 0.0);
        PerfProfile { alpha, beta, gamma, delta, ..p }
    }
}

fn fitted(f: &LineFit, a0: f64, b0: f64, floor_x: f64) -> (f64, f64) {
    match f.line() {
        Some((a, b)) if b >= 0.0 => (a.max(0.0), b),
        // A falling line is noise around a flat one.
        Some(_) | None => match f.mean_y() {
            Some(m) if m > 0.0 => {
                // Keep the prior's shape, scaled to what is seen at the mean x.
                let mean_x = if f.w > 0.0 { (f.x / f.w).max(floor_x) } else { floor_x };
                let prior_at = a0 + b0 * mean_x;
                if prior_at > 0.0 { (a0 * m / prior_at, b0 * m / prior_at) } else { (m, 0.0) }
            }
            _ => (a0, b0),
        },
    }
}
