//! The CPU engine on a GGUF model: decode tokens/s at batch 1, 8 and 32 and prefill
//! tokens/s, with f32 and with 8-bit matmul inputs, each after a warm-up step. Prints
//! Markdown. `scripts/gguf/bench.sh` runs it beside llama.cpp on the same file and
//! threads (BENCHMARKS.md).
//!
//! `cargo run --release -p llmd-engine --example gguf_bench -- FILE.gguf [THREADS]`

use std::path::Path;
use std::time::Instant;

use llmd_engine::quant::Activations;
use llmd_engine::{CpuAttention, KvDtype, KvShape, LlamaModel, LogitsWanted, PagedKvCache, SeqInput};

const PROMPT: usize = 128;
const STEPS: usize = 64;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: gguf_bench FILE.gguf [THREADS]");
    if let Some(t) = args.next() {
        let threads: usize = t.parse().expect("THREADS is a number");
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("one global pool");
    }
    println!("| inputs | prefill ({PROMPT} tokens) | decode batch 1 | batch 8 | batch 32 |\n|---|---|---|---|---|");
    for activations in [Activations::F32, Activations::Int8] {
        let (model, _) = LlamaModel::load_gguf_with(Path::new(&path), activations).expect("a GGUF model");
        let c = model.config().clone();
        let per_seq = (PROMPT + STEPS + 1).div_ceil(16) + 1;
        let shape =
            KvShape { num_blocks: 32 * per_seq, block_size: 16, kv_heads: c.num_key_value_heads, head_dim: c.head_dim };
        let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 1000 + i * 7).collect();
        let mut row = format!("| {activations:?} |");
        // Prefill: one sequence's prompt in one step, after one untimed.
        let mut prefill = 0.0;
        for round in 0..2 {
            let mut kv = PagedKvCache::new(c.num_hidden_layers, shape, KvDtype::F16).expect("a KV cache");
            let table: Vec<u32> = (0..per_seq as u32).collect();
            let t = Instant::now();
            let seq = SeqInput { tokens: &prompt, start: 0, block_table: &table, logits: LogitsWanted::Last };
            model.forward(&[seq], &mut kv, &CpuAttention).expect("prefill");
            if round == 1 {
                prefill = PROMPT as f64 / t.elapsed().as_secs_f64();
            }
        }
        row += &format!(" {prefill:.0} tok/s |");
        for batch in [1usize, 8, 32] {
            let mut kv = PagedKvCache::new(c.num_hidden_layers, shape, KvDtype::F16).expect("a KV cache");
            let tables: Vec<Vec<u32>> =
                (0..batch).map(|b| ((b * per_seq) as u32..((b + 1) * per_seq) as u32).collect()).collect();
            for t in &tables {
                let seq = SeqInput { tokens: &prompt, start: 0, block_table: t, logits: LogitsWanted::Last };
                model.forward(&[seq], &mut kv, &CpuAttention).expect("prefill");
            }
            let tokens: Vec<[u32; 1]> = (0..batch).map(|b| [2000 + b as u32]).collect();
            let step = |s: usize, kv: &mut PagedKvCache| {
                let seqs: Vec<SeqInput<'_>> = (0..batch)
                    .map(|b| SeqInput {
                        tokens: &tokens[b],
                        start: PROMPT + s,
                        block_table: &tables[b],
                        logits: LogitsWanted::Last,
                    })
                    .collect();
                model.forward(&seqs, kv, &CpuAttention).expect("decode");
            };
            step(0, &mut kv); // warm-up
            let t = Instant::now();
            for s in 1..=STEPS {
                step(s, &mut kv);
            }
            row += &format!(" {:.1} tok/s |", (batch * STEPS) as f64 / t.elapsed().as_secs_f64());
        }
        println!("{row}");
    }
}
