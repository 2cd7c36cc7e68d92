//! `slo-headroom-tier-filter` and `prefix-cache-affinity-filter` (the router's
//! `scheduling/filter/{sloheadroomtier,prefixcacheaffinity}`).

use std::sync::{Arc, Mutex};

use llmd_kvcache::rng::SplitMix64;
use serde_json::Value;

use super::producer::{PredictedLatencyProducer, PrefixSource};
use super::{LatencyPredictionInfo, inflight_producer_name, lpi_producer_name, prefix_producer_name};
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Filter};
use crate::plugins::Params;
use crate::request::LlmRequest;

/// Uniform draws in [0, 1): injected so filters are reproducible (a seeded SplitMix64 by
/// default).
pub type Draw = Box<dyn FnMut() -> f64 + Send>;

/// A [`Draw`] from SplitMix64 seeded with `seed`.
pub fn seeded_draw(seed: u64) -> Draw {
    let mut rng = SplitMix64::new(seed);
    Box::new(move || rng.next_f64())
}

// A per-instance seed: the same config draws the same sequence on every start.
fn seed_of(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// The tiers: indices of the endpoints the router's filter keeps. Positive: a
/// prediction with both headrooms ≥ 0; negative: any below 0, and (only when some
/// endpoint has a prediction) the endpoints without one. Both non-empty: the negative
/// tier with probability `epsilon` (one draw), else the positive one.
pub fn headroom_tiers(
    infos: &[Option<LatencyPredictionInfo>],
    epsilon: f64,
    draw: &mut dyn FnMut() -> f64,
) -> Vec<usize> {
    if infos.len() <= 1 {
        return (0..infos.len()).collect();
    }
    let (mut positive, mut negative, mut none) = (Vec::new(), Vec::new(), Vec::new());
    for (i, info) in infos.iter().enumerate() {
        match info {
            None => none.push(i),
            Some(x) if x.ttft_headroom >= 0.0 && x.tpot_headroom >= 0.0 => positive.push(i),
            Some(_) => negative.push(i),
        }
    }
    if positive.is_empty() && negative.is_empty() {
        return none;
    }
    // Without a prediction an endpoint cannot be shown to meet the SLO.
    negative.extend(none);
    negative.sort_unstable();
    match (positive.is_empty(), negative.is_empty()) {
        (false, false) => {
            if draw() < epsilon {
                negative
            } else {
                positive
            }
        }
        (false, true) => positive,
        _ => negative,
    }
}

/// `slo-headroom-tier-filter`: `epsilonExploreNeg` (0.01, in [0, 1]).
pub struct SloHeadroomTierFilter {
    epsilon: f64,
    producer: Option<Arc<PredictedLatencyProducer>>,
    draw: Mutex<Draw>,
}

impl std::fmt::Debug for SloHeadroomTierFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SloHeadroomTierFilter")
            .field("epsilon", &self.epsilon)
            .field("producer", &self.producer)
            .finish()
    }
}

/// `slo-headroom-tier-filter`'s parameter names.
pub const TIER_PARAMS: &[&str] = &["epsilonExploreNeg", "latencyPredictionInfoProducerName"];

impl SloHeadroomTierFilter {
    /// `epsilonExploreNeg` from `parameters`, checked as the router checks it.
    pub fn epsilon_from_params(p: &Value) -> Result<f64, String> {
        let q = Params(p);
        q.check(TIER_PARAMS)?;
        lpi_producer_name(p)?;
        let e = q.number("epsilonExploreNeg")?.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&e) {
            return Err(format!("epsilonExploreNeg must be in [0, 1], got {e:.6}"));
        }
        Ok(e)
    }

    /// A filter reading `producer`'s predictions, drawing from `draw`.
    pub fn new(epsilon: f64, producer: Option<Arc<PredictedLatencyProducer>>, draw: Draw) -> Self {
        SloHeadroomTierFilter { epsilon, producer, draw: Mutex::new(draw) }
    }

    /// A filter whose draws are seeded by its instance name.
    pub fn named(name: &str, epsilon: f64, producer: Option<Arc<PredictedLatencyProducer>>) -> Self {
        Self::new(epsilon, producer, seeded_draw(seed_of(name)))
    }
}

impl Filter for SloHeadroomTierFilter {
    fn filter<'a>(&self, state: &mut CycleState, req: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        if eps.len() <= 1 {
            return eps;
        }
        let Some(p) = &self.producer else { return eps };
        let infos = p.predictions(state, req, &eps);
        let mut draw = self.draw.lock().unwrap_or_else(|p| p.into_inner());
        headroom_tiers(&infos, self.epsilon, &mut *draw).into_iter().map(|i| eps[i]).collect()
    }
}

