//! The engine core on the built-in model: batching, chunked prefill, prefix reuse,
//! preemption, stop conditions, aborts, bad input, metrics and events.

use std::collections::HashMap;
use std::sync::Arc;

use llmd_engine::builtin;
use llmd_engine::{
    ByteTokenizer, Engine, EngineConfig, EngineError, FinishReason, KvDtype, ManualClock, ModelBackend, NewRequest,
    RequestOutput, SamplingParams, Tokenize,
};
use llmd_kvcache::{KvEvent, RequestKeys};

fn engine(num_blocks: usize, max_batched: usize, max_model_len: usize) -> Engine {
    let cfg = EngineConfig {
        block_size: 4,
        num_blocks,
        max_num_batched_tokens: max_batched,
        max_model_len,
        kv_dtype: KvDtype::F32,
        ..Default::default()
    };
    let backend = ModelBackend::new(builtin::model(7).unwrap(), num_blocks, 4, KvDtype::F32).unwrap();
    Engine::new(cfg, Box::new(backend), Arc::new(ByteTokenizer), vec![ByteTokenizer::EOS], Arc::new(ManualClock::new()))
        .unwrap()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ignore_eos: true, ..Default::default() }
}

fn req(id: &str, prompt: &str, params: SamplingParams) -> NewRequest {
    NewRequest {
        id: id.into(),
        prompt: ByteTokenizer.encode(prompt, true).unwrap(),
        params,
        keys: RequestKeys::new(),
        kv_transfer: Default::default(),
    }
}

/// Runs to completion; returns each request's tokens, text and final output.
fn run(e: &mut Engine) -> HashMap<String, (Vec<u32>, String, RequestOutput)> {
    let mut acc: HashMap<String, (Vec<u32>, String, RequestOutput)> = HashMap::new();
    let mut steps = 0;
    while e.has_work() {
        for o in e.step().unwrap() {
            let entry = acc.entry(o.id.clone()).or_insert_with(|| (Vec::new(), String::new(), o.clone()));
            entry.0.extend(&o.token_ids);
            entry.1.push_str(&o.text);
            entry.2 = o;
        }
        steps += 1;
        assert!(steps < 10_000, "engine did not finish");
    }
    acc
}

const PROMPTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog",
    "Hello",
    "Kubernetes schedules pods onto nodes; the gateway picks a replica.",
    "Paged attention",
];

fn solo(prompt: &str, n: usize) -> Vec<u32> {
    let mut e = engine(256, 4096, 256);
    e.add_request(req("solo", prompt, greedy(n))).unwrap();
    run(&mut e).remove("solo").unwrap().0
}

#[test]
fn batched_chunked_and_preempted_runs_match_solo_runs() {
    let want: Vec<Vec<u32>> = PROMPTS.iter().map(|p| solo(p, 12)).collect();
    // (blocks, token budget): roomy; tiny budget forcing chunked prefill; too few blocks
    // for all four at once, forcing preemption.
    for (blocks, budget) in [(256, 4096), (256, 5), (24, 64)] {
        let mut e = engine(blocks, budget, 80);
        for (i, p) in PROMPTS.iter().enumerate() {
            e.add_request(req(&format!("r{i}"), p, greedy(12))).unwrap();
        }
        let got = run(&mut e);
        for (i, w) in want.iter().enumerate() {
            let (tokens, _, last) = &got[&format!("r{i}")];
            assert_eq!(tokens, w, "request {i} with {blocks} blocks, budget {budget}");
            assert_eq!(last.finished, Some(FinishReason::Length));
        }
        let preemptions =
            metric(&prometheus_text(&e), "vllm:num_preemptions_total{model_name=\"llmd-tiny\",engine=\"0\"}");
        if blocks == 24 {
            assert!(preemptions > 0.0, "expected preemptions with {blocks} blocks");
            // Re-admitting a preempted request is not a new prefix-cache query.
            let prompt_tokens: usize = PROMPTS.iter().map(|p| p.len() + 1).sum();
            let queries =
                metric(&prometheus_text(&e), "vllm:prefix_cache_queries_total{model_name=\"llmd-tiny\",engine=\"0\"}");
            assert_eq!(queries, prompt_tokens as f64);
        } else {
            assert_eq!(preemptions, 0.0);
        }
        assert_eq!(e.kv_usage(), 0.0, "all blocks returned");
    }
}

