//! Turning logits into tokens: greedy, temperature, top-k, top-p, per-request seeds,
//! and logprobs — with vLLM's conventions for "disabled" values.

use crate::error::{EngineError, Result};
use llmd_kvcache::rng::SplitMix64;

/// How to pick tokens for one request, and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 or -1 disables.
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Seed for this request's draws; `None` draws from the engine's generator.
    pub seed: Option<u64>,
    /// Token ids that end generation (besides EOS).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; the matched text is not returned.
    pub stop: Vec<String>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// Tokens to generate before EOS, a stop token or a stop string may end the
    /// request (vLLM's `min_tokens`: those tokens cannot be sampled before then).
    pub min_tokens: usize,
    /// Also return this many most likely alternatives per token (`None`: no logprobs).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 16,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            min_tokens: 0,
            logprobs: None,
        }
    }
}

/// Most alternatives a request may ask logprobs for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Checks ranges, naming the parameter at fault (as an OpenAI-style 400 would).
    pub fn validate(&self) -> Result<()> {
        let bad = |p: &str, why: String| Err(EngineError::InvalidParam { param: p.into(), message: why });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", format!("must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k < -1 {
            return bad("top_k", format!("must be -1 (disabled) or >= 0, got {}", self.top_k));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1".into());
        }
        if self.logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return bad("logprobs", format!("at most {MAX_LOGPROBS} alternatives"));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "stop strings must not be empty".into());
        }
        Ok(())
    }
}

/// A token with its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// Token id.
    pub token: u32,
    /// Natural log of its probability under the model (before temperature).
    pub logprob: f32,
}

/// The sampled token and, if asked, logprobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub token: u32,
    /// Its logprob, when logprobs were requested.
    pub logprob: Option<f32>,
    /// The most likely alternatives, most likely first.
    pub top: Vec<TokenLogprob>,
}

/// SplitMix64: a small, seedable generator with identical output on every platform.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0.next_f64()
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    logits.iter().map(|&x| x - lse).collect()
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> Sampled {
    let token = if params.temperature == 0.0 { argmax(logits) } else { draw(logits, params, rng) };
    match params.logprobs {
        None => Sampled { token, logprob: None, top: Vec::new() },
        Some(n) => {
            let lp = log_softmax(logits);
            let mut order: Vec<u32> = (0..lp.len() as u32).collect();
            let n = n.min(order.len());
            if n > 0 {
                order.select_nth_unstable_by(n - 1, |&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
            }
            let mut top: Vec<TokenLogprob> =
                order[..n].iter().map(|&t| TokenLogprob { token: t, logprob: lp[t as usize] }).collect();
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob).then(a.token.cmp(&b.token)));
            Sampled { token, logprob: Some(lp[token as usize]), top }
        }
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn draw(logits: &[f32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    let inv_t = 1.0 / p.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Candidates sorted by probability, most likely first.
    let mut cand: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &x)| (i as u32, (((x - max) * inv_t) as f64).exp())).collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        cand.truncate(p.top_k as usize);
    }
    let total: f64 = cand.iter().map(|c| c.1).sum();
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 / total;
            if acc >= f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    let total: f64 = cand.iter().map(|c| c.1).sum();
    let mut r = rng.next_f64() * total;
    for &(t, w) in &cand {
        if r < w {
            return t;
        }
        r -= w;
    }
    cand.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: i64, p: f32) -> SamplingParams {
        SamplingParams { temperature: t, top_k: k, top_p: p, ..Default::default() }
    }

    #[test]
    fn greedy_takes_the_max_and_seeds_repeat() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        assert_eq!(sample(&logits, &params(0.0, 0, 1.0), &mut Rng::new(1)).token, 1);
        let draws = |seed| {
            (0..20)
                .map(|_| 0)
                .scan(Rng::new(seed), |r, _| Some(sample(&logits, &params(1.0, 0, 1.0), r).token))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [5.0, 4.0, 0.0, -3.0];
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            assert!(sample(&logits, &params(1.0, 2, 1.0), &mut rng).token <= 1);
            // p(0) ≈ 0.72 < 0.8, so top_p 0.8 keeps tokens 0 and 1 only.
            assert!(sample(&logits, &params(1.0, 0, 0.8), &mut rng).token <= 1);
            assert_eq!(sample(&logits, &params(1.0, 0, 0.5), &mut rng).token, 0);
        }
    }

    #[test]
    fn logprobs_are_normalized_and_sorted() {
        let p = SamplingParams { temperature: 0.0, logprobs: Some(2), ..Default::default() };
        let s = sample(&[1.0, 3.0, 2.0], &p, &mut Rng::new(0));
        assert_eq!(s.token, 1);
        assert_eq!(s.top.iter().map(|t| t.token).collect::<Vec<_>>(), vec![1, 2]);
        let total: f32 = [1.0f32, 3.0, 2.0].iter().map(|x| (x - 3.0f32).exp()).sum();
        assert!((s.logprob.unwrap() - (-total.ln())).abs() < 1e-6);
    }

    #[test]
    fn invalid_params_name_the_parameter() {
        for (p, name) in [
            (params(-1.0, 0, 1.0), "temperature"),
            (params(1.0, 0, 0.0), "top_p"),
            (params(1.0, -2, 1.0), "top_k"),
            (SamplingParams { max_tokens: 0, ..Default::default() }, "max_tokens"),
            (SamplingParams { logprobs: Some(21), ..Default::default() }, "logprobs"),
        ] {
            match p.validate() {
                Err(EngineError::InvalidParam { param, .. }) => assert_eq!(param, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