/// Where the affinity filter's TTFT load gate reads TTFT from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtftSource {
    /// `prefillThroughput` (default): in-flight prompt tokens / `peakPrefillThroughput`.
    PrefillThroughput,
    /// `latencyPredictor`: the producer's predicted TTFT.
    LatencyPredictor,
}

/// `prefix-cache-affinity-filter`'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityConfig {
    /// `affinityThreshold` (0.80, ≤ 1; ≤ 0 disables the filter).
    pub affinity_threshold: f64,
    /// `explorationProbability` (0, in [0, 1]): skip the filter this often.
    pub exploration_probability: f64,
    /// `maxTTFTPenaltyMs` (18000, ≥ 0; 0 always sticks).
    pub max_ttft_penalty_ms: f64,
    /// `ttftSource` (`prefillThroughput`).
    pub ttft_source: TtftSource,
    /// `peakPrefillThroughput` (15928 tokens/s; > 0 when it is used).
    pub peak_prefill_throughput: f64,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            affinity_threshold: 0.80,
            exploration_probability: 0.0,
            max_ttft_penalty_ms: 18000.0,
            ttft_source: TtftSource::PrefillThroughput,
            // Calibrated in the router for Qwen 32B on 2x H100 (TP=2), vLLM 0.19.
            peak_prefill_throughput: 15928.0,
        }
    }
}

/// `prefix-cache-affinity-filter`'s parameter names.
pub const AFFINITY_PARAMS: &[&str] = &[
    "affinityThreshold",
    "explorationProbability",
    "maxTTFTPenaltyMs",
    "ttftSource",
    "peakPrefillThroughput",
    "prefixMatchInfoProducerName",
    "latencyPredictionInfoProducerName",
    "inFlightLoadProducerName",
];

impl AffinityConfig {
    /// From `parameters`, with the router's validation and messages.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(AFFINITY_PARAMS)?;
        prefix_producer_name(p)?;
        lpi_producer_name(p)?;
        inflight_producer_name(p)?;
        let d = AffinityConfig::default();
        let ttft_source = match q.string("ttftSource")? {
            None => d.ttft_source,
            Some(s) if s == "prefillThroughput" => TtftSource::PrefillThroughput,
            Some(s) if s == "latencyPredictor" => TtftSource::LatencyPredictor,
            Some(s) => {
                return Err(format!("ttftSource must be \"latencyPredictor\" or \"prefillThroughput\", got {s:?}"));
            }
        };
        let c = AffinityConfig {
            affinity_threshold: q.number("affinityThreshold")?.unwrap_or(d.affinity_threshold),
            exploration_probability: q.number("explorationProbability")?.unwrap_or(d.exploration_probability),
            max_ttft_penalty_ms: q.number("maxTTFTPenaltyMs")?.unwrap_or(d.max_ttft_penalty_ms),
            ttft_source,
            peak_prefill_throughput: q.number("peakPrefillThroughput")?.unwrap_or(d.peak_prefill_throughput),
        };
        if c.affinity_threshold > 1.0 {
            return Err(format!("affinityThreshold must be <= 1.0, got {:.6}", c.affinity_threshold));
        }
        if !(0.0..=1.0).contains(&c.exploration_probability) {
            return Err(format!("explorationProbability must be in [0, 1], got {:.6}", c.exploration_probability));
        }
        if c.max_ttft_penalty_ms < 0.0 {
            return Err(format!("maxTTFTPenaltyMs must be >= 0, got {:.6}", c.max_ttft_penalty_ms));
        }
        if c.peak_prefill_throughput < 0.0 {
            return Err(format!("peakPrefillThroughput must be >= 0, got {:.6}", c.peak_prefill_throughput));
        }
        if c.ttft_source == TtftSource::PrefillThroughput
            && c.max_ttft_penalty_ms > 0.0
            && c.peak_prefill_throughput == 0.0
        {
            return Err("peakPrefillThroughput must be > 0 when ttftSource is prefillThroughput".into());
        }
        Ok(c)
    }

    /// Whether the TTFT gate reads the latency producer's predictions (the router's
    /// `Consumes`: only with the gate on and the predictor as source).
    pub fn reads_predictions(&self) -> bool {
        self.max_ttft_penalty_ms > 0.0 && self.ttft_source == TtftSource::LatencyPredictor
    }

    /// Whether the TTFT gate reads in-flight load.
    pub fn reads_inflight(&self) -> bool {
        self.max_ttft_penalty_ms > 0.0 && self.ttft_source == TtftSource::PrefillThroughput
    }
}

