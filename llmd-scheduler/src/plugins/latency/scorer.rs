//! `latency-scorer` (the router's `scheduling/scorer/latency`): scores by predicted
//! SLO headroom, with a composite (KV, queue, prefix) fallback when there are no
//! predictions.

use std::sync::Arc;

use serde_json::Value;

use super::producer::{PredictedLatencyProducer, PrefixSource};
use super::{LatencyPredictionInfo, lpi_producer_name, prefix_producer_name};
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Scorer};
use crate::plugins::Params;
use crate::request::LlmRequest;

const W_MAX: f64 = 100.0;
const EPS: f64 = 1e-9;

/// How headroom maps to a score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadroomStrategy {
    /// `least` (default): prefer endpoints closest to their SLO (bin-packing).
    Least,
    /// `most`: prefer the most headroom.
    Most,
    /// Any other value: the router takes it and scores as `least`.
    Other(String),
}

/// `latency-scorer`'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorerConfig {
    /// `ttftWeight` (0.8).
    pub ttft_weight: f64,
    /// `tpotWeight` (0.2).
    pub tpot_weight: f64,
    /// `headroomSelectionStrategy` (`least`).
    pub strategy: HeadroomStrategy,
    /// `compositeKVWeight` (1).
    pub composite_kv_weight: f64,
    /// `compositeQueueWeight` (1).
    pub composite_queue_weight: f64,
    /// `compositePrefixWeight` (1).
    pub composite_prefix_weight: f64,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        ScorerConfig {
            ttft_weight: 0.8,
            tpot_weight: 0.2,
            strategy: HeadroomStrategy::Least,
            composite_kv_weight: 1.0,
            composite_queue_weight: 1.0,
            composite_prefix_weight: 1.0,
        }
    }
}

/// `latency-scorer`'s parameter names.
pub const SCORER_PARAMS: &[&str] = &[
    "ttftWeight",
    "tpotWeight",
    "headroomSelectionStrategy",
    "compositeKVWeight",
    "compositeQueueWeight",
    "compositePrefixWeight",
    "latencyPredictionInfoProducerName",
    "prefixMatchInfoProducerName",
];

impl ScorerConfig {
    /// From `parameters`; the router validates none of them.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(SCORER_PARAMS)?;
        lpi_producer_name(p)?;
        prefix_producer_name(p)?;
        let d = ScorerConfig::default();
        let strategy = match q.string("headroomSelectionStrategy")?.as_deref() {
            None | Some("least") => HeadroomStrategy::Least,
            Some("most") => HeadroomStrategy::Most,
            Some(o) => {
                tracing::warn!(strategy = o, "latency-scorer: unknown headroomSelectionStrategy scores as \"least\"");
                HeadroomStrategy::Other(o.to_string())
            }
        };
        Ok(ScorerConfig {
            ttft_weight: q.number("ttftWeight")?.unwrap_or(d.ttft_weight),
            tpot_weight: q.number("tpotWeight")?.unwrap_or(d.tpot_weight),
            strategy,
            composite_kv_weight: q.number("compositeKVWeight")?.unwrap_or(d.composite_kv_weight),
            composite_queue_weight: q.number("compositeQueueWeight")?.unwrap_or(d.composite_queue_weight),
            composite_prefix_weight: q.number("compositePrefixWeight")?.unwrap_or(d.composite_prefix_weight),
        })
    }
}

/// What the scorer reads of one endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreInput {
    /// Its prediction, if any.
    pub info: Option<LatencyPredictionInfo>,
    /// Waiting requests (composite fallback).
    pub waiting: u64,
    /// KV-cache use, a fraction (composite fallback).
    pub kv_usage: f64,
    /// Prefix match ratio (composite fallback).
    pub prefix: f64,
}

/// The router's scores, in [0, 1] (its `w/100` can reach 1.01, which the scheduler
/// clamps; clamped here already).
pub fn score_endpoints(cfg: &ScorerConfig, eps: &[ScoreInput]) -> Vec<f64> {
    score_endpoints_raw(cfg, eps).iter().map(|s| if s.is_finite() { s.clamp(0.0, 1.0) } else { 0.0 }).collect()
}

