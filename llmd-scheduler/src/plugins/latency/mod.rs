//! Predicted-latency routing (llm-d-router's `predicted-latency-producer`,
//! `latency-scorer`, `slo-headroom-tier-filter`, `prefix-cache-affinity-filter` and
//! `latency-slo-admitter`), with the latency model trained inside the picker.
//!
//! # The flow
//!
//! - **Predict** (the router's `Produce`): the first consumer that needs predictions in a
//!   pick asks the producer ([`PredictedLatencyProducer::predictions`]); it builds each
//!   candidate's features (the router's: KV use, prompt tokens, waiting requests,
//!   requests and prompt tokens the picker has in flight there, prefix match ratio,
//!   role), predicts TTFT and TPOT, and turns them into [`LatencyPredictionInfo`] against
//!   the request's SLO headers (`x-llm-d-slo-ttft-ms`, `x-llm-d-slo-tpot-ms`, or the old
//!   `x-slo-ttft-ms`, `x-slo-tpot-ms`). The result is kept in the cycle state, so the
//!   filters, the scorer and the admitter share one prediction per endpoint per pick.
//! - **Dispatch** (its `PreRequest`): the producer is a [`PickObserver`]: it records the
//!   chosen endpoint's features and prediction under the request id and queues the
//!   request on the endpoint's running-request queue (by TPOT SLO). A `prefill`
//!   profile's pick is the prefill endpoint, whose features train TTFT.
//! - **Train** (its `ResponseBody`): the front end reports the first token and the end
//!   through [`LatencyObserver`]; the recorded snapshot becomes a training sample
//!   (non-streaming: TTFT := e2e latency; streaming: TTFT at the first token and mean
//!   TPOT = (e2e − TTFT)/(tokens − 1) at the end). Requests never seen to end are
//!   forgotten after `contextTTL`.
//!
//! # The model
//!
//! The router trains XGBoost (or Bayesian ridge) in a Python sidecar. Here each target
//! (TTFT, TPOT) is a **location-scale ridge regression** over a sliding window of the
//! last 1000 samples (the router's `LATENCY_MAX_SAMPLE_SIZE`): a ridge fit of the mean
//! on standardized features, a second ridge fit of the absolute residual (the spread,
//! which grows with load), and the empirical quantile of the residuals in units of that
//! spread; a prediction is mean + quantile × spread (p90 by default, the predictor
//! server's default; `objective: mean` gives the mean, as the router's chart runs it).
//! Why: latency is close to linear in these features (prefill work ∝ uncached tokens,
//! queueing ∝ waiting requests and prefill tokens ahead, decode steps ∝ batch size), so
//! a linear model learns it from a few dozen samples where trees need hundreds; the fit
//! is closed-form (a Cholesky solve of a ≤ 10×10 system) and deterministic given the
//! samples; refits run on the training path (every sample up to 200, then every 1% of
//! the window), never while picking; and a prediction is two dot products per target
//! (34 multiply-adds per endpoint in all), far under the 10 µs budget. Robustness: bad
//! samples (non-finite, ≤ 0) are dropped, features that did not vary in the window get
//! no weight (they cannot extrapolate), ridge keeps collinear features tame, and
//! predictions are clamped to [0, 10⁷] ms. What it cannot do that trees can: sharp
//! non-linear regimes (a KV cliff); the window adapts to drift instead.
//!
//! The [`LatencyPredictor`] trait is the seam for the router's external predictor
//! service (its wire types are [`model::Features`], [`model::TrainingEntry`],
//! [`model::BulkPredictionRequest`]); an HTTP client is not built (see the report).
//!
//! # Binding
//!
//! Consumers name their producers as the router's do (`latencyPredictionInfoProducerName`,
//! `prefixMatchInfoProducerName`, `inFlightLoadProducerName`); binding (`bind`) resolves them
//! once every plugin of a file exists, creating `predicted-latency-producer` with
//! defaults when a consumer needs it and none is configured (as the router does). The
//! prefix match comes from the `prefix-cache-scorer` reading the named producer, else a
//! private approximate index (the router's auto-created `approx-prefix-cache-producer`),
//! which the `prefix-based-pd-decider` reading the same producer shares.
//! In-flight load is the picker's own ([`crate::endpoint::InFlightLoad`]).