/// The affinity decision over one candidate set: the indices kept. `ratio` gives each
/// endpoint's prefix match ratio; `ttft` each one's TTFT (ms) for the load gate
/// (called only when the gate is on and there are sticky and non-sticky endpoints).
pub fn affinity_keep(
    cfg: &AffinityConfig,
    n: usize,
    draw: &mut dyn FnMut() -> f64,
    ratio: &mut dyn FnMut() -> Vec<f64>,
    ttft: &mut dyn FnMut(&[usize]) -> Vec<f64>,
) -> Vec<usize> {
    let all: Vec<usize> = (0..n).collect();
    if n <= 1 || cfg.affinity_threshold <= 0.0 {
        return all;
    }
    if draw() < cfg.exploration_probability {
        return all;
    }
    let ratios = ratio();
    let (sticky, non_sticky): (Vec<usize>, Vec<usize>) =
        all.iter().partition(|&&i| ratios.get(i).copied().unwrap_or(0.0) >= cfg.affinity_threshold);
    if sticky.is_empty() {
        return all;
    }
    if cfg.max_ttft_penalty_ms > 0.0 && !non_sticky.is_empty() {
        let t = ttft(&all);
        let best = |set: &[usize]| set.iter().map(|&i| t.get(i).copied().unwrap_or(f64::MAX)).fold(f64::MAX, f64::min);
        // The cache is not worth waiting this much longer for.
        if best(&sticky) - best(&non_sticky) > cfg.max_ttft_penalty_ms {
            return all;
        }
    }
    sticky
}

/// `prefix-cache-affinity-filter`: narrows to endpoints holding at least
/// `affinityThreshold` of the prompt, unless they are too slow.
pub struct PrefixCacheAffinityFilter {
    cfg: AffinityConfig,
    prefix: Option<Arc<PrefixSource>>,
    producer: Option<Arc<PredictedLatencyProducer>>,
    draw: Mutex<Draw>,
}

impl std::fmt::Debug for PrefixCacheAffinityFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCacheAffinityFilter")
            .field("config", &self.cfg)
            .field("prefix", &self.prefix)
            .field("producer", &self.producer)
            .finish()
    }
}

impl PrefixCacheAffinityFilter {
    /// A filter reading `prefix`'s matches and (with the predictor as TTFT source)
    /// `producer`'s predictions, drawing from `draw`.
    pub fn new(
        cfg: AffinityConfig,
        prefix: Option<Arc<PrefixSource>>,
        producer: Option<Arc<PredictedLatencyProducer>>,
        draw: Draw,
    ) -> Self {
        PrefixCacheAffinityFilter { cfg, prefix, producer, draw: Mutex::new(draw) }
    }

    /// A filter whose draws are seeded by its instance name.
    pub fn named(
        name: &str,
        cfg: AffinityConfig,
        prefix: Option<Arc<PrefixSource>>,
        producer: Option<Arc<PredictedLatencyProducer>>,
    ) -> Self {
        Self::new(cfg, prefix, producer, seeded_draw(seed_of(name)))
    }

    /// Its parameters.
    pub fn config(&self) -> &AffinityConfig {
        &self.cfg
    }
}

