//! End-to-end tests of the latency plugins: the producer's hooks against a stub
//! predictor (as the router's tests mock its sidecar), binding, a config routed through
//! the scheduler while the in-process model learns, and properties.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::model::{Features, LatencyPredictor, ModelConfig, Objective, OnlineLatencyModel, Prediction, TrainingEntry};
use super::scorer::{ScoreInput, ScorerConfig, score_endpoints, score_endpoints_raw};
use super::*;
use crate::clock::ManualClock;
use crate::config::SchedulerConfig;
use crate::endpoint::{Endpoint, Role};
use crate::plugin::{CycleState, PickObserver, PluginHandle};
use crate::registry::PluginRegistry;
use crate::request::LlmRequest;
use crate::scheduler::Scheduler;

type Law = Box<dyn Fn(&Features) -> Prediction + Send + Sync>;

/// The router tests' mock predictor: predictions from a law, training entries kept.
struct Stub {
    law: Law,
    fail: bool,
    trained: Mutex<Vec<TrainingEntry>>,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stub")
    }
}

impl Stub {
    fn fixed(ttft: f64, tpot: f64) -> Arc<Self> {
        Arc::new(Stub {
            law: Box::new(move |_| Prediction { ttft, tpot }),
            fail: false,
            trained: Mutex::new(Vec::new()),
        })
    }

    fn entries(&self) -> Vec<TrainingEntry> {
        self.trained.lock().unwrap().clone()
    }
}

impl LatencyPredictor for Stub {
    fn predict_bulk_strict(&self, rows: &[Features], _need_tpot: bool) -> Result<Vec<Prediction>, String> {
        if self.fail {
            return Err("sidecar down".into());
        }
        Ok(rows.iter().map(|f| (self.law)(f)).collect())
    }

    fn add_training_data_bulk(&self, entries: &[TrainingEntry]) {
        self.trained.lock().unwrap().extend_from_slice(entries);
    }
}

fn producer(cfg: ProducerConfig, stub: &Arc<Stub>) -> (Arc<PredictedLatencyProducer>, Arc<ManualClock>) {
    let p = Arc::new(PredictedLatencyProducer::with_predictor("predicted-latency-producer", cfg, stub.clone()));
    let clock = Arc::new(ManualClock::new());
    p.bind_clock(clock.clone());
    (p, clock)
}

fn streaming() -> ProducerConfig {
    ProducerConfig { streaming_mode: true, ..Default::default() }
}

fn ep(id: &str, kv: f64, waiting: u64, running: u64) -> Endpoint {
    let mut e = Endpoint::new(id, format!("{id}:8000"), Role::Both);
    e.metrics.kv_usage = kv;
    e.metrics.waiting = waiting;
    e.metrics.running = running;
    e
}

