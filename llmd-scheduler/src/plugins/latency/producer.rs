//! `predicted-latency-producer`: per-endpoint TTFT/TPOT predictions and SLO headroom for
//! a request (the router's `Produce`), the per-endpoint running-request queues and the
//! dispatch-time feature snapshots (its `PreRequest`, here a [`PickObserver`]), and
//! training from what the front end observes (its `ResponseBody`, here
//! [`LatencyObserver`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::metrics::LatencyMetrics;
use super::model::{
    Features, LatencyPredictor, ModelConfig, Objective, OnlineLatencyModel, Prediction, TrainingEntry, rfc3339,
};
use super::queue::RunningRequests;
use super::{LatencyObserver, LatencyPredictionInfo, PREFILL_PROFILE, SloHeaders, cycle_entry};
use crate::clock::{Clock, SystemClock};
use crate::endpoint::{Endpoint, Role};
use crate::plugin::{CycleState, PickObserver, Scorer};
use crate::plugins::Params;
use crate::plugins::prefix::{PREFIX_MATCH_KEY, PrefixCacheScorer, PrefixMatch};
use crate::request::LlmRequest;

/// The producer's parameters (router names and defaults; `objective`, `quantile`,
/// `maxTrainingSamples` and `minTrainingSamples` are llmd's, for the in-process model).
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerConfig {
    /// `sloBufferFactor` (1.0, > 0): the TPOT SLO is multiplied by it.
    pub slo_buffer_factor: f64,
    /// `contextTTL` (5m; JSON integer nanoseconds as Go decodes a `time.Duration`, or a
    /// duration string): a request not seen to end is forgotten this long after it was
    /// last heard of. Zero: never.
    pub context_ttl: Duration,
    /// `streamingMode` (false): TTFT at the first token and TPOT at the end; otherwise
    /// TTFT := e2e latency and TPOT is neither trained nor scored.
    pub streaming_mode: bool,
    /// `endpointRoleLabel` (""): the label whose value is the endpoint's `pod_type`;
    /// `prefill` endpoints have TPOT neutralised.
    pub endpoint_role_label: String,
    /// `predictInProduce` (true): false trains without predicting.
    pub predict_in_produce: bool,
    /// `prefixMatchInfoProducerName` ("" = `approx-prefix-cache-producer`).
    pub prefix_match_info_producer_name: String,
    /// `inFlightLoadProducerName` ("" = `inflight-load-producer`).
    pub in_flight_load_producer_name: String,
    /// The in-process model's settings.
    pub model: ModelConfig,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            slo_buffer_factor: 1.0,
            context_ttl: Duration::from_secs(300),
            streaming_mode: false,
            endpoint_role_label: String::new(),
            predict_in_produce: true,
            prefix_match_info_producer_name: String::new(),
            in_flight_load_producer_name: String::new(),
            model: ModelConfig::default(),
        }
    }
}

/// `predicted-latency-producer`'s parameter names (router's, then llmd's).
pub const PRODUCER_PARAMS: &[&str] = &[
    "samplingMean",
    "maxDecodeTokenSamplesForPrediction",
    "sloBufferFactor",
    "contextTTL",
    "streamingMode",
    "endpointRoleLabel",
    "predictInProduce",
    "prefixMatchInfoProducerName",
    "inFlightLoadProducerName",
    "useEncoderCacheFeatures",
    "encoderCacheMatchInfoProducerName",
    "objective",
    "quantile",
    "maxTrainingSamples",
    "minTrainingSamples",
];

