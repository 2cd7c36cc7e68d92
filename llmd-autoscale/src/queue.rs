//! A replica as a queue: requests arrive at rate `lambda` (Poisson), a replica holding
//! `n` runs `min(n, max_batch)` of them, the rest wait. A state-dependent birth-death
//! chain (as WVA's older M/M/1/K analyser): in state `n` with batch `m`, requests
//! complete at `m / (out·ITL(m) + m·P)` per second (each needs `out` decode steps of
//! `ITL(m)`, and every prefill of `P` seconds stalls the batch). From its stationary
//! distribution: the time a request waits for a slot (Little's law), its first token
//! (wait + prefill + one step of the batch it joins: the rest of the step in flight and
//! its own), the ITL requests see (each batch size weighed by the requests in it,
//! stretched by the share of time spent in prefills) and the chance it finds the
//! replica full.

use crate::profile::PerfProfile;

/// Requests a replica holds at most, as a multiple of its batch (beyond: refused).
const QUEUE_BATCHES: u32 = 8;

/// The workload a replica sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Requests per second.
    pub lambda: f64,
    /// Mean prompt tokens.
    pub input_tokens: f64,
    /// Mean generated tokens (at least 1).
    pub output_tokens: f64,
}

/// What the model predicts for one replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Mean seconds to the first token.
    pub ttft: f64,
    /// Mean seconds between tokens.
    pub itl: f64,
    /// Mean seconds waiting for a batch slot.
    pub wait: f64,
    /// Mean requests running.
    pub batch: f64,
    /// Chance an arrival finds the replica full.
    pub blocking: f64,
    /// Fraction of time spent prefilling (≥ 1: the replica cannot keep up).
    pub prefill_share: f64,
}

/// The prediction for `w` on a replica of profile `p`.
pub fn predict(p: &PerfProfile, w: &Workload) -> Prediction {
    let b = p.max_batch.max(1);
    let cap = b * QUEUE_BATCHES;
    let out = w.output_tokens.max(1.0);
    let pf = p.prefill(w.input_tokens);
    let prefill_share = w.lambda * pf;
    if w.lambda <= 0.0 {
        let itl = p.itl(1.0);
        return Prediction { ttft: pf + itl, itl, wait: 0.0, batch: 0.0, blocking: 0.0, prefill_share: 0.0 };
    }
    if prefill_share >= 1.0 {
        return Prediction {
            ttft: f64::INFINITY,
            itl: f64::INFINITY,
            wait: f64::INFINITY,
            batch: f64::from(b),
            blocking: 1.0,
            prefill_share,
        };
    }
    let mu = |n: u32| {
        let m = f64::from(n.min(b));
        m / (out * p.itl(m) + m * pf)
    };
    // Unnormalised stationary probabilities, in logs (they span many orders).
    let mut log_p = Vec::with_capacity(cap as usize + 1);
    log_p.push(0.0f64);
    for n in 1..=cap {
        let prev = log_p[n as usize - 1];
        log_p.push(prev + (w.lambda / mu(n)).ln());
    }
    let top = log_p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let probs: Vec<f64> = log_p.iter().map(|l| (l - top).exp()).collect();
    let z: f64 = probs.iter().sum();
    // ITL as requests see it: a state with m running is seen by m of them.
    let (mut waiting, mut batch, mut itl_seen) = (0.0, 0.0, 0.0);
    for (n, q) in probs.iter().enumerate() {
        let q = q / z;
        let n = n as u32;
        let m = f64::from(n.min(b));
        waiting += q * (f64::from(n) - m);
        batch += q * m;
        itl_seen += q * m * p.itl(m);
    }
    let blocking = probs[cap as usize] / z;
    let admitted = w.lambda * (1.0 - blocking);
    let wait = if admitted > 0.0 { waiting / admitted } else { 0.0 };
    let itl = if batch > 0.0 { itl_seen / batch } else { p.itl(1.0) } / (1.0 - prefill_share);
    Prediction { ttft: wait + pf + itl, itl, wait, batch, blocking, prefill_share }
}

/// Service-level objectives, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    /// Mean time to first token.
    pub ttft: f64,
    /// Mean inter-token latency.
    pub itl: f64,
    /// Most arrivals refused for want of room.
    pub max_blocking: f64,
}

impl Slo {
    /// Whether `p` meets the objectives with `headroom` (a fraction kept free).
    pub fn met_by(&self, p: &Prediction, headroom: f64) -> bool {
        let k = 1.0 - headroom;
        p.ttft <= self.ttft * k && p.itl <= self.itl * k && p.blocking <= self.max_blocking
    }
}

/// The most requests per second one replica takes while meeting `slo` with
/// `headroom` (0 where even a lone request misses it).
pub fn capacity(p: &PerfProfile, input_tokens: f64, output_tokens: f64, slo: &Slo, headroom: f64) -> f64 {
    let meets = |lambda: f64| slo.met_by(&predict(p, &Workload { lambda, input_tokens, output_tokens }), headroom);
    if !meets(1e-9) {
        return 0.0;
    }
    // Above the full-batch completion rate nothing meets it; bisect below.
    let m = f64::from(p.max_batch.max(1));
    let mut hi = m / (output_tokens.max(1.0) * p.itl(m) + m * p.prefill(input_tokens));
    let mut lo = 0.0;
    if meets(hi) {
        return hi;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if meets(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}