#[test]
fn a_prefix_cache_hit_gives_the_same_tokens_as_a_cold_run() {
    let mut e = engine(256, 4096, 256);
    let prompt = PROMPTS[2];
    e.add_request(req("cold", prompt, greedy(10))).unwrap();
    let cold = run(&mut e).remove("cold").unwrap();
    assert_eq!(cold.2.cached_tokens, 0);
    e.add_request(req("warm", prompt, greedy(10))).unwrap();
    let warm = run(&mut e).remove("warm").unwrap();
    assert!(warm.2.cached_tokens >= 60, "cached {}", warm.2.cached_tokens);
    assert_eq!(warm.0, cold.0);
    let text = prometheus_text(&e);
    assert!(text.contains("vllm:prefix_cache_hits_total{model_name=\"llmd-tiny\",engine=\"0\"} 64"), "{text}");
}

#[test]
fn stop_strings_stop_tokens_and_seeds() {
    let mut e = engine(256, 4096, 256);
    // Find what greedy produces, then stop on a piece of it.
    e.add_request(req("probe", "Hello", greedy(20))).unwrap();
    let (tokens, text, _) = run(&mut e).remove("probe").unwrap();
    assert_eq!(ByteTokenizer.decode(&tokens, true).unwrap(), text);
    let stop: String = text.chars().skip(5).take(2).collect();
    let cut = text.find(&stop).unwrap();
    e.add_request(req("s", "Hello", SamplingParams { stop: vec![stop.clone()], ..greedy(20) })).unwrap();
    let (_, t, last) = run(&mut e).remove("s").unwrap();
    assert_eq!((t.as_str(), last.finished), (&text[..cut], Some(FinishReason::Stop)));
    assert_eq!(last.stop_reason, Some(llmd_engine::engine::StopReason::Text(stop.clone())));

    e.add_request(req("t", "Hello", SamplingParams { stop_token_ids: vec![tokens[3]], ..greedy(20) })).unwrap();
    let (toks, _, last) = run(&mut e).remove("t").unwrap();
    let first = tokens.iter().position(|&x| x == tokens[3]).unwrap();
    assert_eq!((toks.len(), last.finished), (first + 1, Some(FinishReason::Stop)));
    assert_eq!(last.stop_reason, Some(llmd_engine::engine::StopReason::Token(tokens[3])));

    let sampled = |e: &mut Engine, id: &str, seed| {
        let p = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            max_tokens: 16,
            ignore_eos: true,
            ..Default::default()
        };
        e.add_request(req(id, "Hello", p)).unwrap();
        run(e).remove(id).unwrap().0
    };
    assert_eq!(sampled(&mut e, "a", 5), sampled(&mut e, "b", 5));
    assert_ne!(sampled(&mut e, "c", 5), sampled(&mut e, "d", 6));
}

/// vLLM's `min_tokens`: a stop token greedy would draw first cannot be drawn, nor end
/// the request, before that many tokens (llm-d's sidecar sends `min_tokens: 1`).
#[test]
fn min_tokens_keeps_stop_tokens_out_until_reached() {
    let mut e = engine(256, 4096, 256);
    e.add_request(req("probe", "Hello", greedy(20))).unwrap();
    let (tokens, _, _) = run(&mut e).remove("probe").unwrap();
    let stop = tokens[0];
    // Without min_tokens the first token stops the request at once.
    e.add_request(req("a", "Hello", SamplingParams { stop_token_ids: vec![stop], ..greedy(20) })).unwrap();
    assert_eq!(run(&mut e).remove("a").unwrap().0, vec![stop]);
    // With min_tokens 4 it cannot appear among the first four, and the request runs on.
    let p = SamplingParams { stop_token_ids: vec![stop], min_tokens: 4, ..greedy(20) };
    e.add_request(req("b", "Hello", p)).unwrap();
    let (toks, _, last) = run(&mut e).remove("b").unwrap();
    assert!(toks.len() >= 5, "{toks:?}");
    assert!(!toks[..4].contains(&stop), "{toks:?}");
    assert!(last.finished.is_some());
    // min_tokens 1 with max_tokens 1 (the sidecar's prefill leg): one token, by length.
    let p = SamplingParams { stop_token_ids: vec![stop], min_tokens: 1, ..greedy(1) };
    e.add_request(req("c", "Hello", p)).unwrap();
    let (toks, _, last) = run(&mut e).remove("c").unwrap();
    assert_eq!((toks.len(), last.finished), (1, Some(FinishReason::Length)));
    assert_ne!(toks[0], stop);
}