fn req(id: &str, slo: &[(&str, &str)]) -> LlmRequest {
    LlmRequest {
        id: id.into(),
        model: "m".into(),
        prompt: "p".repeat(400),
        headers: slo.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

fn slo(ttft: &str, tpot: &str) -> Vec<(&'static str, String)> {
    vec![(TTFT_SLO_HEADER, ttft.to_string()), (TPOT_SLO_HEADER, tpot.to_string())]
}

fn req_slo(id: &str, ttft: &str, tpot: &str) -> LlmRequest {
    let s = slo(ttft, tpot);
    let pairs: Vec<(&str, &str)> = s.iter().map(|(k, v)| (*k, v.as_str())).collect();
    req(id, &pairs)
}

fn predict_one(p: &PredictedLatencyProducer, r: &LlmRequest, e: &Endpoint) -> Option<LatencyPredictionInfo> {
    p.predictions(&mut CycleState::default(), r, &[e])[0]
}

// Picks `e` for `r` in `profile`, as the scheduler's observers see it.
fn dispatch(p: &PredictedLatencyProducer, r: &LlmRequest, profile: &str, e: &Endpoint) {
    let mut st = CycleState::default();
    p.predictions(&mut st, r, &[e]);
    p.on_pick(&st, r, profile, e);
}

#[test]
fn slo_headers() {
    // Mirrors plugin_test.go TestParseSLOHeaders.
    let h = |pairs: &[(&str, &str)]| -> SloHeaders {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SloHeaders::parse(&m)
    };
    assert_eq!(h(&[(TTFT_SLO_HEADER, "100"), (TPOT_SLO_HEADER, "50")]), SloHeaders { ttft: 100.0, tpot: 50.0 });
    assert_eq!(h(&[(OLD_TTFT_SLO_HEADER, "101"), (OLD_TPOT_SLO_HEADER, "51")]), SloHeaders { ttft: 101.0, tpot: 51.0 });
    let both = h(&[
        (TTFT_SLO_HEADER, "102"),
        (OLD_TTFT_SLO_HEADER, "999"),
        (TPOT_SLO_HEADER, "52"),
        (OLD_TPOT_SLO_HEADER, "999"),
    ]);
    assert_eq!(both, SloHeaders { ttft: 102.0, tpot: 52.0 });
    // Missing, unparsable (the present header wins even when bad), non-finite: 0.
    assert_eq!(h(&[]), SloHeaders::default());
    assert_eq!(
        h(&[(TTFT_SLO_HEADER, "fast"), (OLD_TTFT_SLO_HEADER, "100"), (TPOT_SLO_HEADER, "NaN")]),
        SloHeaders::default()
    );
    assert_eq!(h(&[(TTFT_SLO_HEADER, "12.5")]).ttft, 12.5);
}

#[test]
fn validation_in_streaming_mode() {
    // Mirrors prediction_test.go TestValidatePrediction_StreamingMode.
    let e = ep("pod", 0.3, 0, 0);
    let r = req_slo("r", "100", "30");
    let info = |ttft, tpot| {
        let (p, _) = producer(streaming(), &Stub::fixed(ttft, tpot));
        predict_one(&p, &r, &e).unwrap()
    };
    let both = info(50.0, 20.0);
    assert!(both.ttft_valid && both.tpot_valid && both.is_valid());
    assert_eq!((both.ttft_headroom, both.tpot_headroom, both.ttft, both.tpot), (50.0, 10.0, 50.0, 20.0));
    let late = info(150.0, 20.0);
    assert!(!late.ttft_valid && late.tpot_valid && !late.is_valid());
    let slow = info(50.0, 40.0);
    assert!(slow.ttft_valid && !slow.tpot_valid);
    // podMinTPOTSLO tightens the threshold: a request with TPOT SLO 20 runs there.
    let (p, _) = producer(streaming(), &Stub::fixed(50.0, 25.0));
    dispatch(&p, &req_slo("running", "100", "20"), "default", &e);
    assert_eq!(p.min_tpot_slo("pod"), 20.0);
    let tight = predict_one(&p, &r, &e).unwrap();
    assert!(!tight.tpot_valid && !tight.is_valid());
    assert_eq!((tight.tpot_headroom, tight.dispatched_request_count), (-5.0, 1));
    // sloBufferFactor scales the TPOT SLO.
    let (p, _) = producer(ProducerConfig { slo_buffer_factor: 1.5, ..streaming() }, &Stub::fixed(50.0, 40.0));
    let buffered = predict_one(&p, &r, &e).unwrap();
    assert!(buffered.tpot_valid);
    assert_eq!(buffered.tpot_headroom, 5.0);
}

#[test]
fn tpot_is_neutralised_without_streaming_and_on_prefill_endpoints() {
    // Mirrors TestValidatePrediction_NonStreamingMode and
    // TestValidatePrediction_PrefillEndpointNeutralizeTPOT.
    let r = req_slo("r", "100", "30");
    let (p, _) = producer(ProducerConfig::default(), &Stub::fixed(50.0, 999.0));
    let i = predict_one(&p, &r, &ep("pod", 0.3, 0, 0)).unwrap();
    assert!(i.ttft_valid && i.tpot_valid && i.is_valid());
    assert_eq!(i.tpot_headroom, 0.0);
    let cfg = ProducerConfig { endpoint_role_label: "role".into(), ..streaming() };
    let (p, _) = producer(cfg, &Stub::fixed(50.0, 999.0));
    let mut prefill = ep("prefill-pod", 0.3, 0, 0);
    prefill.labels.insert("role".into(), "prefill".into());
    let mut decode = ep("decode-pod", 0.3, 0, 0);
    decode.labels.insert("role".into(), "decode".into());
    let mut st = CycleState::default();
    let infos = p.predictions(&mut st, &r, &[&prefill, &decode]);
    let (pi, di) = (infos[0].unwrap(), infos[1].unwrap());
    assert!(pi.tpot_valid && pi.is_valid() && pi.tpot_headroom == 0.0);
    assert!(!di.tpot_valid && !di.is_valid() && di.tpot_headroom == 30.0 - 999.0);
    // pod_type is the label's value.
    assert_eq!(p.features(&r, &prefill, 0.0).pod_type, "prefill");
    assert_eq!(p.features(&r, &ep("x", 0.0, 0, 0), 0.0).pod_type, "");
}

#[test]
fn without_slo_headers_headroom_is_minus_the_prediction() {
    let (p, _) = producer(streaming(), &Stub::fixed(80.0, 12.0));
    let i = predict_one(&p, &req("r", &[]), &ep("pod", 0.3, 0, 0)).unwrap();
    assert_eq!((i.ttft_headroom, i.tpot_headroom), (-80.0, -12.0));
    assert!(!i.ttft_valid && !i.tpot_valid);
}

#[test]
fn predictions_are_all_or_nothing_and_cached_per_cycle() {
    let e = ep("pod", 0.3, 0, 0);
    let r = req_slo("r", "100", "30");
    let down = Arc::new(Stub { law: Box::new(|_| Prediction::default()), fail: true, trained: Mutex::new(Vec::new()) });
    let (p, _) = producer(streaming(), &down);
    assert_eq!(predict_one(&p, &r, &e), None, "sidecar down: no predictions");
    let (p, _) = producer(ProducerConfig { predict_in_produce: false, ..streaming() }, &Stub::fixed(1.0, 1.0));
    assert_eq!(predict_one(&p, &r, &e), None, "predictInProduce: false");
    // Training-only mode still records the dispatch.
    dispatch(&p, &r, "default", &e);
    assert!(p.dispatch("r").is_some());
    // Once per endpoint per cycle: a second call does not predict again.
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let counting = Arc::new(Stub {
        law: Box::new(move |_| {
            *c.lock().unwrap() += 1;
            Prediction { ttft: 1.0, tpot: 1.0 }
        }),
        fail: false,
        trained: Mutex::new(Vec::new()),
    });
    let (p, _) = producer(streaming(), &counting);
    let (a, b) = (ep("a", 0.0, 0, 0), ep("b", 0.0, 0, 0));
    let mut st = CycleState::default();
    p.predictions(&mut st, &r, &[&a]);
    p.predictions(&mut st, &r, &[&a, &b]);
    p.predictions(&mut st, &r, &[&b, &a]);
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[test]
fn features_read_the_pickers_in_flight_load() {
    // Mirrors plugin_test.go TestReadInFlightLoad and training_test.go
    // TestBulkPredictWithMetrics_PropagatesInFlightOverrides.
    let (p, _) = producer(ProducerConfig::default(), &Stub::fixed(1.0, 1.0));
    let mut e = ep("pod", 0.5, 2, 5);
    e.inflight.requests = 3;
    e.inflight.prompt_tokens = 42;
    let r = LlmRequest { token_ids: Some(vec![1; 8]), ..req("r", &[]) };
    let f = p.features(&r, &e, 0.25);
    assert_eq!(
        f,
        Features {
            kv_cache_percentage: 0.5,
            input_token_length: 8,
            num_request_waiting: 2,
            num_request_running: 3,
            num_tokens_generated: 1,
            prefix_cache_score: 0.25,
            prefill_tokens_in_flight: 42,
            ..Default::default()
        }
    );
}

#[test]
fn a_pick_records_the_dispatch_and_queues_the_request() {
    // Mirrors requestcontrol_hooks_test.go TestPredictedLatency_PreRequest_Success,
    // _AddsToQueue, _QueueAlreadyExists, _MultipleRequests_SamePod, _DifferentPods.
    let (p, _) = producer(streaming(), &Stub::fixed(80.0, 20.0));
    let (a, b) = (ep("a", 0.1, 0, 0), ep("b", 0.1, 0, 0));
    dispatch(&p, &req_slo("1", "100", "50"), "default", &a);
    dispatch(&p, &req_slo("2", "100", "40"), "default", &a);
    dispatch(&p, &req_slo("3", "100", "50"), "default", &b);
    assert_eq!((p.running_requests("a"), p.running_requests("b"), p.min_tpot_slo("a")), (2, 1, 40.0));
    let (target, prefill) = p.dispatch("1").unwrap();
    let t = target.unwrap();
    assert_eq!((t.endpoint.as_str(), t.predicted), ("a", Some(Prediction { ttft: 80.0, tpot: 20.0 })));
    assert!(prefill.is_none());
    // The same pick forwarded again (several consumers) changes nothing.
    dispatch(&p, &req_slo("1", "100", "50"), "default", &a);
    assert_eq!((p.running_requests("a"), p.tracked_requests()), (2, 3));
    // A re-pick elsewhere (a retry) moves the request.
    dispatch(&p, &req_slo("1", "100", "50"), "default", &b);
    assert_eq!((p.running_requests("a"), p.running_requests("b")), (1, 2));
    // Requests without an id, and encode picks, are not tracked.
    dispatch(&p, &req_slo("", "100", "50"), "default", &a);
    dispatch(&p, &req_slo("4", "100", "50"), "encode", &a);
    assert_eq!(p.tracked_requests(), 3);
    // The dispatched count is what consumers see.
    assert_eq!(predict_one(&p, &req_slo("5", "100", "50"), &b).unwrap().dispatched_request_count, 2);
    // An endpoint that went away loses its queue.
    p.forget("b");
    assert_eq!(p.running_requests("b"), 0);
    p.abandon("2");
    assert_eq!((p.running_requests("a"), p.dispatch("2")), (0, None));
}

#[test]
fn streaming_trains_ttft_at_the_first_token_and_tpot_at_the_end() {
    // Mirrors TestPredictedLatency_StreamingMode_ResponseBody_FirstToken,
    // _SubsequentTokens, _FinalToken_Success and TestPredictedLatency_RequestLifecycle.
    let stub = Stub::fixed(80.0, 30.0);
    let (p, _) = producer(streaming(), &stub);
    let mut e = ep("pod", 0.5, 1, 1);
    e.inflight.requests = 2;
    e.inflight.prompt_tokens = 300;
    let r = req_slo("test", "100", "50");
    dispatch(&p, &r, "default", &e);
    p.observe_first_token("test", Duration::from_millis(120));
    p.observe_first_token("test", Duration::from_millis(999));
    let t = stub.entries();
    assert_eq!(t.len(), 1, "one TTFT entry, at the first token only");
    assert_eq!((t[0].actual_ttft_ms, t[0].actual_tpot_ms), (120.0, 0.0));
    let f = &t[0].features;
    assert_eq!((f.num_tokens_generated, f.num_request_running, f.prefill_tokens_in_flight), (0, 2, 300));
    assert_eq!((f.num_request_waiting, f.kv_cache_percentage, f.input_token_length), (1, 0.5, 100));
    p.observe_end("test", Duration::from_millis(1120), 11);
    let t = stub.entries();
    assert_eq!(t.len(), 2);
    // (1120 − 120) / (11 − 1) = 100 ms per token, with the decode endpoint's snapshot.
    assert_eq!((t[1].actual_ttft_ms, t[1].actual_tpot_ms), (0.0, 100.0));
    assert_eq!((t[1].features.prefix_cache_score, t[1].features.num_request_running), (0.0, 2));
    assert_eq!((p.running_requests("pod"), p.tracked_requests()), (0, 0), "cleaned up");
    let m = &p.metrics().models["m"];
    assert_eq!((m.ttft.count, m.tpot.count, m.ttft_slo_violations, m.tpot_slo_violations), (1, 1, 1, 1));
    // The end of an unknown (or already ended) request does nothing.
    p.observe_end("test", Duration::from_millis(5), 2);
    assert_eq!(stub.entries().len(), 2);
}

#[test]
fn a_single_chunk_stream_trains_nothing() {
    // Mirrors TestPredictedLatency_StreamingMode_ResponseBody_SingleChunk.
    let stub = Stub::fixed(80.0, 30.0);
    let (p, _) = producer(streaming(), &stub);
    dispatch(&p, &req_slo("one", "100", "50"), "default", &ep("pod", 0.5, 0, 0));
    p.observe_end("one", Duration::from_millis(300), 1);
    assert!(stub.entries().is_empty());
    assert_eq!(p.running_requests("pod"), 0);
}

#[test]
fn without_streaming_ttft_is_the_e2e_latency() {
    // Mirrors TestPredictedLatency_NonStreamingMode_ResponseBody_FirstToken and
    // _FinalToken: the first chunk is ignored, the end trains TTFT := e2e, no TPOT.
    let stub = Stub::fixed(80.0, 30.0);
    let (p, _) = producer(ProducerConfig::default(), &stub);
    dispatch(&p, &req_slo("r", "100", "50"), "default", &ep("pod", 0.5, 0, 0));
    p.observe_first_token("r", Duration::from_millis(10));
    assert!(stub.entries().is_empty());
    p.observe_end("r", Duration::from_millis(900), 50);
    let t = stub.entries();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].actual_ttft_ms, t[0].actual_tpot_ms), (900.0, 0.0));
    let m = &p.metrics().models["m"];
    assert_eq!((m.ttft.count, m.tpot.count, m.ttft_slo_violations), (1, 0, 1));
    assert!((m.predicted_ttft.sum - 0.08).abs() < 1e-12, "the chosen endpoint's prediction, in seconds");
}