impl ProducerConfig {
    /// From a config file's `parameters`, validated as the router validates them.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(PRODUCER_PARAMS)?;
        let d = ProducerConfig::default();
        // Deprecated and ignored, but still decoded: a value of the wrong type fails.
        let sampling = q.number("samplingMean")?;
        if let Some(v) = q.value("maxDecodeTokenSamplesForPrediction")
            && v.as_i64().is_none()
        {
            return Err(format!("parameter maxDecodeTokenSamplesForPrediction: expected an integer, got {v}"));
        }
        if sampling.is_some_and(|s| s != 1000.0) || q.value("maxDecodeTokenSamplesForPrediction").is_some() {
            tracing::info!(
                "Deprecated: samplingMean and maxDecodeTokenSamplesForPrediction are ignored; mid-stream TPOT predictions were removed"
            );
        }
        let slo_buffer_factor = q.number("sloBufferFactor")?.unwrap_or(d.slo_buffer_factor);
        if slo_buffer_factor.is_nan() || slo_buffer_factor <= 0.0 {
            return Err(format!("sloBufferFactor must be > 0, got {slo_buffer_factor:.6}"));
        }
        let context_ttl = match q.value("contextTTL") {
            None => d.context_ttl,
            Some(Value::String(s)) => {
                super::super::parse_duration(s).map_err(|e| format!("parameter contextTTL: {e}"))?
            }
            Some(v) => match v.as_i64() {
                Some(ns) if ns >= 0 => Duration::from_nanos(ns as u64),
                _ => {
                    return Err(format!(
                        "parameter contextTTL: expected a non-negative integer of nanoseconds or a duration like \"5m\", got {v}"
                    ));
                }
            },
        };
        q.unbuilt(
            "useEncoderCacheFeatures",
            &Value::Bool(false),
            "the multimodal encoder-cache features encoder_input_size and encoder_matched_size",
        )?;
        q.bool("useEncoderCacheFeatures", false)?;
        q.string("encoderCacheMatchInfoProducerName")?;
        let objective = match q.string("objective")?.as_deref() {
            None | Some("quantile") => {
                let alpha = q.number("quantile")?.unwrap_or(0.9);
                if !(alpha > 0.0 && alpha < 1.0) {
                    return Err(format!("parameter quantile: must be in (0, 1), got {alpha}"));
                }
                Objective::Quantile(alpha)
            }
            Some("mean") => {
                if q.value("quantile").is_some() {
                    return Err("parameter quantile: only with objective \"quantile\"".into());
                }
                Objective::Mean
            }
            Some(o) => return Err(format!("parameter objective: must be \"quantile\" or \"mean\", got {o:?}")),
        };
        let max_samples = q.u64("maxTrainingSamples", d.model.max_samples as u64)? as usize;
        let min_samples = q.u64("minTrainingSamples", d.model.min_samples as u64)? as usize;
        if max_samples == 0 || min_samples == 0 || min_samples > max_samples {
            return Err(format!(
                "parameters minTrainingSamples ({min_samples}) and maxTrainingSamples ({max_samples}) must be at least 1, the minimum no more than the maximum"
            ));
        }
        Ok(ProducerConfig {
            slo_buffer_factor,
            context_ttl,
            streaming_mode: q.bool("streamingMode", d.streaming_mode)?,
            endpoint_role_label: q.string("endpointRoleLabel")?.unwrap_or_default(),
            predict_in_produce: q.bool("predictInProduce", d.predict_in_produce)?,
            prefix_match_info_producer_name: q.string("prefixMatchInfoProducerName")?.unwrap_or_default(),
            in_flight_load_producer_name: q.string("inFlightLoadProducerName")?.unwrap_or_default(),
            model: ModelConfig { objective, max_samples, min_samples },
        })
    }
}

/// Where a consumer reads the prefix match from (the router's `PrefixCacheMatchInfo` of
/// the producer `prefixMatchInfoProducerName` names): a configured prefix scorer, or a
/// private approximate index when no prefix scorer reads that producer (the router
/// auto-creates `approx-prefix-cache-producer`). Scoring is side-effect free, so it is
/// run on a scratch cycle state; what it matched is cached in the real one.
pub struct PrefixSource {
    name: String,
    scorer: Arc<dyn Scorer>,
    learner: Option<Arc<dyn PickObserver>>,
    // The last pick forwarded to the learner: several consumers forward the same pick.
    last: Mutex<Option<(String, String, String, usize)>>,
    // A private index (`approximate`): no profile's scorer learns its picks.
    private: bool,
}

impl std::fmt::Debug for PrefixSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixSource").field("name", &self.name).field("learns", &self.learner.is_some()).finish()
    }
}

