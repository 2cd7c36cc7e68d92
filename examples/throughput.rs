//! Offline throughput of one engine replica on a checkpoint: `batch` prompts of
//! `prompt_len` tokens, each generating `max_tokens` greedy tokens (EOS ignored).
//! Prints one JSON line. `scripts/bench_engine_vs_transformers.py` runs it beside
//! transformers' `generate` on the same checkpoint and prompts.
//!
//! Run: `cargo run --release --example throughput -- DIR BATCH PROMPT_LEN MAX_TOKENS`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use llmd::engine::{
    Engine, EngineConfig, KvDtype, LlamaModel, ModelBackend, NewRequest, SamplingParams, SystemClock, Tokenize,
};
use llmd::openai::OpenAiError;

/// Token ids only: the benchmark measures the model, not detokenization.
struct IdsOnly;

impl Tokenize for IdsOnly {
    fn encode(&self, _: &str, _: bool) -> Result<Vec<u32>, OpenAiError> {
        Ok(Vec::new())
    }
    fn decode(&self, _: &[u32], _: bool) -> Result<String, OpenAiError> {
        Ok(String::new())
    }
    fn vocab_size(&self) -> usize {
        0
    }
    fn token_to_id(&self, _: &str) -> Option<u32> {
        None
    }
}
use llmd::kvcache::RequestKeys;

/// The prompts the Python side uses too.
fn prompt(b: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|j| ((b * 131 + j * 17) % (vocab - 10) + 5) as u32).collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, batch, prompt_len, max_tokens] = &args[..] else {
        bail!("usage: throughput DIR BATCH PROMPT_LEN MAX_TOKENS");
    };
    let (batch, prompt_len, max_tokens): (usize, usize, usize) =
        (batch.parse()?, prompt_len.parse()?, max_tokens.parse()?);
    let model = LlamaModel::load(std::path::Path::new(dir)).with_context(|| format!("loading {dir}"))?;
    let vocab = model.config().vocab_size;
    let block_size = 16;
    let per_seq = (prompt_len + max_tokens).div_ceil(block_size) + 1;
    let num_blocks = per_seq * batch + 8;
    let backend = ModelBackend::new(model, num_blocks, block_size, KvDtype::F32)?;
    let cfg = EngineConfig {
        block_size,
        num_blocks,
        max_num_seqs: batch,
        max_num_batched_tokens: 8192,
        max_model_len: prompt_len + max_tokens,
        // Every prompt is distinct; caching would only add lookups.
        enable_prefix_caching: false,
        kv_dtype: KvDtype::F32,
        ..Default::default()
    };
    let mut engine = Engine::new(cfg, Box::new(backend), Arc::new(IdsOnly), vec![], Arc::new(SystemClock::default()))?;
    let start = Instant::now();
    for b in 0..batch {
        engine.add_request(NewRequest {
            id: format!("r{b}"),
            prompt: prompt(b, prompt_len, vocab),
            params: SamplingParams { max_tokens, temperature: 0.0, ignore_eos: true, ..Default::default() },
            keys: RequestKeys::new(),
            kv_transfer: Default::default(),
        })?;
    }
    let mut generated = 0usize;
    while engine.has_work() {
        for out in engine.step()? {
            generated += out.token_ids.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"impl\": \"llmd\", \"batch\": {batch}, \"prompt_len\": {prompt_len}, \"output_tokens\": {generated}, \"seconds\": {secs:.4}, \"output_tokens_per_s\": {:.2}}}",
        generated as f64 / secs
    );
    Ok(())
}