/// The router's scores as it computes them (up to 1.01; below 0 for KV use over 1).
pub(super) fn score_endpoints_raw(cfg: &ScorerConfig, eps: &[ScoreInput]) -> Vec<f64> {
    let mut scores = vec![0.0; eps.len()];
    if eps.iter().all(|e| e.info.is_none()) {
        composite(cfg, eps, &mut scores);
    } else {
        let negative = |i: &LatencyPredictionInfo| i.ttft_headroom < 0.0 || i.tpot_headroom < 0.0;
        // Endpoints without a prediction count as positive, as in the router.
        let positive: Vec<usize> = (0..eps.len()).filter(|&i| !eps[i].info.as_ref().is_some_and(negative)).collect();
        if !positive.is_empty() {
            score_bucket(cfg, eps, &positive, &mut scores, false);
        } else {
            // All negative: idle endpoints (nothing dispatched) first.
            let idle: Vec<usize> = (0..eps.len())
                .filter(|&i| eps[i].info.as_ref().is_some_and(|x| x.dispatched_request_count == 0))
                .collect();
            if !idle.is_empty() {
                score_bucket(cfg, eps, &idle, &mut scores, true);
            } else {
                // Least severe deficit first: only TPOT short, only TTFT short, both.
                let (mut tpot_only, mut ttft_only, mut both) = (Vec::new(), Vec::new(), Vec::new());
                for (i, e) in eps.iter().enumerate() {
                    let Some(x) = &e.info else { continue };
                    match (x.ttft_headroom < 0.0, x.tpot_headroom < 0.0) {
                        (false, true) => tpot_only.push(i),
                        (true, false) => ttft_only.push(i),
                        _ => both.push(i),
                    }
                }
                if let Some(bucket) = [tpot_only, ttft_only, both].into_iter().find(|b| !b.is_empty()) {
                    score_bucket(cfg, eps, &bucket, &mut scores, true);
                }
            }
        }
    }
    scores
}

fn normalized_weights(a: f64, b: f64) -> (f64, f64) {
    let sum = a + b;
    if sum <= 0.0 || sum.is_nan() { (1.0, 0.0) } else { (a / sum, b / sum) }
}

// The router's `scoreBucket`: min-max normalise |headroom| per dimension over the bucket.
fn score_bucket(cfg: &ScorerConfig, eps: &[ScoreInput], bucket: &[usize], scores: &mut [f64], force_least: bool) {
    let (mut alpha, mut beta) = normalized_weights(cfg.ttft_weight, cfg.tpot_weight);
    let heads = |i: usize| eps[i].info.as_ref().map_or((0.0, 0.0), |x| (x.ttft_headroom.abs(), x.tpot_headroom.abs()));
    let (mut min_t, mut max_t, mut min_p, mut max_p) = (f64::MAX, -f64::MAX, f64::MAX, -f64::MAX);
    for &i in bucket {
        let (t, p) = heads(i);
        min_t = min_t.min(t);
        max_t = max_t.max(t);
        min_p = min_p.min(p);
        max_p = max_p.max(p);
    }
    let (t_range, p_range) = (max_t - min_t, max_p - min_p);
    // A dimension with no spread gets no weight, so it does not flatten the scores.
    if t_range <= EPS && p_range > EPS {
        (alpha, beta) = (0.0, 1.0);
    } else if p_range <= EPS && t_range > EPS {
        (alpha, beta) = (1.0, 0.0);
    }
    let most = !force_least && cfg.strategy == HeadroomStrategy::Most;
    for &i in bucket {
        let (t, p) = heads(i);
        let nt = if t_range > EPS { (t - min_t) / t_range } else { 0.5 };
        let np = if p_range > EPS { (p - min_p) / p_range } else { 0.5 };
        let combined = alpha * nt + beta * np;
        // Go's int() truncates toward zero, as `as i64` does.
        let w = if most { (combined * W_MAX) as i64 + 1 } else { ((1.0 - combined) * W_MAX) as i64 + 1 };
        scores[i] = w as f64 / W_MAX;
    }
}

// The router's `compositeScores`: free KV, relative queue and prefix ratio, weighted.
fn composite(cfg: &ScorerConfig, eps: &[ScoreInput], scores: &mut [f64]) {
    let (mut wkv, mut wq, mut wp) = (cfg.composite_kv_weight, cfg.composite_queue_weight, cfg.composite_prefix_weight);
    let mut sum = wkv + wq + wp;
    if sum <= 0.0 || sum.is_nan() {
        (wkv, wq, wp, sum) = (1.0, 0.0, 0.0, 1.0);
    }
    (wkv, wq, wp) = (wkv / sum, wq / sum, wp / sum);
    let max_q = eps.iter().map(|e| e.waiting).max().unwrap_or(0);
    for (s, e) in scores.iter_mut().zip(eps) {
        let rel_queue = if max_q > 0 { (max_q - e.waiting) as f64 / max_q as f64 } else { 1.0 };
        let c = wkv * (1.0 - e.kv_usage) + wq * rel_queue + wp * e.prefix;
        *s = (W_MAX * c).round() / W_MAX;
    }
}