#[test]
fn disaggregated_ttft_trains_on_the_prefill_endpoint() {
    // The router's processFirstTokenForLatencyPrediction prefill branch.
    let stub = Stub::fixed(80.0, 30.0);
    let (p, _) = producer(ProducerConfig { endpoint_role_label: "role".into(), ..streaming() }, &stub);
    let mut pre = ep("pre", 0.9, 3, 0);
    pre.labels.insert("role".into(), "prefill".into());
    pre.inflight.prompt_tokens = 4000;
    let mut dec = ep("dec", 0.2, 0, 0);
    dec.labels.insert("role".into(), "decode".into());
    let r = req_slo("pd", "500", "50");
    dispatch(&p, &r, "decode", &dec);
    dispatch(&p, &r, PREFILL_PROFILE, &pre);
    assert_eq!((p.running_requests("dec"), p.running_requests("pre")), (1, 0), "queued on the destination");
    p.observe_first_token("pd", Duration::from_millis(400));
    p.observe_end("pd", Duration::from_millis(600), 5);
    let t = stub.entries();
    assert_eq!((t[0].features.pod_type.as_str(), t[0].features.prefill_tokens_in_flight), ("prefill", 4000));
    assert_eq!((t[1].features.pod_type.as_str(), t[1].actual_tpot_ms), ("decode", 50.0));
}

