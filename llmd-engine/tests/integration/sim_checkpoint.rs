//! The simulator speaking a checkpoint's tokenizer (`--sim --model DIR`): the
//! checkpoint's vocabulary, context length and tokenizer, no weights read, simulated
//! compute on an injected clock.

use std::path::PathBuf;
use std::sync::Arc;

use llmd_engine::{EngineBuilder, LatencyModel, ManualClock, ModelConfig, NewRequest, SamplingParams};
use llmd_kvcache::RequestKeys;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn a_simulated_checkpoint_uses_its_tokenizer_and_shape_but_not_its_weights() {
    let dir = fixture("qwen2-bias-yarn-f16");
    let shape = ModelConfig::from_dir(&dir).unwrap();
    let clock = Arc::new(ManualClock::new());
    let built =
        EngineBuilder::sim_checkpoint(&dir, LatencyModel::default()).clock(clock).num_blocks(64).build().unwrap();
    let mut engine = built.engine;
    assert_eq!(engine.config().model_name, "qwen2-bias-yarn-f16");
    assert_eq!(engine.config().max_model_len, shape.max_position_embeddings.min(8192));
    // The checkpoint's own tokenizer, not the simulator's byte one.
    let real = llmd_engine::PromptRenderer::from_dir(&dir).unwrap().tokenizer;
    let ids = engine.tokenizer().encode("hello world, hello simulator", false).unwrap();
    assert_eq!(ids, real.encode("hello world, hello simulator", false).unwrap());
    assert!(ids.len() < "hello world, hello simulator".len(), "byte-level ids: {ids:?}");
    // A request runs; what it generates is in the checkpoint's vocabulary.
    engine
        .add_request(NewRequest {
            id: "r".into(),
            prompt: ids,
            params: SamplingParams { max_tokens: 8, ignore_eos: true, ..Default::default() },
            keys: RequestKeys::new(),
            kv_transfer: Default::default(),
        })
        .unwrap();
    let mut out = Vec::new();
    while engine.has_work() {
        for o in engine.step().unwrap() {
            out.extend(o.token_ids);
        }
    }
    assert_eq!(out.len(), 8);
    assert!(out.iter().all(|&t| (t as usize) < shape.vocab_size), "{out:?}");
    // Weights are never opened: a directory without them still simulates.
    let bare = std::env::temp_dir().join(format!("llmd-sim-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), bare.join(f)).unwrap();
        }
    }
    let built = EngineBuilder::sim_checkpoint(&bare, LatencyModel::default()).num_blocks(64).build();
    let _ = std::fs::remove_dir_all(&bare);
    built.unwrap();
}
