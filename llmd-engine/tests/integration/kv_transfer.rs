//! Moving a computed prefix between engines: blocks exported from one engine and
//! imported into another give the tokens the second engine computes on its own, and are
//! served as prefix hits; mismatched or malformed exports are rejected with nothing
//! left behind.

use std::sync::Arc;

use llmd_engine::{
    ByteTokenizer, Engine, EngineBuilder, EngineConfig, EngineError, EngineHandle, ExportedPrefix, HandleConfig,
    KvDtype, LatencyModel, ManualClock, ModelBackend, NewRequest, SamplingParams, Tokenize, builtin,
};
use llmd_kvcache::{BlockHasher, HashAlgo, KvEvent, RequestKeys};

const PROMPT: &str = "Kubernetes schedules pods onto nodes; the gateway picks a replica.";

fn engine_with(block_size: usize, num_blocks: usize, dtype: KvDtype, hasher: BlockHasher) -> Engine {
    let max_model_len = (num_blocks * block_size).min(128);
    let cfg = EngineConfig { block_size, num_blocks, max_model_len, kv_dtype: dtype, hasher, ..Default::default() };
    let backend = ModelBackend::new(builtin::model(7).unwrap(), num_blocks, block_size, dtype).unwrap();
    Engine::new(cfg, Box::new(backend), Arc::new(ByteTokenizer), vec![ByteTokenizer::EOS], Arc::new(ManualClock::new()))
        .unwrap()
}

fn engine(dtype: KvDtype) -> Engine {
    engine_with(4, 64, dtype, BlockHasher::default())
}

fn prompt() -> Vec<u32> {
    ByteTokenizer.encode(PROMPT, true).unwrap()
}

fn req(id: &str, prompt: Vec<u32>) -> NewRequest {
    let params = SamplingParams { temperature: 0.0, max_tokens: 12, ignore_eos: true, ..Default::default() };
    NewRequest { id: id.into(), prompt, params, keys: RequestKeys::new(), kv_transfer: Default::default() }
}

/// Runs one greedy request to the end: its tokens and the prompt tokens served from cache.
fn generate(e: &mut Engine, id: &str, prompt: Vec<u32>) -> (Vec<u32>, usize) {
    e.add_request(req(id, prompt)).unwrap();
    let (mut tokens, mut cached) = (Vec::new(), 0);
    while e.has_work() {
        for o in e.step().unwrap() {
            tokens.extend(o.token_ids);
            cached = o.cached_tokens;
        }
    }
    (tokens, cached)
}

fn computed_prefix(dtype: KvDtype) -> ExportedPrefix {
    let mut a = engine(dtype);
    generate(&mut a, "a", prompt());
    a.export_prefix(&prompt(), &RequestKeys::new()).unwrap()
}