#[test]
fn contexts_expire_after_the_ttl() {
    // Mirrors plugin_test.go TestSloContextStoreEviction, on a manual clock.
    let stub = Stub::fixed(80.0, 30.0);
    let cfg = ProducerConfig { context_ttl: Duration::from_millis(100), ..streaming() };
    let (p, clock) = producer(cfg, &stub);
    let e = ep("pod", 0.5, 0, 0);
    dispatch(&p, &req_slo("old", "100", "50"), "default", &e);
    clock.advance(Duration::from_millis(60));
    dispatch(&p, &req_slo("young", "100", "50"), "default", &e);
    // Hearing of a request restarts its TTL (ttlcache touches on every hit).
    clock.advance(Duration::from_millis(30));
    p.observe_first_token("old", Duration::from_millis(80));
    clock.advance(Duration::from_millis(80));
    assert_eq!((p.tracked_requests(), p.running_requests("pod")), (1, 1), "young expired at 160 ms");
    assert!(p.dispatch("old").is_some());
    clock.advance(Duration::from_millis(30));
    assert_eq!((p.tracked_requests(), p.running_requests("pod")), (0, 0));
    // Its end, after expiry, trains nothing more.
    p.observe_end("old", Duration::from_millis(300), 5);
    assert_eq!(stub.entries().len(), 1);
    // contextTTL 0: never expires.
    let (p, clock) = producer(ProducerConfig { context_ttl: Duration::ZERO, ..streaming() }, &stub);
    dispatch(&p, &req_slo("r", "100", "50"), "default", &e);
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(p.tracked_requests(), 1);
}

fn registry() -> PluginRegistry {
    let mut r = PluginRegistry::with_builtins();
    register(&mut r);
    r
}

fn build(t: &str, params: Value) -> Result<PluginHandle, String> {
    let r = registry();
    let f = r.get(t).unwrap_or_else(|| panic!("{t} not registered"));
    f(t, &params)
}

#[test]
fn producer_parameters() {
    // Mirrors plugin_test.go TestPredictedLatencyFactory and
    // TestPredictedLatencyFactoryInvalidJSON.
    let c = |v: Value| ProducerConfig::from_params(&v);
    assert!(
        c(json!({"samplingMean": 150.0, "maxDecodeTokenSamplesForPrediction": 30, "sloBufferFactor": 1.2})).is_ok()
    );
    assert_eq!(c(json!({})), Ok(ProducerConfig::default()));
    assert!(c(json!({"samplingMean": -1.0, "maxDecodeTokenSamplesForPrediction": -1})).is_ok(), "deprecated: ignored");
    assert!(c(json!({"sloBufferFactor": 0})).unwrap_err().contains("sloBufferFactor must be > 0"));
    assert!(c(json!({"samplingMean": "100"})).unwrap_err().contains("samplingMean"));
    assert!(
        c(json!({"maxDecodeTokenSamplesForPrediction": 20.5}))
            .unwrap_err()
            .contains("maxDecodeTokenSamplesForPrediction")
    );
    // contextTTL: Go's time.Duration is integer nanoseconds in JSON; llmd also reads "5m".
    assert_eq!(c(json!({"contextTTL": 100_000_000})).unwrap().context_ttl, Duration::from_millis(100));
    assert_eq!(c(json!({"contextTTL": "2m"})).unwrap().context_ttl, Duration::from_secs(120));
    assert!(c(json!({"contextTTL": -1})).unwrap_err().contains("contextTTL"));
    let full = c(json!({
        "streamingMode": true, "endpointRoleLabel": "llm-d.ai/role", "predictInProduce": false,
        "prefixMatchInfoProducerName": "p", "inFlightLoadProducerName": "i",
        "useEncoderCacheFeatures": false, "encoderCacheMatchInfoProducerName": "mm"
    }))
    .unwrap();
    assert!(full.streaming_mode && !full.predict_in_produce);
    assert_eq!(full.endpoint_role_label, "llm-d.ai/role");
    let e = c(json!({"useEncoderCacheFeatures": true})).unwrap_err();
    assert!(e.contains("useEncoderCacheFeatures") && e.contains("not built"), "{e}");
    assert!(c(json!({"streamingmode": true})).unwrap().streaming_mode, "keys match ignoring case, as Go's");
    assert!(c(json!({"streamMode": true})).unwrap_err().contains("\"streamMode\""));
    // llmd's model parameters.
    assert_eq!(c(json!({"objective": "mean"})).unwrap().model.objective, Objective::Mean);
    assert_eq!(c(json!({"quantile": 0.5})).unwrap().model.objective, Objective::Quantile(0.5));
    assert!(c(json!({"quantile": 1.0})).unwrap_err().contains("quantile"));
    assert!(c(json!({"objective": "mean", "quantile": 0.5})).unwrap_err().contains("quantile"));
    assert!(c(json!({"objective": "median"})).unwrap_err().contains("objective"));
    assert!(c(json!({"minTrainingSamples": 10, "maxTrainingSamples": 5})).unwrap_err().contains("minTrainingSamples"));
    assert_eq!(
        c(json!({"maxTrainingSamples": 50, "minTrainingSamples": 5})).unwrap().model,
        ModelConfig { objective: Objective::Quantile(0.9), max_samples: 50, min_samples: 5 }
    );
}