#[test]
fn abort_frees_blocks_and_bad_requests_are_refused() {
    let mut e = engine(64, 4096, 128);
    e.add_request(req("a", PROMPTS[0], greedy(50))).unwrap();
    e.step().unwrap();
    assert!(e.kv_usage() > 0.0);
    let out = e.abort("a").unwrap();
    assert_eq!(out.finished, Some(FinishReason::Abort));
    assert_eq!(e.kv_usage(), 0.0);
    assert!(!e.has_work());
    assert!(e.abort("a").is_none());

    let cases: Vec<(NewRequest, &str)> = vec![
        (NewRequest { prompt: vec![], ..req("x", "", greedy(1)) }, "prompt"),
        (req("x", &"y".repeat(130), greedy(20)), "context"),
        (NewRequest { prompt: vec![9999], ..req("x", "", greedy(1)) }, "prompt"),
        (req("x", "hi", SamplingParams { temperature: -1.0, ..greedy(1) }), "temperature"),
    ];
    for (r, what) in cases {
        let err = e.add_request(r).unwrap_err();
        match (&err, what) {
            (EngineError::InvalidParam { param, .. }, p) => assert_eq!(param, p),
            (EngineError::ContextTooLong { max: 128, .. }, "context") => {}
            _ => panic!("{what}: {err:?}"),
        }
    }
    e.add_request(req("dup", "hi", greedy(5))).unwrap();
    assert!(matches!(e.add_request(req("dup", "hi", greedy(5))), Err(EngineError::DuplicateRequest(_))));
}