#[derive(Default)]
struct PrefixCycle {
    matched: Option<PrefixMatch>,
    ratio: HashMap<String, f64>,
}

impl PrefixSource {
    /// Reads `scorer`'s match; `learner` (when the scorer would not otherwise see picks)
    /// is told each pick. `name` is the producer it stands for.
    pub fn new(name: impl Into<String>, scorer: Arc<dyn Scorer>, learner: Option<Arc<dyn PickObserver>>) -> Self {
        PrefixSource { name: name.into(), scorer, learner, last: Mutex::new(None), private: false }
    }

    /// A private approximate index with `approx-prefix-cache-producer`'s `params`.
    pub fn approximate(name: impl Into<String>, params: &Value) -> Result<Self, String> {
        let q = Params(params);
        let block = q.u64("blockSizeTokens", 16)?.max(1);
        // As the config loader reads the producer's limits (the router's defaults).
        let max_blocks = match q.u64("maxPrefixTokensToMatch", 131_072)? {
            0 => q.u64("maxPrefixBlocksToMatch", 2048)?,
            tokens => (tokens / block).max(1),
        };
        let mut merged = serde_json::json!({
            "blockSizeTokens": block,
            "maxPrefixBlocksToMatch": if max_blocks == 0 { u64::from(u32::MAX) } else { max_blocks },
        });
        if let (Some(cap), Some(obj)) = (params.get("lruCapacityPerServer"), merged.as_object_mut()) {
            obj.insert("lruCapacityPerServer".into(), cap.clone());
        }
        let s = Arc::new(PrefixCacheScorer::from_params(&merged)?);
        Ok(PrefixSource { private: true, ..Self::new(name, s.clone(), Some(s)) })
    }

