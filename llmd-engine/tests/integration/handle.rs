//! The engine handle with no HTTP: submitting from plain threads and from async code,
//! aborting by dropping a stream, overload, a panicking backend, shutdown and the KV
//! event subscriber.

use std::sync::Arc;

use llmd_engine::channel::channel;
use llmd_engine::{
    Backend, ByteTokenizer, Engine, EngineBuilder, EngineConfig, EngineError, EngineHandle, FinishReason, HandleConfig,
    KvDtype, ManualClock, ModelBackend, NewRequest, SamplingParams, SeqInput, StepLogits, Tokenize, builtin,
};
use llmd_kvcache::{KvEvent, RequestKeys};

fn engine() -> Engine {
    EngineBuilder::builtin().seed(7).block_size(4).num_blocks(128).max_model_len(256).build().unwrap().engine
}

fn req(id: &str, prompt: &str, max_tokens: usize) -> NewRequest {
    NewRequest {
        id: id.into(),
        prompt: ByteTokenizer.encode(prompt, true).unwrap(),
        params: SamplingParams { temperature: 0.0, max_tokens, ignore_eos: true, ..Default::default() },
        keys: RequestKeys::new(),
        kv_transfer: Default::default(),
    }
}

fn tokens_of(outs: impl IntoIterator<Item = llmd_engine::RequestOutput>) -> (Vec<u32>, Option<FinishReason>) {
    let mut tokens = Vec::new();
    let mut finished = None;
    for o in outs {
        tokens.extend(o.token_ids);
        finished = o.finished.or(finished);
    }
    (tokens, finished)
}

#[test]
fn plain_threads_submit_concurrently_and_get_what_a_lone_engine_gives() {
    let prompts = ["Hello", "The quick brown fox", "Paged attention over blocks"];
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut e = engine();
            e.add_request(req("solo", p, 10)).unwrap();
            let mut outs = Vec::new();
            while e.has_work() {
                outs.extend(e.step().unwrap());
            }
            tokens_of(outs).0
        })
        .collect();
    let handle = EngineHandle::spawn(engine(), HandleConfig::default()).unwrap();
    let threads: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let h = handle.clone();
            let r = req(&format!("r{i}"), p, 10);
            std::thread::spawn(move || tokens_of(h.submit(r).unwrap()))
        })
        .collect();
    for (t, w) in threads.into_iter().zip(want) {
        assert_eq!(t.join().unwrap(), (w, Some(FinishReason::Length)));
    }
    assert!(handle.is_alive());
    handle.shutdown();
    assert!(!handle.is_alive());
    assert!(matches!(handle.submit(req("late", "hi", 2)), Err(EngineError::EngineDead(_))));
}

#[tokio::test]
async fn async_callers_await_the_same_streams() {
    let handle = EngineHandle::spawn(engine(), HandleConfig::default()).unwrap();
    let mut stream = handle.submit_async(req("a", "Hello", 6)).await.unwrap();
    assert_eq!(stream.id(), "a");
    let mut outs = Vec::new();
    while let Some(o) = stream.recv().await {
        outs.push(o);
    }
    assert!(stream.is_finished());
    let (tokens, finished) = tokens_of(outs);
    assert_eq!((tokens.len(), finished), (6, Some(FinishReason::Length)));
    let blocking = handle.clone();
    let again = std::thread::spawn(move || tokens_of(blocking.submit(req("b", "Hello", 6)).unwrap()).0);
    assert_eq!(again.join().unwrap(), tokens);
    // Refusals come back from submit: a duplicate id is not a second stream of the first.
    let first = handle.submit_async(req("dup", "Hello", 50)).await.unwrap();
    assert!(matches!(handle.submit_async(req("dup", "Hello", 5)).await, Err(EngineError::DuplicateRequest(_))));
    assert_eq!(tokens_of(first).0.len(), 50, "the refused duplicate did not abort the original");
}