#[test]
fn kv_events_announce_cached_prompt_blocks() {
    let mut e = engine(64, 4096, 128);
    e.add_request(req("a", "0123456789abcdef", greedy(1))).unwrap();
    run(&mut e);
    let batch = e.take_events().expect("events after a prefill");
    let stored: usize = batch
        .events
        .iter()
        .map(|ev| match ev {
            KvEvent::BlockStored(s) => s.block_hashes.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(stored, 4, "17 prompt tokens + 1 generated = 4 full blocks of 4");
    assert!(e.take_events().is_none());
}

/// The value of the sample whose name and labels are `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

fn prometheus_text(e: &Engine) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    e.metrics().register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

#[test]
fn metrics_carry_vllm_names() {
    let mut e = engine(64, 4096, 128);
    e.add_request(req("a", "hello", greedy(3))).unwrap();
    run(&mut e);
    let text = prometheus_text(&e);
    for name in [
        "vllm:num_requests_running{model_name=\"llmd-tiny\",engine=\"0\"} 0",
        "vllm:num_requests_waiting{model_name=\"llmd-tiny\",engine=\"0\"} 0",
        "vllm:kv_cache_usage_perc{model_name=\"llmd-tiny\",engine=\"0\"} 0.0",
        "vllm:prompt_tokens_total{model_name=\"llmd-tiny\",engine=\"0\"} 6",
        "vllm:generation_tokens_total{model_name=\"llmd-tiny\",engine=\"0\"} 3",
        "vllm:request_success_total{model_name=\"llmd-tiny\",engine=\"0\",finished_reason=\"length\"} 1",
        "vllm:time_to_first_token_seconds_count{model_name=\"llmd-tiny\",engine=\"0\"} 1",
        "vllm:inter_token_latency_seconds_count{model_name=\"llmd-tiny\",engine=\"0\"} 2",
        "vllm:e2e_request_latency_seconds_count{model_name=\"llmd-tiny\",engine=\"0\"} 1",
        "vllm:cache_config_info{block_size=\"4\",num_gpu_blocks=\"64\"",
        "vllm:prefix_cache_queries_total{model_name=\"llmd-tiny\",engine=\"0\"} 6",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
}

#[test]
fn the_simulated_backend_runs_on_virtual_time() {
    use llmd_engine::{Clock, LatencyModel, SimBackend};
    use std::time::Duration;
    let clock = Arc::new(ManualClock::new());
    let latency = LatencyModel {
        step_overhead: Duration::from_millis(10),
        per_prefill_token: Duration::from_millis(1),
        per_decode_seq: Duration::from_millis(2),
        per_context_token: Duration::ZERO,
        per_transfer_token: Duration::ZERO,
        per_onboard_token: Duration::ZERO,
        per_disk_token: Duration::ZERO,
    };
    let sim = SimBackend::new(latency, clock.clone(), ByteTokenizer::VOCAB, 4096, 32..127, 9);
    let cfg = EngineConfig { block_size: 16, num_blocks: 1000, max_model_len: 4096, ..Default::default() };
    let mut e =
        Engine::new(cfg, Box::new(sim), Arc::new(ByteTokenizer), vec![ByteTokenizer::EOS], clock.clone()).unwrap();
    e.add_request(req("a", &"p".repeat(99), greedy(5))).unwrap(); // 100 prompt tokens
    let out = run(&mut e).remove("a").unwrap();
    assert_eq!(out.0.len(), 5);
    assert!(out.0.iter().all(|&t| (32..127).contains(&t)));
    // Prefill step: the larger of 10 ms and 100×1 ms; then four decode steps of 10 + 2 ms.
    assert_eq!(clock.now(), Duration::from_millis(100 + 4 * 12));
    let text = prometheus_text(&e);
    assert!(text.contains("vllm:time_to_first_token_seconds_sum{model_name=\"llmd-tiny\",engine=\"0\"} 0.1"), "{text}");
}

/// Fails its `fail_at`-th step, otherwise runs the model.
struct Flaky {
    inner: ModelBackend,
    calls: usize,
    fail_at: usize,
}

impl llmd_engine::Backend for Flaky {
    fn execute(&mut self, inputs: &[llmd_engine::SeqInput<'_>]) -> llmd_engine::Result<Vec<llmd_engine::StepLogits>> {
        self.calls += 1;
        if self.calls == self.fail_at {
            return Err(EngineError::Input("injected failure".into()));
        }
        self.inner.execute(inputs)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
}

#[test]
fn a_failed_step_errors_its_requests_and_never_serves_their_blocks_as_cache_hits() {
    let inner = ModelBackend::new(builtin::model(7).unwrap(), 64, 4, KvDtype::F32).unwrap();
    let cfg = EngineConfig { block_size: 4, num_blocks: 64, max_model_len: 128, ..Default::default() };
    let flaky = Flaky { inner, calls: 0, fail_at: 1 };
    let mut e = Engine::new(
        cfg,
        Box::new(flaky),
        Arc::new(ByteTokenizer),
        vec![ByteTokenizer::EOS],
        Arc::new(ManualClock::new()),
    )
    .unwrap();
    let prompt = PROMPTS[0];
    e.add_request(req("doomed", prompt, greedy(6))).unwrap();
    let out = e.step().unwrap();
    assert_eq!(out[0].finished, Some(FinishReason::Error));
    assert_eq!(e.kv_usage(), 0.0);
    // The same prompt again: nothing may be served from the failed step's blocks.
    e.add_request(req("retry", prompt, greedy(6))).unwrap();
    let got = run(&mut e).remove("retry").unwrap();
    assert_eq!(got.2.cached_tokens, 0);
    assert_eq!(got.0, solo(prompt, 6));
    let text = prometheus_text(&e);
    assert_eq!(
        metric(&text, "vllm:request_success_total{model_name=\"llmd-tiny\",engine=\"0\",finished_reason=\"error\"}"),
        1.0
    );
}