    /// The producer it stands for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is a private index ([`approximate`](Self::approximate)), which learns
    /// picks only through [`observe`](Self::observe); otherwise it reads a configured
    /// scorer, which learns in the profiles that run it.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// The prompt's match on `endpoint` as it was before this request's picks taught the
    /// index the prompt: its matched leading blocks and the tokens a block covers (the
    /// router's `PrefixCacheMatchInfo` `CachedBlockCount` and `BlockSizeTokens`, which
    /// its producer computes before scheduling). Read from this cycle's match when a
    /// consumer already scored `endpoint`; for a configured scorer, from the match it
    /// left in the cycle state when it ran in the pick (same block hashes: its own), as
    /// it learns the pick right after; else scored now (side-effect free; a private
    /// index learns only when told, after the pick). `None` when the scorer leaves no
    /// match.
    pub fn match_on(&self, state: &CycleState, req: &LlmRequest, endpoint: &Endpoint) -> Option<(usize, usize)> {
        if let Some(c) = state.get::<Arc<Mutex<PrefixCycle>>>(&self.key()) {
            let c = c.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(m), true) = (&c.matched, c.ratio.contains_key(&endpoint.id)) {
                return Some((m.matched.get(&endpoint.id).copied().unwrap_or(0), m.tokens_per_block));
            }
        }
        let now = self.score(req, &[endpoint]).1?;
        let m = match state.get::<PrefixMatch>(PREFIX_MATCH_KEY) {
            Some(m) if !self.private && m.tokens_per_block == now.tokens_per_block && m.hashes == now.hashes => m,
            _ => &now,
        };
        Some((m.matched.get(&endpoint.id).copied().unwrap_or(0), m.tokens_per_block))
    }

    /// Tells the learner (if any) that `endpoint` went away.
    pub fn forget(&self, endpoint: &str) {
        if let Some(l) = &self.learner {
            l.forget(endpoint);
        }
    }

    fn key(&self) -> String {
        format!("latency/prefix/{}", self.name)
    }

    /// Each endpoint's matched blocks over the prompt's blocks (0 without blocks).
    pub fn ratios(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let cycle = cycle_entry::<PrefixCycle>(state, &self.key());
        let mut c = cycle.lock().unwrap_or_else(|p| p.into_inner());
        let missing: Vec<&Endpoint> = eps.iter().copied().filter(|e| !c.ratio.contains_key(&e.id)).collect();
        if !missing.is_empty() {
            let (ratios, m) = self.score(req, &missing);
            for (e, r) in missing.iter().zip(ratios) {
                c.ratio.insert(e.id.clone(), r);
            }
            match (&mut c.matched, m) {
                (Some(have), Some(m)) => have.matched.extend(m.matched),
                (slot @ None, m) => *slot = m,
                _ => {}
            }
        }
        eps.iter().map(|e| c.ratio.get(&e.id).copied().unwrap_or(0.0)).collect()
    }

    // Scores `eps` on a scratch state: the ratios, and the match the scorer left.
    fn score(&self, req: &LlmRequest, eps: &[&Endpoint]) -> (Vec<f64>, Option<PrefixMatch>) {
        let mut scratch = CycleState::default();
        let scores = self.scorer.score(&mut scratch, req, eps);
        let m = scratch.get::<PrefixMatch>(PREFIX_MATCH_KEY).cloned();
        let ratios = eps
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let r = match &m {
                    // The router's ratio: matched blocks over the prompt's blocks.
                    Some(m) if !m.hashes.is_empty() => {
                        m.matched.get(&e.id).copied().unwrap_or(0) as f64 / m.hashes.len() as f64
                    }
                    Some(_) => 0.0,
                    None => scores.get(i).copied().unwrap_or(0.0),
                };
                if r.is_finite() { r.clamp(0.0, 1.0) } else { 0.0 }
            })
            .collect();
        (ratios, m)
    }

    fn cached(&self, state: &CycleState, endpoint: &str) -> Option<f64> {
        let c = state.get::<Arc<Mutex<PrefixCycle>>>(&self.key())?;
        let c = c.lock().unwrap_or_else(|p| p.into_inner());
        c.ratio.get(endpoint).copied()
    }

    /// The ratio for one endpoint outside the pick's flow (no cycle state to write).
    fn ratio_now(&self, state: &CycleState, req: &LlmRequest, e: &Endpoint) -> f64 {
        self.cached(state, &e.id).unwrap_or_else(|| self.score(req, &[e]).0.first().copied().unwrap_or(0.0))
    }

    /// Tells the learner (if any) that `chosen` was picked for `req`, once per pick.
    pub fn observe(&self, state: &CycleState, req: &LlmRequest, profile: &str, chosen: &Endpoint) {
        let Some(learner) = &self.learner else { return };
        let cached = state.get::<Arc<Mutex<PrefixCycle>>>(&self.key()).and_then(|c| {
            let c = c.lock().unwrap_or_else(|p| p.into_inner());
            c.matched.clone()
        });
        let Some(m) = cached.or_else(|| self.score(req, &[chosen]).1) else { return };
        let key = (req.id.clone(), profile.to_string(), chosen.id.clone(), m.hashes.first().map_or(0, |h| *h as usize));
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_ref() == Some(&key) {
                return;
            }
            *last = Some(key);
        }
        let mut scratch = CycleState::default();
        scratch.put(PREFIX_MATCH_KEY, m);
        learner.on_pick(&scratch, req, profile, chosen);
    }
}

/// A source learns the picks it is told of and forgets endpoints that go away (the
/// handle of a private source's producer carries it, so endpoint removals reach it).
impl PickObserver for PrefixSource {
    fn on_pick(&self, state: &CycleState, req: &LlmRequest, profile: &str, chosen: &Endpoint) {
        self.observe(state, req, profile, chosen);
    }

    fn forget(&self, endpoint: &str) {
        PrefixSource::forget(self, endpoint);
    }
}

/// What was dispatched to one endpoint for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    /// The endpoint.
    pub endpoint: String,
    /// Its features at dispatch.
    pub features: Features,
    /// Its prediction, when there was one.
    pub predicted: Option<Prediction>,
}

#[derive(Debug, Clone)]
struct RequestContext {
    model: String,
    slo: SloHeaders,
    target: Option<Dispatch>,
    prefill: Option<Dispatch>,
    ttft_ms: Option<f64>,
    generation: u64,
}