#[test]
fn dropping_a_stream_aborts_its_request_and_frees_its_blocks() {
    let handle = EngineHandle::spawn(engine(), HandleConfig::default()).unwrap();
    let mut stream = handle.submit(req("long", "a long story", 200)).unwrap();
    assert!(stream.blocking_recv().is_some());
    drop(stream);
    // Commands are handled in order: once a later request has finished, the abort has
    // been too, and the gauges were updated before that request's last output was sent.
    let (tokens, _) = tokens_of(handle.submit(req("next", "hi", 3)).unwrap());
    assert_eq!(tokens.len(), 3);
    let m = handle.metrics();
    assert_eq!(m.running.get(), 0);
    assert_eq!(m.kv_usage.get(), 0.0);
    assert!(m.generation_tokens.get() < 100, "stopped early: {}", m.generation_tokens.get());
    let finished = |r: &str| {
        m.request_success.get_or_create(&llmd_engine::metrics::FinishLabel { finished_reason: r.into() }).get()
    };
    assert_eq!((finished("length"), finished("abort")), (1, 1), "an abort counts under finished_reason=abort");
    handle.shutdown();
}

#[test]
fn too_many_waiting_requests_are_refused_as_overloaded() {
    let handle = EngineHandle::spawn(engine(), HandleConfig { max_queued_requests: 0, kv_events: None }).unwrap();
    assert!(matches!(handle.submit(req("a", "hi", 2)), Err(EngineError::Overloaded { waiting: 0 })));
    let err = handle.submit(NewRequest { prompt: vec![], ..req("b", "", 2) }).unwrap_err();
    assert!(matches!(err, EngineError::Overloaded { .. }), "{err}");
    handle.shutdown();

    let handle = EngineHandle::spawn(engine(), HandleConfig::default()).unwrap();
    let err = handle.submit(NewRequest { prompt: vec![], ..req("b", "", 2) }).unwrap_err();
    assert!(matches!(err, EngineError::InvalidParam { ref param, .. } if param == "prompt"), "{err}");
    handle.shutdown();
}

/// Panics on its first step, as a buggy kernel might.
struct Panicky(ModelBackend);

impl Backend for Panicky {
    fn execute(&mut self, _: &[SeqInput<'_>]) -> llmd_engine::Result<Vec<StepLogits>> {
        panic!("injected panic in the backend");
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn max_context(&self) -> usize {
        self.0.max_context()
    }
}

#[test]
fn a_panicking_engine_ends_its_streams_and_reports_itself_dead() {
    let inner = ModelBackend::new(builtin::model(7).unwrap(), 64, 4, KvDtype::F32).unwrap();
    let cfg = EngineConfig { block_size: 4, num_blocks: 64, max_model_len: 128, ..Default::default() };
    let engine = Engine::new(
        cfg,
        Box::new(Panicky(inner)),
        Arc::new(ByteTokenizer),
        vec![ByteTokenizer::EOS],
        Arc::new(ManualClock::new()),
    )
    .unwrap();
    let handle = EngineHandle::spawn(engine, HandleConfig::default()).unwrap();
    let mut stream = handle.submit(req("a", "hi", 4)).unwrap();
    // The stream ends with no final output, and by then the engine reports itself down.
    assert_eq!(stream.blocking_recv(), None);
    assert!(stream.is_finished());
    assert!(!handle.is_alive());
    assert!(matches!(handle.submit(req("b", "hi", 4)), Err(EngineError::EngineDead(_))));
    handle.shutdown();
}

#[test]
fn kv_event_batches_reach_the_subscriber() {
    let (tx, mut rx) = channel();
    let handle = EngineHandle::spawn(engine(), HandleConfig { kv_events: Some(tx), ..Default::default() }).unwrap();
    tokens_of(handle.submit(req("a", "0123456789abcdef", 1)).unwrap());
    // Joining the thread means every step's batch has been sent.
    handle.shutdown();
    let mut stored = 0;
    while let Some(batch) = rx.try_recv() {
        stored += batch
            .events
            .iter()
            .map(|e| match e {
                KvEvent::BlockStored(s) => s.block_hashes.len(),
                _ => 0,
            })
            .sum::<usize>();
    }
    assert_eq!(stored, 4, "17 prompt tokens + 1 generated = 4 full blocks of 4");
    assert!(rx.is_closed());
}