pub mod admitter;
pub mod filters;
pub mod metrics;
pub mod model;
pub mod producer;
pub mod queue;
pub mod scorer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use admitter::{LATENCY_SLO_ADMITTER, LatencySloAdmitter};
pub use filters::{AffinityConfig, PrefixCacheAffinityFilter, SloHeadroomTierFilter, TtftSource};
pub use metrics::LatencyMetrics;
pub use model::{Features, LatencyPredictor, ModelConfig, Objective, OnlineLatencyModel, Prediction, TrainingEntry};
pub use producer::{PredictedLatencyProducer, PrefixSource, ProducerConfig};
pub use scorer::{LatencyScorer, ScorerConfig};

use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, PickObserver, PluginHandle};
use crate::plugins::Params;
use crate::request::LlmRequest;

/// `predicted-latency-producer`'s type name (also the default producer's name).
pub const PREDICTED_LATENCY_PRODUCER: &str = "predicted-latency-producer";
/// `latency-scorer`'s type name.
pub const LATENCY_SCORER: &str = "latency-scorer";
/// `slo-headroom-tier-filter`'s type name.
pub const SLO_HEADROOM_TIER_FILTER: &str = "slo-headroom-tier-filter";
/// `prefix-cache-affinity-filter`'s type name.
pub const PREFIX_CACHE_AFFINITY_FILTER: &str = "prefix-cache-affinity-filter";

/// The TTFT SLO header (milliseconds).
pub const TTFT_SLO_HEADER: &str = "x-llm-d-slo-ttft-ms";
/// Its deprecated alias.
pub const OLD_TTFT_SLO_HEADER: &str = "x-slo-ttft-ms";
/// The TPOT SLO header (milliseconds).
pub const TPOT_SLO_HEADER: &str = "x-llm-d-slo-tpot-ms";
/// Its deprecated alias.
pub const OLD_TPOT_SLO_HEADER: &str = "x-slo-tpot-ms";

/// The profile whose pick is the prefill endpoint (the router's
/// `ExperimentalDefaultPrefillProfile`).
pub const PREFILL_PROFILE: &str = "prefill";

const APPROX_PREFIX_PRODUCER: &str = "approx-prefix-cache-producer";
const INFLIGHT_PRODUCER: &str = "inflight-load-producer";

/// An endpoint's predicted latency against the request's SLO (the router's
/// `LatencyPredictionInfo` attribute). Headroom = SLO − predicted (ms): negative when
/// the prediction breaks the SLO, and always negative without an SLO header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyPredictionInfo {
    /// Predicted TTFT < TTFT SLO.
    pub ttft_valid: bool,
    /// Predicted TPOT < buffered TPOT SLO (always true when TPOT is neutralised).
    pub tpot_valid: bool,
    /// TTFT SLO − predicted TTFT (ms).
    pub ttft_headroom: f64,
    /// Buffered TPOT SLO − predicted TPOT (ms); 0 when neutralised.
    pub tpot_headroom: f64,
    /// Predicted TTFT (ms).
    pub ttft: f64,
    /// Predicted TPOT (ms).
    pub tpot: f64,
    /// Requests this picker dispatched there and has not seen end.
    pub dispatched_request_count: usize,
}

impl LatencyPredictionInfo {
    /// Both TTFT and TPOT within SLO.
    pub fn is_valid(&self) -> bool {
        self.ttft_valid && self.tpot_valid
    }
}

/// A request's SLOs (ms; 0 when absent).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SloHeaders {
    /// TTFT SLO.
    pub ttft: f64,
    /// Mean TPOT SLO.
    pub tpot: f64,
}