#[test]
fn every_type_registers_with_the_routers_parameters() {
    for (t, params) in [
        (PREDICTED_LATENCY_PRODUCER, json!({"sloBufferFactor": 1.0, "contextTTL": 300_000_000_000_i64})),
        (
            LATENCY_SCORER,
            json!({"ttftWeight": 0.8, "compositePrefixWeight": 1, "latencyPredictionInfoProducerName": "x"}),
        ),
        (SLO_HEADROOM_TIER_FILTER, json!({"epsilonExploreNeg": 0.01})),
        (
            PREFIX_CACHE_AFFINITY_FILTER,
            json!({"affinityThreshold": 0.99, "ttftSource": "latencyPredictor", "maxTTFTPenaltyMs": 5000}),
        ),
        (LATENCY_SLO_ADMITTER, json!({"latencyPredictionInfoProducerName": "predicted-latency-producer"})),
    ] {
        let h = build(t, params).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(h.type_name, t);
        let roles = (h.observer.is_some(), h.scorer.is_some(), h.filter.is_some(), h.flow.is_some());
        let want = match t {
            PREDICTED_LATENCY_PRODUCER => (true, false, false, false),
            LATENCY_SCORER => (false, true, false, false),
            LATENCY_SLO_ADMITTER => (false, false, false, true),
            _ => (false, false, true, false),
        };
        assert_eq!(roles, want, "{t}");
        let e = build(t, json!({"bogus": 1})).err().unwrap_or_else(|| panic!("{t} took bogus"));
        assert!(e.contains("\"bogus\""), "{t}: {e}");
    }
    assert_eq!(
        build(LATENCY_SLO_ADMITTER, json!({})).unwrap().flow.map(|f| f.type_name()),
        Some("latency-slo-admitter")
    );
}

/// Loads `yaml` with the latency types registered and bound, as the config loader will
/// once it calls [`register`] and [`bind`]: the profiles take the bound roles.
fn load(yaml: &str) -> Result<SchedulerConfig, String> {
    let mut cfg = SchedulerConfig::from_yaml(yaml, "test.yaml", &registry()).map_err(|e| e.to_string())?;
    let doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    let named: Vec<(String, String, Value)> = doc["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let t = p["type"].as_str().unwrap_or_default().to_string();
            let n = p["name"].as_str().map_or_else(|| t.clone(), String::from);
            (n, t, p.get("parameters").cloned().unwrap_or(Value::Null))
        })
        .collect();
    bind(&named, &mut cfg.plugins).map_err(|(n, e)| format!("plugin {n:?}: {e}"))?;
    let plugins = cfg.plugins.clone();
    for (prof, raw) in cfg.profiles.iter_mut().zip(doc["schedulingProfiles"].as_array().into_iter().flatten()) {
        for (n, f) in &mut prof.filters {
            if let Some(b) = plugins.get(n).and_then(|h| h.filter.clone()) {
                *f = b;
            }
        }
        for (n, s, _) in &mut prof.scorers {
            if let Some(b) = plugins.get(n).and_then(|h| h.scorer.clone()) {
                *s = b;
            }
        }
        prof.observers = raw["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| plugins.get(r["pluginRef"].as_str()?)?.observer.clone())
            .collect();
    }
    Ok(cfg)
}