impl Filter for PrefixCacheAffinityFilter {
    fn filter<'a>(&self, state: &mut CycleState, req: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        let st = std::cell::RefCell::new(state);
        let mut ratio = || match &self.prefix {
            Some(p) => p.ratios(&mut st.borrow_mut(), req, &eps),
            None => vec![0.0; eps.len()],
        };
        let mut ttft = |_: &[usize]| -> Vec<f64> {
            match self.cfg.ttft_source {
                // A missing prediction is never the fastest.
                TtftSource::LatencyPredictor => match &self.producer {
                    Some(p) => p
                        .predictions(&mut st.borrow_mut(), req, &eps)
                        .into_iter()
                        .map(|i| i.map_or(f64::MAX, |i| i.ttft))
                        .collect(),
                    None => vec![f64::MAX; eps.len()],
                },
                TtftSource::PrefillThroughput => eps
                    .iter()
                    .map(|e| e.inflight.prompt_tokens as f64 / self.cfg.peak_prefill_throughput * 1000.0)
                    .collect(),
            }
        };
        let mut draw = self.draw.lock().unwrap_or_else(|p| p.into_inner());
        let keep = affinity_keep(&self.cfg, eps.len(), &mut *draw, &mut ratio, &mut ttft);
        keep.into_iter().map(|i| eps[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lpi(ttft_h: f64, tpot_h: f64) -> Option<LatencyPredictionInfo> {
        Some(LatencyPredictionInfo {
            ttft_valid: ttft_h >= 0.0,
            tpot_valid: tpot_h >= 0.0,
            ttft_headroom: ttft_h,
            tpot_headroom: tpot_h,
            ttft: 100.0,
            tpot: 10.0,
            dispatched_request_count: 0,
        })
    }

    fn never() -> f64 {
        panic!("no draw expected")
    }

    #[test]
    fn tiers() {
        // Mirrors sloheadroomtier/plugin_test.go TestFilter_*.
        let mut d = || 0.5;
        assert_eq!(headroom_tiers(&[lpi(10.0, 5.0)], 0.01, &mut never), [0], "SingleEndpoint");
        assert_eq!(headroom_tiers(&[None, None], 0.01, &mut never), [0, 1], "NoPredictions");
        assert_eq!(headroom_tiers(&[lpi(100.0, 50.0), lpi(200.0, 80.0)], 0.0, &mut never), [0, 1], "AllPositive");
        assert_eq!(headroom_tiers(&[lpi(-100.0, -50.0), lpi(-200.0, -80.0)], 0.0, &mut never), [0, 1], "AllNegative");
        let mixed = [lpi(100.0, 50.0), lpi(200.0, 80.0), lpi(-100.0, -50.0)];
        assert_eq!(headroom_tiers(&mixed, 0.0, &mut d), [0, 1], "BothTiers_SelectPositive");
        assert_eq!(headroom_tiers(&[lpi(100.0, 50.0), lpi(-100.0, -50.0)], 1.0, &mut d), [1], "EpsilonExploreNeg");
        assert_eq!(headroom_tiers(&[lpi(100.0, 50.0), None], 1.0, &mut d), [1], "NoPredictionGoesToNegative");
        // The draw decides at epsilon: below explores, at or above does not.
        assert_eq!(headroom_tiers(&mixed, 0.01, &mut || 0.009), [2]);
        assert_eq!(headroom_tiers(&mixed, 0.01, &mut || 0.01), [0, 1]);
        // Zero headroom is positive; one negative dimension is negative.
        assert_eq!(headroom_tiers(&[lpi(0.0, 0.0), lpi(5.0, -0.1)], 0.0, &mut d), [0]);
    }

    #[test]
    fn tier_parameters() {
        // Mirrors TestFactory_ValidConfig and TestFactory_InvalidEpsilon.
        assert_eq!(SloHeadroomTierFilter::epsilon_from_params(&json!({})), Ok(0.01));
        let e = SloHeadroomTierFilter::epsilon_from_params(&json!({"epsilonExploreNeg": 1.5})).unwrap_err();
        assert!(e.contains("epsilonExploreNeg must be in [0, 1]"), "{e}");
        assert!(
            SloHeadroomTierFilter::epsilon_from_params(&json!({"epsilon": 0.1})).unwrap_err().contains("\"epsilon\"")
        );
    }

    fn keep(cfg: &AffinityConfig, ratios: &[f64], ttft: &[f64], draw: f64) -> Vec<usize> {
        let r = ratios.to_vec();
        let t = ttft.to_vec();
        affinity_keep(cfg, ratios.len(), &mut || draw, &mut || r.clone(), &mut |_| t.clone())
    }

    fn cfg(threshold: f64, explore: f64, penalty: f64, source: TtftSource, peak: f64) -> AffinityConfig {
        AffinityConfig {
            affinity_threshold: threshold,
            exploration_probability: explore,
            max_ttft_penalty_ms: penalty,
            ttft_source: source,
            peak_prefill_throughput: peak,
        }
    }

    #[test]
    fn affinity() {
        // Mirrors prefixcacheaffinity/plugin_test.go TestFilter_* (ratios out of 100 blocks;
        // throughput TTFTs are tokens/peak·1000, worked out here).
        use TtftSource::*;
        let pred = |t, e, p| cfg(t, e, p, LatencyPredictor, 15928.0);
        assert_eq!(keep(&pred(0.0, 0.0, 18000.0), &[0.0, 0.9], &[10.0, 20.0], 0.5), [0, 1], "ThresholdDisabled");
        assert_eq!(keep(&pred(0.8, 0.0, 18000.0), &[0.9], &[10.0], 0.5), [0], "SingleEndpoint");
        assert_eq!(keep(&pred(0.8, 0.0, 18000.0), &[0.1, 0.2, 0.5], &[10.0, 20.0, 30.0], 0.5), [0, 1, 2], "NoSticky");
        assert_eq!(
            keep(&pred(0.8, 0.0, 5000.0), &[0.9, 0.85, 0.1], &[100.0, 120.0, 50.0], 0.5),
            [0, 1],
            "NarrowToSticky"
        );
        assert_eq!(
            keep(&pred(0.8, 0.0, 100.0), &[0.9, 0.1], &[500.0, 50.0], 0.5),
            [0, 1],
            "TTFTPenaltyBreaksStickiness"
        );
        let tp = |p| cfg(0.8, 0.0, p, PrefillThroughput, 1000.0);
        // 500 and 50 in-flight tokens at 1000 tokens/s: 500 ms and 50 ms.
        assert_eq!(keep(&tp(100.0), &[0.9, 0.1], &[500.0, 50.0], 0.5), [0, 1], "ThroughputTTFTBreaksStickiness");
        assert_eq!(keep(&tp(1000.0), &[0.9, 0.1], &[500.0, 50.0], 0.5), [0], "ThroughputTTFTWithinThreshold");
        assert_eq!(keep(&tp(0.0), &[0.9, 0.1], &[5000.0, 50.0], 0.5), [0], "TTFTPenaltyDisabled");
        assert_eq!(keep(&pred(0.8, 1.0, 18000.0), &[0.9, 0.1], &[100.0, 50.0], 0.99), [0, 1], "ExplorationProbability");
        // Missing predictions on both sides: MAX - MAX = 0, stickiness holds.
        assert_eq!(keep(&pred(0.8, 0.0, 100.0), &[0.9, 0.1], &[f64::MAX, f64::MAX], 0.5), [0]);
        // Only the sticky side missing: never the fastest, stickiness breaks.
        assert_eq!(keep(&pred(0.8, 0.0, 100.0), &[0.9, 0.1], &[f64::MAX, 5.0], 0.5), [0, 1]);
    }

    #[test]
    fn affinity_parameters() {
        // Mirrors TestFactory_* and TestConsumes_ConditionalAttributes.
        let c = |v| AffinityConfig::from_params(&v);
        assert_eq!(c(json!({})), Ok(AffinityConfig::default()));
        let p = c(json!({"affinityThreshold": 0.95})).unwrap();
        assert_eq!((p.affinity_threshold, p.max_ttft_penalty_ms), (0.95, 18000.0));
        let p = c(json!({"maxTTFTPenaltyMs": 10000})).unwrap();
        assert_eq!(
            (p.max_ttft_penalty_ms, p.ttft_source, p.peak_prefill_throughput),
            (10000.0, TtftSource::PrefillThroughput, 15928.0)
        );
        for (params, msg) in [
            (json!({"affinityThreshold": 1.5}), "affinityThreshold must be <= 1.0"),
            (json!({"explorationProbability": -0.1}), "explorationProbability must be in [0, 1]"),
            (json!({"peakPrefillThroughput": -1}), "peakPrefillThroughput must be >= 0"),
            (json!({"maxTTFTPenaltyMs": -1}), "maxTTFTPenaltyMs must be >= 0"),
            (
                json!({"ttftSource": "prefillThroughput", "peakPrefillThroughput": 0}),
                "peakPrefillThroughput must be > 0 when ttftSource is prefillThroughput",
            ),
            (json!({"peakPrefillThroughput": 0}), "peakPrefillThroughput must be > 0"),
            (json!({"ttftSource": "bogus"}), "ttftSource must be"),
            (json!({"ttftSource": ""}), "ttftSource must be"),
        ] {
            let e = c(params.clone()).unwrap_err();
            assert!(e.contains(msg), "{params}: {e}");
        }
        assert!(
            c(json!({"maxTTFTPenaltyMs": 0, "ttftSource": "prefillThroughput", "peakPrefillThroughput": 0})).is_ok()
        );
        assert!(c(json!({"ttftSource": "latencyPredictor", "peakPrefillThroughput": 0})).is_ok());
        let p = c(json!({"ttftSource": "prefillThroughput", "peakPrefillThroughput": 1000})).unwrap();
        assert_eq!(p.peak_prefill_throughput, 1000.0);
        // What the gate reads.
        assert!(!c(json!({"maxTTFTPenaltyMs": 0})).unwrap().reads_predictions());
        assert!(!c(json!({"maxTTFTPenaltyMs": 0})).unwrap().reads_inflight());
        let p = c(json!({"maxTTFTPenaltyMs": 5000, "ttftSource": "latencyPredictor"})).unwrap();
        assert!(p.reads_predictions() && !p.reads_inflight());
        let p = c(json!({"maxTTFTPenaltyMs": 5000, "peakPrefillThroughput": 1000})).unwrap();
        assert!(!p.reads_predictions() && p.reads_inflight());
    }
}