impl SloHeaders {
    /// From lower-case request headers: the new name first, else the old alias (an
    /// unparsable value of the one present counts as 0, as in the router; so do NaN
    /// and infinities, which Go would take).
    pub fn parse(headers: &BTreeMap<String, String>) -> Self {
        let read = |names: [&str; 2]| -> f64 {
            let Some(v) = names.iter().find_map(|n| headers.get(*n)) else { return 0.0 };
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                _ => {
                    tracing::debug!(header = names[0], value = %v, "SLO header is not a number; read as 0");
                    0.0
                }
            }
        };
        SloHeaders {
            ttft: read([TTFT_SLO_HEADER, OLD_TTFT_SLO_HEADER]),
            tpot: read([TPOT_SLO_HEADER, OLD_TPOT_SLO_HEADER]),
        }
    }
}

/// What a front end tells the latency producers about each request it sent (the
/// router's `ResponseBody` hooks), by request id (`x-request-id`, [`LlmRequest::id`]).
pub trait LatencyObserver: Send + Sync {
    /// The first token (first streamed chunk) arrived `ttft` after the request was sent.
    /// Ignored unless `streamingMode`.
    fn observe_first_token(&self, request_id: &str, ttft: Duration);

    /// The response ended `e2e` after the request was sent, with `output_tokens`
    /// tokens (usage's `completion_tokens`, or the chunks counted).
    fn observe_end(&self, request_id: &str, e2e: Duration, output_tokens: u64);

    /// The request failed or was cancelled: forget it without training.
    fn abandon(&self, request_id: &str);
}

/// The `predicted-latency-producer`s of a loaded config (configured or created by
/// the config loader), for the front end's [`LatencyObserver`] calls and metrics export.
pub fn latency_producers(config: &crate::config::SchedulerConfig) -> Vec<Arc<PredictedLatencyProducer>> {
    config.plugins.values().filter_map(|h| h.latency.clone()).collect()
}

/// [`latency_producers`] as [`LatencyObserver`]s.
pub fn latency_observers(config: &crate::config::SchedulerConfig) -> Vec<Arc<dyn LatencyObserver>> {
    latency_producers(config).into_iter().map(|p| p as Arc<dyn LatencyObserver>).collect()
}

/// The cycle-state entry under `key`, created empty if absent.
pub(crate) fn cycle_entry<T: Default + Send + 'static>(state: &mut CycleState, key: &str) -> Arc<Mutex<T>> {
    if let Some(c) = state.get::<Arc<Mutex<T>>>(key) {
        return c.clone();
    }
    let c = Arc::new(Mutex::new(T::default()));
    state.put(key, c.clone());
    c
}

fn named_producer(p: &Value, key: &str, default: &str) -> Result<String, String> {
    Ok(Params(p).string(key)?.filter(|s| !s.is_empty()).unwrap_or_else(|| default.to_string()))
}

/// The producer `latencyPredictionInfoProducerName` names (default
/// `predicted-latency-producer`).
pub(crate) fn lpi_producer_name(p: &Value) -> Result<String, String> {
    named_producer(p, "latencyPredictionInfoProducerName", PREDICTED_LATENCY_PRODUCER)
}

/// The producer `prefixMatchInfoProducerName` names (default
/// `approx-prefix-cache-producer`).
pub(crate) fn prefix_producer_name(p: &Value) -> Result<String, String> {
    named_producer(p, "prefixMatchInfoProducerName", APPROX_PREFIX_PRODUCER)
}

/// The producer `inFlightLoadProducerName` names (default `inflight-load-producer`).
pub(crate) fn inflight_producer_name(p: &Value) -> Result<String, String> {
    named_producer(p, "inFlightLoadProducerName", INFLIGHT_PRODUCER)
}

/// The pick observer of a consumer plugin: consumers sit in profiles where the producer
/// may not (the router runs producers whatever the profiles), so each forwards picks to
/// its producer and to its prefix source's index. Forwarding is idempotent.
struct ConsumerObserver {
    producer: Option<Arc<PredictedLatencyProducer>>,
    prefix: Option<Arc<PrefixSource>>,
}

impl PickObserver for ConsumerObserver {
    fn on_pick(&self, state: &CycleState, req: &LlmRequest, profile: &str, chosen: &Endpoint) {
        if let Some(p) = &self.producer {
            p.on_pick(state, req, profile, chosen);
        }
        if let Some(s) = &self.prefix {
            s.observe(state, req, profile, chosen);
        }
    }