fn chart_yaml() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs/llm-d-router/extra/chart-default-plugins-latency-predictor.yaml");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn binding_creates_the_default_producer_and_refuses_missing_named_ones() {
    // Only consumers: the default producer is created, shared by all of them.
    let yaml = "plugins:\n- type: latency-scorer\n- type: slo-headroom-tier-filter\n- type: latency-slo-admitter\n- type: max-score-picker\n";
    let cfg = load(yaml).unwrap();
    let ps = latency_producers(&cfg);
    assert_eq!(ps.len(), 1);
    assert_eq!((ps[0].name(), ps[0].config()), (PREDICTED_LATENCY_PRODUCER, &ProducerConfig::default()));
    assert_eq!(ps[0].prefix_source().map(|s| s.name()), Some("approx-prefix-cache-producer"));
    assert_eq!(latency_observers(&cfg).len(), 1);
    // A named producer that is not configured: the router's error.
    let yaml = "plugins:\n- type: latency-scorer\n  parameters: {latencyPredictionInfoProducerName: mine}\n";
    let e = load(yaml).unwrap_err();
    assert!(
        e.contains("no default producer found for missing data key LatencyPredictionInfoDataKey/mine, consumed by latency-scorer"),
        "{e}"
    );
    let yaml = "plugins:\n- type: predicted-latency-producer\n  parameters: {inFlightLoadProducerName: ifl}\n";
    assert!(load(yaml).unwrap_err().contains("InFlightLoadDataKey/ifl"));
    let yaml = "plugins:\n- type: prefix-cache-affinity-filter\n  parameters: {prefixMatchInfoProducerName: nope}\n";
    assert!(load(yaml).unwrap_err().contains("PrefixCacheMatchInfoDataKey/nope"));
    // A configured, renamed producer is used; no default one is made.
    let yaml = "plugins:\n- type: predicted-latency-producer\n  name: plp\n  parameters: {streamingMode: true}\n- type: latency-scorer\n  parameters: {latencyPredictionInfoProducerName: plp}\n";
    let cfg = load(yaml).unwrap();
    let ps = latency_producers(&cfg);
    assert_eq!(ps.len(), 1);
    assert!(ps[0].name() == "plp" && ps[0].config().streaming_mode);
    // The affinity filter on the throughput source needs no producer.
    let cfg = load("plugins:\n- type: prefix-cache-affinity-filter\n").unwrap();
    assert!(latency_producers(&cfg).is_empty());
}

#[test]
fn the_prefix_match_comes_from_the_configured_scorer_or_a_private_index() {
    let yaml = "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSize: 4}\n- type: predicted-latency-producer\n- type: latency-scorer\n";
    let cfg = load(yaml).unwrap();
    let p = &latency_producers(&cfg)[0];
    let src = p.prefix_source().unwrap();
    // The configured scorer's index, learning through the consumers' forwarding even
    // though the scorer is in no profile here.
    let eps = [ep("a", 0.0, 0, 0), ep("b", 0.0, 0, 0)];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let r = LlmRequest { prompt: "abcdefghijklmnop".into(), ..req("1", &[]) };
    let mut st = CycleState::default();
    assert_eq!(src.ratios(&mut st, &r, &refs), [0.0, 0.0]);
    let scorer_observer = cfg.plugins[LATENCY_SCORER].observer.clone().unwrap();
    scorer_observer.on_pick(&st, &r, "default", &eps[1]);
    let r2 = LlmRequest { id: "2".into(), ..r.clone() };
    assert_eq!(src.ratios(&mut CycleState::default(), &r2, &refs), [0.0, 1.0]);
    // The prefix-cache-scorer itself sees the same history.
    let s = cfg.plugins["prefix-cache-scorer"].scorer.clone().unwrap();
    assert_eq!(s.score(&mut CycleState::default(), &r2, &refs), [0.0, 1.0]);
    // Without a prefix scorer: a private index with the router's defaults.
    let cfg = load("plugins:\n- type: predicted-latency-producer\n").unwrap();
    let p = &latency_producers(&cfg)[0];
    let r = LlmRequest { token_ids: Some((0..64).collect()), ..req("3", &[]) };
    dispatch(p, &r, "default", &eps[0]);
    let r4 = LlmRequest { id: "4".into(), ..r };
    assert_eq!(p.prefix_source().unwrap().ratios(&mut CycleState::default(), &r4, &refs), [1.0, 0.0]);
}

// The synthetic cluster's law: TTFT = 20 + 0.05·uncached prompt tokens + 30·waiting.
fn true_ttft(f: &Features) -> f64 {
    20.0 + 0.05 * f.input_token_length as f64 * (1.0 - f.prefix_cache_score) + 30.0 * f.num_request_waiting as f64
}

#[test]
fn the_chart_pipeline_learns_and_routes_by_predicted_latency() {
    let cfg = load(&chart_yaml()).unwrap();
    assert!(cfg.plugins[LATENCY_SLO_ADMITTER].flow.is_some());
    let producers = latency_producers(&cfg);
    assert_eq!(producers.len(), 1);
    let p = producers[0].clone();
    let clock = Arc::new(ManualClock::new());
    p.bind_clock(clock.clone());
    let sched = Scheduler::new(cfg, 7);
    let eps = [ep("busy", 0.6, 8, 4), ep("idle", 0.1, 0, 0), ep("mid", 0.3, 3, 2)];
    let mut picks: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..400 {
        let r = LlmRequest { prompt: format!("request {i} ").repeat(40 + i % 50), ..req(&i.to_string(), &[]) };
        let pick = sched.pick(&r, &eps).unwrap();
        let chosen = pick.destination().unwrap().endpoint.clone();
        // The snapshot the observers recorded trains the model with the true latency.
        let (target, _) = p.dispatch(&r.id).unwrap();
        let t = target.unwrap();
        assert_eq!(t.endpoint, chosen);
        if i >= 200 {
            *picks.entry(chosen).or_default() += 1;
        }
        let e2e = true_ttft(&t.features);
        clock.advance(Duration::from_millis(1));
        p.observe_end(&r.id, Duration::from_secs_f64(e2e / 1000.0), 20);
    }
    let stats = p.model().unwrap().stats();
    assert_eq!((stats.ttft_seen, stats.tpot_seen), (400, 0), "non-streaming trains TTFT only");
    assert_eq!(p.tracked_requests(), 0);
    // Trained: the predictions follow the law (noise-free: the p90 sits on the mean).
    let r = LlmRequest { prompt: "fresh ".repeat(300), ..req("probe", &[]) };
    let mut st = CycleState::default();
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let infos = p.predictions(&mut st, &r, &refs);
    for (e, i) in eps.iter().zip(&infos) {
        let want = true_ttft(&p.features(&r, e, 0.0));
        let got = i.unwrap().ttft;
        assert!((got - want).abs() < 5.0, "{}: predicted {got:.1}, true {want:.1}", e.id);
    }
    // Without SLOs all headroom is negative and nothing is dispatched: the scorer
    // bin-packs by |headroom|, the fastest endpoint scoring highest, and the weighted
    // random picker follows.
    assert!(picks["idle"] > picks.get("mid").copied().unwrap_or(0), "{picks:?}");
    assert!(picks["idle"] > 100, "{picks:?}");
    assert!(picks.get("busy").copied().unwrap_or(0) < 20, "{picks:?}");
}