/// `latency-scorer`, bound to its producer and prefix source by the config loader.
#[derive(Debug)]
pub struct LatencyScorer {
    cfg: ScorerConfig,
    producer: Option<Arc<PredictedLatencyProducer>>,
    prefix: Option<Arc<PrefixSource>>,
}

impl LatencyScorer {
    /// A scorer reading `producer`'s predictions and `prefix`'s matches (none: it scores
    /// the composite fallback without the prefix term's data).
    pub fn new(
        cfg: ScorerConfig,
        producer: Option<Arc<PredictedLatencyProducer>>,
        prefix: Option<Arc<PrefixSource>>,
    ) -> Self {
        LatencyScorer { cfg, producer, prefix }
    }

    /// Its parameters.
    pub fn config(&self) -> &ScorerConfig {
        &self.cfg
    }
}

impl Scorer for LatencyScorer {
    fn score(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let infos = match &self.producer {
            Some(p) => p.predictions(state, req, eps),
            None => vec![None; eps.len()],
        };
        // The prefix ratio only matters to the composite fallback.
        let prefix = match &self.prefix {
            Some(p) if infos.iter().all(Option::is_none) => p.ratios(state, req, eps),
            _ => vec![0.0; eps.len()],
        };
        let inputs: Vec<ScoreInput> = eps
            .iter()
            .zip(infos)
            .zip(prefix)
            .map(|((e, info), prefix)| ScoreInput {
                info,
                waiting: e.metrics.waiting,
                kv_usage: e.metrics.kv_usage,
                prefix,
            })
            .collect();
        score_endpoints(&self.cfg, &inputs)
    }

    fn wants_token_ids(&self) -> bool {
        // Prefix matching and the input-length feature are exact with token ids.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lpi(ttft_h: f64, tpot_h: f64, dispatched: usize) -> Option<LatencyPredictionInfo> {
        Some(LatencyPredictionInfo {
            ttft_valid: ttft_h >= 0.0,
            tpot_valid: tpot_h >= 0.0,
            ttft_headroom: ttft_h,
            tpot_headroom: tpot_h,
            ttft: 100.0,
            tpot: 10.0,
            dispatched_request_count: dispatched,
        })
    }

    fn input(info: Option<LatencyPredictionInfo>) -> ScoreInput {
        ScoreInput { info, ..Default::default() }
    }

    #[test]
    fn positive_headroom_least_prefers_the_tightest_fit() {
        // Mirrors plugin_test.go TestScorePositiveHeadroom and TestScoreTierSplit.
        let cfg = ScorerConfig::default();
        let s = score_endpoints(&cfg, &[input(lpi(100.0, 20.0, 0)), input(lpi(30.0, 5.0, 0))]);
        assert!(s[0] > 0.0 && s[1] > 0.0, "{s:?}");
        let s = score_endpoints(&cfg, &[input(lpi(10.0, 2.0, 0)), input(lpi(50.0, 10.0, 0))]);
        assert!(s[0] > s[1], "least headroom scores higher with `least`: {s:?}");
        // Exactly: ep1 combined 0 → w 101 → 1.01 → clamped 1; ep2 combined 1 → 0.01.
        assert_eq!(s, vec![1.0, 0.01]);
        let most = ScorerConfig { strategy: HeadroomStrategy::Most, ..cfg };
        assert_eq!(score_endpoints(&most, &[input(lpi(10.0, 2.0, 0)), input(lpi(50.0, 10.0, 0))]), vec![0.01, 1.0]);
    }

    #[test]
    fn all_negative_scores_the_least_deficit_highest() {
        // Mirrors TestScoreNegativeOnly: least is forced even with `most`.
        for strategy in [HeadroomStrategy::Least, HeadroomStrategy::Most] {
            let cfg = ScorerConfig { strategy, ..Default::default() };
            let s = score_endpoints(&cfg, &[input(lpi(-10.0, -5.0, 5)), input(lpi(-100.0, -30.0, 8))]);
            assert!(s[0] > 0.0 && s[1] > 0.0 && s[0] > s[1], "{s:?}");
        }
    }

    #[test]
    fn idle_endpoints_win_when_all_are_negative() {
        // Mirrors TestScoreIdlePodPreference.
        let s = score_endpoints(&ScorerConfig::default(), &[input(lpi(-50.0, -10.0, 5)), input(lpi(-50.0, -10.0, 0))]);
        assert_eq!(s[0], 0.0, "busy gets nothing");
        assert!(s[1] > 0.0);
    }