    fn forget(&self, endpoint: &str) {
        if let Some(p) = &self.producer {
            p.forget(endpoint);
        }
    }
}

fn handle(name: &str, type_name: &str) -> PluginHandle {
    PluginHandle { name: name.into(), type_name: type_name.into(), ..Default::default() }
}

/// Registers the five types. Their instances are unbound until [`bind`] gives each
/// consumer its producer and prefix source (unbound, consumers see no predictions and
/// fall back as the router's do without them).
pub(crate) fn register(r: &mut crate::registry::PluginRegistry) {
    r.register(PREDICTED_LATENCY_PRODUCER, |n, p| {
        let cfg = ProducerConfig::from_params(p)?;
        let producer = Arc::new(PredictedLatencyProducer::new(n, cfg));
        Ok(PluginHandle {
            observer: Some(producer.clone()),
            latency: Some(producer),
            ..handle(n, PREDICTED_LATENCY_PRODUCER)
        })
    });
    r.register(LATENCY_SCORER, |n, p| {
        let cfg = ScorerConfig::from_params(p)?;
        Ok(PluginHandle { scorer: Some(Arc::new(LatencyScorer::new(cfg, None, None))), ..handle(n, LATENCY_SCORER) })
    });
    r.register(SLO_HEADROOM_TIER_FILTER, |n, p| {
        let e = SloHeadroomTierFilter::epsilon_from_params(p)?;
        Ok(PluginHandle {
            filter: Some(Arc::new(SloHeadroomTierFilter::named(n, e, None))),
            ..handle(n, SLO_HEADROOM_TIER_FILTER)
        })
    });
    r.register(PREFIX_CACHE_AFFINITY_FILTER, |n, p| {
        let cfg = AffinityConfig::from_params(p)?;
        Ok(PluginHandle {
            filter: Some(Arc::new(PrefixCacheAffinityFilter::named(n, cfg, None, None))),
            ..handle(n, PREFIX_CACHE_AFFINITY_FILTER)
        })
    });
    r.register(LATENCY_SLO_ADMITTER, |n, p| {
        LatencySloAdmitter::check_params(p)?;
        Ok(PluginHandle {
            flow: Some(crate::flowcontrol::FlowPlugin::Admitter(Arc::new(LatencySloAdmitter::new(None)))),
            ..handle(n, LATENCY_SLO_ADMITTER)
        })
    });
}

// The router's error for a consumer naming a producer that is not configured (only
// default producers are created).
fn no_producer(key: &str, want: &str, consumer: &str) -> String {
    format!("no default producer found for missing data key {key}/{want}, consumed by {consumer}")
}