#[derive(Debug, Default)]
struct Book {
    contexts: HashMap<String, RequestContext>,
    // (deadline, request, generation), deadlines ascending: the TTL is one constant.
    expiry: VecDeque<(Duration, String, u64)>,
    running: RunningRequests,
    generations: u64,
}

impl Book {
    fn expire(&mut self, now: Duration) {
        while let Some((deadline, _, _)) = self.expiry.front() {
            if *deadline > now {
                break;
            }
            let Some((_, id, generation)) = self.expiry.pop_front() else { break };
            if self.contexts.get(&id).is_some_and(|c| c.generation == generation)
                && let Some(ctx) = self.contexts.remove(&id)
                && let Some(t) = &ctx.target
            {
                self.running.remove(&t.endpoint, &id);
            }
        }
    }

    // The request was heard of: its TTL starts again (ttlcache's touch on hit).
    fn touch(&mut self, id: &str, now: Duration, ttl: Duration) {
        self.generations += 1;
        let generation = self.generations;
        if let Some(c) = self.contexts.get_mut(id) {
            c.generation = generation;
            if !ttl.is_zero() {
                self.expiry.push_back((now + ttl, id.to_string(), generation));
            }
        }
    }
}

#[derive(Debug, Clone)]
struct EndpointCycle {
    features: Features,
    predicted: Option<Prediction>,
    info: Option<LatencyPredictionInfo>,
}

#[derive(Default)]
struct ProducerCycle {
    slo: Option<SloHeaders>,
    endpoints: HashMap<String, EndpointCycle>,
}

/// `predicted-latency-producer`.
pub struct PredictedLatencyProducer {
    name: String,
    cfg: ProducerConfig,
    predictor: Arc<dyn LatencyPredictor>,
    model: Option<Arc<OnlineLatencyModel>>,
    prefix: Option<Arc<PrefixSource>>,
    clock: RwLock<Arc<dyn Clock>>,
    book: Mutex<Book>,
    metrics: Mutex<LatencyMetrics>,
}