fn stored_blocks(e: &mut Engine) -> usize {
    e.take_events()
        .map(|b| {
            b.events
                .iter()
                .map(|ev| match ev {
                    KvEvent::BlockStored(s) => s.block_hashes.len(),
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn an_imported_prefix_gives_the_tokens_the_engine_computes_itself() {
    let p = prompt();
    let full_blocks = p.len() / 4;
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::BF16] {
        let exported = computed_prefix(dtype);
        assert_eq!(exported.num_blocks(), full_blocks, "{dtype}: every full prompt block was cached");
        assert_eq!(exported.token_ids, p[..full_blocks * 4]);
        assert_eq!(exported.data.len(), full_blocks * exported.layout.block_bytes());
        // 4 layers, K and V, 4 slots × 2 heads × 16 dims.
        assert_eq!(exported.layout.block_bytes(), 4 * 2 * 4 * 2 * 16 * dtype.size());

        let (cold, cold_cached) = generate(&mut engine(dtype), "cold", p.clone());
        assert_eq!(cold_cached, 0);

        let mut b = engine(dtype);
        assert_eq!(b.import_prefix(exported.clone()).unwrap(), full_blocks);
        assert_eq!(stored_blocks(&mut b), full_blocks, "imported blocks are announced as stored");
        assert_eq!(b.kv_usage(), 0.0, "imported blocks are cached, not held");
        let (warm, cached) = generate(&mut b, "warm", p.clone());
        // At least one prompt token is always computed.
        assert_eq!(cached, (p.len() - 1) / 4 * 4, "{dtype}");
        assert_eq!(warm, cold, "{dtype}: imported K/V give the tokens computed K/V give");
        let m = b.metrics();
        assert_eq!(m.prefix_hits.get(), cached as u64, "the hit metric shows the import was used");
        assert_eq!(m.prefix_queries.get(), p.len() as u64, "the import itself is not a query");
        // Importing what is already cached writes nothing.
        assert_eq!(b.import_prefix(exported).unwrap(), 0);
    }
}

#[test]
fn corrupted_kv_changes_the_tokens() {
    // Negative control: the equality above would catch an import that wrote the wrong
    // values.
    let mut exported = computed_prefix(KvDtype::F32);
    exported.data.iter_mut().for_each(|b| *b = 0);
    let (cold, _) = generate(&mut engine(KvDtype::F32), "cold", prompt());
    let mut b = engine(KvDtype::F32);
    b.import_prefix(exported).unwrap();
    let (warm, cached) = generate(&mut b, "warm", prompt());
    assert!(cached > 0);
    assert_ne!(warm, cold);
}

/// Asserts the engine holds nothing from a failed import: no blocks in use, no events,
/// and the prompt is computed from scratch.
fn assert_untouched(mut b: Engine) {
    assert_eq!(b.kv_usage(), 0.0);
    assert_eq!(stored_blocks(&mut b), 0, "a rejected import stores nothing");
    let (_, cached) = generate(&mut b, "after", prompt());
    assert_eq!(cached, 0, "no hashes were registered");
}

#[test]
fn mismatched_or_malformed_exports_are_rejected_and_leave_nothing_behind() {
    let good = computed_prefix(KvDtype::F32);

    let mut b = engine(KvDtype::F16);
    match b.import_prefix(good.clone()) {
        Err(EngineError::KvLayoutMismatch { field: "dtype", expected, got }) => {
            assert_eq!((expected.as_str(), got.as_str()), ("float16", "float32"));
        }
        other => panic!("{other:?}"),
    }
    assert_untouched(b);

    let mut b = engine_with(8, 32, KvDtype::F32, BlockHasher::default());
    let err = b.import_prefix(good.clone()).unwrap_err();
    assert!(matches!(err, EngineError::KvLayoutMismatch { field: "block_size", .. }), "{err}");
    assert_untouched(b);

    let mut b = engine(KvDtype::F32);
    let mut short = good.clone();
    short.data.pop();
    let err = b.import_prefix(short).unwrap_err();
    assert!(matches!(err, EngineError::KvTransfer(_)), "{err}");
    assert_untouched(b);

    // An engine hashing with another seed would file the blocks under hashes no request
    // of its own ever looks up.
    let mut b = engine_with(4, 64, KvDtype::F32, BlockHasher::new(HashAlgo::Sha256Cbor, "other seed"));
    let err = b.import_prefix(good.clone()).unwrap_err();
    assert!(err.to_string().contains("hash"), "{err}");
    assert_untouched(b);

    // Too few free blocks: all or nothing.
    let mut b = engine_with(4, 8, KvDtype::F32, BlockHasher::default());
    let err = b.import_prefix(good).unwrap_err();
    assert!(matches!(err, EngineError::KvCache(_)), "{err}");
    assert_eq!(b.kv_usage(), 0.0);
    assert_eq!(stored_blocks(&mut b), 0);
}

#[test]
fn the_handle_moves_a_prefix_between_engine_threads() {
    let p = prompt();
    let (cold, _) = generate(&mut engine(KvDtype::F16), "cold", p.clone());
    let a = EngineHandle::spawn(engine(KvDtype::F16), HandleConfig::default()).unwrap();
    let first: Vec<u32> = a.submit(req("a", p.clone())).unwrap().flat_map(|o| o.token_ids).collect();
    assert_eq!(first, cold);
    let exported = a.export_prefix(p.clone(), RequestKeys::new()).unwrap();
    a.shutdown();

    let b = EngineHandle::spawn(engine(KvDtype::F16), HandleConfig::default()).unwrap();
    assert_eq!(b.import_prefix(exported).unwrap(), p.len() / 4);
    let mut tokens = Vec::new();
    let mut cached = 0;
    for o in b.submit(req("b", p.clone())).unwrap() {
        tokens.extend(o.token_ids);
        cached = o.cached_tokens;
    }
    assert_eq!(tokens, cold);
    assert!(cached > 0);
    b.shutdown();
}

#[test]
fn the_simulator_moves_prefixes_as_blocks_with_no_bytes() {
    let sim = || {
        EngineBuilder::sim(LatencyModel::default())
            .clock(Arc::new(ManualClock::new()))
            .block_size(4)
            .num_blocks(64)
            .max_model_len(128)
            .build()
            .unwrap()
            .engine
    };
    let p = prompt();
    let mut a = sim();
    let (cold, _) = generate(&mut a, "a", p.clone());
    let exported = a.export_prefix(&p, &RequestKeys::new()).unwrap();
    assert_eq!((exported.num_blocks(), exported.layout.num_layers, exported.data.len()), (p.len() / 4, 0, 0));
    let mut b = sim();
    assert_eq!(b.import_prefix(exported).unwrap(), p.len() / 4);
    let (warm, cached) = generate(&mut b, "b", p.clone());
    assert_eq!((warm, cached), (cold, (p.len() - 1) / 4 * 4));
}