/// The prefix source standing for producer `want`, shared among its consumers (`cache`
/// within one binding; a private index also through its producer's handle in `plugins`,
/// [`PluginHandle::prefix_source`], so the latency plugins and the P/D decider share
/// it). An auto-created default producer gets a handle of its own there.
pub(crate) fn resolve_prefix(
    named: &[(String, String, Value)],
    plugins: &mut BTreeMap<String, PluginHandle>,
    want: &str,
    consumer: &str,
    cache: &mut BTreeMap<String, Arc<PrefixSource>>,
) -> Result<Arc<PrefixSource>, String> {
    if let Some(s) = cache.get(want) {
        return Ok(s.clone());
    }
    let from_handle = |plugins: &BTreeMap<String, PluginHandle>, n: &str| {
        plugins.get(n).and_then(|h| h.scorer.clone().map(|s| Arc::new(PrefixSource::new(want, s, h.observer.clone()))))
    };
    // A prefix-cache-scorer reading `want` holds its match (and index).
    let mut found = None;
    for (n, _, p) in named.iter().filter(|(_, t, _)| t == "prefix-cache-scorer") {
        if prefix_producer_name(p)? == want {
            found = from_handle(plugins, n);
            if found.is_some() {
                break;
            }
        }
    }
    let shared = plugins.get(want).and_then(|h| h.prefix_source.clone());
    let source = match found {
        Some(s) => s,
        None => match named.iter().find(|(n, _, _)| n == want) {
            Some((_, t, _))
                if matches!(
                    t.as_str(),
                    "precise-prefix-cache-producer" | "precise-prefix-cache-scorer" | "prefix-cache-scorer"
                ) =>
            {
                from_handle(plugins, want)
                    .ok_or_else(|| format!("prefixMatchInfoProducerName {want:?}: {t} has no prefix match"))?
            }
            Some((_, t, p)) if t == APPROX_PREFIX_PRODUCER => match shared {
                Some(s) => s,
                None => {
                    let s = Arc::new(PrefixSource::approximate(want, p)?);
                    if let Some(h) = plugins.get_mut(want) {
                        h.prefix_source = Some(s.clone());
                        h.observer = Some(s.clone());
                    }
                    s
                }
            },
            Some((_, t, _)) => {
                return Err(format!(
                    "prefixMatchInfoProducerName {want:?} is a {t}, which produces no prefix match information"
                ));
            }
            // The router creates the default approximate producer when none is configured.
            None if want == APPROX_PREFIX_PRODUCER => match shared {
                Some(s) => s,
                None => {
                    let s = Arc::new(PrefixSource::approximate(want, &Value::Object(Default::default()))?);
                    if !plugins.contains_key(want) {
                        tracing::info!(producer = %want, consumer = %consumer, "auto-created default producer");
                        plugins.insert(
                            want.to_string(),
                            PluginHandle {
                                prefix_source: Some(s.clone()),
                                observer: Some(s.clone()),
                                ..handle(want, APPROX_PREFIX_PRODUCER)
                            },
                        );
                    }
                    s
                }
            },
            None => return Err(no_producer("PrefixCacheMatchInfoDataKey", want, consumer)),
        },
    };
    cache.insert(want.to_string(), source.clone());
    Ok(source)
}

fn check_inflight(named: &[(String, String, Value)], want: &str, consumer: &str) -> Result<(), String> {
    if want == INFLIGHT_PRODUCER || named.iter().any(|(n, t, _)| n == want && t == INFLIGHT_PRODUCER) {
        Ok(())
    } else {
        Err(no_producer("InFlightLoadDataKey", want, consumer))
    }
}

// Whether a consumer of type `ty` with `params` reads latency predictions (the router's
// `Consumes`).
fn reads_predictions(ty: &str, params: &Value) -> Result<bool, String> {
    Ok(match ty {
        LATENCY_SCORER | SLO_HEADROOM_TIER_FILTER | LATENCY_SLO_ADMITTER => true,
        PREFIX_CACHE_AFFINITY_FILTER => AffinityConfig::from_params(params)?.reads_predictions(),
        _ => false,
    })
}