impl std::fmt::Debug for PredictedLatencyProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictedLatencyProducer")
            .field("name", &self.name)
            .field("config", &self.cfg)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl PredictedLatencyProducer {
    /// A producer with the in-process model, on the system clock, reading no prefix
    /// match (see [`with_prefix_source`](Self::with_prefix_source)).
    pub fn new(name: impl Into<String>, cfg: ProducerConfig) -> Self {
        let model = Arc::new(OnlineLatencyModel::new(cfg.model));
        let mut p = Self::with_predictor(name, cfg, model.clone());
        p.model = Some(model);
        p
    }

    /// A producer predicting with `predictor` (an external service, say).
    pub fn with_predictor(name: impl Into<String>, cfg: ProducerConfig, predictor: Arc<dyn LatencyPredictor>) -> Self {
        PredictedLatencyProducer {
            name: name.into(),
            cfg,
            predictor,
            model: None,
            prefix: None,
            clock: RwLock::new(Arc::new(SystemClock::default())),
            book: Mutex::new(Book::default()),
            metrics: Mutex::new(LatencyMetrics::default()),
        }
    }

    /// The producer reading prefix matches from `source`.
    pub fn with_prefix_source(mut self, source: Option<Arc<PrefixSource>>) -> Self {
        self.prefix = source;
        self
    }

    /// Reads time from `clock` (the datastore's, or a manual one in tests): request
    /// expiry and prediction durations.
    pub fn bind_clock(&self, clock: Arc<dyn Clock>) {
        *self.clock.write().unwrap_or_else(|p| p.into_inner()) = clock;
    }

    fn now(&self) -> (Duration, f64) {
        let c = self.clock.read().unwrap_or_else(|p| p.into_inner());
        (c.now(), c.unix_time())
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parameters.
    pub fn config(&self) -> &ProducerConfig {
        &self.cfg
    }

    /// The in-process model (`None` with another predictor).
    pub fn model(&self) -> Option<&Arc<OnlineLatencyModel>> {
        self.model.as_ref()
    }

    /// The prefix source it reads.
    pub fn prefix_source(&self) -> Option<&Arc<PrefixSource>> {
        self.prefix.as_ref()
    }

    /// A copy of the metrics.
    pub fn metrics(&self) -> LatencyMetrics {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests on `endpoint`'s running-request queue.
    pub fn running_requests(&self, endpoint: &str) -> usize {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).running.count(endpoint)
    }

    /// The tightest TPOT SLO of the requests running on `endpoint` (0: none).
    pub fn min_tpot_slo(&self, endpoint: &str) -> f64 {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).running.min_tpot_slo(endpoint)
    }

    /// Requests picked and not yet seen to end (nor expired).
    pub fn tracked_requests(&self) -> usize {
        let (now, _) = self.now();
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        b.expire(now);
        b.contexts.len()
    }

    /// What was recorded at dispatch for a tracked request: (destination, prefill).
    pub fn dispatch(&self, request_id: &str) -> Option<(Option<Dispatch>, Option<Dispatch>)> {
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        b.contexts.get(request_id).map(|c| (c.target.clone(), c.prefill.clone()))
    }

    /// Trains the model directly (warm start from recorded entries, say).
    pub fn train(&self, entries: &[TrainingEntry]) {
        self.predictor.add_training_data_bulk(entries);
    }

    /// The request's features on endpoint `e`, whose prefix ratio is `prefix`.
    pub fn features(&self, req: &LlmRequest, e: &Endpoint, prefix: f64) -> Features {
        Features {
            kv_cache_percentage: e.metrics.kv_usage,
            input_token_length: req.prompt_tokens() as u64,
            num_request_waiting: e.metrics.waiting,
            // The router's in-flight load: what the picker itself has in flight there.
            num_request_running: e.inflight.requests,
            num_tokens_generated: 1,
            prefix_cache_score: prefix,
            encoder_input_size: 0,
            encoder_matched_size: 0,
            pod_type: self.pod_type(e).to_string(),
            prefill_tokens_in_flight: i64::try_from(e.inflight.prompt_tokens).unwrap_or(i64::MAX),
            decode_tokens_in_flight: 0,
        }
    }

    fn pod_type<'e>(&self, e: &'e Endpoint) -> &'e str {
        if self.cfg.endpoint_role_label.is_empty() {
            return "";
        }
        e.labels.get(&self.cfg.endpoint_role_label).map_or("", String::as_str)
    }

    fn key(&self) -> String {
        format!("latency/producer/{}", self.name)
    }

    /// Each endpoint's [`LatencyPredictionInfo`] for `req`, computed once per endpoint
    /// per cycle and kept in `state`; all `None` until the model is trained (or with
    /// `predictInProduce: false`), so consumers fall back as the router's do.
    pub fn predictions(
        &self,
        state: &mut CycleState,
        req: &LlmRequest,
        eps: &[&Endpoint],
    ) -> Vec<Option<LatencyPredictionInfo>> {
        let cycle = cycle_entry::<ProducerCycle>(state, &self.key());
        let mut c = cycle.lock().unwrap_or_else(|p| p.into_inner());
        let slo = *c.slo.get_or_insert_with(|| SloHeaders::parse(&req.headers));
        let missing: Vec<&Endpoint> = eps.iter().copied().filter(|e| !c.endpoints.contains_key(&e.id)).collect();
        if !missing.is_empty() {
            let ratios = match &self.prefix {
                Some(p) => p.ratios(state, req, &missing),
                None => vec![0.0; missing.len()],
            };
            let rows: Vec<Features> = missing.iter().zip(&ratios).map(|(e, r)| self.features(req, e, *r)).collect();
            let preds = if self.cfg.predict_in_produce {
                let (t0, _) = self.now();
                match self.predictor.predict_bulk_strict(&rows, self.cfg.streaming_mode) {
                    Ok(p) if p.len() == rows.len() => {
                        let (t1, _) = self.now();
                        let secs = t1.saturating_sub(t0).as_secs_f64();
                        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).prediction_duration(&req.model, secs);
                        Some(p)
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(producer = %self.name, error = %e, "no latency predictions");
                        None
                    }
                }
            } else {
                None
            };
            let (now, _) = self.now();
            let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
            book.expire(now);
            for (i, (e, features)) in missing.iter().zip(rows).enumerate() {
                let predicted = preds.as_ref().map(|p| p[i]);
                let info = predicted.map(|p| self.validate(p, slo, e, &book.running));
                c.endpoints.insert(e.id.clone(), EndpointCycle { features, predicted, info });
            }
        }
        eps.iter().map(|e| c.endpoints.get(&e.id).and_then(|x| x.info)).collect()
    }

    /// The router's `validatePrediction` plus TPOT neutralisation.
    fn validate(
        &self,
        p: Prediction,
        slo: SloHeaders,
        e: &Endpoint,
        running: &RunningRequests,
    ) -> LatencyPredictionInfo {
        let ttft_valid = p.ttft < slo.ttft;
        let ttft_headroom = slo.ttft - p.ttft;
        let (mut tpot_valid, mut tpot_headroom) = (true, 0.0);
        if self.cfg.streaming_mode {
            let mut buffered = slo.tpot * self.cfg.slo_buffer_factor;
            // The tightest SLO already running there must not be broken either.
            let pod_min = running.min_tpot_slo(&e.id);
            if pod_min > 0.0 {
                buffered = buffered.min(pod_min * self.cfg.slo_buffer_factor);
            }
            tpot_valid = p.tpot < buffered;
            tpot_headroom = buffered - p.tpot;
        }
        // Untrained (non-streaming) or meaningless (prefill pods decode nothing) TPOT must
        // not weigh in scoring, tiering or admission.
        if !self.cfg.streaming_mode || self.pod_type(e) == "prefill" {
            tpot_valid = true;
            tpot_headroom = 0.0;
        }
        LatencyPredictionInfo {
            ttft_valid,
            tpot_valid,
            ttft_headroom,
            tpot_headroom,
            ttft: p.ttft,
            tpot: p.tpot,
            dispatched_request_count: running.count(&e.id),
        }
    }

    /// Forgets a request without training (its response failed or was cancelled).
    pub fn abandon(&self, request_id: &str) {
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ctx) = b.contexts.remove(request_id)
            && let Some(t) = &ctx.target
        {
            b.running.remove(&t.endpoint, request_id);
        }
    }

    fn ttft_entry(ctx: &RequestContext, ms: f64, unix: f64) -> Option<TrainingEntry> {
        // Prefill happened on the prefill endpoint when there was one.
        let d = ctx.prefill.as_ref().or(ctx.target.as_ref())?;
        Some(TrainingEntry {
            features: Features { num_tokens_generated: 0, decode_tokens_in_flight: 0, ..d.features.clone() },
            actual_ttft_ms: ms,
            actual_tpot_ms: 0.0,
            timestamp: rfc3339(unix),
        })
    }
}

