//! KV offloading at the engine: host memory (`host`) and the disk tier below it
//! (`disk`), with the helpers both use.

mod disk;
mod host;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_engine::offload::{OffloadConfig, SecondaryTier};
use llmd_engine::{
    ByteTokenizer, Engine, EngineConfig, KvDtype, ManualClock, ModelBackend, NewRequest, SamplingParams, Tokenize,
    builtin,
};
use llmd_kvcache::{KvEvent, RequestKeys};

pub(crate) const BS: usize = 4;
pub(crate) const BLOCKS: usize = 24;

/// The built-in model drawn from `seed` on 24 blocks of 4 tokens, without offloading.
pub(crate) fn engine(seed: u64) -> Engine {
    let cfg = EngineConfig { block_size: BS, num_blocks: BLOCKS, max_model_len: 80, seed, ..Default::default() };
    let backend = ModelBackend::new(builtin::model(seed).unwrap(), BLOCKS, BS, KvDtype::F16).unwrap();
    Engine::new(cfg, Box::new(backend), Arc::new(ByteTokenizer), vec![ByteTokenizer::EOS], Arc::new(ManualClock::new()))
        .unwrap()
}

/// Host memory for `blocks` of the engine's blocks, and a disk tier of 256 under `dir`.
pub(crate) fn offload(e: &Engine, blocks: usize, dir: Option<&Path>) -> OffloadConfig {
    let block = e.kv_block_layout().unwrap().block_bytes();
    let secondary = dir.map(|d| SecondaryTier::Fs {
        root_dir: d.display().to_string(),
        read_threads: 2,
        write_threads: 2,
        max_bytes: Some((block * 256) as u64),
        medium: None,
    });
    OffloadConfig {
        cpu_bytes: (block * blocks) as u64,
        secondary: secondary.into_iter().collect(),
        ..OffloadConfig::from_size_gib(1.0).unwrap()
    }
}

/// A 41-token prompt (10 full blocks and one token) that starts with `seed`.
pub(crate) fn prompt(seed: &str) -> Vec<u32> {
    let mut p = ByteTokenizer.encode(&format!("{seed}: {}", "offloaded blocks come back; ".repeat(4)), true).unwrap();
    p.truncate(41);
    p
}

pub(crate) fn req(id: &str, prompt: Vec<u32>) -> NewRequest {
    let params = SamplingParams { temperature: 0.0, max_tokens: 6, ignore_eos: true, ..Default::default() };
    NewRequest { id: id.into(), prompt, params, keys: RequestKeys::new(), kv_transfer: Default::default() }
}

/// Runs one request alone: its tokens and cached prompt tokens.
pub(crate) fn run(e: &mut Engine, r: NewRequest) -> (Vec<u32>, usize) {
    e.add_request(r).unwrap();
    let (mut tokens, mut cached) = (Vec::new(), 0);
    // Disk reads are real threads: bounded, not slept on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while e.has_work() {
        assert!(Instant::now() < deadline, "engine stuck");
        for o in e.step().unwrap() {
            tokens.extend(&o.token_ids);
            cached = o.cached_tokens;
        }
    }
    (tokens, cached)
}

/// Three other prompts: every block of an earlier one leaves the 24-block device pool.
pub(crate) fn push_out(e: &mut Engine, round: &str) {
    for p in ["bravo", "charlie", "delta"] {
        run(e, req(&format!("{p}{round}"), prompt(p)));
    }
}

pub(crate) fn events(e: &mut Engine) -> Vec<KvEvent> {
    std::iter::from_fn(|| e.take_events()).flat_map(|b| b.events).collect()
}