#[test]
fn the_admitter_and_tier_filter_act_on_learned_predictions() {
    let yaml = "plugins:\n\
- type: predicted-latency-producer\n  parameters: {objective: mean}\n\
- type: slo-headroom-tier-filter\n  parameters: {epsilonExploreNeg: 0}\n\
- type: latency-scorer\n- type: latency-slo-admitter\n- type: max-score-picker\n\
schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: slo-headroom-tier-filter\n  - pluginRef: latency-scorer\n  - pluginRef: max-score-picker\n";
    let cfg = load(yaml).unwrap();
    let p = latency_producers(&cfg)[0].clone();
    // Warm start from recorded samples of the law.
    let mut entries = Vec::new();
    for i in 0..200_u64 {
        let f = Features {
            input_token_length: 100 + (i * 37) % 2000,
            num_request_waiting: i % 9,
            num_request_running: i % 5,
            kv_cache_percentage: (i % 10) as f64 / 10.0,
            ..Default::default()
        };
        entries.push(TrainingEntry { actual_ttft_ms: true_ttft(&f), features: f, ..Default::default() });
    }
    p.train(&entries);
    // 100 prompt tokens: 25 ms + 30 ms per waiting request.
    let eps = [ep("slow", 0.5, 6, 3), ep("fast", 0.5, 1, 3), ep("ok", 0.5, 2, 3)];
    let refs: Vec<&Endpoint> = eps.iter().collect();
    let r = req_slo("r", "100", "0");
    let infos = p.predictions(&mut CycleState::default(), &r, &refs);
    let ttft: Vec<f64> = infos.iter().map(|i| i.unwrap().ttft).collect();
    for (got, want) in ttft.iter().zip([205.0, 55.0, 85.0]) {
        assert!((got - want).abs() < 2.0, "{ttft:?}");
    }
    // Tier filter: only the endpoints within the 100 ms SLO; the scorer (least) then
    // prefers the tighter fit ("ok", 15 ms headroom, over "fast", 45 ms).
    let sched = Scheduler::new(cfg.clone(), 1);
    let pick = sched.pick(&r, &eps).unwrap();
    assert_eq!(pick.destination().unwrap().endpoint, "ok");
    // The admitter: a sheddable request none can serve in time is refused when all are
    // busy and warm; a valid endpoint, an idle one or a cold one admits it.
    let admitter = match &cfg.plugins[LATENCY_SLO_ADMITTER].flow {
        Some(crate::flowcontrol::FlowPlugin::Admitter(a)) => a.clone(),
        _ => panic!("no admitter"),
    };
    let tight = req_slo("t", "30", "0");
    let busy = [ep("a", 0.5, 6, 3), ep("b", 0.5, 2, 3)];
    let busy_refs: Vec<&Endpoint> = busy.iter().collect();
    let e = admitter.admit(&tight, -1, &busy_refs, &mut || 0.0).unwrap_err();
    assert_eq!(e.message, admitter::NO_VALID_ENDPOINT);
    assert!(admitter.admit(&tight, 0, &busy_refs, &mut || 0.0).is_ok(), "not sheddable");
    assert!(admitter.admit(&req_slo("t", "300", "0"), -1, &busy_refs, &mut || 0.0).is_ok(), "valid");
    let idle = [ep("a", 0.5, 6, 3), ep("b", 0.5, 2, 0)];
    let idle_refs: Vec<&Endpoint> = idle.iter().collect();
    assert!(admitter.admit(&tight, -1, &idle_refs, &mut || 0.0).is_ok(), "idle");
}

// A model trained once on random data, for the property below.
fn trained_model() -> &'static OnlineLatencyModel {
    static MODEL: OnceLock<OnlineLatencyModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let model = OnlineLatencyModel::new(ModelConfig::default());
        let mut rng = llmd_kvcache::rng::SplitMix64::new(3);
        let entries: Vec<TrainingEntry> = (0..300)
            .map(|_| {
                let f = Features {
                    kv_cache_percentage: rng.next_f64(),
                    input_token_length: (rng.next_f64() * 8000.0) as u64,
                    num_request_waiting: (rng.next_f64() * 20.0) as u64,
                    num_request_running: (rng.next_f64() * 64.0) as u64,
                    prefix_cache_score: rng.next_f64(),
                    prefill_tokens_in_flight: (rng.next_f64() * 20000.0) as i64,
                    ..Default::default()
                };
                TrainingEntry {
                    actual_ttft_ms: true_ttft(&f) + 20.0 * rng.next_f64(),
                    actual_tpot_ms: 10.0 + f.num_request_running as f64 * 0.3 + rng.next_f64(),
                    features: f,
                    ..Default::default()
                }
            })
            .collect();
        model.add_training_data_bulk(&entries);
        model
    })
}