impl LatencyObserver for PredictedLatencyProducer {
    fn observe_first_token(&self, request_id: &str, ttft: Duration) {
        // Without streaming, the first chunk is the whole response: observe_end trains.
        if !self.cfg.streaming_mode {
            return;
        }
        let (now, unix) = self.now();
        let entry = {
            let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
            b.expire(now);
            let Some(ctx) = b.contexts.get_mut(request_id) else { return };
            if ctx.ttft_ms.is_some() {
                return;
            }
            let ms = ttft.as_secs_f64() * 1000.0;
            ctx.ttft_ms = Some(ms);
            let entry = Self::ttft_entry(ctx, ms, unix);
            b.touch(request_id, now, self.cfg.context_ttl);
            entry
        };
        if let Some(e) = entry {
            self.predictor.add_training_data_bulk(&[e]);
        }
    }

    fn observe_end(&self, request_id: &str, e2e: Duration, output_tokens: u64) {
        let (now, unix) = self.now();
        let mut ctx = {
            let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
            b.expire(now);
            let Some(ctx) = b.contexts.remove(request_id) else { return };
            if let Some(t) = &ctx.target {
                b.running.remove(&t.endpoint, request_id);
            }
            ctx
        };
        let e2e_ms = e2e.as_secs_f64() * 1000.0;
        let mut entries = Vec::new();
        if !self.cfg.streaming_mode {
            // Non-streaming: TTFT is the e2e latency, as in the router.
            ctx.ttft_ms = Some(e2e_ms);
            entries.extend(Self::ttft_entry(&ctx, e2e_ms, unix));
        }
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ttft) = ctx.ttft_ms.filter(|t| *t > 0.0) else {
            drop(metrics);
            self.predictor.add_training_data_bulk(&entries);
            return;
        };
        let predicted_ttft =
            ctx.prefill.as_ref().or(ctx.target.as_ref()).and_then(|d| d.predicted).map_or(0.0, |p| p.ttft);
        metrics.ttft(&ctx.model, ttft, predicted_ttft, ctx.slo.ttft);
        if self.cfg.streaming_mode && output_tokens > 1 {
            let avg_tpot = (e2e_ms - ttft) / (output_tokens - 1) as f64;
            if avg_tpot > 0.0
                && let Some(t) = &ctx.target
            {
                metrics.tpot(&ctx.model, avg_tpot, t.predicted.map_or(0.0, |p| p.tpot), ctx.slo.tpot);
                entries.push(TrainingEntry {
                    features: Features {
                        num_tokens_generated: 0,
                        prefix_cache_score: 0.0,
                        encoder_input_size: 0,
                        encoder_matched_size: 0,
                        decode_tokens_in_flight: 0,
                        ..t.features.clone()
                    },
                    actual_ttft_ms: 0.0,
                    actual_tpot_ms: avg_tpot,
                    timestamp: rfc3339(unix),
                });
            }
        }
        drop(metrics);
        self.predictor.add_training_data_bulk(&entries);
    }

    fn abandon(&self, request_id: &str) {
        PredictedLatencyProducer::abandon(self, request_id);
    }
}