    #[test]
    fn deficit_buckets_in_order() {
        // Mirrors TestScoreHierarchicalBuckets (there every endpoint is idle, so all score).
        let cfg = ScorerConfig::default();
        let all_idle =
            score_endpoints(&cfg, &[input(lpi(-50.0, -10.0, 0)), input(lpi(-30.0, 5.0, 0)), input(lpi(10.0, -8.0, 0))]);
        assert!(all_idle.iter().all(|s| *s > 0.0), "{all_idle:?}");
        // Busy endpoints: only-TPOT-negative first, then only-TTFT, then both.
        let busy = |a, b| input(lpi(a, b, 3));
        let s = score_endpoints(&cfg, &[busy(-50.0, -10.0), busy(-30.0, 5.0), busy(10.0, -8.0)]);
        assert_eq!((s[0], s[1]), (0.0, 0.0));
        assert!(s[2] > 0.0);
        let s = score_endpoints(&cfg, &[busy(-50.0, -10.0), busy(-30.0, 5.0)]);
        assert_eq!(s[0], 0.0);
        assert!(s[1] > 0.0);
    }

    #[test]
    fn mixed_tiers_score_only_the_positive_ones_and_missing_predictions_count_positive() {
        let s = score_endpoints(
            &ScorerConfig::default(),
            &[input(lpi(10.0, 1.0, 1)), input(lpi(-5.0, 1.0, 0)), input(None)],
        );
        assert_eq!(s[1], 0.0);
        assert!(s[0] > 0.0 && s[2] > 0.0, "{s:?}");
    }

    #[test]
    fn zero_range_moves_the_weight_to_the_other_dimension() {
        // TTFT headroom identical: TPOT alone orders them.
        let s = score_endpoints(&ScorerConfig::default(), &[input(lpi(10.0, 1.0, 0)), input(lpi(10.0, 9.0, 0))]);
        assert_eq!(s, vec![1.0, 0.01]);
        // Both identical: 0.5 each → w = 51.
        let s = score_endpoints(&ScorerConfig::default(), &[input(lpi(10.0, 1.0, 0)), input(lpi(10.0, 1.0, 0))]);
        assert_eq!(s, vec![0.51, 0.51]);
        // Weights summing to ≤ 0 fall back to TTFT only.
        let cfg = ScorerConfig { ttft_weight: 0.0, tpot_weight: 0.0, ..Default::default() };
        let s = score_endpoints(&cfg, &[input(lpi(10.0, 1.0, 0)), input(lpi(20.0, 9.0, 0))]);
        assert_eq!(s, vec![1.0, 0.01]);
    }

    #[test]
    fn composite_fallback() {
        // Mirrors TestScoreCompositeFallback.
        let cfg = ScorerConfig::default();
        let a = ScoreInput { kv_usage: 0.2, waiting: 0, ..Default::default() };
        let b = ScoreInput { kv_usage: 0.8, waiting: 5, ..Default::default() };
        let s = score_endpoints(&cfg, &[a.clone(), b.clone()]);
        assert!(s[0] > s[1], "{s:?}");
        // (0.8 + 1 + 0)/3 = 0.6; (0.2 + 0 + 0)/3 = 0.0667 → 0.07.
        assert_eq!(s, vec![0.6, 0.07]);
        // Weights ≤ 0 in sum: KV only.
        let kv =
            ScorerConfig { composite_kv_weight: 0.0, composite_queue_weight: 0.0, composite_prefix_weight: 0.0, ..cfg };
        assert_eq!(score_endpoints(&kv, &[a, b]), vec![0.8, 0.2]);
    }

    #[test]
    fn parameters() {
        let c = ScorerConfig::from_params(&serde_json::json!({})).unwrap();
        assert_eq!(c, ScorerConfig::default());
        let c = ScorerConfig::from_params(&serde_json::json!({"ttftWeight": 1, "headroomSelectionStrategy": "most"}))
            .unwrap();
        assert_eq!((c.ttft_weight, c.strategy), (1.0, HeadroomStrategy::Most));
        // The router takes an unknown strategy (and scores as least).
        let c = ScorerConfig::from_params(&serde_json::json!({"headroomSelectionStrategy": "bogus"})).unwrap();
        assert_eq!(c.strategy, HeadroomStrategy::Other("bogus".into()));
        let e = ScorerConfig::from_params(&serde_json::json!({"ttftWeigth": 1})).unwrap_err();
        assert!(e.contains("\"ttftWeigth\""), "{e}");
        assert!(ScorerConfig::from_params(&serde_json::json!({"ttftWeight": "x"})).unwrap_err().contains("ttftWeight"));
    }
}