fn any_features() -> impl Strategy<Value = Features> {
    let finite = prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL;
    (
        finite,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        finite,
        (any::<u64>(), any::<u64>()),
        prop::sample::select(vec!["", "prefill", "decode"]),
        any::<i64>(),
    )
        .prop_map(|(kv, input, waiting, running, prefix, (enc_in, enc_match), pod, tokens)| Features {
            kv_cache_percentage: kv,
            input_token_length: input,
            num_request_waiting: waiting,
            num_request_running: running,
            num_tokens_generated: 1,
            prefix_cache_score: prefix,
            encoder_input_size: enc_in,
            encoder_matched_size: enc_match,
            pod_type: pod.to_string(),
            prefill_tokens_in_flight: tokens,
            decode_tokens_in_flight: 0,
        })
}

fn any_info() -> impl Strategy<Value = Option<LatencyPredictionInfo>> {
    let h = -1e6..1e6_f64;
    prop::option::of((h.clone(), h, 0..4_usize).prop_map(|(t, p, d)| LatencyPredictionInfo {
        ttft_valid: t >= 0.0,
        tpot_valid: p >= 0.0,
        ttft_headroom: t,
        tpot_headroom: p,
        ttft: t.abs(),
        tpot: p.abs(),
        dispatched_request_count: d,
    }))
}

fn any_inputs() -> impl Strategy<Value = Vec<ScoreInput>> {
    prop::collection::vec(
        (any_info(), 0..50_u64, 0.0..1.2_f64, 0.0..=1.0_f64).prop_map(|(info, waiting, kv_usage, prefix)| ScoreInput {
            info,
            waiting,
            kv_usage,
            prefix,
        }),
        1..8,
    )
}

fn any_scorer_config() -> impl Strategy<Value = ScorerConfig> {
    (-1.0..2.0_f64, -1.0..2.0_f64, any::<bool>(), 0.0..2.0_f64, 0.0..2.0_f64, 0.0..2.0_f64).prop_map(
        |(t, p, most, kv, q, pre)| ScorerConfig {
            ttft_weight: t,
            tpot_weight: p,
            strategy: if most { scorer::HeadroomStrategy::Most } else { scorer::HeadroomStrategy::Least },
            composite_kv_weight: kv,
            composite_queue_weight: q,
            composite_prefix_weight: pre,
        },
    )
}

/// The property the scheduler relies on: one score per endpoint, each in [0, 1].
fn scores_in_unit_interval(scores: &[f64], n: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(scores.len(), n);
    for s in scores {
        prop_assert!((0.0..=1.0).contains(s), "score {} outside [0, 1] in {:?}", s, scores);
    }
    Ok(())
}

proptest! {
    #[test]
    fn predictions_are_finite_and_non_negative(rows in prop::collection::vec(any_features(), 1..6)) {
        let p = trained_model().predict_bulk_strict(&rows, true).unwrap();
        prop_assert_eq!(p.len(), rows.len());
        for x in p {
            prop_assert!(x.ttft.is_finite() && x.ttft >= 0.0 && x.tpot.is_finite() && x.tpot >= 0.0, "{:?}", x);
        }
    }

    #[test]
    fn scores_are_in_the_unit_interval(cfg in any_scorer_config(), inputs in any_inputs()) {
        scores_in_unit_interval(&score_endpoints(&cfg, &inputs), inputs.len())?;
    }

    #[test]
    fn tiers_keep_someone(infos in prop::collection::vec(any_info(), 1..8), eps in 0.0..=1.0_f64, d in 0.0..1.0_f64) {
        let kept = filters::headroom_tiers(&infos, eps, &mut || d);
        prop_assert!(!kept.is_empty() && kept.iter().all(|&i| i < infos.len()));
    }
}

#[test]
fn the_score_property_catches_a_broken_scorer() {
    // Negative control: the same strategy and property, run on the router's raw scores
    // (w/100 up to 1.01, unclamped), must find a counterexample.
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        failure_persistence: None,
        ..Default::default()
    });
    let result = runner.run(&(any_scorer_config(), any_inputs()), |(cfg, inputs)| {
        scores_in_unit_interval(&score_endpoints_raw(&cfg, &inputs), inputs.len())
    });
    assert!(result.is_err(), "the property check must fail on unclamped scores");
    // And the fixed scorer passes the same runner.
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        failure_persistence: None,
        ..Default::default()
    });
    let ok = runner.run(&(any_scorer_config(), any_inputs()), |(cfg, inputs)| {
        scores_in_unit_interval(&score_endpoints(&cfg, &inputs), inputs.len())
    });
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn model_config_default_matches_the_predictor_server() {
    let m = ModelConfig::default();
    assert_eq!((m.objective, m.max_samples), (Objective::Quantile(0.9), 1000));
}

#[test]
fn binding_again_rebuilds_consistently() {
    // The config loader binds once; binding again (as `load` does once the loader calls
    // `bind` itself) must leave consumers and their observers on the same producer.
    let yaml = "plugins:\n- type: latency-scorer\n- type: max-score-picker\n";
    let mut cfg = load(yaml).unwrap();
    let named = vec![
        (LATENCY_SCORER.to_string(), LATENCY_SCORER.to_string(), Value::Null),
        ("max-score-picker".to_string(), "max-score-picker".to_string(), Value::Null),
    ];
    bind(&named, &mut cfg.plugins).unwrap();
    let ps = latency_producers(&cfg);
    assert_eq!(ps.len(), 1);
    let e = ep("a", 0.1, 0, 0);
    let r = req("x", &[]);
    let observer = cfg.plugins[LATENCY_SCORER].observer.clone().unwrap();
    observer.on_pick(&CycleState::default(), &r, "default", &e);
    assert!(ps[0].dispatch("x").is_some(), "the scorer's observer feeds the producer latency_producers finds");
    // A plugin of another type under the default name: no producer, as in the router.
    let yaml = "plugins:\n- type: max-score-picker\n  name: predicted-latency-producer\n- type: latency-scorer\n";
    let cfg = load(yaml).unwrap();
    assert!(latency_producers(&cfg).is_empty());
}