impl PickObserver for PredictedLatencyProducer {
    /// Records the dispatch-time snapshot (the router's `PreRequest`): the destination's
    /// features and prediction, queued on its running-request queue under the request's
    /// TPOT SLO; a `prefill` profile's pick is the prefill endpoint (whose snapshot
    /// trains TTFT). Idempotent: several consumers may forward the same pick.
    fn on_pick(&self, state: &CycleState, req: &LlmRequest, profile: &str, chosen: &Endpoint) {
        if let Some(p) = &self.prefix {
            p.observe(state, req, profile, chosen);
        }
        if req.id.is_empty() || profile == "encode" || chosen.role == Role::Encode {
            return;
        }
        let cached = state.get::<Arc<Mutex<ProducerCycle>>>(&self.key()).map(|c| {
            let c = c.lock().unwrap_or_else(|p| p.into_inner());
            (c.slo, c.endpoints.get(&chosen.id).cloned())
        });
        let (slo, entry) = cached.unwrap_or((None, None));
        let slo = slo.unwrap_or_else(|| SloHeaders::parse(&req.headers));
        let dispatch = match entry {
            Some(e) => Dispatch { endpoint: chosen.id.clone(), features: e.features, predicted: e.predicted },
            None => {
                let ratio = self.prefix.as_ref().map_or(0.0, |p| p.ratio_now(state, req, chosen));
                Dispatch { endpoint: chosen.id.clone(), features: self.features(req, chosen, ratio), predicted: None }
            }
        };
        let (now, _) = self.now();
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        b.expire(now);
        let ctx = b.contexts.entry(req.id.clone()).or_insert_with(|| RequestContext {
            model: req.model.clone(),
            slo,
            target: None,
            prefill: None,
            ttft_ms: None,
            generation: 0,
        });
        if profile == PREFILL_PROFILE {
            ctx.prefill = Some(dispatch);
        } else {
            let old = ctx.target.replace(dispatch).map(|d| d.endpoint).filter(|e| *e != chosen.id);
            let tpot = ctx.slo.tpot;
            if let Some(old) = old {
                b.running.remove(&old, &req.id);
            }
            b.running.add(&chosen.id, &req.id, tpot);
        }
        b.touch(&req.id, now, self.cfg.context_ttl);
    }

    fn forget(&self, endpoint: &str) {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).running.forget(endpoint);
    }
}