/// Binds the latency plugins of a file (`named`: every plugin as (name, type,
/// parameters)) to their producers and prefix sources, creating the default
/// `predicted-latency-producer` when a consumer needs it and none is configured. Run
/// after the prefix scorers are bound to their producers.
pub(crate) fn bind(
    named: &[(String, String, Value)],
    plugins: &mut BTreeMap<String, PluginHandle>,
) -> Result<(), (String, String)> {
    const CONSUMERS: [&str; 4] =
        [LATENCY_SCORER, SLO_HEADROOM_TIER_FILTER, PREFIX_CACHE_AFFINITY_FILTER, LATENCY_SLO_ADMITTER];
    let consumers: Vec<&(String, String, Value)> =
        named.iter().filter(|(_, t, _)| CONSUMERS.contains(&t.as_str())).collect();
    if consumers.is_empty() && !named.iter().any(|(_, t, _)| t == PREDICTED_LATENCY_PRODUCER) {
        return Ok(());
    }
    let mut specs: Vec<(String, Value)> = named
        .iter()
        .filter(|(_, t, _)| t == PREDICTED_LATENCY_PRODUCER)
        .map(|(n, _, p)| (n.clone(), p.clone()))
        .collect();
    let mut default_wanted = false;
    for (name, ty, params) in &consumers {
        let fail = |e: String| (name.clone(), e);
        if reads_predictions(ty, params).map_err(fail)?
            && lpi_producer_name(params).map_err(fail)? == PREDICTED_LATENCY_PRODUCER
        {
            default_wanted = true;
        }
    }
    // Created when wanted and the name is free (or holds one created before: binding
    // again rebuilds it).
    if default_wanted
        && !named.iter().any(|(n, _, _)| n == PREDICTED_LATENCY_PRODUCER)
        && plugins.get(PREDICTED_LATENCY_PRODUCER).is_none_or(|h| h.type_name == PREDICTED_LATENCY_PRODUCER)
    {
        specs.push((PREDICTED_LATENCY_PRODUCER.to_string(), Value::Object(Default::default())));
    }
    let mut sources: BTreeMap<String, Arc<PrefixSource>> = BTreeMap::new();
    let mut producers: BTreeMap<String, Arc<PredictedLatencyProducer>> = BTreeMap::new();
    for (name, params) in specs {
        let fail = |e: String| (name.clone(), e);
        let cfg = ProducerConfig::from_params(&params).map_err(fail)?;
        let inflight = inflight_producer_name(&params).map_err(fail)?;
        check_inflight(named, &inflight, &name).map_err(fail)?;
        let want = prefix_producer_name(&params).map_err(fail)?;
        let source = resolve_prefix(named, plugins, &want, &name, &mut sources).map_err(fail)?;
        let producer = Arc::new(PredictedLatencyProducer::new(name.clone(), cfg).with_prefix_source(Some(source)));
        let h = plugins.entry(name.clone()).or_insert_with(|| handle(&name, PREDICTED_LATENCY_PRODUCER));
        h.observer = Some(producer.clone());
        h.latency = Some(producer.clone());
        producers.insert(name, producer);
    }
    for (name, ty, params) in consumers {
        let fail = |e: String| (name.clone(), e);
        let producer = if reads_predictions(ty, params).map_err(fail)? {
            let want = lpi_producer_name(params).map_err(fail)?;
            match producers.get(&want) {
                Some(p) => Some(p.clone()),
                // The default name taken by another type: the router finds no predictions.
                None if want == PREDICTED_LATENCY_PRODUCER => None,
                None => return Err(fail(no_producer("LatencyPredictionInfoDataKey", &want, name))),
            }
        } else {
            None
        };
        let prefix = if matches!(ty.as_str(), LATENCY_SCORER | PREFIX_CACHE_AFFINITY_FILTER) {
            let want = prefix_producer_name(params).map_err(fail)?;
            Some(resolve_prefix(named, plugins, &want, name, &mut sources).map_err(fail)?)
        } else {
            None
        };
        let Some(h) = plugins.get_mut(name) else { continue };
        match ty.as_str() {
            LATENCY_SCORER => {
                let cfg = ScorerConfig::from_params(params).map_err(fail)?;
                h.scorer = Some(Arc::new(LatencyScorer::new(cfg, producer.clone(), prefix.clone())));
            }
            SLO_HEADROOM_TIER_FILTER => {
                let e = SloHeadroomTierFilter::epsilon_from_params(params).map_err(fail)?;
                h.filter = Some(Arc::new(SloHeadroomTierFilter::named(name, e, producer.clone())));
            }
            PREFIX_CACHE_AFFINITY_FILTER => {
                let cfg = AffinityConfig::from_params(params).map_err(fail)?;
                if cfg.reads_inflight() {
                    check_inflight(named, &inflight_producer_name(params).map_err(fail)?, name).map_err(fail)?;
                }
                h.filter =
                    Some(Arc::new(PrefixCacheAffinityFilter::named(name, cfg, prefix.clone(), producer.clone())));
            }
            _ => {
                h.flow = Some(crate::flowcontrol::FlowPlugin::Admitter(Arc::new(LatencySloAdmitter::new(producer))));
                continue;
            }
        }
        h.observer = Some(Arc::new(ConsumerObserver { producer, prefix }));
    }
    Ok(())
}
